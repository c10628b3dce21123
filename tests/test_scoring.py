"""The scoring kernel: exact top-N, seen-item masking, and the fused path matching ``recommend``."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from nightly_topn import scoring
from nightly_topn.models import ALS, Popularity


def random_als(n_users=300, n_items=517, factors=8, seed=0):
    rng = np.random.default_rng(seed)
    model = ALS(factors=factors)
    model.user_factors = rng.standard_normal((n_users, factors), dtype=np.float32)
    model.item_factors = rng.standard_normal((n_items, factors), dtype=np.float32)
    model.known = np.ones(n_users, dtype=bool)
    model.n_items = n_items
    return model


def random_history(n_users, n_items, per_user=20, seed=1):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.integers(0, n_items, len(rows))
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    return matrix


def test_top_n_orders_ties_by_index_and_marks_masked():
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]], dtype=np.float32)
    idx, vals = scoring.top_n(scores, 5)
    assert idx.tolist() == [[1, 2, 4, 0, -1]]
    assert vals[0, :4].tolist() == [3.0, 3.0, 2.0, 1.0]


def test_mask_seen_sets_exactly_the_history_to_minus_inf():
    scores = np.zeros((3, 4), dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    scoring.mask_seen(scores, seen)
    assert np.isneginf(scores).astype(int).tolist() == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]]


def sorted_top_n(scores, n):
    """The reference: a stable sort of every whole row (ties: lower index first; -inf -> -1)."""
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :n].astype(np.int32)
    vals = np.take_along_axis(scores, idx, axis=1).astype(np.float32)
    idx[~np.isfinite(vals)] = -1
    return idx, vals


@pytest.mark.parametrize("cols,n,block", [(1000, 10, 32), (1003, 10, 32), (999, 50, 16), (200, 100, 32), (64, 100, 8),
                                          (5000, 1, 64), (4099, 100, 32)])
def test_block_top_n_equals_partitioning_every_row(cols, n, block):
    rng = np.random.default_rng(cols + n)
    scores = rng.standard_normal((37, cols), dtype=np.float32)
    scores[3, :] = -np.inf  # a user who has seen everything
    scores[4, : cols // 2] = -np.inf
    scores[5, 7:] = -np.inf  # fewer than n unseen items left
    scores[6] = np.round(scores[6])  # many ties: lower item index first
    ref_idx, ref_vals = sorted_top_n(scores, n)
    for width_of_block in (block, cols + 1):  # the pruned path where wide enough, and plain partitioning
        idx, vals = scoring.top_n(scores, n, width_of_block)
        assert idx.dtype == np.int32 and vals.dtype == np.float32
        assert np.array_equal(idx, ref_idx) and np.array_equal(vals, ref_vals)
    assert (idx[3] == -1).all() and np.isneginf(vals[3]).all()
    assert (idx[5, :7] >= 0).all() and (idx[5, 7:] == -1).all()
    if cols // block > n:  # wide enough for the pruned path: call it directly as well
        direct_idx, direct_vals = scoring.block_top_n(scores, n, block)
        assert np.array_equal(direct_idx, ref_idx) and np.array_equal(direct_vals, ref_vals)


def test_block_top_n_finds_items_clustered_in_one_block():
    scores = np.zeros((2, 640), dtype=np.float32)
    scores[0, 96:128] = np.arange(32, dtype=np.float32) + 1  # all winners in one block
    idx, vals = scoring.block_top_n(scores, 15, 32)
    assert idx[0].tolist() == list(range(127, 112, -1))
    assert vals[0, 0] == 32
    assert idx[1].tolist() == list(range(15))  # all equal: lowest indices, in order


def test_block_top_n_takes_strided_views_and_float64():
    rng = np.random.default_rng(5)
    wide = rng.standard_normal((20, 3000))
    view = wide[::2, 100:2900]  # not contiguous, float64
    idx, vals = scoring.block_top_n(view, 30, 32)
    ref_idx, ref_vals = sorted_top_n(view, 30)
    assert np.array_equal(idx, ref_idx) and np.array_equal(vals, ref_vals)


def test_fused_scorer_matches_model_recommend():
    model = random_als()
    history = random_history(300, 517)
    users = np.arange(300)
    scorer = scoring.TopNScorer(model, 25, batch_size=64)  # several batches, a partial last one
    assert scorer.fused
    idx, vals = scorer.recommend(users, history)
    ref_idx, ref_vals = model.recommend(users, history, 25)
    assert idx.dtype == np.int32 and vals.dtype == np.float32
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)
    seen = history.toarray() > 0
    assert not seen[np.arange(300)[:, None], idx].any()  # nothing already seen


def test_fused_scorer_user_subset_and_exhausted_catalog():
    model = random_als(n_users=50, n_items=40)
    history = sp.lil_matrix((50, 40), dtype=np.float32)
    history[7, :] = 1  # seen every item
    history[8, 5:] = 1  # only 5 unseen
    history = history.tocsr()
    users = np.array([7, 8, 9, 30])
    idx, vals = scoring.TopNScorer(model, 10, batch_size=3).recommend(users, history[users])
    ref_idx, _ = model.recommend(users, history[users], 10)
    assert np.array_equal(idx, ref_idx)
    assert (idx[0] == -1).all() and np.isneginf(vals[0]).all()
    assert sorted(idx[1, :5].tolist()) == [0, 1, 2, 3, 4] and (idx[1, 5:] == -1).all()


def test_fused_scorer_with_catalog_smaller_than_n():
    model = random_als(n_users=5, n_items=6)
    history = sp.csr_matrix((5, 6), dtype=np.float32)
    idx, vals = scoring.TopNScorer(model, 10).recommend(np.arange(5), history)
    assert idx.shape == (5, 6)
    assert np.array_equal(idx, model.recommend(np.arange(5), history, 10)[0])


def test_non_factor_model_goes_through_recommend():
    interactions = random_history(40, 30, per_user=3)
    model = Popularity().fit(interactions)
    scorer = scoring.TopNScorer(model, 5, batch_size=16)
    assert not scorer.fused
    idx, vals = scorer.recommend(np.arange(40), interactions)
    ref_idx, ref_vals = model.recommend(np.arange(40), interactions, 5)
    assert np.array_equal(idx, ref_idx) and np.array_equal(vals, ref_vals)


def test_factor_model_whose_scores_differ_falls_back_to_its_recommend():
    class FoldIn(ALS):  # e.g. a model that uses the history on top of the factors
        def score(self, users, history):
            return super().score(users, history) + np.asarray(history.sum(axis=1), dtype=np.float32)

    base = random_als(n_users=60, n_items=80)
    model = FoldIn()
    model.user_factors, model.item_factors, model.known, model.n_items = (
        base.user_factors, base.item_factors, base.known, base.n_items)
    history = random_history(60, 80, per_user=4)
    scorer = scoring.TopNScorer(model, 7, batch_size=32)
    idx, vals = scorer.recommend(np.arange(60), history)
    assert not scorer.fused
    ref_idx, ref_vals = model.recommend(np.arange(60), history, 7)
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-6)  # GEMM rounding depends on the batch shape


def test_configure_threads_sets_torch_and_returns_count():
    before = torch.get_num_threads()
    try:
        assert scoring.configure_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert scoring.configure_threads() == scoring.available_cores()
    finally:
        torch.set_num_threads(before)


def test_parallel_batches_give_the_same_lists():
    model = random_als(n_users=400, n_items=300)
    history = random_history(400, 300)
    users = np.arange(400)
    one = scoring.TopNScorer(model, 12, batch_size=50).recommend(users, history)
    two = scoring.TopNScorer(model, 12, batch_size=50, parallel=3).recommend(users, history)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_untrained_users_go_through_the_models_own_recommend():
    model = random_als(n_users=120, n_items=90)
    model.known = model.known.copy()
    model.known[::7] = False  # e.g. fold-in users: not scored from the learned user factors
    history = random_history(120, 90, per_user=5)
    users = np.arange(120)
    idx, vals = scoring.TopNScorer(model, 9, batch_size=32).recommend(users, history)
    ref_idx, ref_vals = model.recommend(users, history, 9)
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)
