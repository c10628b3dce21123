"""Each job on a small generated universe: what a user of the job relies on."""
import datetime as dt
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_SOURCE, SMALL_WINDOW, run_day

from nightly_topn.config import RunParams
from nightly_topn.features import Features
from nightly_topn.jobs.evaluate import QualityGateFailed
from nightly_topn.jobs.ingest import ingest
from nightly_topn.jobs.publish import publish
from nightly_topn.jobs.topn import topn
from nightly_topn.lookup import TopNReader, lookup
from nightly_topn.models import load_model
from nightly_topn.storage import Storage

DATE = "2024-03-01"
PARAMS = RunParams(train_window_days=SMALL_WINDOW, top_n=10, model="als")


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """One complete day, run once for the module (the jobs are the expensive part)."""
    root = tmp_path_factory.mktemp("day") / "data"
    return root, run_day(DATE, root)


def read_lists(root, date=DATE):
    store = Storage.at(root)
    version = sorted(store.partition("topn", date).glob("v=*"))[-1]
    return pq.read_table(version).sort_by("user_id")


def test_ingest_lands_the_window_up_to_the_date_and_is_idempotent(root):
    first = ingest(DATE, root=root, source=SMALL_SOURCE, params=PARAMS)
    assert len(first["landed"]) == SMALL_WINDOW and first["landed"][-1] == DATE
    again = ingest(DATE, root=root, source=SMALL_SOURCE, params=PARAMS)
    assert again["landed"] == [] and again["already_present"] == SMALL_WINDOW
    store = Storage.at(root)
    assert max(store.dates("raw")) == dt.date(2024, 3, 1)  # point in time: nothing after the run date
    forced = ingest(DATE, root=root, source=SMALL_SOURCE, params=PARAMS, force=True)
    assert forced["landed"] == [DATE]


def test_preprocess_is_point_in_time_with_disjoint_splits(day):
    root, results = day
    stats = results["preprocess"]
    store = Storage.at(root)
    inter = pq.read_table(store.partition("features", DATE) / "interactions.parquet").to_pandas()
    assert inter["last_time"].max() < np.datetime64("2024-03-02T00:00:00").astype("datetime64[us]").item().replace(
        tzinfo=dt.timezone.utc)
    assert not inter.duplicated(["user_index", "item_index"]).any()
    train, hold = inter[inter.split == "train"], inter[inter.split == "holdout"]
    assert set(hold.user_index) <= set(train.user_index) and set(hold.item_index) <= set(train.item_index)
    assert (hold.first_time >= train.first_time.max() - np.timedelta64(1, "D")).all()
    assert stats["holdout_pairs"] == len(hold) > 0 and (inter.confidence > 0).all()
    users = pq.read_table(store.partition("features", DATE) / "user_map.parquet").column("user_id").to_pylist()
    assert users == sorted(users) and len(users) == stats["users"]


def test_min_item_interactions_filters_the_catalog(tmp_path):
    loose = run_day(DATE, tmp_path / "a", until="preprocess", min_item_interactions=1)["preprocess"]
    strict = run_day(DATE, tmp_path / "b", until="preprocess", min_item_interactions=30)["preprocess"]
    assert strict["items"] < loose["items"]


def test_train_saves_models_without_pickle_and_is_reproducible(day, tmp_path):
    root, results = day
    store = Storage.at(root)
    model_dir = store.partition("models", DATE) / "final" / "als"
    with np.load(model_dir / "model.npz", allow_pickle=False) as arrays:
        assert arrays["item_factors"].dtype == np.float32
    again = run_day(DATE, tmp_path / "again", until="train")
    assert again["train"]["model_version"] == results["train"]["model_version"]
    a = load_model(model_dir)
    b = load_model(Storage.at(tmp_path / "again").partition("models", DATE) / "final" / "als")
    np.testing.assert_array_equal(a.item_factors, b.item_factors)


def test_evaluate_reports_als_beating_popularity(day):
    root, results = day
    report = json.loads((Storage.at(root).partition("reports", DATE) / "evaluation.json").read_text())
    assert report["gate"]["passed"]
    assert report["metrics"]["als"]["ndcg"] > report["metrics"]["popularity"]["ndcg"]
    assert set(report["metrics"]["als"]) >= {"precision", "recall", "ndcg"}


