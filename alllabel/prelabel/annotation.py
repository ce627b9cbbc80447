"""A pre-annotation and its confidence: ``PreAnnotation``, span and task scores, versions.

Confidence - one score per span, and the task's score is its weakest span's:

* span scores, in [0, 1]: with token log-probabilities from the endpoint, exp(mean logprob) of the
  reply tokens that spell the span's text; without them, the mean similarity between the task and
  its demonstrations (paper Appendix C: low demonstration similarity goes with high LLM
  uncertainty); projection spans get the similarity of the demonstration they were copied from;
* ``PreAnnotation.score`` = min over the spans shown, so Label Studio's prediction score (the
  task's, in %) is exactly the lowest region score in the Regions panel, and review ordered by
  it puts the task with the weakest span first;
* a ``<Choices>`` group answered in the same reply gets exp(mean logprob) of the tokens that
  spell its chosen value(s) (the weakest value's, for several), else the reply's score; the
  task's score is the minimum over its spans and its groups;
* a prediction with no spans (and no choices) gets the reply's own score - exp(mean logprob) over the reply tokens
  that are not JSON punctuation (a grammar forces those)
  (min over windows), or the mean demonstration similarity - lowered to the best score of any span
  that ``min_span_score`` dropped, so an emptied prediction still sorts early in review.

Versions: every ``PreAnnotation.version`` records the annotator, the model, the prompt's
fingerprint (wording, labels, definitions and the settings that change prompts) and the indices
of the demonstrations shown; ``stale_reasons`` compares a stored version with a current one.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from alllabel.text.spans import Span


@dataclass
class PreAnnotation:
    spans: list[Span]
    score: float
    annotator: str
    confidence_source: str  # "logprobs" | "similarity"
    dropped_not_found: int = 0
    dropped_bad_label: int = 0
    cached: bool = False
    dropped_low_score: int = 0
    reply_score: float | None = None  # the reply's own score (used when no span is shown)
    windows: int = 1
    version: dict | None = None
    cost_usd: float | None = None  # what its answers cost when bought (cached ones included)
    billed_usd: float = 0.0  # what the endpoint billed this run for them (0 when cached)
    choices: dict[str, list[str]] = field(default_factory=dict)  # <Choices name> -> values
    choice_scores: dict[str, float] = field(default_factory=dict)  # <Choices name> -> score

    def to_dict(self) -> dict:
        return {
            "entities": [s.to_dict() for s in self.spans],
            "score": self.score,
            "annotator": self.annotator,
            "confidence_source": self.confidence_source,
            "dropped_not_found": self.dropped_not_found,
            "dropped_bad_label": self.dropped_bad_label,
            "dropped_low_score": self.dropped_low_score,
            "windows": self.windows,
            "cached": self.cached,
            "version": self.version,
            **(
                {"choices": self.choices, "choice_scores": self.choice_scores}
                if self.choices
                else {}
            ),
        }


def task_score(
    spans: Sequence[Span],
    reply_score: float,
    dropped: Sequence[float] = (),
    choice_scores: Sequence[float] = (),
) -> float:
    """The prediction's score: its weakest span's or group's; with none shown, the reply's
    score, lowered to the best dropped span's (see the module doc)."""
    scores = [s.score for s in spans if s.score is not None] + list(choice_scores)
    if scores:
        return min(scores)
    return min([reply_score, max(dropped)]) if dropped else reply_score


def apply_min_span_score(a: PreAnnotation, threshold: float | None) -> PreAnnotation:
    """Drop spans scored below ``threshold`` and re-score the prediction (``task_score``)."""
    if threshold is None:
        return a
    kept = [s for s in a.spans if s.score is None or s.score >= threshold]
    dropped = [s.score for s in a.spans if s.score is not None and s.score < threshold]
    if not dropped:
        return a
    reply = a.reply_score if a.reply_score is not None else a.score
    return replace(
        a,
        spans=kept,
        score=task_score(kept, reply, dropped, list(a.choice_scores.values())),
        dropped_low_score=a.dropped_low_score + len(dropped),
    )


def similarity_confidence(demos: Sequence) -> float:
    if not demos:
        return 0.0
    return float(min(1.0, max(0.0, sum(d.similarity for d in demos) / len(demos))))


