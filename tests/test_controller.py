"""The controller applies what ``decide`` says, with its services passed in: here a fake Label
Studio client that records every call (no server, no thread: ``step()`` is called directly)."""

import time

import pytest

from alllabel.backend.controller import ProjectController, Services
from alllabel.backend.ls_client import SAMPLING, LSPrediction
from alllabel.backend.settings import Settings
from alllabel.backend.state import State

MV = "alllabel-fake"
CONFIG = '<View><Labels name="label" toName="text"><Label value="A"/></Labels><Text name="text" value="$text"/></View>'
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


class FakeLS:
    """A project of 12 tasks as Label Studio would report it; every call is recorded."""

    def __init__(self, pid: int):
        self.pid, self.calls = pid, []
        self.tasks_ = [
            {"id": 100 + i, "data": {"text": f"{w} {WORDS[(i + 3) % 12]} text {i}"}}
            for i, w in enumerate(WORDS)
        ]
        self.settings = {
            "sampling": "Sequential sampling",
            "model_version": "",
            "show_collab_predictions": True,
        }
        self.preds: list[LSPrediction] = []
        self.annotations: dict[int, dict] = {}
        self.views_: list[dict] = []

    def _call(self, name, *args):
        self.calls.append((name, *args))

    def names(self):
        return [c[0] for c in self.calls]

    def project(self, pid, timeout=None):
        self._call("project", pid)
        return {
            "id": pid,
            "label_config": CONFIG,
            "task_number": len(self.tasks_),
            "total_annotations_number": len(self.annotations),
            "num_tasks_with_annotations": len({a["task"] for a in self.annotations.values()}),
            "total_predictions_number": len(self.preds),
            **self.settings,
        }

    def tasks(self, pid, *, updated_after=None, annotated=False, with_annotations=False):
        self._call("tasks", pid, annotated)
        out = []
        for t in self.tasks_:
            anns = [a for a in self.annotations.values() if a["task"] == t["id"]]
            if annotated and not anns:
                continue
            out.append({**t, "annotations": anns} if with_annotations else dict(t))
        return out

    def annotation(self, aid):
        self._call("annotation", aid)
        return self.annotations.get(aid)

    def update_project(self, pid, **fields):
        self._call("update_project", pid, fields)
        self.settings.update(fields)
        return {}

    def import_predictions(self, pid, items):
        self._call("import_predictions", pid, [i["task"] for i in items])
        for i in items:
            self.preds.append(
                LSPrediction(
                    len(self.preds) + 1, i["task"], i["model_version"], i["score"], i["result"]
                )
            )
        return len(items)

    def predictions(self, pid, model_version=None):
        self._call("predictions", pid)
        return [p for p in self.preds if model_version in (None, p.model_version)]

    def views(self, pid):
        self._call("views", pid)
        return self.views_

    def create_view(self, pid, data):
        self._call("create_view", pid, data["title"])
        self.views_.append({"id": len(self.views_) + 1, "data": data})
        return len(self.views_)

    def ml_backends(self, pid):
        self._call("ml_backends", pid)
        return [{"title": MV, "url": "http://127.0.0.1:1"}]


def controller(tmp_path, **kw):
    """A controller on a fresh state with the fake Label Studio (no thread; ``step()`` by hand)."""
    base = dict(budget=3, queue_reserve=2, exclude_duplicates=False, exclude_outliers=False)
    settings = Settings(model_version=MV, state_dir=tmp_path / "state", **{**base, **kw})
    state = State(settings.state_dir)
    state.register(7, CONFIG)
    fake = FakeLS(7)
    services = Services(ls=lambda: fake, annotator=lambda cfg: None, annotator_name=lambda: "none")
    return ProjectController(7, state, settings, services, start=False), fake, state


@pytest.fixture
def setup(tmp_path):
    settings = Settings(
        model_version=MV,
        state_dir=tmp_path / "state",
        budget=3,
        queue_reserve=2,
        exclude_duplicates=False,
        exclude_outliers=False,
    )
    state = State(settings.state_dir)
    state.register(7, CONFIG)
    fake = FakeLS(7)
    services = Services(ls=lambda: fake, annotator=lambda cfg: None, annotator_name=lambda: "none")
    c = ProjectController(7, state, settings, services, start=False)
    yield c, fake, state
    state.close()


