"""A MovieLens-20M-shaped storage root for the top-N benchmark, built directly (vectorised).

Generating 20M interactions with ``GeneratedSource`` day by day (then preprocess + ALS) would
take far longer than the thing being measured, so this writes the *inputs of the top-N step*
in the project's own layout and formats instead:

* ``features/dt=D/{interactions,user_map,item_map}.parquet`` (``schemas.INTERACTIONS`` etc.):
  138,493 users × 26,744 items, ~20.0M distinct (user, item) pairs — MovieLens 20M's shape.
  Users get ``20 + lognormal`` interactions (ML-20M: min 20, mean ≈ 144, long tail), items
  are drawn from a Zipf-like popularity (exponent 1.0, random item order), duplicates dropped
  and topped up once, rows sorted by (user, item) as preprocess writes them.
* ``models/dt=D/final/{als,popularity}`` saved by the project's own ``ALS``/``Popularity``
  classes (so the pipeline loads them through ``load_model``), plus ``model_info.json``.
  ALS factors (64) are synthetic by default: a low-rank taste structure (12 clusters + noise,
  popularity on one axis) with ALS-like magnitudes. ``--fit-als K`` fits ``implicit`` ALS on
  the generated matrix for K iterations instead (slow: minutes). Scoring cost does not depend
  on the factor values, only on the shapes, which are the real ones.

    python benchmarks/topn_data.py --root var/bench/ml20m
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ML20M = {"users": 138_493, "items": 26_744, "interactions": 20_000_263, "factors": 64}
DATE = "2024-03-01"


def write_features(features: Path, u, i, conf, times, users: int, items: int, *, producer: str, spec: dict,
                   id_digits: tuple[int, int] = (7, 6)) -> None:
    """A features partition in the project's layout (``schemas.INTERACTIONS`` + id maps + manifest)
    from ``(u, i, conf)`` pairs, every pair in the train split; ids ``u0000001`` / ``i000001``."""
    from nightly_topn import schemas
    from nightly_topn.jobs.preprocess import INTERACTIONS_ROW_GROUP

    features.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "user_index": u, "item_index": i, "confidence": conf, "n_events": np.ones(len(u), np.int32),
        "first_time": times, "last_time": times,
        "split": pa.DictionaryArray.from_arrays(np.zeros(len(u), np.int32), ["train"]).cast(pa.string()),
    }, schema=schemas.INTERACTIONS), features / "interactions.parquet", compression="zstd",
        row_group_size=INTERACTIONS_ROW_GROUP)
    pq.write_table(pa.table({"user_index": np.arange(users, dtype=np.int32),
                             "user_id": [f"u{k:0{id_digits[0]}d}" for k in range(users)]}, schema=schemas.USER_MAP),
                   features / "user_map.parquet")
    pq.write_table(pa.table({"item_index": np.arange(items, dtype=np.int32),
                             "item_id": [f"i{k:0{id_digits[1]}d}" for k in range(items)]}, schema=schemas.ITEM_MAP),
                   features / "item_map.parquet")
    (features / "_manifest.json").write_text(json.dumps({"producer": producer, "spec": spec}))


def sample_interactions(users: int, items: int, interactions: int, seed: int = 0):
    """Distinct (user, item) pairs sorted by user then item, ~``interactions`` of them."""
    rng = np.random.default_rng(seed)
    extra = rng.lognormal(0.0, 1.2, users)
    counts = 20 + np.floor(extra / extra.sum() * (interactions - 20 * users)).astype(np.int64)
    counts[: interactions - counts.sum()] += 1  # hit the total exactly before de-duplication
    counts = np.minimum(counts, items)
    weights = 1.0 / np.arange(1, items + 1) ** 1.0
    popularity = rng.permutation(weights / weights.sum())
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]

    def draw(per_user):
        user = np.repeat(np.arange(users, dtype=np.int64), per_user)
        item = np.searchsorted(cdf, rng.random(len(user)), side="right").clip(0, items - 1)
        return user * items + item

    keys = np.unique(draw(counts))
    short = counts - np.bincount(keys // items, minlength=users)
    if short.sum() > 0:  # popular items repeat for heavy users: top up with fresh draws once
        keys = np.unique(np.concatenate([keys, draw(np.maximum(short, 0) * 2)]))
        have = np.bincount(keys // items, minlength=users)
        # keep at most ``counts`` per user (drop the surplus from the end of each user's row)
        starts = np.concatenate([[0], np.cumsum(have)[:-1]])
        rank = np.arange(len(keys)) - np.repeat(starts, have)
        keys = keys[rank < np.repeat(counts, have)]
    return (keys // items).astype(np.int32), (keys % items).astype(np.int32)


def synthetic_factors(users: int, items: int, factors: int, item_pop: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed + 1)
    centers = rng.normal(0, 1, (12, factors)).astype(np.float32)
    item_f = 0.08 * (centers[rng.integers(0, 12, items)] + rng.normal(0, 1.0, (items, factors)))
    item_f[:, 0] = 0.05 + 0.3 * np.log1p(item_pop) / np.log1p(item_pop.max())  # popularity axis
    user_f = 0.5 * (centers[rng.integers(0, 12, users)] + rng.normal(0, 1.0, (users, factors)))
    user_f[:, 0] = np.abs(user_f[:, 0]) + 0.5
    return np.ascontiguousarray(user_f, np.float32), np.ascontiguousarray(item_f, np.float32)


def build(root: str | Path, *, users=ML20M["users"], items=ML20M["items"], interactions=ML20M["interactions"],
          factors=ML20M["factors"], fit_als: int = 0, seed: int = 0, date: str = DATE, force=False) -> dict:
    """Write (or reuse, when the same spec is already there) the benchmark root; returns its spec."""
    import scipy.sparse as sp

    from nightly_topn.models import ALS, Popularity
    from nightly_topn.storage import Storage

    spec = {"users": users, "items": items, "interactions": interactions, "factors": factors,
            "fit_als": fit_als, "seed": seed, "date": date, "generator": 3}
    store = Storage.at(root)
    marker = store.root / "bench_spec.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        return json.loads(marker.read_text())
    started = time.perf_counter()
    u, i = sample_interactions(users, items, interactions, seed)
    rng = np.random.default_rng(seed + 2)
    conf = rng.integers(1, 6, len(u)).astype(np.float32)
    t0 = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
    times = pa.array(np.full(len(u), int(t0.timestamp() * 1e6), np.int64) + rng.integers(0, 86_400_000_000 * 365, len(u)),
                     pa.timestamp("us", tz="UTC"))
    write_features(store.partition("features", date), u, i, conf, times, users, items,
                   producer="benchmarks/topn_data.py", spec=spec)

    matrix = sp.csr_matrix((conf, (u, i)), shape=(users, items))
    final = store.partition("models", date) / "final"
    als = ALS(factors=factors)
    if fit_als:
        als.params["iterations"] = fit_als
        als.fit(matrix)
    else:
        als.user_factors, als.item_factors = synthetic_factors(users, items, factors, np.bincount(i, minlength=items), seed)
        als.known = np.diff(matrix.indptr) > 0
        als.n_items, als.n_users = items, users
    als.save(final / "als")
    Popularity().fit(matrix).save(final / "popularity")
    info = {"model": "als", "model_version": f"{date}.als.bench{seed}", "params": als.params}
    (store.partition("models", date) / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    result = {"spec": spec, "nnz": int(matrix.nnz), "seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="var/bench/ml20m")
    for key, value in ML20M.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--fit-als", type=int, default=0, help="fit implicit ALS for K iterations (0: synthetic factors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.root, users=args.users, items=args.items, interactions=args.interactions,
                           factors=args.factors, fit_als=args.fit_als, seed=args.seed, force=args.force), indent=2))


if __name__ == "__main__":
    main()
