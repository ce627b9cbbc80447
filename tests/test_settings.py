"""Every setting is read by one strict parser: a value that does not parse names its variable."""

import json

import pytest

from alllabel import env
from alllabel.backend.settings import Settings


def test_defaults_when_nothing_is_set():
    s = Settings.from_env({})
    assert (s.model_version, s.budget, s.k, s.order, s.similarity) == (
        "alllabel",
        0.05,
        3,
        "DSU",
        "bm25",
    )
    assert (s.queue_reserve, s.push_batch, s.sync_interval, s.prelabel_start) == (
        5,
        100,
        30.0,
        "auto",
    )
    assert s.max_cost_usd is None and s.min_f1 is None and s.exclude_duplicates


def test_empty_values_mean_the_default():
    s = Settings.from_env(
        {"ALLABEL_K": "", "ALLABEL_QUALITY_CHECK": " ", "ALLABEL_MAX_COST_USD": ""}
    )
    assert s.k == 3 and s.quality_check and s.max_cost_usd is None


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("ALLABEL_QUALITY_CHECK", "ture", "ALLABEL_QUALITY_CHECK must be 1 or 0"),
        ("ALLABEL_PAPER_EXACT", "2", "ALLABEL_PAPER_EXACT must be 1 or 0"),
        ("ALLABEL_K", "three", "ALLABEL_K must be a whole number"),
        ("ALLABEL_K", "0", "ALLABEL_K must be a whole number >= 1"),
        ("ALLABEL_PUSH_BATCH", "1.5", "ALLABEL_PUSH_BATCH must be a whole number"),
        ("ALLABEL_QUEUE_RESERVE", "-1", "ALLABEL_QUEUE_RESERVE must be a whole number >= 0"),
        ("ALLABEL_SYNC_INTERVAL", "0", "ALLABEL_SYNC_INTERVAL must be a number > 0 (seconds)"),
        ("ALLABEL_MAX_COST_USD", "ten", "ALLABEL_MAX_COST_USD must be a number (US$)"),
        ("ALLABEL_MIN_F1", "120%", "ALLABEL_MIN_F1 must be a fraction in [0, 1]"),
        ("ALLABEL_PRELABEL_START", "later", "ALLABEL_PRELABEL_START must be one of auto, manual"),
        ("ALLABEL_SIMILARITY", "tfidf", "ALLABEL_SIMILARITY must be one of bm25, sbert"),
        ("ALLABEL_ORDER", "UDS", "ALLABEL_ORDER must be one of dsu, sdu, sud"),
        ("ALLABEL_ANNOTATOR", "gpt", "ALLABEL_ANNOTATOR must be one of auto, llm, projection"),
        ("ALLABEL_BUDGET", "lots", "ALLABEL_BUDGET must be a task count"),
    ],
)
def test_a_value_that_does_not_parse_names_its_variable(name, value, says):
    with pytest.raises(ValueError) as e:
        Settings.from_env({name: value})
    assert says in str(e.value) and repr(value.strip()) in str(e.value)


def test_values_are_read_as_written():
    s = Settings.from_env(
        {
            "ALLABEL_QUALITY_CHECK": "off",
            "ALLABEL_ORDER": "sdu",
            "ALLABEL_MAX_COST_USD": "0",
            "ALLABEL_MIN_F1": "60%",
            "ALLABEL_BUDGET": "40",
            "ALLABEL_PAPER_EXACT": "yes",
            "ALLABEL_EXCLUDE_DUPLICATES": "1",
        }
    )
    assert not s.quality_check and s.order == "SDU" and s.max_cost_usd == 0.0
    assert s.min_f1 == 0.6 and s.budget == 40
    assert not s.exclude_duplicates and not s.exclude_outliers  # paper-exact wins


def test_label_descriptions_come_from_a_json_file(tmp_path):
    path = tmp_path / "defs.json"
    path.write_text(json.dumps({"Solvent": "the liquid the reaction runs in"}))
    assert Settings.from_env({"ALLABEL_LABEL_DESCRIPTIONS": str(path)}).label_descriptions == {
        "Solvent": "the liquid the reaction runs in"
    }
    path.write_text("[1, 2]")
    with pytest.raises(env.SettingError, match="ALLABEL_LABEL_DESCRIPTIONS"):
        Settings.from_env({"ALLABEL_LABEL_DESCRIPTIONS": str(path)})
    with pytest.raises(env.SettingError, match="ALLABEL_LABEL_DESCRIPTIONS must name a JSON file"):
        Settings.from_env({"ALLABEL_LABEL_DESCRIPTIONS": str(tmp_path / "missing.json")})


def test_the_command_line_reads_its_defaults_through_the_same_reader(monkeypatch, capsys):
    """`prelabel`'s --max-cost/--min-f1/--min-span-score defaults come from the variables the
    backend reads, with the same rules: 60% is a fraction, a typo is an error naming it."""
    from alllabel.cli import build_parser, main

    monkeypatch.setenv("ALLABEL_MIN_F1", "60%")
    monkeypatch.setenv("ALLABEL_MAX_COST_USD", "2.5")
    args = build_parser().parse_args(["prelabel", "x.jsonl"])
    assert args.min_f1 == 0.6 and args.max_cost == 2.5 and args.min_span_score is None
    monkeypatch.setenv("ALLABEL_MIN_SPAN_SCORE", "high")
    assert main(["prelabel", "x.jsonl"]) == 2
    assert "ALLABEL_MIN_SPAN_SCORE must be a fraction in [0, 1]" in capsys.readouterr().err