def test_one_step_connects_pushes_the_queue_then_sets_the_settings(setup):
    c, fake, state = setup
    applied = [type(a).__name__ for a in c.step()]
    assert applied[:3] == ["Probe", "AuthorizeWebhooks", "Sync"] and "ExtendQueue" in applied
    names = fake.names()
    # The queue (budget 3 + reserve 2) reaches Label Studio before the project is switched to it.
    first_push = names.index("import_predictions")
    switch = next(
        i for i, c_ in enumerate(fake.calls) if c_[0] == "update_project" and "sampling" in c_[2]
    )
    assert first_push < switch
    assert sum(len(c_[2]) for c_ in fake.calls if c_[0] == "import_predictions") == 5
    assert fake.settings == {
        "sampling": SAMPLING,
        "model_version": MV,
        "show_collab_predictions": False,
    }
    assert [v["data"]["title"] for v in fake.views_] == ["Default", "ALLabel queue"]
    assert state.project(7)["phase"] == "planned" and c.planned.is_set()
    # A second step with nothing new asks Label Studio nothing.
    before = len(fake.calls)
    assert c.step() == [] and len(fake.calls) == before


def test_a_connect_switches_to_the_first_stage_then_pushes_the_rest_and_the_reserve(tmp_path):
    """Label Studio serves the ALLabel order as soon as the lowest positions are in: the switch
    comes after one push of push_batch entries, not after the whole queue and the reserve."""
    c, fake, state = controller(tmp_path, budget=4, push_batch=2)
    try:
        applied = [type(a).__name__ for a in c.step()]
        switch = next(
            i for i, x in enumerate(fake.calls) if x[0] == "update_project" and "sampling" in x[2]
        )
        pushes = [(i, x[2]) for i, x in enumerate(fake.calls) if x[0] == "import_predictions"]
        queue = [q.task_id for q in state.queue(7)]
        assert [t for i, ts in pushes if i < switch for t in ts] == queue[:2]  # positions 0, 1
        assert sorted(t for _, ts in pushes for t in ts) == sorted(queue) and len(queue) == 6
        extends = [i for i, a in enumerate(applied) if a == "ExtendQueue"]
        assert len(extends) == 2 and applied.index("ApplySettings") < extends[1]
        assert c.planned.is_set() and state.project(7)["phase"] == "planned"
        assert [p.score for p in sorted(fake.preds, key=lambda p: p.score)] == [
            pytest.approx(n * 1e-6) for n in range(6)
        ]
    finally:
        state.close()


def test_what_was_annotated_before_the_order_was_in_is_not_an_allabel_pick(tmp_path):
    """Until the switch Label Studio serves its previous order: a task annotated then is no pick,
    also when the selection queued it (it was being annotated while the selection ran)."""
    from alllabel.backend.status import project_status

    c, fake, state = controller(tmp_path, budget=6)  # three annotations stay under the budget
    try:
        stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(t))  # noqa: E731
        early = stamp(time.time() - 60)
        fake.annotations[1] = {
            "id": 1,
            "task": 100,
            "project": 7,
            "result": [],
            "updated_at": early,
        }
        st = project_status(state, 7)
        assert (
            st["order"] == {"since": None, "annotated_before": 0}
            and st["annotated_from_queue"] == 0
        )
        c.step()
        st = project_status(state, 7)
        assert st["order"]["since"] is not None and st["order"]["annotated_before"] == 1
        queue = [q.task_id for q in state.queue(7)]
        assert 100 not in queue  # annotated: pre-chosen, never queued
        # Served before the switch, submitted before it, confirmed after it: not a pick.
        fake.annotations[2] = {
            "id": 2,
            "task": queue[0],
            "project": 7,
            "result": [],
            "updated_at": early,
        }
        now = stamp(time.time() + 1)
        fake.annotations[3] = {
            "id": 3,
            "task": queue[1],
            "project": 7,
            "result": [],
            "updated_at": now,
        }
        state.claim_annotations(7, [(2, queue[0]), (3, queue[1])])
        c.step()
        st = project_status(state, 7)
        assert st["annotated_tasks"] == 3 and st["annotated_from_queue"] == 1
        assert st["order"]["annotated_before"] == 2
        # Settings applied by an earlier version (no ordered_at): every queued task counts, as then.
        applied = {
            k: v for k, v in state.project(7)["applied_settings"].items() if k != "ordered_at"
        }
        state.update_project(7, applied_settings=applied)
        st = project_status(state, 7)
        assert st["annotated_from_queue"] == 2 and st["order"]["annotated_before"] == 0
    finally:
        state.close()


