"""Top-N step at MovieLens-20M shape: the project's pipeline vs its kernel, implicit, a naive
Beam DoFn and the machine's GEMM bound — users/second, peak RSS and lookup latency, one run.

    . .venv/bin/activate && python benchmarks/topn_benchmark.py            # ~5-10 min on 2 cores

Data: ``benchmarks/topn_data.py`` builds (once; reused while the spec is unchanged) a storage
root under ``var/bench/ml20m`` in the project's layout: 138,493 users × 26,744 items, ~20M
interactions, 64-factor ALS saved by the project's ``ALS`` class. Everything below reads it.

Each measurement runs in its own Python process (so imports, thread pools and peak RSS don't
leak between them; RSS = the sum over the process tree, sampled every 20 ms):

* ``bound``: float32 GEMM FLOP/s measured with torch (square 2048³ and the scoring shape,
  batch × 64 × items) on all cores → users/s = FLOP/s ÷ (2 · items · factors).
* ``kernel``: ``scoring.TopNScorer`` over all users in memory (history + model already loaded).
* ``implicit``: ``implicit`` ALS (CPU) with the same factors, ``recommend(all users, history,
  N, filter_already_liked_items=True)`` in one call, ``num_threads=0`` (all cores).
* ``pipeline``: the real ``jobs.topn.topn`` (Beam pipeline: read model + history → score →
  Parquet part files on disk + lookup index + manifest), timed by the job itself, on the
  default DirectRunner and on ``--direct_running_mode=multi_processing --direct_num_workers=2``;
  the two outputs are compared row for row; and on Beam's Dask runner against a local
  ``dask.distributed`` cluster started for the run (``tools.local_dask``: scheduler + 2 worker
  processes of one thread on 127.0.0.1, ``--scoring_threads=1``) twice: the fresh cluster's first
  run, then its second (what a long-lived cluster sees nightly); peak RSS sampled per worker
  process, output compared row for row with the DirectRunner's (``--skip dask`` to leave out);
  then with the storage root on an S3 API (``tools.local_s3``: moto's server on 127.0.0.1, the
  root's features and models uploaded to ``s3://nightly-topn/bench``, reached through ``AWS_*``):
  the job in-process, and on the Dask cluster (workers read the history and the model from the
  store and write the part files to it), compared row for row with the local root's output
  (``--skip s3`` to leave out).
* ``naive``: the tutorial shape — ``beam.Create(user indices) | ParDo(per user: NumPy dot
  product, mask seen, argpartition + argsort, yield a dict) | WriteToParquet`` — on the same
  runners, on samples of ``S`` and ``2S`` users (``--naive-sample`` 10,000 in-process,
  ``--naive-mp-sample`` 20,000 multi-process); extrapolated to all users from the per-user
  marginal cost plus the fixed cost.
* ``select``: top-N selection alone on one thread, on real masked score rows of one batch:
  ``scoring.block_top_n`` (what the kernel uses) vs ``torch.topk`` vs ``np.argpartition`` on
  whole rows — the measurement behind the choice.
* ``sweep``: the kernel at several ``--batch-size`` values on the first ``--sweep-users`` users
  (what ``scoring.DEFAULT_BATCH`` was chosen from).
* ``lookup``: ``TopNReader`` on the default run's output, warm, 10,000 random users; then the
  bulk export of that output to JSON lines.

The machine may be shared: kernel, implicit and both pipeline runs are repeated ``--repeat``
times (default 2), interleaved, and the best run of each is reported (all runs are printed).
Ratios are only meaningful within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the repo root: tools/ (a local Dask cluster) is not installed

DATE = "2024-03-01"
MP_FLAGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


# -- tasks (each runs in a fresh process: ``--task NAME``) --------------------------------------
def task_bound(args):
    import torch

    from nightly_topn.scoring import configure_threads

    threads = configure_threads()
    out = {"threads": threads}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c = torch.empty(2048, 2048)
    out["square_gflops"] = _best_rate(lambda: torch.mm(a, b, out=c), 2 * 2048**3) / 1e9
    u, v = torch.randn(args.batch_size, args.factors), torch.randn(args.items, args.factors)
    buf = torch.empty(args.batch_size, args.items)
    out["shaped_gflops"] = _best_rate(lambda: torch.mm(u, v.t(), out=buf), 2 * args.batch_size * args.items * args.factors) / 1e9
    return out


def _best_seconds(fn, reps=7):
    fn()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _best_rate(fn, work, reps=7):
    return work / _best_seconds(fn, reps)


def _load(root):
    from nightly_topn.models import load_model
    from nightly_topn.features import Features

    history = Features.load(f"{root}/features/dt={DATE}").matrix()
    model = load_model(f"{root}/models/dt={DATE}/final/als")
    return history, model


def task_kernel(args):
    import numpy as np

    from nightly_topn import scoring

    from nightly_topn.rules import CandidateRules

    threads = scoring.configure_threads(args.threads or None)
    history, model = _load(args.root)
    n_users = min(history.shape[0], args.limit or history.shape[0])
    features = f"{args.root}/features/dt={DATE}"
    rules = CandidateRules.read(features, *history.shape)  # benchmarks/list_shaping.py writes them
    diversity = None
    if args.diversity_strength:
        from nightly_topn.diversity import CategorySimilarity
        from nightly_topn.features import read_item_categories

        diversity = (CategorySimilarity(read_item_categories(features), history.shape[1]), args.diversity_strength)
    # the pipeline's setting: ``threads`` batches in flight, one torch thread each
    scorer = scoring.TopNScorer(model, args.top_n, batch_size=args.batch_size, parallel=threads, rules=rules,
                                diversity=diversity)
    if scorer.fused and threads > 1:
        import torch

        torch.set_num_threads(1)
    scorer.recommend(np.arange(args.batch_size), history[: args.batch_size])  # warm (buffer, verify)
    items = np.empty((n_users, args.top_n), np.int32)
    scores = np.empty((n_users, args.top_n), np.float32)
    started = time.perf_counter()
    for lo in range(0, n_users, args.range_size):  # the pipeline's elements
        hi = min(lo + args.range_size, n_users)
        items[lo:hi], scores[lo:hi] = scorer.recommend(np.arange(lo, hi), history[lo:hi])
    seconds = time.perf_counter() - started
    out = {"users": n_users, "seconds": seconds, "users_per_s": n_users / seconds, "threads": threads,
           "batch_size": args.batch_size, "short_lists": int((items < 0).any(axis=1).sum())}
    if rules is not None:  # every list checked: nothing the rules forbid
        out["rule_violations"] = int(rules.forbids(np.arange(n_users), items).sum())
    from nightly_topn.features import read_item_categories

    categories = read_item_categories(features)
    if categories is not None:
        from nightly_topn.evaluation import intra_list_diversity

        out["intra_list_diversity"] = intra_list_diversity(items, categories)
    if rules is not None or diversity is not None:
        return out
    # spot check against the model's own recommend (exact same items and order)
    sample = np.random.default_rng(0).choice(n_users, 200, replace=False)
    ref_items, _ = model.recommend(sample, history[sample], args.top_n)
    return {**out, "agreement_with_model_recommend": float((ref_items == items[sample]).mean())}


def task_select(args):
    """Selection alone, one thread, on real masked score batches: what ``top_n`` chose and why."""
    import numpy as np
    import torch

    from nightly_topn import scoring

    torch.set_num_threads(1)
    history, model = _load(args.root)
    users = np.arange(args.batch_size)
    scores = model.score(users, history[users])
    scoring.mask_seen(scores, history[users])
    tensor = torch.from_numpy(scores)
    cols = scores.shape[1]
    methods = {
        "block_top_n (threshold on block maxima)": lambda: scoring.block_top_n(scores, args.top_n),
        "torch.topk (whole rows)": lambda: torch.topk(tensor, args.top_n, dim=1, sorted=True),
        "np.argpartition (whole rows) + sort": lambda: scoring.top_n(scores, args.top_n, block=cols + 1),
    }
    out = {}
    for name, fn in methods.items():
        out[name] = _best_seconds(fn, reps=5) / len(users) * 1e6
    return {"us_per_user": out, "batch_size": len(users), "items": cols}


def task_implicit(args):
    import numpy as np
    from implicit.cpu.als import AlternatingLeastSquares

    history, model = _load(args.root)
    als = AlternatingLeastSquares(factors=model.user_factors.shape[1], num_threads=0)
    als.user_factors, als.item_factors = model.user_factors, model.item_factors
    users = np.arange(history.shape[0])
    started = time.perf_counter()
    ids, _ = als.recommend(users, history, N=args.top_n, filter_already_liked_items=True)
    seconds = time.perf_counter() - started
    return {"users": len(users), "seconds": seconds, "users_per_s": len(users) / seconds, "shape": list(ids.shape)}


def task_pipeline(args):
    import json as _json

    from nightly_topn.config import RunParams
    from nightly_topn.jobs.topn import topn

    beam_args = [f"--batch_size={args.batch_size}", f"--range_size={args.range_size}", *args.beam]
    result = topn(DATE, root=args.root, params=RunParams(top_n=args.top_n, diversity_strength=args.diversity_strength),
                  beam_args=beam_args)
    from nightly_topn.storage import as_path

    manifest = _json.loads((as_path(result["path"]) / "_manifest.json").read_text())
    seconds = manifest["seconds"]
    return {**result, "seconds": seconds, "users_per_s": result["rows"] / seconds, "beam_args": beam_args}


def task_naive(args):
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.options.pipeline_options import PipelineOptions

    root, top_n = args.root, args.top_n

    class RecommendOne(beam.DoFn):
        """One element = one user, as tutorials write it: a NumPy dot product, mask, argpartition,
        argsort, a dict out. Independent of the project's kernel on purpose."""

        def setup(self):
            import numpy as np
            import pyarrow.parquet as pq

            from nightly_topn.features import Features

            self.history = Features.load(f"{root}/features/dt={DATE}").matrix()
            with np.load(f"{root}/models/dt={DATE}/final/als/model.npz", allow_pickle=False) as arrays:
                self.user_factors, self.item_factors = arrays["user_factors"], arrays["item_factors"]
            self.user_ids = pq.read_table(f"{root}/features/dt={DATE}/user_map.parquet").column("user_id").to_pylist()
            self.item_ids = pq.read_table(f"{root}/features/dt={DATE}/item_map.parquet").column("item_id").to_pylist()

        def process(self, user):
            import datetime as dt

            import numpy as np

            scores = self.item_factors @ self.user_factors[user]
            scores[self.history[user].indices] = -np.inf
            top = np.argpartition(-scores, top_n)[:top_n]
            top = top[np.argsort(-scores[top])]
            yield {"user_id": self.user_ids[user], "item_ids": [self.item_ids[i] for i in top],
                   "scores": [float(scores[i]) for i in top], "source": "model", "model_version": "naive",
                   "logical_date": dt.date.fromisoformat(DATE), "arm": "champion"}

    from nightly_topn import schemas

    out_dir = Path(args.root) / "naive_out"
    out_dir.mkdir(exist_ok=True)
    schema = pa.schema(list(schemas.TOPN))  # no metadata
    options = PipelineOptions(["--runner=FnApiRunner", *args.beam])  # never downloads Prism
    started = time.perf_counter()
    with beam.Pipeline(options=options) as pipeline:
        (pipeline
         | beam.Create(list(range(args.sample)))
         | beam.ParDo(RecommendOne())
         | beam.io.WriteToParquet(str(out_dir / f"naive-{args.sample}"), schema, codec="zstd",
                                  file_name_suffix=".parquet"))
    return {"users": args.sample, "seconds": time.perf_counter() - started}


