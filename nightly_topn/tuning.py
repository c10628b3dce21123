"""Per-model hyperparameter search on a validation split, bounded by a time budget.

For each candidate model: greedy coordinate descent over its small grid (start from the first
value of every knob, sweep one knob at a time keeping the best, two rounds), then seeded random
grid points until the model's share of the budget is spent or ``PATIENCE`` trials in a row did
not improve. Each trial fits on the *fit* part of the training data and scores NDCG@K on the
validation rows (carved from the training data with the same protocol as the test split). The
validation users are halved: each model's best configuration is chosen on the search half, and
the models are compared on the check half, which no search saw (``validation_halves``). Both
choices use validation only; the caller refits the choice on all training data.

The budget is wall clock, at any data size: a trial starts only while the longest trial so far
still fits in what is left, and each fit runs under ``models.base.fit_deadline`` at the budget's
end, so iterative models stop between iterations or mini-batches (``Trial.stopped``).

Reproducibility: the trial order, the seeds and the data decide the result. The budget only
decides how many trials run (and where a trial cut by it stopped), and both are recorded with
every result (``trial_log``), so a rerun with ``max_trials`` set to that number reproduces the
choice on any machine fast enough to finish those trials.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from nightly_topn.evaluation import evaluate_model
from nightly_topn.models import MODELS

log = logging.getLogger(__name__)

BASELINE = "popularity"
#: Candidates the automatic choice considers, in order.
DEFAULT_CANDIDATES = ("popularity", "itemknn", "puresvd", "ease", "als", "bpr", "horizon")
#: Share of the tuning budget per model (normalised over the candidates actually used).
BUDGET_WEIGHTS = {"popularity": 0.0, "itemknn": 1.0, "puresvd": 1.0, "ease": 1.0, "als": 2.0, "bpr": 1.0,
                  "multvae": 3.0, "sequence": 3.0, "horizon": 3.0}
#: A model's search stops after this many consecutive trials without a better validation metric.
PATIENCE = 8

# Grids: dicts of lists (cartesian product). Scales are wide and logarithmic so the same grid
# works from a few hundred users to hundreds of thousands (tune the method, not the numbers).
#: The confidence transforms a model may be searched over (``models.confidence``), binary first:
#: the search starts from "every pair is one positive" and keeps a weighting only if it validates better.
CONFIDENCE = ["binary", "log", "linear"]
GRIDS: dict[str, dict[str, list]] = {
    "popularity": {},
    "ease": {"l2": [500.0, 100.0, 2000.0, 200.0, 1000.0, 30.0, 300.0, 5000.0, 700.0, 10.0, 20000.0, 3.0],
             "confidence": CONFIDENCE},
    "puresvd": {"factors": [16, 64, 8, 32, 128, 12, 24, 48, 4, 256, 96], "confidence": CONFIDENCE},
    "itemknn": {"weighting": ["bm25", "cosine"], "neighbours": [50, 200, 20, 100, 400, 10, 1000],
                "k1": [1.2, 0.3, 3.0, 10.0], "b": [0.75, 0.25, 1.0, 0.5], "confidence": CONFIDENCE},
    "als": {"factors": [64, 32, 128, 16, 256], "regularization": [0.1, 1.0, 10.0, 30.0, 100.0],
            "alpha": [2.0, 0.5, 10.0, 40.0], "iterations": [15, 30], "confidence": CONFIDENCE},
    "bpr": {"factors": [64, 128, 32, 256], "learning_rate": [0.05, 0.01, 0.1], "regularization": [0.01, 0.001, 0.1],
            "iterations": [100, 300, 30]},
    "horizon": {"epochs": [60, 30, 120], "half_life_days": [30.0, 7.0, 120.0], "horizon_days": [14, 7, 28],
                "hidden": [256, 512, 128], "dropout": [0.5, 0.2], "cutoffs": [20, 40, 10], "lr": [1e-3, 3e-3],
                "confidence": CONFIDENCE},
    "sequence": {"epochs": [8, 4, 16], "max_len": [50, 20, 100], "dim": [64, 128], "dropout": [0.2, 0.5],
                 "lr": [3e-3, 1e-3]},
    "multvae": {"hidden": [600, 300], "latent": [200, 100], "dropout": [0.5, 0.3], "beta": [0.2, 0.5, 0.05],
                "epochs": [100, 200, 50], "weight_decay": [0.0, 1e-5], "confidence": CONFIDENCE},
}


def candidate_configs(name: str, seed: int = 42, max_trials: int | None = None) -> list[dict]:
    """Configurations of ``name`` in trial order: first the first value of every knob, then each
    knob's values one at a time (a cheap coordinate sweep), then the rest of the grid shuffled."""
    grid = GRIDS.get(name, {})
    if not grid:
        return [{}]
    keys = list(grid)
    base = {k: grid[k][0] for k in keys}
    order = [base]
    for k in keys:
        for v in grid[k][1:]:
            order.append({**base, k: v})
    rest = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    rng = np.random.default_rng(seed)
    rest = [rest[i] for i in rng.permutation(len(rest))]
    seen, out = set(), []
    for cfg in order + rest:
        key = tuple(sorted(cfg.items()))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out[:max_trials] if max_trials else out


