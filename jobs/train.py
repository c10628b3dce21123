"""Train: tune the candidate models on a validation split, pick the winner, fit what the later
jobs need.

1. Evaluation split of tonight's prepared pairs (``eval_protocol``: temporal = preprocess's
   holdout; random = per-user 20 %, seeded).
2. Validation split carved from the evaluation train rows *the same way*; every candidate's
   small grid is searched on it within its share of ``tuning_budget_seconds``
   (``nightly_topn.tuning``). The winner is the best candidate on validation NDCG@K.
3. Each candidate's chosen configuration is refit on the whole evaluation train split
   (``eval/<model>``: the evaluation job scores them honestly on the holdout), and the winner
   plus popularity are refit on all prepared data (``final/<model>``: tonight's lists).

Layout: ``models/dt=D/{eval/<every candidate>, final/{WINNER,popularity}, model_info.json,
registry.json}``; ``model_info.json["model"]`` names the winner (what the top-N job loads).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from nightly_topn import registry, splits
from nightly_topn.config import RunParams
from nightly_topn.errors import BadInput
from nightly_topn.features import Features
from nightly_topn.models import MODELS
from nightly_topn.storage import Storage, as_date
from nightly_topn.tuning import DEFAULT_CANDIDATES, TuningResult, params_with_seed, choose, tune_all

log = logging.getLogger(__name__)


def model_params(params: RunParams, name: str | None = None) -> dict:
    """The untuned configuration of ``name``: the ALS knobs of RunParams for ALS, defaults otherwise."""
    name = name or params.model
    if name == "als":
        return {"factors": params.factors, "regularization": params.regularization, "alpha": params.alpha,
                "iterations": params.iterations, "seed": params.seed}
    return params_with_seed(name, {}, params.seed)


def candidates_for(params: RunParams) -> list[str]:
    """The models the search tunes (and evaluate scores): every default one for ``auto``, else
    popularity and the requested one; plus the A/B challenger, so it is tuned and evaluated too."""
    names = list(DEFAULT_CANDIDATES) if params.model == "auto" else \
        [params.model] if params.model == "popularity" else ["popularity", params.model]
    if params.challenger_model != "none" and params.challenger_model not in names:
        names.append(params.challenger_model)
    return names


def challenger_of(params: RunParams, winner: str, results: dict, date, fingerprint: str) -> dict | None:
    """Tonight's A/B challenger (``model_info["challenger"]``), or None without an experiment.
    A challenger that tonight's choice made the champion, or that could not be trained, runs no
    arm tonight: the record says why and everybody gets the champion's lists."""
    name = params.challenger_model
    if name == "none" or params.challenger_share <= 0:
        return None
    record = {"model": name, "experiment": params.experiment, "share": params.challenger_share}
    if name == winner:
        return {**record, "active": False, "reason": f"{name} won tonight's choice: it is the champion, no second arm"}
    if name not in results:
        return {**record, "active": False, "reason": f"{name} could not be trained on this data"}
    return {**record, "active": True, "params": results[name].best_params,
            "model_version": f"{as_date(date).isoformat()}.{name}.{fingerprint[:8]}"}


#: RunParams that do not change what is trained (a re-run differing only in these reuses the choice).
NOT_TRAINING = ("top_n", "publish", "allow_older", "min_lift_over_popularity", "champion_tolerance",
                "challenger_share", "experiment", "holdout_candidates", "candidates")


def params_digest(params: RunParams) -> str:
    import hashlib

    knobs = {k: v for k, v in sorted(params.__dict__.items()) if k not in NOT_TRAINING}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reuse_previous(store: Storage, date, fingerprint: str, params: RunParams):
    """A re-run of a date on the same data with the same params replays the recorded choice.

    The search is bounded by wall-clock time, so two searches can try a different number of
    configurations; replaying the recorded choice keeps "same data + same params = same lists".
    """
    record = registry.read_run(store, date)
    if not record or record.get("data_fingerprint") != fingerprint or record.get("params_digest") != params_digest(params):
        return None
    results = {}
    for name, cand in record.get("candidates", {}).items():
        if name not in MODELS or "best_params" not in cand:
            return None
        results[name] = TuningResult(name, cand["best_params"], float(cand.get("best_metric", float("nan"))))
    if record.get("winner") not in results:
        return None
    selection = dict(record.get("selection") or {})
    selection["selection"] = (f"{selection.get('selection', record['winner'])} "
                              f"[replayed from the earlier run of this date: same data, same params]")
    return record["winner"], results, selection


