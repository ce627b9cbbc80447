"""The quality check before a bulk run, and the paper's metrics it reports.

``leave_one_out`` is the paper's in-domain protocol (Section 5.1) on a project's human-annotated
tasks: each one a query, its k demonstrations from the others. It reports the paper's F1
(Appendix B.2: per sample and entity type, predicted strings matched exactly against the gold
strings as multisets; a type empty in both scores 1; the sample's F1 is the mean over types, the
data set's the mean over samples), per-label precision/recall/F1 (string matches summed over
tasks) and strict span-level P/R/F1; for each ``<Choices>`` group answered in the same reply, accuracy and
per-class P/R/F1 with their macro F1 (``classify.classification_metrics``). ``quality_gate`` says
why a run should wait: its metric (``QualityReport.gate_f1``) is the lowest of the paper F1 (when
the config has <Labels>) and every group's macro F1, so each kind must reach ALLABEL_MIN_F1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from alllabel.prelabel import holds
from alllabel.prelabel.annotators import Prompted
from alllabel.prelabel.classify import classification_metrics
from alllabel.prelabel.holds import Hold
from alllabel.prelabel.run import PrelabelResults, prelabel
from alllabel.selection.similarity import Similarity


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
    billed_usd: float = 0.0  # what the endpoint billed for the check now (failed calls included)
    hold: Hold | None = field(default=None, repr=False)  # why tasks were held (the cost cap)
    choices: dict[str, dict] = field(default_factory=dict)  # <Choices name> -> its metrics

    @property
    def gate_f1(self) -> float | None:
        """What ALLABEL_MIN_F1 is compared with: the lowest of the paper F1 and every group's
        macro F1 (None: nothing could be scored)."""
        if self.scored == 0:
            return None
        found = [m["macro_f1"] for m in self.choices.values()]
        return min(found + ([self.f1] if self.f1 is not None else []), default=None)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "hold"}
        return {**d, "gate_f1": self.gate_f1} if self.choices else d

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
        for name, m in self.choices.items():
            head += (
                f'\n  <Choices name="{name}">: accuracy {100 * m["accuracy"]:.1f}, '
                f"macro F1 {100 * m['macro_f1']:.1f} over {m['n']} task(s); per class P/R/F1: "
                + ", ".join(
                    f"{c} {100 * v['precision']:.0f}/{100 * v['recall']:.0f}/{100 * v['f1']:.0f}"
                    for c, v in m["per_class"].items()
                )
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
    f1 = report.gate_f1
    if f1 is None:
        return f"the quality check could not score any task ({report.failed} failed, {report.held} held); the minimum F1 is {min_f1:.2f}"
    if f1 < min_f1:
        what = (
            "F1 (the lowest of the span F1 and each <Choices> macro F1)" if report.choices else "F1"
        )
        return (
            f"leave-one-out {what} {f1:.3f} is below the minimum {min_f1:.3f} (ALLABEL_MIN_F1): annotate more tasks, "
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
    on_billed: Callable[[float], None] | None = None,
    ledger: bool = False,
) -> QualityReport:
    """Pre-annotate every human-annotated task from the others (retrieval never returns the query
    itself) and score it against its human annotation. Costs one LLM call per task (cached).

    Always answered online, even when bulk runs use the Batch API: it gates the run. The cost
    cap, ``spent_usd``, ``on_billed`` and ``ledger`` are ``prelabel``'s."""
    if len(gold) < 2:
        raise ValueError(
            "the quality check needs at least 2 human-annotated tasks (each is scored with "
            "demonstrations from the others)"
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
        executor=annotator.executor(batch=False, on_billed=on_billed)
        if isinstance(annotator, Prompted)
        else None,
        ledger=ledger,
    )
    groups = getattr(getattr(annotator, "schema", None), "choices", ())
    name = getattr(annotator, "name", "?")
    return score(texts, gold, labels, results, name, k, spent_usd, groups)


def score(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    labels: Sequence[str],
    results: PrelabelResults,
    annotator: str,
    k: int,
    spent_usd: float = 0.0,
    groups: Sequence = (),
) -> QualityReport:
    """The report of a leave-one-out run: each answered task against its human annotation."""
    counts = {label: [0, 0, 0] for label in labels}
    f1s, gold_sets, pred_sets = [], [], []
    answered = [r for r in results if r.annotation is not None]
    for r in answered if labels else ():
        text, g = texts[r.index], gold[r.index]
        g_items = [(s["label"], text[s["start"] : s["end"]]) for s in g]
        p_items = [(s.label, s.text) for s in r.annotation.spans]
        for label, c in label_counts(g_items, p_items, labels).items():
            counts[label] = [a + b for a, b in zip(counts[label], c)]
        f1s.append(sample_f1(g_items, p_items, labels))
        gold_sets.append({(s["start"], s["end"], s["label"]) for s in g})
        pred_sets.append({(s.start, s.end, s.label) for s in r.annotation.spans})
    per_label = {}
    for label, (tp, fp, fn) in counts.items():
        p, r_, f = _prf(tp, fp, fn)
        per_label[label] = {"precision": p, "recall": r_, "f1": f, "gold": tp + fn}
        per_label[label]["predicted"] = tp + fp
    return QualityReport(
        annotator,
        k,
        len(results),
        len(answered),
        sum(r.status == "failed" for r in results),
        sum(r.status == "held" for r in results),
        sum(f1s) / len(f1s) if f1s else None,
        *span_prf(gold_sets, pred_sets),
        per_label,
        results.cost_usd - spent_usd,
        results.billed_usd,
        results.hold(),
        _choices_metrics(gold, answered, groups),
    )


def _choices_metrics(gold: dict, answered: list, groups: Sequence) -> dict[str, dict]:
    """Each <Choices> group's classification metrics over the answered tasks."""
    out = {}
    for group in groups:
        g = [gold[r.index].chosen(group.name) for r in answered]
        p = [r.annotation.choices.get(group.name, []) for r in answered]
        out[group.name] = classification_metrics(g, p, group.values)
    return out


def quality_hold(report: QualityReport, min_f1: float | None, key: object = None) -> Hold | None:
    """``quality_gate`` as a structured hold (``key``: what must change for it to lift)."""
    why = quality_gate(report, min_f1)
    if why is None:
        return None
    return holds.Hold("min_f1", why, f1=report.f1, min_f1=min_f1, key=key)
