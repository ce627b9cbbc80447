"""The paper's retrieval ablation, task by task: two ``prelabel`` outputs of the same records (one
``--demos similar``, one ``--demos random``) against the gold entities.

    python -m bench.demos_ablation gold.jsonl similar.jsonl random.jsonl

Prints, for each run, the strict span micro F1 (exact start, end and label) and the paper's F1
(Appendix B.2: per-sample, per-type F1 of entity strings, averaged), then the per-task pairing:
tasks where similar demonstrations scored higher, lower or the same (paper F1), and the mean
difference. A failed task scores 0 in both metrics (nothing predicted).
"""

from __future__ import annotations

import argparse
import json
import statistics

from alllabel.prelabel.quality import sample_f1, span_prf


def _rows(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, filter(str.strip, f))}


def scores(gold: dict, run: dict, labels: list[str]) -> tuple[dict, float, int]:
    """Per-task paper F1, the strict span micro F1 of the run, and its failed tasks."""
    per_task, gold_sets, pred_sets, failed = {}, [], [], 0
    for rid, row in run.items():
        text, g = gold[rid]["text"], gold[rid]["entities"]
        pred = (row.get("prediction") or {}).get("entities")
        failed += pred is None
        pred = pred or []
        g_items = [(e["label"], text[e["start"] : e["end"]]) for e in g]
        p_items = [(e["label"], text[e["start"] : e["end"]]) for e in pred]
        per_task[rid] = sample_f1(g_items, p_items, labels)
        gold_sets.append({(e["start"], e["end"], e["label"]) for e in g})
        pred_sets.append({(e["start"], e["end"], e["label"]) for e in pred})
    return per_task, span_prf(gold_sets, pred_sets)[2], failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gold", help="JSONL with id, text and entities for every task")
    ap.add_argument("similar", help="prelabel output with --demos similar")
    ap.add_argument("random", help="prelabel output with --demos random")
    args = ap.parse_args()
    gold = _rows(args.gold)
    labels = sorted({e["label"] for r in gold.values() for e in r.get("entities") or []})
    sim_run, rnd_run = _rows(args.similar), _rows(args.random)
    common = sorted(set(sim_run) & set(rnd_run), key=str)
    sim_run = {i: sim_run[i] for i in common}
    rnd_run = {i: rnd_run[i] for i in common}
    (s_task, s_span, s_failed), (r_task, r_span, r_failed) = (
        scores(gold, sim_run, labels),
        scores(gold, rnd_run, labels),
    )
    print(f"{len(common)} tasks, labels {', '.join(labels)}")
    print("| demonstrations | span F1 (strict) | paper F1 | failed |")
    print("|---|---|---|---|")
    for name, task, span, failed in (
        ("similar", s_task, s_span, s_failed),
        ("random", r_task, r_span, r_failed),
    ):
        print(
            f"| {name} | {100 * span:.1f} | {100 * statistics.mean(task.values()):.1f} | {failed} |"
        )
    diff = [s_task[i] - r_task[i] for i in common]
    better, worse = sum(d > 1e-9 for d in diff), sum(d < -1e-9 for d in diff)
    print(
        f"per task (paper F1): similar higher on {better}, lower on {worse}, equal on "
        f"{len(diff) - better - worse}; mean difference {100 * statistics.mean(diff):+.1f} points"
    )


if __name__ == "__main__":
    main()
