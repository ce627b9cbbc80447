"""The paper's evaluation protocol (Section 5.1, Appendix B.2), on any annotated JSONL.

In-domain: every sample is a query, its demonstrations come from the selected pool with itself
excluded. For each pool size (default 10..60 step 5) and method (ALLabel; random and cold-start
core-set with several seeds) we report:

* ``f1``: the paper's F1. Per sample and entity type, the predicted strings are matched exactly
  against the gold strings (as multisets): TP = matched, FP = predicted but unmatched, FN = gold
  but unmatched; F1 = 2TP / (2TP + FP + FN), and a type that is empty in both gold and
  prediction (a true negative) scores 1. The sample's F1 is the mean over all entity types;
  the data set's, the mean over samples.
* ``span_f1``: strict span-level micro F1 over (start, end, label) triples.

Method ``allabel-screened`` is ALLabel with the screening of ``screening.py`` (no near-duplicate
or length outlier offered to humans), and a query with a near-duplicate in the pool gets that
annotation projected (``projection.py``) instead of the annotator's output: the backend's and
CLI's default, next to the paper-exact ``allabel``.

The metrics and ``leave_one_out`` (the same in-domain protocol on a project's human-annotated
tasks, the quality check before a bulk run) live in ``alllabel.prelabel.quality``.
"""

from __future__ import annotations

import csv
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alllabel.prelabel.carry_over import project_duplicates
from alllabel.prelabel.quality import (  # noqa: F401 - the metrics, imported from here too
    QualityReport,
    label_counts,
    leave_one_out,
    quality_gate,
    sample_f1,
    span_prf,
)
from alllabel.prelabel.run import prelabel
from alllabel.selection.retrieval import demonstrations
from alllabel.selection.screening import Screening, screen
from alllabel.selection.similarity import DenseSimilarity, Similarity, matrix
from alllabel.selection.stages import select

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZES = tuple(range(10, 61, 5))


@dataclass
class Row:
    method: str
    seed: int | None
    pool_size: int
    f1: float
    span_f1: float
    span_precision: float
    span_recall: float
    failed: int


def score_pool(
    texts, gold_spans, labels, pool, annotator, sim, k, concurrency=1, duplicates=None
) -> tuple[float, float, float, float, int]:
    gold = {i: gold_spans[i] for i in pool}
    projected = (
        project_duplicates(texts, gold, duplicates, range(len(texts)))
        if duplicates is not None
        else {}
    )
    rest = [q for q in range(len(texts)) if q not in projected]
    results = prelabel(texts, gold, annotator, sim, queries=rest, k=k, concurrency=concurrency)
    results = sorted([*results, *projected.values()], key=lambda r: r.index)
    f1s, gold_sets, pred_sets, failed = [], [], [], 0
    for r in results:
        g = gold_spans[r.index]
        spans = r.annotation.spans if r.annotation else []
        failed += r.annotation is None
        f1s.append(
            sample_f1(
                [(s["label"], texts[r.index][s["start"] : s["end"]]) for s in g],
                [(s.label, s.text) for s in spans],
                labels,
            )
        )
        gold_sets.append({(s["start"], s["end"], s["label"]) for s in g})
        pred_sets.append({(s.start, s.end, s.label) for s in spans})
    p, r_, f = span_prf(gold_sets, pred_sets)
    return sum(f1s) / len(f1s), f, p, r_, failed