def make_version(annotator: str, model: str, prompt: str, demos: Sequence) -> dict:
    return {
        "annotator": annotator,
        "model": model,
        "prompt": prompt,
        "demos": [d.index for d in demos],
    }


_SYNTAX = set('{}[]":, \n\t')


def content_logprobs(logprobs: list[tuple[str, float]]) -> list[float]:
    """The log-probabilities of the tokens that say something: JSON punctuation is forced by a
    grammar (``json_object``), and llama.cpp reports it from the unconstrained distribution (a
    forced ``{`` at -10), which is no confidence of the model's. All of them if none is left."""
    said = [lp for t, lp in logprobs if not set(t) <= _SYNTAX]
    return said or [lp for _, lp in logprobs]


class _Spelled:
    """Where a reply's tokens spell a piece of text: exp(mean logprob) of the tokens covering it."""

    def __init__(self, reply: str, logprobs: list[tuple[str, float]]):
        self.reply, self.logprobs = reply, logprobs
        self.starts, pos = [], 0
        for token, _ in logprobs:
            self.starts.append(pos)
            pos += len(token)
        # Some servers' tokens do not spell the reply: then no piece can be matched.
        self.ok = pos == len(reply) and "".join(t for t, _ in logprobs) == reply

    def score(self, needle: str, cursor: int, trim: int = 0) -> tuple[float | None, int]:
        """(score of the first ``needle`` from ``cursor`` (else anywhere), the end of it);
        ``trim``: characters at each end found but not scored (quotes a grammar may force)."""
        at = self.reply.find(needle, cursor) if self.ok and needle else -1
        if at < 0 and self.ok and needle:
            at = self.reply.find(needle)
        if at < 0:
            return None, cursor
        # Tokens overlapping [at, at + len(needle)): from the one holding ``at`` on.
        a, b = at + trim, at + len(needle) - trim
        first = bisect.bisect_right(self.starts, a) - 1
        last = bisect.bisect_left(self.starts, max(b, a + 1))
        lps = [lp for _, lp in self.logprobs[first:last]]
        return round(math.exp(sum(lps) / len(lps)), 6), at + len(needle)


def _inner(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def span_logprob_scores(
    reply: str, logprobs: list[tuple[str, float]], spans: list[Span], fallback: float
) -> list[Span]:
    """Each span's exp(mean logprob) over the reply tokens that spell its text (first unused place);
    ``fallback`` (the reply's score) where the tokens cannot be matched."""
    spelled, out, cursor = _Spelled(reply, logprobs), [], 0
    for s in spans:
        score, cursor = spelled.score(_inner(s.text), cursor)
        out.append(replace(s, score=round(fallback, 6) if score is None else score))
    return out


def choice_logprob_scores(
    reply: str, logprobs: list[tuple[str, float]], chosen: dict[str, list[str]], fallback: float
) -> dict[str, float]:
    """Each group's score: the weakest exp(mean logprob) of the tokens spelling its chosen values
    (quoted, after the group's key in the "choices" object); ``fallback`` where they cannot be
    matched or the group chose nothing."""
    spelled, out = _Spelled(reply, logprobs), {}
    base = max(reply.rfind('"choices"'), 0)
    for name, values in chosen.items():
        _, cursor = spelled.score(f'"{_inner(name)}"', base)
        scores = [spelled.score(f'"{_inner(v)}"', cursor, trim=1)[0] for v in values]
        known = [x for x in scores if x is not None]
        out[name] = min(known) if known and len(known) == len(scores) else round(fallback, 6)
    return out


def stale_reasons(stored: dict | None, current: dict) -> list[str]:
    """Why a stored pre-annotation's version differs from ``current`` (empty: up to date)."""
    if not stored:
        return ["no version recorded"]
    reasons = []
    if stored.get("annotator") != current.get("annotator") or stored.get("model") != current.get(
        "model"
    ):
        reasons.append(f"model {stored.get('model')} -> {current.get('model')}")
    if stored.get("prompt") != current.get("prompt"):
        reasons.append("prompt or its settings changed")
    if stored.get("demos") != current.get("demos"):
        reasons.append(f"demonstrations {stored.get('demos')} -> {current.get('demos')}")
    return reasons
