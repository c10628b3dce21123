"""Binary vs weighted inputs: NDCG@K on the holdout per model and for the automatic choice.

    python benchmarks/confidence_weights.py                      # embedded generator + MovieLens 100K
    python benchmarks/confidence_weights.py --datasets generated --budget 60 --protocol temporal
    python benchmarks/confidence_weights.py --datasets movielens:../shared/datasets/ml-100k

For each dataset the pairs and their confidences are what preprocess makes of the events (the
embedded generator: 60 days through ``ingest`` → ``validate`` → ``preprocess`` into a temporary
root; MovieLens: its ratings as events, weight = stars), then ``models_ml100k.run_protocol``
splits them, tunes every model on a validation split carved from train, refits on train and
scores the holdout, twice: on binary inputs (every pair is 1, the ``confidence`` knob fixed to
binary) and on weighted inputs (the confidence, the transform searched). Same split, same
budget, same seed for both.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: benchmarks/ is not installed
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from benchmarks.models_ml100k import load, run_protocol  # noqa: E402

ML100K = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "ml-100k"


def generated_pairs(date: str = "2024-03-01", window: int = 60, source: str = "generated"):
    """The arrays ``run_protocol`` takes, from the pipeline's own preprocess of ``source``."""
    import numpy as np

    from nightly_topn.config import RunParams
    from nightly_topn.features import Features
    from nightly_topn.jobs import run_day
    from nightly_topn.storage import Storage

    root = tempfile.mkdtemp(prefix="confidence_weights_")
    for name, _ in run_day(date, root=root, source=source, params=RunParams(train_window_days=window)):
        if name == "preprocess":
            break
    f = Features.load(Storage.at(root).partition("features", date))
    return f.users, f.items, f.first_time, f.shape, None, np.asarray(f.confidence, dtype=np.float64)


def dataset(spec: str):
    if spec == "generated":
        return generated_pairs()
    if spec.startswith("movielens:"):
        return load(spec.split(":", 1)[1])
    raise SystemExit(f"unknown dataset {spec!r}: generated or movielens:PATH")


def main(argv=None) -> int:
    from nightly_topn.tuning import DEFAULT_CANDIDATES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["generated", f"movielens:{ML100K}"])
    parser.add_argument("--protocol", default="random", choices=["random", "temporal"])
    parser.add_argument("--budget", type=float, default=60.0, help="tuning seconds per input kind and dataset")
    parser.add_argument("--models", nargs="+", default=[m for m in DEFAULT_CANDIDATES if m != "horizon"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="also write every result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = {}
    for spec in args.datasets:
        data = dataset(spec)
        rows = {inputs: run_protocol(args.protocol, *data, budget=args.budget, models=args.models, k=args.k,
                                     seed=args.seed, inputs=inputs) for inputs in ("binary", "weighted")}
        out[spec] = rows
        name = spec.split(":", 1)[0]
        print(f"\n{name} ({args.protocol}, {data[3][0]} users x {data[3][1]} items, budget {args.budget:.0f}s "
              f"per input kind), NDCG@{args.k} on the holdout:")
        print(f"  {'model':10s} {'binary':>8s} {'weighted':>9s}  chosen transform")
        for model in args.models:
            b, w = (rows[i]["models"][model] for i in ("binary", "weighted"))
            print(f"  {model:10s} {b['test']['ndcg']:8.4f} {w['test']['ndcg']:9.4f}  "
                  f"{w['params'].get('confidence', 'binary (fixed)')}")
        b, w = rows["binary"], rows["weighted"]
        print(f"  {'auto':10s} {b['models'][b['auto']]['test']['ndcg']:8.4f} "
              f"{w['models'][w['auto']]['test']['ndcg']:9.4f}  binary: {b['auto']}, weighted: {w['auto']} "
              f"({w['models'][w['auto']]['params'].get('confidence', 'binary')})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
