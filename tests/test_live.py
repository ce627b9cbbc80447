"""Live accuracy from human corrections of our pre-annotations: scoring, the state's copy of the
corrected prediction, the v2 -> v3 upgrade, and the hold below ALLABEL_MIN_LIVE_F1."""

import sqlite3
import threading

from alllabel.backend.live import live_accuracy, live_gate, score, spans_of, version_key
from alllabel.backend.lsops import link_parent
from alllabel.backend.runner import LiveCheck
from alllabel.backend.settings import Settings
from alllabel.backend.state import State
from alllabel.backend.state.schema import SCHEMA_VERSION

NER = '<View><Labels name="label" toName="text"><Label value="A"/><Label value="B"/></Labels><Text name="text" value="$text"/></View>'
V1 = {"annotator": "llm-m1", "model": "m1", "prompt": "abcdef0123456789", "demos": [1, 2]}
V2 = {**V1, "model": "m2", "demos": [3]}


def region(start, end, label):
    return {
        "from_name": "label",
        "to_name": "text",
        "type": "labels",
        "value": {"start": start, "end": end, "labels": [label]},
    }


def test_spans_are_matched_strictly_per_label_and_summed_over_tasks():
    ours = [region(0, 3, "A"), region(5, 9, "B"), region(10, 12, "A")]
    human = [region(0, 3, "A"), region(5, 8, "B"), region(10, 12, "B")]  # one kept, two changed
    assert spans_of(human) == {(0, 3, "A"), (5, 8, "B"), (10, 12, "B")}
    m = score([(ours, human), ([region(1, 2, "A")], [region(1, 2, "A")])])
    assert m["tasks"] == 2
    # A: tp 2 (0-3, 1-2), fp 1 (10-12 as A), fn 0; B: tp 0, fp 1, fn 2.
    assert m["per_label"]["A"] == {
        "precision": 0.6667,
        "recall": 1.0,
        "f1": 0.8,
        "human": 2,
        "ours": 3,
    }
    assert m["per_label"]["B"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "human": 2,
        "ours": 1,
    }
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)  # tp 2, fp 2, fn 2
    assert score([([], [])])["f1"] == 1.0  # nothing to find, nothing found


def test_live_accuracy_is_per_model_version_not_per_set_of_demonstrations():
    reviewed = {
        1: ([region(0, 1, "A")], V1, [region(0, 1, "A")]),
        2: ([region(0, 1, "A")], {**V1, "demos": [9]}, []),
        3: ([region(0, 1, "A")], V2, [region(0, 1, "A")]),
    }
    live = live_accuracy(reviewed)
    assert live["reviewed_tasks"] == 3
    assert (
        list(live["versions"])
        == [version_key(V1), version_key(V2)]
        == [
            "m1 prompt abcdef01",
            "m2 prompt abcdef01",
        ]
    )
    assert live["versions"][version_key(V1)]["tasks"] == 2
    assert live["versions"][version_key(V1)]["precision"] == 0.5
    assert live_gate(live, 0.8, 2) == [(version_key(V1), live["versions"][version_key(V1)])]
    assert live_gate(live, 0.8, 3) == []  # too few reviewed tasks yet
    assert live_gate(live, 0.8, 2, accepted=frozenset({version_key(V1)})) == []
    assert live_gate(live, None, 1) == []


def corrected(state, aid, task, human, parent):
    ann = {"id": aid, "task": task, "result": human, "parent_prediction": parent}
    state.record_annotation(1, {**ann, "updated_at": f"2026-01-0{aid}T00:00:00Z"}, state.tick())


def test_the_state_keeps_the_prediction_an_annotation_started_from(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    ours = [region(0, 3, "A")]
    for task in (10, 11):
        s.save_prelabel(1, task, ours, 0.9, "llm-m1", V1, None)
    s.finish_push(1, {10: "d", 11: "d"}, {10: 500, 11: 501})
    corrected(s, 1, 10, [region(0, 4, "A")], 500)
    corrected(s, 2, 11, ours, 999)  # started from someone else's prediction: not ours to score
    assert s.reviewed(1) == {10: (ours, V1, [region(0, 4, "A")])}
    # Our prediction replaced later (a rerun): the copy taken at submission stays.
    s.save_prelabel(1, 10, [region(1, 2, "B")], 0.9, "llm-m2", V2, None)
    corrected(s, 1, 10, [region(0, 4, "A")], 500)
    assert s.reviewed(1)[10][:2] == (ours, V1)


def test_a_v2_state_file_is_upgraded_with_the_review_columns(tmp_path):
    State(tmp_path).register(1, NER)
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    for col in ("parent_prediction", "ours", "ours_version"):
        db.execute(f"ALTER TABLE annotations DROP COLUMN {col}")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    s = State(tmp_path)
    assert s._q("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3
    assert s.project(1) is not None and s.reviewed(1) == {}


def test_corrections_below_the_minimum_stop_the_run_with_a_hold(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    settings = Settings(state_dir=tmp_path, min_live_f1=0.7, min_live_tasks=2)
    for task in (10, 11, 12):
        s.save_prelabel(1, task, [region(0, 3, "A")], 0.9, "llm-m1", V1, None)
    s.finish_push(1, {10: "d", 11: "d", 12: "d"}, {10: 500, 11: 501, 12: 502})
    stop = threading.Event()
    check = LiveCheck(s, 1, settings, stop, frozenset())
    corrected(s, 1, 10, [region(0, 2, "A")], 500)
    assert not check.is_set()  # one reviewed task: fewer than ALLABEL_MIN_LIVE_TASKS
    corrected(s, 2, 11, [region(0, 3, "A")], 501)
    corrected(s, 3, 12, [region(0, 2, "A")], 502)
    check._next = 0.0
    assert check.is_set() and check.hold.kind == "min_live_f1"
    assert check.hold.key == frozenset({version_key(V1)}) and check.hold.f1 < 0.7
    assert "ALLABEL_MIN_LIVE_F1" in check.hold.reason and "Start Training" in check.hold.reason
    accepted = LiveCheck(s, 1, settings, stop, frozenset({version_key(V1)}))
    assert not accepted.is_set()  # Start Training let that version go on


class OneLS:
    """Label Studio as link_parent reads it: one prediction by id."""

    def __init__(self, prediction: dict):
        self.p, self.reads = prediction, 0

    def prediction(self, pid):
        self.reads += 1
        return self.p if pid == self.p["id"] else None


def test_a_bulk_imported_prediction_is_known_by_the_parent_id_of_its_correction(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    ours = [region(0, 3, "A")]
    s.save_prelabel(1, 10, ours, 0.9, "llm-m1", V1, None)
    want = s.pending_pushes(1)[10][2]
    s.finish_push(1, {10: want})  # a bulk import: Label Studio's id unknown
    stored = {"id": 700, "task": 10, "result": ours, "score": 0.9}
    ann = {"id": 1, "task": 10, "result": [], "parent_prediction": 700}
    link_parent(s, OneLS({**stored, "result": [region(0, 4, "A")]}), 1, ann)  # not ours
    assert s.predictions(1)[10].ls_id is None
    ls = OneLS(stored)
    link_parent(s, ls, 1, ann)
    assert s.predictions(1)[10].ls_id == 700 and ls.reads == 1
    link_parent(s, ls, 1, ann)  # known now: no more reads
    assert ls.reads == 1
    s.record_annotation(1, ann, s.tick())
    assert s.reviewed(1) == {10: (ours, V1, [])}
