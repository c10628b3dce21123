"""The daily top-N DAG: ingest -> validate -> preprocess -> train -> evaluate -> top-N -> publish.

Thin by design: every task calls a job from ``nightly_topn.jobs`` (imported inside the task),
so parsing this file imports nothing heavy.

### Which day a run processes

The schedule is a cron *data-interval* timetable (``0 0 * * *`` UTC, Airflow 2 semantics): the
run that starts just after midnight has the data interval ``[D 00:00, D+1 00:00)`` and processes
day **D**, the previous full day. (Airflow 3's ``@daily`` would give a zero-length interval at the
run time.) In order of precedence:

1. the ``date`` Param, when set, names the day (a one-off run from the trigger form);
2. otherwise the run's data interval start (scheduled runs and backfills: a backfill
   ``--from-date 1998-03-01 --to-date 1998-03-05`` processes exactly those five days);
3. otherwise (a manual run with no logical date, e.g. REST ``logical_date: null``) the latest
   complete day: the day before the run's ``run_after``, in UTC.

### Backfills and reruns

Every task writes only its own date's partitions (``*/dt=D/``), atomically. A rerun of a
completed date (``airflow backfill create ... --reprocess-behavior completed``) recomputes the
same rows (deterministic seed, same inputs). Publishing never moves the live pointer to an older
date unless the ``allow_older`` Param is on, so backfilling history keeps today's lists live.
``ingest`` runs in the one-slot pool ``nightly_topn_ingest`` so concurrent runs never land the
same raw day twice at once.

### Failures

Tasks that touch the outside world (``ingest``, ``topn``, ``publish``) retry with exponential
backoff; the data gates and the deterministic steps do not (bad data stays bad). A task that
fails for good writes an alert to ``alerts/dt=D/TASK.try-N.json`` and ``alerts/alerts.jsonl``
under the storage root, and to the task log. A raw partition that fails its gate is moved to
``quarantine/rejected-raw/`` so a rerun re-lands it from the source. Nothing of a failed run is ever
published: the pointer only moves in ``publish``, after every gate passed.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from nightly_topn.config import PARAM_SPECS, RunParams

_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
INGEST_POOL = "nightly_topn_ingest"
#: The form's sections, in order (knobs not listed land in "Model").
SECTIONS = {
    "date": "What to run", "publish": "What to run", "allow_older": "What to run",
    "top_n": "Output", "beam_args": "Output", "eval_k": "Quality gate", "min_lift_over_popularity": "Quality gate",
    "holdout_quantile": "Quality gate", "champion_tolerance": "Quality gate", "eval_protocol": "Quality gate",
    "train_window_days": "Training data", "min_user_interactions": "Training data",
    "min_item_interactions": "Training data",
}


def _params() -> dict[str, Param]:
    params = {
        "date": Param(None, type=["null", "string"], format="date", pattern=DATE_PATTERN, title="Date to process",
                      description="Day whose data is processed, YYYY-MM-DD (UTC). Empty = the run's data interval; "
                                  "for a manual run without a logical date, the latest complete day (yesterday).",
                      section=SECTIONS["date"]),
    }
    for field in dataclasses.fields(RunParams):
        spec = dict(PARAM_SPECS[field.name])
        type_name = field.type if isinstance(field.type, str) else field.type.__name__
        default, json_type = field.default, _JSON_TYPES[type_name]
        if default == "":  # an optional text knob: the form marks an empty required string as missing
            default, json_type = None, ["null", json_type]
        params[field.name] = Param(default, type=json_type, title=field.name.replace("_", " "),
                                   section=SECTIONS.get(field.name, "Model"), **spec)
    return params


def run_date_of(context) -> str:
    """The day a run processes (rule in the module docstring), from a task's context."""
    params = context.get("params") or {}
    if params.get("date"):
        return dt.date.fromisoformat(str(params["date"])).isoformat()
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end > start:
        return start.date().isoformat()
    anchor = context.get("logical_date") or context["dag_run"].run_after
    return (anchor - dt.timedelta(days=1)).date().isoformat()


def _run_date() -> str:
    return run_date_of(get_current_context())


def _run_params() -> RunParams:
    return RunParams.from_mapping(get_current_context()["params"])


def _on_failure(context) -> None:
    """Record an alert (file + log) naming the date, task and reason."""
    from nightly_topn.alerts import record_failure

    record_failure(context, date_rule=run_date_of)


