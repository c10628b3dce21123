"""The daily DAG under ``airflow dags test`` for two consecutive dates, checked from the published Parquet."""
import datetime as dt
import json
import subprocess

import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from conftest import SMALL_SOURCE

from tools.local_airflow import airflow_cli, airflow_env
from nightly_topn.features import Features, read_new_items
from nightly_topn.storage import Storage

TOP_N = 12


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    work = tmp_path_factory.mktemp("airflow")
    env = airflow_env(work / "home", work / "data", NIGHTLY_TOPN_SOURCE=SMALL_SOURCE)
    subprocess.run([airflow_cli(), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    runs = {}
    # Logical dates 03-02 and 03-03: their data intervals are the full days 03-01 and 03-02.
    for logical in ("2024-03-02", "2024-03-03"):
        conf = json.dumps({"top_n": TOP_N, "train_window_days": 21})
        proc = subprocess.run([airflow_cli(), "dags", "test", "nightly_topn", logical, "-c", conf], env=env,
                              capture_output=True, text=True, timeout=600)
        runs[logical] = proc
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Storage.at(work / "data"), runs


def test_each_run_processes_its_previous_full_day(two_days):
    store, _ = two_days
    assert [d.isoformat() for d in store.dates("features")] == ["2024-03-01", "2024-03-02"]
    assert max(store.dates("raw")) == dt.date(2024, 3, 2)  # nothing after the newest run's day


def test_pointer_names_the_newest_date(two_days):
    store, _ = two_days
    pointer = store.published()
    assert pointer["date"] == "2024-03-02"
    assert pointer["path"].startswith("topn/dt=2024-03-02/v=")


@pytest.mark.parametrize("date", ["2024-03-01", "2024-03-02"])
def test_published_lists_are_complete_unseen_and_ranked(two_days, date):
    store, _ = two_days
    version = sorted(store.partition("topn", date).glob("v=*"))[-1]
    lists = pq.read_table(version).to_pylist()
    features = Features.load(store.partition("features", date))
    new = read_new_items(store.partition("features", date))  # new items are listed too, never to who saw them
    catalogue = list(features.item_ids) + (new.ids.to_pylist() if new else [])
    history = sp.hstack([features.matrix(), new.seen], format="csr") if new else features.matrix()
    item_index = {item: i for i, item in enumerate(catalogue)}
    assert [r["user_id"] for r in lists] == list(features.user_ids)  # every active user, sorted
    for user_index, row in enumerate(lists):
        assert len(row["item_ids"]) == TOP_N == len(set(row["item_ids"]))
        assert all(a >= b for a, b in zip(row["scores"], row["scores"][1:]))
        seen = set(history.indices[history.indptr[user_index]:history.indptr[user_index + 1]])
        assert not seen & {item_index[i] for i in row["item_ids"]}
        assert row["logical_date"].isoformat() == date
