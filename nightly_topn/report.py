"""The per-run HTML report: one self-contained file (inline SVG, no scripts, no network), readable offline.

Sections: the decision (winner, why, the quality gate), the candidates' holdout metrics, new
items and new users (cold start), how the tuning went, metrics across recent dates, the popularity distribution of the recommended
items vs the catalogue, coverage, and the rolling evaluation of published lists when present.

The markup lives in Jinja2 templates (``templates/report.html.j2``, the SVG charts as macros in
``templates/charts.j2``) with autoescaping on, so model names, params, dates and gate details are
escaped wherever they land. This module only computes numbers: chart coordinates and the
formatted values the templates print.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from nightly_topn import registry
from nightly_topn.storage import Storage, as_date, read_json, write_text

COLUMNS = ("ndcg", "map", "precision", "recall", "recall_capped", "hit_rate", "mrr", "coverage", "novelty", "diversity")
#: Metrics that are not cut at K, so their column header has no ``@K``.
UNCUT = ("coverage", "novelty", "diversity")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@functools.cache
def _env():
    """One environment per process, built on first use (importing this module stays cheap).
    StrictUndefined: a name missing from the context is an error, not a silently empty cell."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("nightly_topn", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _fmt(value) -> str:
    """A float with 4 decimals ("–" if not finite); anything else as text (the template escapes it)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not np.isfinite(value) else f"{value:.4f}"
    return str(value)


def _legend(pad_l: int, w: float, pad_t: int, s: int) -> tuple[float, int]:
    return pad_l + w + 8, pad_t + 12 + 14 * s


def _line_chart(title: str, labels: list[str], series: dict[str, list[float | None]], *, width=640, height=220) -> dict:
    """Geometry of a line chart for the ``line_chart`` macro (one polyline per series; None = gap)."""
    pad_l, pad_r, pad_t, pad_b = 50, 120, 24, 40
    values = [v for vs in series.values() for v in vs if v is not None and np.isfinite(v)]
    if not labels or not values:
        return {"title": title, "empty": True}
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * abs(lo or 1) * 0.1, hi + 0.5 * abs(hi or 1) * 0.1
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    n = len(labels)

    def xy(i, v):
        return pad_l + (w * i / max(n - 1, 1)), pad_t + h - (v - lo) / (hi - lo) * h

    ticks = (lo + (hi - lo) * frac for frac in (0.0, 0.5, 1.0))
    y_ticks = [{"y": f"{xy(0, v)[1] + 4:.1f}", "label": f"{v:.3f}"} for v in ticks]
    x_ticks = [{"x": f"{xy(i, lo)[0]:.1f}", "label": labels[i]} for i in range(0, n, max(1, n // 6))]
    lines = []
    for s, (name, vs) in enumerate(series.items()):
        points = [xy(i, v) for i, v in enumerate(vs) if v is not None and np.isfinite(v)]
        lx, ly = _legend(pad_l, w, pad_t, s)
        lines.append({"name": name, "color": PALETTE[s % len(PALETTE)], "legend_x": lx, "legend_y": ly,
                      "polyline": " ".join(f"{x:.1f},{y:.1f}" for x, y in points) if len(points) > 1 else None,
                      "dots": [{"x": f"{x:.1f}", "y": f"{y:.1f}"} for x, y in points]})
    return {"title": title, "empty": False, "width": width, "height": height, "left": pad_l, "right": pad_l + w,
            "top": pad_t, "bottom": pad_t + h, "y_ticks": y_ticks, "x_ticks": x_ticks, "series": lines}


def _bar_chart(title: str, labels: list[str], series: dict[str, list[float]], *, width=640, height=220) -> dict:
    """Geometry of grouped bars for the ``bar_chart`` macro (values are shares in [0, 1])."""
    pad_l, pad_r, pad_t, pad_b = 50, 150, 24, 40
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    hi = max([v for vs in series.values() for v in vs] + [1e-9])
    group = w / max(len(labels), 1)
    bar = group * 0.8 / max(len(series), 1)
    groups = []
    for s, (name, vs) in enumerate(series.items()):
        bars = []
        for i, v in enumerate(vs):
            bh = h * v / hi
            bars.append({"x": f"{pad_l + i * group + group * 0.1 + s * bar:.1f}", "y": f"{pad_t + h - bh:.1f}",
                         "width": f"{bar:.1f}", "height": f"{bh:.1f}", "label": labels[i], "share": f"{v:.1%}"})
        lx, ly = _legend(pad_l, w, pad_t, s)
        groups.append({"name": name, "color": PALETTE[s % len(PALETTE)], "legend_x": lx, "legend_y": ly, "bars": bars})
    x_labels = [{"x": f"{pad_l + (i + 0.5) * group:.1f}", "label": label} for i, label in enumerate(labels)]
    return {"title": title, "width": width, "height": height, "left": pad_l, "right": pad_l + w, "top": pad_t,
            "bottom": pad_t + h, "top_label": f"{hi:.0%}", "series": groups, "x_labels": x_labels}


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


def _candidates(evaluation: dict) -> dict:
    """The holdout metrics table, best NDCG first."""
    metrics, k = evaluation["metrics"], evaluation["k"]
    rows = [{"name": name, "winner": name == evaluation["model"],
             "cells": [_fmt(metrics[name].get(c, float("nan"))) for c in COLUMNS]}
            for name in sorted(metrics, key=lambda m: -metrics[m]["ndcg"])]
    return {"header": [c if c in UNCUT else f"{c}@{k}" for c in COLUMNS], "rows": rows}


def _segments(evaluation: dict) -> list[dict]:
    return [{"model": name, "segment": seg, "users": v["users"], "ndcg": _fmt(v["ndcg"]),
             "recall_capped": _fmt(v["recall_capped"]), "hit_rate": _fmt(v["hit_rate"])}
            for name, m in evaluation["metrics"].items() for seg, v in sorted((m.get("segments") or {}).items())]


def _tuning(record: dict | None) -> dict | None:
    if not record:
        return None
    rows = [{"name": name, "best": _fmt(c.get("best_metric")), "check": _fmt(c.get("check_metric")),
             "trials": c.get("trials"), "stopped": sum(1 for t in c.get("trial_log", []) if t.get("stopped")),
             "seconds": _fmt(c.get("seconds")), "budget": _fmt(c.get("budget_seconds")),
             "refits": ", ".join(f"{purpose} {seconds:.1f}s" for purpose, seconds in (c.get("fit_seconds") or {}).items()),
             "params": json.dumps(c.get("best_params"), sort_keys=True)}
            for name, c in record.get("candidates", {}).items()]
    selection = record.get("selection") if isinstance(record.get("selection"), dict) else {}
    return {"rows": rows, "fingerprint": record.get("data_fingerprint"), "code_version": record.get("code_version"),
            "sample": selection.get("search_sample"), "excluded": selection.get("excluded") or {}}


def _timings(store: Storage, date) -> list[dict]:
    """The jobs of the date so far (``nightly_topn.timings``), in run order, for "where the time went"."""
    from nightly_topn import timings
    from nightly_topn.jobs import steps

    entries = timings.read(store, as_date(date))
    return [{"job": name, **entries[name]} for name, _ in steps() if name in entries]


def _trend(store: Storage, date) -> dict:
    """The last 30 runs' holdout metrics (winner vs popularity) and who won each."""
    past = registry.history(store, date, 30)
    labels = [r["date"][5:] for r in past]

    def series(metric):
        return {"winner": [r["metrics"].get(r["model"], {}).get(metric) for r in past],
                "popularity": [r["metrics"].get("popularity", {}).get(metric) for r in past]}

    charts = [_line_chart(f"NDCG@K on the holdout, last {len(past)} runs", labels, series("ndcg")),
              _line_chart("Recall@K (min(|rel|,K) denominator)", labels, series("recall_capped")),
              _line_chart("Catalogue coverage of the winner's lists", labels, {"winner": series("coverage")["winner"]})]
    winners = " → ".join(f"{r['date'][5:]}:{r['model']}{'' if r.get('gate', {}).get('passed') else '✗'}"
                         for r in past)
    return {"charts": charts, "winners": winners}


