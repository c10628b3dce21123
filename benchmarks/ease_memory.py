"""EASE's real peak memory against the estimate its refusal threshold uses, by catalogue size.

    . .venv/bin/activate && python benchmarks/ease_memory.py                  # ~2 min on 2 cores
    python benchmarks/ease_memory.py --items 27000 --users 140000             # the ML-20M catalogue

Each size fits ``EASE`` in a fresh process on a synthetic implicit matrix (users with 20 +
lognormal interactions over Zipf-like item popularity, like ``benchmarks/topn_data.py``) and
prints: the estimate (``models.neighbours.ease_peak_bytes``), the measured peak (the process's
peak RSS, ``ru_maxrss``, minus its RSS just before ``fit``), their ratio, the float type the fit
used, and the fit's wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def fit_once(users: int, items: int, per_user: float, seed: int = 0) -> dict:
    import resource

    import numpy as np
    import psutil
    import scipy.sparse as sp

    from nightly_topn.models import neighbours

    rng = np.random.default_rng(seed)
    counts = np.minimum(items, (per_user * rng.lognormal(0.0, 0.8, users) / np.exp(0.32)).astype(int) + 5)
    popularity = 1.0 / np.arange(1, items + 1)
    popularity /= popularity.sum()
    rows = np.repeat(np.arange(users), counts)
    cols = rng.choice(items, len(rows), p=popularity)
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
    X.sum_duplicates()
    X.data[:] = 1.0
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    model = neighbours.EASE(max_dense_gb=1e9).fit(X)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    dim = min(users, items)
    return {"users": users, "items": items, "nnz": int(X.nnz), "form": "dual" if model.dual else "primal",
            "dtype": "float64" if dim * dim <= neighbours.FLOAT64_MAX_ELEMENTS else "float32",
            "estimate_gb": neighbours.ease_peak_bytes(users, items) / 1e9,
            "measured_gb": (peak - before) / 1e9, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="3000,6000,12000", help="comma list of catalogue sizes")
    parser.add_argument("--users", type=int, default=0, help="users (default: 5 × items, so the primal form)")
    parser.add_argument("--per-user", type=float, default=60.0, help="mean interactions per user")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.task:
        users, items = map(int, args.task.split(","))
        print(json.dumps(fit_once(users, items, args.per_user)))
        return 0
    print(f"{'users':>8s} {'items':>7s} {'form':>6s} {'dtype':>7s} {'estimate GB':>12s} {'measured GB':>12s} "
          f"{'measured/estimate':>18s} {'fit s':>7s}")
    for items in map(int, args.items.split(",")):
        users = args.users or 5 * items
        out = subprocess.run([sys.executable, __file__, "--task", f"{users},{items}", "--per-user", str(args.per_user)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['users']:8d} {r['items']:7d} {r['form']:>6s} {r['dtype']:>7s} {r['estimate_gb']:12.2f} "
              f"{r['measured_gb']:12.2f} {r['measured_gb'] / r['estimate_gb']:18.2f} {r['seconds']:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
