"""Does the train job's search keep ``tuning_budget_seconds``? The real jobs, one date, one run.

    . .venv/bin/activate && python benchmarks/search_budget.py                 # MovieLens 100K, 30 s and 120 s
    python benchmarks/search_budget.py --budgets 30,120,600 --source landing:DIR --date D --window 60

The date's raw gate and preprocess run once into ``--root``; then the train job runs once per
budget (default Params otherwise: ``model=auto``, every default candidate) and the benchmark
prints, per budget: the search's wall time (``tuning_seconds``, recorded by the job: validation
split, every candidate's trials) against the budget, each candidate's share, trials, trials
stopped at the budget and seconds, and the refits after the search (their own time).
Target: search ≤ 1.1 × budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
ML100K = PROJECT.parent / "shared" / "datasets" / "ml-100k"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=f"movielens:{ML100K}")
    parser.add_argument("--date", default="1998-04-22")
    parser.add_argument("--window", type=int, default=400, help="train_window_days")
    parser.add_argument("--budgets", default="30,120")
    parser.add_argument("--root", default="var/bench/search_budget")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)
    from nightly_topn.config import RunParams
    from nightly_topn.jobs import run_job
    from nightly_topn.registry import read_run
    from nightly_topn.storage import Storage

    root = Path(args.root).resolve()
    base = {"train_window_days": args.window}
    started = time.perf_counter()
    for name in ("ingest", "validate", "preprocess", "validate_features"):
        run_job(name, args.date, root=root, params=RunParams.from_mapping(base),
                **({"source": args.source} if name == "ingest" else {}))
    print(f"{args.source} {args.date}, window {args.window} days: features in {time.perf_counter() - started:.0f} s",
          flush=True)
    out = []
    for budget in [float(b) for b in args.budgets.split(",") if b]:
        params = RunParams.from_mapping({**base, "tuning_budget_seconds": budget})
        t0 = time.perf_counter()
        info = run_job("train", args.date, root=root, params=params)
        wall = time.perf_counter() - t0
        run = read_run(Storage.at(root), args.date)
        row = {"budget": budget, "search_seconds": run["tuning_seconds"], "ratio": run["tuning_seconds"] / budget,
               "train_job_seconds": round(wall, 1), "winner": info["model"],
               "refit_seconds": round(sum(info["fit_seconds"].values()), 1), "fit_seconds": info["fit_seconds"],
               "candidates": {n: {k: c[k] for k in ("budget_seconds", "seconds", "trials", "exhausted")}
                              | {"stopped": sum(1 for t in c["trial_log"] if t.get("stopped"))}
                              for n, c in run["candidates"].items()},
               "left_out": (run.get("selection") or {}).get("excluded", {}),
               "search_sample": (run.get("selection") or {}).get("search_sample")}
        out.append(row)
        print(f"\nbudget {budget:.0f} s: search {row['search_seconds']:.1f} s = {row['ratio']:.3f} x budget "
              f"({'PASS' if row['ratio'] <= 1.1 else 'FAIL'} <= 1.1); winner {row['winner']}; refits after the search "
              f"{row['refit_seconds']:.1f} s; train job {row['train_job_seconds']:.1f} s")
        print(f"  {'candidate':10s} {'share s':>8s} {'used s':>8s} {'trials':>7s} {'stopped':>8s} {'grid done':>9s}")
        for name, c in row["candidates"].items():
            print(f"  {name:10s} {c['budget_seconds']:8.1f} {c['seconds']:8.1f} {c['trials']:7d} {c['stopped']:8d} "
                  f"{str(c['exhausted']):>9s}")
        for name, why in row["left_out"].items():
            print(f"  {name:10s} left out: {why}")
        if row["search_sample"]:
            print(f"  search on {row['search_sample']['users']:,} of {row['search_sample']['of_users']:,} users")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
