"""Cold start: new items get attribute neighbours, are scored from them by any model, reach the lists."""
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from conftest import run_day
from nightly_topn import cold_start, scoring
from nightly_topn.config import RunParams
from nightly_topn.features import Features, read_new_items
from nightly_topn.jobs.preprocess import prepare
from nightly_topn.models import ALS, Popularity
from nightly_topn.models.base import Recommender

DATE = "2024-03-04"


def catalogue(rows):
    return pa.table({"item_id": [r[0] for r in rows], "title": [r[1] for r in rows],
                     "categories": [r[2] for r in rows]},
                    schema=pa.schema([("item_id", pa.string()), ("title", pa.string()),
                                      ("categories", pa.list_(pa.string()))]))


WARM = [("w0", "Space Wars", ["sci-fi", "action"]), ("w1", "Space Trek", ["sci-fi"]),
        ("w2", "Love Actually", ["romance"]), ("w3", "Cooking Show", ["cooking"]),
        ("w4", "Love in Space", ["romance", "sci-fi"])]
NEW = [("n0", "Space Odyssey", ["Sci-Fi"]), ("n1", "Gardening", ["garden"])]


def test_attribute_vectors_and_neighbours_on_a_hand_made_catalogue():
    x = cold_start.attribute_matrix(catalogue(WARM + NEW))
    # tokens two items share: c:sci-fi (4), c:romance (2), t:space (4), t:love (2); the rest occur once
    assert x.shape == (7, 4)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, [1, 1, 1, 0, 1, 1, 0], atol=1e-6)  # w3, n1 share nothing: zero rows
    n = 7
    idf = lambda df: np.log((1 + n) / (1 + df)) + 1  # noqa: E731
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    # n0 = {sci-fi, space}; w1 has the same two tokens, w0 too (its own tokens are dropped), w4 adds the "love"s
    indptr, nb, w = cold_start.neighbours(x[5:], x[:5], m=3)
    assert indptr.tolist() == [0, 3, 3]  # n1 has no overlap: no neighbours
    assert nb[:2].tolist() == [0, 1]  # w0 and w1 tie (cosine 1): lower index first ...
    cos_w4 = unit(np.array([idf(4), idf(4), 0, 0])) @ unit(np.array([idf(4), idf(4), idf(2), idf(2)]))
    np.testing.assert_allclose(w, np.array([1, 1, cos_w4]) / (2 + cos_w4), rtol=1e-5)
    assert nb[2] == 4 and abs(w.sum() - 1) < 1e-6
    _, nb, _ = cold_start.neighbours(x[5:], x[:5], m=3, prior=np.array([1, 5, 0, 0, 0]))
    assert nb[:2].tolist() == [1, 0]  # ... unless the prior (popularity) says otherwise


def test_preprocess_selects_recent_items_outside_the_catalogue():
    t = pd.Timestamp("2024-03-04 12:00", tz="UTC")
    events = pd.DataFrame({
        "user_id": ["u0", "u1", "u0", "u1", "u0", "u1", "u2", "u2"],
        "item_id": ["w0", "w0", "w1", "w1", "n0", "w4", "w4", "w1"],
        "event_type": "click", "weight": np.float32(1.0), "event_time": t})
    rows = WARM + NEW + [("old", "Space Old", ["sci-fi"]), ("soon", "Space Soon", ["sci-fi"])]
    attrs = catalogue(rows).append_column("release_time", pa.array(
        [dt.datetime(2023, 1, 1)] * 5 + [None, dt.datetime(2024, 3, 1), dt.datetime(2023, 1, 1),
                                         dt.datetime(2024, 3, 9)], pa.timestamp("us", tz="UTC")))
    out = prepare(events, dt.date(2024, 3, 4), RunParams(min_item_interactions=2), attrs)
    assert out["item_map"]["item_id"].tolist() == ["w0", "w1", "w4"]  # n0 (one user) dropped from the catalogue
    table = out["new_items"]
    # n0: no release time, first seen today; n1: no overlap; old: released long ago; soon: not released yet
    assert table.column("item_id").to_pylist() == ["n0"]
    assert out["stats"]["new_items"]["candidates"] == 2 and out["stats"]["new_items"]["without_attribute_overlap"] == 1
    row = table.to_pylist()[0]
    assert row["seen_users"] == [0]  # u0 met it already: never shown it
    assert set(row["neighbors"]) == {0, 1, 2} and abs(sum(row["weights"]) - 1) < 1e-6
    assert prepare(events, dt.date(2024, 3, 4), RunParams(new_item_days=0), attrs).keys() == out.keys() - {"new_items"}


def factor_model(user_f, item_f):
    user_f, item_f = np.asarray(user_f, np.float32), np.asarray(item_f, np.float32)
    model = ALS(factors=user_f.shape[1])
    model.user_factors, model.item_factors = user_f, item_f
    model.known, model.n_items = np.ones(len(user_f), dtype=bool), len(item_f)
    return model


