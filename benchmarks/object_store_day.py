"""One whole day on a local root and on an S3 API, job by job: what the object store costs.

    . .venv/bin/activate && python benchmarks/object_store_day.py [--source movielens:../shared/datasets/ml-100k \\
        --date 1998-04-22 --window 400]        # default: the embedded generator, 2024-03-01

Both runs are ``nightly-topn run`` in a fresh process with the same Params (ALS, no search, so
the comparison is storage, not model choice); the S3 run's root is ``s3://nightly-topn/day`` on
moto's server (``tools.local_s3``, 127.0.0.1, through ``AWS_*``), the local one a temporary
directory. Per job: the seconds each run recorded in its own ``reports/dt=D/timings.json``;
then the published lists of the two roots compared row for row, and the objects the S3 run wrote.
Run S3 first, then local, then S3 again, and keep each side's faster run (a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tools/ is not installed


def run_day(root: str, args, env: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run(["nightly-topn", "run", "--root", root, "--date", args.date, "--source", args.source,
                           "--train-window-days", str(args.window), "--model", "als",
                           "--tuning-budget-seconds", "0"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run on {root} failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"wall": time.perf_counter() - started, "root": root}


def published_rows(root: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nightly_topn.storage import Storage

    store = Storage.at(root)
    version = store.inside(store.published()["path"])
    files = json.loads((version / "_manifest.json").read_text())["files"]
    return pa.concat_tables(pq.read_table(f"{version}/{name}") for name in files).sort_by("user_id")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="generated")
    parser.add_argument("--date", default="2024-03-01")
    parser.add_argument("--window", type=int, default=60)
    args = parser.parse_args(argv)

    from nightly_topn import timings
    from nightly_topn.storage import Storage
    from tools.local_s3 import LocalS3

    with LocalS3() as s3, tempfile.TemporaryDirectory(prefix="nightly-topn-local-day-") as local_dir:
        env = {**os.environ, **s3.env()}
        os.environ.update(s3.env())
        runs = {"s3": [], "local": []}
        for side, root in (("s3", s3.url("day")), ("local", f"{local_dir}/data"), ("s3", s3.url("day2"))):
            runs[side].append(run_day(root, args, env))
        best = {side: min(results, key=lambda r: r["wall"]) for side, results in runs.items()}
        jobs = {side: timings.read(Storage.at(best[side]["root"]), args.date) for side in best}
        print(f"{args.source}, {args.date}, window {args.window} days, ALS; seconds as each run recorded them")
        print(f"{'job':20s} {'local root':>11s} {'S3 root':>9s} {'ratio':>6s}")
        from nightly_topn.jobs import steps

        for job in [name for name, _ in steps() if name in jobs["local"]]:
            a, b = jobs["local"][job]["seconds"], jobs["s3"].get(job, {}).get("seconds", float("nan"))
            print(f"{job:20s} {a:10.2f}s {b:8.2f}s {b / a if a else float('nan'):6.2f}")
        a, b = best["local"]["wall"], best["s3"]["wall"]
        print(f"{'whole run (wall)':20s} {a:10.1f}s {b:8.1f}s {b / a:6.2f}   (all runs: local "
              f"{[round(r['wall'], 1) for r in runs['local']]}, S3 {[round(r['wall'], 1) for r in runs['s3']]})")
        same = published_rows(best["s3"]["root"]).equals(published_rows(best["local"]["root"]))
        keys = s3.keys(best["s3"]["root"].split("/", 3)[3] + "/")
        print(f"published lists identical: {same}; the S3 run wrote {len(keys)} objects")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
