"""Metrics and protocols: exact definitions, agreement with implicit, the R and T split rules."""
import numpy as np
import pytest
import scipy.sparse as sp

from nightly_topn import splits
from nightly_topn.evaluation import intra_list_diversity, per_user_accuracy, ranking_metrics


def test_metrics_by_hand():
    recs = np.array([[3, 1, 7, -1], [0, 2, 4, 5]])
    rel = sp.csr_matrix(([1, 1, 1, 1, 1, 1], ([0, 0, 1, 1, 1, 1], [1, 9, 5, 6, 7, 8])), shape=(2, 10))
    m = ranking_metrics(recs, rel, 4, n_items=10)
    # user 0: hit at rank 2 of |rel|=2; user 1: hit at rank 4 of |rel|=4
    ndcg0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    ndcg1 = (1 / np.log2(5)) / sum(1 / np.log2(i + 2) for i in range(4))
    assert m["ndcg"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["precision"] == pytest.approx((1 / 4 + 1 / 4) / 2)
    assert m["recall"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["recall_capped"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["map"] == pytest.approx(((1 / 2) / 2 + (1 / 4) / 4) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["hit_rate"] == 1.0
    assert m["coverage"] == pytest.approx(7 / 10)  # 3,1,7,0,2,4,5
    # capped recall differs from recall when |rel| > K
    many = sp.csr_matrix(np.ones((1, 10)))
    one = per_user_accuracy(np.array([[0, 1]]), many, 2)
    assert one["recall"][0] == pytest.approx(0.2) and one["recall_capped"][0] == pytest.approx(1.0)


def test_users_without_relevant_items_are_skipped_and_segments_split():
    recs = np.array([[0, 1], [0, 1], [2, 3]])
    rel = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]))
    m = ranking_metrics(recs, rel, 2, segments=np.array(["new", "new", "established"]))
    assert m["users"] == 2
    assert m["segments"]["new"]["users"] == 1 and m["segments"]["new"]["hit_rate"] == 1.0
    assert m["segments"]["established"]["ndcg"] == pytest.approx((1 / np.log2(3)) / 1.0)


def test_intra_list_diversity():
    cats = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1]]))
    assert intra_list_diversity(np.array([[0, 1]]), cats) == pytest.approx(0.0)
    assert intra_list_diversity(np.array([[0, 2]]), cats) == pytest.approx(1.0)


def test_ndcg_and_map_agree_exactly_with_implicit():
    from implicit.evaluation import ranking_metrics_at_k

    rng = np.random.default_rng(0)
    n_users, n_items, k = 60, 40, 10
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.15).astype(np.float32))
    test = sp.csr_matrix(((rng.random((n_users, n_items)) < 0.2) & (train.toarray() == 0)).astype(np.float32))
    lists = np.argsort(-rng.random((n_users, n_items)), axis=1)[:, :k].astype(np.int32)
    lists[::7, 6:] = -1  # some short lists

    class FixedLists:  # implicit asks a "model" for the top K of a batch of users
        def recommend(self, userid, user_items, N=10, **kwargs):
            ids = lists[np.asarray(userid)][:, :N]
            return ids, np.zeros(ids.shape, dtype=np.float32)

    theirs = ranking_metrics_at_k(FixedLists(), train, test, K=k, show_progress=False)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ours = ranking_metrics(lists[users], test[users], k)
    assert ours["ndcg"] == pytest.approx(theirs["ndcg"], abs=1e-12)
    assert ours["map"] == pytest.approx(theirs["map"], abs=1e-12)
    # implicit's "precision" is pooled capped recall: sum(hits) / sum(min(|rel|, K)) — not our P@K
    hits = sum(np.isin(lists[u], test[u].indices).sum() for u in users)
    pooled = hits / sum(min(test[u].nnz, k) for u in users)
    assert theirs["precision"] == pytest.approx(pooled)
    assert ours["precision"] != pytest.approx(theirs["precision"])


def test_random_protocol_rule():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 30, 600)
    s = splits.random_split(users, seed=42)
    keys = np.random.default_rng(42).random(len(users))
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        n = len(rows)
        expected = max(1, round(0.2 * n)) if n >= 5 else 0
        chosen = set(rows[np.argsort(keys[rows], kind="stable")[:expected]])
        assert set(np.flatnonzero(s.relevant & (users == u))) == chosen
    assert not (s.train & s.relevant).any() and (s.train | s.relevant).all()
    small = splits.random_split(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1]), seed=42)
    assert small.relevant[:4].sum() == 0 and small.relevant[4:].sum() == 1
    again = splits.random_split(users, seed=42)
    assert np.array_equal(again.relevant, s.relevant)


def test_temporal_protocol_rule():
    users = np.array([0, 0, 1, 1, 2, 2, 0, 3, 1, 2])
    items = np.array([0, 1, 0, 2, 1, 2, 3, 0, 1, 4])
    times = np.arange(10) * 10
    s = splits.temporal_split(users, items, times, quantile=0.8)
    cutoff = np.percentile(times, 80)
    assert s.info["cutoff"] == cutoff
    assert np.array_equal(s.train, times < cutoff)
    # rows at/after the cutoff: (3,0) user 3 unseen -> dropped; (1,1) kept; (2,4) item 4 unseen -> dropped
    assert np.flatnonzero(s.relevant).tolist() == [8]


def test_validation_split_is_carved_from_train_the_same_way():
    rng = np.random.default_rng(3)
    users, items, times = rng.integers(0, 20, 400), rng.integers(0, 50, 400), rng.integers(0, 10_000, 400)
    outer = splits.random_split(users, seed=42)
    fit, val = splits.validation_split("random", users, items, times, outer.train, seed=42)
    assert not (fit & ~outer.train).any() and not (val & ~outer.train).any() and not (fit & val).any()
    inner = splits.random_split(users[outer.train], seed=43)
    assert np.array_equal(val[outer.train], inner.relevant)
    fit_t, val_t = splits.validation_split("temporal", users, items, times, outer.train)
    assert times[val_t].min() >= times[fit_t].max()
