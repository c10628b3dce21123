"""Measure what the three Great Expectations gates add to a daily run.

Runs one day's jobs in order (as ``nightly-topn run`` does, in one process) into a fresh root
and prints each job's wall time, the GX import (paid once per process, by the first gate) and
the gates' share::

    python benchmarks/gates_cost.py --date 2024-03-01                                 # embedded default data
    python benchmarks/gates_cost.py --date 1998-03-01 --source movielens:../shared/datasets/ml-100k
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
GATES = ("validate", "validate_features", "validate_topn")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", required=True)
    parser.add_argument("--source", default="generated")
    parser.add_argument("--root", help="storage root (default: a new temporary folder)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a RunParams knob, e.g. --param model=als (repeatable)")
    parser.add_argument("--skip", nargs="*", default=[], help="jobs to leave out (e.g. one being repaired)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from nightly_topn.config import RunParams
    from nightly_topn.jobs import steps

    root = args.root or tempfile.mkdtemp(prefix="gates_cost_")
    knobs = dict(p.split("=", 1) for p in args.param)
    types = {f: type(getattr(RunParams(), f)) for f in RunParams.__dataclass_fields__}
    params = RunParams.from_mapping({k: (v.lower() in ("1", "true") if types[k] is bool else types[k](v))
                                     for k, v in knobs.items()})
    timings, details = {}, {}
    for name, job in steps():
        if name in args.skip:
            continue
        kwargs = {"root": root, "params": params}
        if name == "ingest":
            kwargs["source"] = args.source
        if name == "validate":  # the first gate pays the GX import; time it on its own
            started = time.perf_counter()
            from nightly_topn.quality import import_gx

            import_gx()
            timings["gx_import"] = time.perf_counter() - started
        started = time.perf_counter()
        result = job(args.date, **kwargs)
        timings[name] = time.perf_counter() - started
        if name in GATES:
            details[name] = {k: result.get(k) for k in ("outcome", "rows", "warnings", "seconds")}
    gates = sum(timings[g] for g in GATES if g in timings)
    total = sum(timings.values())
    report = {
        "source": args.source, "date": args.date, "root": root,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "gates_seconds": round(gates, 2), "gates_plus_import_seconds": round(gates + timings.get("gx_import", 0), 2),
        "run_seconds": round(total, 2), "gates": details,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
