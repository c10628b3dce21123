"""Rolling evaluation of what was published: the quality users would have seen, day by day.

For every date D with published lists (a complete top-N version whose quality gate passed),
score those lists against each user's interactions in the following ``horizon_days`` days
(raw events of D+1 … D+h): hit rate, recall (|rel| and min(|rel|,K)), NDCG at K. Users with
no interaction in the horizon are not counted. A date whose horizon is not fully landed yet is
reported as ``complete: false`` (and left out of the aggregate). A backfill over a replayed
dataset therefore yields the whole history of served quality.

Next to each date's figures: what the popularity baseline of that run would have served the
same users, so "the lists did worse than popularity with what users really did" is visible
(the quality gate then no longer protects that champion, ``jobs.evaluate``).

Writes ``reports/dt=D/rolling_eval.json`` per date and ``reports/rolling_eval.json`` (all dates
+ aggregate), which the run report shows. The daily DAG runs ``rolling_eval(D)``, scoring the
date whose horizon day D completes; by hand, every published date at once::

    python -m nightly_topn.jobs.rolling_eval [--root DIR] [--until YYYY-MM-DD] [--horizon 7] [--k 10]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from nightly_topn import registry
from nightly_topn.config import RunParams
from nightly_topn.evaluation import per_user_accuracy
from nightly_topn.storage import MANIFEST, Storage, as_date, read_json, write_json

log = logging.getLogger(__name__)
METRICS = ("hit_rate", "recall", "recall_capped", "ndcg")
ROLLING_FILE = "rolling_eval.json"


def published_dates(store: Storage, until=None) -> list[dt.date]:
    """Dates with a top-N version that passed its gate and no failed quality gate, oldest first."""
    out = []
    for day in store.dates("topn", holding=None):
        if until is not None and day > as_date(until):
            continue
        if not any(store.verdict_problem(v) is None for v in store.versions(day)):
            continue
        evaluation = store.partition("reports", day) / registry.EVALUATION_FILE
        if evaluation.is_file() and not read_json(evaluation).get("gate", {}).get("passed", True):
            continue
        out.append(day)
    return out


def _lists(store: Storage, day) -> tuple[pa.Table, str]:
    """The published lists of ``day``: ``user_id, item_ids, model_version, arm`` (arm "champion"
    for versions written before the A/B arm column), and the champion's model version."""
    from nightly_topn.serving.encoding import arm_column

    version = store.newest_gated_version(day)
    manifest = read_json(version / MANIFEST)
    files = manifest.get("files") or sorted(p.name for p in version.glob("part-*.parquet"))
    tables = []
    for name in files:
        table = pq.read_table(str(version / name))
        tables.append(pa.table({"user_id": table["user_id"], "item_ids": table["item_ids"],
                                "model_version": table["model_version"], "arm": arm_column(table)}))
    return pa.concat_tables(tables), manifest.get("model_version", "")


def _future(store: Storage, day: dt.date, horizon: int) -> tuple[dict[str, set[str]], int]:
    relevant: dict[str, set[str]] = {}
    landed = 0
    for offset in range(1, horizon + 1):
        path = store.partition("raw", day + dt.timedelta(days=offset)) / "events.parquet"
        if not path.is_file():
            continue
        landed += 1
        table = pq.read_table(str(path), columns=["user_id", "item_id"])
        for user, item in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist()):
            if user is not None and item is not None:
                relevant.setdefault(user, set()).add(item)
    return relevant, landed


def score_lists(users: list[str], lists: list[list[str]], relevant: dict[str, set[str]], k: int) -> dict:
    """Accuracy of published lists against future interactions (users without any are skipped)."""
    rows = [(u, items) for u, items in zip(users, lists) if u in relevant]
    if not rows:
        return {"users": 0, **{m: None for m in METRICS}}
    vocab: dict[str, int] = {}
    recs = np.full((len(rows), k), -1, dtype=np.int64)
    r_rows, r_cols = [], []
    for r, (user, items) in enumerate(rows):
        for j, item in enumerate((items or [])[:k]):
            recs[r, j] = vocab.setdefault(item, len(vocab))
        for item in relevant[user]:
            r_rows.append(r)
            r_cols.append(vocab.setdefault(item, len(vocab)))
    rel = sp.csr_matrix((np.ones(len(r_rows)), (r_rows, r_cols)), shape=(len(rows), len(vocab)))
    per_user = per_user_accuracy(recs, rel, k)
    return {"users": len(rows), **{m: float(np.nanmean(per_user[m])) for m in METRICS}}


def per_arm(table: pa.Table, relevant: dict[str, set[str]], k: int) -> dict | None:
    """Each A/B arm's lists scored on their own (None when every user had the champion's):
    ``{arm: {"model_versions", "listed_users", "users", metrics...}}``."""
    arms = table.column("arm").to_pylist()
    if set(arms) <= {"champion"}:
        return None
    out = {}
    for arm in sorted(set(arms)):
        rows = table.filter(pc.equal(table.column("arm"), arm))
        out[arm] = {"model_versions": sorted(set(rows.column("model_version").to_pylist())),
                    "listed_users": rows.num_rows,
                    **score_lists(rows.column("user_id").to_pylist(), rows.column("item_ids").to_pylist(), relevant, k)}
    return out


