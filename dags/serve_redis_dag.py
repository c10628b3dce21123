"""Load the live top-N lists into Redis whenever new lists go live.

Scheduled on the Asset ``nightly_topn_lists``, which the daily DAG's ``publish`` task emits only
when the published pointer really moved (not for a dry run, nor for a backfilled date that keeps
the newer live lists). The one task loads what the pointer names *now* (if several events queued
up, the newest lists) under a new version and switches the readers' alias once every user is in
(``nightly_topn.serving.redis_store``). A rerun is a no-op; a failed load leaves the previous
version serving and is cleaned up by the next load.

Deployment settings: ``NIGHTLY_TOPN_REDIS_URL`` (``redis://:PASSWORD@HOST:PORT/DB``, in the
workers' environment, never in a file of the repository) and ``NIGHTLY_TOPN_ROOT``. The DAG is
paused when first deployed: unpause it once Redis is configured.
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from nightly_topn.serving.assets import lists_asset


@dag(
    dag_id="nightly_topn_serve_redis",
    schedule=[lists_asset()],
    start_date=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,  # unpause once NIGHTLY_TOPN_REDIS_URL is set on the workers
    default_args={"execution_timeout": dt.timedelta(minutes=30)},
    tags=["recommender", "serving"],
    doc_md=__doc__,
)
def nightly_topn_serve_redis():
    @task(retries=3, retry_delay=dt.timedelta(seconds=15), retry_exponential_backoff=2.0)
    def load_redis() -> dict:
        """**Load into Redis** the lists live now; retried when Redis is unreachable or busy
        (``JobFailed``), failed at once for a wrong URL or password or no published lists."""
        import logging

        from nightly_topn.errors import JobFailed, NightlyTopNError
        from nightly_topn.serving.redis_store import load_published

        log = logging.getLogger("nightly_topn")
        for asset, events in (get_current_context().get("triggering_asset_events") or {}).items():
            for event in events:
                log.info("triggered by %s: %s", asset, event.extra)
        try:
            return load_published()
        except JobFailed as exc:
            log.error("load_redis failed (%s): %s", type(exc).__name__, exc)
            raise
        except NightlyTopNError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            log.error("load_redis failed (%s): %s", type(exc).__name__, exc)
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None

    load_redis()


nightly_topn_serve_redis()
