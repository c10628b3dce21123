"""The per-run HTML report: one self-contained file (inline SVG, no scripts, no network), readable offline.

Sections: the decision (winner, why, the quality gate), the candidates' holdout metrics, how
the tuning went, metrics across recent dates, the popularity distribution of the recommended
items vs the catalogue, coverage, and the rolling evaluation of published lists when present.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from nightly_topn import registry
from nightly_topn.storage import Storage, as_date

COLUMNS = ("ndcg", "map", "precision", "recall", "recall_capped", "hit_rate", "mrr", "coverage", "novelty", "diversity")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _e(value) -> str:
    return html.escape(str(value))


def _fmt(value) -> str:
    if isinstance(value, float):
        return "–" if not np.isfinite(value) else f"{value:.4f}"
    return _e(value)


def line_chart(title: str, labels: list[str], series: dict[str, list[float | None]], *, width=640, height=220) -> str:
    """An inline SVG line chart (one polyline per series; None = gap)."""
    pad_l, pad_r, pad_t, pad_b = 50, 120, 24, 40
    values = [v for vs in series.values() for v in vs if v is not None and np.isfinite(v)]
    if not labels or not values:
        return f"<p><em>{_e(title)}: no data yet.</em></p>"
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * abs(lo or 1) * 0.1, hi + 0.5 * abs(hi or 1) * 0.1
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    n = len(labels)

    def xy(i, v):
        x = pad_l + (w * i / max(n - 1, 1))
        y = pad_t + h - (v - lo) / (hi - lo) * h
        return x, y

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        _, y = xy(0, v)
        parts.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{v:.3f}</text>')
    step = max(1, n // 6)
    for i in range(0, n, step):
        x, _ = xy(i, lo)
        parts.append(f'<text x="{x:.1f}" y="{pad_t + h + 14}" font-size="10" text-anchor="middle">{_e(labels[i])}</text>')
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        points = [xy(i, v) for i, v in enumerate(vs) if v is not None and np.isfinite(v)]
        if len(points) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        for x, y in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{pad_l + w + 8}" y="{pad_t + 12 + 14 * s}" font-size="11" fill="{color}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, labels: list[str], series: dict[str, list[float]], *, width=640, height=220) -> str:
    """Grouped bars (values are shares in [0, 1])."""
    pad_l, pad_r, pad_t, pad_b = 50, 150, 24, 40
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    hi = max([v for vs in series.values() for v in vs] + [1e-9])
    group = w / max(len(labels), 1)
    bar = group * 0.8 / max(len(series), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 4}" font-size="10" text-anchor="end">{hi:.0%}</text>']
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for i, v in enumerate(vs):
            x = pad_l + i * group + group * 0.1 + s * bar
            bh = h * v / hi
            parts.append(f'<rect x="{x:.1f}" y="{pad_t + h - bh:.1f}" width="{bar:.1f}" height="{bh:.1f}" fill="{color}">'
                         f'<title>{_e(name)} {_e(labels[i])}: {v:.1%}</title></rect>')
        parts.append(f'<text x="{pad_l + w + 8}" y="{pad_t + 12 + 14 * s}" font-size="11" fill="{color}">{_e(name)}</text>')
    for i, label in enumerate(labels):
        parts.append(f'<text x="{pad_l + (i + 0.5) * group:.1f}" y="{pad_t + h + 14}" font-size="10" '
                     f'text-anchor="middle">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def popularity_profile(recommended: np.ndarray, item_popularity: np.ndarray, bins: int = 10) -> dict:
    """Items sorted by training popularity and cut into ``bins`` equal-size groups (head → tail):
    the share of the catalogue's interactions and of the recommendations falling in each group."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    order = np.argsort(-pop, kind="stable")
    group = np.empty(len(pop), dtype=np.int64)
    group[order] = np.minimum(np.arange(len(pop)) * bins // max(len(pop), 1), bins - 1)
    recs = np.asarray(recommended)
    recs = recs[recs >= 0]
    catalog = np.bincount(group, weights=pop, minlength=bins) / max(pop.sum(), 1e-12)
    rec_share = np.bincount(group[recs], minlength=bins) / max(len(recs), 1)
    labels = [f"{100 * i // bins}-{100 * (i + 1) // bins}%" for i in range(bins)]
    return {"labels": labels, "catalog_interactions": catalog.tolist(), "recommendations": rec_share.tolist()}


def _metrics_table(evaluation: dict) -> str:
    rows = []
    metrics = evaluation["metrics"]
    ranked = sorted(metrics, key=lambda m: -metrics[m]["ndcg"])
    head = "".join(f"<th>{_e(c)}@{evaluation['k']}</th>" if c not in ("coverage", "novelty", "diversity")
                   else f"<th>{_e(c)}</th>" for c in COLUMNS)
    for name in ranked:
        m = metrics[name]
        cls = ' class="winner"' if name == evaluation["model"] else ""
        cells = "".join(f"<td>{_fmt(m.get(c, float('nan')))}</td>" for c in COLUMNS)
        rows.append(f"<tr{cls}><th>{_e(name)}{' ★' if name == evaluation['model'] else ''}</th>{cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"


def _segments_table(evaluation: dict) -> str:
    rows = []
    for name, m in evaluation["metrics"].items():
        for seg, values in sorted((m.get("segments") or {}).items()):
            rows.append(f"<tr><th>{_e(name)}</th><td>{_e(seg)}</td><td>{values['users']}</td>"
                        f"<td>{_fmt(values['ndcg'])}</td><td>{_fmt(values['recall_capped'])}</td>"
                        f"<td>{_fmt(values['hit_rate'])}</td></tr>")
    if not rows:
        return "<p><em>No segment breakdown.</em></p>"
    return ("<table><tr><th>model</th><th>segment</th><th>users</th><th>ndcg</th><th>recall_capped</th>"
            "<th>hit_rate</th></tr>" + "".join(rows) + "</table>")


def _tuning_table(record: dict | None) -> str:
    if not record:
        return "<p><em>No registry record for this run.</em></p>"
    rows = []
    for name, c in record.get("candidates", {}).items():
        rows.append(f"<tr><th>{_e(name)}</th><td>{_fmt(c.get('best_metric'))}</td><td>{c.get('trials')}</td>"
                    f"<td>{_fmt(c.get('seconds'))}s / {_fmt(c.get('budget_seconds'))}s</td>"
                    f"<td><code>{_e(json.dumps(c.get('best_params'), sort_keys=True))}</code></td></tr>")
    return ("<table><tr><th>model</th><th>validation ndcg</th><th>trials</th><th>time / budget</th>"
            "<th>chosen params</th></tr>" + "".join(rows) + "</table>"
            f"<p>Data fingerprint <code>{_e(record.get('data_fingerprint'))}</code>, code "
            f"<code>{_e(record.get('code_version'))}</code>.</p>")


def _trend_section(store: Storage, date) -> str:
    past = registry.history(store, date, 30)
    labels = [r["date"][5:] for r in past]

    def series(metric):
        out = {"winner": [r["metrics"].get(r["model"], {}).get(metric) for r in past],
               "popularity": [r["metrics"].get("popularity", {}).get(metric) for r in past]}
        return out

    charts = [line_chart(f"NDCG@K on the holdout, last {len(past)} runs", labels, series("ndcg")),
              line_chart("Recall@K (min(|rel|,K) denominator)", labels, series("recall_capped")),
              line_chart("Catalogue coverage of the winner's lists", labels, {"winner": series("coverage")["winner"]})]
    winners = " → ".join(f"{r['date'][5:]}:{r['model']}{'' if r.get('gate', {}).get('passed') else '✗'}" for r in past)
    return "".join(charts) + f"<p>Winners by date (✗ = gate failed, lists kept): {_e(winners)}</p>"


def _rolling_section(store: Storage) -> str:
    path = store.root / "reports" / "rolling_eval.json"
    if not path.is_file():
        return "<p><em>No rolling evaluation yet (run <code>python -m nightly_topn.jobs.rolling_eval</code>).</em></p>"
    data = json.loads(path.read_text())
    per = data.get("dates", [])
    labels = [d["date"][5:] for d in per]
    chart = line_chart(f"Published lists vs the next {data.get('horizon_days')} days", labels,
                       {m: [d.get(m) for d in per] for m in ("hit_rate", "recall", "ndcg")})
    agg = data.get("aggregate", {})
    return chart + "<p>Aggregate over dates: " + ", ".join(f"{_e(k)}={_fmt(v)}" for k, v in agg.items()) + "</p>"


def render(store: Storage, date, evaluation: dict, *, recommended=None, item_popularity=None,
           registry_record: dict | None = None) -> str:
    gate = evaluation["gate"]
    winner = evaluation["model"]
    m = evaluation["metrics"][winner]
    checks = "".join(f"<li>{'✅' if c['passed'] else '❌'} {_e(c['check'])}: {_e(c['detail'])}</li>" for c in gate["checks"])
    profile = ""
    if recommended is not None and item_popularity is not None:
        p = popularity_profile(recommended, item_popularity)
        profile = bar_chart("Where the winner's recommendations fall: items by popularity (head → tail)", p["labels"],
                            {"share of interactions": p["catalog_interactions"],
                             "share of recommendations": p["recommendations"]})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nightly top-N report {_e(evaluation['date'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child {{ text-align: left; }}
tr.winner {{ background: #eef6ee; font-weight: bold; }}
.pass {{ color: #176317; }} .fail {{ color: #a11; }}
code {{ font-size: 12px; }}
</style></head><body>
<h1>Nightly top-N — run of {_e(evaluation['date'])}</h1>
<p><b>Winner: {_e(winner)}</b> (<code>{_e(evaluation['model_version'])}</code>, protocol {_e(evaluation.get('protocol'))},
K={evaluation['k']}). Why: {_e(evaluation.get('selection'))}.</p>
<p>Chosen params: <code>{_e(json.dumps(evaluation.get('params'), sort_keys=True))}</code>. Tuning took
{_fmt(evaluation.get('tuning_seconds'))}s of a {_fmt(evaluation.get('tuning_budget_seconds'))}s budget.</p>
<h2 class="{'pass' if gate['passed'] else 'fail'}">Quality gate: {'PASSED — lists published' if gate['passed'] else 'FAILED — live lists kept'}</h2>
<ul>{checks}</ul>
<h2>Candidates on the holdout ({evaluation['holdout']['users']} users, {evaluation['holdout']['pairs']} pairs)</h2>
{_metrics_table(evaluation)}
<h3>Segments ({_e(evaluation.get('segments', {}).get('rule'))})</h3>
{_segments_table(evaluation)}
<h2>Tuning (validation split carved from the training data)</h2>
{_tuning_table(registry_record)}
<h2>Across recent dates</h2>
{_trend_section(store, as_date(evaluation['date']))}
<h2>Popularity of the recommended items vs the catalogue</h2>
{profile}
<p>Catalogue coverage of the winner's top-{evaluation['k']} lists on the holdout users: <b>{_fmt(m.get('coverage'))}</b>;
novelty {_fmt(m.get('novelty'))} bits; intra-list diversity {_fmt(m.get('diversity', float('nan')))}.</p>
<h2>Rolling evaluation of published lists</h2>
{_rolling_section(store)}
</body></html>
"""


def write_report(store: Storage, date, evaluation: dict, **kwargs) -> Path:
    """Write ``reports/dt=D/report.html`` (atomically) and return its path."""
    import os
    import uuid

    path = store.partition("reports", date) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".report.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(render(store, date, evaluation, **kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
