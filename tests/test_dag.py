"""The daily DAG without a scheduler: it parses, its Params form a typed and bounded trigger form,
invalid values are refused, the date rule gives every kind of run the day users expect, and the
failure handling (retries, alerts) is wired as documented."""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
from types import SimpleNamespace

import pytest

from tools.local_airflow import PROJECT_DIR

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def dag_module():
    spec = importlib.util.spec_from_file_location("daily_topn_dag_under_test", PROJECT_DIR / "dags" / "daily_topn_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dag(dag_module):
    return dag_module.nightly_topn()


def test_dag_parses_in_a_dagbag(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(PROJECT_DIR / "dags"))
    assert bag.import_errors == {}
    assert "nightly_topn" in bag.dags


def test_schedule_is_a_data_interval_timetable(dag):
    from airflow.timetables.interval import CronDataIntervalTimetable

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.catchup is False
    assert dag.max_active_runs == 2


def _context(*, params=None, start=None, end=None, logical=None, run_after=None):
    return {"params": params or {}, "data_interval_start": start, "data_interval_end": end,
            "logical_date": logical, "dag_run": SimpleNamespace(run_after=run_after)}


def test_scheduled_run_processes_the_previous_full_day(dag, dag_module):
    """The run the scheduler starts just after midnight of 2024-03-06 covers [03-05, 03-06)."""
    from airflow.timetables.base import DataInterval, TimeRestriction

    last = DataInterval(dt.datetime(2024, 3, 4, tzinfo=UTC), dt.datetime(2024, 3, 5, tzinfo=UTC))
    info = dag.timetable.next_dagrun_info(
        last_automated_data_interval=last,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True))
    assert info.data_interval.start == dt.datetime(2024, 3, 5, tzinfo=UTC)
    assert info.data_interval.end == dt.datetime(2024, 3, 6, tzinfo=UTC)
    assert info.run_after == dt.datetime(2024, 3, 6, tzinfo=UTC)
    context = _context(start=info.data_interval.start, end=info.data_interval.end, logical=info.logical_date,
                       run_after=info.run_after)
    assert dag_module.run_date_of(context) == "2024-03-05"


def test_dags_test_and_manual_runs_with_a_logical_date(dag, dag_module):
    """``airflow dags test nightly_topn 2024-03-02`` infers the interval ending then: it processes 03-01."""
    run_after = dt.datetime(2024, 3, 2, tzinfo=UTC)
    interval = dag.timetable.infer_manual_data_interval(run_after=run_after)
    assert (interval.start, interval.end) == (dt.datetime(2024, 3, 1, tzinfo=UTC), run_after)
    assert dag_module.run_date_of(_context(start=interval.start, end=interval.end, run_after=run_after)) == "2024-03-01"


def test_manual_run_without_logical_date_processes_the_latest_complete_day(dag_module):
    """REST ``logical_date: null``: no data interval; the day before run_after (UTC)."""
    context = _context(run_after=dt.datetime(2024, 3, 5, 17, 30, tzinfo=UTC))
    assert dag_module.run_date_of(context) == "2024-03-04"
    # a zero-length interval (what @daily would give) is not mistaken for a day of data
    at = dt.datetime(2024, 3, 5, tzinfo=UTC)
    assert dag_module.run_date_of(_context(start=at, end=at, logical=at, run_after=at)) == "2024-03-04"


def test_date_param_wins(dag_module):
    context = _context(params={"date": "2023-12-31"}, start=dt.datetime(2024, 3, 5, tzinfo=UTC),
                       end=dt.datetime(2024, 3, 6, tzinfo=UTC), run_after=dt.datetime(2024, 3, 6, tzinfo=UTC))
    assert dag_module.run_date_of(context) == "2023-12-31"


def test_every_param_is_typed_bounded_and_described(dag):
    from nightly_topn.config import RunParams

    schemas = {name: dag.params.get_param(name).schema for name in dag.params}
    descriptions = {name: dag.params.get_param(name).description for name in dag.params}
    expected = {"date", *RunParams.__dataclass_fields__}
    assert set(schemas) == expected
    for name, schema in schemas.items():
        assert schema.get("type"), name
        assert len(descriptions[name] or "") > 20, name
        assert schema.get("title"), name
        if schema["type"] in ("integer", "number"):
            assert "minimum" in schema and "maximum" in schema, name
    assert schemas["model"].get("enum"), "model must be a choice list in the form"
    assert schemas["date"]["format"] == "date"
    assert {"publish", "allow_older"} <= set(schemas)
    assert schemas["publish"]["type"] == "boolean" and schemas["allow_older"]["type"] == "boolean"
    dag.params.validate()  # the defaults themselves are valid


