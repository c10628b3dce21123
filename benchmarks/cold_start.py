"""Cold start on the embedded generator: how far new items reach, what they cost, whether they land right.

    python benchmarks/cold_start.py                          # 2024-03-01, 30-day window, ALS
    python benchmarks/cold_start.py --date 2024-03-10 --window 60 --hidden 100 --repeats 3

Prints, for one date run through the jobs (ingest → … → topn, ALS with its default parameters so
the run stays short):

* new items: what preprocess found (``new_items.parquet``) and how far they reach, in the
  evaluation (holdout users' top-K) and in the published lists (the top-N manifest);
* the top-N step's time with and without new items (the job, Beam included, and the scoring
  kernel alone over every user), alternating runs, medians;
* a held-out check: a sample of warm items with future (holdout) users is hidden from training
  (their columns removed, the model refit), placed back as new items through their attribute
  neighbours, and recall@K of their true future users (share of the hidden items' holdout pairs
  whose item reaches that user's top-K) is compared with random placement: random warm
  neighbours (same count, equal weights, 5 seeds) and a uniformly random rank (K / items); the
  list slots the hidden items take and the share of those that hit tell whether they are
  placed well or just placed everywhere;
* the new-user segment rule (segment popularity blended into the lists of users with fewer than
  ``NEW_USER_MAX_HISTORY`` training interactions, by age band × gender × occupation) against the
  model alone, on the holdout: the rule is only worth shipping if it wins here.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: benchmarks/ is not installed
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def run_jobs(date: str, root: str, params) -> dict:
    from nightly_topn.jobs import run_day

    results = {}
    for name, result in run_day(date, root=root, params=params):
        results[name] = result
        if name == "topn":
            break
    return results


def topn_seconds(date, root, params, features_dir: Path, repeats: int) -> dict:
    """The top-N job's wall time (its manifest's ``seconds``) with and without ``new_items.parquet``."""
    import json

    from nightly_topn.jobs.topn import topn

    path = features_dir / "new_items.parquet"
    aside = features_dir.parent / "new_items.parquet.aside"
    times = {"with": [], "without": []}
    for _ in range(repeats):
        for case in ("with", "without"):
            if case == "without":
                shutil.move(path, aside)
            try:
                out = topn(date, root=root, params=params)
            finally:
                if case == "without":
                    shutil.move(aside, path)
            times[case].append(json.loads((Path(out["path"]) / "_manifest.json").read_text())["seconds"])
    return {case: statistics.median(v) for case, v in times.items()}


def kernel_seconds(model, history, new, n: int, repeats: int) -> dict:
    """``TopNScorer.recommend`` over every user, without and with the new items' columns."""
    from nightly_topn.scoring import TopNScorer

    users = np.arange(history.shape[0])
    wide = new.history(history, users)
    out = {"without": [], "with": []}
    for _ in range(repeats):
        for case in ("without", "with"):
            scorer = TopNScorer(model, n) if case == "without" else TopNScorer(model, n, cold_weights=new.weights)
            start = time.perf_counter()
            scorer.recommend(users, history if case == "without" else wide)
            out[case].append(time.perf_counter() - start)
    return {case: statistics.median(v) for case, v in out.items()}


