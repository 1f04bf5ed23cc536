"""The FinOps page as HTML: one document, no script, every name escaped, money through format_usd.

Links point into the MLflow UI of the same server (``<prefix>/#/experiments/<id>/runs/<run id>``),
so a figure leads to the run behind it.
"""

from __future__ import annotations

import html
import itertools
from datetime import datetime, timezone
from typing import Iterable, Iterator, Sequence
from urllib.parse import quote

from ..money import format_usd
from ..names import ENV_POLICY, RetrainState
from ..units import format_co2e, format_energy
from ..spend.report import budget_table
from ..spend.rollup import GROUP_LEVELS, NONE_KEY, GroupCost
from .data import PageData, Retrain, fronts

__all__ = ["head", "sections", "error", "TITLE"]

_POINTS = ("accuracy", "f1", "roc_auc", "r2")  # metrics in [0, 1]: a gain reads as percentage points
TITLE = "FinOps: what this MLflow server's runs cost"
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2933;background:#f7f8fa}
header{background:#0b3b5c;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cde6ff}header h1{font-size:1.25em;margin:0;flex:1}
main{padding:8px 24px 32px;max-width:1280px}
h2{font-size:1.1em;margin:1.6em 0 .4em}
form{margin:14px 0;display:flex;gap:12px;align-items:end;flex-wrap:wrap}
label{font-size:.85em;color:#52606d;display:flex;flex-direction:column;gap:2px}
input{font:inherit;padding:4px 6px;border:1px solid #cbd2d9;border-radius:4px;width:12em}
button{font:inherit;padding:5px 14px;border-radius:4px;border:0;background:#0b6bcb;color:#fff;cursor:pointer}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:1.5em}.card span{color:#52606d;font-size:.85em}
.cols{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}.cols>section{flex:1;min-width:300px}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0;background:#fff}
th,td{border:1px solid #e4e7eb;padding:3px 8px;text-align:right}th{background:#f0f4f8}
td:first-child,th:first-child{text-align:left}
.over{color:#b91c1c;font-weight:bold}.warn{color:#b45309;font-weight:bold}.muted{color:#7b8794}
figure{margin:.5em 0;background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:6px}
svg{max-width:100%;height:auto}.meta{color:#7b8794;font-size:.8em}
pre{background:#fff;border:1px solid #e4e7eb;padding:8px;font-size:.85em}
.pareto{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def run_href(prefix: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run on this server."""
    return f"{prefix}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"


def _run_link(prefix: str, experiment_id: str | None, run_id: str, text: str) -> str:
    if not experiment_id:
        return _e(text)
    return f'<a href="{_e(run_href(prefix, experiment_id, run_id))}">{_e(text)}</a>'


def head(prefix: str, since: str, until: str) -> str:
    """The start of the document (sent before the store is read): title, links, the period form."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{_e(TITLE)}</title>'
        f"<style>{_CSS}</style></head><body>"
        f'<header><h1>{_e(TITLE)}</h1><a href="{_e(prefix)}/">MLflow experiments</a></header><main>'
        f'<form method="get" action="{_e(prefix)}/finops/" id="period">'
        f'<label>since<input name="since" value="{_e(since)}" title="2026-11-01, 30d, 12h, 2w"></label>'
        f'<label>until<input name="until" value="{_e(until)}" title="2026-11-30, now"></label>'
        "<button type=\"submit\">Show</button>"
        '<span class="meta">dates (UTC) like 2026-11-01 or ages like 30d, 12h, 2w; until a bare date '
        "includes that day</span></form>"
    )


def error(message: str) -> str:
    return f'<p class="over" id="error">{_e(message)}</p></main></body></html>'


def sections(data: PageData, prefix: str, *, cached_at: datetime, ttl_s: float) -> Iterator[str]:
    """Everything after the form, part by part (a chart is drawn only when its part is due): summary,
    budgets, spend per team / model / experiment, retrains, the most expensive runs, then the fronts."""
    rep = data.report
    t = rep.total()
    period = (f"{rep.since.strftime('%Y-%m-%d %H:%M') if rep.since else 'the beginning'} .. "
              f"{rep.until.strftime('%Y-%m-%d %H:%M') if rep.until else 'now'} UTC")
    yield "\n".join([
        f'<p>Runs started {_e(period)}, in every experiment of this server.</p><div class="cards" id="summary">',
        _card(format_usd(t.cost_usd), "spent", "total-cost"),
        _card(str(t.runs), "tracked runs", "tracked-runs"),
        _card(str(t.untracked), "untracked runs (no cost, not summed)", "untracked-runs"),
        _card(format_usd(t.idle_cost_usd), "paid for idle capacity", "idle-cost"),
        _card(format_energy(t.energy_kwh), format_co2e(t.co2e_kg), "energy"),
        "</div>",
    ])
    yield from _budgets(data)
    yield "\n".join([
        '<div class="cols">',
        *(_group_section(level, rep.groups(level), t.cost_usd, data, prefix) for level in ("team", "model")),
        "</div>",
        _group_section("experiment", rep.groups("experiment"), t.cost_usd, data, prefix),
        _retrains(data, prefix),
        _top_runs(data, prefix),
    ])
    yield from _fronts(data, prefix)
    yield (f'<p class="meta" id="read">Read {len(rep.runs)} run(s) in {rep.pages} page(s) from the tracking store '
           f"in {data.seconds:.2f} s at {cached_at.strftime('%H:%M:%S')} UTC; the page keeps these figures "
           f"{ttl_s:.0f} s for the same period. The same figures: <code>mlflow-finops report</code> with the "
           "same --since/--until.</p></main></body></html>")


def _card(value: str, what: str, ident: str) -> str:
    return f'<div class="card" id="{ident}"><b>{_e(value)}</b><span>{_e(what)}</span></div>'


def _table(header: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]], ident: str) -> str:
    """Rows of already-escaped cells, each with its own class ("" for none)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join((f'<tr class="{c}">' if c else "<tr>") + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"
                   for c, cells in rows)
    return f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _group_section(level: str, groups: list[GroupCost], total: float, data: PageData, prefix: str) -> str:
    assert level in GROUP_LEVELS
    rows = []
    for g in groups:
        key = _e(g.key)
        if level == "experiment" and g.key in data.experiment_ids:
            exp_id = quote(data.experiment_ids[g.key], safe="")
            key = f'<a href="{_e(prefix)}/#/experiments/{exp_id}/runs">{key}</a>'
        elif g.key == NONE_KEY:
            key = f'<span class="muted">{key} (no finops.{level} tag)</span>'
        share = f"{g.cost_usd / total:.0%}" if total > 0 else "-"
        rows.append(("", [key, str(g.runs) + (f" (+{g.nested} nested)" if g.nested else ""),
                          _e(format_usd(g.cost_usd)), share, _e(format_usd(g.idle_cost_usd)),
                          str(g.untracked) if g.untracked else ""]))
    if not rows:
        return f'<section><h2>Spend by {level}</h2><p class="muted">No runs in this period.</p></section>'
    return (f"<section><h2>Spend by {level}</h2>"
            + _table([level, "runs", "cost", "share", "idle cost", "untracked"], rows, f"by-{level}") + "</section>")


def _budgets(data: PageData) -> Iterator[str]:
    """The budgets part: the table at once, the burn-down chart when it is drawn."""
    title = "<h2>Budgets</h2>"
    if data.policy_error:
        yield title + f'<p class="over" id="budgets">The policy file cannot be read: {_e(data.policy_error)}</p>'
    if not data.budgets:
        where = (f"The policy file {_e(data.policy_source)} has no [budgets.*] envelope."
                 if data.policy_source else
                 f"No policy file: the server reads it from ${ENV_POLICY} (else ./finops.toml).")
        yield title + (
            f'<div id="budgets"><p>{where} To see burn-down and projection here, add an envelope and restart '
            "the server with the policy in its environment:</p><pre>"
            '[budgets.churn-monthly]\namount_usd = 500\nperiod = "month"\nmodels = ["churn"]   # or team = "ml-a"\n'
            f"</pre><pre>{ENV_POLICY}=finops.toml mlflow server --app-name finops ...</pre></div>"
        )
        return
    from ..spend.charts import budget_burndown

    header, rows = budget_table(data.budgets)
    classes = ["over" if b.exceeded else ("warn" if b.warn else "") for b in data.budgets]
    table = _table(header, [(c, [_e(x) for x in row]) for c, row in zip(classes, rows)], "budget-table")
    yield (title + f'<div id="budgets"><p class="meta">Policy: {_e(data.policy_source)}. Spend in each envelope\'s '
           "own calendar period (deleted runs count: the money was spent); projection = spent / elapsed share "
           "of the period.</p>" + table)
    yield f"<figure>{budget_burndown(data.budgets).svg}</figure></div>"


def _fronts(data: PageData, prefix: str) -> Iterator[str]:
    """One part per experiment's chart, drawn as it is sent."""
    yield '<h2>Cost vs model metric: the Pareto front per experiment</h2><div class="pareto" id="fronts">'
    drawn = 0
    for f in fronts(data):
        drawn += 1
        better = "higher" if f.goal == "max" else "lower"
        links = ", ".join(
            _run_link(prefix, f.experiment_id, r.run_id, f"{r.label} ({format_usd(r.cost_usd)}, {r.metric:.4g})")
            for r in f.front)
        yield (f'<section class="front"><figure>{f.chart.svg}</figure><p class="meta">{_e(f.experiment)}: '
               f"{_e(f.metric)} ({better} is better). On the front, cheapest first: {links}</p></section>")
    if not drawn:
        yield '<p class="muted">No experiment has two or more costed runs with a model metric in this period.</p>'
    yield "</div>"


def _retrains(data: PageData, prefix: str) -> str:
    title = "<h2>Retrains: what each cost and what it bought</h2>"
    if not data.retrains:
        return title + '<p class="muted" id="retrains">No retrain in this period (runs in finops-retrains/&lt;model&gt;).</p>'
    rows = []
    for r in data.retrains:
        drift = ""
        if r.drift_run_id:
            drift = _run_link(prefix, data.run_experiments.get(r.drift_run_id), r.drift_run_id, r.drift_run_id[:8])
        rows.append(("over" if r.state in (RetrainState.FAILED, RetrainState.CAPPED) else "", [
            _e(r.model), _run_link(prefix, r.experiment_id, r.run_id, r.run_id[:8]), _e(_when(r.start_time)),
            _e(r.state), drift, _e(f"v{r.model_version}" if r.model_version else ""),
            _e(format_usd(r.cost_usd, none="untracked")), _e(_eval(r)), _e(_gain(r)), _e(_per_point(r)),
            _e(_realized(r)),
        ]))
    header = ["model", "retrain run", "started (UTC)", "state", "drift check", "version", "cost",
              "champion -> challenger", "gain", "cost per point bought", "realized on the next window"]
    return (title + '<p class="meta">Lineage: drift check run -> retrain run -> model version. Gain: the challenger '
            "over the champion on the held-out rows; it is bought only when the challenger was promoted. "
            "Realized: the promoted version against the version it replaced on the first labelled window "
            "after the promotion (rows neither learned), what the retrain trigger learns from; rolled back "
            "when that was a loss beyond the tolerated one.</p>"
            + _table(header, rows, "retrains"))


def _realized(r: Retrain) -> str:
    if r.realized is None:
        return ""
    text = f"{r.realized * 100:+.1f} pt" if r.metric in _POINTS else f"{r.realized:+.4g}"
    return text + ", rolled back" if r.rolled_back else text


def _eval(r: Retrain) -> str:
    if r.metric is None or r.champion is None or r.challenger is None:
        return ""
    return f"{r.metric} {r.champion:.4f} -> {r.challenger:.4f}"


def _gain(r: Retrain) -> str:
    g = r.gain
    if g is None:
        return ""
    text = f"{g * 100:+.1f} pt" if r.metric in _POINTS else f"{g:+.4g}"
    if r.state != RetrainState.PROMOTED:
        return text + " (not promoted)"
    return text + " bought" if g > 0 else text


def _per_point(r: Retrain) -> str:
    if r.cost_usd is None or r.bought <= 0 or r.metric not in _POINTS:
        return ""
    return f"{format_usd(r.cost_usd / (r.bought * 100))} / pt"


def _top_runs(data: PageData, prefix: str, top: int = 15) -> str:
    runs = list(itertools.islice((r for r in data.report.sorted_runs() if r.counted), top))
    if not runs:
        return ""
    rows = [("", [_run_link(prefix, r.experiment_id, r.run_id, r.label), _e(r.experiment), _e(r.model or ""),
                  _e(r.team or ""), _e(_when(r.start_time)), _e(format_usd(r.cost_usd))]) for r in runs]
    return (f"<h2>Most expensive runs ({len(runs)})</h2>"
            + _table(["run", "experiment", "model", "team", "started (UTC)", "cost"], rows, "top-runs"))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M") if ts else ""