def evaluate(
    texts: Sequence[str],
    gold_spans: Sequence[list[dict]],
    labels: Sequence[str],
    annotator,
    sim: Similarity,
    *,
    pool_sizes: Sequence[int] = DEFAULT_POOL_SIZES,
    methods: Sequence[str] = ("allabel", "random", "coreset"),
    seeds: int = 5,
    k: int = 3,
    concurrency: int = 1,
    progress: Callable[[str], None] | None = None,
    screening: Screening | None = None,
    demos: Sequence[str] = ("similar",),
) -> list[Row]:
    """Every method x seed x pool size, scored with each kind of ``demos`` (similar: the paper's
    retrieval; random: its ablation, reported as "<method>, random demos")."""
    n = len(texts)
    if "allabel-screened" in methods and screening is None:
        screening = screen(texts)
    bad = [m for m in pool_sizes if not 1 <= m < n]
    if bad:
        raise ValueError(
            f"pool sizes must be between 1 and {n - 1} (the data has {n} samples): {bad}"
        )
    dense = (
        DenseSimilarity(matrix(sim)) if n <= 20000 else sim
    )  # one N x N pass, reused by every run
    rows = []
    for method in methods:
        for seed in [None] if method.startswith("allabel") else range(seeds):
            for m in pool_sizes:
                screened = method == "allabel-screened"
                pool = select(
                    dense,
                    m,
                    k=k,
                    method="allabel" if screened else method,
                    seed=seed or 0,
                    exclude=screening.excluded if screened else None,
                ).indices
                dups = screening.duplicates if screened else None
                for kind in demos:
                    name = method if kind == "similar" else f"{method}, {kind} demos"
                    f1, sf1, sp, sr, failed = score_pool(
                        texts, gold_spans, labels, pool, annotator,
                        demonstrations(dense, kind), k, concurrency, dups,
                    )  # fmt: skip
                    rows.append(Row(name, seed, m, f1, sf1, sp, sr, failed))
                    if progress:
                        progress(
                            f"{name}{'' if seed is None else f' seed {seed}'} pool {m}: F1 {100 * f1:.1f}, span F1 {100 * sf1:.1f}"
                        )
    return rows


def summarise(rows: list[Row]) -> dict[str, dict[int, tuple[float, float, float]]]:
    """method -> pool size -> (mean F1, std F1 over seeds, mean span F1), in percent."""
    out: dict[str, dict[int, tuple[float, float, float]]] = {}
    for method in dict.fromkeys(r.method for r in rows):
        out[method] = {}
        for m in sorted({r.pool_size for r in rows if r.method == method}):
            sel = [r for r in rows if r.method == method and r.pool_size == m]
            f1 = [100 * r.f1 for r in sel]
            out[method][m] = (
                statistics.mean(f1),
                statistics.pstdev(f1) if len(f1) > 1 else 0.0,
                statistics.mean(100 * r.span_f1 for r in sel),
            )
    return out


def write_reports(rows: list[Row], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """results.csv (every run), table.md (mean ± std per method and pool size) and f1_vs_pool.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "table": out / "table.md", "plot": out / "f1_vs_pool.png"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "seed",
                "pool_size",
                "f1",
                "span_f1",
                "span_precision",
                "span_recall",
                "failed",
            ]
        )
        for r in rows:
            seed = "" if r.seed is None else r.seed
            scores = (r.f1, r.span_f1, r.span_precision, r.span_recall)
            w.writerow([r.method, seed, r.pool_size, *(f"{x:.4f}" for x in scores), r.failed])
    summary = summarise(rows)
    legend = (
        "F1 (paper, Appendix B.2) in %, mean ± std over seeds; span-level micro F1 in brackets."
    )
    write_table(summary, paths["table"], title, legend)
    plot_vs_pool(summary, paths["plot"], title or "F1 vs pool size", "F1 (%)")
    return paths


def write_table(summary: dict, path: Path, title: str, legend: str) -> None:
    """table.md: one row per method, one column per pool size: mean ± std [second figure]."""
    sizes = sorted({m for by_size in summary.values() for m in by_size})
    lines = [f"# {title}".rstrip() if title else "# Evaluation", "", legend, ""]
    lines.append("| method | " + " | ".join(map(str, sizes)) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for method, by_size in summary.items():
        cells = [
            f"{mean:.1f}" + (f" ± {std:.1f}" if std else "") + f" [{second:.1f}]"
            for mean, std, second in (by_size[m] for m in sizes)
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_vs_pool(summary: dict, path: Path, title: str, ylabel: str) -> None:
    """The metric against pool size, one line per method, ± std shaded where seeds vary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, by_size in summary.items():
        xs = sorted(by_size)
        ys = [by_size[x][0] for x in xs]
        sd = [by_size[x][1] for x in xs]
        (line,) = ax.plot(xs, ys, marker="o", label=method)
        if any(sd):
            low, high = [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("demonstration pool size (human-annotated samples)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
