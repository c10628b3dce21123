"""Tuning within a budget, the automatic choice, and the nightly train -> evaluate (gate, registry,
report) -> rolling evaluation path on small generated data."""
import json

import numpy as np
import pytest
from conftest import run_day

from nightly_topn import registry, splits
from nightly_topn.jobs.evaluate import QualityGateFailed, evaluate
from nightly_topn.jobs.rolling_eval import rolling_eval, rolling_eval_all, served
from nightly_topn.models import MODELS
from nightly_topn.storage import Storage
from nightly_topn.tuning import candidate_configs, choose, tune_all, tune_model

DATE, NEXT = "2024-03-01", "2024-03-02"


@pytest.fixture(scope="module")
def fit_val():
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 80
    taste = rng.normal(size=(n_users, 4))
    factor = rng.normal(size=(n_items, 4))
    logits = taste @ factor.T + rng.normal(0, 1.0, n_items)
    X = (logits + rng.gumbel(size=logits.shape) > 3.0)
    users, items = np.nonzero(X)
    outer = splits.random_split(users, seed=42)
    fit_rows, val_rows = splits.validation_split("random", users, items, None, outer.train, seed=42)
    shape = X.shape
    mat = lambda m: splits.binary_matrix(users[m], items[m], shape)  # noqa: E731
    return mat(fit_rows), mat(val_rows)


def test_budget_zero_runs_one_trial_and_search_is_deterministic(fit_val):
    fit, val = fit_val
    one = tune_model("ease", fit, val, budget_seconds=0)
    assert len(one.trials) == 1 and one.best_params["l2"] == candidate_configs("ease")[0]["l2"]
    assert np.isfinite(one.best_metric) and not one.over_budget
    a = tune_model("ease", fit, val, budget_seconds=60, max_trials=6)
    b = tune_model("ease", fit, val, budget_seconds=60, max_trials=6)
    assert len(a.trials) == 6
    assert a.best_params == b.best_params and a.best_metric == b.best_metric
    assert a.best_metric == max(t.metric for t in a.trials)
    assert a.best_metric >= one.best_metric


def test_automatic_choice_beats_popularity_on_validation(fit_val):
    fit, val = fit_val
    results = tune_all(["popularity", "itemknn", "ease"], fit, val, budget_seconds=20)
    winner = choose(results)
    assert winner != "popularity"
    assert results[winner].best_metric > results["popularity"].best_metric
    with pytest.raises(ValueError, match="unknown candidate"):
        tune_all(["nope"], fit, val)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning") / "data"
    first = run_day(DATE, root, model="auto", tuning_budget_seconds=10)
    return root, first


def test_nightly_train_picks_a_winner_registers_and_reports(nightly):
    root, results = nightly
    store = Storage.at(root)
    info = json.loads((store.partition("models", DATE) / "model_info.json").read_text())
    record = registry.read_run(store, DATE)
    assert info["model"] == record["winner"] and info["model"] in MODELS
    assert set(info["candidates"]) >= {"popularity", "ease", "itemknn", "als", "horizon"}
    # every candidate was tuned; only what the gate and the lists need was refit for the holdout
    assert info["holdout_models"] == [info["model"], "popularity"]
    for name, cand in record["candidates"].items():
        refit = (store.partition("models", DATE) / "eval" / name / "model.npz").is_file()
        assert cand["trials"] >= 1 and refit == (name in info["holdout_models"]) == ("eval" in cand["artifacts"])
    assert record["data_fingerprint"] and record["code_version"]
    assert record["candidates"][info["model"]]["holdout_metrics"]["ndcg"] == results["evaluate"]["metrics"][info["model"]]["ndcg"]
    assert record["gate"]["passed"]
    assert (store.partition("models", DATE) / "final" / info["model"] / "model.npz").is_file()
    evaluation = results["evaluate"]
    assert set(evaluation["metrics"]) == set(info["holdout_models"])
    m = evaluation["metrics"][info["model"]]
    for key in ("precision", "recall", "recall_capped", "ndcg", "map", "hit_rate", "mrr", "coverage", "novelty"):
        assert 0.0 <= m[key] <= (100 if key == "novelty" else 1.0)
    assert "diversity" in m and set(m["segments"]) <= {"new", "established"}
    assert evaluation["gate"]["passed"] and m["ndcg"] > evaluation["metrics"]["popularity"]["ndcg"]
    page = (store.partition("reports", DATE) / "report.html").read_text()
    assert info["model"] in page and "<svg" in page and "Quality gate" in page
    assert store.published()["date"] == DATE


