"""The daily top-N DAG: ingest -> validate -> (rolling_eval, preprocess -> train) -> evaluate -> top-N -> publish.

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
same raw day twice at once. Two runs of the *same* date never interleave: every task holds the
date's lock, and the later run owns the date (``runs/dt=D.json``), so the earlier one stops at
its next task with a message (``nightly_topn.runs``).

### Failures

Tasks that touch the outside world (``ingest``, ``topn``, ``publish``) retry with exponential
backoff; the data gates and the deterministic steps do not (bad data stays bad). A task that
fails for good writes an alert to ``alerts/dt=D/TASK.try-N.json`` and ``alerts/alerts.jsonl``
under the storage root, and to the task log. A raw partition that fails its gate is moved to
``quarantine/rejected-raw/`` so a rerun re-lands it from the source. Nothing of a failed run is ever
published: ``topn`` hands its exact version to ``validate_topn``, which records its verdict in it,
and ``publish`` moves the pointer only to that version, and only if the verdict passed.
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from nightly_topn.config import knob_schemas
from nightly_topn.serving.assets import event_extra, lists_asset

DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
INGEST_POOL = "nightly_topn_ingest"
#: The form's sections, in order (knobs not listed land in "Model").
SECTIONS = {
    "date": "What to run", "publish": "What to run", "allow_older": "What to run",
    "top_n": "Output", "beam_running_mode": "Output", "beam_workers": "Output", "eval_k": "Quality gate", "min_lift_over_popularity": "Quality gate",
    "holdout_quantile": "Quality gate", "champion_tolerance": "Quality gate", "eval_protocol": "Quality gate",
    "train_window_days": "Training data", "recency_half_life_days": "Training data", "min_user_interactions": "Training data",
    "min_item_interactions": "Training data", "new_item_days": "Training data",
    "challenger_model": "A/B experiment", "challenger_share": "A/B experiment", "experiment": "A/B experiment",
}


def _params() -> dict[str, Param]:
    params = {
        "date": Param(None, type=["null", "string"], format="date", pattern=DATE_PATTERN, title="Date to process",
                      description="Day whose data is processed, YYYY-MM-DD (UTC). Empty = the run's data interval; "
                                  "for a manual run without a logical date, the latest complete day (yesterday).",
                      section=SECTIONS["date"]),
    }
    for name, schema in knob_schemas().items():
        schema = dict(schema)
        default, description = schema.pop("default"), schema.pop("description")
        params[name] = Param(default, title=name.replace("_", " "), description=description,
                             section=SECTIONS.get(name, "Model"), **schema)
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


def _job(name: str, date: str, **kwargs):
    """Run job ``name`` of the day as part of this DAG run (``nightly_topn.jobs.run_job``: the date's
    lock, this run's claim). Expected failures (``NightlyTopNError``: bad input, a failed gate, a
    refused parameter) fail the task at once with their one-line message: retrying cannot help,
    except for a source that has not delivered yet (``ingest``'s ``MissingPartition``)."""
    import logging

    from nightly_topn.config import RunParams
    from nightly_topn.errors import MissingPartition, NightlyTopNError
    from nightly_topn.jobs import preflight, run_job

    context = get_current_context()
    run_id = f"{context['dag'].dag_id}__{context['run_id']}"
    try:
        params = RunParams.from_mapping(context["params"])
        if name == "ingest":
            preflight(params)
        return run_job(name, date, params=params, run_id=run_id, **kwargs)
    except NightlyTopNError as exc:
        log = logging.getLogger("nightly_topn")
        log.error("%s %s failed (%s): %s", name, date, type(exc).__name__, exc)  # the line to act on
        log.debug("%s failed", name, exc_info=True)
        if name == "ingest" and isinstance(exc, MissingPartition):
            raise
        raise _fail_fast(exc) from None


def _on_failure(context) -> None:
    """Record an alert (file + log) naming the date, task and reason."""
    from nightly_topn.alerts import record_failure

    record_failure(context, date_rule=run_date_of)


def _fail_fast(exc: Exception):
    """Deterministic errors (unreadable or invalid data, a failed gate) must not burn retries."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"{type(exc).__name__}: {exc}")


#: The published lists: ``publish``'s outlet, what downstream DAGs (``serve_redis``) schedule on.
TOPN_LISTS = lists_asset()

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
        date = _run_date()
        _job("ingest", date)
        return date

    @task
    def validate_raw(date: str) -> dict:
        """**Raw-data gate** (Great Expectations, no retries: bad data stays bad).

        Checks the day's landed events against the committed suite; any hard failure stops the
        run. The rejected raw partition is moved to ``quarantine/rejected-raw/`` so a rerun re-lands
        the (fixed) day from the source instead of keeping the bad copy. Report: ``reports/dt=D/``.
        """
        return _job("validate", date)

    @task
    def rolling_eval(date: str) -> dict:
        """**What users saw**: once day D has landed, the lists published for D-7 have their whole
        horizon; score them, and what that run's popularity baseline would have served, against
        D-6..D -> ``reports/dt=D-7/rolling_eval.json``. ``evaluate`` shows it next to the holdout and
        stops protecting a live champion whose served lists lost to popularity."""
        return _job("rolling_eval", date)

    @task
    def preprocess(date: str) -> dict:
        """**Preprocess**: the training window up to D (nothing later), dedupe, weight, filter,
        map ids, temporal holdout -> ``features/dt=D/``."""
        return _job("preprocess", date)

    @task
    def validate_features(date: str) -> dict:
        """**Features gate** (Great Expectations, no retries): ids mapped, no NaN weights, train and
        holdout disjoint, holdout share and user/item counts in bounds; a hard failure stops the run
        before training. Report: ``reports/dt=D/features.validation.json`` + Data Docs."""
        return _job("validate_features", date)

    @task
    def train(date: str) -> dict:
        """**Train** the chosen model on the training split (for evaluation) and on all data (for
        scoring), plus the popularity fallback -> ``models/dt=D/``. Deterministic for a seed."""
        return _job("train", date)

    @task
    def evaluate(date: str) -> dict:
        """**Quality gate**: holdout metrics vs popularity -> ``reports/dt=D/evaluation.json``; fails
        the run (nothing published) when the model does not beat popularity by the set lift."""
        return _job("evaluate", date)["gate"]

    @task(retries=1, retry_delay=dt.timedelta(seconds=30))
    def topn(date: str) -> str:
        """**Top-N** (Beam): every user's list into a new, unpublished version
        ``topn/dt=D/v=ATTEMPT/`` (a failed attempt leaves only a staging folder nothing reads).
        Returns that version's path: the gate checks exactly it."""
        return _job("topn", date)["path"]

    @task
    def validate_topn(date: str, version: str) -> str:
        """**Top-N gate** (Great Expectations, no retries) on the version ``topn`` wrote: one list per
        active user, N distinct unseen items, scores non-increasing, coverage floor, model version and
        date. Records its verdict in the version; a hard failure stops the run, the live lists stay."""
        return _job("validate_topn", date, version=version)["version"]

    @task(outlets=[TOPN_LISTS], retries=2, retry_delay=dt.timedelta(seconds=10), retry_exponential_backoff=2.0)
    def publish(date: str, version: str) -> dict:
        """**Publish**: point ``topn/CURRENT.json`` at the version the gate passed -- unless
        ``publish`` is off (dry run) or D is older than the live date and ``allow_older`` is off.

        A real move emits an event of the Asset ``nightly_topn_lists`` (extra: date, version,
        model_version, rows); otherwise the task is *skipped*, which emits no event, so a dry run
        or a backfill of history triggers no downstream load."""
        from airflow.sdk.exceptions import AirflowSkipException

        result = _job("publish", date, version=version)
        if not result["published"]:
            raise AirflowSkipException(f"nothing went live: {result.get('reason') or result['pointer']['reason']}")
        get_current_context()["outlet_events"][TOPN_LISTS].extra = event_extra(result)
        return result

    @task
    def similar(date: str) -> str | None:
        """**Similar items**: every catalogue item's most similar items from the chosen model into a
        new version ``similar/dt=D/v=ATTEMPT/`` (off when ``similar_items`` is 0)."""
        return _job("similar", date)["path"]

    @task
    def validate_similar(date: str, version: str | None) -> str | None:
        """**Similar-items gate** (Great Expectations): one list per catalogue item, at most K distinct
        items, never itself nor an excluded item, scores non-increasing; records its verdict."""
        return _job("validate_similar", date, version=version)["version"]

    @task(retries=2, retry_delay=dt.timedelta(seconds=10), retry_exponential_backoff=2.0)
    def publish_similar(date: str, version: str | None) -> dict:
        """**Publish similar items**: point ``similar/CURRENT.json`` at the version its gate passed
        (skipped when nothing went live: off, dry run, an older date)."""
        from airflow.sdk.exceptions import AirflowSkipException

        result = _job("publish_similar", date, version=version)
        if not result["published"]:
            raise AirflowSkipException(f"nothing went live: {result.get('reason') or result['pointer']['reason']}")
        return result

    date = ingest()
    raw_gate, quality_gate = validate_raw(date), evaluate(date)
    raw_gate >> preprocess(date) >> validate_features(date) >> train(date) >> quality_gate
    raw_gate >> rolling_eval(date) >> quality_gate
    version = topn(date)
    quality_gate >> version
    publish(date, validate_topn(date, version))
    similar_version = similar(date)
    quality_gate >> similar_version
    publish_similar(date, validate_similar(date, similar_version))


nightly_topn()
