"""The command line, on real MOF data, with the fake LLM where an LLM is needed."""

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from alllabel.cli import main
from alllabel.prelabel.quality import sample_f1, span_prf
from alllabel.text.jsonl import read_jsonl, write_jsonl
from tests.data import mof_jsonl, mof_records, oracle
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    return mof_jsonl(tmp_path, 40)


def test_select_writes_queue_order(data, tmp_path):
    path, recs = data
    out = tmp_path / "sel.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alllabel",
            "select",
            str(path),
            "--budget",
            "10",
            "-o",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    sel = read_jsonl(out)
    assert [s["position"] for s in sel] == list(range(10)) and [s["stage"] for s in sel].count(
        "similarity"
    ) == 6
    assert all(recs[s["index"]]["id"] == s["id"] for s in sel)


def test_select_errors_are_explained(data, capsys):
    path, _ = data
    assert main(["select", str(path), "--budget", "500", "--quiet"]) == 2
    assert (
        "budget must be between 1 and the number of selectable items (40 of 40)"
        in capsys.readouterr().err
    )
    assert main(["select", "/nonexistent.jsonl"]) == 2


def test_prelabel_with_pool_through_the_llm(data, tmp_path, monkeypatch):
    path, recs = data
    sel = tmp_path / "sel.jsonl"
    assert main(["select", str(path), "--budget", "8", "-o", str(sel), "--quiet"]) == 0
    with FakeOpenAI(oracle(recs)) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        out = tmp_path / "pre.jsonl"
        assert (
            main(
                [
                    "prelabel",
                    str(path),
                    "--pool",
                    str(sel),
                    "-o",
                    str(out),
                    "--cache",
                    str(tmp_path / "c.sqlite3"),
                    "--quiet",
                ]
            )
            == 0
        )
        got = read_jsonl(out)
        # The quality check (one call per annotated record) comes before any bulk call.
        pool_texts = {r["text"] for r in recs if r["id"] in {s["id"] for s in read_jsonl(sel)}}
        inputs = [r["messages"][-1]["content"].split("Input:\n", 1)[1] for r in fake.requests]
        assert len(got) == 32 and len(fake.requests) == 8 + 32 and set(inputs[:8]) == pool_texts
        assert {g["id"] for g in got}.isdisjoint({s["id"] for s in read_jsonl(sel)})
        first = next(r for r in recs if r["id"] == got[0]["id"])
        placed = {(e["start"], e["end"], e["label"]) for e in got[0]["prediction"]["entities"]}
        assert placed and placed <= {(e["start"], e["end"], e["label"]) for e in first["entities"]}
        # A dry run estimates and calls nothing; the earlier run is already in the cache.
        n = len(fake.requests)
        assert (
            main(
                [
                    "prelabel",
                    str(path),
                    "--pool",
                    str(sel),
                    "--dry-run",
                    "--cache",
                    str(tmp_path / "c.sqlite3"),
                ]
            )
            == 0
        )
        assert len(fake.requests) == n


