"""Similar items: a second output of the night, computed from the chosen model, gated and published
behind its own pointer, served by ``nightly-topn lookup --item``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from conftest import SMALL_SOURCE, run_day
from test_cold_start import factor_model

from nightly_topn import cli
from nightly_topn.errors import GateFailed
from nightly_topn.lookup import lookup_similar
from nightly_topn.models import Popularity
from nightly_topn.similar import similar_items
from nightly_topn.storage import Storage

DATE = "2024-03-01"


def test_factor_similarity_is_the_cosine_of_item_factors_never_itself_nor_excluded():
    rng = np.random.default_rng(0)
    item_f = rng.standard_normal((300, 8)).astype(np.float32)
    model = factor_model(rng.standard_normal((50, 8)), item_f)
    idx, vals, method = similar_items(model, sp.csr_matrix((50, 300), dtype=np.float32), 10, np.array([7, 8]), block=64)
    unit = item_f / np.linalg.norm(item_f, axis=1, keepdims=True)
    dense = unit @ unit.T
    np.fill_diagonal(dense, -np.inf)
    dense[:, [7, 8]] = -np.inf
    expected = np.argsort(-dense, axis=1, kind="stable")[:, :10]
    assert method == "factors" and np.array_equal(idx, expected)
    np.testing.assert_allclose(vals, np.take_along_axis(dense, expected, axis=1), rtol=1e-5, atol=1e-6)


def test_without_factors_similarity_is_co_occurrence_and_lists_only_items_sharing_users():
    # users 0-1 saw items 0,1,2; user 2 saw 2,3; item 4 was seen by nobody else
    X = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], np.float32))
    idx, vals, method = similar_items(Popularity().fit(X), X, 3)
    assert method == "co-occurrence"
    assert idx[0].tolist() == [1, 2, -1] and vals[0, 0] == pytest.approx(1.0)  # item 1: same two users
    assert idx[3].tolist() == [2, -1, -1] and (idx[4] == -1).all()  # 4 shares no user: an empty list


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("similar") / "data"
    result = run_day(DATE, root, source=f"{SMALL_SOURCE},exclude_share=0.1", until="publish_similar")
    return root, result


def test_every_item_gets_k_similar_items_published_behind_their_own_pointer(published):
    root, result = published
    store = Storage.at(root)
    assert result["publish_similar"]["published"] and result["validate_similar"]["outcome"] == "passed"
    pointer = store.published("similar")
    assert pointer["path"].startswith(f"similar/dt={DATE}/v=") and store.published()["path"].startswith("topn/")
    table = pq.read_table(store.root / pointer["path"])
    catalogue = pq.read_table(root / "features" / f"dt={DATE}" / "item_map.parquet").column("item_id").to_pylist()
    excluded = {r["item_id"] for r in pq.read_table(root / "raw" / f"dt={DATE}" / "rules.parquet").to_pylist()
                if r["rule"] == "exclude"}
    assert table.column("item_id").to_pylist() == catalogue  # one row per item, sorted by id
    for row in table.to_pylist():
        assert len(row["item_ids"]) == 20 == len(set(row["item_ids"])) and row["item_id"] not in row["item_ids"]
        assert not excluded & set(row["item_ids"]) and row["scores"] == sorted(row["scores"], reverse=True)
    assert lookup_similar(catalogue[3], root=root)["item_ids"] == table.slice(3, 1).column("item_ids")[0].as_py()
    assert lookup_similar("not-an-item", root=root) is None


def test_cli_looks_up_an_item_and_refuses_an_item_and_a_user_at_once(published, capsys):
    root, _ = published
    item = pq.read_table(Storage.at(root).root / Storage.at(root).published("similar")["path"]).column("item_id")[0]
    assert cli.main(["lookup", "--item", item.as_py(), "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["item_id"] == item.as_py()
    assert cli.main(["lookup", "u000001", "--item", item.as_py(), "--root", str(root)]) == 2
    assert "not both" in capsys.readouterr().err


def test_the_gate_refuses_a_version_listing_an_excluded_item_and_publish_keeps_the_live_one(published, tmp_path):
    from nightly_topn.jobs.similar import publish_similar
    from nightly_topn.jobs.validate import validate_similar

    root, _ = published
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    store = Storage.at(copy)
    live = store.published("similar")
    version = store.root / live["path"]
    fresh = version.with_name("v=29990101T000000000000")
    shutil.copytree(version, fresh)
    (fresh / "_gate.json").unlink()
    raw = copy / "raw" / f"dt={DATE}" / "rules.parquet"
    first = pq.read_table(sorted(fresh.glob("part-*.parquet"))[0]).slice(0, 1).to_pylist()[0]
    rules = pq.read_table(raw)
    pq.write_table(pa.concat_tables([rules, pa.table({"rule": ["exclude"], "item_id": [first["item_ids"][0]],
                                                      "user_id": pa.nulls(1, pa.string()),
                                                      "segment": pa.nulls(1, pa.string()),
                                                      "reason": ["recalled"]}, schema=rules.schema)]), raw)
    with pytest.raises(GateFailed, match="an item the candidate rules exclude for everyone"):
        validate_similar(DATE, root=copy, version=str(fresh))
    with pytest.raises(Exception, match="failed validate_similar"):
        publish_similar(DATE, root=copy, version=str(fresh))
    assert store.published("similar") == live
