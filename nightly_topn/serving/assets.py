"""The Airflow Asset that stands for the published lists, and the extra of its events.

``publish`` declares it as its outlet; an event is emitted only when the pointer really moved
(a dry run or a kept pointer skips the task: Airflow emits asset events for successful tasks
only). Downstream DAGs schedule on it: ``schedule=[Asset(name=LISTS_ASSET_NAME, uri=LISTS_ASSET_URI)]``
or ``schedule=[Asset.ref(name=LISTS_ASSET_NAME)]``. Parse-time cheap: only ``airflow.sdk``.
"""
from __future__ import annotations

LISTS_ASSET_NAME = "nightly_topn_lists"
#: ``x-`` scheme: Airflow keeps the URI as given (it names the pointer, not a file system path).
LISTS_ASSET_URI = "x-nightly-topn://topn/CURRENT.json"


def lists_asset():
    from airflow.sdk import Asset

    return Asset(name=LISTS_ASSET_NAME, uri=LISTS_ASSET_URI, group="nightly_topn")


def event_extra(result: dict) -> dict:
    """The asset event's extra from the publish job's result: what went live."""
    pointer = result["pointer"]
    return {"date": pointer["date"], "version": pointer["path"], "model_version": pointer.get("model_version"),
            "rows": pointer.get("rows"), "published_at": pointer.get("published_at")}
