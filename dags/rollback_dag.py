"""Roll the live top-N lists back to the previously published version (trigger by hand).

One task, ``rollback`` (``nightly_topn.jobs.rollback``): moves ``topn/CURRENT.json`` back to the
newest earlier published version that still passes its gate, records who and why in the pointer
history and as an alert, and emits an event of the Asset ``nightly_topn_lists`` so the serving
DAG loads the rolled-back lists into Redis. The version rolled back from is never published
again; the next daily run is gated against the champion the pointer now names.
Same as ``nightly-topn rollback --reason ...`` on the command line.
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from nightly_topn.serving.assets import event_extra, lists_asset

TOPN_LISTS = lists_asset()


@dag(
    dag_id="nightly_topn_rollback",
    schedule=None,
    start_date=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={"reason": Param("", type="string", minLength=3, maxLength=500, title="Why roll back",
                            description="Recorded in the pointer history and the alert.")},
    default_args={"retries": 0, "execution_timeout": dt.timedelta(minutes=10)},
    tags=["recommender"],
    doc_md=__doc__,
)
def nightly_topn_rollback():
    @task(outlets=[TOPN_LISTS])
    def rollback() -> dict:
        """**Rollback** the live lists one published version; fails with one line when there is none."""
        import logging

        from nightly_topn.errors import NightlyTopNError
        from nightly_topn.jobs.rollback import rollback as roll_back

        context = get_current_context()
        try:
            pointer = roll_back(reason=context["params"]["reason"], by=f"airflow:{context['run_id']}")
        except NightlyTopNError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            logging.getLogger("nightly_topn").error("rollback failed (%s): %s", type(exc).__name__, exc)
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
        context["outlet_events"][TOPN_LISTS].extra = event_extra({"pointer": pointer})
        return pointer

    rollback()


nightly_topn_rollback()
