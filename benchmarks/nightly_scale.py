"""The whole nightly run at production volume: every job of one date, timed, one run per size.

    . .venv/bin/activate && python benchmarks/nightly_scale.py --events 2e6          # ~2 min here
    python benchmarks/nightly_scale.py --events 2e6,2e7 [--budget 30]                # + the slopes

Per size, a landing folder of ``--days`` daily Parquet drops (``dt=D/events.parquet``,
``schemas.EVENTS``) plus ``items.parquet`` is generated (vectorised, seeded): users ∝ events
(139K users at 19.8M events, the MovieLens-20M-like shape of issue 11), a fixed catalogue
(``--items``, default 27K), Zipf-like item popularity, users with lognormal activity and latent
tastes (a favourite and a second item cluster, which the categories name), so models can beat
popularity, and mixed event types (views, clicks, plays, purchases, ratings). Then each job of
the last date runs in a fresh process, in the DAG's order, through the CLI a deployment uses
(``nightly-topn JOB --date D``, ``$NIGHTLY_TOPN_SOURCE=landing:...``, default Params but the
window and the budget): wall seconds, peak RSS of its process tree, and the row counts its
result reports. With several sizes it prints each job's growth exponent between consecutive
sizes (log time ratio / log volume ratio: 1 = linear).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import run_measured  # noqa: E402

JOBS = ("ingest", "validate", "rolling_eval", "preprocess", "validate_features", "train", "evaluate", "topn",
        "validate_topn", "publish", "similar", "validate_similar", "publish_similar")
REFERENCE = {"events": 19_800_000, "users": 139_000}
EVENT_TYPES = {"view": 0.60, "click": 0.25, "play": 0.08, "purchase": 0.05, "rating": 0.02}


def build_landing(path: Path, *, events: int, items: int, days: int, start: dt.date, clusters: int = 40,
                  seed: int = 0) -> dict:
    """Write the landing folder; returns its shape. Deterministic for the arguments."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from nightly_topn import schemas

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    users = max(100, round(REFERENCE["users"] * events / REFERENCE["events"]))
    activity = rng.lognormal(0.0, 1.0, users)
    per_user = rng.multinomial(events, activity / activity.sum())
    user = np.repeat(np.arange(users, dtype=np.int32), per_user)
    popularity = 1.0 / (rng.permutation(items) + 10.0)  # Zipf-like, exponent 1, random item order
    item_cluster = rng.integers(0, clusters, items)
    favourite = rng.integers(0, clusters, users)
    second = (favourite + rng.integers(1, clusters, users)) % clusters
    # each event: 55 % the user's favourite cluster, 15 % their second, 30 % the whole catalogue by popularity
    pick = rng.random(events)
    cluster = np.where(pick < 0.55, favourite[user], np.where(pick < 0.70, second[user], -1))
    item = np.empty(events, dtype=np.int32)
    for c in range(-1, clusters):
        rows = np.flatnonzero(cluster == c)
        members = np.arange(items) if c < 0 else np.flatnonzero(item_cluster == c)
        cdf = np.cumsum(popularity[members])
        item[rows] = members[np.minimum(np.searchsorted(cdf, rng.random(len(rows)) * cdf[-1]), len(members) - 1)]
    kinds = list(EVENT_TYPES)
    kind = rng.choice(len(kinds), events, p=list(EVENT_TYPES.values())).astype(np.int8)
    weight = np.where(kind == kinds.index("rating"), rng.integers(1, 6, events), 1).astype(np.float32)
    day = rng.integers(0, days, events).astype(np.int16)
    second_of_day = rng.integers(0, 86_400, events)
    order = np.lexsort((second_of_day, day))
    user_ids = pa.array([f"u{u:07d}" for u in range(users)])
    item_ids = pa.array([f"i{i:06d}" for i in range(items)])
    type_ids = pa.array(kinds)
    epoch = int(dt.datetime.combine(start, dt.time(), dt.timezone.utc).timestamp())
    shutil.rmtree(path, ignore_errors=True)
    bounds = np.searchsorted(day[order], np.arange(days + 1))
    for d in range(days):
        rows = order[bounds[d]:bounds[d + 1]]
        micros = (epoch + day[rows].astype(np.int64) * 86_400 + second_of_day[rows]) * 1_000_000
        table = pa.table({
            "user_id": pc.take(user_ids, pa.array(user[rows])),
            "item_id": pc.take(item_ids, pa.array(item[rows])),
            "event_type": pc.take(type_ids, pa.array(kind[rows])),
            "weight": pa.array(weight[rows], pa.float32()),
            "event_time": pa.array(micros, pa.timestamp("us", tz="UTC")),
        }, schema=schemas.EVENTS)
        folder = path / f"dt={start + dt.timedelta(days=d)}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "events.parquet", compression="zstd")
    release = pa.array(np.full(items, (epoch - 400 * 86_400) * 1_000_000), pa.timestamp("us", tz="UTC"))
    none = pa.nulls(items, pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({
        "item_id": item_ids, "title": pa.array([f"item {i} of cluster {c}" for i, c in enumerate(item_cluster)]),
        "categories": pa.array([[f"cluster{c:02d}"] for c in item_cluster], pa.list_(pa.string())),
        "release_time": release, "available_from": none, "available_until": none}, schema=schemas.ITEMS),
        path / "items.parquet")
    pairs = len(np.unique(user.astype(np.int64) * items + item))
    return {"events": events, "users": users, "items": items, "days": days, "distinct_pairs": pairs,
            "seconds": round(time.perf_counter() - started, 1)}