def test_prelabel_dry_run_needs_an_llm(data, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["prelabel", str(data[0]), "--dry-run"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def _llm_env(monkeypatch, fake):
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")


def test_quality_check_prints_per_label_scores_and_min_f1_holds_the_run(
    data, tmp_path, monkeypatch, capsys
):
    path, recs = data
    annotated = [{**r} if i < 6 else {"id": r["id"], "text": r["text"]} for i, r in enumerate(recs)]
    write_jsonl(path, annotated)
    with FakeOpenAI(lambda req: '{"entities": []}') as fake:  # an LLM that finds nothing
        _llm_env(monkeypatch, fake)
        out = tmp_path / "pre.jsonl"
        code = main(
            ["prelabel", str(path), "-o", str(out), "--cache", "", "--min-f1", "0.5", "--quiet"]
        )
        err = capsys.readouterr().err
        assert code == 4 and not out.exists()
        assert len(fake.requests) == 6  # the quality check only: no bulk call was made
    assert "leave-one-out on 6 human-annotated task(s)" in err and "below the minimum 0.500" in err
    assert "solvent" in err and "precision" in err  # one line per label
    assert main(["prelabel", str(path), "--min-f1", "60"]) == 2


def test_max_cost_holds_then_a_higher_cap_resumes(data, tmp_path, monkeypatch, capsys):
    path, recs = data
    write_jsonl(
        path, [r if i < 5 else {"id": r["id"], "text": r["text"]} for i, r in enumerate(recs)]
    )
    cache, out = str(tmp_path / "c.sqlite3"), tmp_path / "pre.jsonl"
    with FakeOpenAI(oracle(recs)) as fake:
        _llm_env(monkeypatch, fake)
        assert main(["prelabel", str(path), "--dry-run", "--cache", cache]) == 0
        est = json.loads(capsys.readouterr().out)
        assert (
            est["tasks"] == 35
            and est["windows"] >= 35
            and est["quality_check"]["tasks"] == 5
            and fake.requests == []
        )
        cap = (est["cost_usd"] + est["quality_check"]["cost_usd"]) / 2  # about half the run
        capped = ["prelabel", str(path), "-o", str(out), "--cache", cache, "--quiet", "--max-cost"]
        assert main([*capped, str(cap)]) == 3
        first = read_jsonl(out)
        held = [r for r in first if "held" in r]
        assert (
            held
            and all("cost cap" in r["held"] for r in held)
            and not any("error" in r for r in first)
        )
        n = len(fake.requests)
        assert main([*capped, str(cap * 3)]) == 0
        asked = [r["messages"][-1]["content"] for r in fake.requests]
    assert all("prediction" in r for r in read_jsonl(out))
    assert len(asked) == len(set(asked)) and len(asked) - n == sum(
        1 for r in read_jsonl(out) if r["id"] in {h["id"] for h in held}
    )


def test_evaluate_writes_table_and_plot(data, tmp_path):
    path, _ = data
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(path),
                "--pool-sizes",
                "5,10",
                "--seeds",
                "2",
                "--out-dir",
                str(out),
                "--annotator",
                "projection",
                "--quiet",
            ]
        )
        == 0
    )
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (1 + 2 + 2)
    assert "| allabel |" in (out / "table.md").read_text()
    assert (out / "f1_vs_pool.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_with_an_oracle_llm_scores_near_perfect(data, tmp_path, monkeypatch):
    path, recs = data
    with FakeOpenAI(oracle(recs)) as fake:
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        out = tmp_path / "eval"
        args = [
            "evaluate",
            str(path),
            "--pool-sizes",
            "5",
            "--methods",
            "allabel",
            "--out-dir",
            str(out),
            "--cache",
            "",
            "--quiet",
        ]
        assert main(args + ["--base-url", fake.base_url, "--timeout", "20"]) == 0
    (row,) = [line.split(",") for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert (
        float(row[3]) > 0.97 and float(row[4]) > 0.97
    )  # only gold nested in same-label gold is missed


def test_sample_f1_rules():
    labels = ["a", "b", "c"]
    # a: TP; b: FP and FN (wrong string); c: true negative -> 1
    assert sample_f1([("a", "x"), ("b", "y")], [("a", "x"), ("b", "z")], labels) == pytest.approx(
        (1 + 0 + 1) / 3
    )
    assert sample_f1([("a", "x"), ("a", "x")], [("a", "x")], ["a"]) == pytest.approx(
        2 / 3
    )  # multisets
    assert sample_f1([], [], labels) == 1.0
    assert span_prf([{(0, 1, "a")}], [{(0, 1, "a"), (2, 3, "a")}]) == (
        0.5,
        1.0,
        pytest.approx(2 / 3),
    )


def test_demo_runs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    r = subprocess.run(
        [sys.executable, "-m", "alllabel", "demo", "--out-dir", str(tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "projection-offline" in r.stderr and "ALLabel  pool of 15" in r.stdout
    assert len(read_jsonl(tmp_path / "prelabels.jsonl")) == 135


@pytest.fixture
def backend_server(tmp_path):
    """The real backend app over HTTP on 127.0.0.1, with one project in its state."""
    from werkzeug.serving import make_server

    from _wsgi import create_app
    from alllabel.backend.ls_client import LabelStudioAPI
    from alllabel.backend.settings import Settings
    from model import ALLabelBackend
    from tests.label_studio import free_port

    def start(**settings):
        backend = ALLabelBackend(
            Settings(state_dir=tmp_path / "state", model_version="mv-status", **settings),
            ls_factory=lambda: LabelStudioAPI("http://127.0.0.1:9", "t"),
        )
        backend.orchestrator.state.register(
            3,
            '<View><Labels name="l" toName="t"><Label value="A"/></Labels><Text name="t" value="$text"/></View>',
        )
        backend.orchestrator.state.add_to_queue(3, [(10, 0, "diversity")])
        port = free_port()
        server = make_server("127.0.0.1", port, create_app(backend), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    servers = []
    yield start
    for s in servers:
        s.shutdown()


def test_status_asks_the_running_backend(backend_server, capsys, monkeypatch):
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    url = backend_server()
    assert main(["status", "--url", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_version"] == "mv-status"
    (p,) = out["projects"]
    assert p["project"] == 3 and p["queue"]["selected"] == 1
    assert main(["status", "--url", url, "--project", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["projects"][0]["project"] == 3


def test_status_with_basic_auth(backend_server, capsys, monkeypatch):
    url = backend_server(basic_auth_user="u", basic_auth_pass="p")
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    assert main(["status", "--url", url]) == 2
    assert "BASIC_AUTH_USER" in capsys.readouterr().err
    monkeypatch.setenv("BASIC_AUTH_USER", "u")
    monkeypatch.setenv("BASIC_AUTH_PASS", "p")
    assert main(["status", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == "mv-status"


def test_status_says_when_nothing_answers(capsys):
    from tests.label_studio import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "--url", url]) == 2
    err = capsys.readouterr().err
    assert f"no alllabel backend answers at {url}" in err and "--url" in err


def test_select_skips_duplicates_and_outliers_unless_paper_exact(tmp_path, capsys):
    recs = [{"id": r["id"], "text": r["text"]} for r in mof_records()[:60]]
    recs += [
        {"id": f"copy-{r['id']}", "text": r["text"].replace(" ", "  ", 1) + "."} for r in recs[:20]
    ]
    recs.append({"id": "huge", "text": " ".join(r["text"] for r in mof_records()[:300])})
    path = tmp_path / "tasks.jsonl"
    write_jsonl(path, recs)

    def queue(*flags):
        out = tmp_path / "sel.jsonl"
        assert main(["select", str(path), "--budget", "15", "-o", str(out), "--quiet", *flags]) == 0
        return [r["id"] for r in read_jsonl(out)], capsys.readouterr().err

    ids, err = queue()
    assert (
        "23 near-duplicate(s), 1 length outlier(s)" in err
    )  # the 20 copies and 3 of MOF's own (tasks 53-56)
    assert "huge" not in ids and not any(i.startswith("copy-") for i in ids)
    paper, _ = queue("--paper-exact")
    assert "huge" in paper  # the core-set's first pick
    kept, _ = queue("--keep-outliers")
    assert "huge" in kept and not any(i.startswith("copy-") for i in kept)


def test_evaluate_compares_screened_with_paper_exact(data, tmp_path, capsys):
    path, _ = data
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(path),
                "--annotator",
                "projection",
                "--pool-sizes",
                "5,10",
                "--methods",
                "allabel,allabel-screened",
                "--out-dir",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    table = (out / "table.md").read_text()
    assert "| allabel |" in table and "| allabel-screened |" in table


def test_carry_duplicates_projects_an_annotated_twin_without_a_call(data, tmp_path, monkeypatch):
    path, recs = data
    twin = {"id": "twin", "text": recs[0]["text"].replace("The ", "the ", 1) + " "}
    rest = [{"id": r["id"], "text": r["text"]} for r in recs[5:12]]
    write_jsonl(path, [*recs[:5], twin, *rest])
    out = tmp_path / "pre.jsonl"
    with FakeOpenAI(oracle(recs)) as fake:
        _llm_env(monkeypatch, fake)
        args = ["prelabel", str(path), "-o", str(out), "--skip-quality", "--quiet", "--cache", ""]
        assert main([*args, "--carry-duplicates"]) == 0
        asked = [r["messages"][-1]["content"] for r in fake.requests]
    by_id = {r["id"]: r for r in read_jsonl(out)}
    assert (
        len(by_id) == 8 and by_id["twin"]["prediction"]["annotator"] == "near-duplicate-projection"
    )
    assert len(by_id["twin"]["prediction"]["entities"]) == len(recs[0]["entities"])
    assert len(asked) == 7 and not any(twin["text"] in a for a in asked)


def test_the_cap_holds_across_runs_when_every_reply_is_cut(data, tmp_path, monkeypatch, capsys):
    """Failed calls are billed: a second run with the same cap buys nothing more (the spend is
    kept per run key in the cache file), and the hold names the cause."""
    path, recs = data
    write_jsonl(path, [*recs[:5], *({"id": r["id"], "text": r["text"]} for r in recs[5:25])])
    cache, out, cap = str(tmp_path / "c.sqlite3"), tmp_path / "pre.jsonl", 0.1
    args = ["prelabel", str(path), "-o", str(out), "--cache", cache, "--max-cost", str(cap)]
    with FakeOpenAI(oracle(recs)) as fake:
        fake.truncate = True
        _llm_env(monkeypatch, fake)
        monkeypatch.setenv("ALLABEL_LLM_MAX_TOKENS", "256")
        assert main([*args, "--quiet", "--skip-quality"]) == 1  # some failed, the rest held
        first = len(fake.billed)
        assert "ALLABEL_LLM_MAX_TOKENS" in capsys.readouterr().err
        assert main([*args, "--quiet"]) == 4  # the quality check is held by the cap
        assert "ALLABEL_LLM_MAX_TOKENS" in capsys.readouterr().err
        billed = fake.billed_usd((2.50, 10.00))
    # Without the spend kept across runs, the second run would have bought up to the cap again.
    assert first > 0 and billed <= cap


def _demo_texts(requests) -> list[str]:
    """The inputs of the demonstrations shown in each prompt (the user turns before the last)."""
    return [[m["content"] for m in r["messages"][1:-1] if m["role"] == "user"] for r in requests]


def test_prelabel_limit_ids_and_random_demos(data, tmp_path, monkeypatch, capsys):
    path, recs = data
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, recs[:10])
    base = ["prelabel", str(path), "--pool", str(pool), "--skip-quality", "--quiet", "--k", "2"]
    with FakeOpenAI(oracle(recs)) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        out = tmp_path / "a.jsonl"
        assert main([*base, "-o", str(out), "--limit", "3", "--cache", ""]) == 0
        assert [g["id"] for g in read_jsonl(out)] == [r["id"] for r in recs[10:13]]
        ids = f"{recs[20]['id']},{recs[15]['id']}"
        assert main([*base, "-o", str(out), "--ids", ids, "--cache", ""]) == 0
        assert [g["id"] for g in read_jsonl(out)] == [recs[15]["id"], recs[20]["id"]]
        annotated = recs[0]["id"]
        assert main([*base, "-o", str(out), "--ids", annotated, "--cache", ""]) == 2
        assert f"no record to pre-annotate with id {annotated}" in capsys.readouterr().err
        fake.requests.clear()
        for demos in ("similar", "random"):
            assert (
                main([*base, "-o", str(out), "--limit", "8", "--demos", demos, "--cache", ""]) == 0
            )
        similar, random_ = _demo_texts(fake.requests[:8]), _demo_texts(fake.requests[8:])
    assert all(len(d) == 2 for d in similar + random_)
    assert sum(s != r for s, r in zip(similar, random_)) >= 4  # other demonstrations, same tasks


def test_evaluate_runs_the_retrieval_ablation_in_one_command(data, tmp_path):
    path, _ = data
    out = tmp_path / "eval"
    argv = ["evaluate", str(path), "--pool-sizes", "5,10", "--methods", "allabel"]
    argv += ["--out-dir", str(out), "--annotator", "projection", "--quiet"]
    assert main([*argv, "--demos", "similar,random"]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2
    table = (out / "table.md").read_text()
    assert "| allabel |" in table and "| allabel, random demos |" in table


def test_the_ablation_pairs_two_prelabel_outputs_task_by_task(data, tmp_path):
    path, recs = data
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, recs[:10])
    outs = {}
    for demos in ("similar", "random"):
        outs[demos] = tmp_path / f"{demos}.jsonl"
        argv = ["prelabel", str(path), "--pool", str(pool), "--annotator", "projection"]
        assert main([*argv, "--demos", demos, "-o", str(outs[demos]), "--skip-quality"]) == 0
    r = subprocess.run(
        [sys.executable, "-m", "bench.demos_ablation", str(path), str(outs["similar"]),
         str(outs["random"])],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[0].startswith("30 tasks") and lines[3].startswith("| similar |")
    higher, lower, equal = (int(x) for x in re.findall(r"(?:on|equal on) (\d+)", lines[-1]))
    assert higher + lower + equal == 30