def test_rerun_of_a_date_replays_the_choice(nightly):
    """The search is time-bounded; a re-run on the same data with the same params must still give the same lists."""
    from conftest import SMALL_WINDOW

    from nightly_topn.config import RunParams
    from nightly_topn.jobs.train import train

    root, _ = nightly
    store = Storage.at(root)
    before = json.loads((store.partition("models", DATE) / "model_info.json").read_text())
    again = train(DATE, root=root, params=RunParams(train_window_days=SMALL_WINDOW, top_n=10, tuning_budget_seconds=10))
    assert "replayed" in again["selection"]
    assert again["model"] == before["model"] and again["params"] == before["params"]
    assert again["model_version"] == before["model_version"]


def test_gate_failure_keeps_live_lists_and_alerts(nightly):
    root, _ = nightly
    store = Storage.at(root)
    with pytest.raises(QualityGateFailed, match="keeping the live lists"):
        run_day(NEXT, root, tuning_budget_seconds=5, min_lift_over_popularity=10.0)
    evaluation = json.loads((store.partition("reports", NEXT) / "evaluation.json").read_text())
    assert not evaluation["gate"]["passed"]
    assert evaluation["champion"]["date"] == DATE  # the live run was compared against
    alerts = json.loads((store.root / "alerts" / f"dt={NEXT}" / "quality_gate.try-1.json").read_text())
    assert "popularity" in alerts["reason"]
    assert store.published()["date"] == DATE  # nothing new published
    assert (store.partition("reports", NEXT) / "report.html").is_file()


def test_champion_tolerance_blocks_a_worse_candidate(nightly):
    root, _ = nightly
    from nightly_topn.config import RunParams

    store = Storage.at(root)
    # A fixed popularity model can never be >= the live personalised champion: gate must fail on both checks.
    run_day(NEXT, root, until="train", model="popularity", tuning_budget_seconds=1)
    with pytest.raises(QualityGateFailed):
        evaluate(NEXT, root=root, params=RunParams(model="popularity", champion_tolerance=0.0))
    evaluation = json.loads((store.partition("reports", NEXT) / "evaluation.json").read_text())
    failed = {c["check"] for c in evaluation["gate"]["checks"] if not c["passed"]}
    assert failed == {"beats popularity", "not worse than the live champion"}


def test_rolling_eval_scores_published_lists_against_the_next_days(nightly):
    root, _ = nightly
    summary = rolling_eval_all(root=root, horizon_days=7)
    dates = [d["date"] for d in summary["dates"]]
    assert DATE in dates and NEXT not in dates  # NEXT's gate failed: never published
    row = summary["dates"][dates.index(DATE)]
    assert row["days_landed"] == 1 and not row["complete"]  # only NEXT's raw events exist so far
    assert row["users"] > 0 and 0.0 <= row["ndcg"] <= 1.0 and 0.0 <= row["hit_rate"] <= 1.0
    assert row["popularity"]["users"] == row["users"]  # the baseline scored on the same users
    assert row["ndcg"] > row["popularity"]["ndcg"]  # the published lists beat it with what users did
    assert (Storage.at(root).root / "reports" / "rolling_eval.json").is_file()
    # the nightly job scores the date whose horizon the run date completes: nothing published 7 days before NEXT
    nightly_job = rolling_eval(NEXT, root=root, horizon_days=7)
    assert nightly_job["scored"] is None and "nothing was published for" in nightly_job["reason"]
    assert rolling_eval(NEXT, root=root, horizon_days=1)["scored"] == DATE  # NEXT completes DATE's 1-day horizon
    assert served(Storage.at(root), DATE)["horizon_days"] == 1  # complete now: what the gate and report read


