"""End to end under a real Airflow 3: api-server, scheduler, dag-processor and triggerer started one
by one (LocalExecutor, parallelism 2, every socket on 127.0.0.1, login required), on a private
PostgreSQL metadata DB listening on a Unix socket only (SQLite when no PostgreSQL is installed).

Data: a landing folder (``landing:PATH``, one ``dt=YYYY-MM-DD/`` folder per day) replaying
MovieLens 100K day by day, so one day can be made bad the way an upstream drop goes bad.

1. a one-off run triggered through the REST API as the UI form does (``logical_date: null``,
   non-default Params), after invalid Params were refused at trigger time;
2. ``airflow backfill create`` over six consecutive days (max two runs at a time): five correct
   partitions, each equal to an independent run of the jobs on only the data up to its date;
3. the sixth day's drop is bad: that run fails in the raw gate, an alert names date/task/reason,
   nothing of it is published, the other days succeed;
4. a completed date is rerun (``--reprocess-behavior completed``): identical rows, and the pointer
   is not moved back to the older date; the bad date triggered again leaves the pointer untouched;
5. every component is stopped with SIGTERM and nothing of the deployment keeps running.

``test_celery_backfill_on_object_store``: the same deployment with the CeleryExecutor instead --
Redis as the broker (``redis-server`` on 127.0.0.1, with a password), the result backend in the
PostgreSQL metadata DB, two Celery workers of one task slot each -- and the storage root on a local
S3 server (moto), so no task reads what another worker left on its disk: a 3-day backfill runs
across both workers and publishes to the bucket.

Timings are printed and written to ``var/e2e-timings.json`` (``var/e2e-celery-timings.json``).
Run alone with ``pytest -q -s tests/test_airflow_e2e.py`` (``-k celery`` for the second).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tools.local_airflow import CELERY_EXECUTOR, DAG_ID, PROJECT_DIR, LocalAirflow, LocalPostgres

ML100K = (PROJECT_DIR / ".." / "shared" / "datasets" / "ml-100k").resolve()
FIRST_DAY = dt.date(1997, 9, 20)
MANUAL_DAY = dt.date(1998, 2, 26)
BACKFILL = [dt.date(1998, 3, 1) + dt.timedelta(days=i) for i in range(6)]
BAD_DAY = BACKFILL[-1]
GOOD_DAYS = BACKFILL[:-1]
RERUN_DAY = BACKFILL[1]
#: The CeleryExecutor variant's backfill (all good days).
CELERY_DAYS = BACKFILL[:3]
#: Non-default knobs: the whole ML-100K history fits the window; one small, fast ALS (no search).
CONF = {"model": "als", "tuning_budget_seconds": 0, "train_window_days": 400, "factors": 16, "iterations": 8,
        "regularization": 0.05, "alpha": 2.0, "top_n": 10, "seed": 7}

pytestmark = pytest.mark.timeout(1500)


def build_landing(path: Path, last: dt.date, bad: dt.date | None = None) -> None:
    """``path/dt=D/events.parquet`` for every day of ML-100K up to ``last``; day ``bad`` (if any) also
    gets a second file of twice as many broken rows (null user ids, negative weights)."""
    from nightly_topn.sources.movielens import load_movielens
    from nightly_topn.sources.replay import ReplaySource

    source = ReplaySource(*load_movielens(ML100K), name="ml-100k")
    day = FIRST_DAY
    while day <= last:
        folder = path / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        events = source.events_for(day)
        pq.write_table(events, folder / "events.parquet")
        if day == bad:
            n = 2 * events.num_rows
            broken = pa.table({
                "user_id": pa.nulls(n, pa.string()),
                "item_id": pa.array(["1"] * n),
                "event_type": pa.array(["rating"] * n),
                "weight": pa.array([-5.0] * n, pa.float32()),
                "event_time": pa.array([dt.datetime.combine(day, dt.time(12), dt.timezone.utc)] * n,
                                       pa.timestamp("us", tz="UTC")),
            })
            pq.write_table(broken, folder / "events-late-drop.parquet")
        day += dt.timedelta(days=1)


def topn_rows(version_dir: Path) -> pd.DataFrame:
    frame = pq.read_table(sorted(version_dir.glob("part-*.parquet"))).to_pandas()
    return frame.sort_values("user_id", kind="stable").reset_index(drop=True)


def versions(root: Path, day: dt.date) -> list[Path]:
    base = root / "topn" / f"dt={day.isoformat()}"
    return sorted(p for p in base.glob("v=*") if (p / "_manifest.json").is_file()) if base.is_dir() else []


def assert_same_lists(left: pd.DataFrame, right: pd.DataFrame, what: str) -> None:
    assert len(left) == len(right) and len(left) > 0, f"{what}: {len(left)} vs {len(right)} rows"
    assert list(left["user_id"]) == list(right["user_id"]), what
    assert [list(x) for x in left["item_ids"]] == [list(x) for x in right["item_ids"]], f"{what}: lists differ"
    for a, b in zip(left["scores"], right["scores"]):
        assert list(a) == pytest.approx(list(b), rel=1e-5, abs=1e-6), f"{what}: scores differ"
    for column in ("source", "model_version", "logical_date"):
        assert list(left[column]) == list(right[column]), f"{what}: {column} differs"


def dates_in(paths) -> list[dt.date]:
    return [dt.date.fromisoformat(m) for p in paths for m in re.findall(r"dt=(\d{4}-\d{2}-\d{2})", str(p))]


def runs_between(af: LocalAirflow, first: dt.date, last: dt.date) -> dict[str, dict]:
    runs = af.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]
    found = {}
    for run in runs:
        if run["logical_date"] and first <= dt.date.fromisoformat(run["logical_date"][:10]) <= last:
            found[run["logical_date"][:10]] = run
    return found


def wait_backfill_done(af: LocalAirflow, started_after: float, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        af.check_alive()
        backfills = af.api("GET", "/backfills", params={"dag_id": DAG_ID, "limit": 100})["backfills"]
        mine = [b for b in backfills if dt.datetime.fromisoformat(b["created_at"].replace("Z", "+00:00")).timestamp()
                >= started_after - 5]
        if mine and all(b["completed_at"] for b in mine):
            return mine[-1]
        time.sleep(3)
    raise TimeoutError(f"backfill not completed after {timeout}s; logs in {af.logs}")


def task_instances(af: LocalAirflow, run_id: str) -> list[dict]:
    return af.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]


def task_states(af: LocalAirflow, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in task_instances(af, run_id)}


def new_workdir(kind: str = "e2e") -> Path:
    """``var/KIND/<UTC stamp>``: a private folder kept after the run (logs to read), not pytest's
    rotated tmp; the two previous runs' folders are kept, older ones removed."""
    work = PROJECT_DIR / "var" / kind / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    for old in sorted(work.parent.glob("2*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def run_backfill(af: LocalAirflow, days: list[dt.date], conf: dict, *, max_active_runs: int = 2,
                 timeout: float = 900) -> tuple[dict, dict[str, dict]]:
    """``airflow backfill create`` over ``days`` (consecutive), through the real scheduler; waits
    until the backfill completed and each of its runs finished. Returns ``(backfill, runs by date)``."""
    started = time.time()
    af.cli("backfill", "create", "--dag-id", DAG_ID, "--from-date", days[0].isoformat(),
           "--to-date", days[-1].isoformat(), "--max-active-runs", str(max_active_runs),
           "--dag-run-conf", json.dumps(conf))
    backfill = wait_backfill_done(af, started, timeout=timeout)
    runs = runs_between(af, days[0], days[-1])
    runs = af.wait_for_runs([r["dag_run_id"] for r in runs.values()], timeout=timeout)
    by_day = {r["logical_date"][:10]: r for r in runs.values()}
    assert sorted(by_day) == [d.isoformat() for d in days], sorted(by_day)
    assert all(r["run_type"] == "backfill" for r in by_day.values())
    assert backfill["max_active_runs"] == max_active_runs
    return backfill, by_day


@pytest.fixture(scope="module")
def ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.fail(f"MovieLens 100K is expected at {ML100K}")
    return ML100K


def test_real_scheduler_end_to_end(ml100k):
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    work = new_workdir()
    landing, root = work / "landing", work / "data"
    build_landing(landing, BAD_DAY, BAD_DAY)
    # use_job_schedule=False: this deployment replays 1998; the schedule's own "yesterday" run has no
    # data here (the scheduled-run date rule is covered in tests/test_dag.py).
    af = LocalAirflow(work, root, parallelism=2, NIGHTLY_TOPN_SOURCE=f"landing:{landing}",
                      AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False")
    try:
        af.start()
        timings["start_components_s"] = time.monotonic() - t0
        dag = af.wait_for_dag()
        assert dag["max_active_runs"] == 2
        assert dag["timetable_summary"], dag
        _assert_loopback_only(af)
        af.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})

        # -- 1. trigger form via REST: invalid values refused at trigger time, then a real run --------------
        for bad_conf, needle in (({"top_n": 0}, "top_n"), ({"date": "../../etc/passwd"}, "date"),
                                 ({"model": "no-such-model"}, "model"), ({"train_window_days": "many"}, "train_window_days")):
            response = _post_run(af, bad_conf)
            assert response.status_code == 400, (bad_conf, response.status_code, response.text)
            assert needle in response.text, response.text
        manual_conf = {**CONF, "top_n": 5, "date": MANUAL_DAY.isoformat()}
        started = time.monotonic()
        response = _post_run(af, manual_conf)
        assert response.status_code == 200, response.text
        manual = response.json()
        assert manual["logical_date"] is None and manual["data_interval_start"] is None
        done = af.wait_for_runs([manual["dag_run_id"]], timeout=600)[manual["dag_run_id"]]
        timings["manual_run_s"] = time.monotonic() - started
        assert done["state"] == "success", _diagnose(af, manual["dag_run_id"], root)
        (manual_version,) = versions(root, MANUAL_DAY)
        lists = topn_rows(manual_version)
        assert lists["item_ids"].map(len).max() == 5
        info = json.loads((root / "models" / f"dt={MANUAL_DAY}" / "model_info.json").read_text())
        assert info["params"]["factors"] == 16 and info["params"]["seed"] == 7, info
        assert af.api("GET", f"/dags/{DAG_ID}/dagRuns/{manual['dag_run_id']}")["conf"]["top_n"] == 5
        pointer = json.loads((root / "topn" / "CURRENT.json").read_text())
        assert pointer["date"] == MANUAL_DAY.isoformat()

        # -- 2. backfill six days, two at a time; the last day's drop is bad ----------------------------------
        t_backfill = time.monotonic()
        _, by_day = run_backfill(af, BACKFILL, CONF)
        timings["backfill_wall_s"] = time.monotonic() - t_backfill
        timings["backfill_days"] = len(BACKFILL)
        timings["backfill_wall_per_date_s"] = timings["backfill_wall_s"] / len(BACKFILL)
        for day in GOOD_DAYS:
            run = by_day[day.isoformat()]
            assert run["state"] == "success", (day, _diagnose(af, run["dag_run_id"], root))
            # the data interval is the day itself (cron data-interval timetable): run for D processes D
            assert run["data_interval_start"][:10] == day.isoformat()
            assert run["data_interval_end"][:10] == (day + dt.timedelta(days=1)).isoformat()
            (version,) = versions(root, day)
            manifest = json.loads((version / "_manifest.json").read_text())
            assert manifest["date"] == day.isoformat() and manifest["top_n"] == 10
            features = json.loads((root / "features" / f"dt={day}" / "_manifest.json").read_text())
            assert features["inputs"] and max(dates_in(features["inputs"])) == day, features["inputs"]
            interactions = pq.read_table(root / "features" / f"dt={day}" / "interactions.parquet").to_pandas()
            assert interactions["last_time"].max() < pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")
        bad_run = by_day[BAD_DAY.isoformat()]
        assert bad_run["state"] == "failed"
        states = task_states(af, bad_run["dag_run_id"])
        assert states["validate_raw"] == "failed" and states["publish"] != "success", states
        assert not versions(root, BAD_DAY) and not (root / "topn" / f"dt={BAD_DAY}").exists()
        # only the run dates have outputs (ingest also lands the window's raw days, by design)
        for kind in ("features", "models", "topn"):
            written = sorted(p.name for p in (root / kind).glob("dt=*"))
            assert written == [f"dt={d}" for d in [MANUAL_DAY, *GOOD_DAYS]], (kind, written)
        pointer_path = root / "topn" / "CURRENT.json"
        pointer = json.loads(pointer_path.read_text())
        assert pointer["date"] == GOOD_DAYS[-1].isoformat(), pointer

        # -- 3. the bad day: alert file + alert log + task log, raw partition quarantined ------------------
        alert_file = root / "alerts" / f"dt={BAD_DAY}" / "validate_raw.try-1.json"
        alert = json.loads(alert_file.read_text())
        assert alert["date"] == BAD_DAY.isoformat() and alert["task_id"] == "validate_raw"
        assert alert["reason"] and alert["run_id"] == bad_run["dag_run_id"], alert
        log_lines = [json.loads(x) for x in (root / "alerts" / "alerts.jsonl").read_text().splitlines()]
        assert [(a["date"], a["task_id"]) for a in log_lines] == [(BAD_DAY.isoformat(), "validate_raw")], log_lines
        task_log = af.api("GET", f"/dags/{DAG_ID}/dagRuns/{bad_run['dag_run_id']}/taskInstances/validate_raw/logs/1",
                          params={"full_content": True})
        assert "ALERT nightly_topn " + BAD_DAY.isoformat() in json.dumps(task_log), str(task_log)[:3000]
        assert list((root / "quarantine" / "rejected-raw").glob(f"dt={BAD_DAY}.*")), "raw partition not quarantined"

        # -- independent reference: the jobs by hand, in date order, on a fresh root (in the background,
        #    while step 4 runs; compared after it) ---------------------------------------------------------
        reference, ref_result = work / "reference", {}

        def run_reference():
            started_ref = time.monotonic()
            try:
                for day in (GOOD_DAYS[0], GOOD_DAYS[-1]):
                    args = [f"--{k.replace('_', '-')}={v}" for k, v in CONF.items()]
                    subprocess.run([sys.executable, "-m", "nightly_topn.cli", "run", "--date", day.isoformat(),
                                    "--root", str(reference), "--source", f"landing:{landing}", *args],
                                   check=True, env={**af.env, "NIGHTLY_TOPN_ROOT": str(reference)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
            except subprocess.CalledProcessError as exc:
                ref_result["error"] = f"{exc}: {exc.stderr.decode(errors='replace')[-3000:]}"
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                ref_result["error"] = repr(exc)
            ref_result["seconds"] = time.monotonic() - started_ref

        ref_thread = threading.Thread(target=run_reference, daemon=True)
        ref_thread.start()

        # -- 4. rerun a completed date + trigger the bad date again ------------------------------------------
        pointer_bytes = pointer_path.read_bytes()
        first_version = versions(root, RERUN_DAY)[0]
        started = time.time()
        t_rerun = time.monotonic()
        af.cli("backfill", "create", "--dag-id", DAG_ID, "--from-date", RERUN_DAY.isoformat(),
               "--to-date", RERUN_DAY.isoformat(), "--reprocess-behavior", "completed", "--dag-run-conf",
               json.dumps(CONF))
        retrigger = _post_run(af, {**CONF, "date": BAD_DAY.isoformat(), "allow_older": True})
        assert retrigger.status_code == 200, retrigger.text
        wait_backfill_done(af, started)
        rerun_id = runs_between(af, RERUN_DAY, RERUN_DAY)[RERUN_DAY.isoformat()]["dag_run_id"]
        finished = af.wait_for_runs([rerun_id, retrigger.json()["dag_run_id"]], timeout=600)
        timings["rerun_s"] = time.monotonic() - t_rerun
        assert finished[rerun_id]["state"] == "success", _diagnose(af, rerun_id, root)
        assert finished[retrigger.json()["dag_run_id"]]["state"] == "failed"
        rerun_versions = versions(root, RERUN_DAY)
        assert len(rerun_versions) == 2 and rerun_versions[0] == first_version, rerun_versions
        assert_same_lists(topn_rows(rerun_versions[0]), topn_rows(rerun_versions[1]), f"rerun of {RERUN_DAY}")
        assert pointer_path.read_bytes() == pointer_bytes, "the pointer moved (back to a rerun date or to a bad one)"
        ref_thread.join(timeout=900)
        assert not ref_thread.is_alive() and "error" not in ref_result, ref_result
        timings["reference_runs_s"] = ref_result["seconds"]
        for day in (GOOD_DAYS[0], GOOD_DAYS[-1]):
            (mine,) = versions(root, day)
            (theirs,) = versions(reference, day)
            assert_same_lists(topn_rows(mine), topn_rows(theirs), f"airflow vs reference {day}")
        assert len([a for a in (root / "alerts").rglob("validate_raw.try-*.json")]) >= 1
        assert [a["date"] for a in map(json.loads, (root / "alerts" / "alerts.jsonl").read_text().splitlines())] \
            == [BAD_DAY.isoformat()] * 2
    finally:
        # -- 5. SIGTERM every component, then nothing of this deployment may be left --------------------------
        codes = af.stop()
        time.sleep(1)
        left = af.leftovers()
        timings["total_s"] = time.monotonic() - t0
        _report(timings, af)
    assert all(code is not None for code in codes.values()), f"a component ignored SIGTERM: {codes}"
    assert left == [], f"processes left running: {left}"


@pytest.mark.slow
def test_celery_backfill_on_object_store(ml100k):
    """CeleryExecutor, two workers, storage root ``s3://nightly-topn/root`` on a local S3 server: a
    3-day backfill succeeds, its tasks ran on both workers, the lists and the pointer are in the
    bucket, nothing of the deployment is left running."""
    if not LocalPostgres.available():
        pytest.skip("the CeleryExecutor needs a PostgreSQL metadata DB (its result backend): no PostgreSQL server "
                    f"binaries under {LocalPostgres.BIN} or no psycopg2/asyncpg (scripts/install-system-test-deps.sh)")
    if shutil.which("redis-server") is None:
        pytest.skip("the Celery broker is Debian's redis-server, not installed (scripts/install-system-test-deps.sh)")
    from tools.local_redis import LocalRedis
    from tools.local_s3 import LocalS3

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    work = new_workdir("e2e-celery")
    landing = work / "landing"  # the upstream drop: written by the test, read by ingest, never by a worker
    build_landing(landing, CELERY_DAYS[-1])
    codes, left = {}, None
    with LocalS3() as s3, LocalRedis() as redis:
        # every component gets the bucket's AWS_* variables; the root is the bucket, not a disk
        af = LocalAirflow(work, s3.url("root"), parallelism=2, database="postgres", executor=CELERY_EXECUTOR,
                          workers=2, concurrency=1, broker_url=redis.url, NIGHTLY_TOPN_SOURCE=f"landing:{landing}",
                          AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False", **s3.env())
        try:
            af.start()
            timings["start_components_s"] = time.monotonic() - t0
            assert af.env["NIGHTLY_TOPN_ROOT"] == "s3://nightly-topn/root"
            af.wait_for_dag()
            _assert_loopback_only(af)
            for server in (redis, s3):  # the broker and the object store: loopback only too
                listening = {c.laddr.ip for c in psutil.Process(server.proc.pid).net_connections(kind="tcp")
                             if c.status == psutil.CONN_LISTEN}
                assert listening and listening <= {"127.0.0.1"}, (server, listening)
            af.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})

            t_backfill = time.monotonic()
            _, by_day = run_backfill(af, CELERY_DAYS, CONF)
            timings["backfill_wall_s"] = time.monotonic() - t_backfill
            timings["backfill_days"] = len(CELERY_DAYS)
            for day in CELERY_DAYS:
                run = by_day[day.isoformat()]
                assert run["state"] == "success", (day, _diagnose(af, run["dag_run_id"]))

            # -- which worker ran what: the task instances' hostnames, cross-checked with the workers' logs --
            tis = [ti for run in by_day.values() for ti in task_instances(af, run["dag_run_id"])]
            assert tis and all(ti["state"] == "success" for ti in tis), [(t["task_id"], t["state"]) for t in tis]
            ran_on = {name: [ti for ti in tis if ti["hostname"] == name] for name in af.workers}
            assert sorted({ti["hostname"] for ti in tis}) == sorted(af.workers), {t["hostname"] for t in tis}
            assert all(ran_on.values()), {name: len(mine) for name, mine in ran_on.items()}
            worker_logs = {name: (af.logs / f"{name}.log").read_text(errors="replace") for name in af.workers}
            for name, mine in ran_on.items():
                others = [text for other, text in worker_logs.items() if other != name]
                for ti in mine:  # Celery logged the workload (its TI id) on that worker, and on no other
                    assert ti["id"] in worker_logs[name] and not any(ti["id"] in text for text in others), \
                        (name, ti["task_id"], ti["dag_run_id"])
            timings.update({f"tasks_on_{name}": len(mine) for name, mine in ran_on.items()})

            # -- the outputs are in the bucket: a manifested version per day, the pointer on the last day --
            keys = s3.keys("root/topn/")
            assert "root/topn/CURRENT.json" in keys, keys
            for day in CELERY_DAYS:
                manifests = [k for k in keys if re.fullmatch(rf"root/topn/dt={day}/v=[^/]+/_manifest\.json", k)]
                assert len(manifests) == 1, (day, keys)
            pointer = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="root/topn/CURRENT.json")["Body"].read())
            assert pointer["date"] == CELERY_DAYS[-1].isoformat(), pointer
            # nothing went to a local storage root (e.g. an ``s3:`` folder from a URL taken as a path)
            assert sorted(p.name for p in work.iterdir()) == ["airflow", "component-logs", "landing"], \
                sorted(work.iterdir())
            # the broker password (generated here) is in no component log
            assert not [p.name for p in af.logs.glob("*.log") if redis.password in p.read_text(errors="replace")]
        finally:
            codes = af.stop()
            time.sleep(1)
            left = af.leftovers()
            timings["total_s"] = time.monotonic() - t0
            _report(timings, af, "e2e-celery")
    assert redis.proc.poll() is not None and s3.proc.poll() is not None
    assert all(code is not None for code in codes.values()), f"a component ignored SIGTERM: {codes}"
    assert left == [], f"processes left running: {left}"


