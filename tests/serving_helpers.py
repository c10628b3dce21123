"""Shared set-up of the serving tests: published lists on the small data, and a real redis-server."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_day

from nightly_topn.storage import Storage

DAY1, DAY2 = "2024-03-01", "2024-03-02"
_BUILT: dict[str, Path] = {}


def published_root(tmp_path_factory, name: str) -> Path:
    """A private copy of a storage root where DAY1 is published and DAY2 is gated, not
    published (``publish_day2`` makes it live). Built once per session (about 30 s), then copied
    (``copytree`` keeps sizes and mtimes, so the gate verdicts still match)."""
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("serving-built") / "data"
        run_day(DAY1, root)
        run_day(DAY2, root, until="validate_topn", champion_tolerance=0.1)  # day 2 need not beat day 1
        _BUILT["root"] = root
    copy = tmp_path_factory.mktemp(name) / "data"
    shutil.copytree(_BUILT["root"], copy)
    return copy


def publish_day2(root: Path) -> dict:
    """Make DAY2's gated version live, the way the publish job does."""
    from nightly_topn.jobs.publish import publish

    result = publish(DAY2, root=root)
    assert result["published"], result
    return result["pointer"]


def day_version(root: Path, date: str) -> str:
    store = Storage.at(root)
    return str(store.newest_gated_version(date).relative_to(store.root))


@pytest.fixture(scope="module")
def redis_server():
    from tools.local_redis import LocalRedis

    with LocalRedis() as server:
        yield server