def test_a_champion_whose_served_lists_lost_to_popularity_is_not_protected(nightly):
    """The holdout may favour the live model, but if what users did after its lists went out says
    popularity served them better, champion_tolerance does not keep a challenger out."""
    from nightly_topn.config import RunParams
    from nightly_topn.storage import write_json

    root, _ = nightly
    store = Storage.at(root)
    path = store.partition("reports", DATE) / "rolling_eval.json"
    write_json(path, {"date": DATE, "model_version": "v", "k": 10, "horizon_days": 7, "days_landed": 7,
                      "complete": True, "listed_users": 10, "users": 10, "ndcg": 0.05, "hit_rate": 0.1,
                      "recall": 0.1, "recall_capped": 0.1, "popularity": {"users": 10, "ndcg": 0.08}})
    try:
        run_day(NEXT, root, until="train", model="popularity", tuning_budget_seconds=1)
        with pytest.raises(QualityGateFailed):
            evaluate(NEXT, root=root, params=RunParams(model="popularity", champion_tolerance=0.0))
        evaluation = json.loads((store.partition("reports", NEXT) / "evaluation.json").read_text())
        checks = {c["check"]: c for c in evaluation["gate"]["checks"]}
        assert not checks["beats popularity"]["passed"]  # still refused: it is popularity itself
        assert checks["not worse than the live champion"]["passed"]
        assert "is not protected" in checks["not worse than the live champion"]["detail"]
        assert evaluation["served"]["date"] == DATE
        page = (store.partition("reports", NEXT) / "report.html").read_text()
        assert "What users did with the lists they were served" in page and "0.0800" in page
    finally:
        path.unlink()


def test_score_lists_by_hand():
    from nightly_topn.jobs.rolling_eval import score_lists

    out = score_lists(["a", "b", "c"], [["x", "y"], ["y", "z"], ["x"]], {"a": {"y"}, "b": {"q"}}, 2)
    assert out["users"] == 2
    assert out["hit_rate"] == pytest.approx(0.5)
    assert out["ndcg"] == pytest.approx(((1 / np.log2(3)) / 1.0 + 0.0) / 2)


def test_choice_rule_one_standard_error():
    from nightly_topn.tuning import Trial, TuningResult

    def result(name, metric, se):
        return TuningResult(name, {}, metric, trials=[Trial(name, {}, metric, {"ndcg_se": se}, 0.1)])

    # ALS is ahead by less than one SE: the simpler EASE (1 knob) wins; by more than one SE: ALS wins
    close = {"popularity": result("popularity", 0.10, 0.01), "ease": result("ease", 0.262, 0.008),
             "als": result("als", 0.267, 0.008)}
    assert choose(close) == "ease" and choose(close, rule="best") == "als"
    far = {**close, "als": result("als", 0.300, 0.008)}
    assert choose(far) == "als"
    # the baseline is never a parsimony pick, only the winner when strictly best
    near_pop = {"popularity": result("popularity", 0.259, 0.01), "als": result("als", 0.262, 0.01)}
    assert choose(near_pop) == "als"
    assert choose({"popularity": result("popularity", 0.3, 0.01), "als": result("als", 0.2, 0.01)}) == "popularity"


def test_models_are_compared_on_validation_users_the_search_never_saw(fit_val):
    """The best of many trials is optimistic on the users it was picked on; the candidates are
    compared on the other half of the validation users."""
    import scipy.sparse as sp

    from nightly_topn.tuning import MIN_CHECK_USERS, Trial, TuningResult, tune_model, validation_halves

    _, val = fit_val
    search, check = validation_halves(val, seed=42)
    users = set(np.flatnonzero(np.diff(val.indptr) > 0))
    halves = [set(np.flatnonzero(np.diff(m.indptr) > 0)) for m in (search, check)]
    assert halves[0] | halves[1] == users and not halves[0] & halves[1]  # every validation user, once
    assert abs(len(halves[0]) - len(halves[1])) <= 1 and (search + check != val).nnz == 0
    assert all((m != n).nnz == 0 for m, n in zip(validation_halves(val, seed=42), (search, check)))
    few = sp.csr_matrix(val[: 2 * MIN_CHECK_USERS - 1])
    assert validation_halves(few, seed=42)[1] is None  # too few users to score twice: no check half
    # a search records the check score of every trial; the choice uses it, not the search score
    fit, _ = fit_val
    result = tune_model("ease", fit, val, budget_seconds=30, max_trials=3, patience=None)
    assert all(t.check is not None for t in result.trials) and result.selection == max(
        result.trials, key=lambda t: t.metric).check

    def result_of(name, search_ndcg, check_ndcg):
        return TuningResult(name, {}, search_ndcg,
                            trials=[Trial(name, {}, search_ndcg, {"ndcg_se": 0.001}, 0.1, check=(check_ndcg, 0.001))])

    lucky = {"popularity": result_of("popularity", 0.1, 0.1), "als": result_of("als", 0.30, 0.25),
             "ease": result_of("ease", 0.27, 0.27)}
    assert choose(lucky) == "ease"  # ALS's edge was the search's optimism


