"""Confidences reach the models: the transform knob, weighted fold-in, the search over it, and
what preprocess makes of event types, their weights and their age."""
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from nightly_topn.config import ConfigError, RunParams, event_weights
from nightly_topn.models import MODELS, load_model
from nightly_topn.models.confidence import weigh

WEIGHTED = {"als": {"factors": 8, "iterations": 5, "regularization": 0.5}, "ease": {"l2": 50.0},
            "puresvd": {"factors": 8}, "itemknn": {"neighbours": 20},
            "multvae": {"hidden": 32, "latent": 8, "epochs": 3}, "horizon": {"hidden": 16, "epochs": 3}}


def test_each_scheme_weighs_every_positive():
    X = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.5, 0.0, 8.0]], dtype=np.float32))
    assert weigh(X, "binary").toarray().tolist() == [[1, 1, 0], [1, 0, 1]]
    assert np.allclose(weigh(X, "log").toarray(), np.log1p(X.toarray()))
    assert np.allclose(weigh(X, "linear").toarray(), X.toarray())
    assert weigh(X, "log").nnz == weigh(X, "binary").nnz == 4  # the same positives, whatever the weights
    with pytest.raises(ValueError, match=r"confidence must be one of \('binary', 'log', 'linear'\), got 'bm25'"):
        weigh(X, "bm25")
    with pytest.raises(ValueError, match="confidence must be one of"):
        MODELS["als"](confidence="counts")


@pytest.fixture(scope="module")
def confidences():
    """Interactions with confidences that vary (1..20), and the same positives with other values."""
    rng = np.random.default_rng(0)
    X = sp.random(120, 40, density=0.15, format="csr", random_state=1, dtype=np.float32)
    X.data = rng.integers(1, 21, X.nnz).astype(np.float32)
    other = X.copy()
    other.data = rng.permutation(other.data)
    return X, other


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_a_weighted_model_learns_from_the_values_and_a_binary_one_ignores_them(name, confidences, tmp_path):
    X, other = confidences
    users, history = np.arange(30), X[:30]
    binary = [MODELS[name](**WEIGHTED[name], confidence="binary").fit(m).score(users, history) for m in (X, other)]
    assert np.allclose(binary[0], binary[1], atol=1e-5)  # same positives, same model
    weighted = MODELS[name](**WEIGHTED[name], confidence="log").fit(X)
    moved = MODELS[name](**WEIGHTED[name], confidence="log").fit(other)
    assert not np.allclose(weighted.score(users, history), moved.score(users, history), atol=1e-4)
    weighted.save(tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert loaded.params["confidence"] == "log"
    assert np.allclose(loaded.score(users, history), weighted.score(users, history), atol=1e-5)


@pytest.mark.parametrize("name", ["als", "ease", "itemknn", "multvae", "horizon"])
def test_history_rows_are_weighed_like_the_training_data(name, confidences):
    """A new user's history [a: 20, b: 1] and [a: 1, b: 20] score differently under a weighted
    model and identically under a binary one (fold-in and item-item products use the values)."""
    X, _ = confidences
    a, b = 0, 1
    rows = sp.csr_matrix((np.array([20.0, 1.0, 1.0, 20.0], dtype=np.float32), [a, b, a, b], [0, 2, 4]), shape=(2, 40))
    new_users = np.array([X.shape[0], X.shape[0] + 1])
    for scheme, differ in (("binary", False), ("linear", True)):
        model = MODELS[name](**WEIGHTED[name], confidence=scheme).fit(X)
        s = model.score(new_users, rows)
        assert (not np.allclose(s[0], s[1], atol=1e-5)) is differ, scheme


def test_the_search_tries_the_transforms_and_can_hold_one_fixed(confidences):
    from nightly_topn.tuning import tune_model

    X, _ = confidences
    fit, val = X.copy(), X.copy()
    fit.data[::3] = 0
    fit.eliminate_zeros()
    val = val - fit
    val.eliminate_zeros()
    searched = tune_model("ease", fit, val, budget_seconds=60, max_trials=40, patience=None)
    assert {t.params["confidence"] for t in searched.trials} == {"binary", "log", "linear"}
    assert "confidence" in searched.best_params  # recorded with the chosen configuration
    held = tune_model("ease", fit, val, budget_seconds=60, max_trials=40, patience=None, fixed={"confidence": "binary"})
    assert {t.params["confidence"] for t in held.trials} == {"binary"}


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "weight", "event_time"]).assign(
        event_time=lambda f: pd.to_datetime(f["event_time"], utc=True), weight=lambda f: f["weight"].astype("float32"))


