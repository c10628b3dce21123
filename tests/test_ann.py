"""ANN candidates (``nightly_topn.ann``) behind ``TopNScorer`` and the top-N job: full lists, no seen
or forbidden items, deterministic, recall against exact top-N; ``exact`` unchanged."""
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

faiss = pytest.importorskip("faiss")

from nightly_topn import ann, scoring  # noqa: E402
from nightly_topn.models import ALS  # noqa: E402

N = 20


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    """Shards small enough that a few thousand items make several IVF shards (as 2M items do)."""
    monkeypatch.setattr(ann, "SHARD_MIN", 256)
    monkeypatch.setattr(ann, "FLAT_MAX", 512)


def structured_als(n_users=600, n_items=6000, factors=16, clusters=12, seed=0):
    """Factors with ALS's structure: item clusters, long vectors for popular items, users near a cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, factors)).astype(np.float32)
    norms = rng.lognormal(-2.0, 1.0, n_items).astype(np.float32)
    items = centers[rng.integers(0, clusters, n_items)] + 0.7 * rng.standard_normal((n_items, factors))
    items *= (norms / np.linalg.norm(items, axis=1))[:, None]
    users = centers[rng.integers(0, clusters, n_users)] + 0.7 * rng.standard_normal((n_users, factors))
    model = ALS(factors=factors)
    model.user_factors, model.item_factors = users.astype(np.float32), items.astype(np.float32)
    model.known = np.ones(n_users, dtype=bool)
    model.n_users, model.n_items = n_users, n_items
    return model


def history_of(model, per_user=10, seed=1, heavy=()):
    """Mostly the users' own top items (what they would have seen), some random; ``heavy`` users
    have seen everything in their exact top-300."""
    rng = np.random.default_rng(seed)
    n_users, n_items = model.user_factors.shape[0], model.n_items
    top = ann.exact_top(model.user_factors, model.item_factors, 300)
    rows, cols = [], []
    for u in range(n_users):
        own = top[u, rng.choice(60, per_user // 2, replace=False)]
        seen = np.concatenate([own, rng.integers(0, n_items, per_user - len(own))])
        if u in heavy:
            seen = top[u]
        rows += [u] * len(seen)
        cols += list(seen)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


class Forbidden:
    """A duck-typed ``CandidateRules``: a dense ``users × items`` boolean of what is forbidden."""

    def __init__(self, forbidden):
        self.forbidden = forbidden

    def mask(self, scores, users, lo=0):
        scores[self.forbidden[users, lo:lo + scores.shape[1]]] = -np.inf

    def forbids(self, users, items):
        users = np.broadcast_to(np.asarray(users)[:, None], items.shape)
        return self.forbidden[users, np.maximum(items, 0)] & (items >= 0)


@pytest.fixture(scope="module")
def problem():
    model = structured_als()
    return model, history_of(model, heavy=(3, 7))


def lists(model, history, candidates, **kw):
    users = np.arange(history.shape[0])
    scorer = scoring.TopNScorer(model, N, batch_size=64, candidates=candidates, **kw)
    idx, vals = scorer.recommend(users, history)
    return scorer, idx, vals


def test_ann_lists_are_full_unseen_distinct_and_recall_exact(problem):
    model, history = problem
    scorer, idx, vals = lists(model, history, "ann")
    assert scorer.method == "ann" and scorer.ann.calibration_recall >= ann.RECALL_TARGET
    info = scorer.describe()
    assert info["method"] == "ann" and info["nprobe"] >= 1 and info["ivf_shards"] >= 1
    assert idx.shape == (history.shape[0], N) and (idx >= 0).all()
    assert all(len(set(row)) == N for row in idx)
    assert not any(np.isin(row, history[u].indices).any() for u, row in enumerate(idx))  # nothing seen
    assert (np.diff(vals, axis=1) <= 0).all()  # best first, exact scores
    np.testing.assert_allclose(vals, np.take_along_axis(model.user_factors @ model.item_factors.T, idx, 1),
                               rtol=1e-5, atol=1e-6)
    _, exact, _ = lists(model, history, "exact")
    assert ann.recall(idx, exact) >= 0.98


def test_users_whose_candidates_are_all_seen_still_get_full_lists(problem):
    model, history = problem
    _, idx, _ = lists(model, history, "ann")
    _, exact, _ = lists(model, history, "exact")
    for heavy in (3, 7):  # their whole exact top-300 is seen: ANN searches deeper, else scores exactly
        assert history[heavy].nnz >= 290 and (idx[heavy] >= 0).all()
        assert not np.isin(idx[heavy], history[heavy].indices).any()
        assert len(np.intersect1d(idx[heavy], exact[heavy])) >= N - 2


def test_ann_is_deterministic(problem):
    model, history = problem
    one, idx1, vals1 = lists(model, history, "ann")
    two, idx2, vals2 = lists(model, history, "ann")
    assert one.describe() == {**two.describe(), "build_seconds": one.describe()["build_seconds"],
                              "calibration_seconds": one.describe()["calibration_seconds"]}
    assert np.array_equal(idx1, idx2) and np.array_equal(vals1, vals2)


def test_rules_are_respected(problem):
    model, history = problem
    rng = np.random.default_rng(4)
    forbidden = np.zeros((history.shape[0], model.n_items), dtype=bool)
    _, exact, _ = lists(model, history, "exact")
    forbidden[np.arange(len(exact))[:, None], exact[:, :5]] = True  # each user's 5 best
    forbidden[:, rng.choice(model.n_items, 300, replace=False)] = True  # and a few excluded items
    forbidden[10] = True
    forbidden[10, :N] = False  # user 10 may only get items 0..N-1: ANN alone cannot find them
    rules = Forbidden(forbidden)
    _, idx, _ = lists(model, history, "ann", rules=rules)
    _, ref, _ = lists(model, history, "exact", rules=rules)
    assert (idx >= 0).all() and not forbidden[np.arange(len(idx))[:, None], idx].any()
    assert sorted(idx[10]) == sorted(ref[10])
    assert ann.recall(idx, ref) >= 0.98


def test_exact_is_unchanged_and_the_default(problem):
    model, history = problem
    scorer, idx, vals = lists(model, history, "exact")
    assert scorer.method == "exact" and scorer.describe() == {"method": "exact"}
    ref, ref_vals = model.recommend(np.arange(history.shape[0]), history, N)
    assert np.array_equal(idx, ref)
    default = scoring.TopNScorer(model, N)
    assert default.method == "exact" and default.ann is None
    small = scoring.TopNScorer(model, N, candidates="auto")  # 6K items: below ANN_MIN_ITEMS
    assert small.method == "exact"
    with pytest.raises(ValueError, match="candidates"):
        scoring.TopNScorer(model, N, candidates="fast")


def test_ann_with_diversity_and_new_items(problem):
    from nightly_topn.diversity import CategorySimilarity

    model, history = problem
    n_cold = 5
    rng = np.random.default_rng(2)
    weights = sp.random(model.n_items, n_cold, density=0.002, random_state=3, format="csr", dtype=np.float32)
    weights.data = np.abs(weights.data) * 50
    cats = sp.csr_matrix((np.ones(model.n_items + n_cold), (np.arange(model.n_items + n_cold),
                                                            rng.integers(0, 8, model.n_items + n_cold))))
    diversity = (CategorySimilarity(cats, model.n_items + n_cold), 0.3)
    _, idx, _ = lists(model, history, "ann", cold_weights=weights, diversity=diversity)
    _, ref, _ = lists(model, history, "exact", cold_weights=weights, diversity=diversity)
    assert (idx >= 0).all() and all(len(set(r)) == N for r in idx)
    assert ann.recall(idx, ref) >= 0.95  # MMR on near-identical candidate pools
    assert (idx >= model.n_items).any()  # new items compete


def test_ann_without_faiss_fails_in_one_line(problem, monkeypatch):
    model, history = problem

    def missing():
        raise ann.AnnUnavailable("candidates='ann' needs faiss: pip install 'nightly-topn[ann]'")

    monkeypatch.setattr(ann, "require_faiss", missing)
    with pytest.raises(ann.AnnUnavailable, match="needs faiss"):
        scoring.TopNScorer(model, N, candidates="ann")
    monkeypatch.setattr(scoring, "ANN_MIN_ITEMS", 10)
    assert scoring.TopNScorer(model, N, candidates="auto").method == "exact"  # auto: exact, with a warning


def test_topn_job_with_ann_candidates_writes_valid_output(tmp_path_factory, monkeypatch):
    """The real job (Beam pipeline → Parquet) with candidates=ann: full, unseen lists; the manifest
    says what ran."""
    import pyarrow.parquet as pq
    from test_pipeline import DATE, PARAMS, SMALL, read_version

    from nightly_topn.features import Features
    from nightly_topn.jobs.ingest import ingest
    from nightly_topn.jobs.preprocess import preprocess
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.train import train
    from nightly_topn.storage import Storage

    monkeypatch.setattr(ann, "FLAT_MAX", 16)
    monkeypatch.setattr(ann, "SHARD_MIN", 64)
    root = tmp_path_factory.mktemp("ann_root")
    params = PARAMS.__class__(**{**PARAMS.__dict__, "candidates": "ann"})
    ingest(DATE, root=root, source="generated", params=params)
    preprocess(DATE, root=root, params=params)
    train(DATE, root=root, params=params)
    result = topn(DATE, root=root, params=params, beam_args=SMALL)
    path = Path(result["path"])
    manifest, table = read_version(path)
    assert result["candidates"]["champion"]["method"] == "ann"
    report = manifest["candidates"]["champion"]
    assert report["requested"] == "ann" and report["nprobe"] >= 1 and report["calibration_recall"] is not None
    assert not list(path.glob(".candidates-*")) and not list(path.glob(".tmp-*"))
    features_dir = Storage.at(root).partition("features", DATE)
    history = Features.load(features_dir).matrix()
    item_index = {v: i for i, v in enumerate(pq.read_table(features_dir / "item_map.parquet")
                                           .column("item_id").to_pylist())}
    user_index = {v: i for i, v in enumerate(pq.read_table(features_dir / "user_map.parquet")
                                           .column("user_id").to_pylist())}
    model_rows = [r for r in table.to_pylist() if r["source"] == "model"]
    assert model_rows and table.num_rows == history.shape[0]
    n_items = history.shape[1]
    for row in model_rows:
        items = [item_index[i] for i in row["item_ids"]]
        assert len(items) == min(PARAMS.top_n, n_items - history[user_index[row["user_id"]]].nnz)
        assert len(set(items)) == len(items)
        assert not set(items) & set(history[user_index[row["user_id"]]].indices)
        assert row["scores"] == sorted(row["scores"], reverse=True)
    assert json.loads((path / "_manifest.json").read_text())["candidates"] == manifest["candidates"]