def task_similar(args):
    """Similar items (``nightly_topn.similar``) of every item with the benchmark's ALS, K = 20."""
    from nightly_topn.scoring import configure_threads
    from nightly_topn.similar import similar_items

    threads = configure_threads(args.threads or None)
    history, model = _load(args.root)
    started = time.perf_counter()
    idx, _, method = similar_items(model, history, 20)
    seconds = time.perf_counter() - started
    return {"items": int(idx.shape[0]), "seconds": seconds, "users_per_s": idx.shape[0] / seconds,
            "method": method, "threads": threads, "short_lists": int((idx < 0).any(axis=1).sum())}


TASKS = {"similar": task_similar, "bound": task_bound, "kernel": task_kernel, "implicit": task_implicit, "pipeline": task_pipeline,
         "naive": task_naive, "select": task_select}


# -- the orchestrator ----------------------------------------------------------------------
def run_task(name: str, args, extra: list[str] = (), root: str | None = None) -> dict:
    """Run ``--task name`` in a child process; its JSON result + peak RSS of its process tree."""
    from measure import run_measured

    cmd = [sys.executable, str(Path(__file__).resolve()), "--task", name, "--root", str(root or args.root),
           "--top-n", str(args.top_n), "--batch-size", str(args.batch_size), "--range-size", str(args.range_size),
           "--factors", str(args.factors), "--items", str(args.items), *extra]
    done = run_measured(cmd)
    if done.returncode != 0:
        raise RuntimeError(f"task {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = done.peak_rss / 2**20
    return result


def dask_run(args, workers: int = 2, root: str | None = None) -> tuple[dict, dict]:
    """The pipeline task on Beam's Dask runner, twice, against one fresh local cluster
    (``tools.local_dask``: scheduler + ``workers`` one-thread worker processes on 127.0.0.1), one
    scoring thread per worker: the first run is a just-started cluster's, the second what a
    long-lived cluster runs every night after its first. Peak RSS sampled per worker process
    (the task's own figure is the launching job's)."""
    import psutil

    from tools.local_dask import LocalDask

    with LocalDask(workers=workers) as cluster:
        procs = [psutil.Process(pid) for pid in cluster.pids()]
        peaks, done = [0] * workers, threading.Event()

        def sample():
            while not done.is_set():
                for i, proc in enumerate(procs):
                    try:
                        peaks[i] = max(peaks[i], proc.memory_info().rss)
                    except psutil.Error:
                        pass
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            flags = [f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.address}", "--scoring_threads=1"]
            first = run_task("pipeline", args, [f"--beam={f}" for f in flags], root=root)
            second = run_task("pipeline", args, [f"--beam={f}" for f in flags], root=root)
        finally:
            done.set()
            sampler.join()
    for result in (first, second):
        result["worker_peak_rss_mib"] = [round(p / 2**20) for p in peaks]
    return first, second


def object_store_runs(args, runs: dict) -> None:
    """The pipeline with the root on a local S3 server (moto, 127.0.0.1): in-process and on a
    fresh 2-worker Dask cluster; the root's features and models are uploaded first (timed)."""
    from tools.local_s3 import LocalS3

    with LocalS3() as s3:
        os.environ.update(s3.env())  # the tasks and the Dask workers inherit the endpoint and keys
        started = time.perf_counter()
        client = s3.client()
        for path in sorted(Path(args.root).rglob("*")):
            relative = path.relative_to(args.root).as_posix()
            if path.is_file() and relative.split("/")[0] in ("features", "models"):
                client.upload_file(str(path), s3.bucket, f"bench/{relative}")
        runs["s3_upload_seconds"] = round(time.perf_counter() - started, 1)
        root = s3.url("bench")
        runs["pipeline_s3"] = [run_task("pipeline", args, root=root)]
        first, second = dask_run(args, root=root)
        runs["pipeline_dask_s3"] = [second]
        runs["pipeline_dask_s3_first"] = [first]
        # compared while the server still holds them
        runs["identical_local_vs_s3"] = identical_outputs(runs["pipeline"][0]["path"], runs["pipeline_s3"][0]["path"])
        runs["identical_local_vs_dask_s3"] = identical_outputs(runs["pipeline"][0]["path"], second["path"])


def naive_rate(args, beam: list[str], n_users: int, sample: int) -> dict:
    """Users/s of the naive DoFn for all users, from runs on S and 2S users (fixed + marginal cost).

    The DirectRunner's bundling varies from run to run (measured: 10 s to 32 s for the same
    10,000 users multi-process), so each size runs ``--repeat`` times, interleaved, and the
    fastest run of each size is used. If the larger sample is still not slower than the
    smaller, the noise swamps the marginal cost and the estimate assumes no fixed cost at all
    (the larger sample's own rate: the most favourable to the naive DoFn), flagged as such.
    """
    sizes = (sample, 2 * sample)
    runs = {size: [] for size in sizes}
    for _ in range(args.repeat):
        for size in sizes:
            runs[size].append(run_task("naive", args, ["--sample", str(size), *[f"--beam={b}" for b in beam]]))
    small, large = (min(r["seconds"] for r in runs[size]) for size in sizes)
    noisy = large <= small
    per_user = large / sizes[1] if noisy else (large - small) / sample
    fixed = 0.0 if noisy else max(small - per_user * sample, 0.0)
    total = fixed + per_user * n_users
    return {"sample_seconds": {size: [round(r["seconds"], 2) for r in runs[size]] for size in sizes},
            "marginal_users_per_s": 1 / per_user, "fixed_seconds": fixed, "noise_dominated": noisy,
            "extrapolated_seconds": total, "users_per_s": n_users / total,
            "peak_rss_mib": max(r["peak_rss_mib"] for rs in runs.values() for r in rs)}


def lookup_latency(path: str, n: int, seed: int = 0) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from nightly_topn.lookup import TopNReader

    manifest = json.loads((Path(path) / "_manifest.json").read_text())
    ids = np.concatenate([pq.read_table(Path(path) / f, columns=["user_id"]).column(0).to_numpy(zero_copy_only=False)
                          for f in manifest["files"]])
    rng = np.random.default_rng(seed)
    reader = TopNReader(path)
    for uid in rng.choice(ids, 200):  # warm: imports, open files, page cache
        reader.get(str(uid))
    times, misses = [], 0
    for uid in rng.choice(ids, n):
        started = time.perf_counter()
        row = reader.get(str(uid))
        times.append(time.perf_counter() - started)
        misses += row is None or row["user_id"] != uid
    t = np.array(times) * 1e3
    return {"n": n, "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "max_ms": float(t.max()), "wrong_or_missing": misses}


def export_rate(path: str, out: Path) -> dict:
    """Bulk export (JSON lines for a key-value store) of the whole version: users/s and size."""
    from nightly_topn.lookup import TopNReader

    started = time.perf_counter()
    users = TopNReader(path).export(out)
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    out.unlink()
    return {"users": users, "seconds": seconds, "users_per_s": users / seconds, "mib": size / 2**20}


def identical_outputs(path_a: str, path_b: str) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nightly_topn.storage import as_path

    def read(path):
        files = json.loads((as_path(path) / "_manifest.json").read_text())["files"]
        return files, pa.concat_tables(pq.read_table(f"{path}/{f}") for f in files)

    (files_a, a), (files_b, b) = read(path_a), read(path_b)
    return files_a == files_b and a.equals(b)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="var/bench/ml20m")
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=0, help="users per GEMM (0: scoring.DEFAULT_BATCH)")
    parser.add_argument("--sweep", default="64,128,256,512,1024",
                        help="batch sizes for the kernel sweep ('' to skip), each on --sweep-users users")
    parser.add_argument("--sweep-users", type=int, default=32_768)
    parser.add_argument("--range-size", type=int, default=8192)
    parser.add_argument("--naive-sample", type=int, default=10_000,
                        help="users in the smaller naive run (the larger has twice as many)")
    parser.add_argument("--naive-mp-sample", type=int, default=20_000,
                        help="the same for the multi-process runner, whose run time varies more")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs per throughput (best kept)")
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--interactions", type=int, default=20_000_263)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--skip", default="", help="comma list of: implicit,naive,mp (multi-process runs),dask,"
                                                   "s3 (the root on a local S3 server)")
    parser.add_argument("--json", help="also write all figures to this JSON file")
    # internal: run one task in this process
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="kernel: score only the first LIMIT users")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--beam", action="append", default=[])
    parser.add_argument("--diversity-strength", type=float, default=0.0, help="kernel/pipeline: MMR strength")
    args = parser.parse_args(argv)
    if "://" not in args.root:
        args.root = str(Path(args.root).resolve())
    if not args.batch_size:
        from nightly_topn.scoring import DEFAULT_BATCH

        args.batch_size = DEFAULT_BATCH

    if args.task:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(TASKS[args.task](args), default=str))
        return 0

    import topn_data

    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    data = topn_data.build(args.root, users=args.users, items=args.items, interactions=args.interactions,
                           factors=args.factors)
    n_users = data["spec"]["users"]
    print(f"data: {n_users} users x {data['spec']['items']} items, {data['nnz']:,} interactions, "
          f"{args.factors} factors, top-{args.top_n} (root {args.root}; built in {data['seconds']} s)", flush=True)
    import shutil

    for old in (Path(args.root) / "topn", Path(args.root) / "naive_out"):  # previous runs' outputs
        shutil.rmtree(old, ignore_errors=True)
    r = {"data": data, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    # The machine is shared: each throughput is measured ``--repeat`` times, interleaved
    # (kernel, implicit, pipeline, pipeline-mp, kernel, ...), and the best run of each is kept,
    # so a burst of outside load hits every contender alike rather than one of them.
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        runs.setdefault("bound", []).append(run_task("bound", args))
        runs.setdefault("kernel", []).append(run_task("kernel", args))
        if "implicit" not in skip:
            runs.setdefault("implicit", []).append(run_task("implicit", args))
        runs.setdefault("pipeline", []).append(run_task("pipeline", args))
        if "mp" not in skip:
            runs.setdefault("pipeline_mp", []).append(run_task("pipeline", args, [f"--beam={f}" for f in MP_FLAGS]))
        if "dask" not in skip:
            first, second = dask_run(args)
            runs.setdefault("pipeline_dask_first", []).append(first)
            runs.setdefault("pipeline_dask", []).append(second)
    if "s3" not in skip:
        object_store_runs(args, runs)
        for key in ("s3_upload_seconds", "identical_local_vs_s3", "identical_local_vs_dask_s3"):
            r[key] = runs.pop(key)
    for key, results in runs.items():
        rate = (lambda x: x["square_gflops"]) if key == "bound" else (lambda x: x["users_per_s"])
        r[key] = {**max(results, key=rate), "all_runs": [round(rate(x), 1) for x in results],
                  "peak_rss_mib": max(x.get("peak_rss_mib", 0) for x in results)}
    if "pipeline_mp" in r:
        r["identical_single_vs_multi"] = identical_outputs(r["pipeline"]["path"], r["pipeline_mp"]["path"])
    if "pipeline_dask" in r:
        r["identical_single_vs_dask"] = identical_outputs(r["pipeline"]["path"], r["pipeline_dask"]["path"])
    if "naive" not in skip:
        r["naive"] = naive_rate(args, [], n_users, args.naive_sample)
        if "mp" not in skip:
            r["naive_mp"] = naive_rate(args, MP_FLAGS, n_users, args.naive_mp_sample)
    r["select"] = run_task("select", args)
    r["sweep"] = {int(b): run_task("kernel", args, ["--batch-size", b, "--limit", str(args.sweep_users)])["users_per_s"]
                  for b in filter(None, args.sweep.split(","))}
    r["lookup"] = lookup_latency(r["pipeline"]["path"], args.lookups)
    r["export"] = export_rate(r["pipeline"]["path"], Path(args.root) / "export.jsonl")
    r["load_avg_end"] = os.getloadavg()
    r["wall_seconds"] = time.perf_counter() - t0
    report(r, args)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str) + "\n")
    return 0


