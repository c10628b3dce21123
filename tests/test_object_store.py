"""A storage root on an S3 API: moto's standalone server (``tools/local_s3.py``) on 127.0.0.1,
reached only through the standard ``AWS_*`` variables. A whole day, a rerun, failed gates, the
lookup and the export on ``s3://``, row for row the same as on a local root; two publishers
racing on the pointer; the date lock as a lease object."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PROJECT, run_day

from nightly_topn.errors import ConfigError, PublishRefused, RunInProgress
from nightly_topn.storage import Storage, write_table
from tools.local_s3 import LocalS3

pytestmark = pytest.mark.slow
DATE, NEXT = "2024-03-01", "2024-03-02"
KNOBS = {"tuning_budget_seconds": 0}


@pytest.fixture(scope="module")
def s3():
    with LocalS3() as server, pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        patch.delenv("NIGHTLY_TOPN_BEAM_ARGS", raising=False)
        yield server


@pytest.fixture(scope="module")
def days(s3, tmp_path_factory):
    """DATE run end to end on ``s3://BUCKET/day`` and on a local root, same code and Params."""
    local = tmp_path_factory.mktemp("local") / "data"
    remote = s3.url("day")
    return local, remote, {"local": run_day(DATE, local, until="publish_similar", **KNOBS),
                          "s3": run_day(DATE, remote, until="publish_similar", **KNOBS)}


def published_rows(root, product="topn"):
    """Every row of the live version of ``product``, sorted by its key (part files only)."""
    store = Storage.at(root)
    version = store.inside(store.published(product)["path"])
    files = json.loads((version / "_manifest.json").read_text())["files"]
    table = pa.concat_tables([pq.read_table(str(version / name)) for name in files])
    return table.sort_by("user_id" if product == "topn" else "item_id")


def test_a_day_on_s3_publishes_the_same_rows_as_on_a_local_root(days, s3):
    local, remote, results = days
    assert results["s3"]["publish"]["published"] and results["s3"]["publish_similar"]["published"]
    assert published_rows(remote).equals(published_rows(local))
    assert published_rows(remote, "similar").equals(published_rows(local, "similar"))
    store = Storage.at(remote)
    assert store.remote and str(store.partition("topn", DATE)).startswith("s3://")
    keys = set(s3.keys("day/"))
    live = store.published()["path"]
    assert {"day/topn/CURRENT.json", f"day/{live}/_manifest.json", f"day/{live}/_index.parquet",
            f"day/{live}/_gate.json", f"day/features/dt={DATE}/_manifest.json"} <= keys
    assert not any("/.staging-" in key or key.endswith(".tmp") for key in keys)  # nothing staged is left
    # the run explains itself on the object store as it does locally
    timings = json.loads((store.partition("reports", DATE) / "timings.json").read_text())
    assert {"ingest", "train", "topn", "publish"} <= set(timings)


def test_a_rerun_on_s3_publishes_a_new_version_with_the_same_rows(days):
    _, remote, results = days
    store = Storage.at(remote)
    before, first = published_rows(remote), store.published()["path"]
    again = run_day(DATE, remote, **KNOBS)
    assert again["publish"]["published"] and store.published()["path"] != first
    assert published_rows(remote).equals(before)
    assert [entry["path"] for entry in store.pointer_history()][-2:] == [first, store.published()["path"]]
    # the first version is still there, complete and checked: what a rollback goes back to
    assert store.verdict_problem(store.inside(first)) is None


def test_failed_gates_on_s3_publish_nothing(days):
    from nightly_topn.config import RunParams
    from nightly_topn.jobs.evaluate import QualityGateFailed
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.validate import validate_topn
    from nightly_topn.quality import GateFailed

    _, remote, _ = days
    store = Storage.at(remote)
    live = store.published()
    with pytest.raises(QualityGateFailed, match="does not beat popularity"):
        run_day(NEXT, remote, min_lift_over_popularity=10.0, **KNOBS)
    assert store.published() == live
    # a version whose lists were tampered with on the store fails validate_topn and cannot go live
    params = RunParams.from_mapping({"train_window_days": 21, "top_n": 10, "model": "als", **KNOBS})
    version = store.inside(topn(DATE, root=remote, params=params)["path"])
    part = version / json.loads((version / "_manifest.json").read_text())["files"][0]
    table = pq.read_table(str(part))
    lists = table.column("item_ids").to_pylist()
    lists[0] = [lists[0][0]] * len(lists[0])  # one item repeated
    write_table(table.set_column(table.schema.get_field_index("item_ids"), "item_ids",
                                 pa.array(lists, table.schema.field("item_ids").type)), part)
    with pytest.raises(GateFailed):
        validate_topn(DATE, root=remote, params=params, version=str(version))
    with pytest.raises(PublishRefused, match="failed validate_topn"):
        publish(DATE, root=remote, params=params, version=str(version))
    assert store.published() == live


