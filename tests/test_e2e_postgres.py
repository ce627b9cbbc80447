"""Label Studio on PostgreSQL, as in production: its task locks keep annotators apart.

On SQLite the same loop hands one task to both annotators (LS's ``select_for_update(skip_locked=True)``
does nothing there), which is why the README recommends PostgreSQL for teams.
"""

import threading
import time

import requests

from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.label_studio import add_annotator
from tests.test_e2e_label_studio import LS, Backend, result_of

ROUNDS = 50  # per annotator


def test_two_annotators_never_share_a_task(label_studio, tmp_path):
    ls = label_studio
    assert (
        ls.db == "postgresql"
        and ls.pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'ls'").strip() == "1"
    )
    records = mof_records()[500:620]
    tokens = {name: add_annotator(ls, f"{name}@example.com") for name in ("ann-a", "ann-b")}
    assert len(set(tokens.values())) == 2
    with FakeOpenAI() as fake:
        b = Backend(
            tmp_path, ls, fake, budget=2 * ROUNDS
        )  # the whole loop is served from the ALLabel queue
        api = LS(ls)
        try:
            pid, rec_of = api.new_project("two annotators", records)
            assert (
                api.connect(pid, b.url).status_code == 201
            )  # production set-up: our backend connected
            b.idle(pid)
            queue = {q.task_id for q in b.orch.state.queue(pid)}
            assert len(queue) >= 2 * ROUNDS

            served = {name: [] for name in tokens}
            errors = []
            start = threading.Barrier(len(tokens))

            def annotate(name):
                h = {"Authorization": f"Token {tokens[name]}"}
                try:
                    start.wait()
                    for _ in range(ROUNDS):  # as fast as LS answers: /next, then submit at once
                        task = requests.get(
                            f"{ls.url}/api/projects/{pid}/next", headers=h, timeout=60
                        ).json()
                        served[name].append((task["id"], time.monotonic()))
                        r = requests.post(
                            f"{ls.url}/api/tasks/{task['id']}/annotations/",
                            headers=h,
                            json={"result": result_of(rec_of[task["id"]])},
                            timeout=60,
                        )
                        assert r.status_code == 201, r.text
                except Exception as e:  # noqa: BLE001 - reported by the main thread
                    errors.append(f"{name}: {e!r}")

            threads = [threading.Thread(target=annotate, args=(n,)) for n in tokens]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            assert not errors, errors
            a, b_ids = ([tid for tid, _ in served[n]] for n in tokens)
            assert len(a) == len(b_ids) == ROUNDS
            assert not set(a) & set(b_ids), f"shared tasks: {sorted(set(a) & set(b_ids))}"
            assert len(set(a)) == len(set(b_ids)) == ROUNDS  # and nobody got a task twice
            # Label Studio agrees: each of those tasks has exactly one annotation.
            counts = {
                t["id"]: t["total_annotations"]
                for t in api.get("/api/tasks/", project=pid, page_size=1000)["tasks"]
            }
            assert all(counts[t] == 1 for t in a + b_ids)
            assert set(a + b_ids) <= queue  # every task served came from the ALLabel queue
        finally:
            b.stop()
