import json

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


def test_pointer_never_moves_back_unless_asked(root):
    store = Storage.at(root)
    new, old = store.root / "topn/dt=2024-03-05/v=1", store.root / "topn/dt=2024-03-01/v=1"
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