def report(r, args):
    b = r["bound"]
    flops_per_user = 2 * args.items * args.factors
    bound_ups = b["square_gflops"] * 1e9 / flops_per_user
    shaped_ups = b["shaped_gflops"] * 1e9 / flops_per_user
    imp = r.get("implicit", {}).get("users_per_s")
    rows = [
        ("machine bound: GEMM 2048^3 %.0f GFLOP/s / (2*items*factors)" % b["square_gflops"], bound_ups, None),
        ("GEMM at scoring shape (%dx%dx%d) %.0f GFLOP/s" % (args.batch_size, args.factors, args.items, b["shaped_gflops"]),
         shaped_ups, None),
        ("scoring kernel alone (TopNScorer, in memory)", r["kernel"]["users_per_s"], r["kernel"]["peak_rss_mib"]),
    ]
    if imp:
        rows.append(("implicit ALS batch recommend, all users (in memory)", imp, r["implicit"]["peak_rss_mib"]))
    rows.append(("pipeline end to end, DirectRunner (Parquet on disk)", r["pipeline"]["users_per_s"],
                 r["pipeline"]["peak_rss_mib"]))
    if "pipeline_mp" in r:
        rows.append(("pipeline end to end, DirectRunner multi_processing x2", r["pipeline_mp"]["users_per_s"],
                     r["pipeline_mp"]["peak_rss_mib"]))
    if "pipeline_dask" in r:
        rows.append(("pipeline end to end, Dask 2 workers x 1 thread, fresh cluster",
                     r["pipeline_dask_first"]["users_per_s"], max(r["pipeline_dask_first"]["worker_peak_rss_mib"])))
        rows.append(("pipeline end to end, Dask 2 workers x 1 thread, running cluster",
                     r["pipeline_dask"]["users_per_s"], max(r["pipeline_dask"]["worker_peak_rss_mib"])))
    if "pipeline_s3" in r:
        rows.append(("pipeline end to end, DirectRunner, root on S3 (local server)", r["pipeline_s3"]["users_per_s"],
                     r["pipeline_s3"]["peak_rss_mib"]))
        rows.append(("pipeline end to end, Dask 2 workers, root on S3, fresh cluster",
                     r["pipeline_dask_s3_first"]["users_per_s"], max(r["pipeline_dask_s3_first"]["worker_peak_rss_mib"])))
        rows.append(("pipeline end to end, Dask 2 workers, root on S3, running cluster",
                     r["pipeline_dask_s3"]["users_per_s"], max(r["pipeline_dask_s3"]["worker_peak_rss_mib"])))
    for key, label in (("naive", "naive 1 user/element DoFn, DirectRunner (extrapolated)"),
                       ("naive_mp", "naive 1 user/element DoFn, multi_processing x2 (extrap.)")):
        if key in r:
            rows.append((label + (" *" if r[key]["noise_dominated"] else ""), r[key]["users_per_s"], r[key]["peak_rss_mib"]))
    print()
    print(f"{'measurement':62s} {'users/s':>9s} {'x implicit':>10s} {'% bound':>8s} {'peak RSS':>9s}")
    print("-" * 102)
    for name, ups, rss in rows:
        ratio = f"{ups / imp:.2f}" if imp else "-"
        rss_s = f"{rss:.0f} MiB" if rss else "-"
        print(f"{name:62s} {ups:9.0f} {ratio:>10s} {100 * ups / bound_ups:7.1f}% {rss_s:>9s}")
    print(f"\ntop-{args.top_n} selection alone, 1 thread, {r['select']['batch_size']} masked real score rows x "
          f"{r['select']['items']} items (us/user): " + ", ".join(f"{k} {v:.1f}" for k, v in r["select"]["us_per_user"].items()))
    if r["sweep"]:
        print(f"kernel batch-size sweep ({args.sweep_users} users, users/s): "
              + ", ".join(f"{b}: {v:.0f}" for b, v in r["sweep"].items()) + f"  (default {args.batch_size})")
    lk = r["lookup"]
    print(f"{'lookup, warm TopNReader, %d random users' % lk['n']:62s} p50 {lk['p50_ms']:.2f} ms  p99 {lk['p99_ms']:.2f} ms"
          f"  max {lk['max_ms']:.1f} ms  wrong/missing {lk['wrong_or_missing']}")
    ex = r["export"]
    print(f"{'bulk export to JSON lines (nightly-topn export), %d users' % ex['users']:62s} {ex['users_per_s']:9.0f} users/s"
          f"  {ex['mib']:.0f} MiB")
    print("all runs (users/s; GFLOP/s for the bound): " + ", ".join(
        f"{k} {r[k]['all_runs']}" for k in ("bound", "kernel", "implicit", "pipeline", "pipeline_mp", "pipeline_dask_first",
                                      "pipeline_dask")
        if k in r))
    for key in ("naive", "naive_mp"):
        if key in r:
            n = r[key]
            print(f"{key} runs (seconds by sample size): {n['sample_seconds']}; fixed {n['fixed_seconds']:.1f} s, marginal "
                  f"{n['marginal_users_per_s']:.0f} users/s" + ("  (* noise-dominated: no fixed cost assumed)" if n["noise_dominated"] else ""))
    if "identical_single_vs_multi" in r:
        print(f"single-process vs multi-process output identical: {r['identical_single_vs_multi']}")
    if "pipeline_dask" in r:
        print(f"single-process vs Dask output identical: {r['identical_single_vs_dask']}; Dask worker peak RSS "
              f"{r['pipeline_dask']['worker_peak_rss_mib']} MiB, launching job {r['pipeline_dask']['peak_rss_mib']:.0f} MiB")
    if "pipeline_s3" in r:
        print(f"root on S3 (features + models uploaded in {r['s3_upload_seconds']} s): in-process "
              f"{r['pipeline_s3']['users_per_s'] / r['pipeline']['users_per_s']:.2f}x the local root's users/s, Dask on S3 "
              f"{r['pipeline_dask_s3']['users_per_s'] / r['pipeline']['users_per_s']:.2f}x; output identical to the local "
              f"root's: in-process {r['identical_local_vs_s3']}, Dask {r['identical_local_vs_dask_s3']}")
    print(f"kernel agreement with model.recommend on 200 users: {r['kernel']['agreement_with_model_recommend']:.3f}")
    print(f"load average start {r['load_avg_start'][0]:.1f}, end {r['load_avg_end'][0]:.1f} on {r['cpus']} CPUs; "
          f"benchmark wall {r['wall_seconds']:.0f} s")
    print("\ntargets (ratios measured in this run):")
    pipe = r["pipeline"]["users_per_s"]
    checks = []
    if imp:
        checks.append(("pipeline e2e (DirectRunner) >= 1.3x implicit", pipe / imp, 1.3))
        if "pipeline_mp" in r:
            checks.append(("pipeline e2e (multi_processing) >= 1.3x implicit", r["pipeline_mp"]["users_per_s"] / imp, 1.3))
        checks.append(("scoring kernel >= 1.8x implicit", r["kernel"]["users_per_s"] / imp, 1.8))
    if "naive" in r:
        checks.append(("pipeline >= 6x naive DoFn, DirectRunner", pipe / r["naive"]["users_per_s"], 6.0))
    if "naive_mp" in r and "pipeline_mp" in r:
        checks.append(("pipeline >= 6x naive DoFn, multi_processing",
                       r["pipeline_mp"]["users_per_s"] / r["naive_mp"]["users_per_s"], 6.0))
    if "pipeline_dask" in r and "pipeline_mp" in r:
        for key, label in (("pipeline_dask", "running"), ("pipeline_dask_first", "fresh")):
            checks.append((f"Dask 2 workers ({label} cluster) >= 0.8x multi_processing",
                           r[key]["users_per_s"] / r["pipeline_mp"]["users_per_s"], 0.8))
    for name, value, target in checks:
        print(f"  {name:52s} {value:6.2f}x  {'PASS' if value >= target else 'FAIL'}")
    peak = max(r["pipeline"]["peak_rss_mib"], r.get("pipeline_mp", {}).get("peak_rss_mib", 0))
    print(f"  {'peak RSS of the top-N step <= 2048 MiB':52s} {peak:6.0f} MiB  {'PASS' if peak <= 2048 else 'FAIL'}")
    print(f"  {'lookup p99 <= 20 ms':52s} {lk['p99_ms']:6.2f} ms  {'PASS' if lk['p99_ms'] <= 20 else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
