"""Derive examples/mof_classify.jsonl from the MOF NER set (deterministic; see examples/NOTICE.md).

Each paragraph of ``examples/mof_zhang2024.jsonl`` gets two classification answers read off its
human entity annotations: ``"modulator"`` (single choice: "with modulator" when a span is labelled
``modulator``, else "without modulator") and ``"quantities"`` (multiple choice: which of metal
amount, linker amount and solvent volume the paragraph reports, i.e. has a span of that label).
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUANTITIES = ("metal amount", "linker amount", "solvent volume")


def derive(record: dict) -> dict:
    labels = {e["label"] for e in record["entities"]}
    return {
        "id": record["id"],
        "text": record["text"],
        "choices": ["with modulator" if "modulator" in labels else "without modulator"],
        "quantities": [q for q in QUANTITIES if q in labels],
    }


def main() -> None:
    src = ROOT / "examples" / "mof_zhang2024.jsonl"
    out = ROOT / "examples" / "mof_classify.jsonl"
    with src.open(encoding="utf-8") as f, out.open("w", encoding="utf-8") as g:
        for line in f:
            if line.strip():
                g.write(json.dumps(derive(json.loads(line)), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