def select(pairs: splits.PairTable, params: RunParams) -> tuple[str, dict[str, TuningResult], dict]:
    """Tune the candidates on a validation split of the evaluation train rows; returns the winner.
    ``tuning_budget_seconds`` bounds all of it, the splits and the user sample included."""
    started = time.perf_counter()
    split = splits.pipeline_split(pairs, params.eval_protocol, seed=params.seed)
    fit_rows, val_rows = splits.validation_split(
        params.eval_protocol, pairs.users, pairs.items, pairs.first_time, split.train, seed=params.seed,
        quantile=params.holdout_quantile)
    names = candidates_for(params)
    info = {"protocol": params.eval_protocol, "evaluation_split": split.info,
            "validation_rows": int(val_rows.sum()), "fit_rows": int(fit_rows.sum())}
    if not val_rows.any() or params.tuning_budget_seconds <= 0:
        # Nothing to validate on (or search disabled): untuned configurations, the requested model wins.
        reason = "no validation rows" if not val_rows.any() else "tuning disabled (budget 0)"
        results = {n: TuningResult(n, model_params(params, n), float("nan")) for n in names}
        winner = params.model if params.model != "auto" else next(n for n in ("ease", "als", "popularity") if n in names)
        info["selection"] = f"{reason}: {winner} by default"
        return winner, results, info
    fit, validation, times = pairs.matrix(fit_rows), pairs.relevance(val_rows), pairs.times(fit_rows)
    if 0 < params.search_users < fit.shape[0]:  # bounded trials at any volume; the refits see everyone
        sample = np.sort(np.random.default_rng([params.seed, 11]).choice(fit.shape[0], params.search_users,
                                                                          replace=False))
        info["search_sample"] = {"users": int(len(sample)), "of_users": int(fit.shape[0])}
        fit, validation, times = fit[sample], validation[sample], times[sample]
        info["search_sample"].update(fit_rows=int(fit.nnz), validation_rows=int(validation.nnz))
    budget = max(0.0, params.tuning_budget_seconds - (time.perf_counter() - started))
    results = tune_all(names, fit, validation, times=times, k=params.eval_k, budget_seconds=budget, seed=params.seed)
    failed = {n: r.trials[0].error for n, r in results.items() if r.trials and all(t.error for t in r.trials)}
    if failed:  # e.g. EASE refusing a catalogue too large for dense memory: not a candidate tonight
        info["excluded"] = failed
        log.warning("candidates excluded (every configuration failed): %s", failed)
        if params.model in failed and not results[params.model].over_budget:
            raise BadInput(f"the requested model {params.model!r} cannot be trained on this data: {failed[params.model]}")
        # a requested model too slow to search within the budget is still trained, untuned
        results = {n: r for n, r in results.items() if n not in failed or n == params.model}
    if params.model != "auto":
        winner = params.model
        info["selection"] = f"model fixed to {winner} by the run params"
    else:
        # an A/B challenger outside the default candidates is tuned for its arm, not a choice for the champion
        eligible = {n: r for n, r in results.items() if n in DEFAULT_CANDIDATES}
        winner = choose(eligible)
        ranked = sorted(eligible.values(), key=lambda r: -r.selection[0])
        best = ranked[0]
        se = best.selection[1]
        why = (f"{winner} has the best validation NDCG@{params.eval_k}" if winner == best.model else
               f"{winner} is the simplest candidate within one standard error ({se:.4f}) of the best validation "
               f"NDCG@{params.eval_k} ({best.model})")
        info["selection"] = why + " — validation (check half): " + ", ".join(f"{r.model} {r.selection[0]:.4f}"
                                                                          for r in ranked)
    return winner, results, info


def train(date, *, root=None, params: RunParams = RunParams()) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    features_dir = store.partition("features", date)
    features = Features.load(features_dir)
    pairs = splits.PairTable.of(features)
    fingerprint = features.fingerprint()
    started = time.perf_counter()
    replay = reuse_previous(store, date, fingerprint, params)
    winner, results, selection = replay or select(pairs, params)
    tuning_seconds = round(time.perf_counter() - started, 2)
    version = f"{date.isoformat()}.{winner}.{fingerprint[:8]}"
    split = splits.pipeline_split(pairs, params.eval_protocol, seed=params.seed)
    timings = {}
    with store.staged(store.partition("models", date)) as stage:
        challenger = challenger_of(params, winner, results, date, fingerprint)
        # The holdout scores what the gate and the lists need; every other candidate was compared on
        # validation users the search never saw, and an extra refit each costs minutes at volume.
        scored = list(results) if params.holdout_candidates == "all" else [
            name for name in dict.fromkeys([winner, "popularity", challenger and challenger["model"]]) if name in results]
        plan = [("eval", name, split.train) for name in scored]
        finals = [winner, "popularity"] + ([challenger["model"]] if challenger and challenger["active"] else [])
        plan += [("final", name, None) for name in dict.fromkeys(finals)]
        for purpose, name, mask in plan:
            t0 = time.perf_counter()
            model = MODELS[name](**results[name].best_params).fit(pairs.matrix(mask), pairs.times(mask))
            model.save(stage / purpose / name)
            timings[f"{purpose}/{name}"] = round(time.perf_counter() - t0, 3)
        info = {"model": winner, "params": results[winner].best_params, "model_version": version,
                "data_fingerprint": fingerprint, "fit_seconds": timings, "candidates": list(results),
                "holdout_models": scored,
                "protocol": params.eval_protocol, "selection": selection["selection"],
                "tuning_seconds": tuning_seconds, "tuning_budget_seconds": params.tuning_budget_seconds,
                "challenger": challenger}
        registry.write_model_info(stage, info)
        registry.write_run(stage, {
            "date": date.isoformat(), "winner": winner, "model_version": version, "data_fingerprint": fingerprint,
            "code_version": registry.code_version(), "trained_at": registry.today(), "selection": selection,
            "params_digest": params_digest(params), "run_params": params.__dict__,
            "tuning_seconds": tuning_seconds, "tuning_budget_seconds": params.tuning_budget_seconds,
            "candidates": {name: {**r.summary(), "artifacts": {**({"eval": f"eval/{name}"} if name in scored else {}),
                                                              **({"final": f"final/{name}"} if name in finals else {})},
                                  "fit_seconds": {k.split("/")[0]: v for k, v in timings.items() if k.endswith("/" + name)}}
                           for name, r in results.items()},
        })
        store.write_manifest(stage, producer="train", date=date, inputs=[features_dir], extra=info)
    log.info("train %s: winner %s (%s) in %.1fs of tuning", date, winner, selection["selection"], tuning_seconds)
    return {"date": date.isoformat(), **info}
