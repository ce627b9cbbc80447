"""Reading and writing JSONL task files (one JSON object a line)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; blank lines are skipped, a broken line is reported by number."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
                )
            records.append(record)
    return records


def jsonl_line(record: dict) -> str:
    """One record as a line of a JSONL file (``write_jsonl``'s format)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    write_lines(path, (jsonl_line(r) for r in records))


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Lines made by ``jsonl_line``, written in one go."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(lines))


def texts_of(records: list[dict], field: str = "text") -> list[str]:
    """The text field of every record, with a clear error naming the first record without one."""
    out = []
    for i, r in enumerate(records):
        value = r.get(field)
        if not isinstance(value, str):
            raise ValueError(f"record #{i} (id {r.get('id', '?')!r}) has no string field {field!r}")
        out.append(value)
    return out