class OverBudget(Exception):
    """A model's one-step fit is estimated to need more than its share of the budget."""


@dataclass
class Trial:
    model: str
    params: dict
    metric: float
    metrics: dict
    seconds: float
    error: str | None = None
    #: (metric, its standard error) on the check half of the validation users, which the search never sees
    check: tuple[float, float] | None = None
    #: How far an iterative fit got when it reached the budget (``Recommender.stopped_early``), else None
    stopped: dict | None = None
    #: Seconds of the trial spent scoring the validation users (the rest fitting)
    eval_seconds: float = 0.0


@dataclass
class TuningResult:
    model: str
    best_params: dict
    best_metric: float
    trials: list[Trial] = field(default_factory=list)
    budget_seconds: float = 0.0
    seconds: float = 0.0
    exhausted: bool = False  # True when every configuration was tried within the budget
    over_budget: bool = False  # True when its fit was judged not to fit its share (estimate, pace): left out

    @property
    def selection(self) -> tuple[float, float]:
        """``(metric, standard error)`` the candidates are compared on: the best configuration's
        score on the check half of the validation users (unseen by the search, so free of the
        optimism of the best of many trials), else its search score."""
        if not self.trials:
            return self.best_metric, 0.0
        best = best_trial(self)
        if best.check is not None:
            return best.check
        return best.metric, best.metrics.get("ndcg_se", 0.0)

    def summary(self) -> dict:
        best_se = max(self.trials, key=lambda t: t.metric).metrics.get("ndcg_se") if self.trials else None
        check = best_trial(self).check if self.trials else None
        return {"model": self.model, "best_params": self.best_params, "best_metric": self.best_metric,
                "best_metric_se": best_se, "check_metric": check and check[0], "check_metric_se": check and check[1],
                "trials": len(self.trials), "budget_seconds": round(self.budget_seconds, 1),
                "seconds": round(self.seconds, 2), "exhausted": self.exhausted,
                "trial_log": [{"params": t.params, "metric": round(t.metric, 5), "seconds": round(t.seconds, 2),
                               **({"error": t.error} if t.error else {}),
                               **({"stopped": t.stopped} if t.stopped else {})} for t in self.trials]}


def params_with_seed(name: str, params: dict, seed: int) -> dict:
    """``params`` plus the run's ``seed`` for models that take one (same seed, same model)."""
    import inspect

    accepted = inspect.signature(MODELS[name].__init__).parameters
    return {**params, "seed": seed} if "seed" in accepted else dict(params)