def test_lookup_and_export_read_an_s3_root(days, tmp_path):
    local, remote, _ = days
    user = published_rows(local).column("user_id")[5].as_py()
    env = {**os.environ, "NIGHTLY_TOPN_ROOT": remote}
    answer = subprocess.run([sys.executable, "-m", "nightly_topn.cli", "lookup", user], env=env, cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    from nightly_topn.lookup import export, lookup

    assert json.loads(answer.stdout) == lookup(user, root=local)
    out_s3, out_local = tmp_path / "s3.jsonl", tmp_path / "local.jsonl"
    assert export(out_s3, root=remote) == export(out_local, root=local) > 0
    assert out_s3.read_text() == out_local.read_text()
    assert lookup("no-such-user", root=remote) is None


def test_the_redis_load_serves_an_s3_roots_lists(days):
    from nightly_topn.lookup import lookup
    from nightly_topn.serving import redis_store
    from tools.local_redis import LocalRedis

    local, remote, _ = days
    user = published_rows(local).column("user_id")[3].as_py()
    with LocalRedis() as server:
        loaded = redis_store.load_published(server.url, root=remote)
        client = redis_store.connect(server.url)
        token, body = client.eval(redis_store.READ_SCRIPT, 1, "nightly_topn:live", "nightly_topn:v:", user)
    assert loaded["loaded"] and loaded["rows"] == published_rows(local).num_rows
    assert token.decode() == redis_store.token_of(Storage.at(remote).published()["path"])
    served, row = json.loads(body), lookup(user, root=local)
    assert served["items"] == row["item_ids"] and served["user_id"] == user


def _gated_version(store: Storage, date: str, name: str):
    """A small complete version of ``date`` that its gate passed (enough for the pointer's protocol)."""
    version = store.partition("topn", date) / f"v={name}"
    write_table(pa.table({"user_id": ["u1"], "item_ids": [["i1"]]}), version / "part-0.parquet")
    store.write_manifest(version, producer="test", date=date, extra={"files": ["part-0.parquet"],
                                                                      "model_version": name, "rows": 1})
    store.record_verdict(version, passed=True, result="test")
    return version


RACER = """
import sys, time
from nightly_topn.storage import Storage
root, date, version, start, rounds = sys.argv[1:6]
store = Storage.at(root)
while time.time() < float(start):
    pass
for _ in range(int(rounds)):
    store.publish(date, store.inside(version), extra={"model_version": "race", "rows": 1})
"""


def test_two_publishers_racing_on_s3_never_lose_the_newer_pointer(s3):
    store = Storage.at(s3.url("race"))
    older, newer = _gated_version(store, "2024-05-01", "old"), _gated_version(store, "2024-05-02", "new")
    start = time.time() + 3
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(store.root), date, store.relative(version),
                                str(start), "25"], cwd=PROJECT, stderr=subprocess.PIPE, text=True)
              for date, version in (("2024-05-01", older), ("2024-05-02", newer))]
    for racer in racers:
        assert racer.wait(timeout=300) == 0, racer.stderr.read()[-2000:]
    assert store.published()["date"] == "2024-05-02"
    dates = [entry["date"] for entry in store.pointer_history()]
    assert dates.count("2024-05-02") == 25  # every publish of the newer date went live, none lost
    assert "2024-05-01" not in dates[dates.index("2024-05-02"):]  # once newer was live, older never was


def test_the_date_lock_on_s3_is_a_lease_taken_over_from_a_dead_holder(s3):
    from nightly_topn.storage import _HOST

    store = Storage.at(s3.url("lease"))
    with store.lock("dt=2024-03-01", timeout=5) as path:
        assert path.is_file()
        with pytest.raises(RunInProgress, match="has held"):
            with store.lock("dt=2024-03-01", timeout=0.5):
                pass
    assert not path.is_file()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"owner": "killed", "host": _HOST, "pid": int(dead.stdout),
                                "taken_at": time.time(), "lapses_at": time.time() + 3600}))
    with store.lock("dt=2024-03-01", timeout=5):  # the killed job's lease is taken over at once
        assert json.loads(path.read_text())["owner"] != "killed"


@pytest.mark.parametrize("url, needle", [("s3://bucket/../other", "without '..'"),
                                         ("ftp://host/x", "unsupported scheme"),
                                         ("s3://key:secret@bucket/x", "credentials")])
def test_storage_root_urls_are_checked(url, needle):
    with pytest.raises(ConfigError, match=needle):
        Storage.at(url)


def test_paths_cannot_escape_an_s3_root(s3):
    store = Storage.at(s3.url("day"))
    for path in ("../elsewhere", "s3://other-bucket/x", "/etc/passwd", "topn/../../x"):
        with pytest.raises(ConfigError, match="escapes the storage root"):
            store.inside(path)
    assert str(store.inside("topn/dt=2024-03-01")) == f"{s3.url('day')}/topn/dt=2024-03-01"


def test_a_process_follows_the_endpoint_its_environment_names_now(s3, monkeypatch):
    """A long-lived process (a worker, a test session) whose AWS_* variables now name another
    server reaches that one: no filesystem cached for the old endpoint is reused."""
    Storage.at(s3.url("first")).inside("probe.txt").write_text("first")
    with LocalS3() as other:
        for key, value in other.env().items():
            monkeypatch.setenv(key, value)
        Storage.at(other.url("second")).inside("probe.txt").write_text("second")
        assert other.keys() == ["second/probe.txt"]
    assert "first/probe.txt" in s3.keys() and "second/probe.txt" not in s3.keys()