class ScoresOnly(Recommender):
    """The same scores without factors: goes through the scorer's generic path."""

    name = "scores_only"

    def __init__(self, inner):
        super().__init__()
        self.inner, self.n_items = inner, inner.n_items

    def fit(self, interactions, times=None):
        return self

    def score(self, users, history):
        return self.inner.score(users, history)

    def has_user(self, users, history=None):
        return self.inner.has_user(users, history)

    def _arrays(self):
        return {}

    def _restore(self, arrays):
        pass


def weights_of(neighbours: list[dict[int, float]], n_warm: int) -> sp.csr_matrix:
    if not neighbours:
        return sp.csr_matrix((n_warm, 0), dtype=np.float32)
    rows = [sp.csr_matrix((list(d.values()), list(d.keys()), [0, len(d)]), shape=(1, n_warm)) for d in neighbours]
    return sp.csr_matrix(sp.vstack(rows).T, dtype=np.float32)


def test_a_new_item_like_what_a_user_loves_is_ranked_for_them_unless_seen():
    # items 0-3 sci-fi, 4-7 romance; user 0 loves sci-fi, user 1 romance; new item 8 = a sci-fi item
    rng = np.random.default_rng(0)
    item_f = np.vstack([np.tile([1.0, 0.0], (4, 1)), np.tile([0.0, 1.0], (4, 1))]) + rng.normal(0, 0.05, (8, 2))
    model = factor_model([[1.0, 0.0], [0.0, 1.0]], item_f)
    x = cold_start.attribute_matrix(catalogue([(f"s{i}", "Space", ["sci-fi"]) for i in range(4)]
                                              + [(f"r{i}", "Love", ["romance"]) for i in range(4)]
                                              + [("new", "Space Again", ["sci-fi"])]))
    indptr, nb, w = cold_start.neighbours(x[8:], x[:8], m=4)
    assert sorted(nb.tolist()) == [0, 1, 2, 3]
    table = cold_start.new_item_table(np.array(["new"]), np.array([0]), indptr, nb, w, np.array([0, 0]),
                                      np.empty(0, np.int32))
    weights = cold_start.weight_matrix(*(table.column(c).combine_chunks() for c in ("neighbors", "weights")), 8)
    history = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 1], [0, 1, 4])), shape=(2, 9), dtype=np.float32)
    idx, vals = scoring.TopNScorer(model, 4, cold_weights=weights).recommend(np.arange(2), history)
    assert 8 in idx[0, :2].tolist()  # among user 0's two best: it is as sci-fi as what they love
    assert 8 not in idx[1].tolist()  # the romance fan gets romance first
    for row in idx:
        assert len(set(row.tolist())) == len(row)  # a new item never duplicates a warm one
    assert not {0, 1} & set(idx[0].tolist()) and 4 not in idx[1]
    seen = history.tolil()
    seen[0, 8] = 1.0  # user 0 met the new item already
    idx, _ = scoring.TopNScorer(model, 8, cold_weights=weights).recommend(np.arange(2), seen.tocsr())
    assert 8 not in idx[0].tolist() and 8 in idx[1].tolist()


def random_problem(n_users=300, n_warm=400, n_cold=37, seed=0):
    rng = np.random.default_rng(seed)
    model = factor_model(rng.standard_normal((n_users, 8)), rng.standard_normal((n_warm, 8)))
    neighbours = [dict(zip(rng.choice(n_warm, 5, replace=False).tolist(), (np.ones(5) / 5).tolist()))
                  for _ in range(n_cold)]
    weights = weights_of(neighbours, n_warm)
    rows = np.repeat(np.arange(n_users), 12)
    cols = rng.integers(0, n_warm + n_cold, len(rows))
    history = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_warm + n_cold))
    history.sum_duplicates()
    return model, weights, history