def _confidence(prepared):
    inter = prepared["interactions"].merge(prepared["user_map"], on="user_index").merge(prepared["item_map"], on="item_index")
    return {(u, i): c for u, i, c in zip(inter["user_id"], inter["item_id"], inter["confidence"])}


EVENTS = [("u1", "i1", "purchase", 2.0, "2024-03-01T10:00"), ("u1", "i2", "play", 3.0, "2024-03-01T11:00"),
          ("u2", "i1", "view", 1.0, "2024-03-01T12:00"), ("u2", "i2", "view", 1.0, "2024-03-01T12:30"),
          ("u2", "i2", "view", 1.0, "2024-03-01T12:40")]


def test_confidence_is_type_weight_times_event_weight_and_the_deployment_decides_the_table(monkeypatch):
    from nightly_topn.jobs.preprocess import prepare

    params = RunParams(min_item_interactions=1)
    monkeypatch.delenv("NIGHTLY_TOPN_EVENT_WEIGHTS", raising=False)
    conf = _confidence(prepare(_events(EVENTS), dt.date(2024, 3, 1), params))
    # purchase 4 x quantity 2; play 2 x 3 plays; views count once each
    assert conf == {("u1", "i1"): 8.0, ("u1", "i2"): 6.0, ("u2", "i1"): 1.0, ("u2", "i2"): 2.0}
    monkeypatch.setenv("NIGHTLY_TOPN_EVENT_WEIGHTS", json.dumps({"purchase": 10, "view": 0.5}))
    assert event_weights()["purchase"] == 10.0 and event_weights()["play"] == 2.0
    conf = _confidence(prepare(_events(EVENTS), dt.date(2024, 3, 1), params))
    assert conf[("u1", "i1")] == 20.0 and conf[("u2", "i2")] == 1.0


@pytest.mark.parametrize("value, message", [
    ("{not json", "NIGHTLY_TOPN_EVENT_WEIGHTS is not JSON"),
    ('["purchase"]', "must be a JSON object of event type -> weight, got a list"),
    ('{"like": 3}', "unknown event type 'like'; known: ['click', 'play', 'purchase', 'rating', 'view']"),
    ('{"purchase": -1}', "the weight of 'purchase' must be a finite number >= 0, got -1"),
    ('{"view": 0, "click": 0, "play": 0, "rating": 0, "purchase": 0}', "weighs every event type 0"),
])
def test_a_bad_event_weight_table_is_refused_in_one_line(monkeypatch, value, message):
    monkeypatch.setenv("NIGHTLY_TOPN_EVENT_WEIGHTS", value)
    with pytest.raises(ConfigError, match=None) as info:
        event_weights()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_recency_half_life_halves_an_event_per_half_life(monkeypatch):
    from nightly_topn.jobs.preprocess import prepare

    monkeypatch.delenv("NIGHTLY_TOPN_EVENT_WEIGHTS", raising=False)
    rows = [("u1", "i1", "view", 1.0, "2024-03-02T00:00"), ("u1", "i2", "view", 1.0, "2024-02-29T00:00"),
            ("u2", "i1", "view", 1.0, "2024-02-27T00:00"), ("u2", "i2", "view", 1.0, "2024-03-01T12:00")]
    params = RunParams(min_item_interactions=1, recency_half_life_days=2.0)
    conf = _confidence(prepare(_events(rows), dt.date(2024, 3, 2), params))  # the day ends 2024-03-03T00:00
    assert conf[("u1", "i1")] == pytest.approx(0.5 ** 0.5)  # 1 day old
    assert conf[("u1", "i2")] == pytest.approx(0.5 ** 1.5)  # 3 days old (2024 is a leap year)
    assert conf[("u2", "i1")] == pytest.approx(0.5 ** 2.5)  # 5 days old
    assert conf[("u2", "i2")] == pytest.approx(0.5 ** 0.75)  # 1.5 days old
    plain = _confidence(prepare(_events(rows), dt.date(2024, 3, 2), RunParams(min_item_interactions=1)))
    assert set(plain.values()) == {1.0}
