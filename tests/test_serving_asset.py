"""The Asset ``nightly_topn_lists`` under real Airflow (``airflow dags test``, SQLite metadata DB):
``publish`` emits one event, with its extra, when the pointer moves, and none for a backfilled
older date that keeps the live lists, nor for a dry run; the downstream DAG is queued by it."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from conftest import SMALL_SOURCE

from nightly_topn.serving.assets import LISTS_ASSET_NAME
from nightly_topn.storage import MANIFEST, Storage, read_json
from tools.local_airflow import airflow_cli, airflow_env

KNOBS = {"top_n": 5, "train_window_days": 21, "model": "als", "tuning_budget_seconds": 0}
#: (logical date, extra conf): the day before each logical date is processed.
RUNS = [("2024-03-03", {}),                  # 2024-03-02 goes live: one event
        ("2024-03-02", {}),                  # 2024-03-01, older than the live date: kept, no event
        ("2024-03-04", {"publish": False})]  # 2024-03-03 as a dry run: no event
# The three runs in one process, each exactly as ``airflow dags test`` runs it (its own CLI code),
# so the imports of Airflow and of the jobs are paid once.
DAGS_TEST = """
import json, sys
from airflow.cli import cli_parser
for logical, conf in json.loads(sys.argv[1]):
    args = cli_parser.get_parser().parse_args(["dags", "test", "nightly_topn", logical, "-c", conf])
    args.func(args)
"""


@pytest.fixture(scope="module")
def airflow_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("asset")
    env = airflow_env(work / "home", work / "data", NIGHTLY_TOPN_SOURCE=SMALL_SOURCE,
                      AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False")
    subprocess.run([airflow_cli(), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    # the downstream DAG is paused when first deployed; a team unpauses it once Redis is configured
    for command in (["dags", "reserialize"], ["dags", "unpause", "nightly_topn_serve_redis"]):
        subprocess.run([airflow_cli(), *command], env=env, check=True, capture_output=True, timeout=300)
    runs = json.dumps([[logical, json.dumps({**KNOBS, **conf})] for logical, conf in RUNS])
    proc = subprocess.run([sys.executable, "-c", DAGS_TEST, runs], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    db = sqlite3.connect(work / "home" / "airflow.db")
    yield db, Storage.at(work / "data")
    db.close()


def publish_states(db) -> list[str]:
    rows = db.execute("SELECT dr.logical_date, ti.state FROM task_instance ti JOIN dag_run dr "
                      "ON dr.run_id = ti.run_id AND dr.dag_id = ti.dag_id "
                      "WHERE ti.dag_id = 'nightly_topn' AND ti.task_id = 'publish' ORDER BY dr.logical_date").fetchall()
    return [state for _, state in rows]


@pytest.mark.slow
def test_only_a_real_pointer_move_emits_an_event_with_the_lists_extra(airflow_runs):
    db, store = airflow_runs
    events = db.execute("SELECT a.name, e.extra, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id"
                        ).fetchall()
    assert len(events) == 1, events
    name, extra, task = events[0]
    pointer = store.published()
    manifest = read_json(store.root / pointer["path"] / MANIFEST)
    assert (name, task) == (LISTS_ASSET_NAME, "publish")
    assert json.loads(extra) == {"date": "2024-03-02", "version": pointer["path"], "rows": manifest["rows"],
                                 "model_version": manifest["model_version"], "published_at": pointer["published_at"]}
    # logical 03-02 (kept: older than the live date), 03-03 (the move), 03-04 (dry run)
    assert publish_states(db) == ["skipped", "success", "skipped"]
    assert pointer["date"] == "2024-03-02"


@pytest.mark.slow
def test_the_downstream_dag_is_scheduled_on_the_asset_and_queued_by_the_event(airflow_runs):
    db, _ = airflow_runs
    refs = db.execute("SELECT r.dag_id FROM dag_schedule_asset_reference r JOIN asset a ON a.id = r.asset_id "
                      "WHERE a.name = ?", (LISTS_ASSET_NAME,)).fetchall()
    queued = db.execute("SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id "
                        "WHERE a.name = ?", (LISTS_ASSET_NAME,)).fetchall()
    assert refs == [("nightly_topn_serve_redis",)]
    assert queued == [("nightly_topn_serve_redis",)]