def test_quality_gate_failure_blocks_publishing(tmp_path):
    root = tmp_path / "data"
    run_day(DATE, root)
    live = Storage.at(root).published()
    with pytest.raises(QualityGateFailed, match="does not beat popularity"):
        run_day("2024-03-02", root, min_lift_over_popularity=10.0)
    assert Storage.at(root).published() == live


def test_topn_lists_are_complete_unseen_ranked_and_sorted(day):
    root, _ = day
    lists = read_lists(root)
    features = Features.load(Storage.at(root).partition("features", DATE))
    assert lists.num_rows == len(features.user_ids)
    assert lists.column("user_id").to_pylist() == sorted(features.user_ids)
    history = features.matrix()
    item_index = {item: i for i, item in enumerate(features.item_ids)}
    for user_index, row in enumerate(lists.to_pylist()):
        assert len(row["item_ids"]) == 10 == len(set(row["item_ids"]))
        assert all(a >= b for a, b in zip(row["scores"], row["scores"][1:]))
        seen = set(history.indices[history.indptr[user_index]:history.indptr[user_index + 1]])
        assert not seen & {item_index.get(i, -1) for i in row["item_ids"]}  # new items: test_cold_start.py
    assert set(pc.unique(lists.column("logical_date")).to_pylist()) == {dt.date(2024, 3, 1)}


def test_publish_switches_the_pointer_and_lookup_reads_it(day):
    root, results = day
    pointer = Storage.at(root).published()
    assert pointer["date"] == DATE and results["publish"]["published"]
    some_user = read_lists(root).column("user_id")[7].as_py()
    row = lookup(some_user, root=root)
    assert row["user_id"] == some_user and len(row["item_ids"]) == 10
    assert lookup("no-such-user", root=root) is None
    assert TopNReader.published(root, date=DATE).get(some_user) == row


def test_dry_run_computes_but_does_not_publish(tmp_path):
    root = tmp_path / "data"
    result = run_day(DATE, root, publish=False)
    assert not result["publish"]["published"] and Storage.at(root).published() is None


def test_rerun_of_a_date_gives_identical_lists(day):
    root, _ = day
    from nightly_topn.jobs.validate import validate_topn

    before = read_lists(root)
    version = topn(DATE, root=root, params=PARAMS)["path"]
    validate_topn(DATE, root=root, params=PARAMS, version=version)
    publish(DATE, root=root, params=PARAMS, version=version)
    after = read_lists(root)
    assert after.equals(before)
    assert Storage.at(root).published()["path"].endswith(sorted(Storage.at(root).partition("topn", DATE).glob("v=*"))[-1].name)


def test_each_job_records_where_the_time_went_and_the_report_shows_it(day, tmp_path):
    """A run explains itself: every job of the day leaves its wall seconds, peak memory and
    outcome in ``reports/dt=D/timings.json`` (a failure too), and the run report lists the jobs
    before it."""
    from nightly_topn import timings
    from nightly_topn.errors import NightlyTopNError
    from nightly_topn.jobs import run_job, steps

    root, _ = day
    store = Storage.at(root)
    entries = timings.read(store, DATE)
    names = [name for name, _ in steps()]
    assert set(entries) == set(names[: names.index("publish") + 1])  # the fixture's day runs up to publish
    for entry in entries.values():
        assert entry["outcome"] == "ok" and entry["seconds"] >= 0 and entry["peak_rss_mib"] > 0
    page = (store.partition("reports", DATE) / "report.html").read_text()
    assert "Where the time went" in page
    for name in ("ingest", "preprocess", "train"):
        assert f"<th>{name}</th><td>{entries[name]['seconds']}</td>" in page
    empty = tmp_path / "empty"
    with pytest.raises(NightlyTopNError):
        run_job("preprocess", DATE, root=empty, params=PARAMS)  # nothing landed
    assert timings.read(Storage.at(empty), DATE)["preprocess"]["outcome"] == "failed"
