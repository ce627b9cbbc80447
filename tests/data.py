"""The shared MOF data set (MIT (c) 2023 zw-SIMM; see ../shared/data/README.md)."""
from functools import lru_cache
from pathlib import Path

from alllabel.jsonl import read_jsonl

MOF = Path(__file__).resolve().parents[2] / "shared" / "data" / "mof_zhang2024.jsonl"


@lru_cache
def mof_records() -> list[dict]:
    return read_jsonl(MOF)


def mof_texts(n: int | None = None) -> list[str]:
    return [r["text"] for r in mof_records()[:n]]