@pytest.mark.parametrize("name, value", [
    ("top_n", 0), ("top_n", 100000), ("top_n", "ten"), ("train_window_days", -1), ("holdout_quantile", 1.5),
    ("model", "no-such-model"), ("date", "../../etc/passwd"), ("date", "2024-13-45"), ("date", "yesterday"),
    ("publish", "maybe"), ("factors", 1), ("seed", -1), ("beam_workers", 65), ("beam_running_mode", "spark"),
])
def test_invalid_values_are_refused_with_a_message_naming_the_param(dag, name, value):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError) as caught:
        params[name] = value  # Airflow validates on assignment (and again on trigger)
        params.validate()
    assert name in str(caught.value)


def test_no_param_is_free_text(dag):
    """A trigger-form user cannot name a path or a Beam flag: every text Param is a choice list or a
    pattern-checked date, and no Param is an open list of flags."""
    for name in dag.params:
        schema = dag.params.get_param(name).schema
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "string" in types:
            assert schema.get("enum") or schema.get("pattern"), name
    assert "beam_args" not in dag.params


def test_valid_non_default_values_pass(dag):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dag.params)
    for name, value in {"date": "1998-03-01", "top_n": 5, "train_window_days": 400, "publish": False,
                        "allow_older": True, "factors": 16}.items():
        params[name] = value
    resolved = params.validate()
    assert resolved["top_n"] == 5 and resolved["date"] == "1998-03-01"


def test_tasks_are_documented_and_retry_only_where_errors_are_transient(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    assert {"ingest", "validate_raw", "preprocess", "train", "evaluate", "topn", "publish"} <= set(tasks)
    for task_id, task in tasks.items():
        assert task.doc_md and len(task.doc_md) > 40, f"{task_id} has no doc_md"
        callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]
        assert any(getattr(cb, "__name__", "") == "_on_failure" for cb in callbacks), task_id
    for transient in ("ingest", "topn", "publish"):
        assert tasks[transient].retries >= 1, transient
    assert tasks["ingest"].retry_exponential_backoff and tasks["publish"].retry_exponential_backoff
    for deterministic in ("validate_raw", "preprocess", "train", "evaluate"):
        assert tasks[deterministic].retries == 0, deterministic
    for task_id in ("validate_features", "validate_topn"):
        if task_id in tasks:
            assert tasks[task_id].retries == 0, task_id
    assert tasks["ingest"].pool == "nightly_topn_ingest"
    assert "previous full day" in dag.doc_md


