"""The daily top-N DAG: ingest -> validate -> preprocess -> train -> evaluate -> top-N -> publish.

Thin by design: every task calls a job from ``nightly_topn.jobs`` (imported inside the task),
so parsing this file imports nothing heavy.

Which day a run processes: the run's data interval is the previous full day (cron data-interval
timetable, Airflow 2 semantics), and the run processes the interval's start date. A manual run
may name the day with the ``date`` Param; a manual run with no data interval (e.g. REST
``logical_date: null``) processes the latest complete day (yesterday, UTC).
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from nightly_topn.config import PARAM_SPECS, RunParams

_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def _params() -> dict[str, Param]:
    params = {
        "date": Param(None, type=["null", "string"], format="date", title="Date to process",
                      description="YYYY-MM-DD; empty = the run's data interval (or yesterday for a manual run)."),
    }
    for field in dataclasses.fields(RunParams):
        spec = PARAM_SPECS[field.name]
        params[field.name] = Param(field.default, type=_JSON_TYPES[field.type], title=field.name.replace("_", " "), **spec)
    return params


def _run_date() -> str:
    """The day this run processes (see module docstring)."""
    context = get_current_context()
    if context["params"].get("date"):
        return dt.date.fromisoformat(context["params"]["date"]).isoformat()
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end > start:
        return start.date().isoformat()
    anchor = context.get("logical_date") or context["dag_run"].run_after
    return (anchor - dt.timedelta(days=1)).date().isoformat()


def _run_params() -> RunParams:
    return RunParams.from_mapping(get_current_context()["params"])


@dag(
    dag_id="nightly_topn",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=2,
    params=_params(),
    default_args={"retries": 0},
    tags=["recommender"],
    doc_md=__doc__,
)
def nightly_topn():
    @task(retries=2, retry_delay=dt.timedelta(seconds=30), retry_exponential_backoff=True)
    def ingest() -> str:
        """Land the run day's events (and any missing day of the training window) as raw partitions."""
        from nightly_topn.jobs.ingest import ingest as job

        date = _run_date()
        job(date, params=_run_params())
        return date

    @task
    def validate_raw(date: str) -> dict:
        """Great Expectations gate on the day's raw events; a hard failure stops the run."""
        from nightly_topn.jobs.validate import validate_raw as job

        return job(date, params=_run_params())

    @task
    def preprocess(date: str) -> dict:
        """Window, dedupe, weight, filter, map ids, temporal holdout."""
        from nightly_topn.jobs.preprocess import preprocess as job

        return job(date, params=_run_params())

    @task
    def train(date: str) -> dict:
        """Fit the model on the training split (for evaluation) and on all data (for scoring)."""
        from nightly_topn.jobs.train import train as job

        return job(date, params=_run_params())

    @task
    def evaluate(date: str) -> dict:
        """Holdout metrics vs popularity; the quality gate."""
        from nightly_topn.jobs.evaluate import evaluate as job

        return job(date, params=_run_params())["gate"]

    @task
    def topn(date: str) -> dict:
        """Beam pipeline: top-N per user to an unpublished Parquet version."""
        from nightly_topn.jobs.topn import topn as job

        return job(date, params=_run_params())

    @task
    def publish(date: str) -> dict:
        """Switch the published pointer to the new lists."""
        from nightly_topn.jobs.publish import publish as job

        return job(date, params=_run_params())

    date = ingest()
    gates = validate_raw(date) >> preprocess(date) >> train(date) >> evaluate(date)
    gates >> topn(date) >> publish(date)


nightly_topn()
