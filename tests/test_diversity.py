"""Diversity: MMR re-ranking in the kernel (lists span more categories, stay sorted and exact about
history and rules), its cost shown in the report, refused without categories."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from conftest import run_day
from test_cold_start import ScoresOnly, random_problem

from nightly_topn import scoring
from nightly_topn.diversity import CategorySimilarity, candidates, mmr, unit_vectors
from nightly_topn.errors import BadInput
from nightly_topn.evaluation import intra_list_diversity
from nightly_topn.features import read_item_categories
from nightly_topn.storage import Storage

DATE = "2024-03-01"


def one_hot(categories: list[int], n_categories: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(categories)), (np.arange(len(categories)), categories)),
                         shape=(len(categories), n_categories))


def test_mmr_takes_a_less_similar_item_over_a_slightly_better_one():
    # items 0-3: category A, scores 1.0 .. 0.85; items 4-5: category B, 0.8 and 0.7
    unit = CategorySimilarity(one_hot([0, 0, 0, 0, 1, 1], 2), 6)
    idx = np.array([[0, 1, 2, 3, 4, 5]], dtype=np.int32)
    vals = np.array([[1.0, 0.95, 0.9, 0.85, 0.8, 0.7]], dtype=np.float32)
    plain, _ = mmr(idx, vals, unit, 3, 0.0)
    assert plain.tolist() == [[0, 1, 2]]  # strength 0: the ranking itself
    diverse, scores = mmr(idx, vals, unit, 3, 0.5)
    assert diverse[0, 0] == 0 and 4 in diverse[0].tolist()  # the best item first, then category B
    assert np.all(np.diff(scores[0]) <= 0)  # the published scores never increase down the list


def naive_mmr(idx, vals, cats, n, lam):
    """MMR as written in the papers, one user and one slot at a time over every candidate."""
    unit = unit_vectors(cats, cats.shape[0])
    out = []
    for row, score in zip(idx, vals):
        keep = row >= 0
        row, score = row[keep], score[keep]
        rel = (score - score.min()) / ((score.max() - score.min()) or 1.0) if len(row) else score
        chosen = []
        for _ in range(min(n, len(row))):
            best, best_j = -np.inf, None
            for j in range(len(row)):
                if j in chosen:
                    continue
                penalty = max((float(unit[row[j]] @ unit[row[c]]) for c in chosen), default=0.0)
                value = (1 - lam) * rel[j] - lam * penalty
                if value > best + 1e-6:
                    best, best_j = value, j
            chosen.append(best_j)
        out.append([int(row[j]) for j in chosen])
    return out


@pytest.mark.parametrize("lam, n_categories", [(0.2, 5), (0.5, 5), (0.9, 12), (0.4, 80)])
def test_mmr_matches_the_textbook_greedy_and_pads_short_lists(lam, n_categories):
    rng = np.random.default_rng(n_categories)
    n_items = 120
    rows = np.repeat(np.arange(n_items), rng.integers(0, 3, n_items))  # 0-2 categories, some none
    cats = sp.csr_matrix((np.ones(len(rows)), (rows, rng.integers(0, n_categories, len(rows)))), shape=(n_items, n_categories))
    cats.data[:] = 1
    idx = np.stack([rng.permutation(n_items)[:40] for _ in range(48)]).astype(np.int32)
    vals = -np.sort(-rng.random((48, 40)).astype(np.float32), axis=1)
    idx[5, 4:], vals[5, 4:] = -1, -np.inf  # a user with only four candidates
    out, scores = mmr(idx, vals, CategorySimilarity(cats, n_items), 12, lam)
    expected = naive_mmr(idx, vals, cats, 12, lam)
    assert [row[row >= 0].tolist() for row in out] == expected
    assert (out[5, 4:] == -1).all() and np.isneginf(scores[5, 4:]).all()
    assert np.all(np.diff(np.where(np.isfinite(scores), scores, -1e9), axis=1) <= 0)


@pytest.mark.parametrize("path", ["fused", "generic"])
def test_the_kernel_re_ranks_its_exact_candidates_and_masks_history_first(path):
    model, weights, history = random_problem(n_users=200, n_warm=300, n_cold=20)
    n_items = history.shape[1]
    cats = one_hot(np.random.default_rng(2).integers(0, 6, n_items).tolist(), 6)
    similarity = CategorySimilarity(cats, n_items)
    users = np.arange(history.shape[0])
    scorer_model = model if path == "fused" else ScoresOnly(model)
    k = candidates(10, n_items)
    pool = scoring.TopNScorer(scorer_model, k, batch_size=64, cold_weights=weights).recommend(users, history)
    diverse = scoring.TopNScorer(scorer_model, 10, batch_size=64, cold_weights=weights,
                                 diversity=(similarity, 0.4)).recommend(users, history)
    expected = mmr(*pool, similarity, 10, 0.4)
    assert np.array_equal(diverse[0], expected[0]) and np.allclose(diverse[1], expected[1])
    assert not (history.toarray()[users[:, None], diverse[0]] > 0).any()
    assert intra_list_diversity(diverse[0], cats) > intra_list_diversity(pool[0][:, :10], cats)


@pytest.fixture(scope="module")
def diverse_day(tmp_path_factory):
    root = tmp_path_factory.mktemp("diverse") / "data"
    plain = tmp_path_factory.mktemp("plain") / "data"
    return (root, run_day(DATE, root, diversity_strength=0.3)), (plain, run_day(DATE, plain))


def published_items(root):
    store = Storage.at(root)
    return pq.read_table(store.root / store.published()["path"], columns=["item_ids"]).column(0).to_pylist()


def test_published_lists_are_more_diverse_and_the_report_shows_the_cost(diverse_day):
    (root, result), (plain_root, plain) = diverse_day
    assert result["publish"] and plain["publish"]  # the top-N gate passed: sorted, full, no seen item
    categories = read_item_categories(root / "features" / f"dt={DATE}")
    features_ids = pq.read_table(root / "features" / f"dt={DATE}" / "item_map.parquet").column("item_id").to_pylist()
    position = {item: i for i, item in enumerate(features_ids)}

    def diversity(lists):
        recs = np.array([[position.get(i, -1) for i in items] for items in lists])
        return intra_list_diversity(recs, categories[: len(features_ids)])

    assert diversity(published_items(root)) > diversity(published_items(plain_root)) + 0.1
    figures = json.loads((root / "reports" / f"dt={DATE}" / "evaluation.json").read_text())["diversity"]
    by_strength = {row["strength"]: row for row in figures["rows"]}
    assert figures["strength"] == 0.3 and by_strength[0.3]["diversity"] > by_strength[0.0]["diversity"]
    winner = json.loads((root / "reports" / f"dt={DATE}" / "evaluation.json").read_text())
    assert by_strength[0.0]["ndcg"] == pytest.approx(winner["metrics"][winner["model"]]["ndcg"])
    report = (root / "reports" / f"dt={DATE}" / "report.html").read_text()
    assert "Diversity (MMR re-ranking)" in report and "0.3000 (published)" in report
    from nightly_topn.report import _fmt

    assert f"intra-list diversity {_fmt(winner['metrics'][winner['model']]['diversity'])}." in report


def test_diversity_without_item_categories_is_refused_in_one_line(root, tmp_path):
    from test_rules import WEEK, write_landing

    source = write_landing(tmp_path / "landing", WEEK)  # events only: no items.* with categories
    run_day(WEEK[-1].isoformat(), root, source=source, train_window_days=7, until="validate_features")
    with pytest.raises(BadInput, match="diversity_strength=0.3 needs item categories"):
        run_day(WEEK[-1].isoformat(), root, source=source, train_window_days=7, diversity_strength=0.3)
    assert Storage.at(root).published() is None