def test_publish_is_downstream_of_every_gate(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    upstream = tasks["publish"].get_flat_relative_ids(upstream=True)
    assert {"ingest", "validate_raw", "evaluate", "topn"} <= upstream
    assert all(t in upstream for t in tasks if t.startswith("validate_") and t != "validate_similar")
    # similar items are their own product: gated by their own gate, after the data gates and the quality gate
    similar = tasks["publish_similar"].get_flat_relative_ids(upstream=True)
    assert {"validate_raw", "validate_features", "evaluate", "similar", "validate_similar"} <= similar
    assert "publish" not in similar and "publish_similar" not in upstream


def test_failure_callback_writes_an_alert_a_person_can_read(dag_module, tmp_path, monkeypatch, caplog):
    from nightly_topn.alerts import read_alerts

    monkeypatch.setenv("NIGHTLY_TOPN_ROOT", str(tmp_path))

    class TI:  # the attributes Airflow's RuntimeTaskInstance gives a callback
        dag_id, run_id, task_id, try_number = "nightly_topn", "backfill__1998-03-06", "validate_raw", 1
        log_url = "http://127.0.0.1:8080/dags/nightly_topn/runs/x/tasks/validate_raw"

        def xcom_pull(self, task_ids):
            return "1998-03-06" if task_ids == "ingest" else None

    context = {"ti": TI(), "exception": RuntimeError("gate raw_events: FAILED not_null user_id"),
               "params": {}, "dag_run": SimpleNamespace(run_after=dt.datetime(2026, 1, 1, tzinfo=UTC))}
    with caplog.at_level("ERROR"):
        dag_module._on_failure(context)
    path = tmp_path / "alerts" / "dt=1998-03-06" / "validate_raw.try-1.json"
    alert = json.loads(path.read_text())
    assert alert["date"] == "1998-03-06" and alert["task_id"] == "validate_raw"
    assert alert["error_type"] == "RuntimeError" and "not_null user_id" in alert["reason"]
    assert read_alerts(tmp_path, "1998-03-06") == [alert]
    assert any("ALERT nightly_topn 1998-03-06 task validate_raw" in r.getMessage() for r in caplog.records)

    # ingest itself failed (no XCom): the date comes from the date rule; a broken sink never raises
    class EarlyTI(TI):
        task_id = "ingest"

        def xcom_pull(self, task_ids):
            return None

    dag_module._on_failure({**context, "ti": EarlyTI(), "params": {"date": "1998-03-07"}})
    assert (tmp_path / "alerts" / "dt=1998-03-07" / "ingest.try-1.json").is_file()
    monkeypatch.setenv("NIGHTLY_TOPN_ROOT", "/proc/no-such-dir/alerts")
    dag_module._on_failure(context)  # must not raise


def test_storage_root_cannot_be_escaped_through_a_date(tmp_path):
    from nightly_topn.storage import Storage

    store = Storage.at(tmp_path)
    with pytest.raises(ValueError):
        store.partition("raw", "../../etc")
    with pytest.raises(ValueError):
        store.inside("../outside")


# -- the deployment files (docker/): no engine here, so check what can be checked ----------------------------
def test_compose_file_parses_and_describes_the_deployment():
    import yaml

    compose = yaml.safe_load((PROJECT_DIR / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker", "redis"):
        assert name in services, name
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert services["airflow-worker"]["profiles"] == ["celery"] and services["redis"]["profiles"] == ["celery"]
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:${AIRFLOW_API_PORT:-8080}:8080"]
    # secrets come from the environment, required, never with a default value in the file
    text = (PROJECT_DIR / "docker" / "compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET",
                   "AIRFLOW_ADMIN_PASSWORD", "REDIS_PASSWORD"):
        assert f"${{{secret}:?" in text, secret
        assert f"${{{secret}:-" not in text.replace("${REDIS_PASSWORD:-}", ""), secret
    example = (PROJECT_DIR / "docker" / "env.example").read_text()
    for line in example.splitlines():
        if line and not line.startswith("#") and any(k in line for k in ("PASSWORD", "KEY", "SECRET")):
            assert line.endswith("="), f"env.example must not carry a secret value: {line}"


def test_image_installs_like_ci():
    """The Dockerfile's install steps are the Makefile's (what CI runs): torch pin first, then constraints."""
    makefile = (PROJECT_DIR / "Makefile").read_text()
    dockerfile = (PROJECT_DIR / "docker" / "Dockerfile").read_text()
    torch_pin = re.search(r"torch==([0-9.]+)", makefile).group(1)
    assert f"ARG TORCH_VERSION={torch_pin}" in dockerfile
    assert re.search(r"pip install .*-c constraints\.txt", makefile)
    assert re.search(r"pip install --no-cache-dir \"?\.(\[[a-z0-9,]+\])?\"? -c constraints\.txt", dockerfile)
    assert "ann" in re.search(r"pip install --no-cache-dir \"\.\[([a-z0-9,]+)\]\"", dockerfile).group(1)  # faiss: candidates=auto at 2M items
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}", dockerfile, re.M)
    airflow_pin = re.search(r"^apache-airflow==([0-9.]+)$", (PROJECT_DIR / "constraints.txt").read_text(), re.M).group(1)
    assert f"ARG AIRFLOW_VERSION={airflow_pin}" in dockerfile
    copied = " ".join(re.findall(r"^COPY --chown=airflow:0 (.+)$", dockerfile, re.M))
    for name in ("setup.py", "constraints.txt", "nightly_topn", "jobs", "pipelines", "expectations", "dags/"):
        assert name in copied.split(), name
