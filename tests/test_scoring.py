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


@pytest.mark.parametrize("cols,n,block", [(1000, 10, 32), (1003, 10, 32), (999, 50, 16), (200, 100, 32), (64, 100, 8),
                                          (5000, 1, 64)])
def test_block_top_n_is_exact(cols, n, block):
    gen = torch.Generator().manual_seed(cols + n)
    scores = torch.randn(37, cols, generator=gen)
    scores[3, :] = float("-inf")  # a user who has seen everything
    scores[4, : cols // 2] = float("-inf")
    values, index = scoring.block_top_n(scores, n, block)
    ref_values, _ = torch.topk(scores, min(n, cols), dim=1)
    assert torch.equal(values, ref_values)
    assert torch.equal(torch.gather(scores, 1, index), values)  # indices point at those values
    for row in range(index.shape[0]):  # no item twice
        assert len(set(index[row].tolist())) == index.shape[1]


def test_block_top_n_finds_items_clustered_in_one_block():
    scores = torch.zeros(2, 640)
    scores[0, 96:128] = torch.arange(32, dtype=torch.float32) + 1  # all winners in one block
    values, index = scoring.block_top_n(scores, 20, 32)
    assert sorted(index[0].tolist()) == list(range(108, 128))
    assert values[0, 0] == 32


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