@pytest.mark.parametrize("kind", ["bm25", "sbert"])
def test_imports_deletions_and_annotations_replan_incrementally_as_a_full_replan_would(
    tmp_path, kind
):
    """The planner kept since the connect is updated (tasks added at the end, one removed, one
    more pre-chosen), not rebuilt; a new Picker's full scan of the same data picks the same."""
    from alllabel.backend.picks import Picker

    c, fake, state = controller(tmp_path, similarity=kind)
    try:
        c.step()
        plan = c.picker._plan
        assert plan is not None  # scanned once at connect; the reserve and spares reuse it
        fake.tasks_ += [
            {"id": 200 + i, "data": {"text": f"{w} {WORDS[(i + 5) % 12]} imported {i}"}}
            for i, w in enumerate(WORDS[:3])  # 12 - 1 + 3: N stays under 16 (the grid)
        ]
        del fake.tasks_[4]
        queued = [q.task_id for q in state.queue(7)]
        ann = {"id": 1, "task": queued[0], "project": 7, "result": [], "was_cancelled": False}
        fake.annotations[1] = ann
        c.wake(full=True)  # as a TASKS_CREATED / TASKS_DELETED event asks
        c.step()
        assert c.picker._plan is plan and c.picker.last_plan == "incremental"
        assert plan.n == 14 and state.annotated_tasks(7) == {queued[0]}
        if kind == "sbert":
            assert plan.last_rescan is None  # merged and subtracted, no scan of the corpus
        usable, taken = c.picker._taken()
        for count in (1, 6):
            fresh = Picker(state, 7, c.settings, {})  # a full re-plan
            assert c.picker._select(usable, taken, count) == fresh._select(usable, taken, count)
            assert fresh.last_plan == "full scan" and c.picker.last_plan == "incremental"
    finally:
        state.close()


def test_a_forged_claim_adds_no_queue_entry_and_a_confirmed_one_replans(setup):
    c, fake, state = setup
    c.step()
    queue = [q.task_id for q in state.queue(7)]
    state.claim_annotations(7, [(9001, queue[0]), (9002, queue[1])])
    assert [type(a).__name__ for a in c.step()] == ["ConfirmClaims"]  # read back, nothing counted
    assert [q.task_id for q in state.queue(7)] == queue and fake.names().count("annotation") == 2
    fake.annotations[9003] = {
        "id": 9003,
        "task": queue[0],
        "project": 7,
        "result": [],
        "was_cancelled": False,
    }
    state.claim_annotations(7, [(9003, queue[0])])
    applied = c.step()
    assert [type(a).__name__ for a in applied][:2] == ["ConfirmClaims", "ExtendQueue"]
    assert state.annotated_tasks(7) == {queue[0]}
    # Budget 3, one annotated: two budget tasks and the reserve of two are still queued.
    assert (applied[1].for_budget, applied[1].for_reserve) == (0, 0)
    assert state.available(7) == 4


class ListingLS(FakeLS):
    """The fake, plus what /setup asks: the key, the project, the project's ML backends."""

    listed = False

    def whoami(self, timeout=None):
        return {"id": 1}

    def ml_backends_quick(self, pid, timeout):
        self._call("ml_backends_quick", pid)
        return [{"title": MV, "url": "http://127.0.0.1:1"}] if self.listed else []


def test_setup_acts_only_on_a_project_that_lists_this_backend(tmp_path):
    from alllabel.backend.orchestrator import Orchestrator, SetupError

    fake = ListingLS(7)
    settings = Settings(model_version=MV, state_dir=tmp_path / "state", connect_wait=0.2)
    orch = Orchestrator(settings, ls_factory=lambda: fake)
    try:
        assert orch.setup("7.1700000000", CONFIG) == MV  # answered, nothing else
        assert orch.state.project(7) is None and orch.controllers == {}
        assert "update_project" not in fake.names() and fake.views_ == [] and fake.preds == []
        fake.listed = True
        assert orch.setup("7.1700000000", CONFIG) == MV
        assert orch.state.project(7) is not None and 7 in orch.controllers
        # Listing makes Label Studio call /setup back: while ours is in flight, that call is
        # answered at once, without a second listing and without an error (LS would show it).
        orch._listed.clear()
        orch._listing.add(7)
        calls = fake.names().count("ml_backends_quick")
        assert orch.setup("7.1700000000", CONFIG) == MV
        assert fake.names().count("ml_backends_quick") == calls
        orch._listing.clear()
        fake.listed = False  # the model removed: a known project is refused, with the reason
        with pytest.raises(SetupError, match="lists no ML backend"):
            orch.setup("7.1700000000", CONFIG)
    finally:
        orch.close()