def _rolling(store: Storage) -> dict | None:
    """``reports/rolling_eval.json`` as a chart and its aggregate line, or None before its first run."""
    path = store.root / "reports" / "rolling_eval.json"
    if not path.is_file():
        return None
    data = read_json(path)
    per = data.get("dates", [])
    chart = _line_chart(f"Published lists vs the next {data.get('horizon_days')} days", [d["date"][5:] for d in per],
                        {m: [d.get(m) for d in per] for m in ("hit_rate", "recall", "ndcg")})
    aggregate = data.get("aggregate", {})
    return {"chart": chart, "aggregate": ", ".join(f"{k}={_fmt(v)}" for k, v in aggregate.items() if k != "arms"),
            "arms": [{"arm": arm, "dates": f["dates"], "users": f["users"],
                      "cells": [_fmt(f.get(f"{m}_user_weighted")) for m in ("ndcg", "recall", "hit_rate")]}
                     for arm, f in (aggregate.get("arms") or {}).items()]}


def _served(evaluation: dict) -> dict | None:
    """The newest complete rolling evaluation (``evaluation["served"]``), published vs popularity."""
    seen = evaluation.get("served")
    if not seen:
        return None
    metrics = ("ndcg", "recall_capped", "hit_rate")
    return {**{k: seen[k] for k in ("date", "model_version", "users", "horizon_days", "k")}, "metrics": metrics,
            "published": [_fmt(seen.get(m)) for m in metrics],
            "popularity": [_fmt((seen.get("popularity") or {}).get(m)) for m in metrics]}


