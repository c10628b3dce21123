"""What shaping the lists costs the top-N step at MovieLens-20M shape: candidate rules off/on and
MMR diversity off/on, one run.

    . .venv/bin/activate && python benchmarks/list_shaping.py        # ~6 min on 2 cores

Data: the top-N benchmark's storage root (``benchmarks/topn_data.py``, built once under
``var/bench/ml20m``: 138,493 users × 26,744 items, ~20M interactions, 64-factor ALS). Rules are
landed in id space (``schemas.RULES`` + users with a segment) and resolved by the product's own
``rules.resolve`` into ``features/dt=D/rules.parquet``, exactly as preprocess does; item
categories (1-3 of 20 genres per item, following the item factors' directions, as real genres
follow tastes) are written as preprocess writes them (``item_categories.parquet``). Configurations:

* ``off``: plain top-N;
* ``exclude``: 10 % of the catalogue excluded for everyone (random items, popular ones included);
* ``all``: that, plus 5 blocked items per user (692K block rules) and a segment "eu" (every
  third user) whose allow-list holds 80 % of the catalogue;
* ``mmr``: no rules, MMR re-ranking at ``--strength`` (default 0.3) from ``diversity.candidates(N)``
  candidates per user;
* ``similar``: the similar items (K = 20) of every item with the same model (``nightly_topn.similar``).

Each configuration runs the kernel (``TopNScorer`` over all users in memory, in the pipeline's
thread setting) and the real top-N job (Beam pipeline to Parquet, timed by the job), each in a
fresh process (``topn_benchmark.run_task``: peak RSS of the process tree), ``--repeat`` times
interleaved, best run kept. Every list of the kernel runs is checked: rule violations and lists
shorter than N are counted (both must be 0); the kernel also reports the lists' intra-list
diversity over the categories.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DATE = "2024-03-01"


def land_rules(root: Path, kind: str, seed: int = 0) -> dict | None:
    """Write ``features/dt=D/rules.parquet`` for ``kind`` (off: remove it); returns resolve's stats."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nightly_topn import schemas
    from nightly_topn.rules import RULES_FILE, resolve

    features = root / "features" / f"dt={DATE}"
    (features / RULES_FILE).unlink(missing_ok=True)
    if kind in ("off", "mmr"):
        return None
    users = pq.read_table(features / "user_map.parquet").column("user_id").to_numpy(zero_copy_only=False)
    items = pq.read_table(features / "item_map.parquet").column("item_id").to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    rule = [np.full(len(items) // 10, "exclude")]
    item = [rng.choice(items, len(items) // 10, replace=False)]
    user, segment = [np.full(len(item[0]), None)], [np.full(len(item[0]), None)]
    members = None
    if kind == "all":
        blocked_users = np.repeat(users, 5)
        rule += [np.full(len(blocked_users), "block")]
        item += [rng.choice(items, len(blocked_users))]
        user += [blocked_users]
        segment += [np.full(len(blocked_users), None)]
        allowed = items[rng.random(len(items)) < 0.8]
        rule += [np.full(len(allowed), "allow")]
        item += [allowed]
        user += [np.full(len(allowed), None)]
        segment += [np.full(len(allowed), "eu")]
        members = pa.table({"user_id": users, "segment": np.where(np.arange(len(users)) % 3 == 0, "eu", None)})
    table = pa.table({"rule": np.concatenate(rule), "item_id": np.concatenate(item),
                      "user_id": pa.array(np.concatenate(user), pa.string()),
                      "segment": pa.array(np.concatenate(segment), pa.string()),
                      "reason": pa.nulls(sum(map(len, rule)), pa.string())}, schema=schemas.RULES)
    started = time.perf_counter()
    resolved, stats = resolve(table, None, members, users, items, dt.date.fromisoformat(DATE))
    pq.write_table(resolved, features / RULES_FILE, compression="zstd")
    return {**stats, "rules": table.num_rows, "resolve_seconds": round(time.perf_counter() - started, 2)}


def land_categories(root: Path, seed: int = 0) -> None:
    """``item_categories.parquet`` of the benchmark root: 1-3 of 20 genres per item."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nightly_topn import schemas
    from nightly_topn.features import ITEM_CATEGORIES

    from nightly_topn.models import load_model

    features = root / "features" / f"dt={DATE}"
    factors = load_model(root / "models" / f"dt={DATE}" / "final" / "als").item_factors
    rng = np.random.default_rng(seed)
    # genres follow the taste structure (as real ones do): an item's 1-3 genres are the random
    # directions its factors point to most, so a plain list concentrates on few genres
    affinity = factors @ rng.standard_normal((factors.shape[1], 20)).astype(np.float32)
    ranked = np.argsort(-affinity, axis=1)
    per_item = rng.integers(1, 4, len(factors))
    items = np.repeat(np.arange(len(factors), dtype=np.int32), per_item)
    slot = np.arange(len(items)) - np.repeat(np.cumsum(per_item) - per_item, per_item)
    genres = np.array([f"genre-{g:02d}" for g in range(20)])[ranked[items, slot]]
    table = pa.table({"item_index": items, "category": genres}).group_by(["item_index", "category"]).aggregate([])
    pq.write_table(table.sort_by([("item_index", "ascending"), ("category", "ascending")])
                   .cast(schemas.ITEM_CATEGORIES), features / ITEM_CATEGORIES)


def main(argv=None) -> int:
    import topn_benchmark
    import topn_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="var/bench/ml20m")
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.3, help="MMR strength of the mmr configuration")
    parser.add_argument("--kinds", default="off,exclude,all,mmr,similar",
                        help="configurations to run (off always runs; similar: the similar-items step)")
    parser.add_argument("--json", help="also write all figures to this JSON file")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    data = topn_data.build(root)
    from nightly_topn.scoring import DEFAULT_BATCH

    task_args = argparse.Namespace(root=str(root), top_n=args.top_n, batch_size=DEFAULT_BATCH, range_size=8192,
                                   factors=data["spec"]["factors"], items=data["spec"]["items"])
    print(f"data: {data['spec']['users']} users x {data['spec']['items']} items, {data['nnz']:,} interactions, "
          f"top-{args.top_n}", flush=True)
    kinds = tuple(dict.fromkeys(["off", *(k for k in args.kinds.split(",") if k and k != "similar")]))
    runs = {k: {"kernel": [], "pipeline": []} for k in kinds}
    stats = {}
    from nightly_topn.features import ITEM_CATEGORIES

    land_categories(root)
    try:
        for _ in range(args.repeat):
            for kind in kinds:
                stats[kind] = land_rules(root, kind)
                extra = ["--diversity-strength", str(args.strength)] if kind == "mmr" else []
                for task in ("kernel", "pipeline"):
                    result = topn_benchmark.run_task(task, task_args, extra)
                    runs[kind][task].append(result)
                    print(f"  {kind:8s} {task:8s} {result['users_per_s']:9.0f} users/s "
                          f"({result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB)", flush=True)
    finally:  # the top-N benchmark's root stays as it built it
        land_rules(root, "off")
        (root / "features" / f"dt={DATE}" / ITEM_CATEGORIES).unlink(missing_ok=True)
    similar = topn_benchmark.run_task("similar", task_args) if "similar" in args.kinds.split(",") else None
    best = {k: {t: max(r, key=lambda x: x["users_per_s"]) for t, r in v.items()} for k, v in runs.items()}
    print(f"\n{'shaping':10s} {'kernel users/s':>15s} {'x off':>7s} {'job users/s':>12s} {'x off':>7s} "
          f"{'job RSS MiB':>12s} {'violations':>11s} {'short lists':>12s} {'diversity':>10s}")
    for kind in kinds:
        kernel, job = best[kind]["kernel"], best[kind]["pipeline"]
        print(f"{kind:10s} {kernel['users_per_s']:15.0f} "
              f"{best['off']['kernel']['users_per_s'] / kernel['users_per_s']:7.2f} {job['users_per_s']:12.0f} "
              f"{best['off']['pipeline']['users_per_s'] / job['users_per_s']:7.2f} {job['peak_rss_mib']:12.0f} "
              f"{kernel.get('rule_violations', 0):11d} {kernel['short_lists']:12d} "
              f"{kernel.get('intra_list_diversity', float('nan')):10.4f}")
    for kind in ("exclude", "all"):
        if kind in stats:
            print(f"{kind}: {json.dumps(stats[kind])}")
    if "mmr" in best:
        print(f"mmr: strength {args.strength}, {best['mmr']['kernel']['users']} users")
    if similar:
        print(f"similar items: {similar['items']} items x 20 by {similar['method']} in {similar['seconds']:.1f} s "
              f"(peak RSS {similar['peak_rss_mib']:.0f} MiB, {similar['short_lists']} short lists)")
    print("(x off: time with rules / time without, from the best of each; kernel = scoring only, "
          "job = the top-N job end to end to Parquet)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "rules": stats, "similar": similar}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