def _popularity_lists(store: Storage, day, user_ids: list[str], k: int) -> list[list[str]] | None:
    """What the popularity baseline of ``day``'s run would have served ``user_ids`` (seen items
    excluded, as in the published lists): the yardstick of the served lists."""
    from nightly_topn.evaluation import recommend_all
    from nightly_topn.features import Features
    from nightly_topn.models import load_model

    if not (store.partition("features", day) / MANIFEST).is_file() \
            or not (store.partition("models", day) / "final" / "popularity").is_dir():
        return None  # that run's data is gone (retention): no yardstick, the lists are still scored
    features = Features.load(store.partition("features", day))
    index = {u: i for i, u in enumerate(features.user_ids)}
    rows = np.array([index[u] for u in user_ids if u in index], dtype=np.int64)
    model = load_model(store.partition("models", day) / "final" / "popularity")
    recs = recommend_all(model, rows, features.matrix(), k)
    by_user = {features.user_ids[r]: [features.item_ids[i] for i in rec if i >= 0] for r, rec in zip(rows, recs)}
    return [by_user.get(u, []) for u in user_ids]


def served_quality(store: Storage, day, *, k: int, horizon_days: int = 7) -> dict:
    """Score the lists published for ``day``, and popularity's, against D+1 … D+``horizon_days``;
    writes ``reports/dt=D/rolling_eval.json``."""
    day = as_date(day)
    table, version = _lists(store, day)
    users, lists = table.column("user_id").to_pylist(), table.column("item_ids").to_pylist()
    relevant, landed = _future(store, day, horizon_days)
    active = [u for u in users if u in relevant]
    result = {"date": day.isoformat(), "model_version": version, "k": k, "horizon_days": horizon_days,
              "days_landed": landed, "complete": landed == horizon_days, "listed_users": len(users),
              **score_lists(users, lists, relevant, k),
              "popularity": None, "arms": per_arm(table, relevant, k)}
    baseline = _popularity_lists(store, day, active, k)
    if baseline is not None:
        result["popularity"] = score_lists(active, baseline, relevant, k)
    write_json(store.partition("reports", day) / ROLLING_FILE, result)
    log.info("rolling eval %s (%s): %s; popularity ndcg %s", day, version,
             {m: result[m] for m in ("users", *METRICS)}, (result["popularity"] or {}).get("ndcg"))
    return result


def served(store: Storage, day) -> dict | None:
    """``day``'s rolling result when its horizon has fully landed, else None."""
    path = store.partition("reports", day) / ROLLING_FILE
    result = read_json(path) if path.is_file() else None
    return result if result and result.get("complete") and result.get("users") else None


def summarise(store: Storage, until=None, *, horizon_days: int = 7, k: int = RunParams.eval_k) -> dict:
    """``reports/rolling_eval.json``: every scored date up to ``until``, and the aggregate of the complete ones."""
    days = [d for d in store.dates("reports", holding=ROLLING_FILE) if until is None or d <= as_date(until)]
    per_date = [read_json(store.partition("reports", d) / ROLLING_FILE) for d in days]
    done = [r for r in per_date if r["complete"] and r["users"]]
    weights = np.array([r["users"] for r in done], dtype=np.float64)
    aggregate = {"dates": len(done)}
    for m in METRICS:
        values = np.array([r[m] for r in done], dtype=np.float64)
        aggregate[f"{m}_mean_over_dates"] = float(values.mean()) if len(done) else None
        aggregate[f"{m}_user_weighted"] = float((values * weights).sum() / weights.sum()) if len(done) else None
    arms = {}  # each A/B arm over the complete dates that had one: user-weighted
    for r in done:
        for arm, figures in (r.get("arms") or {}).items():
            if figures.get("users"):
                arms.setdefault(arm, []).append(figures)
    aggregate["arms"] = {arm: {"dates": len(rows), "users": int(sum(f["users"] for f in rows)),
                               **{f"{m}_user_weighted": float(sum(f[m] * f["users"] for f in rows)
                                                              / sum(f["users"] for f in rows)) for m in METRICS}}
                         for arm, rows in arms.items()} or None
    summary = {"horizon_days": horizon_days, "k": k, "until": as_date(until).isoformat() if until else None,
               "dates": per_date, "aggregate": aggregate}
    write_json(store.root / "reports" / ROLLING_FILE, summary)
    return summary


def rolling_eval(date, *, root=None, params: RunParams = RunParams(), horizon_days: int = 7) -> dict:
    """The nightly job: once day ``date`` has landed, the lists published for ``date - horizon_days``
    have their whole horizon; score them (if that date published any) and refresh the summary."""
    store = Storage.at(root)
    date = as_date(date)
    day = date - dt.timedelta(days=horizon_days)
    result = served_quality(store, day, k=params.eval_k, horizon_days=horizon_days) \
        if day in published_dates(store, day) else None
    summary = summarise(store, date, horizon_days=horizon_days, k=params.eval_k)
    return {"date": date.isoformat(), "scored": day.isoformat() if result else None,
            "reason": None if result else f"nothing was published for {day}", "result": result,
            "aggregate": summary["aggregate"]}


def rolling_eval_all(until=None, *, root=None, params: RunParams = RunParams(), horizon_days: int = 7) -> dict:
    """Score every published date up to ``until`` (default: all): a backfill of served quality."""
    store = Storage.at(root)
    for day in published_dates(store, until):
        served_quality(store, day, k=params.eval_k, horizon_days=horizon_days)
    return summarise(store, until, horizon_days=horizon_days, k=params.eval_k)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root")
    parser.add_argument("--until", help="last published date to score (default: all)")
    parser.add_argument("--horizon", type=int, default=7)
    parser.add_argument("--k", type=int, default=RunParams.eval_k)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = rolling_eval_all(args.until, root=args.root, params=RunParams(eval_k=args.k), horizon_days=args.horizon)
    for row in summary["dates"]:
        print(json.dumps({k: row[k] for k in ("date", "users", "complete", *METRICS)}))
    print(json.dumps({"aggregate": summary["aggregate"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