def test_validation_fits_get_event_times(nightly, monkeypatch):
    """Order/recency models must see times during tuning too, not only in the final fits."""
    from nightly_topn.config import RunParams
    from nightly_topn.features import Features
    from nightly_topn.jobs import train as train_job

    root, _ = nightly
    seen = {}

    def fake_tune_all(names, fit, validation, **kwargs):
        seen.update(fit=fit, times=kwargs.get("times"))
        return {n: train_job.TuningResult(n, train_job.model_params(RunParams(), n), 0.1) for n in names}

    monkeypatch.setattr(train_job, "tune_all", fake_tune_all)
    pairs = splits.PairTable.of(Features.load(Storage.at(root).partition("features", DATE)))
    train_job.select(pairs, RunParams(tuning_budget_seconds=5))
    assert seen["times"] is not None and seen["times"].nnz == seen["fit"].nnz
    assert np.array_equal(seen["times"].indices, seen["fit"].indices)


def test_a_candidate_that_cannot_train_is_excluded_not_fatal(nightly, monkeypatch):
    from nightly_topn import tuning
    from nightly_topn.config import RunParams
    from nightly_topn.features import Features
    from nightly_topn.jobs import train as train_job

    root, _ = nightly
    monkeypatch.setattr(train_job, "candidates_for", lambda params: ["popularity", "ease", "puresvd"])
    monkeypatch.setitem(tuning.GRIDS, "ease", {"max_dense_gb": [1e-9]})  # EASE refuses: "too large"
    pairs = splits.PairTable.of(Features.load(Storage.at(root).partition("features", DATE)))
    winner, results, info = train_job.select(pairs, RunParams(tuning_budget_seconds=5))
    assert "ease" not in results and "max_dense_gb" in info["excluded"]["ease"]
    assert winner == "puresvd"


def test_a_trial_past_the_budget_is_stopped_and_recorded_and_no_trial_starts_after(fit_val):
    """A search keeps its budget at any data size: an iterative trial stops where the budget ends
    (recorded in the registry's trial log), and no further trial starts once the longest trial
    so far no longer fits in what is left."""
    fit, val = fit_val
    result = tune_model("bpr", fit, val, budget_seconds=0.05, fixed={"iterations": 100_000})
    assert len(result.trials) == 1
    stopped = result.trials[0].stopped
    assert stopped["unit"] == "iterations" and stopped["planned"] == 100_000 and stopped["done"] < 100_000
    assert result.summary()["trial_log"][0]["stopped"] == stopped
    assert not result.exhausted
    assert np.isfinite(result.best_metric)  # the stopped model was scored as far as it got


def test_the_whole_search_keeps_one_budget_and_a_model_without_time_is_not_started(fit_val):
    """The budget is for the whole search: each model's share is what is left when its turn comes
    (popularity, with nothing to search, still spends time scoring), and a model whose share is
    within the validation scoring time the models before it took is not started, with the reason."""
    from nightly_topn.tuning import split_budget

    fit, val = fit_val
    results = tune_all(["popularity", "itemknn", "ease"], fit, val, budget_seconds=6)
    static = split_budget(["popularity", "itemknn", "ease"], 6)
    assert results["popularity"].seconds > 0
    assert results["itemknn"].budget_seconds < static["itemknn"]  # popularity's time came out of the rest
    spent = results["popularity"].seconds + results["itemknn"].seconds
    assert results["ease"].budget_seconds <= 6 - spent + 1e-6
    starved = tune_model("als", fit, val, budget_seconds=0.5, scoring_seconds=2.0, search_left_seconds=1.5)
    assert starved.over_budget and len(starved.trials) == 1 and not np.isfinite(starved.best_metric)
    assert "no time left for als" in starved.trials[0].error and "last 1.5 s" in starved.trials[0].error
    # a share below the reserve, with time left in the search: started (a quick fit overruns its share a little)
    squeezed = tune_model("als", fit, val, budget_seconds=0.5, scoring_seconds=2.0, search_left_seconds=5.0)
    assert not squeezed.over_budget and np.isfinite(squeezed.best_metric)


