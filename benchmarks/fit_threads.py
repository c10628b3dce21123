"""Threads per training step: each model's fit on 1 and on all cores, alone and with a second fit
running beside it (what a backfill with two active runs does), on one features partition.

    . .venv/bin/activate && python benchmarks/nightly_scale.py --events 2e6     # makes the features
    python benchmarks/fit_threads.py --features var/bench/scale/2000000/root/features/dt=2024-02-29

Each fit runs in a fresh process (``--one MODEL THREADS``) with ``$NIGHTLY_TOPN_FIT_THREADS`` set,
so thread pools never leak between measurements; "beside" starts two identical processes at once
and reports the slower. ``--users`` fits on a seeded sample of users (the search's shape).
What this chose is ``models.base.fit_threads``: every model whose result is the same at any
thread count (ALS: each user's and item's solve is independent) uses all cores; BPR (Hogwild
updates race) and the torch models (reductions split by thread) give a different model at a
different count, so a deployment picks their count once (``$NIGHTLY_TOPN_TORCH_THREADS``).

Measured here (3,000 users of the 2M-event shape, 2026-12-04): ALS 2.0 -> 1.7 s on 2 cores;
multvae 44.3 -> 26.5 s alone but 44.9 (1 thread each) vs 77.7 s (2 each) beside a second fit;
horizon 40.6 -> 24.9 s alone, 42.9 vs 74.5 s beside: hence one torch thread by default.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PARAMS = {"als": {"iterations": 15, "factors": 64}, "horizon": {"epochs": 2}, "multvae": {"epochs": 5}}


def one(features: str, model: str, users: int) -> dict:
    import numpy as np

    from nightly_topn import splits
    from nightly_topn.features import Features
    from nightly_topn.models import MODELS

    pairs = splits.PairTable.of(Features.load(features))
    X, times = pairs.matrix(), pairs.times()
    if 0 < users < X.shape[0]:
        rows = np.sort(np.random.default_rng(0).choice(X.shape[0], users, replace=False))
        X, times = X[rows], times[rows]
    started = time.perf_counter()
    MODELS[model](**PARAMS.get(model, {})).fit(X, times)
    return {"seconds": time.perf_counter() - started, "users": X.shape[0], "pairs": int(X.nnz)}


def measure(args, model: str, threads: int, copies: int) -> float:
    env = {**os.environ, "NIGHTLY_TOPN_FIT_THREADS": str(threads), "NIGHTLY_TOPN_TORCH_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--features", args.features, "--users", str(args.users), "--one", model]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return max(r["seconds"] for r in results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="a features partition (features/dt=D)")
    parser.add_argument("--models", default="als,horizon,multvae")
    parser.add_argument("--users", type=int, default=20_000, help="seeded user sample (0 = all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.features, args.one, args.users)))
        return 0
    from nightly_topn.scoring import available_cores

    cores = available_cores()
    print(f"fit seconds, {args.users or 'all'} users, {cores} cores; 'beside' = two fits at once (the slower)")
    print(f"{'model':8s} {'1 alone':>9s} {f'{cores} alone':>9s} {'speed-up':>8s} {'1 beside':>9s} "
          f"{f'{cores} beside':>9s}")
    for model in args.models.split(","):
        a1, an = measure(args, model, 1, 1), measure(args, model, cores, 1)
        b1, bn = measure(args, model, 1, 2), measure(args, model, cores, 2)
        print(f"{model:8s} {a1:9.1f} {an:9.1f} {a1 / an:7.2f}x {b1:9.1f} {bn:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
