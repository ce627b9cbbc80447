"""Text classification (Label Studio ``<Choices>``): what the one-call annotator needs beyond spans.

The prompt, the reply's schema (an enum per group) and its parsing are the span pipeline's
(``alllabel.prelabel.prompt``: a ``ChoiceGroup`` per ``<Choices>``), so a classification run has
the same retrieval, demonstrations, windows, confidence, cost cap, Batch API, carry-over and
quality check as a span run. Here:

* ``vote``: the offline answer of a group - the similarity-weighted vote of the demonstrations
  (``ProjectionAnnotator`` uses it);
* ``classification_metrics``: accuracy and per-class P/R/F1 with their macro F1 (the quality
  check's and ``evaluate --choices-field``'s).
"""

from __future__ import annotations

from collections.abc import Sequence


def vote(
    values: Sequence[str], multiple: bool, answers: Sequence[tuple[Sequence[str], float]]
) -> tuple[list[str], float]:
    """The similarity-weighted vote of demonstrations' answers (each weighs at least a tiny bit,
    so equal-zero similarities still vote): the values with half the vote or more (multiple),
    else the best one; score = the winners' weakest share (multiple, none won: 1 - the best)."""
    weight = {c: 0.0 for c in values}
    total = 0.0
    for chosen, similarity in answers:
        w = max(similarity, 1e-6)
        total += w
        for c in chosen:
            if c in weight:
                weight[c] += w
    if total == 0:
        return [], 0.0
    share = {c: w / total for c, w in weight.items()}
    if multiple:
        won = [c for c in values if share[c] >= 0.5]
        return won, round(min((share[c] for c in won), default=1 - max(share.values())), 6)
    best = max(values, key=lambda c: (share[c], -list(values).index(c)))
    return [best], round(share[best], 6)


def classification_metrics(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], choices: Sequence[str]
) -> dict:
    """Accuracy (the whole answer right), per-class precision/recall/F1 and their macro F1."""
    per_class = {}
    for c in choices:
        tp = sum(c in g and c in p for g, p in zip(gold, pred))
        fp = sum(c not in g and c in p for g, p in zip(gold, pred))
        fn = sum(c in g and c not in p for g, p in zip(gold, pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    right = sum(set(g) == set(p) for g, p in zip(gold, pred))
    return {
        "n": len(gold),
        "accuracy": right / len(gold) if gold else 0.0,
        "macro_f1": sum(v["f1"] for v in per_class.values()) / len(per_class) if per_class else 0.0,
        "per_class": per_class,
    }