def test_the_search_runs_on_a_user_sample_and_the_refits_on_every_user(tmp_path, monkeypatch):
    """At volume each trial's cost is bounded by ``search_users``: the search fits and validates on
    a seeded sample of users, the registry and the report say so, and the chosen model is refit on
    every user (the lists cover everyone)."""
    from nightly_topn.jobs import train as train_job

    shapes = []
    real = train_job.tune_all

    def spy(names, fit, validation, **kwargs):
        shapes.append((fit.shape, validation.shape))
        return real(names, fit, validation, **kwargs)

    monkeypatch.setattr(train_job, "tune_all", spy)
    root = tmp_path / "data"
    run_day(DATE, root, model="auto", tuning_budget_seconds=3, search_users=40, until="evaluate")
    store = Storage.at(root)
    sample = registry.read_run(store, DATE)["selection"]["search_sample"]
    assert shapes[0][0][0] == shapes[0][1][0] == sample["users"] == 40 < sample["of_users"]
    info = registry.model_info(store, DATE)
    from nightly_topn.models.base import load_model

    assert load_model(store.partition("models", DATE) / "final" / info["model"]).n_users == sample["of_users"]
    page = (store.partition("reports", DATE) / "report.html").read_text()
    assert "seeded sample of 40 of" in page


def test_a_torch_fit_that_cannot_finish_one_epoch_in_its_share_is_left_out(fit_val, monkeypatch):
    """A fraction of an epoch is no model: an epoch-based fit judges its pace on its first
    mini-batches and gives up (``OutOfTime``) when one epoch would end past the deadline; the
    search records why and scores nothing for it. Far from the deadline it carries on."""
    import time

    from nightly_topn.models import base

    model = MODELS["horizon"]()
    monkeypatch.setattr(base, "FIRST_PASS_PROBE_SECONDS", 0.01)
    with base.fit_deadline(time.monotonic() + 10):
        assert not model._stop_here(0.001, 60, "epochs")
        time.sleep(0.05)
        with pytest.raises(base.OutOfTime, match="one epoch of horizon would take"):
            model._stop_here(0.002, 60, "epochs")  # 0.001 epoch per 50 ms: ~50 s an epoch
    fast = MODELS["horizon"]()
    with base.fit_deadline(time.monotonic() + 10):
        assert not fast._stop_here(0.001, 60, "epochs")
        time.sleep(0.05)
        assert not fast._stop_here(0.5, 60, "epochs")  # ~0.1 s an epoch
    assert fast.stopped_early is None

    def slow_fit(self, interactions, times=None):
        raise base.OutOfTime("one epoch of horizon would take ~99 s, more than the 1.0 s left")

    monkeypatch.setattr(MODELS["horizon"], "fit", slow_fit)
    fit, val = fit_val
    result = tune_model("horizon", fit, val, budget_seconds=1)
    assert result.over_budget and len(result.trials) == 1 and "~99 s" in result.trials[0].error
    assert result.trials[0].eval_seconds == 0.0


def test_holdout_candidates_all_scores_every_candidate_on_the_holdout(nightly):
    """For the report's comparison a run can ask for every candidate on the holdout (one more fit each);
    the choice is the same, replayed from the registry."""
    root, first = nightly
    again = run_day(DATE, root, model="auto", tuning_budget_seconds=10, holdout_candidates="all")
    info = registry.model_info(Storage.at(root), DATE)
    assert info["model"] == first["train"]["model"]
    assert set(info["holdout_models"]) == set(info["candidates"]) == set(again["evaluate"]["metrics"])


def test_a_one_step_fit_estimated_above_its_share_is_left_out_with_the_estimate(fit_val, monkeypatch):
    """EASE cannot stop at a deadline: when its estimated fit cost exceeds its share of the budget,
    the search does not start it and says why (train then excludes it, or trains it untuned when the
    run asked for it by name)."""
    from nightly_topn.models import EASE

    fit, val = fit_val
    monkeypatch.setattr(EASE, "estimate_fit_seconds", lambda self, X: 500.0)
    result = tune_model("ease", fit, val, budget_seconds=5)
    assert result.over_budget and len(result.trials) == 1 and not np.isfinite(result.trials[0].metric)
    assert "~500 s" in result.trials[0].error and "5.0 s share" in result.trials[0].error
    monkeypatch.setattr(EASE, "estimate_fit_seconds", lambda self, X: 0.0)
    assert not tune_model("ease", fit, val, budget_seconds=5, max_trials=2).over_budget


def test_ease_estimates_its_fit_from_smaller_fits():
    import scipy.sparse as sp

    from nightly_topn.models import EASE

    small = sp.random(500, 300, density=0.05, format="csr", random_state=0)
    assert EASE().estimate_fit_seconds(small) == 0.0  # no larger than the probes: just fit it
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 20_000, 200_000), rng.integers(0, 7_000, 200_000)
    big = sp.csr_matrix((np.ones(200_000, np.float32), (rows, cols)), shape=(20_000, 7_000))
    assert EASE().estimate_fit_seconds(big) > 0.0