def _diagnose(af: LocalAirflow, run_id: str, root: Path | None = None) -> str:
    """Task states, alerts (local root) and the failed tasks' last log lines, for an assertion message."""
    states = task_states(af, run_id)
    lines = [f"run {run_id}: {states}"]
    if root is not None:
        alerts = root / "alerts" / "alerts.jsonl"
        lines.append(f"alerts: {alerts.read_text() if alerts.is_file() else 'none'}")
    for task_id, state in states.items():
        if state == "failed":
            for log in sorted(af.home.glob(f"logs/dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/*.log")):
                lines.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(lines)[-8000:]


def _post_run(af: LocalAirflow, conf: dict):
    return httpx.post(f"{af.url}/api/v2/dags/{DAG_ID}/dagRuns", timeout=60,
                         headers={"Authorization": f"Bearer {af.token()}"},
                         json={"logical_date": None, "conf": conf, "note": "e2e: as the trigger form does"})


def _assert_loopback_only(af: LocalAirflow) -> None:
    sockets = af.listening_sockets()
    assert sockets, "found no listening socket of the deployment"
    assert all(host in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for host, _ in sockets), sockets
    assert ("127.0.0.1", af.port) in sockets


def _report(timings: dict, af: LocalAirflow, name: str = "e2e") -> None:
    out = PROJECT_DIR / "var" / f"{name}-timings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()}
    payload["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    payload["cpus"] = os.cpu_count()
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nreal-scheduler {name} timings: {json.dumps(payload)} (component logs: {af.logs})")