def counts(result) -> dict:
    """The row counts a job's result reports (ints, one level deep), for the rows in/out column."""
    out = {}
    for key, value in (result or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            out[key] = value
        elif isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)})
    return out


def run_night(workdir: Path, landing: Path, date: dt.date, window: int, budget: float) -> list[dict]:
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "NIGHTLY_TOPN_ROOT": str(root), "NIGHTLY_TOPN_SOURCE": f"landing:{landing}",
           "GX_ANALYTICS_ENABLED": "false"}
    rows = []
    for job in JOBS:
        cmd = [sys.executable, "-m", "nightly_topn.cli", job, "--date", date.isoformat(),
               "--train-window-days", str(window), "--tuning-budget-seconds", str(budget)]
        done = run_measured(cmd, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{job} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])["result"]
        rows.append({"job": job, "seconds": round(done.seconds, 1), "peak_rss_mib": round(done.peak_rss / 2**20),
                     "counts": counts(result)})
        print(f"  {job:18s} {done.seconds:8.1f} s {done.peak_rss / 2**20:8.0f} MiB  "
              f"{json.dumps(rows[-1]['counts'])[:150]}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="19.8e6", help="comma list of volumes (events in the window)")
    parser.add_argument("--items", type=int, default=27_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--start", default="2024-01-01", help="first day of the landing folder")
    parser.add_argument("--budget", type=float, default=30.0, help="tuning_budget_seconds (the default Param)")
    parser.add_argument("--workdir", default="var/bench/scale")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    sizes = [int(float(v)) for v in args.events.split(",") if v]
    start = dt.date.fromisoformat(args.start)
    date = start + dt.timedelta(days=args.days - 1)
    report = []
    for events in sizes:
        workdir = Path(args.workdir).resolve() / f"{events}"
        landing = workdir / "landing"
        shape = build_landing(landing, events=events, items=args.items, days=args.days, start=start)
        print(f"\n{events:,} events: {shape['users']:,} users x {shape['items']:,} items, {shape['distinct_pairs']:,} "
              f"distinct pairs, {shape['days']} daily drops (built in {shape['seconds']} s); date {date}, "
              f"budget {args.budget:g} s", flush=True)
        started = time.perf_counter()
        jobs = run_night(workdir, landing, date, args.days, args.budget)
        wall = time.perf_counter() - started
        peak = max(j["peak_rss_mib"] for j in jobs)
        print(f"  {'whole run':18s} {wall:8.1f} s {peak:8.0f} MiB (largest job)", flush=True)
        report.append({"shape": shape, "jobs": jobs, "wall_seconds": round(wall, 1), "peak_rss_mib": peak})
    if len(report) > 1:
        print("\ngrowth exponent per job (log time ratio / log volume ratio; 1 = linear):")
        for a, b in zip(report, report[1:]):
            ratio = math.log(b["shape"]["events"] / a["shape"]["events"])
            cells = []
            for ja, jb in zip(a["jobs"], b["jobs"]):
                if ja["seconds"] >= 1.0:  # below a second the process start-up dominates
                    cells.append(f"{ja['job']} {math.log(jb['seconds'] / ja['seconds']) / ratio:.2f}")
            print(f"  {a['shape']['events']:,} -> {b['shape']['events']:,}: " + ", ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
