"""The backend's SQLite state: migrations, annotations as facts, and the push bookkeeping."""

import json
import sqlite3
from pathlib import Path

import pytest

from alllabel.backend.ls_format import digest, queue_score
from alllabel.backend.state import State
from alllabel.backend.state.schema import SCHEMA_VERSION

V1_SCHEMA = (Path(__file__).parent / "fixtures" / "state_v1_schema.sql").read_text()
NER = '<View><Labels name="label" toName="text"><Label value="A"/></Labels><Text name="text" value="$text"/></View>'
RESULT = [
    {
        "from_name": "label",
        "to_name": "text",
        "type": "labels",
        "value": {"start": 0, "end": 3, "text": "abc", "labels": ["A"]},
    }
]


def annotation(aid, task, result=RESULT, cancelled=False, updated="2026-01-01T00:00:00Z"):
    return {
        "id": aid,
        "task": task,
        "result": result,
        "was_cancelled": cancelled,
        "updated_at": updated,
    }


def test_upgrade_from_the_first_release_keeps_a_running_project(tmp_path):
    """A state file written by v1 (twin queue/prelabels tables, no schema version) is upgraded in place."""
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO projects VALUES (7, ?, 'prelabeling', 3, 10, 'busy', 0)", (NER,))
    db.executemany(
        "INSERT INTO queue VALUES (7, ?, ?, ?, ?, ?, ?)",
        [
            (101, 0, "diversity", 0.0, 1, 501),
            (102, 1, "similarity", 1e-6, 1, 502),
            (103, 2, "uncertainty", 2e-6, 0, None),
        ],
    )
    db.executemany("INSERT INTO annotations VALUES (7, ?, ?)", [(900, 101), (901, 102)])
    db.executemany(
        "INSERT INTO prelabels VALUES (7, ?, ?, ?, 'llm-x', ?, ?, ?, 0)",
        [
            (103, json.dumps(RESULT), 0.5, None, 1, 502 + 1),  # a queue task pre-annotated in place
            (104, json.dumps(RESULT), 0.25, None, 0, None),  # computed, not pushed yet
            (105, None, None, "HTTP 500", 0, None),
        ],
    )  # failed
    db.execute("INSERT INTO skipped VALUES (7, 106, 'empty text')")
    db.commit()
    db.close()

    s = State(tmp_path)
    assert s._q("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    p = s.project(7)
    assert (p["phase"], p["budget"], p["total_tasks"], p["message"]) == (
        "prelabeling",
        3,
        10,
        "busy",
    )
    assert p["applied_settings"] == {
        "sampling": "Uncertainty sampling"
    }  # v1 had set them at its first plan
    assert [(q.task_id, q.position, q.stage) for q in s.queue(7)] == [
        (101, 0, "diversity"),
        (102, 1, "similarity"),
        (103, 2, "uncertainty"),
    ]
    preds = s.predictions(7)
    assert preds[101].pushed == digest([], 0.0) and preds[101].ls_id == 501
    assert (
        preds[103].result == RESULT
        and preds[103].pushed == digest(RESULT, 0.5)
        and preds[103].ls_id == 503
    )
    assert preds[105].error == "HTTP 500" and preds[105].failures == 1 and preds[105].result is None
    assert s.annotation_ids(7) == {900: (101, "verified", 0), 901: (102, "verified", 0)}
    assert s.annotated_tasks(7) == {101, 102}
    assert set(s.unread_annotations(7)) == {
        900,
        901,
    }  # their content is read again at the first sync
    assert s.skipped(7) == {106: "empty text"}
    # Only what v1 had not pushed is pending: 104's pre-annotation (101/102 are annotated, 103 was pushed).
    assert set(s.pending_pushes(7)) == {104}
    s.close()
    assert State(tmp_path).queue(7)[0].task_id == 101  # opening again is a no-op


def test_a_newer_state_file_is_refused_with_advice(tmp_path):
    State(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer alllabel"):
        State(tmp_path)


def test_a_snapshot_never_erases_an_annotation_reported_while_it_was_taken(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    snapshot_start = s.tick()
    s.claim_annotations(1, [(10, 100)])  # webhook arrives while the snapshot is fetched
    # The snapshot does not list annotation 10: it must not remove it ...
    s.record_absent(1, [a for a in s.annotation_ids(1)], snapshot_start)
    assert s.claims(1) == [(10, 100, 0, "claimed")]
    # ... and once Label Studio confirms it, it counts.
    s.record_annotation(1, annotation(10, 100), s.tick())
    assert s.annotated_tasks(1) == {100} and s.claims(1) == []
    # A later snapshot that does not list it is a fact: it was deleted.
    s.record_absent(1, [10], s.tick())
    assert s.annotated_tasks(1) == set()


def test_a_snapshot_never_undoes_a_deletion_reported_while_it_was_taken(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    s.record_annotation(1, annotation(10, 100), s.tick())
    snapshot_start = s.tick()
    s.claim_deletions(1, [10])  # ANNOTATIONS_DELETED during the fetch
    s.record_annotation(1, annotation(10, 100), snapshot_start)  # the snapshot still saw it
    assert s.claims(1) == [(10, 100, 0, "verified")]  # the deletion is still to be checked
    s.record_absent(1, [10], s.tick())  # Label Studio says: gone
    assert s.annotated_tasks(1) == set() and s.claims(1) == []


def test_cancelled_annotations_and_the_latest_answer(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    seq = s.tick()
    s.record_annotation(1, annotation(1, 100, cancelled=True), seq)
    assert s.annotated_tasks(1) == set() and s.annotation_count(1) == (0, 1)
    s.record_annotation(1, annotation(2, 200, result=[], updated="2026-01-01T00:00:00Z"), seq)
    s.record_annotation(1, annotation(3, 200, result=RESULT, updated="2026-01-02T00:00:00Z"), seq)
    assert s.annotated_tasks(1) == {200} and s.human_results(1) == {200: RESULT}


def test_pending_pushes_follow_what_label_studio_should_hold(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    s.add_to_queue(1, [(100, 0, "diversity"), (101, 1, "similarity")])
    todo = s.pending_pushes(1)
    assert todo == {
        100: ([], 0.0, digest([], 0.0)),
        101: ([], queue_score(1), digest([], queue_score(1))),
    }
    assert s.claim_push(1, {t: (None, d) for t, (_, _, d) in todo.items()}) == [100, 101]
    s.finish_push(1, {t: d for t, (_, _, d) in todo.items()}, {100: 5, 101: 6})
    assert s.pending_pushes(1) == {}
    # A pre-annotation of a queued task replaces its queue entry (in place: the id is known).
    s.save_prelabel(1, 101, RESULT, 0.7, "llm-x", "v1", None)
    assert s.pending_pushes(1) == {101: (RESULT, 0.7, digest(RESULT, 0.7))}
    # A failure keeps the earlier pre-annotation; an annotated task is left alone.
    s.save_prelabel(1, 101, None, None, "llm-x", None, "HTTP 500")
    assert s.predictions(1)[101].result == RESULT and s.predictions(1)[101].failures == 1
    s.record_annotation(1, annotation(9, 101), s.tick())
    assert s.pending_pushes(1) == {}


def test_a_push_and_a_pull_never_both_send_a_task(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    s.save_prelabel(1, 100, RESULT, 0.5, "x", None, None)
    s.save_prelabel(1, 101, RESULT, 0.5, "x", None, None)
    d = digest(RESULT, 0.5)
    assert s.pulled(1, 100, d)  # Label Studio asked /predict first: it stores the answer itself
    assert s.claim_push(1, {100: (None, d), 101: (None, d)}) == [101]  # so the push skips it
    assert not s.pulled(1, 101, d)  # and /predict does not answer for a task being pushed
    assert s.unsure_pushes(1) == 1  # until the push is confirmed (or an audit settles it)


def test_one_backend_process_per_state_directory(tmp_path):
    from alllabel.backend.state import DirectoryLock

    first = DirectoryLock(tmp_path, wait=0)
    with pytest.raises(
        RuntimeError, match=r"another alllabel process \(pid \d+\) is using the state"
    ):
        DirectoryLock(tmp_path, wait=0.3)
    first.release()
    DirectoryLock(tmp_path, wait=0).release()  # free again once the first one is gone


def test_available_counts_what_label_studio_can_serve_in_our_order(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    s.add_to_queue(1, [(100, 0, "diversity"), (101, 1, "similarity")])
    s.save_prelabel(1, 102, RESULT, 0.5, "x", None, None)  # computed, not in Label Studio yet
    assert s.available(1) == 2
    s.claim_push(1, {102: (None, digest(RESULT, 0.5))})
    s.finish_push(1, {102: digest(RESULT, 0.5)})
    assert s.available(1) == 3  # held by Label Studio now
    s.record_annotation(1, annotation(9, 100), s.tick())
    assert s.available(1) == 2 and s.available(1, [101]) == 1


def test_run_rows_read_what_the_run_decides_on_without_the_results(tmp_path):
    s = State(tmp_path)
    s.register(1, NER)
    s.add_to_queue(1, [(100, 0, "diversity")])
    s.save_prelabel(1, 101, RESULT, 0.5, "x", None, None)
    s.save_prelabel(1, 102, None, None, "x", None, "HTTP 500")
    rows = s.run_rows(1)
    assert rows[100] == (False, 0, None, 0)
    assert rows[101].has_result and rows[101].failures == 0 and rows[101].position is None
    assert not rows[102].has_result and rows[102].failures == 1 and rows[102].error == "HTTP 500"