def tune_model(name: str, fit: sp.csr_matrix, validation: sp.csr_matrix, *, times: sp.csr_matrix | None = None,
               k: int = 10, budget_seconds: float = 60.0, seed: int = 42, metric: str = "ndcg",
               max_trials: int | None = None, patience: int | None = PATIENCE, passes: int = 2,
               fixed: dict | None = None, scoring_seconds: float = 0.0,
               search_left_seconds: float | None = None) -> TuningResult:
    """Search ``name``'s grid on (fit, validation) within ``budget_seconds`` of wall clock.

    The budget holds at any data size: a trial starts only if the longest trial so far still fits
    in what is left, and every fit runs under a ``fit_deadline`` at the budget's end (less the
    longest validation scoring so far), so an iterative model stops between iterations or
    mini-batches and is scored as far as it got (recorded in the trial's ``stopped``). The first
    trial runs, except for a model fit in one step that estimates its fit's cost
    (``estimate_fit_seconds``: EASE, whose cost grows with the cube of the catalogue) above its
    share: it is left out tonight with the estimate as the reason; so is a torch model whose first
    epoch, at the pace of its first mini-batches, would end past the deadline (``OutOfTime``).

    Order: greedy coordinate descent from the grid's first values (each knob swept with the
    others at their best so far; ``passes`` rounds), then random grid points (seeded) until the
    budget, ``max_trials`` or ``patience`` trials without improvement. Deterministic given the
    data, the seed and the number of trials. ``times``: latest event time per pair of ``fit``.
    ``fixed``: knobs held at a value instead of searched (those the model has).
    ``scoring_seconds``: the validation scoring time to reserve before the first trial has timed
    its own (``tune_all`` passes the longest of the models before). A model with a grid is not
    tried when that reserve exceeds ``search_left_seconds``, what the whole search has left (default:
    its share): its fit would have no time at all (``TuningResult.over_budget``, reason in the
    trial log). Its share alone may be smaller: a quick one-step fit then overruns it a little, and
    ``tune_all`` takes that from the models after it.
    """
    from nightly_topn.models.base import OutOfTime, fit_deadline

    grid = _grid(name, fixed)
    started = time.perf_counter()
    ends = time.monotonic() + budget_seconds
    search_rows, check_rows = validation_halves(validation, seed)
    result = TuningResult(name, {}, -np.inf, budget_seconds=budget_seconds)
    tried: dict[tuple, float] = {}
    state = {"since_best": 0, "stop": False}

    def run(cfg: dict) -> float:
        key = tuple(sorted(cfg.items()))
        if key in tried:
            return tried[key]
        longest = max((t.seconds for t in result.trials), default=0.0)
        if result.trials and (time.perf_counter() - started + longest > budget_seconds
                              or (max_trials and len(result.trials) >= max_trials)):
            state["stop"] = True
            return -np.inf
        params = params_with_seed(name, cfg, seed)
        t0 = time.perf_counter()
        check = stopped = None
        scoring = max((t.eval_seconds for t in result.trials), default=scoring_seconds)
        t_eval = t0
        try:
            left = budget_seconds if search_left_seconds is None else search_left_seconds
            if not result.trials and grid and 0 < scoring >= left:
                raise OverBudget(f"no time left for {name}: the search's last {left:.1f} s of "
                                 f"tuning_budget_seconds are within the ~{scoring:.1f} s that scoring the "
                                 f"validation users takes")
            model = MODELS[name](**params)
            estimate = getattr(model, "estimate_fit_seconds", None)
            if not result.trials and estimate is not None and budget_seconds > 0:  # a one-step fit cannot stop
                expected = estimate(fit)
                if expected > budget_seconds - scoring - (time.perf_counter() - started):
                    raise OverBudget(f"one fit of {name} would take ~{expected:.0f} s (estimated from smaller fits), "
                                     f"above its {budget_seconds:.1f} s share of tuning_budget_seconds"
                                     + (f" less ~{scoring:.1f} s of scoring" if scoring else ""))
            with fit_deadline(ends - scoring):
                model = model.fit(fit, times)
            stopped, t_eval = model.stopped_early, time.perf_counter()
            metrics = evaluate_model(model, fit, search_rows, k)
            value, error = float(metrics[metric]), None
            if check_rows is not None:
                scored = evaluate_model(model, fit, check_rows, k)
                check = (float(scored[metric]), float(scored.get(f"{metric}_se", 0.0)))
        except (OverBudget, OutOfTime) as exc:
            metrics, value, error = {}, -np.inf, str(exc)
            state["stop"] = result.over_budget = True
        except (MemoryError, ValueError, np.linalg.LinAlgError) as exc:  # a config the data cannot support
            metrics, value, error = {}, -np.inf, f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        result.trials.append(Trial(name, params, value, metrics, done - t0, error, check, stopped,
                                   done - t_eval if t_eval > t0 else 0.0))
        tried[key] = value
        log.info("tune %s %s -> %s=%.4f (%.1fs)%s%s", name, cfg, metric, value, result.trials[-1].seconds,
                 f" [{error}]" if error else "", f" [stopped at the budget: {stopped}]" if stopped else "")
        if value > result.best_metric + 1e-6:
            result.best_metric, result.best_params = value, params
            state["since_best"] = 0
        else:
            state["since_best"] += 1
        return value

    best_cfg = {key: values[0] for key, values in grid.items()}
    run(best_cfg)
    for _ in range(passes if grid else 0):
        before = dict(best_cfg)
        for key, values in grid.items():
            for value in values:
                if state["stop"]:
                    break
                cfg = {**best_cfg, key: value}
                if run(cfg) >= tried[tuple(sorted(best_cfg.items()))] + 1e-6:
                    best_cfg = cfg
        if best_cfg == before or state["stop"]:
            break
    state["since_best"] = 0
    remaining = [cfg for cfg in candidate_configs(name, seed) if all(cfg.get(key, value) == value
                                                                      for key, value in (fixed or {}).items())]
    for cfg in remaining:
        if state["stop"] or (patience and state["since_best"] >= patience):
            break
        run(cfg)
    result.seconds = time.perf_counter() - started
    result.exhausted = not state["stop"]
    if not np.isfinite(result.best_metric):
        result.best_params = params_with_seed(name, best_cfg, seed)
    return result


#: Below this many validation users the validation split is not halved (too few to score twice).
MIN_CHECK_USERS = 100


