"""Every model and the automatic choice on MovieLens 100K, protocols R and T, against the targets.

    python benchmarks/models_ml100k.py [--data /work/shared/datasets/ml-100k] [--budget 300]
        [--protocols random temporal] [--models ...] [--json out.json]

Per protocol: split (R: per-user 20 %, seed 42; T: cutoff at the 80th percentile of times),
carve a validation split from train the same way, tune every model within its share of
``--budget`` seconds on validation NDCG@10, refit the chosen configuration on all of train,
and score the test split. "auto" is the pipeline's choice on *validation* only (best NDCG, with
the one-standard-error rule: the simplest candidate within one SE of the best) — what the
nightly pipeline would publish, with no per-dataset hand-tuning.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from nightly_topn import splits
from nightly_topn.config import event_weights
from nightly_topn.evaluation import evaluate_model
from nightly_topn.models import MODELS
from nightly_topn.sources.movielens import load_movielens
from nightly_topn.tuning import DEFAULT_CANDIDATES, choose, tune_all

TARGETS = {  # from issue #4: carefully tuned baselines (validation-selected, refit, K=10)
    ("random", "ndcg"): {"popularity": 0.222, "als": 0.416, "itemknn": 0.381, "ease": 0.440, "puresvd": 0.429, "best": 0.440},
    ("random", "recall_capped"): {"popularity": 0.216, "als": 0.401, "itemknn": 0.366, "ease": 0.419, "puresvd": 0.409, "best": 0.419},
    ("temporal", "ndcg"): {"popularity": 0.149, "als": 0.178, "itemknn": 0.141, "ease": 0.175, "puresvd": 0.182, "best": 0.182},
}


def load(path: str):
    events, _, items = load_movielens(path)
    user_ids, users = np.unique(events.column("user_id").to_numpy(zero_copy_only=False), return_inverse=True)
    item_ids, items_idx = np.unique(events.column("item_id").to_numpy(zero_copy_only=False), return_inverse=True)
    times = pc.cast(events.column("event_time"), "int64").to_numpy()
    categories = None
    if items is not None:
        lookup = {i: c or [] for i, c in zip(items.column("item_id").to_pylist(), items.column("categories").to_pylist())}
        names = sorted({c for cs in lookup.values() for c in cs})
        col = {c: j for j, c in enumerate(names)}
        rows, cols = [], []
        for r, item in enumerate(item_ids):
            for c in lookup.get(item, []):
                rows.append(r)
                cols.append(col[c])
        categories = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(item_ids), len(names)))
    weights = event_weights()
    confidence = (pc.cast(events.column("weight"), "float64").to_numpy()
                  * np.array([weights[t] for t in events.column("event_type").to_pylist()]))
    return users, items_idx, times, (len(user_ids), len(item_ids)), categories, confidence


def run_protocol(protocol, users, items, times, shape, categories, confidence, *, budget, models, k, seed,
                 inputs="weighted"):
    """``inputs="weighted"``: models fit on each pair's confidence (event weights, as preprocess
    makes them) and search their ``confidence`` transform; ``"binary"``: every pair is 1 and the
    transform is fixed to binary (what every model saw before confidences reached them)."""
    if inputs not in ("weighted", "binary"):
        raise ValueError(f"inputs must be 'weighted' or 'binary', got {inputs!r}")
    split = splits.split(protocol, users, items, times, seed=seed)
    test = splits.binary_matrix(users[split.relevant], items[split.relevant], shape)
    fit_rows, val_rows = splits.validation_split(protocol, users, items, times, split.train, seed=seed)
    val = splits.binary_matrix(users[val_rows], items[val_rows], shape)

    def inputs_of(mask):  # what the models fit on and score from
        if inputs == "binary":
            return splits.binary_matrix(users[mask], items[mask], shape)
        m = sp.csr_matrix((confidence[mask].astype(np.float32), (users[mask], items[mask])), shape=shape)
        m.sum_duplicates()
        return m

    train, fit = inputs_of(split.train), inputs_of(fit_rows)

    def times_of(mask):  # latest event time (s) per pair, for models that use order/recency
        t = sp.csr_matrix((times[mask] / 1e6, (users[mask], items[mask])), shape=shape)
        t.sum_duplicates()
        return t

    started = time.perf_counter()
    fixed = {"confidence": "binary"} if inputs == "binary" else {}
    tuned = tune_all(models, fit, val, times=times_of(fit_rows), k=k, budget_seconds=budget, seed=seed, fixed=fixed)
    tuning_seconds = time.perf_counter() - started
    rows = {}
    for name, result in tuned.items():
        model = MODELS[name](**result.best_params).fit(train, times_of(split.train))
        metrics = evaluate_model(model, train, test, k, item_categories=categories)
        rows[name] = {"params": result.best_params, "validation_ndcg": result.best_metric,
                      "validation_se": result.summary().get("best_metric_se"),
                      "trials": len(result.trials), "exhausted": result.exhausted, "test": metrics}
    auto = choose(tuned)
    return {"protocol": protocol, "inputs": inputs, "split": split.info, "auto": auto, "models": rows,
            "tuning_seconds": round(tuning_seconds, 1), "budget_seconds": budget}


def print_table(results, k):
    names = list(next(iter(results.values()))["models"])
    print(f"\nMovieLens 100K, K={k}: project (target)")
    for (protocol, metric), target in TARGETS.items():
        if protocol not in results:
            continue
        res = results[protocol]
        cells = []
        for name in names:
            value = res["models"][name]["test"][metric]
            cells.append(f"{name}={value:.3f}" + (f" ({target[name]:.3f})" if name in target else ""))
        auto = res["models"][res["auto"]]["test"][metric]
        best = target["best"]
        verdict = ("OK" if auto >= best - 0.005 else "BELOW") if protocol == "random" else \
                  ("OK" if auto > res["models"]["popularity"]["test"][metric] else "BELOW popularity")
        print(f"  {protocol:8s} {metric:13s} " + "  ".join(cells) +
              f"  | auto[{res['auto']}]={auto:.3f} (best {best:.3f}) {verdict}")
    for protocol, res in results.items():
        print(f"  {protocol}: tuning {res['tuning_seconds']}s of budget {res['budget_seconds']}s; split {res['split']}")
        for name, row in res["models"].items():
            print(f"    {name:10s} val_ndcg={row['validation_ndcg']:.4f}±{row['validation_se'] or 0:.4f} trials={row['trials']:3d}"
                  f"{' (all)' if row['exhausted'] else ''} params={row['params']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/datasets/ml-100k")
    parser.add_argument("--budget", type=float, default=300.0, help="tuning budget in seconds per protocol")
    parser.add_argument("--protocols", nargs="+", default=["random", "temporal"], choices=splits.PROTOCOLS)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_CANDIDATES), choices=sorted(MODELS))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="also write the full results (params, trials, all metrics) here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    data = load(args.data)
    results = {}
    for protocol in args.protocols:
        results[protocol] = run_protocol(protocol, *data, budget=args.budget, models=args.models, k=args.k, seed=args.seed)
    print_table(results, args.k)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