def held_out(features, attrs, k: int, n_hidden: int, seed: int, m: int, factors: int) -> dict:
    """Hide ``n_hidden`` warm items with holdout users, refit ALS without them, score them as new."""
    from nightly_topn import cold_start
    from nightly_topn.models import ALS
    from nightly_topn.scoring import TopNScorer
    from nightly_topn.splits import PairTable, pipeline_split

    pairs = PairTable.of(features)
    split = pipeline_split(pairs, "temporal")
    train, holdout = pairs.matrix(split.train), pairs.relevance(split.relevant)
    rng = np.random.default_rng(seed)
    with_future = np.flatnonzero(np.asarray(holdout.sum(axis=0)).ravel() > 0)
    hidden = np.sort(rng.choice(with_future, min(n_hidden, len(with_future)), replace=False))
    kept = np.setdiff1d(np.arange(train.shape[1]), hidden)
    model = ALS(factors=factors).fit(train[:, kept].tocsr())
    order = np.concatenate([kept, hidden])  # scorer index space: kept warm items, then the hidden ones
    vectors = cold_start.attribute_matrix(cold_start.rows_of(attrs, features.item_ids[order]))
    popularity = np.asarray((train[:, kept] > 0).sum(axis=0)).ravel()
    indptr, nb, w = cold_start.neighbours(vectors[len(kept):], vectors[: len(kept)], m, prior=popularity)

    def weights(indptr, nb, w):
        return sp.csr_matrix(sp.csr_matrix((w, nb, indptr), shape=(len(hidden), len(kept))).T)

    future = holdout[:, hidden].tocsr()
    users = np.flatnonzero(np.diff(future.indptr) > 0)
    history = train[:, order][users].tocsr()  # hidden items' train pairs: seen, masked

    def placed(w_matrix) -> dict:
        idx, _ = TopNScorer(model, k, cold_weights=w_matrix).recommend(users, history)
        got = np.zeros(len(users), dtype=np.int64)
        for r, row in enumerate(idx):  # per user: hidden items in the list that the user took later
            cold = row[row >= len(kept)] - len(kept)
            got[r] = np.isin(cold, future[users[r]].indices).sum()
        shows = int((idx >= len(kept)).sum())
        return {"recall": float(got.sum() / future.nnz), "slots": shows,
                "precision": float(got.sum() / shows) if shows else 0.0}

    def recall(w_matrix) -> float:
        return placed(w_matrix)["recall"]

    has = np.diff(indptr) > 0
    random = []
    for s in range(5):
        r = np.random.default_rng(seed + 1 + s)
        counts = np.where(has, np.diff(indptr), m)
        rand_ptr = np.concatenate([[0], np.cumsum(counts)])
        rand_nb = np.concatenate([r.choice(len(kept), c, replace=False) for c in counts]).astype(np.int32)
        random.append(recall(weights(rand_ptr, rand_nb, np.repeat(1.0 / counts, counts).astype(np.float32))))
    ours = placed(weights(indptr, nb, w))
    return {"hidden_items": int(len(hidden)), "with_neighbours": int(has.sum()), "future_pairs": int(future.nnz),
            "users": int(len(users)), "k": k, "recall_cold_start": ours["recall"],
            "list_slots_taken": ours["slots"], "precision_of_those_slots": ours["precision"],
            "recall_random_neighbours": float(np.mean(random)), "recall_random_neighbours_sd": float(np.std(random)),
            # a hidden item put at a uniformly random rank of the user's unseen items: P(top-K) ~ K / items
            "recall_random_rank": float(k / train.shape[1])}