def validation_halves(validation: sp.csr_matrix, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """The validation rows split by user into a *search* half, on which each model's grid is
    searched, and a *check* half, on which the candidates' best configurations are compared.
    The best of many trials on one split is an optimistic estimate, the more so the more trials
    and knobs a model has; its score on users the search never saw is not. Seeded, so the same
    data and seed give the same halves."""
    validation = sp.csr_matrix(validation)
    users = np.flatnonzero(np.diff(validation.indptr) > 0)
    if len(users) < 2 * MIN_CHECK_USERS:
        return validation, None
    check = np.zeros(validation.shape[0], dtype=bool)
    check[np.random.default_rng([seed, 7]).permutation(users)[: len(users) // 2]] = True
    halves = []
    for rows in (~check, check):
        half = sp.csr_matrix(sp.diags(rows.astype(np.float32)) @ validation)
        half.eliminate_zeros()
        halves.append(half)
    return halves[0], halves[1]


def _grid(name: str, fixed: dict | None) -> dict[str, list]:
    """``name``'s grid with the ``fixed`` knobs it has reduced to their one value."""
    grid = dict(GRIDS.get(name, {}))
    for key, value in (fixed or {}).items():
        if key in grid:
            grid[key] = [value]
    return grid


def split_budget(candidates, total_seconds: float) -> dict[str, float]:
    weights = {c: BUDGET_WEIGHTS.get(c, 1.0) for c in candidates}
    total = sum(weights.values()) or 1.0
    return {c: total_seconds * w / total for c, w in weights.items()}


def tune_all(candidates, fit: sp.csr_matrix, validation: sp.csr_matrix, *, times: sp.csr_matrix | None = None,
             k: int = 10, budget_seconds: float = 300.0, seed: int = 42, metric: str = "ndcg",
             max_trials: int | None = None, patience: int | None = PATIENCE,
             fixed: dict | None = None) -> dict[str, TuningResult]:
    """Tune every candidate within ``budget_seconds`` of wall clock for all of them.

    Each model's share is what is left of the budget when its turn comes, split by
    ``BUDGET_WEIGHTS`` over the models still to go: time a model leaves unused goes to the next,
    time it overran (a model with nothing to search, popularity, still scores the validation
    users) is taken from them, so the search as a whole keeps the budget. A model's first trial
    reserves the longest validation scoring seen so far for its own scoring (it has no trial of
    its own to time yet)."""
    unknown = set(candidates) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown candidate models {sorted(unknown)}; known: {sorted(MODELS)}")
    candidates = list(candidates)
    started = time.perf_counter()
    results, scoring = {}, 0.0
    for i, name in enumerate(candidates):
        left = max(0.0, budget_seconds - (time.perf_counter() - started))
        budget = split_budget(candidates[i:], left)[name]
        results[name] = tune_model(name, fit, validation, times=times, k=k, budget_seconds=budget, seed=seed,
                                   metric=metric, max_trials=max_trials, patience=patience, fixed=fixed,
                                   scoring_seconds=scoring, search_left_seconds=left)
        scoring = max([scoring] + [t.eval_seconds for t in results[name].trials])
    return results


def complexity(name: str) -> int:
    """How many knobs a model has (its grid's dimensions): the parsimony order of ``choose``."""
    return len(GRIDS.get(name, {}))


def choose(results: dict[str, TuningResult], rule: str = "one_se") -> str:
    """The winning candidate on validation (each candidate's ``selection`` score: its best
    configuration on the check half of the validation users).

    ``rule="best"``: the best validation NDCG. ``rule="one_se"`` (default): the one-standard-error
    rule of cross-validation (Breiman et al. 1984; Hastie et al., ESL §7.10) — among candidates
    whose validation NDCG is within one standard error (over validation users) of the best,
    take the simplest (fewest tunable knobs), then the better score. Popularity (the baseline)
    wins only when it is strictly the best. A small validation edge of
    a more flexible model is not evidence it will stay ahead once every candidate is refit on
    more data; the simpler model is the more robust bet.
    """
    scored = {n: r for n, r in results.items() if np.isfinite(r.best_metric)}
    if not scored:
        return next(iter(results))
    best = max(scored.values(), key=lambda r: r.selection[0])
    if rule == "best":
        return best.model
    if rule != "one_se":
        raise ValueError(f"unknown choice rule {rule!r}; use 'one_se' or 'best'")
    if best.model == BASELINE:
        return best.model
    top, se = best.selection
    # The baseline is what the quality gate compares against, never a parsimony pick.
    close = [r for r in scored.values() if r.model != BASELINE and r.selection[0] >= top - se]
    return min(close, key=lambda r: (complexity(r.model), -r.selection[0])).model


def best_trial(result: TuningResult) -> Trial:
    return max(result.trials, key=lambda t: t.metric)