def reference(model, weights, history, n):
    """Dense scores of warm ∪ cold, seen masked, stable top-n (ties: lower index)."""
    n_warm = weights.shape[0]
    warm = model.score(np.arange(history.shape[0]), history[:, :n_warm])
    scores = np.hstack([warm, warm @ weights.toarray()]).astype(np.float32)
    scores[history.toarray() > 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(scores, order, axis=1)


def test_fused_and_generic_paths_agree_with_the_dense_reference():
    model, weights, history = random_problem()
    users = np.arange(history.shape[0])
    fused = scoring.TopNScorer(model, 25, batch_size=64, cold_weights=weights)
    generic = scoring.TopNScorer(ScoresOnly(model), 25, batch_size=64, cold_weights=weights)
    assert fused.fused and not generic.fused
    (fi, fv), (gi, gv) = fused.recommend(users, history), generic.recommend(users, history)
    ref_i, ref_v = reference(model, weights, history, 25)
    assert np.array_equal(fi, gi) and np.array_equal(fi, ref_i)
    np.testing.assert_allclose(fv, ref_v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gv, ref_v, rtol=1e-5, atol=1e-5)
    assert (fi >= 400).any() and not (history.toarray()[users[:, None], fi] > 0).any()
    # fold-in users (not trained) take the generic path inside the fused scorer: same answer
    model.known = model.known.copy()
    model.known[::5] = False
    assert np.array_equal(scoring.TopNScorer(model, 25, batch_size=64, cold_weights=weights)
                          .recommend(users, history)[0], reference(model, weights, history, 25)[0])


def test_without_new_items_the_scorer_is_unchanged():
    model, weights, history = random_problem(n_cold=0)
    users = np.arange(history.shape[0])
    plain = scoring.TopNScorer(model, 10).recommend(users, history)
    empty = scoring.TopNScorer(model, 10, cold_weights=weights).recommend(users, history)
    assert weights.shape[1] == 0 and np.array_equal(plain[0], empty[0]) and np.array_equal(plain[1], empty[1])
    pop = Popularity().fit(history)
    assert np.array_equal(scoring.TopNScorer(pop, 10, cold_weights=weights).recommend(users, history)[0],
                          pop.recommend(users, history, 10)[0])


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """One small generated day with new items, and the same day with the knob off."""
    on, off = tmp_path_factory.mktemp("cold_on"), tmp_path_factory.mktemp("cold_off")
    return {"on": (on, run_day(DATE, on)), "off": (off, run_day(DATE, off, new_item_days=0))}


def lists(result) -> dict:
    manifest = json.loads((Path(result["topn"]["path"]) / "_manifest.json").read_text())
    table = pa.concat_tables(pq.read_table(Path(result["topn"]["path"]) / f) for f in manifest["files"])
    return manifest, {r["user_id"]: (r["item_ids"], r["scores"]) for r in table.to_pylist()}


def test_pipeline_publishes_new_items_in_lists(days):
    root, result = days["on"]
    features_dir = root / "features" / f"dt={DATE}"
    new = read_new_items(features_dir)
    assert new is not None and len(new) > 0
    features = Features.load(features_dir)
    new_ids = set(new.ids.to_pylist())
    assert not new_ids & set(features.item_ids)  # item_map stays the warm catalogue
    manifest, by_user = lists(result)
    shown = {i for items, _ in by_user.values() for i in items if i in new_ids}
    with_new = sum(any(i in new_ids for i in items) for items, _ in by_user.values())
    assert shown and manifest["new_items"]["new_items_shown"] == len(shown)
    assert manifest["new_items"]["users_with_new_item"] == with_new > 0
    seen = new.seen.tocoo()
    for user, j in zip(seen.row, seen.col):  # who met a new item is never shown it
        assert new.ids[j].as_py() not in by_user[features.user_ids[user]][0]
    assert all(len(set(items)) == len(items) for items, _ in by_user.values())
    assert result["publish"]  # the top-N gate passed with new items in the catalogue
    evaluation = json.loads((root / "reports" / f"dt={DATE}" / "evaluation.json").read_text())
    assert evaluation["cold_start"]["new_items"]["new_items"] == len(new)
    assert evaluation["cold_start"]["new_users"]["metrics"]["popularity"]["users"] > 0
    assert "New items and new users" in (root / "reports" / f"dt={DATE}" / "report.html").read_text()


def test_without_new_items_the_lists_are_the_warm_lists(days):
    (on_root, on), (off_root, off) = days["on"], days["off"]
    assert not (off_root / "features" / f"dt={DATE}" / "new_items.parquet").exists()
    for name in ("interactions", "item_map", "user_map"):  # the knob changes no warm data
        a, b = (pq.read_table(r / "features" / f"dt={DATE}" / f"{name}.parquet") for r in (on_root, off_root))
        assert a.equals(b)
    off_manifest, off_lists = lists(off)
    assert off_manifest["new_items"] is None and off["evaluate"]["cold_start"]["new_items"] is None
    new_ids = set(read_new_items(on_root / "features" / f"dt={DATE}").ids.to_pylist())
    _, on_lists = lists(on)
    assert on_lists.keys() == off_lists.keys()
    for user, (items, scores) in on_lists.items():
        # new items take slots; the warm items keep their order and scores: a prefix of the plain list
        warm = [(i, s) for i, s in zip(items, scores) if i not in new_ids]
        plain = list(zip(*off_lists[user]))[: len(warm)]
        assert [i for i, _ in warm] == [i for i, _ in plain]
        np.testing.assert_allclose([s for _, s in warm], [s for _, s in plain], rtol=1e-5)
