"""The status page at ``GET /``: what ``/status`` says, as HTML a person reads.

Rendered on the server from the same dict ``/status`` answers with (so its figures are /status's),
with no script and nothing fetched from elsewhere. Every value is escaped: task text, error
messages and label names come from users. Figures carry ``data-k`` (their /status path) so tests
compare them. It refreshes itself every ``RUN_REFRESH`` seconds while a run goes, else slower.
"""

from __future__ import annotations

import time
from html import escape

RUN_REFRESH = 5
IDLE_REFRESH = 30

# What the user does about each hold (the hold's own message says why it holds).
HOLD_FIX = {
    "cost_cap": "Raise ALLABEL_MAX_COST_USD, restart the backend and press Start Training.",
    "batch": "Nothing: the backend collects the Batch API answers when they are ready.",
    "stopped": "Nothing: the next start of the backend goes on.",
    "min_f1": "Annotate more tasks or improve the label definitions (or lower ALLABEL_MIN_F1).",
    "min_live_f1": "Review the corrections, improve the prompt or model, then press Start Training.",
    "manual": "Check the estimate, then press Start Training in Label Studio to approve it.",
}

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse}td,th{padding:.15em .7em;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:flex;width:30em;height:1em;background:#eee;border-radius:3px;overflow:hidden}
.bar span{display:block;height:100%}.a{background:#2a7}.b{background:#8cd}.c{background:#d84}
.phase{padding:.1em .5em;border-radius:3px;background:#def}
.hold,.block{border-left:4px solid #d84;padding:.3em .8em;background:#fff6ee;margin:.4em 0}
.block{border-color:#c33;background:#fee}.warn{color:#855}.muted{color:#777}
"""


def v(x) -> str:
    """A value as escaped text (None: a dash)."""
    return "–" if x is None else escape(str(x))


def fig(key: str, x, shown: str | None = None) -> str:
    """A figure, tagged with its /status path for tests."""
    return f'<span data-k="{escape(key)}">{v(x) if shown is None else escape(shown)}</span>'


def usd(x) -> str | None:
    return None if x is None else f"US${x:.4f}"


def bar(parts: list[tuple[str, float]], whole: float) -> str:
    """A horizontal bar of ``parts`` (CSS class, amount) out of ``whole``."""
    if not whole:
        return '<div class="bar"></div>'
    spans = "".join(
        f'<span class="{c}" style="width:{min(100.0, 100 * max(0.0, x) / whole):.1f}%"></span>'
        for c, x in parts
    )
    return f'<div class="bar">{spans}</div>'


def duration(seconds) -> str | None:
    if seconds is None:
        return None
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def running(status: dict) -> bool:
    return any(p.get("phase") == "prelabeling" for p in status.get("projects", []))


def render(status: dict, now: float | None = None) -> str:
    """The whole page for an ``Orchestrator.status()`` answer."""
    now = time.time() if now is None else now
    refresh = RUN_REFRESH if running(status) else IDLE_REFRESH
    projects = "".join(project_html(p) for p in status.get("projects", [])) or (
        '<p class="muted">No project has connected this backend yet.</p>'
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{refresh}">'
        f"<title>ALLabel: {v(status.get('model_version'))}</title><style>{STYLE}</style></head>"
        f"<body><h1>ALLabel backend {fig('model_version', status.get('model_version'))}</h1>"
        f'<p class="muted">Annotator {fig("annotator", status.get("annotator"))}; '
        f'as of {stamp}, refreshed every {refresh} s. JSON: <a href="status">/status</a>.</p>'
        f"{projects}</body></html>"
    )


def project_html(p: dict) -> str:
    run = p.get("run") or {}
    return (
        f'<section data-project="{v(p["project"])}"><h2>Project {v(p["project"])} '
        f'<span class="phase">{fig("phase", p["phase"])}</span></h2>'
        # The message may repeat the hold, shown below with what to do about it.
        + (
            f"<p>{fig('message', p['message'])}</p>"
            if p.get("message") and p["message"] != run.get("hold")
            else ""
        )
        + problems_html(p, run)
        + budget_html(p)
        + run_html(run)
        + live_html(p.get("live_accuracy"))
        + notes_html(p, run)
        + "</section>"
    )


def budget_html(p: dict) -> str:
    n, budget = p["annotated_tasks"], p["budget"]
    from_queue = p["annotated_from_queue"]
    q, pre = p["queue"], p["prelabels"]
    return (
        "<h3>Human annotations</h3>"
        + bar([("a", from_queue), ("b", n - from_queue)], max(budget or 0, n))
        + '<p class="muted">green: ALLabel picks (from the queue); blue: not picks</p>'
        + order_html(p.get("order"))
        + f"<p>{fig('annotated_tasks', n)} annotated of a budget of {fig('budget', budget)} "
        f"({fig('annotated_from_queue', from_queue)} from the queue, "
        f"{fig('annotated_outside_queue', n - from_queue)} outside it); "
        f"{fig('total_tasks', p['total_tasks'])} tasks in the project.</p>"
        f"<p>Queue: {fig('queue.selected', q['selected'])} selected, "
        f"{fig('queue.pushed', q['pushed'])} in Label Studio's order, reserve "
        f"{fig('queue.reserve', q.get('reserve'))}; {fig('unconfirmed_claims', p['unconfirmed_claims'])}"
        f" annotation(s) awaiting confirmation; {fig('skipped_tasks', p['skipped_tasks'])} skipped."
        f"</p><p>Pre-annotations: {fig('prelabels.done', pre['done'])} made, "
        f"{fig('prelabels.pushed', pre['pushed'])} in Label Studio, "
        f"{fig('prelabels.failed', pre['failed'])} failed.</p>"
    )


def order_html(order: dict | None) -> str:
    """Whether Label Studio serves the ALLabel order yet, and what was annotated before it."""
    if not order:
        return ""
    before = fig("order.annotated_before", order.get("annotated_before"))
    if order.get("since") is None:
        return (
            "<p><b>Label Studio does not serve the ALLabel order yet</b> (the queue is being "
            f"selected): it serves the project's previous order; {before} task(s) annotated so "
            "far are not ALLabel picks (they count toward the budget, pre-chosen).</p>"
        )
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(order["since"]))
    return (
        f"<p>Label Studio serves the ALLabel order since {fig('order.since', at)}; {before} "
        "task(s) annotated before that are not ALLabel picks (they count toward the budget, "
        "pre-chosen).</p>"
    )


def run_html(run: dict) -> str:
    if not run:
        return ""
    out = "<h3>Pre-annotation run</h3>"
    est = run.get("estimate")
    if est:
        out += (
            f"<p>Estimate: {fig('run.estimate.tasks', est.get('tasks'))} tasks, "
            f"{fig('run.estimate.prompt_tokens', est.get('prompt_tokens'))} prompt + "
            f"~{fig('run.estimate.completion_tokens', est.get('completion_tokens'))} reply tokens;"
            f" {fig('run.estimate.cost_usd', est.get('cost_usd'), usd(est.get('cost_usd')))} "
            "online, "
            f"{fig('run.estimate.batch_cost_usd', est.get('batch_cost_usd'), usd(est.get('batch_cost_usd')))}"
            " through the Batch API.</p>"
        )
    spent, cap = run.get("spent_usd", 0.0), run.get("cap_usd")
    out += (
        (bar([("c", spent)], cap) if cap else "")
        + f"<p>Spent {fig('run.spent_usd', spent, usd(spent))}"
        + (
            f" of a cap of {fig('run.cap_usd', cap, usd(cap))}.</p>"
            if cap is not None
            else "; no cost cap (ALLABEL_MAX_COST_USD is not set).</p>"
        )
    )
    progress = progress_html(run.get("progress"), held=bool(run.get("hold") or run.get("blocked")))
    return out + progress + quality_html(run.get("quality"))


def progress_html(pr: dict | None, held: bool) -> str:
    if not pr:
        return ""
    total, done, failed = pr.get("total", 0), pr.get("done", 0), pr.get("failed", 0)
    rate, left = pr.get("rate_per_min"), pr.get("seconds_left")
    # A held run does not finish at its rate: say so rather than show a time.
    shown = "held, so no time" if held and left else duration(left) or "unknown time"
    return (
        bar([("a", done), ("c", failed)], total)
        + f"<p>Progress: {fig('run.progress.done', done)} done, "
        f"{fig('run.progress.failed', failed)} failed of {fig('run.progress.total', total)} "
        f"with {v(pr.get('annotator'))}; "
        f"{fig('run.progress.rate_per_min', rate)} tasks a minute, "
        f"{fig('run.progress.seconds_left', left, shown)}"
        " left.</p>"
    )


def prf_table(rows: dict, key: str) -> str:
    """Per-label precision/recall/F1 (fractions) as a table; figures tagged ``key.LABEL.f1``."""
    body = "".join(
        f"<tr><td>{v(label)}</td>"
        + "".join(
            f'<td class="n">{fig(f"{key}.{label}.{m}", r.get(m), pct(r.get(m)))}</td>'
            for m in ("precision", "recall", "f1")
        )
        + "</tr>"
        for label, r in rows.items()
    )
    return (
        f"<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th></tr>{body}</table>"
    )


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def quality_html(q: dict | None) -> str:
    if not q:
        return ""
    return (
        f"<h3>Quality check (leave-one-out, k={v(q.get('k'))})</h3>"
        f"<p>Paper F1 {fig('run.quality.f1', q.get('f1'), pct(q.get('f1')))} over "
        f"{fig('run.quality.scored', q.get('scored'))} of {v(q.get('tasks'))} "
        f"human-annotated tasks; span F1 {pct(q.get('span_f1'))}.</p>"
        + prf_table(q.get("per_label") or {}, "run.quality.per_label")
        + "".join(choices_html(name, m) for name, m in (q.get("choices") or {}).items())
    )


def choices_html(name: str, m: dict) -> str:
    """A <Choices> group's leave-one-out: accuracy, macro F1, per-class P/R/F1."""
    key = f"run.quality.choices.{name}"
    return (
        f"<p>&lt;Choices name=&quot;{v(name)}&quot;&gt;: accuracy "
        f"{fig(f'{key}.accuracy', m.get('accuracy'), pct(m.get('accuracy')))}, macro F1 "
        f"{fig(f'{key}.macro_f1', m.get('macro_f1'), pct(m.get('macro_f1')))}.</p>"
        + prf_table(m.get("per_class") or {}, f"{key}.per_class")
    )


def live_html(live: dict | None) -> str:
    if not live:
        return ""
    out = "<h3>Live accuracy (human corrections of our pre-annotations)</h3>"
    if not live.get("versions"):
        return out + '<p class="muted">No pre-annotated task has been reviewed yet.</p>'
    for version, m in live.get("versions", {}).items():
        out += (
            f"<p>Model version {v(version)}: span F1 "
            f"{fig(f'live_accuracy.versions.{version}.f1', m.get('f1'), pct(m.get('f1')))} over "
            f"{fig(f'live_accuracy.versions.{version}.tasks', m.get('tasks'))} reviewed task(s)."
            "</p>"
            + prf_table(m.get("per_label") or {}, f"live_accuracy.versions.{version}.per_label")
        )
    return out


def problems_html(p: dict, run: dict) -> str:
    out = ""
    if run.get("blocked"):
        out += (
            f'<div class="block"><b>Blocked:</b> {fig("run.blocked", run["blocked"])}<br>'
            "Fix it and press Start Training in Label Studio.</div>"
        )
    if run.get("hold"):
        fix = HOLD_FIX.get(run.get("hold_kind"), "")
        out += (
            f'<div class="hold"><b>Held ({fig("run.hold_kind", run.get("hold_kind"))}):</b> '
            f"{fig('run.hold', run['hold'])}<br>{escape(fix)}</div>"
        )
    if p.get("detached"):
        out += (
            '<div class="block"><b>Detached:</b> the project no longer lists this backend; '
            "connect the model again to resume.</div>"
        )
    return out


def notes_html(p: dict, run: dict) -> str:
    out = ""
    warnings = p.get("warnings") or []
    stale = run.get("stale") or {}
    if warnings or stale.get("tasks"):
        items = "".join(f'<li class="warn">{v(w)}</li>' for w in warnings)
        if stale.get("tasks"):
            items += (
                f"<li>{fig('run.stale.tasks', stale['tasks'])} pre-annotation(s) made with "
                "other settings (model, prompt, demonstrations) are being redone.</li>"
            )
        out += f"<h3>Settings drift and ignored controls</h3><ul>{items}</ul>"
    errors = p.get("errors") or []
    if errors:
        rows = "".join(
            "<li>"
            + (time.strftime("%H:%M:%S UTC ", time.gmtime(e["at"])) if e.get("at") else "")
            + (f"task {v(e['task'])}: " if e.get("task") is not None else "")
            + f"{v(e.get('error'))}</li>"
            for e in errors
        )
        out += f"<h3>Last errors</h3><ul>{rows}</ul>"
    return out