def segment_blend(features, users_table, k: int, factors: int, share: float) -> dict:
    """The new-user rule: their list = the model's top-K with the last ``share`` of it filled
    by the most popular unseen items of their segment (age band × gender × occupation)."""
    import pandas as pd

    from nightly_topn.evaluation import ranking_metrics
    from nightly_topn.jobs.evaluate import NEW_USER_MAX_HISTORY
    from nightly_topn.models import ALS
    from nightly_topn.splits import PairTable, pipeline_split

    pairs = PairTable.of(features)
    split = pipeline_split(pairs, "temporal")
    train, holdout = pairs.matrix(split.train), pairs.relevance(split.relevant)
    model = ALS(factors=factors).fit(train)
    n_train = np.diff(train.indptr)
    users = np.flatnonzero((np.diff(holdout.indptr) > 0) & (n_train < NEW_USER_MAX_HISTORY))
    u = users_table.to_pandas().drop_duplicates("user_id").set_index("user_id")
    u = u.reindex(features.user_ids)
    band = pd.cut(u["age"], [0, 18, 25, 35, 45, 55, 200], labels=False)
    segment = pd.factorize(band.astype(str) + "/" + u["gender"].astype(str) + "/" + u["occupation"].astype(str))[0]
    onehot = sp.csr_matrix((np.ones(len(segment)), (segment, np.arange(len(segment)))))
    seg_pop = np.asarray((onehot @ (train > 0)).todense(), dtype=np.float32)  # segments × items
    base, _ = model.recommend(users, train[users], k)
    seen = train[users].toarray() > 0
    pop = np.where(seen, -np.inf, seg_pop[segment[users]])
    keep = k - int(round(share * k))
    blended = base.copy()
    for r in range(len(users)):  # evaluation-only experiment: small (the new users of one holdout)
        head = list(base[r, :keep])
        extra = [i for i in np.argsort(-pop[r], kind="stable") if i not in head][: k - keep]
        blended[r] = head + extra
    a = ranking_metrics(base, holdout[users], k)
    b = ranking_metrics(blended, holdout[users], k)
    return {"users": int(len(users)), "share": share, "ndcg_model": a["ndcg"], "ndcg_blend": b["ndcg"],
            "recall_model": a["recall_capped"], "recall_blend": b["recall_capped"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", default="2024-03-01")
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--source", default="generated")
    parser.add_argument("--hidden", type=int, default=60, help="warm items hidden for the held-out check")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (medians)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from nightly_topn import cold_start
    from nightly_topn.config import RunParams
    from nightly_topn.features import Features
    from nightly_topn.models import load_model
    from nightly_topn.storage import Storage, read_table

    root = tempfile.mkdtemp(prefix="cold_start_")
    os.environ["NIGHTLY_TOPN_SOURCE"] = args.source
    params = RunParams(train_window_days=args.window, model="als", tuning_budget_seconds=0)
    started = time.perf_counter()
    results = run_jobs(args.date, root, params)
    store = Storage.at(root)
    features_dir = store.partition("features", args.date)
    features = Features.load(features_dir)
    print(f"jobs for {args.date} ({args.source}, window {args.window} d): {time.perf_counter() - started:.1f}s, "
          f"{features.shape[0]} users x {features.shape[1]} warm items")
    print("new items (preprocess):", results["preprocess"]["new_items"])
    cold = results["evaluate"]["cold_start"]["new_items"]
    if cold:
        print("evaluation (holdout users' top-K):", {key: cold[key] for key in
              ("new_items", "new_items_shown", "users", "users_with_new_item", "share_users_with_new_item")})
        print("  winner with / without new items:", cold["with_new_items"], cold["without"])
    print("published lists (top-N manifest):", results["topn"]["new_items"])
    print("new users (evaluation segment):", {name: None if seg is None else {"users": seg["users"], "ndcg": seg["ndcg"]}
                                             for name, seg in results["evaluate"]["cold_start"]["new_users"]["metrics"].items()})

    if features.new_items is not None:
        times = topn_seconds(args.date, root, params, features_dir, args.repeats)
        print(f"top-N job seconds (median of {args.repeats}): with new items {times['with']:.2f}, "
              f"without {times['without']:.2f}")
        model = load_model(store.partition("models", args.date) / "final" / "als")
        k = kernel_seconds(model, features.matrix(), features.new_items, params.top_n, max(3, args.repeats))
        print(f"scoring kernel, {features.shape[0]} users, top-{params.top_n}: with new items "
              f"{k['with'] * 1e3:.1f} ms, without {k['without'] * 1e3:.1f} ms ({len(features.new_items)} new items)")

    attrs = cold_start.catalogue(read_table(store.partition("raw", args.date) / "items.parquet"))
    check = held_out(features, attrs, params.eval_k, args.hidden, args.seed, cold_start.DEFAULT_NEIGHBOURS,
                     params.factors)
    print("held-out check (hidden warm items as new):", check)
    users_path = store.partition("raw", args.date) / "users.parquet"
    if users_path.is_file():
        for share in (0.2, 0.5):
            print("new-user segment-popularity blend:", segment_blend(features, read_table(users_path),
                                                                      params.eval_k, params.factors, share))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
