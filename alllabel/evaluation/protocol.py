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

``leave_one_out`` is the same in-domain protocol on a project's human-annotated tasks (each one a
query, its k demonstrations from the others), the quality estimate shown before a bulk run, with
per-label precision/recall/F1 (string matches as in the paper's F1, summed over tasks).
"""

from __future__ import annotations

import csv
import logging
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alllabel.prelabel.annotators import prelabel
from alllabel.prelabel.carry_over import project_duplicates
from alllabel.selection.screening import Screening, screen
from alllabel.selection.similarity import DenseSimilarity, Similarity, matrix
from alllabel.selection.stages import select

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZES = tuple(range(10, 61, 5))


def label_counts(
    gold: Sequence[tuple[str, str]], pred: Sequence[tuple[str, str]], labels: Sequence[str]
) -> dict[str, tuple[int, int, int]]:
    """Per label (TP, FP, FN) of one sample, strings matched exactly as multisets (Appendix B.2)."""
    out = {}
    for label in labels:
        g = Counter(s for lab, s in gold if lab == label)
        p = Counter(s for lab, s in pred if lab == label)
        tp = sum((g & p).values())
        out[label] = (tp, sum(p.values()) - tp, sum(g.values()) - tp)
    return out


def sample_f1(
    gold: Sequence[tuple[str, str]], pred: Sequence[tuple[str, str]], labels: Sequence[str]
) -> float:
    """Appendix B.2 F1 of one sample; items are (label, string). A type empty in both scores 1."""
    scores = [
        2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        for tp, fp, fn in label_counts(gold, pred, labels).values()
    ]
    return sum(scores) / len(scores)


def span_prf(gold: Sequence[set], pred: Sequence[set]) -> tuple[float, float, float]:
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    n_pred = sum(map(len, pred))
    n_gold = sum(map(len, gold))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@dataclass
class QualityReport:
    """Leave-one-out quality of an annotator on the human-annotated tasks (see the module doc)."""

    annotator: str
    k: int
    tasks: int  # human-annotated tasks (each a query)
    scored: int  # answered and scored
    failed: int
    held: int  # not attempted (cost cap)
    f1: float | None  # the paper's F1 over the scored tasks, 0..1
    span_precision: float = 0.0
    span_recall: float = 0.0
    span_f1: float = 0.0
    per_label: dict[str, dict] = field(
        default_factory=dict
    )  # label -> precision, recall, f1, gold, predicted
    cost_usd: float = 0.0  # what its answers cost (cached ones at their price); 0 offline

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> str:
        """The report as text: one line per label, then the totals."""
        head = (
            f"leave-one-out on {self.tasks} human-annotated task(s) with {self.annotator}, k={self.k}: "
            + (
                f"paper F1 {100 * self.f1:.1f}"
                if self.f1 is not None
                else "no task could be scored"
            )
            + f", span P/R/F1 {100 * self.span_precision:.1f}/{100 * self.span_recall:.1f}/{100 * self.span_f1:.1f}"
            + (f"; {self.failed} failed" if self.failed else "")
            + (f"; {self.held} held by the cost cap" if self.held else "")
        )
        width = max([len("label"), *map(len, self.per_label)])
        lines = [head, f"  {'label':<{width}}  precision  recall    F1   gold  predicted"]
        for label, m in self.per_label.items():
            lines.append(
                f"  {label:<{width}}  {100 * m['precision']:>9.1f}  {100 * m['recall']:>6.1f}  {100 * m['f1']:>5.1f}  {m['gold']:>5}  {m['predicted']:>9}"
            )
        return "\n".join(lines)


def quality_gate(report: QualityReport, min_f1: float | None) -> str | None:
    """Why a bulk run should wait (None: go ahead). ``min_f1`` is the paper's F1 as a fraction."""
    if min_f1 is None:
        return None
    if report.f1 is None:
        return f"the quality check could not score any task ({report.failed} failed, {report.held} held); the minimum F1 is {min_f1:.2f}"
    if report.f1 < min_f1:
        return (
            f"leave-one-out F1 {report.f1:.3f} is below the minimum {min_f1:.3f} (ALLABEL_MIN_F1): annotate more tasks, "
            "improve the label definitions, or lower the minimum"
        )
    return None


def leave_one_out(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    labels: Sequence[str],
    annotator,
    sim: Similarity,
    *,
    k: int = 3,
    concurrency: int = 1,
    max_cost_usd: float | None = None,
    spent_usd: float = 0.0,
    min_span_score: float | None = None,
    run_key: str | None = None,
    batch_wait: float | None = None,
) -> QualityReport:
    """Pre-annotate every human-annotated task from the others (retrieval never returns the query
    itself) and score it against its human annotation. Costs one LLM call per task (cached)."""
    if len(gold) < 2:
        raise ValueError(
            "the quality check needs at least 2 human-annotated tasks (each is scored with demonstrations from the others)"
        )
    results = prelabel(
        texts,
        gold,
        annotator,
        sim,
        queries=sorted(gold),
        k=k,
        concurrency=concurrency,
        max_cost_usd=max_cost_usd,
        spent_usd=spent_usd,
        min_span_score=min_span_score,
        run_key=run_key,
        batch_wait=batch_wait,
    )
    counts = {label: [0, 0, 0] for label in labels}
    f1s, gold_sets, pred_sets = [], [], []
    for r in results:
        if r.annotation is None:
            continue
        text, g = texts[r.index], gold[r.index]
        g_items = [(s["label"], text[s["start"] : s["end"]]) for s in g]
        p_items = [(s.label, s.text) for s in r.annotation.spans]
        for label, c in label_counts(g_items, p_items, labels).items():
            for n in range(3):
                counts[label][n] += c[n]
        f1s.append(sample_f1(g_items, p_items, labels))
        gold_sets.append({(s["start"], s["end"], s["label"]) for s in g})
        pred_sets.append({(s.start, s.end, s.label) for s in r.annotation.spans})
    sp, sr, sf = span_prf(gold_sets, pred_sets)
    per_label = {}
    for label, (tp, fp, fn) in counts.items():
        p, r_, f = _prf(tp, fp, fn)
        per_label[label] = {
            "precision": p,
            "recall": r_,
            "f1": f,
            "gold": tp + fn,
            "predicted": tp + fp,
        }
    return QualityReport(
        getattr(annotator, "name", type(annotator).__name__),
        k,
        len(results),
        len(f1s),
        sum(r.status == "failed" for r in results),
        sum(r.status == "held" for r in results),
        sum(f1s) / len(f1s) if f1s else None,
        sp,
        sr,
        sf,
        per_label,
        results.cost_usd - spent_usd,
    )


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
) -> list[Row]:
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
                f1, sf1, sp, sr, failed = score_pool(
                    texts, gold_spans, labels, pool, annotator, dense, k, concurrency, dups
                )
                rows.append(Row(method, seed, m, f1, sf1, sp, sr, failed))
                if progress:
                    progress(
                        f"{method}{'' if seed is None else f' seed {seed}'} pool {m}: F1 {100 * f1:.1f}, span F1 {100 * sf1:.1f}"
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
            w.writerow(
                [
                    r.method,
                    "" if r.seed is None else r.seed,
                    r.pool_size,
                    f"{r.f1:.4f}",
                    f"{r.span_f1:.4f}",
                    f"{r.span_precision:.4f}",
                    f"{r.span_recall:.4f}",
                    r.failed,
                ]
            )
    summary = summarise(rows)
    sizes = sorted({r.pool_size for r in rows})
    lines = [
        f"# {title}".rstrip() if title else "# Evaluation",
        "",
        "F1 (paper, Appendix B.2) in %, mean ± std over seeds; span-level micro F1 in brackets.",
        "",
    ]
    lines.append("| method | " + " | ".join(map(str, sizes)) + " |")
    lines.append("|---|" + "---|" * len(sizes))
    for method, by_size in summary.items():
        cells = []
        for m in sizes:
            mean, std, span = by_size[m]
            cells.append(f"{mean:.1f}" + (f" ± {std:.1f}" if std else "") + f" [{span:.1f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    paths["table"].write_text("\n".join(lines) + "\n", encoding="utf-8")

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
            ax.fill_between(
                xs,
                [y - s for y, s in zip(ys, sd)],
                [y + s for y, s in zip(ys, sd)],
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set_xlabel("demonstration pool size (human-annotated samples)")
    ax.set_ylabel("F1 (%)")
    ax.set_title(title or "F1 vs pool size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths
