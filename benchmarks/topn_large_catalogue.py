"""Top-N at a 2M-item catalogue (issue 11's e-commerce shape: 5M users × 2M products, ~10 items per
user): exact scoring vs ANN candidates (``nightly_topn.ann``), measured on a sample, projected to 5M.

    . .venv/bin/activate && python benchmarks/topn_large_catalogue.py              # full size (long: see below)
    python benchmarks/topn_large_catalogue.py --items 200000 --fit-users 400000 --sample 20000   # reduced, minutes
    python benchmarks/topn_large_catalogue.py --crossover 20000,50000,100000,200000   # exact vs ANN by size

Data (built once under ``--root``, reused while the spec is unchanged): interactions generated with
latent structure — item clusters, Zipf-like popularity (``--zipf``), users with a lognormal
activity (mean ``--per-user``), a favourite and a second cluster (55 % / 15 % of their events, 30 %
anywhere by popularity: the idea of ``benchmarks/nightly_scale.build_landing``, vectorised for 2M
items) — and the project's ``ALS`` class fitted on ``--fit-users`` users, so the item factors have
the structure (and the skewed norms) of a real fit. The first ``--sample`` of those users become the
top-N job's features partition (their histories) and the saved model's users; all items stay.

Measured, each in a fresh process (wall seconds, peak RSS of the process tree, ``measure.py``):

* ``exact``: ``TopNScorer(candidates="exact")`` in memory on a seeded ``--exact-sample`` of the
  sample's users (the pipeline's thread setting) — users/s; its lists are the recall reference.
* ``job``: the real top-N job (``jobs.topn.topn``: Beam pipeline → Parquet part files + index +
  manifest) on all ``--sample`` users with ``candidates=ann``: wall seconds, index build and
  calibration seconds, nprobe and calibration recall (from the manifest), and recall@N of the
  written lists against the exact lists on the sub-sample.

Projection to ``--users`` (5M): exact = users / exact users/s (kernel alone: optimistic for exact);
ANN = build + calibration + (job seconds − build − calibration) × users / sample (the job's model
loading and Beam start-up are scaled with the users too: pessimistic for ANN).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import run_measured  # noqa: E402
from topn_data import DATE, write_features  # noqa: E402

SHAPE = {"users": 5_000_000, "items": 2_000_000, "interactions": 50_000_000}


def interactions(users: int, items: int, per_user: float = 10.0, clusters: int = 0, zipf: float = 0.8,
                 seed: int = 0):
    """Distinct (user, item) pairs sorted by user then item, ~``users × per_user`` of them."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(8, items // 2000)
    activity = rng.lognormal(0.0, 1.0, users)
    counts = 1 + rng.multinomial(int(users * (per_user - 1)), activity / activity.sum())
    user = np.repeat(np.arange(users, dtype=np.int64), counts)
    popularity = 1.0 / (rng.permutation(items) + 10.0) ** zipf
    item_cluster = rng.integers(0, clusters, items)
    favourite = rng.integers(0, clusters, users)
    second = (favourite + rng.integers(1, clusters, users)) % clusters
    pick = rng.random(len(user))
    cluster = np.where(pick < 0.55, favourite[user], np.where(pick < 0.70, second[user], clusters))  # clusters = all
    # one inverse-CDF draw for every event: items ordered by cluster, the cumulative popularity over
    # that order, each cluster a contiguous slice of it (the last "cluster" is the whole catalogue)
    order = np.argsort(item_cluster, kind="stable")
    cdf = np.cumsum(popularity[order])
    edges = np.concatenate([[0.0], cdf])[np.searchsorted(item_cluster[order], np.arange(clusters + 1))]
    lo, hi = np.append(edges[:-1], 0.0), np.append(edges[1:], cdf[-1])
    target = lo[cluster] + rng.random(len(user)) * (hi[cluster] - lo[cluster])
    item = order[np.minimum(np.searchsorted(cdf, target, side="right"), items - 1)]
    keys = np.unique(user * items + item)
    return (keys // items).astype(np.int32), (keys % items).astype(np.int32)


def build(root: Path, *, items: int, fit_users: int, sample: int, per_user: float, factors: int, iterations: int,
          zipf: float, seed: int = 0, force: bool = False) -> dict:
    """Write (or reuse) the storage root: features of ``sample`` users, ALS fitted on ``fit_users``."""
    import datetime as dt

    import pyarrow as pa
    import scipy.sparse as sp

    from nightly_topn.models import ALS, Popularity
    from nightly_topn.storage import Storage

    spec = {"items": items, "fit_users": fit_users, "sample": sample, "per_user": per_user, "factors": factors,
            "iterations": iterations, "zipf": zipf, "seed": seed, "date": DATE, "generator": 1}
    store = Storage.at(root)
    marker = store.root / "bench_spec.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        return json.loads(marker.read_text())
    started = time.perf_counter()
    u, i = interactions(fit_users, items, per_user, zipf=zipf, seed=seed)
    matrix = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(fit_users, items))
    generated = time.perf_counter() - started
    als = ALS(factors=factors, iterations=iterations, seed=seed)
    fit_started = time.perf_counter()
    als.fit(matrix)
    fit_seconds = time.perf_counter() - fit_started
    # the job's users: the first ``sample`` (users are generated independently, so any slice is a sample)
    keep = u < sample
    u, i = u[keep], i[keep]
    t0 = int(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    times = pa.array(np.full(len(u), t0, np.int64), pa.timestamp("us", tz="UTC"))
    write_features(store.partition("features", DATE), u, i, np.ones(len(u), np.float32), times, sample, items,
                   producer="benchmarks/topn_large_catalogue.py", spec=spec, id_digits=(8, 7))
    final = store.partition("models", DATE) / "final"
    als.user_factors, als.known, als.n_users = als.user_factors[:sample], als.known[:sample], sample
    als.save(final / "als")
    Popularity().fit(matrix[:sample]).save(final / "popularity")
    info = {"model": "als", "model_version": f"{DATE}.als.large{seed}", "params": als.params}
    (store.partition("models", DATE) / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    norms = np.linalg.norm(als.item_factors, axis=1)
    result = {"spec": spec, "fit_interactions": int(matrix.nnz), "sample_interactions": int(len(u)),
              "items_with_interactions": int((np.diff(matrix.tocsc().indptr) > 0).sum()),
              "item_norm_quantiles": [round(float(q), 4) for q in np.quantile(norms, [0.5, 0.9, 0.99, 1.0])],
              "generate_seconds": round(generated, 1), "fit_seconds": round(fit_seconds, 1),
              "seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(result, indent=2) + "\n")
    return result


# -- tasks (each in a fresh process: ``--task NAME``) ---------------------------------------------
def _load(root):
    from nightly_topn.features import Features
    from nightly_topn.models import load_model

    return Features.load(f"{root}/features/dt={DATE}").matrix(), load_model(f"{root}/models/dt={DATE}/final/als")


def sub_sample(n_users: int, size: int, seed: int = 7) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_users, min(size, n_users), replace=False))


def task_kernel(args):
    """``TopNScorer`` in memory (the pipeline's setting: ``cores`` batches in flight, 1 torch thread)."""
    from nightly_topn import scoring

    threads = scoring.configure_threads()
    history, model = _load(args.root)
    users = sub_sample(history.shape[0], args.exact_sample) if args.method == "exact" else np.arange(history.shape[0])
    started = time.perf_counter()
    scorer = scoring.TopNScorer(model, args.top_n, parallel=threads, candidates=args.method)
    setup = time.perf_counter() - started
    if scorer.fused and threads > 1:
        import torch

        torch.set_num_threads(1)
    started = time.perf_counter()
    items = np.empty((len(users), args.top_n), np.int32)
    for lo in range(0, len(users), 8192):  # the pipeline's ranges
        items[lo:lo + 8192] = scorer.recommend(users[lo:lo + 8192], history[users[lo:lo + 8192]])[0]
    seconds = time.perf_counter() - started
    if args.save:
        np.savez(args.save, users=users, items=items)
    return {"users": len(users), "seconds": seconds, "users_per_s": len(users) / seconds, "setup_seconds": setup,
            "method": scorer.method, "describe": scorer.describe(), "exact_fallbacks": scorer.exact_fallbacks,
            "short_lists": int((items < 0).any(axis=1).sum())}


def task_job(args):
    from nightly_topn.config import RunParams
    from nightly_topn.jobs.topn import topn

    result = topn(DATE, root=args.root, params=RunParams(top_n=args.top_n, candidates=args.method),
                  beam_args=["--range_size=8192"])
    manifest = json.loads((Path(result["path"]) / "_manifest.json").read_text())
    return {**result, "seconds": manifest["seconds"], "users_per_s": result["rows"] / manifest["seconds"]}


def task_crossover(args):
    """Kernel users/s, exact vs ANN, on a small ALS fit per catalogue size (where ``auto`` switches)."""
    import scipy.sparse as sp

    from nightly_topn import scoring
    from nightly_topn.models import ALS

    threads = scoring.configure_threads()
    rows = []
    for items in [int(float(x)) for x in args.crossover.split(",") if x]:
        users = max(20_000, items)
        u, i = interactions(users, items, args.per_user, zipf=args.zipf, seed=args.seed)
        matrix = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(users, items))
        model = ALS(factors=args.factors, iterations=5, seed=args.seed).fit(matrix)
        picked = np.arange(min(users, 10_000))
        row = {"items": items}
        for method in ("exact", "ann"):
            import torch

            torch.set_num_threads(threads)
            scorer = scoring.TopNScorer(model, args.top_n, parallel=threads, candidates=method)
            torch.set_num_threads(1)
            scorer.recommend(picked[:256], matrix[picked[:256]])  # warm
            started = time.perf_counter()
            scorer.recommend(picked, matrix[picked])
            row[method] = len(picked) / (time.perf_counter() - started)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows}


TASKS = {"kernel": task_kernel, "job": task_job, "crossover": task_crossover}


def run_task(name: str, args, extra=()) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--task", name, "--root", str(args.root),
           "--top-n", str(args.top_n), "--exact-sample", str(args.exact_sample), "--per-user", str(args.per_user),
           "--zipf", str(args.zipf), "--factors", str(args.factors), "--seed", str(args.seed), *extra]
    done = run_measured(cmd)
    if done.returncode != 0:
        raise RuntimeError(f"task {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = done.peak_rss / 2**20
    result["wall_seconds"] = done.seconds
    return result


def written_lists(path: str, users: np.ndarray, top_n: int) -> np.ndarray:
    """The job's lists of ``users`` (dense indices) as item indices (ids are ``i%07d``)."""
    import pyarrow.parquet as pq

    manifest = json.loads((Path(path) / "_manifest.json").read_text())
    wanted = {f"u{u:08d}": k for k, u in enumerate(users)}
    out = np.full((len(users), top_n), -1, dtype=np.int64)
    for name in manifest["files"]:
        for row in pq.read_table(Path(path) / name, columns=["user_id", "item_ids"]).to_pylist():
            k = wanted.get(row["user_id"])
            if k is not None:
                ids = [int(i[1:]) for i in row["item_ids"]]
                out[k, :len(ids)] = ids
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="var/bench/large_catalogue")
    parser.add_argument("--items", type=int, default=SHAPE["items"])
    parser.add_argument("--users", type=int, default=SHAPE["users"], help="users the run is projected to")
    parser.add_argument("--fit-users", type=int, default=2_000_000, help="users ALS is fitted on (>= --sample)")
    parser.add_argument("--sample", type=int, default=100_000, help="users of the measured top-N job")
    parser.add_argument("--exact-sample", type=int, default=2048, help="users scored exactly (the recall reference)")
    parser.add_argument("--per-user", type=float, default=SHAPE["interactions"] / SHAPE["users"])
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15, help="ALS iterations")
    parser.add_argument("--zipf", type=float, default=0.8, help="popularity exponent")
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma list of: kernel (ANN in memory besides the job)")
    parser.add_argument("--crossover", default="", help="only measure kernel exact vs ANN at these catalogue sizes")
    parser.add_argument("--force", action="store_true", help="rebuild the data")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--method", default="exact")
    parser.add_argument("--save", default="")
    args = parser.parse_args(argv)
    args.root = str(Path(args.root).resolve())
    if args.task:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(TASKS[args.task](args), default=str))
        return 0
    if args.crossover:
        result = run_task("crossover", args, ["--crossover", args.crossover])
        print(f"{'items':>10s} {'exact users/s':>14s} {'ANN users/s':>12s}")
        for row in result["rows"]:
            print(f"{row['items']:10,d} {row['exact']:14.0f} {row['ann']:12.0f}")
        return 0
    if args.fit_users < args.sample:
        parser.error("--fit-users must be >= --sample")
    started = time.perf_counter()
    data = build(Path(args.root), items=args.items, fit_users=args.fit_users, sample=args.sample,
                 per_user=args.per_user, factors=args.factors, iterations=args.iterations, zipf=args.zipf,
                 seed=args.seed, force=args.force)
    print(f"data: ALS ({args.factors} factors, {args.iterations} it.) on {args.fit_users:,} users x {args.items:,} "
          f"items, {data['fit_interactions']:,} interactions, {data['items_with_interactions']:,} items with any; "
          f"item norm quantiles 50/90/99/100 % {data['item_norm_quantiles']}; job sample {args.sample:,} users "
          f"({data['sample_interactions']:,} interactions); built in {data['seconds']} s "
          f"(fit {data['fit_seconds']} s)", flush=True)
    import shutil

    shutil.rmtree(Path(args.root) / "topn", ignore_errors=True)
    load = os.getloadavg()[0]
    exact_file = str(Path(args.root) / "exact_lists.npz")
    r = {"data": data, "load_avg_start": load}
    r["exact"] = run_task("kernel", args, ["--method", "exact", "--save", exact_file])
    print(f"exact kernel: {r['exact']['users_per_s']:.1f} users/s on {r['exact']['users']} users", flush=True)
    if "kernel" not in set(args.skip.split(",")):
        r["ann_kernel"] = run_task("kernel", args, ["--method", "ann"])
        print(f"ANN kernel: {r['ann_kernel']['users_per_s']:.0f} users/s on {r['ann_kernel']['users']} users", flush=True)
    r["job"] = run_task("job", args, ["--method", "ann"])
    reference = np.load(exact_file)
    found = written_lists(r["job"]["path"], reference["users"], args.top_n)
    from nightly_topn.ann import recall

    r["recall"] = recall(found, reference["items"])
    r["load_avg_end"] = os.getloadavg()[0]
    r["wall_seconds"] = time.perf_counter() - started
    report(r, args)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str) + "\n")
    return 0


