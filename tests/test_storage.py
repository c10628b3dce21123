import json
import re

import pytest

from nightly_topn.storage import MANIFEST, Storage


def test_staged_write_is_all_or_nothing(root):
    store = Storage.at(root)
    target = store.partition("features", "2024-03-01")
    with store.staged(target) as stage:
        (stage / "a.txt").write_text("first")
        store.write_manifest(stage, producer="test", date="2024-03-01")
    with pytest.raises(RuntimeError):
        with store.staged(target) as stage:
            (stage / "a.txt").write_text("half-written")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".staging")]
    assert [d.isoformat() for d in store.dates("features")] == ["2024-03-01"]


def test_rewrite_replaces_partition(root):
    store = Storage.at(root)
    target = store.partition("raw", "2024-03-01")
    for text in ("one", "two"):
        with store.staged(target) as stage:
            (stage / "x").write_text(text)
    assert (target / "x").read_text() == "two"


def test_manifest_records_rows_schema_and_inputs(root):
    import pyarrow as pa

    store = Storage.at(root)
    target = store.partition("raw", "2024-03-01")
    with store.staged(target) as stage:
        store.write_manifest(stage, producer="ingest", date="2024-03-01", inputs=["src"],
                             tables={"events": pa.table({"a": [1, 2, 3]})})
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["producer"] == "ingest" and manifest["inputs"] == ["src"]
    assert manifest["tables"]["events"] == {"rows": 3, "schema": ["a: int64"]}


def _version(store, date, name="v=1", *, gate=True):
    """A complete top-N version (manifest); with ``gate`` its gate passed."""
    target = store.partition("topn", date) / name
    with store.staged(target) as stage:
        store.write_manifest(stage, producer="topn", date=date, extra={"files": []})
    if gate:
        store.record_verdict(target, passed=True, result="r.json")
    return target


def test_pointer_never_moves_back_unless_asked(root):
    store = Storage.at(root)
    new, old = _version(store, "2024-03-05"), _version(store, "2024-03-01")
    store.publish("2024-03-05", new)
    kept = store.publish("2024-03-01", old)
    assert kept["kept"] and store.published()["date"] == "2024-03-05"
    store.publish("2024-03-01", old, allow_older=True)
    assert store.published()["date"] == "2024-03-01"


def test_paths_cannot_escape_the_root(root):
    store = Storage.at(root)
    assert store.inside("reports/x") == store.root / "reports" / "x"
    with pytest.raises(ValueError, match="escapes the storage root"):
        store.inside("../../etc/passwd")


def test_only_a_version_whose_gate_passed_can_be_published(root):
    from nightly_topn.errors import PublishRefused

    store = Storage.at(root)
    unchecked = _version(store, "2024-03-05", "v=2", gate=False)
    with pytest.raises(PublishRefused, match="never checked by validate_topn"):
        store.publish("2024-03-05", unchecked)
    failed = _version(store, "2024-03-05", "v=3", gate=False)
    store.record_verdict(failed, passed=False, result="r.json", reason="top-N x failed validation:\n [HARD] ...")
    with pytest.raises(PublishRefused, match="failed validate_topn: top-N x failed validation"):
        store.publish("2024-03-05", failed)
    changed = _version(store, "2024-03-05", "v=4")
    store.write_manifest(changed, producer="topn", date="2024-03-05", extra={"files": ["part-0.parquet"]})
    with pytest.raises(PublishRefused, match="changed after validate_topn checked it"):
        store.publish("2024-03-05", changed)
    assert store.published() is None
    with pytest.raises(ValueError, match="escapes the storage root|not a top-N version"):
        store.publish("2024-03-05", "../../etc")


@pytest.mark.parametrize("text", ["2024-03-01x", "2024-02-30", "../2024-03-01", "20240301", "2024-3-1"])
def test_dates_are_parsed_strictly(text):
    from nightly_topn.errors import ConfigError
    from nightly_topn.storage import as_date

    with pytest.raises(ConfigError, match=f"date '{re.escape(text)}' refused"):
        as_date(text)


def test_leftovers_of_killed_writers_are_swept_not_those_of_live_ones(root):
    import os
    import subprocess
    import sys

    from nightly_topn.storage import _HOST

    store = Storage.at(root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    base = store.partition("topn", "2024-03-05")
    killed = base / f".staging-v=20240305T000000-{_HOST}-{dead}-0123abcd"
    live = base / f".staging-v=20240305T000001-{_HOST}-{os.getpid()}-0123abcd"
    other_day = store.root / "raw" / f".staging-dt=2024-03-06-{_HOST}-{dead}-0123abcd"
    torn = store.root / "raw" / f".staging-dt=2024-03-05-{_HOST}-{dead}-0123abcd"
    for folder in (killed, live, other_day, torn):
        folder.mkdir(parents=True)
    removed = store.sweep_stale("2024-03-05")
    assert sorted(removed) == sorted([killed, torn])
    assert live.is_dir() and other_day.is_dir() and not killed.exists() and not torn.exists()