def _fail_fast(exc: Exception):
    """Deterministic errors (unreadable or invalid data) must not burn retries."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"{type(exc).__name__}: {exc}")


RETRY_TRANSIENT = {"retries": 3, "retry_delay": dt.timedelta(seconds=20), "retry_exponential_backoff": 2.0,
                   "max_retry_delay": dt.timedelta(minutes=10)}


@dag(
    dag_id="nightly_topn",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=2,
    params=_params(),
    default_args={"retries": 0, "on_failure_callback": _on_failure, "execution_timeout": dt.timedelta(hours=2)},
    tags=["recommender"],
    doc_md=__doc__,
)
def nightly_topn():
    @task(pool=INGEST_POOL, **RETRY_TRANSIENT)
    def ingest() -> str:
        """**Ingest** (retries with backoff: the source may be briefly unavailable or late).

        Lands the run day's events, and any day of the training window not landed yet, as
        ``raw/dt=D/`` partitions (atomic, idempotent: landed days are kept). Returns the run date
        that every later task uses. Runs in the one-slot pool ``nightly_topn_ingest``.
        """
        from nightly_topn.jobs.ingest import ingest as job

        date = _run_date()
        try:
            job(date, params=_run_params())
        except (ValueError, TypeError) as exc:  # unreadable / off-contract files: retrying cannot help
            raise _fail_fast(exc) from exc
        return date

    @task
    def validate_raw(date: str) -> dict:
        """**Raw-data gate** (Great Expectations, no retries: bad data stays bad).

        Checks the day's landed events against the committed suite; any hard failure stops the
        run. The rejected raw partition is moved to ``quarantine/rejected-raw/`` so a rerun re-lands
        the (fixed) day from the source instead of keeping the bad copy. Report: ``reports/dt=D/``.
        """
        from nightly_topn.jobs.validate import validate_raw as job
        from nightly_topn.quality import GateFailed

        try:
            return job(date, params=_run_params())
        except GateFailed as exc:
            _quarantine_raw(date)
            raise _fail_fast(exc) from exc

    @task
    def preprocess(date: str) -> dict:
        """**Preprocess**: the training window up to D (nothing later), dedupe, weight, filter,
        map ids, temporal holdout -> ``features/dt=D/``."""
        from nightly_topn.jobs.preprocess import preprocess as job

        return job(date, params=_run_params())

    @task
    def validate_features(date: str) -> dict:
        """**Features gate** (Great Expectations, no retries): ids mapped, no NaN weights, train and
        holdout disjoint, holdout share and user/item counts in bounds; a hard failure stops the run
        before training. Report: ``reports/dt=D/features.validation.json`` + Data Docs."""
        from nightly_topn.jobs.validate import validate_features as job
        from nightly_topn.quality import GateFailed

        try:
            return job(date, params=_run_params())
        except GateFailed as exc:
            raise _fail_fast(exc) from exc

    @task
    def train(date: str) -> dict:
        """**Train** the chosen model on the training split (for evaluation) and on all data (for
        scoring), plus the popularity fallback -> ``models/dt=D/``. Deterministic for a seed."""
        from nightly_topn.jobs.train import train as job

        return job(date, params=_run_params())

    @task
    def evaluate(date: str) -> dict:
        """**Quality gate**: holdout metrics vs popularity -> ``reports/dt=D/evaluation.json``; fails
        the run (nothing published) when the model does not beat popularity by the set lift."""
        from nightly_topn.jobs.evaluate import evaluate as job

        return job(date, params=_run_params())["gate"]

    @task(retries=1, retry_delay=dt.timedelta(seconds=30))
    def topn(date: str) -> dict:
        """**Top-N** (Beam): every user's list into a new, unpublished version
        ``topn/dt=D/v=ATTEMPT/`` (a failed attempt leaves only a staging folder nothing reads)."""
        from nightly_topn.jobs.topn import topn as job

        return job(date, params=_run_params())

    @task
    def validate_topn(date: str) -> dict:
        """**Top-N gate** (Great Expectations, no retries) on D's newest unpublished version: one
        list per active user, N distinct unseen items, scores non-increasing, coverage floor, model
        version and date; a hard failure stops the run, the live lists stay published."""
        from nightly_topn.jobs.validate import validate_topn as job
        from nightly_topn.quality import GateFailed

        try:
            return job(date, params=_run_params())
        except GateFailed as exc:
            raise _fail_fast(exc) from exc

    @task(retries=2, retry_delay=dt.timedelta(seconds=10), retry_exponential_backoff=2.0)
    def publish(date: str) -> dict:
        """**Publish**: point ``topn/CURRENT.json`` at D's newest version -- unless ``publish`` is off
        (dry run) or D is older than the live date and ``allow_older`` is off (backfill)."""
        from nightly_topn.jobs.publish import publish as job

        return job(date, params=_run_params())

    date = ingest()
    gates = validate_raw(date) >> preprocess(date) >> validate_features(date) >> train(date) >> evaluate(date)
    gates >> topn(date) >> validate_topn(date) >> publish(date)


def _quarantine_raw(date: str) -> None:
    """Move a rejected raw partition out of ``raw/`` (kept as ``quarantine/rejected-raw/dt=D.STAMP``)."""
    import os

    from nightly_topn.storage import Storage

    store = Storage.at()
    source = store.partition("raw", date)
    if source.is_dir():
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = store.root / "quarantine" / "rejected-raw" / f"dt={dt.date.fromisoformat(date)}.{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


nightly_topn()
