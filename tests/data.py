"""The MOF data set in examples/ (MIT (c) 2023 zw-SIMM; see examples/NOTICE.md)."""

from functools import lru_cache
from pathlib import Path

from alllabel.text.jsonl import read_jsonl

MOF = Path(__file__).resolve().parents[1] / "examples" / "mof_zhang2024.jsonl"


@lru_cache
def mof_records() -> list[dict]:
    return read_jsonl(MOF)


def mof_texts(n: int | None = None) -> list[str]:
    return [r["text"] for r in mof_records()[:n]]


def mof_setup(n: int):
    """(texts, LabelSchema, gold spans by index, oracle answers by text, BM25) for the first n records."""
    from alllabel import BM25Similarity
    from alllabel.prelabel.prompt import LabelSchema, example_from_spans

    recs = mof_records()[:n]
    texts = [r["text"] for r in recs]
    labels = sorted({e["label"] for r in mof_records() for e in r["entities"]})
    spans = {
        i: [{"start": e["start"], "end": e["end"], "label": e["label"]} for e in r["entities"]]
        for i, r in enumerate(recs)
    }
    gold_by_text = {t: example_from_spans(t, spans[i]).entities for i, t in enumerate(texts)}
    return texts, LabelSchema(labels), spans, gold_by_text, BM25Similarity(texts)


def mof_jsonl(folder: Path, n: int) -> tuple[Path, list[dict]]:
    """The first n records (id, text, gold entities) as ``folder/mof.jsonl``, the CLI input."""
    from alllabel.text.jsonl import write_jsonl

    recs = [
        {
            "id": r["id"],
            "text": r["text"],
            "entities": [{k: e[k] for k in ("start", "end", "label")} for e in r["entities"]],
        }
        for r in mof_records()[:n]
    ]
    path = folder / "mof.jsonl"
    write_jsonl(path, recs)
    return path, recs


def oracle(recs: list[dict]):
    """A fake endpoint's responder answering each record's text with its gold entities."""
    from alllabel.prelabel.prompt import example_from_spans
    from tests.fake_openai import gold_responder

    return gold_responder(
        {r["text"]: example_from_spans(r["text"], r["entities"]).entities for r in recs}
    )