def report(r, args):
    job, exact = r["job"], r["exact"]
    info = job["candidates"]["champion"]
    fixed = info.get("build_seconds", 0.0) + info.get("calibration_seconds", 0.0)
    ann_total = fixed + (job["seconds"] - fixed) * args.users / job["rows"]
    exact_total = args.users / exact["users_per_s"]
    print()
    print(f"{'measurement':58s} {'users':>8s} {'users/s':>9s} {'seconds':>9s} {'peak RSS':>10s}")
    print("-" * 98)
    print(f"{'exact scoring, TopNScorer in memory (kernel only)':58s} {exact['users']:8d} {exact['users_per_s']:9.1f} "
          f"{exact['seconds']:9.1f} {exact['peak_rss_mib']:7.0f} MiB")
    if "ann_kernel" in r:
        k = r["ann_kernel"]
        print(f"{'ANN candidates, TopNScorer in memory':58s} {k['users']:8d} {k['users_per_s']:9.0f} {k['seconds']:9.1f} "
              f"{k['peak_rss_mib']:7.0f} MiB")
    print(f"{'ANN candidates, real top-N job (Beam -> Parquet), all in':58s} {job['rows']:8d} {job['users_per_s']:9.0f} "
          f"{job['seconds']:9.1f} {job['peak_rss_mib']:7.0f} MiB")
    print(f"  index: {info['shards']} norm shards ({info['ivf_shards']} IVF), built in {info['build_seconds']:.1f} s; "
          f"calibration {info['calibration_seconds']:.1f} s on {info['calibration_users']} users: nprobe "
          f"{info['nprobe']} (deep {info['deep_nprobe']}), recall@{info['k']} {info['calibration_recall']:.4f} "
          f"(target {info['recall_target']})")
    if "ann_kernel" in r:
        print(f"  users scored exactly by the ANN path (too many seen items): {r['ann_kernel']['exact_fallbacks']} of "
              f"{r['ann_kernel']['users']}")
    print(f"recall@{args.top_n} of the job's lists vs exact top-{args.top_n} on {exact['users']} users: "
          f"{r['recall']:.4f}")
    print(f"\nprojection to {args.users:,} users x {args.items:,} items on this machine:")
    print(f"  exact: {exact_total / 3600:6.2f} h  ({args.users:,} / {exact['users_per_s']:.1f} users/s)")
    print(f"  ANN:   {ann_total / 3600:6.2f} h  ({fixed:.0f} s index + calibration, then the job's "
          f"{job['seconds'] - fixed:.0f} s for {job['rows']:,} users scaled)")
    print(f"\ntargets: ANN projected <= 3 h: {ann_total / 3600:.2f} h {'PASS' if ann_total <= 3 * 3600 else 'FAIL'}; "
          f"sample >= 100K users: {job['rows']:,} {'PASS' if job['rows'] >= 100_000 else 'FAIL (reduced run)'}; "
          f"recall >= 0.98: {r['recall']:.4f} {'PASS' if r['recall'] >= 0.98 else 'FAIL'}")
    print(f"load average start {r['load_avg_start']:.1f}, end {r['load_avg_end']:.1f}; benchmark wall "
          f"{r['wall_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
