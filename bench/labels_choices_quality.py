"""Leave-one-out on a <Labels> + <Choices> set, offline: the MOF NER spans of
examples/mof_zhang2024.jsonl with the classification answers scripts/derive_classification.py
reads off them ("modulator": single, "quantities": multiple), pre-annotated together by the
offline annotator (projection for spans, the demonstrations' vote for choices), BM25.

    python -m bench.labels_choices_quality [k]

Prints the quality check's report (the one /status shows) for three sets of human annotations:
the ALLabel selection of 33 tasks (5 %), the first 33, all 658.
"""

import sys
from pathlib import Path

from alllabel import BM25Similarity
from alllabel.prelabel.annotators import ProjectionAnnotator
from alllabel.prelabel.prompt import ChoiceGroup, LabelSchema, annotated
from alllabel.prelabel.quality import leave_one_out
from alllabel.selection.similarity import DenseSimilarity, matrix
from alllabel.selection.stages import select
from alllabel.text.jsonl import read_jsonl
from scripts.derive_classification import QUANTITIES, derive

MOF = Path(__file__).resolve().parents[1] / "examples" / "mof_zhang2024.jsonl"


def main(k: int = 3) -> None:
    recs = read_jsonl(MOF)
    labels = sorted({e["label"] for r in recs for e in r["entities"]})
    modulator = ChoiceGroup("modulator", ("with modulator", "without modulator"))
    schema = LabelSchema(
        labels, choices=(modulator, ChoiceGroup("quantities", QUANTITIES, multiple=True))
    )
    texts = [r["text"] for r in recs]
    sim = BM25Similarity(texts)

    def gold(i: int):
        spans = [
            {"start": e["start"], "end": e["end"], "label": e["label"]} for e in recs[i]["entities"]
        ]
        d = derive(recs[i])
        return annotated(spans, {"modulator": d["choices"], "quantities": d["quantities"]}, schema)

    sets = {
        "the ALLabel selection of 33": select(DenseSimilarity(matrix(sim)), 33, k=k).indices,
        "the first 33": range(33),
        f"all {len(recs)}": range(len(recs)),
    }
    for name, pool in sets.items():
        q = leave_one_out(
            texts, {i: gold(i) for i in pool}, labels, ProjectionAnnotator(schema), sim, k=k
        )
        print(f"== {name} annotated (gate F1 {100 * q.gate_f1:.1f})\n{q.table()}\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
