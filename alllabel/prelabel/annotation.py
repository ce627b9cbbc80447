"""A pre-annotation and its confidence: ``PreAnnotation``, span and task scores, versions.

Confidence - one score per span, and the task's score is its weakest span's:

* span scores, in [0, 1]: with token log-probabilities from the endpoint, exp(mean logprob) of the
  reply tokens that spell the span's text; without them, the mean similarity between the task and
  its demonstrations (paper Appendix C: low demonstration similarity goes with high LLM
  uncertainty); projection spans get the similarity of the demonstration they were copied from;
* ``PreAnnotation.score`` = min over the spans shown, so Label Studio's prediction score (the
  task's, in %) is exactly the lowest region score in the Regions panel, and review ordered by
  it puts the task with the weakest span first;
* a prediction with no spans gets the reply's own score - exp(mean logprob) over the reply tokens
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
from dataclasses import dataclass, replace

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
        }


def task_score(spans: Sequence[Span], reply_score: float, dropped: Sequence[float] = ()) -> float:
    """The prediction's score: its weakest span's; with none shown, the reply's score, lowered to
    the best dropped span's (see the module doc)."""
    scores = [s.score for s in spans if s.score is not None]
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
        score=task_score(kept, reply, dropped),
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


def span_logprob_scores(
    reply: str, logprobs: list[tuple[str, float]], spans: list[Span], fallback: float
) -> list[Span]:
    """Each span's exp(mean logprob) over the reply tokens that spell its text (first unused place);
    ``fallback`` (the reply's score) where the tokens cannot be matched."""
    tokens = [t for t, _ in logprobs]
    starts, pos = [], 0
    for token in tokens:
        starts.append(pos)
        pos += len(token)
    if pos != len(reply) or "".join(tokens) != reply:
        return [
            replace(s, score=round(fallback, 6)) for s in spans
        ]  # tokens do not spell the reply (some servers)
    out, cursor = [], 0
    for s in spans:
        needle = json.dumps(s.text, ensure_ascii=False)[1:-1]
        at = reply.find(needle, cursor)
        if at < 0:
            at = reply.find(needle)
        if at < 0 or not needle:
            out.append(replace(s, score=round(fallback, 6)))
            continue
        cursor = at + len(needle)
        # Tokens overlapping [at, at + len(needle)): from the one holding ``at`` on.
        first, last = (
            bisect.bisect_right(starts, at) - 1,
            bisect.bisect_left(starts, at + len(needle)),
        )
        lps = [lp for _, lp in logprobs[first:last]]
        out.append(replace(s, score=round(math.exp(sum(lps) / len(lps)), 6)))
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
