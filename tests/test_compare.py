"""``alllabel compare`` against two fake OpenAI endpoints that answer differently: the table shows
the difference (F1 per label, US$ per task, latency), and the cost cap covers the comparison."""

import json
import time

import pytest

from alllabel.cli import main
from alllabel.cli.compare import parse_variant
from alllabel.llm.config import KNOWN_PRICES
from tests.data import mof_jsonl, oracle
from tests.fake_openai import FakeOpenAI


@pytest.fixture
def data(tmp_path):
    return mof_jsonl(tmp_path, 10)


def slow_and_blind(request):
    time.sleep(0.3)
    return '{"entities": []}'


def cells(out: str) -> dict[str, list[str]]:
    """The table's rows: name -> the variants' cells (cells hold no spaces)."""
    rows = {}
    for line in out.splitlines()[1:]:
        *name, a, b = line.split()
        rows[" ".join(name)] = [a, b]
    return rows


def test_compare_shows_two_endpoints_side_by_side(data, tmp_path, monkeypatch, capsys):
    path, recs = data
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OTHER_KEY", "k2")
    with FakeOpenAI(oracle(recs)) as good, FakeOpenAI(slow_and_blind) as blind:
        code = main(
            [
                "compare", str(path), "--cache", str(tmp_path / "c.sqlite3"), "--quiet",
                "--base-url", good.base_url,
                "--variant", "name=oracle,model=gpt-4o",
                # The same model name at another endpoint: never answered from the other's cache.
                "--variant", f"name=blind,model=gpt-4o,k=5,base_url={blind.base_url},"
                "api_key_env=OTHER_KEY",
                "--json", str(tmp_path / "cmp.json"),
            ]
        )  # fmt: skip
        assert code == 0
        assert len(good.requests) == len(blind.requests) == len(recs)  # one query per record
    rows = cells(capsys.readouterr().out)
    assert rows["k"] == ["3", "5"]
    labels = {e["label"] for r in recs for e in r["entities"]}
    for label in labels:
        assert rows[f"F1 {label}"] == ["100.0", "0.0"]
    assert rows["span F1"] == ["100.0", "0.0"] and rows["scored"] == ["10/10", "10/10"]
    # What each endpoint billed, per task (k=5 makes the blind variant's prompts longer).
    billed = [f.billed_usd(KNOWN_PRICES["gpt-4o"]) / len(recs) for f in (good, blind)]
    assert rows["US$ per task"] == [f"{x:.5f}" for x in billed] and billed[1] > billed[0]
    latency = [float(x) for x in rows["latency s"]]
    assert latency[1] >= 0.3 > latency[0]
    reports = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["name"] for r in reports] == ["oracle", "blind"]
    assert reports[0]["span_f1"] == 1.0 and reports[1]["span_f1"] == 0.0


def test_the_cost_cap_covers_every_variant(data, tmp_path, monkeypatch, capsys):
    path, recs = data
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeOpenAI(oracle(recs)) as a, FakeOpenAI(oracle(recs)) as b:
        args = ["compare", str(path), "--cache", "", "--quiet", "--base-url", a.base_url]
        args += ["--variant", "name=a,model=gpt-4o", "--variant", f"name=b,base_url={b.base_url}"]
        assert main(args) == 0
        full = a.billed_usd(KNOWN_PRICES["gpt-4o"])  # one variant's whole check
        a.billed.clear(), b.billed.clear()
        cap = 1.5 * full  # the first variant, and half of the second at most
        assert main([*args, "--max-cost", str(cap)]) == 3
        spent = a.billed_usd(KNOWN_PRICES["gpt-4o"]) + b.billed_usd(KNOWN_PRICES["gpt-4o"])
        assert spent <= cap and b.billed  # the second started, and stopped at the cap
    captured = capsys.readouterr()
    assert "held by the cost cap" in captured.err and "b" in captured.err


def test_variants_are_checked_before_anything_runs(capsys):
    assert parse_variant("model=gpt-4o-mini, k=5") == {
        "model": "gpt-4o-mini",
        "k": 5,
        "name": "model=gpt-4o-mini, k=5",
    }
    with pytest.raises(ValueError, match="key among name, model"):
        parse_variant("modle=gpt-4o")
    with pytest.raises(ValueError, match="k='five' is not int"):
        parse_variant("k=five")
    assert main(["compare", "x.jsonl", "--variant", "model=a"]) == 2
    assert "two or more --variant" in capsys.readouterr().err
