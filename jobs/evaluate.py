"""Evaluate: score the winner honestly on the holdout, then the quality gate before publish.

The candidates were tuned and compared on a validation split carved from the evaluation train rows
(see ``jobs/train.py``); here the models train refit on the whole evaluation train split
(``eval/<model>``: the winner, popularity, an A/B challenger; every candidate with
``holdout_candidates=all``) each recommend for every holdout user with that history masked, and
all metrics at K are computed (accuracy, coverage, novelty, diversity, per segment: new vs
established users), and what the new items add to the winner's lists (``cold_start``: how many exist, how many reach a list, the
share of users shown one; the gate itself judges the warm lists).

Gate (both must hold, else nothing new is published):

* lift: the winner's NDCG@K > popularity's × (1 + ``min_lift_over_popularity``);
* champion: the winner's NDCG@K ≥ the live champion's × (1 − ``champion_tolerance``), the
  champion's configuration (model + params of the run whose lists are live) being refit on
  tonight's evaluation train split so both are measured on the same holdout.

Writes ``reports/dt=D/evaluation.json`` and ``reports/dt=D/report.html`` (linked from the log);
on failure also ``alerts/dt=D/quality_gate.json`` and raises ``QualityGateFailed``.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from nightly_topn import registry, splits
from nightly_topn.config import RunParams
from nightly_topn.evaluation import evaluate_model, recommend_all
from nightly_topn.features import Features, read_item_categories
from nightly_topn.jobs.rolling_eval import ROLLING_FILE, served
from nightly_topn.errors import QualityGateFailed
from nightly_topn.models import MODELS, load_model
from nightly_topn.storage import MANIFEST, Storage, as_date, read_json, write_json

log = logging.getLogger(__name__)

#: Users with fewer training interactions than this form the "new" segment.
NEW_USER_MAX_HISTORY = 5


#: MMR strengths the report compares (plus the run's own ``diversity_strength``).
DIVERSITY_SWEEP = (0.0, 0.1, 0.3, 0.5)


def diversity_figures(model, train: sp.csr_matrix, holdout: sp.csr_matrix, users: np.ndarray, k: int,
                      categories: sp.csr_matrix | None, strength: float) -> dict | None:
    """What MMR re-ranking (``nightly_topn.diversity``) does to the winner's top-K on tonight's
    holdout users, at the sweep's strengths and the run's: NDCG and recall (what it costs),
    intra-list diversity and catalogue coverage (what it buys). None without item categories."""
    if categories is None:
        return None
    from nightly_topn.diversity import CategorySimilarity, candidates, mmr
    from nightly_topn.evaluation import ranking_metrics

    pool = np.full((len(users), candidates(k, train.shape[1])), -1, np.int32)
    scores = np.full(pool.shape, -np.inf, np.float32)
    for lo in range(0, len(users), 2048):
        chunk = users[lo:lo + 2048]
        idx, val = model.recommend(chunk, train[chunk], pool.shape[1])
        pool[lo:lo + len(chunk), : idx.shape[1]], scores[lo:lo + len(chunk), : idx.shape[1]] = idx, val
    similarity = CategorySimilarity(categories, train.shape[1])
    pop = np.asarray((train > 0).sum(axis=0)).ravel()
    rows = []
    for lam in sorted({*DIVERSITY_SWEEP, float(strength)}):
        recs = pool[:, :k] if lam == 0 else mmr(pool, scores, similarity, k, lam)[0]
        m = ranking_metrics(recs, holdout[users], k, n_items=train.shape[1], item_popularity=pop,
                            item_categories=categories)
        rows.append({"strength": lam, **{key: m.get(key) for key in ("ndcg", "recall_capped", "diversity", "coverage")}})
    return {"k": k, "strength": float(strength), "candidates": int(pool.shape[1]), "rows": rows}


def cold_start_figures(model, features, train: sp.csr_matrix, holdout: sp.csr_matrix, users: np.ndarray,
                       k: int, results: dict, winner: str) -> dict:
    """What the cold-start component does for tonight's holdout users: the winner's top-K with the
    new items scored in (as the top-N pipeline scores them), how far the new items reach, what
    they cost the warm metrics (the holdout has no new item, so a new item can only take a slot),
    and the new-user segment of the winner vs popularity."""
    from nightly_topn import cold_start
    from nightly_topn.evaluation import ranking_metrics
    from nightly_topn.scoring import TopNScorer

    segment = {name: (results[name].get("segments") or {}).get("new") for name in dict.fromkeys([winner, "popularity"])}
    out = {"new_users": {"rule": f"fewer than {NEW_USER_MAX_HISTORY} training interactions", "metrics": segment},
           "new_items": None}
    new = features.new_items
    if new is None:
        return out
    n_warm, n_cold = train.shape[1], len(new)
    history = new.history(train[users], users)
    recs, _ = TopNScorer(model, k, cold_weights=new.weights).recommend(users, history)
    wide = sp.csr_matrix((holdout.data, holdout.indices, holdout.indptr), shape=(holdout.shape[0], n_warm + n_cold))
    with_new = ranking_metrics(recs, wide[users], k, n_items=n_warm + n_cold)
    out["new_items"] = {**cold_start.coverage(recs, n_warm, n_cold), "k": k,
                        "with_new_items": {m: with_new[m] for m in ("ndcg", "recall_capped", "hit_rate")},
                        "without": {m: results[winner][m] for m in ("ndcg", "recall_capped", "hit_rate")}}
    return out


def _gate(results: dict, winner: str, champion: dict | None, params: RunParams) -> dict:
    k = params.eval_k
    win, pop = results[winner]["ndcg"], results["popularity"]["ndcg"]
    need = pop * (1 + params.min_lift_over_popularity)
    checks = [{"check": "beats popularity", "passed": bool(winner != "popularity" and win > need),
               "detail": (f"{winner} NDCG@{k}={win:.4f} vs popularity {pop:.4f} × (1 + {params.min_lift_over_popularity})"
                          f" = {need:.4f}" + (" (the winner is popularity itself)" if winner == "popularity" else ""))}]
    if not checks[0]["passed"]:
        checks[0]["detail"] = (f"{winner} NDCG@{k}={win:.4f} does not beat popularity {pop:.4f} by "
                               f"{params.min_lift_over_popularity:.0%} (needs > {need:.4f})"
                               + (": the winner is popularity itself" if winner == "popularity" else ""))
    worse = (champion or {}).get("served_below_popularity")
    if worse:  # what users did after the champion's lists went out says it is not worth protecting
        checks.append({"check": "not worse than the live champion", "passed": True,
                       "detail": f"live {champion['model']} (from {champion['date']}) is not protected: its lists did "
                                 f"worse than popularity with what users did in the next {worse['horizon_days']} days "
                                 f"(NDCG@{worse['k']} {worse['ndcg']:.4f} vs {worse['popularity']:.4f})"})
    elif champion and champion.get("ndcg") is not None:
        floor = champion["ndcg"] * (1 - params.champion_tolerance)
        checks.append({"check": "not worse than the live champion", "passed": bool(win >= floor),
                       "detail": f"{winner} NDCG@{k}={win:.4f} vs live {champion['model']} (from {champion['date']}) "
                                 f"{champion['ndcg']:.4f} × (1 − {params.champion_tolerance}) = {floor:.4f}"})
    else:
        checks.append({"check": "not worse than the live champion", "passed": True,
                       "detail": champion.get("note", "nothing is live yet") if champion else "nothing is live yet"})
    passed = all(c["passed"] for c in checks)
    return {"passed": passed, "checks": checks,
            "rule": f"ndcg > popularity * (1 + {params.min_lift_over_popularity}) and "
                    f"ndcg >= champion * (1 - {params.champion_tolerance})",
            "reason": "; ".join(c["detail"] for c in checks if not c["passed"]) or "all checks passed"}


def experiment_verdict(info: dict, results: dict, params: RunParams) -> dict | None:
    """Whether tonight's A/B challenger (``model_info["challenger"]``) gets its arm: it must beat
    popularity by the same lift as the champion on the same holdout (its lists are published
    like the champion's; nothing unchecked goes out). The top-N job reads this verdict."""
    challenger = info.get("challenger")
    if not challenger:
        return None
    name, k = challenger["model"], params.eval_k
    verdict = {key: challenger.get(key) for key in ("experiment", "share", "model", "model_version", "params")}
    arms = {"champion": {"model": info["model"], "model_version": info["model_version"],
                         **{m: results[info["model"]].get(m) for m in ("ndcg", "recall_capped", "coverage")}}}
    if not challenger.get("active"):
        return {**verdict, "active": False, "reason": challenger.get("reason"), "arms": arms}
    arms["challenger"] = {"model": name, "model_version": challenger["model_version"],
                          **{m: results[name].get(m) for m in ("ndcg", "recall_capped", "coverage")}}
    ndcg, pop = results[name]["ndcg"], results["popularity"]["ndcg"]
    need = pop * (1 + params.min_lift_over_popularity)
    active = bool(ndcg > need)
    reason = (f"{name} NDCG@{k}={ndcg:.4f} beats popularity {pop:.4f} × (1 + {params.min_lift_over_popularity})"
              if active else f"{name} NDCG@{k}={ndcg:.4f} does not beat popularity {pop:.4f} by "
                             f"{params.min_lift_over_popularity:.0%} (needs > {need:.4f}): no challenger arm tonight")
    return {**verdict, "active": active, "reason": reason, "arms": arms}


def latest_served(store: Storage, date) -> dict | None:
    """The newest complete rolling evaluation of lists published before ``date``: what users did
    with what they were served, shown next to tonight's holdout figures."""
    for day in reversed(store.dates("reports", holding=ROLLING_FILE)):
        if day < as_date(date) and (result := served(store, day)):
            return result
    return None


def _champion_metrics(store, date, pairs, split, train, holdout, users, info, results, params) -> dict | None:
    champ = registry.champion(store, before=date)
    if not champ:
        return None
    seen = served(store, champ["date"])
    baseline = (seen or {}).get("popularity") or {}
    if seen and seen["ndcg"] is not None and baseline.get("ndcg") is not None and seen["ndcg"] < baseline["ndcg"]:
        champ = {**champ, "served_below_popularity": {"ndcg": seen["ndcg"], "popularity": baseline["ndcg"],
                                                      "k": seen["k"], "horizon_days": seen["horizon_days"]}}
    same = champ["model"] == info["model"] and champ["params"] == info["params"]
    if same and info["model"] in results:
        return {**champ, "ndcg": results[info["model"]]["ndcg"], "note": "same configuration as tonight's winner"}
    if champ["model"] not in MODELS:
        return {**champ, "ndcg": None, "note": f"live model {champ['model']!r} is unknown to this code version"}
    try:
        model = MODELS[champ["model"]](**champ["params"]).fit(train, pairs.times(split.train))
    except (MemoryError, ValueError, TypeError) as exc:
        return {**champ, "ndcg": None, "note": f"could not refit the live configuration: {exc}"}
    metrics = evaluate_model(model, train, holdout, params.eval_k, users=users)
    return {**champ, "ndcg": metrics["ndcg"], "metrics": metrics,
            "note": "live configuration refit on tonight's evaluation train split"}


def evaluate(date, *, root=None, params: RunParams = RunParams()) -> dict:
    from nightly_topn import report as html_report
    from nightly_topn.quality import check_gate_knobs

    check_gate_knobs(params)
    date = as_date(date)
    store = Storage.at(root)
    features = Features.load(store.partition("features", date))
    models_dir = store.partition("models", date)
    info = registry.model_info(store, date, required=True)
    pairs = splits.PairTable.of(features)
    split = splits.pipeline_split(pairs, info.get("protocol", params.eval_protocol), seed=params.seed)
    train, holdout = pairs.matrix(split.train), pairs.relevance(split.relevant)
    users = np.flatnonzero(np.diff(holdout.indptr) > 0)
    if not len(users):
        raise QualityGateFailed(f"{date}: the holdout is empty; cannot evaluate (features {features.directory})")
    history_size = np.diff(train.indptr)
    segments = np.where(history_size < NEW_USER_MAX_HISTORY, "new", "established")
    categories = read_item_categories(features.directory)
    categories = None if categories is None else categories[: len(features.item_ids)]  # warm items only
    k = params.eval_k
    # train refits the winner, popularity and an A/B challenger (all candidates with holdout_candidates=all)
    candidates = info.get("holdout_models") or info.get("candidates") or [info["model"], "popularity"]
    results, recs, winner_model = {}, {}, None
    for name in dict.fromkeys([info["model"], *candidates, "popularity"]):
        model = load_model(models_dir / "eval" / name)
        winner_model = model if winner_model is None else winner_model  # kept for the cold-start figures
        recs[name] = recommend_all(model, users, train, k)
        results[name] = evaluate_model(model, train, holdout, k, users=users, segments=segments,
                                       item_categories=categories)
    cold = cold_start_figures(winner_model, features, train, holdout, users, k, results, info["model"])
    diversity = diversity_figures(winner_model, train, holdout, users, k, categories, params.diversity_strength)
    champion = _champion_metrics(store, date, pairs, split, train, holdout, users, info, results, params)
    gate = _gate(results, info["model"], champion, params)
    experiment = experiment_verdict(info, results, params)
    if experiment and not experiment["active"]:
        log.warning("A/B experiment %s: %s", experiment["experiment"], experiment["reason"])
    item_pop = np.asarray((train > 0).sum(axis=0)).ravel()  # interactions per item
    evaluation = {"date": date.isoformat(), "k": k, "model": info["model"], "params": info.get("params"),
                  "model_version": info["model_version"], "protocol": info.get("protocol", params.eval_protocol),
                  "selection": info.get("selection"), "tuning_seconds": info.get("tuning_seconds"),
                  "tuning_budget_seconds": info.get("tuning_budget_seconds"),
                  "holdout": {"users": int(len(users)), "pairs": int(holdout.nnz), **split.info},
                  "segments": {"rule": f"new = fewer than {NEW_USER_MAX_HISTORY} training interactions",
                               "new_users": int((segments[users] == "new").sum())},
                  "metrics": results, "champion": champion and {k2: v for k2, v in champion.items() if k2 != "metrics"},
                  "gate": gate, "data_fingerprint": info.get("data_fingerprint"),
                  "served": latest_served(store, date), "cold_start": cold, "diversity": diversity,
                  "experiment": experiment,
                  # the candidate rules the published lists are shaped by (not applied to these metrics)
                  "rules": read_json(store.partition("features", date) / MANIFEST).get("stats", {}).get("rules"),
                  "code_version": registry.code_version()}
    reports = store.partition("reports", date)
    write_json(reports / registry.EVALUATION_FILE, evaluation)
    record = registry.read_run(store, date)
    if record:  # the registry keeps each candidate's honest holdout metrics next to its params and artifacts
        for name, metrics in results.items():
            record.setdefault("candidates", {}).setdefault(name, {})["holdout_metrics"] = {
                key: value for key, value in metrics.items() if key != "segments"}
        record["gate"] = gate
        registry.write_run(models_dir, record)
    page = html_report.write_report(store, date, evaluation, recommended=recs[info["model"]], item_popularity=item_pop,
                                    registry_record=registry.read_run(store, date))
    log.info("evaluate %s: %s NDCG@%d=%.4f vs popularity %.4f -> %s; report: file://%s", date, info["model"], k,
             results[info["model"]]["ndcg"], results["popularity"]["ndcg"], "PASS" if gate["passed"] else "FAIL", page)
    if not gate["passed"]:
        from nightly_topn.alerts import write_alert

        alert = {"date": date.isoformat(), "dag_id": "nightly_topn", "run_id": None, "task_id": "quality_gate",
                 "try_number": 1, "error_type": "QualityGateFailed", "reason": gate["reason"],
                 "log_url": None, "report": str(page), "recorded_at": registry.today()}
        try:
            write_alert(alert, root=store.root)
        except OSError as exc:  # the alert sink must not hide the gate's decision
            log.error("could not write the quality-gate alert: %s", exc)
        log.error("quality gate FAILED for %s: %s; keeping the live lists (report file://%s)", date, gate["reason"], page)
        raise QualityGateFailed(f"{date}: {gate['reason']}; keeping the live lists (report: {page})")
    return evaluation
