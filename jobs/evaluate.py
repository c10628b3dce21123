"""Evaluate: score the holdout with the eval-split models and gate on the lift over popularity.

Writes ``reports/dt=D/evaluation.json``. Raises ``QualityGateFailed`` (nothing gets published)
when the model's NDCG@K is not at least ``(1 + min_lift_over_popularity)`` × popularity's.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from nightly_topn.config import RunParams
from nightly_topn.evaluation import ranking_metrics
from nightly_topn.features import Features
from nightly_topn.models import load_model
from nightly_topn.storage import Storage, as_date, write_json

log = logging.getLogger(__name__)


class QualityGateFailed(RuntimeError):
    pass


def evaluate(date, *, root=None, params: RunParams = RunParams()) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    features = Features.load(store.partition("features", date))
    models_dir = store.partition("models", date)
    info = json.loads((models_dir / "model_info.json").read_text())
    train, holdout = features.matrix("train"), features.matrix("holdout")
    users = np.flatnonzero(np.diff(holdout.indptr) > 0)
    if not len(users):
        raise QualityGateFailed(f"{date}: the holdout is empty; cannot evaluate (features {features.directory})")
    results = {}
    for name in (info["model"], "popularity"):
        model = load_model(models_dir / "eval" / name)
        recs, _ = model.recommend(users, train[users], params.eval_k)
        results[name] = ranking_metrics(recs, holdout, users, params.eval_k)
    model_ndcg, pop_ndcg = results[info["model"]]["ndcg"], results["popularity"]["ndcg"]
    passed = model_ndcg >= pop_ndcg * (1 + params.min_lift_over_popularity)
    report = {"date": date.isoformat(), "k": params.eval_k, "model": info["model"],
              "model_version": info["model_version"], "metrics": results,
              "gate": {"passed": passed, "rule": f"ndcg >= popularity * (1 + {params.min_lift_over_popularity})"}}
    write_json(store.partition("reports", date) / "evaluation.json", report)
    log.info("evaluate %s: %s NDCG@%d=%.4f vs popularity %.4f -> %s", date, info["model"], params.eval_k,
             model_ndcg, pop_ndcg, "PASS" if passed else "FAIL")
    if not passed:
        raise QualityGateFailed(
            f"{date}: {info['model']} NDCG@{params.eval_k}={model_ndcg:.4f} does not beat popularity "
            f"{pop_ndcg:.4f} by {params.min_lift_over_popularity:.0%}; keeping the live lists"
        )
    return report
