"""Prompts within the prompt limit (ALLABEL_MAX_PROMPT_TOKENS): windows for long tasks, demonstrations chosen within it.

``PromptFitter.fit(text, examples)`` returns the prompts one task needs (``TaskPrompts``), each at
most ``max_prompt_tokens`` as counted by ``TokenCounter.messages`` (margin included):

1. The instructions (system message) come first; if they alone leave too little room, the limit
   is too small and we say so.
2. The task is never shortened. When its input message takes more than half of what is left after
   the instructions, or more than the reply can hold (``max_tokens``: at the demonstrations' ratio
   of answer tokens to text tokens, a window's reply should fill at most 3/4 of ``max_tokens``),
   it is split into windows at sentence/paragraph boundaries (``segment.windows``); each window is
   one prompt, and the caller merges the answers back at exact offsets.
3. Demonstrations, most similar first, share what is left, and none takes more than
   max(4 x the input's tokens, 2,000) tokens: the paper's demonstrations are paragraphs like the
   input, and a longer one costs more on every prompt that shows it without being a better example
   (2,000 tokens hold any MOF paragraph with its answer, so ordinary demonstrations stay whole).
   If all fit, all are shown whole. Otherwise every demonstration gets a fair share (shares unused
   by short ones go to long ones); one above its share is shown as an excerpt: the sentences holding
   its entities, in text order, as many as fit; one whose first such sentence does not fit (or
   that has no entities) is skipped.
4. The assembled prompt is counted exactly once more; it is never above the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from alllabel.llm.tokens import REPLY_PRIMING, TokenCounter
from alllabel.prelabel.prompt import (
    EXAMPLE_PREFIX,
    INPUT_PREFIX,
    Example,
    PromptBuilder,
    answer,
    example_from_spans,
)
from alllabel.text.segment import entity_units, excerpt, windows
from alllabel.text.spans import align_entities

MIN_WINDOW_TOKENS = 200
REPLY_FILL = 0.75
# A demonstration takes at most max(DEMO_INPUT_RATIO x the input's tokens, DEMO_MIN_CAP) tokens.
DEMO_INPUT_RATIO = 4
DEMO_MIN_CAP = 2000


class PromptLimitError(ValueError):
    """The prompt limit cannot hold the instructions and a minimal input."""


@dataclass
class Window:
    start: int
    end: int
    prompt_tokens: int  # TokenCounter.messages(messages), <= the limit
    demos: list[int]  # positions (in the task's demonstration list) shown in this prompt
    trimmed: list[int]  # of those, shown as excerpts
    shown: list[Example] = field(repr=False)
    text: str = field(repr=False)  # the window's text
    builder: PromptBuilder = field(repr=False)

    @property
    def messages(self) -> list[dict]:
        """The prompt, built on demand (the prompts of big runs stay small in memory)."""
        return self.builder.messages(self.shown, self.text)


@dataclass
class TaskPrompts:
    windows: list[Window]

    @property
    def demos(self) -> list[int]:
        """Positions of the demonstrations shown in any window, in order."""
        return sorted({p for w in self.windows for p in w.demos})

    @property
    def prompt_tokens(self) -> int:
        return sum(w.prompt_tokens for w in self.windows)


def _spans_of(ex: Example) -> list[dict]:
    if ex.spans is not None:
        return ex.spans
    labels = {e["label"] for e in ex.entities}
    return [
        {"start": s.start, "end": s.end, "label": s.label}
        for s in align_entities(ex.text, ex.entities, labels).spans
    ]


class PromptFitter:
    def __init__(
        self,
        builder: PromptBuilder,
        counter: TokenCounter,
        max_prompt_tokens: int,
        *,
        max_reply_tokens: int | None = None,
    ):
        self.builder = builder
        self.counter = counter
        self.limit = int(max_prompt_tokens)
        self.max_reply_tokens = max_reply_tokens
        system = builder.system()
        self._fixed = counter.message_cost(system) + math.ceil(REPLY_PRIMING * counter.margin)
        room = self.limit - self._fixed
        if room < 2 * MIN_WINDOW_TOKENS:
            raise PromptLimitError(
                f"a prompt limit of {self.limit} tokens leaves {room} after the instructions ({self._fixed} tokens): "
                f"raise ALLABEL_MAX_PROMPT_TOKENS to at least {self._fixed + 2 * MIN_WINDOW_TOKENS} or shorten the label definitions"
            )
        self._units: dict[tuple, tuple[list[tuple[int, int]], list[dict]]] = {}
        self._costs: dict[tuple[int, int], tuple[Example, int]] = {}

    # --- the task ----------------------------------------------------------------------------------
    def window_limit(self, examples: list[Example]) -> int:
        """Most tokens one input message may take (see the module doc, rule 2)."""
        limit = (self.limit - self._fixed) // 2
        if self.max_reply_tokens:
            text_tokens = sum(self.counter.raw(ex.text) for ex in examples)
            answer_tokens = sum(self.counter.raw(answer(ex)) for ex in examples if ex.entities)
            if text_tokens and answer_tokens:
                limit = min(
                    limit, int(REPLY_FILL * self.max_reply_tokens * text_tokens / answer_tokens)
                )
        return max(MIN_WINDOW_TOKENS, limit)

    def _windows(self, text: str, limit: int) -> list[tuple[int, int]]:
        if self.counter.message_cost(INPUT_PREFIX + text) <= limit:
            return [(0, len(text))]
        # Raw tokens per window so that the input message (prefix, framing, margin) stays within limit.
        raw_limit = max(1, int(limit / self.counter.margin) - self.counter.raw(INPUT_PREFIX) - 4)
        return windows(text, raw_limit, self.counter.raw, self.counter.many) or [(0, len(text))]

    # --- demonstrations ----------------------------------------------------------------------------
    def _cost(self, n: int, ex: Example) -> int:
        c = self.counter
        return c.message_cost(EXAMPLE_PREFIX.format(n=n) + ex.text) + c.message_cost(answer(ex))

    def _full_cost(self, n: int, ex: Example) -> int:
        """``_cost`` of a demonstration shown whole, remembered (the same ones recur in every prompt)."""
        key = (n, id(ex))
        hit = self._costs.get(key)
        if hit is None or hit[0] is not ex:
            hit = self._costs[key] = (ex, self._cost(n, ex))
        return hit[1]

    def _excerpt(self, n: int, ex: Example, allowance: float) -> Example | None:
        """The longest run of entity sentences (from the start) that fits ``allowance``."""
        spans = _spans_of(ex)
        key = (ex.text, tuple((s["start"], s["end"], s["label"]) for s in spans))
        cached = self._units.get(key)
        if cached is None:
            cached = self._units[key] = (entity_units(ex.text, spans), spans)
        units, spans = cached
        if not units:
            return None
        # Estimate additively (cheap), then check exactly and shorten while over.
        c = self.counter
        fixed = c.message_cost(EXAMPLE_PREFIX.format(n=n)) + c.message_cost('{"entities": []}')
        used, take = fixed, 0
        for a, b in units:
            inside = [s for s in spans if a <= s["start"] and s["end"] <= b]
            step = c.margin * (
                c.raw(ex.text[a:b])
                + 1
                + sum(c.raw(ex.text[s["start"] : s["end"]]) + 12 for s in inside)
            )
            if used + step > allowance:
                break
            used += step
            take += 1
        while take > 0:
            short_text, short_spans = excerpt(ex.text, spans, units[:take])
            short = example_from_spans(short_text, short_spans, like=ex)
            if self._cost(n, short) <= allowance:
                return short
            take -= 1
        return None

    def _choose(
        self, examples: list[Example], room: int, input_tokens: int
    ) -> list[tuple[int, Example, bool]]:
        """(position, example as shown, trimmed?) within ``room`` tokens."""
        cap = max(DEMO_INPUT_RATIO * input_tokens, DEMO_MIN_CAP)
        costs = [self._full_cost(i + 1, ex) for i, ex in enumerate(examples)]
        if sum(costs) <= room and max(costs, default=0) <= cap:
            return [(i, ex, False) for i, ex in enumerate(examples)]
        # Max-min fair shares: short demonstrations keep their size, the rest split what is left.
        share, left, waiting = {}, float(room), len(examples)
        for i in sorted(range(len(examples)), key=lambda i: costs[i]):
            fair = min(left / waiting, cap)
            share[i] = min(costs[i], fair)
            left -= share[i]
            waiting -= 1
        chosen, n = [], 0
        for i, ex in enumerate(examples):
            if costs[i] <= share[i]:
                chosen.append((i, ex, False))
                n += 1
                continue
            short = self._excerpt(n + 1, ex, share[i])
            if short is not None:
                chosen.append((i, short, True))
                n += 1
        return chosen

    # --- the prompts---------------------------------------------------------------------------------
    def fit(self, text: str, examples: list[Example]) -> TaskPrompts:
        out = []
        for a, b in self._windows(text, self.window_limit(examples)):
            piece = text[a:b]
            input_tokens = self.counter.message_cost(INPUT_PREFIX + piece)
            chosen = self._choose(examples, self.limit - self._fixed - input_tokens, input_tokens)
            while True:
                messages = self.builder.messages([ex for _, ex, _ in chosen], piece)
                tokens = self.counter.messages(messages)
                if tokens <= self.limit:
                    break
                if not chosen:  # cannot happen with the limits above; never send an oversize prompt
                    raise PromptLimitError(
                        f"a window of {tokens} tokens does not fit the prompt limit of {self.limit}"
                    )
                chosen.pop()
            shown = [ex for _, ex, _ in chosen]
            out.append(
                Window(
                    a,
                    b,
                    tokens,
                    [i for i, _, _ in chosen],
                    [i for i, _, t in chosen if t],
                    shown,
                    piece,
                    self.builder,
                )
            )
        return TaskPrompts(out)
