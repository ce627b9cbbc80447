"""Queue extension, applied: ALLabel's selection of the next picks, and *spares* selected ahead so a
confirmed annotation refills the reserve at once (``decide`` says how many; ``planner`` counts).

The selection's statistics live in a ``replan.Planner`` kept between plans: new annotations,
imported and deleted tasks update it (``Planner.add``/``remove``, pre-chosen tasks) instead of a
scan of the whole corpus, with the picks of a full re-plan. It is rebuilt (one full scan) when
the order of the tasks or the screening of tasks already planned changes, or a setting does.
"""

from __future__ import annotations

import logging

import numpy as np

from alllabel.backend import planner
from alllabel.backend.state import State
from alllabel.selection.blocks import make_runner
from alllabel.selection.replan import Planner
from alllabel.selection.screening import LengthRule, screen
from alllabel.selection.simcache import SimilarityCache
from alllabel.selection.similarity import make_similarity

log = logging.getLogger("alllabel")


class Picker:
    def __init__(self, state: State, pid: int, settings, report: dict):
        self.state, self.pid, self.settings, self.report = state, pid, settings, report
        self.similarities = SimilarityCache(settings.state_dir / "similarity", keep=1)
        self._spare: list[tuple[int, str]] = []  # next reserve picks already selected
        self._spare_key: tuple[int, ...] | None = None  # the usable tasks they were selected among
        self._plan: Planner | None = None
        self._plan_of: tuple = ()  # (settings, task ids, their texts) the planner holds
        self.last_plan: str | None = None  # "full scan" or "incremental" (tests, the log)

    def similarity(self, texts: list[str]):
        """The corpus's similarity for the pre-annotation's retrieval (``simcache``; the plans
        keep their own statistics in the Planner, and SBERT embeddings are shared through the
        cache's embedding store)."""
        s = self.settings
        return self.similarities.get(texts, s.similarity, model=s.sbert_model)

    def _taken(self) -> tuple[list[int], set[int]]:
        usable = self.state.usable_task_ids(self.pid)
        annotated = self.state.annotated_tasks(self.pid) & set(usable)
        return usable, annotated | self.state.predicted_task_ids(self.pid)

    def extend(self, for_budget: int, for_reserve: int) -> int:
        """Queue ``for_budget`` picks (exactly ALLabel's selection for M: annotated tasks
        pre-chosen), then ``for_reserve`` spares, selected now only if too few are ready."""
        usable, taken = self._taken()
        added = self._add(self._select(usable, taken, for_budget))
        taken |= {t for t, _ in added}
        if self.ready(usable, taken) < for_reserve:
            self._top_up_spare(usable, taken, for_reserve + self.settings.queue_reserve)
        return len(added) + len(self._add(self._take_spare(taken, for_reserve)))

    def ready(self, usable: list[int] | None = None, taken: set[int] | None = None) -> int:
        """Spares ready to refill the reserve at once (selected among today's usable tasks)."""
        if usable is None or taken is None:
            usable, taken = self._taken()
        if self._spare_key != tuple(usable):
            return 0
        return sum(1 for t, _ in self._spare if t not in taken)

    def top_up(self, want: int) -> None:
        """Select the next spares ahead of need (after the queue went out, not before)."""
        usable, taken = self._taken()
        self._top_up_spare(usable, taken, want)

    def _select(self, usable: list[int], taken: set[int], count: int) -> list[tuple[int, str]]:
        """The next ``count`` ALLabel picks with ``taken`` as pre-chosen: (task id, stage).

        Near-duplicates of a chosen or offered task and length outliers are never offered
        (``screening.py``; ALLABEL_PAPER_EXACT=1 gives the paper's selection)."""
        s = self.settings
        count = min(count, len(usable) - len(taken & set(usable)))
        if count <= 0:
            return []
        texts = dict(self.state.usable_tasks(self.pid))
        corpus = [texts[t] for t in usable]
        index = {t: i for i, t in enumerate(usable)}
        exclude = None
        if s.exclude_duplicates or s.exclude_outliers:
            found = screen(
                corpus,
                chosen=[index[t] for t in taken if t in index],
                duplicates=s.exclude_duplicates,
                threshold=s.duplicate_threshold,
                outliers=s.exclude_outliers,
                length_rule=LengthRule(long_factor=s.outlier_factor, short_factor=s.outlier_factor),
            )
            exclude = found.excluded
            self.report["screening"] = found.summary()
            count = min(count, int((~exclude).sum()) - len(taken & set(usable)))
            if count <= 0:
                return []
        plan = self._planner(usable, corpus, exclude, count + len(taken))

        def pick(pre, n):
            sel = plan.select(n, pre_chosen=pre)
            return list(zip(sel.indices, sel.stages))

        return [(e.task_id, e.stage) for e in planner.extend_queue(usable, taken, count, 0, pick)]

    def _planner(self, usable: list[int], corpus: list[str], exclude, budget: int) -> Planner:
        """The kept planner brought up to date, or a new one (a full scan)."""
        s = self.settings
        key = (s.similarity, s.sbert_model, s.k, tuple(s.ratios), s.order, s.dask_scheduler)
        ok = np.ones(len(usable), dtype=bool) if exclude is None else ~np.asarray(exclude)
        if self._plan is not None and self._plan_of[0] == key and self._update(usable, corpus, ok):
            self.last_plan = "incremental"
        else:
            runner = make_runner(s.dask_scheduler) if s.dask_scheduler else None
            self._plan = Planner(
                corpus,
                kind=s.similarity,
                embeddings=self._vectors(corpus),
                budget=budget,
                k=s.k,
                ratios=s.ratios,
                order=s.order,
                exclude=np.flatnonzero(~ok),
                runner=runner,
            )
            self.last_plan = "full scan"
            log.info("project %d: selection statistics scanned for %d task(s)", self.pid, len(ok))
        self._plan_of = (key, tuple(usable), tuple(corpus))
        return self._plan

    def _update(self, usable: list[int], corpus: list[str], ok: np.ndarray) -> bool:
        """Remove the kept planner's deleted (or changed) tasks, add the new ones; False when
        only a new planner gives a full re-plan's picks: tasks not last (Label Studio's ids
        grow, so new tasks come last), or the screening of planned tasks changed."""
        _, ids, texts = self._plan_of
        now = dict(zip(usable, corpus))
        kept = [i for i, t in enumerate(ids) if now.get(t) == texts[i]]
        n = len(kept)
        if list(usable[:n]) != [ids[i] for i in kept]:
            return False
        self._plan.remove(sorted(set(range(len(ids))) - set(kept)))
        new = list(corpus[n:])
        self._plan.add(new, self._vectors(new), np.flatnonzero(~ok[n:]))
        return bool((self._plan.rankable == ok).all())

    def _vectors(self, texts: list[str]):
        """SBERT embeddings of ``texts`` (the configured model, each text embedded once)."""
        if self.settings.similarity != "sbert" or not texts:
            return None
        cache, model = self.similarities.embeddings, self.settings.sbert_model
        return make_similarity(texts, "sbert", model=model, embeddings=cache).embeddings

    def _top_up_spare(self, usable: list[int], taken: set[int], want: int) -> None:
        want = min(want, len(set(usable) - taken))
        key = tuple(usable)
        spare = (
            [(t, st) for t, st in self._spare if t not in taken] if self._spare_key == key else []
        )
        if len(spare) < want:
            spare = self._select(usable, taken, want)
        self._spare, self._spare_key = spare, key

    def _take_spare(self, taken: set[int], count: int) -> list[tuple[int, str]]:
        ready = [(t, st) for t, st in self._spare if t not in taken]
        picked, self._spare = ready[:count], ready[count:]
        return picked

    def _add(self, picks: list[tuple[int, str]]) -> list[tuple[int, str]]:
        position = self.state.next_position(self.pid)
        if picks:
            rows = [(t, position + n, st) for n, (t, st) in enumerate(picks)]
            self.state.add_to_queue(self.pid, rows)
            log.info("project %d: %d task(s) added to the ALLabel queue", self.pid, len(picks))
        return picks
