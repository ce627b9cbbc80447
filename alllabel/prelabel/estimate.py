"""What a bulk run will send and cost, from the prompts it would build (nothing is called)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from alllabel.llm.config import token_cost
from alllabel.prelabel.prompt import answer, example_from_spans
from alllabel.prelabel.run import Worklist, prepare_run
from alllabel.selection.similarity import Similarity


@dataclass
class RunEstimate:
    """What a bulk run will send and cost, from the prompts it would build (nothing is called)."""

    model: str
    tasks: int
    windows: int  # prompts (calls) in all
    long_tasks: int  # tasks cut into more than one window
    cached: int  # prompts already answered in the cache (free)
    prompt_tokens: int  # of the prompts still to send, counted with the model's tokenizer margin
    completion_tokens: (
        int  # expected replies (demonstrations' answer/text ratio), capped at max_tokens
    )
    largest_prompt_tokens: int
    max_prompt_tokens: int
    cost_usd: float | None  # online
    batch_cost_usd: float | None  # through the Batch API
    worst_case_usd: float | None = None  # every reply at max_tokens
    token_counting: str = ""
    trimmed_demos: int = 0  # demonstrations shown as excerpts (summed over prompts)
    skipped_demos: int = 0  # demonstrations left out for lack of room (summed over prompts)
    per_task: dict[int, dict] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "per_task"}
        for k in ("cost_usd", "batch_cost_usd", "worst_case_usd"):
            d[k] = None if d[k] is None else round(d[k], 4)
        return d

    def summary(self) -> str:
        cost = (
            "unknown (set ALLABEL_PRICE_INPUT/OUTPUT)"
            if self.cost_usd is None
            else f"US${self.cost_usd:.2f} (Batch API US${self.batch_cost_usd:.2f}, at most US${self.worst_case_usd:.2f})"
        )
        return (
            f"estimate: {self.tasks} task(s), {self.windows} prompt(s) ({self.long_tasks} long task(s) in windows, {self.cached} cached), "
            f"{self.prompt_tokens:,} prompt + ~{self.completion_tokens:,} reply tokens for {self.model} ({self.token_counting}); "
            f"largest prompt {self.largest_prompt_tokens:,} of {self.max_prompt_tokens:,}; cost {cost}"
        )


def _reply_ratio(texts, gold, counter) -> float:
    """Expected reply tokens per input token: the demonstrations' answers against their texts."""
    shown = [example_from_spans(texts[i], s) for i, s in gold.items()]
    text_tokens = sum(counter.count(e.text) for e in shown)
    return sum(counter.count(answer(e)) for e in shown) / max(1, text_tokens)


def estimate_run(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    k: int = 3,
    queries: Sequence[int] | None = None,
    run: Worklist | None = None,
) -> RunEstimate:
    """Token and cost estimate of ``prelabel`` with the same arguments, without calling the LLM."""
    run = run or prepare_run(texts, gold, annotator, sim, queries=queries, k=k)
    cfg, counter = annotator.client.config, annotator.counter
    ratio = _reply_ratio(texts, gold, counter)
    zeros = [0] * 6  # windows, long tasks, cached, prompt, completion, largest prompt
    est = RunEstimate(cfg.model, len(run.queries), *zeros, annotator.max_prompt_tokens, None, None)
    est.worst_case_usd, est.token_counting = None, counter.method
    prices = cfg.prices()
    worst_tokens = 0
    for i, d, prompts in zip(run.queries, run.demos, run.prompts):
        task = _estimate_task(est, annotator, texts[i], d, prompts, ratio)
        worst_tokens += (task["windows"] - task["cached"]) * cfg.max_tokens
        task["cost_usd"] = token_cost(task["prompt_tokens"], task["completion_tokens"], prices)
        est.per_task[i] = task
    if prices is not None:
        est.cost_usd = token_cost(est.prompt_tokens, est.completion_tokens, prices)
        est.batch_cost_usd = est.cost_usd * cfg.batch_price_factor
        est.worst_case_usd = token_cost(est.prompt_tokens, worst_tokens, prices)
    return est


def _estimate_task(est: RunEstimate, annotator, text: str, demos, prompts, ratio: float) -> dict:
    """One task's prompts into the estimate; its own figures."""
    client, counter = annotator.client, annotator.counter
    task = {"windows": len(prompts.windows), "prompt_tokens": 0, "completion_tokens": 0}
    task["cached"] = 0
    est.windows += len(prompts.windows)
    est.long_tasks += len(prompts.windows) > 1
    for w in prompts.windows:
        est.largest_prompt_tokens = max(est.largest_prompt_tokens, w.prompt_tokens)
        est.trimmed_demos += len(w.trimmed)
        est.skipped_demos += len(demos) - len(w.demos)
        if client.cache is not None and client.cache.get(client.cache_key(w.messages)):
            est.cached += 1
            task["cached"] += 1
            continue
        reply = math.ceil(ratio * counter.count(text[w.start : w.end])) + 8
        task["prompt_tokens"] += w.prompt_tokens
        task["completion_tokens"] += min(client.config.max_tokens, reply)
    est.prompt_tokens += task["prompt_tokens"]
    est.completion_tokens += task["completion_tokens"]
    return task
