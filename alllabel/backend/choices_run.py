"""A ``<Choices>`` project's pre-annotation once its budget is reached: classify every task left.

Demonstrations are the k most similar human-annotated tasks (``alllabel.prelabel.classify``);
before the run, leave-one-out on the human answers gives accuracy and per-class P/R/F1 in
``/status`` (``quality``). Every bill is added to the project's spend at the time of the call,
and ``ALLABEL_MAX_COST_USD`` holds the run before a call that could exceed it. Each result is
saved as one ``choices`` region with the answer's confidence as its score (review: lowest first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from alllabel.backend import ls_format
from alllabel.backend.label_config import ChoicesConfig
from alllabel.backend.state import State
from alllabel.llm.client import LLMError
from alllabel.prelabel import holds
from alllabel.prelabel.classify import choice_demos, leave_one_out_choices

log = logging.getLogger("alllabel")


@dataclass
class ChoicesCorpus:
    ids: list[int]
    texts: list[str]
    gold: dict[int, list[str]]  # index -> the human answer (tasks whose annotation chose one)

    @classmethod
    def load(cls, state: State, pid: int, cfg: ChoicesConfig) -> ChoicesCorpus:
        tasks = state.usable_tasks(pid)
        index = {t: i for i, (t, _) in enumerate(tasks)}
        gold = {}
        for t, result in state.human_results(pid).items():
            chosen = ls_format.result_choices(result, cfg) if t in index else None
            if chosen:  # an annotation that left the choices empty shows nothing to imitate
                gold[index[t]] = chosen
        return cls([t for t, _ in tasks], [text for _, text in tasks], gold)


@dataclass
class ChoicesOutcome:
    done: int = 0
    failed: int = 0
    blocker: str | None = None
    hold: holds.Hold | None = None
    quality: dict | None = None
    estimate: dict | None = None


def run_choices(
    state: State,
    pid: int,
    cfg: ChoicesConfig,
    classifier,
    similarity,
    order: list[int],
    *,
    settings,
    report: Callable[[str, object], None],
    saved: Callable[[], None],
    stop: threading.Event,
    approved: Callable[[], bool] = lambda: True,
) -> ChoicesOutcome:
    """Classify the tasks in ``order`` (task ids), saving each result as it comes. With
    ALLABEL_PRELABEL_START=manual the run holds after its estimate until ``approved()``."""
    corpus = ChoicesCorpus.load(state, pid, cfg)
    if not corpus.gold:
        raise ValueError(
            f'no human answer in <Choices name="{cfg.from_name}"> to use as demonstrations yet'
        )
    out = ChoicesOutcome()
    sim = similarity(corpus.texts)
    if settings.quality_check and len(corpus.gold) > 1:
        out.quality = _quality(state, pid, corpus, classifier, sim, settings.k)
        report("quality", out.quality)
    pos = {t: i for i, t in enumerate(corpus.ids)}
    queries = [pos[t] for t in order if t in pos and pos[t] not in corpus.gold]
    demos = choice_demos(corpus.texts, corpus.gold, sim, queries, settings.k)
    worst = sum(classifier.worst_case_usd(corpus.texts[i], row) for i, row in zip(queries, demos))
    out.estimate = {"tasks": len(queries), "cost_usd": round(worst, 6)}  # a worst case
    report("estimate", out.estimate)
    if settings.prelabel_start == "manual" and not approved():
        cost = f" ({len(queries)} tasks, at most US${worst:.2f})"
        text = f"waiting for Start Training to pre-annotate{cost} (ALLABEL_PRELABEL_START=manual)"
        out.hold = holds.Hold("manual", text, tasks=len(queries))
        return out
    for n, (i, row) in enumerate(zip(queries, demos)):
        if stop.is_set():
            break
        if _over_cap(
            state, pid, settings.max_cost_usd, classifier.worst_case_usd(corpus.texts[i], row)
        ):
            spent = state.project(pid)["spent_usd"]
            out.hold = replace(
                holds.cost_cap(settings.max_cost_usd, spent, len(queries) - n),
                key=settings.max_cost_usd,
            )
            break
        _classify_one(state, pid, cfg, corpus, classifier, i, row, out)
        report("progress", {"done": out.done, "failed": out.failed})
        saved()
    return out


def _over_cap(state: State, pid: int, cap: float | None, worst_usd: float) -> bool:
    return cap is not None and state.project(pid)["spent_usd"] + worst_usd > cap


def _classify_one(state, pid, cfg, corpus, classifier, i, row, out: ChoicesOutcome) -> None:
    tid = corpus.ids[i]
    try:
        c = classifier.classify(corpus.texts[i], row)
    except (LLMError, ValueError) as e:
        state.add_spent(pid, getattr(e, "billed_usd", 0.0) or 0.0)
        state.save_prelabel(pid, tid, None, None, classifier.name, None, f"{type(e).__name__}: {e}")
        out.failed += 1
        if isinstance(e, LLMError) and e.status in (401, 403, 404) and not out.done:
            out.blocker = str(e)  # the endpoint refuses everyone: retrying cannot help
        return
    state.add_spent(pid, c.billed_usd)
    if not c.choices:
        state.save_prelabel(
            pid, tid, None, None, classifier.name, None, "the reply named no valid choice"
        )
        out.failed += 1
        return
    score = round(c.score, 6)
    result = [ls_format.choices_result(cfg, c.choices, score)]
    version = {"annotator": classifier.name, "demos": [corpus.ids[d.index] for d in row]}
    state.save_prelabel(pid, tid, result, score, classifier.name, version, None)
    out.done, out.blocker = out.done + 1, None


def _quality(state, pid, corpus: ChoicesCorpus, classifier, sim, k: int) -> dict:
    """Leave-one-out on the human answers: what to expect of the run (its calls are billed)."""
    try:
        m = leave_one_out_choices(corpus.texts, corpus.gold, sim, classifier, k)
    except (LLMError, ValueError) as e:
        log.warning("project %d: the quality check failed: %s", pid, e)
        return {"error": str(e)}
    state.add_spent(pid, m["billed_usd"])
    log.info(
        "project %d: leave-one-out on %d human answer(s): accuracy %.3f, macro F1 %.3f",
        pid,
        m["n"],
        m["accuracy"],
        m["macro_f1"],
    )
    return m
