"""The paper's protocol (Section 5.1; Appendix D.2 runs ALLabel on other NLP tasks) on a
classification set: for each pool size and method (ALLabel; random and core-set with several
seeds) the pool is the human-annotated set, every other sample is classified from its k most
similar pool members by the backend's annotator (one ``<Choices>`` group, ``prelabel.run``), and
we report accuracy and macro F1 (``alllabel.prelabel.classify``).

Reports: results.csv (every run), table.md (mean ± std per method and pool size) and
accuracy_vs_pool.png.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alllabel.evaluation.protocol import plot_vs_pool, write_table
from alllabel.prelabel.classify import classification_metrics
from alllabel.prelabel.prompt import annotated
from alllabel.prelabel.run import prelabel
from alllabel.selection.similarity import DenseSimilarity, Similarity, matrix
from alllabel.selection.stages import select


@dataclass
class ChoiceRow:
    method: str
    seed: int | None
    pool_size: int
    accuracy: float
    macro_f1: float


def score_choice_pool(
    texts, gold, pool, annotator, sim, k: int, concurrency: int = 1
) -> tuple[float, float]:
    """(accuracy, macro F1) over the samples outside the pool, classified from the pool (a task
    whose call failed counts as answered wrong)."""
    (group,) = annotator.schema.choices
    chosen = {i: annotated([], {group.name: gold[i]}, annotator.schema) for i in pool}
    queries = [i for i in range(len(texts)) if i not in chosen]
    results = prelabel(texts, chosen, annotator, sim, queries=queries, k=k, concurrency=concurrency)
    pred = [r.annotation.choices.get(group.name, []) if r.annotation else [] for r in results]
    m = classification_metrics([gold[i] for i in queries], pred, group.values)
    return m["accuracy"], m["macro_f1"]


def evaluate_choices(
    texts: Sequence[str],
    gold: Sequence[Sequence[str]],
    annotator,
    sim: Similarity,
    *,
    pool_sizes: Sequence[int],
    methods: Sequence[str] = ("allabel", "random", "coreset"),
    seeds: int = 5,
    k: int = 3,
    concurrency: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[ChoiceRow]:
    """The protocol's runs; ``annotator`` answers one <Choices> group (``LabelSchema.choices``)."""
    n = len(texts)
    bad = [m for m in pool_sizes if not 1 <= m < n]
    if bad:
        raise ValueError(f"pool sizes must be between 1 and {n - 1} (the data has {n}): {bad}")
    dense = DenseSimilarity(matrix(sim)) if n <= 20000 else sim
    rows = []
    for method in methods:
        for seed in [None] if method == "allabel" else range(seeds):
            for m in pool_sizes:
                pool = select(dense, m, k=k, method=method, seed=seed or 0).indices
                acc, f1 = score_choice_pool(texts, gold, pool, annotator, dense, k, concurrency)
                rows.append(ChoiceRow(method, seed, m, acc, f1))
                if progress:
                    tag = "" if seed is None else f" seed {seed}"
                    progress(
                        f"{method}{tag} pool {m}: accuracy {100 * acc:.1f}, macro F1 {100 * f1:.1f}"
                    )
    return rows


def summarise_choices(rows: list[ChoiceRow]) -> dict[str, dict[int, tuple[float, float, float]]]:
    """method -> pool size -> (mean accuracy, its std over seeds, mean macro F1), in percent."""
    out: dict[str, dict[int, tuple[float, float, float]]] = {}
    for method in dict.fromkeys(r.method for r in rows):
        out[method] = {}
        for m in sorted({r.pool_size for r in rows if r.method == method}):
            sel = [r for r in rows if r.method == method and r.pool_size == m]
            acc = [100 * r.accuracy for r in sel]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            out[method][m] = (
                statistics.mean(acc),
                std,
                statistics.mean(100 * r.macro_f1 for r in sel),
            )
    return out


def write_choice_reports(
    rows: list[ChoiceRow], out_dir: str | Path, title: str = ""
) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "results.csv",
        "table": out / "table.md",
        "plot": out / "accuracy_vs_pool.png",
    }
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "pool_size", "accuracy", "macro_f1"])
        for r in rows:
            seed = "" if r.seed is None else r.seed
            w.writerow([r.method, seed, r.pool_size, f"{r.accuracy:.4f}", f"{r.macro_f1:.4f}"])
    summary = summarise_choices(rows)
    legend = "Accuracy in %, mean ± std over seeds; macro F1 in brackets."
    write_table(summary, paths["table"], title, legend)
    plot_vs_pool(summary, paths["plot"], title or "accuracy vs pool size", "accuracy (%)")
    return paths