def _cold_start(evaluation: dict) -> dict | None:
    """``evaluation["cold_start"]``: new-item reach and cost, the new-user segment (winner vs popularity)."""
    cold = evaluation.get("cold_start")
    if not cold:
        return None
    items = cold.get("new_items")
    metrics = ("ndcg", "recall_capped", "hit_rate")
    users = [{"model": name, "users": seg["users"], "cells": [_fmt(seg.get(m)) for m in metrics]}
             for name, seg in (cold.get("new_users", {}).get("metrics") or {}).items() if seg]
    return {"metrics": metrics, "segment_rule": cold.get("new_users", {}).get("rule"), "segment": users,
            "reach": items and {**items, "share_users": f"{items['share_users_with_new_item']:.1%}",
                                "with": [_fmt(items["with_new_items"][m]) for m in metrics],
                                "without": [_fmt(items["without"][m]) for m in metrics]}}


def _mmr(evaluation: dict) -> dict | None:
    """``evaluation["diversity"]``: the MMR sweep, the run's strength marked."""
    figures = evaluation.get("diversity")
    if not figures:
        return None
    rows = [{"strength": _fmt(r["strength"]), "chosen": r["strength"] == figures["strength"],
             "cells": [_fmt(r.get(m)) for m in ("ndcg", "recall_capped", "diversity", "coverage")]}
            for r in figures["rows"]]
    return {**figures, "rows": rows}


def _experiment(evaluation: dict) -> dict | None:
    """``evaluation["experiment"]``: the A/B arms on tonight's holdout, and what each arm's users
    did with the lists they were served (the newest complete rolling evaluation)."""
    experiment = evaluation.get("experiment")
    if not experiment:
        return None
    metrics = ("ndcg", "recall_capped", "coverage")
    arms = [{"arm": arm, "model": a["model"], "model_version": a["model_version"],
             "cells": [_fmt(a.get(m)) for m in metrics]} for arm, a in experiment["arms"].items()]
    served = (evaluation.get("served") or {})
    served_arms = [{"arm": arm, "users": f.get("users"), "cells": [_fmt(f.get(m)) for m in ("ndcg", "recall", "hit_rate")]}
                   for arm, f in (served.get("arms") or {}).items()]
    return {**experiment, "share": f"{experiment['share']:.0%}", "metrics": metrics, "rows": arms,
            "served_date": served.get("date"), "served_arms": served_arms}


def render(store: Storage, date, evaluation: dict, *, recommended=None, item_popularity=None,
           registry_record: dict | None = None) -> str:
    """The report page as HTML text (``date`` is taken from ``evaluation``; kept for callers)."""
    winner = evaluation["metrics"][evaluation["model"]]
    profile = None
    if recommended is not None and item_popularity is not None:
        p = popularity_profile(recommended, item_popularity)
        profile = _bar_chart("Where the winner's recommendations fall: items by popularity (head → tail)",
                             p["labels"], {"share of interactions": p["catalog_interactions"],
                                           "share of recommendations": p["recommendations"]})
    context = {
        "date": evaluation["date"], "winner": evaluation["model"], "model_version": evaluation["model_version"],
        "protocol": evaluation.get("protocol"), "k": evaluation["k"], "selection": evaluation.get("selection"),
        "params": json.dumps(evaluation.get("params"), sort_keys=True),
        "tuning_seconds": _fmt(evaluation.get("tuning_seconds")),
        "tuning_budget_seconds": _fmt(evaluation.get("tuning_budget_seconds")),
        "gate": evaluation["gate"], "holdout": evaluation["holdout"], "candidates": _candidates(evaluation),
        "segment_rule": evaluation.get("segments", {}).get("rule"), "segments": _segments(evaluation),
        "tuning": _tuning(registry_record), "trend": _trend(store, as_date(evaluation["date"])), "profile": profile,
        "coverage": _fmt(winner.get("coverage")), "novelty": _fmt(winner.get("novelty")),
        "diversity": _fmt(winner.get("diversity", float("nan"))), "rolling": _rolling(store),
        "served": _served(evaluation), "cold_start": _cold_start(evaluation), "rules": evaluation.get("rules"),
        "mmr": _mmr(evaluation), "experiment": _experiment(evaluation), "timings": _timings(store, date),
    }
    return _env().get_template("report.html.j2").render(context)


def write_report(store: Storage, date, evaluation: dict, **kwargs) -> Path:
    """Write ``reports/dt=D/report.html`` (atomically: a reader never sees half a page) and return its path."""
    path = store.partition("reports", date) / "report.html"
    write_text(path, render(store, date, evaluation, **kwargs))
    return path
