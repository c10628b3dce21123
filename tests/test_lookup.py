"""Point lookups and bulk export of the published top-N lists."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightly_topn.config import RunParams
from nightly_topn.lookup import TopNReader, export, lookup
from nightly_topn.storage import Storage

DATE = "2024-03-04"
PARAMS = RunParams(train_window_days=4, iterations=2, factors=8, top_n=10, model="als", tuning_budget_seconds=0)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Real jobs on small generated data, up to a published top-N version (small row groups)."""
    from nightly_topn.jobs.ingest import ingest
    from nightly_topn.jobs.preprocess import preprocess
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.train import train
    from nightly_topn.jobs.validate import validate_topn

    root = tmp_path_factory.mktemp("lookup_root")
    ingest(DATE, root=root, source="generated", params=PARAMS)
    preprocess(DATE, root=root, params=PARAMS)
    train(DATE, root=root, params=PARAMS)
    result = topn(DATE, root=root, params=PARAMS, beam_args=["--range_size=300", "--row_group_size=32"])
    validate_topn(DATE, root=root, params=PARAMS, version=result["path"])  # publish takes only a gated version
    publish(DATE, root=root, params=PARAMS, version=result["path"])
    manifest = json.loads((Storage.at(root).root / result["path"] / "_manifest.json").read_text())
    table = pa.concat_tables(pq.read_table(f"{result['path']}/{f}") for f in manifest["files"])
    return root, result["path"], table


def test_lookup_returns_the_users_row(published):
    root, _, table = published
    reader = TopNReader.published(root)
    for position in (0, 1, 31, 32, 299, 300, table.num_rows // 2, table.num_rows - 1):
        expected = table.slice(position, 1).to_pylist()[0]
        got = reader.get(expected["user_id"])
        assert got["item_ids"] == expected["item_ids"] and got["scores"] == expected["scores"]
        assert got["logical_date"] == DATE and got["source"] == expected["source"]
    assert lookup(table.column("user_id")[5].as_py(), root=root)["user_id"] == table.column("user_id")[5].as_py()
    assert TopNReader.published(root, date=DATE).get(table.column("user_id")[7].as_py()) is not None


def test_missing_users_return_none(published):
    root, _, table = published
    reader = TopNReader.published(root)
    first, last = table.column("user_id")[0].as_py(), table.column("user_id")[-1].as_py()
    assert reader.get("") is None and reader.get(first[:-1]) is None  # before the first id
    assert reader.get(last + "0") is None and reader.get("zzzz") is None  # after the last id
    ids = set(table.column("user_id").to_pylist())
    between = table.column("user_id")[10].as_py() + "x"  # sorts inside a row group's range
    assert between not in ids and reader.get(between) is None


def test_reader_uses_the_sidecar(published):
    _, path, _ = published
    reader = TopNReader(path)
    assert len(reader.index) == pq.read_metadata(f"{path}/_index.parquet").num_rows > len(reader.files)


# -- a deleted, half-deleted or corrupt version: one line naming the path, never a traceback ----------
@pytest.fixture
def live_copy(published, tmp_path):
    """A storage root of its own holding a copy of the published pointer and live version
    (the pointer names the version relative to the root), to break without harming the others."""
    root, path, table = published
    store = Storage.at(root)
    copy = tmp_path / "root"
    shutil.copytree(store.root / "topn", copy / "topn")
    live = Storage.at(copy)
    version = live.root / live.published()["path"]
    assert version.is_dir() and lookup(table.column("user_id")[0].as_py(), root=copy) is not None
    return live, version, table


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_deleted_live_version_is_missing_partition_naming_it_and_the_pointer(live_copy):
    from nightly_topn.errors import MissingPartition

    store, version, _ = live_copy
    shutil.rmtree(version)
    with pytest.raises(MissingPartition) as info:
        lookup("u1", root=store.root)
    assert _one_line(info) == (f"top-N version {version} does not exist; "
                               f"the published pointer {store.root / 'topn' / 'CURRENT.json'} names it")
    assert isinstance(info.value, FileNotFoundError)  # what callers caught before the hierarchy
    with pytest.raises(MissingPartition, match="does not exist; the published pointer"):
        TopNReader.published(store.root)
    with pytest.raises(MissingPartition, match="does not exist; the published pointer"):
        export(store.root / "out.jsonl", root=store.root)


@pytest.mark.parametrize("what", ["manifest", "sidecar", "part", "all parts"])
def test_half_deleted_live_version_names_what_is_missing(live_copy, what):
    from nightly_topn.errors import MissingPartition

    store, version, _ = live_copy
    parts = json.loads((version / "_manifest.json").read_text())["files"]
    assert len(parts) > 1
    gone = {"manifest": [version / "_manifest.json"], "sidecar": [version / "_index.parquet"],
            "part": [version / parts[1]], "all parts": [version / p for p in parts]}[what]
    for path in gone:
        path.unlink()
    with pytest.raises(MissingPartition) as info:
        lookup("u1", root=store.root)
    pointer = f"; the published pointer {store.root / 'topn' / 'CURRENT.json'} names it"
    expected = {
        "manifest": f"top-N version {version} is incomplete: {gone[0]} is missing",
        "sidecar": f"top-N version {version} is incomplete: its index sidecar {gone[0]} is missing",
        "part": f"top-N version {version} is incomplete: part file {gone[0]} is missing (1 of {len(parts)} missing)",
        "all parts": f"top-N version {version} is incomplete: part file {gone[0]} is missing "
                     f"({len(parts)} of {len(parts)} missing)",
    }[what]
    assert _one_line(info) == expected + pointer


def test_version_without_sidecar_is_missing_partition(published, tmp_path):
    """There is no pre-sidecar fallback: every version has ``_index.parquet``."""
    from nightly_topn.errors import MissingPartition

    _, path, _ = published
    copy = tmp_path / "v=old"
    shutil.copytree(path, copy)
    (copy / "_index.parquet").unlink()
    manifest = json.loads((copy / "_manifest.json").read_text())
    manifest.pop("index")
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MissingPartition) as info:
        TopNReader(copy)
    # not the live version: no word of the pointer
    assert _one_line(info) == f"top-N version {copy} is incomplete: its index sidecar {copy / '_index.parquet'} is missing"
    with pytest.raises(MissingPartition, match=f"top-N version {tmp_path / 'nope'} does not exist$"):
        TopNReader(tmp_path / "nope")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_part_file_is_bad_input_naming_it(live_copy, damage):
    from nightly_topn.errors import BadInput

    store, version, table = live_copy
    reader = TopNReader.published(store.root)
    user = table.column("user_id")[table.num_rows // 2].as_py()
    path = next(entry[2] for entry in reader.index if entry[0] <= user <= entry[1])
    blob = path.read_bytes()
    path.write_bytes(b"x" * len(blob) if damage == "garbage" else blob[: len(blob) // 2])
    fresh = TopNReader.published(store.root)  # the file exists, so opening the version works
    with pytest.raises(BadInput) as info:
        fresh.get(user)
    assert _one_line(info).startswith(f"cannot read part file {path}: corrupt or not a top-N Parquet file (pyarrow.")
    assert info.value.__cause__ is not None
    with pytest.raises(BadInput, match="^cannot read part file "):
        lookup(user, root=store.root)
    with pytest.raises(BadInput, match="^cannot read part file "):
        export(store.root / "out.jsonl", root=store.root)
    other = next(entry[0] for entry in reader.index if entry[2] != path)
    assert fresh.get(other) is not None  # the other part files still serve


def test_corrupt_manifest_or_sidecar_is_bad_input(live_copy):
    from nightly_topn.errors import BadInput

    store, version, _ = live_copy
    sidecar = version / "_index.parquet"
    sidecar.write_bytes(sidecar.read_bytes()[:100])
    with pytest.raises(BadInput) as info:
        lookup("u1", root=store.root)
    assert _one_line(info).startswith(f"cannot read index sidecar {sidecar}: corrupt or not a top-N index (")
    manifest = version / "_manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(BadInput) as info:
        lookup("u1", root=store.root)
    assert _one_line(info).startswith(f"top-N version {version}: manifest {manifest} is unreadable (")


def test_export_writes_every_user_once(published, tmp_path):
    root, _, table = published
    out = tmp_path / "lists.jsonl"
    assert export(out, root=root) == table.num_rows
    lines = out.read_text().splitlines()
    assert len(lines) == table.num_rows
    first = json.loads(lines[0])
    assert first["key"] == table.column("user_id")[0].as_py()
    assert first["value"]["item_ids"] == table.column("item_ids")[0].as_py()
    tsv = tmp_path / "lists.tsv"
    assert export(tsv, root=root, fmt="tsv") == table.num_rows
    key, value = tsv.read_text().splitlines()[-1].split("\t")
    assert key == table.column("user_id")[-1].as_py() and json.loads(value)["logical_date"] == DATE
    with pytest.raises(ValueError):
        export(tmp_path / "x", root=root, fmt="xml")


def test_cli_lookup_and_export(published, tmp_path, capsys):
    from nightly_topn.cli import main

    root, _, table = published
    user = table.column("user_id")[3].as_py()
    assert main(["lookup", user, "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["item_ids"] == table.column("item_ids")[3].as_py()
    assert main(["lookup", "nobody", "--root", str(root)]) == 1
    out = tmp_path / "all.jsonl"
    assert main(["export", str(out), "--root", str(root)]) == 0
    assert len(out.read_text().splitlines()) == table.num_rows


def test_export_lines_escape_odd_ids_and_match_the_json_path(published):
    import datetime as dt

    import numpy as np

    from nightly_topn import schemas
    from nightly_topn.lookup import json_lines, export_lines

    _, _, table = published
    batch = table.slice(0, 50).to_batches()[0]
    fast = export_lines(batch, "jsonl")

    def parsed(text, tsv=False):
        rows = [line.split("\t", 1) if tsv else line for line in text.splitlines()]
        rows = [{"key": r[0], "value": json.loads(r[1])} if tsv else json.loads(r) for r in rows]
        for row in rows:
            row["value"]["scores"] = np.float32(row["value"]["scores"]).tolist()
        return rows

    assert parsed(fast) == parsed(json_lines(batch.to_pylist(), "jsonl"))  # the Arrow path writes what json would
    assert parsed(export_lines(batch, "tsv"), True) == parsed(json_lines(batch.to_pylist(), "tsv"), True) == parsed(fast)
    odd = pa.RecordBatch.from_pylist([
        {"user_id": 'u"1\\', "item_ids": ['i\t2', "i3"], "scores": [0.5, 0.25], "source": "model",
         "model_version": "v", "logical_date": dt.date(2024, 3, 4), "arm": "champion"},
        {"user_id": "u2", "item_ids": [], "scores": [], "source": "fallback", "model_version": "v",
         "logical_date": dt.date(2024, 3, 4), "arm": "champion"},
    ], schema=schemas.TOPN)
    lines = [json.loads(line) for line in export_lines(odd).splitlines()]
    assert lines[0]["key"] == 'u"1\\' and lines[0]["value"]["item_ids"] == ["i\t2", "i3"]
    assert lines[1] == {"key": "u2", "value": {"item_ids": [], "scores": [], "source": "fallback",
                                               "model_version": "v", "logical_date": "2024-03-04",
                                               "arm": "champion"}}
    plain = [json.loads(line) for line in export_lines(odd.slice(1, 1)).splitlines()]  # the Arrow path
    assert plain == lines[1:]
    for line, row in zip(fast.splitlines(), table.slice(0, 50).to_pylist()):
        value = json.loads(line)["value"]
        assert np.array_equal(np.float32(value["scores"]), np.float32(row["scores"]))  # float32 round trip


ODD_IDS = ["u\t1", "u\n2", "u\r\n3", 'u"4', "u\\5", "\\", '"', '"quoted"', "ünï©ødé", "日本語", "emoji 🙂",
           "u\x00nul", "u\x1fus", "u\x85nel", "u\u2028ls", "tab\tand\"quote\\and\nnewline", "plain", "with space"]


def _odd_batch(ids):
    import datetime as dt

    from nightly_topn import schemas

    rows = [{"user_id": user, "item_ids": [f"i{n}", "i\t" + user], "scores": [0.5, 0.25], "source": "model",
             "model_version": "v1", "logical_date": dt.date(2024, 3, 4), "arm": "champion"} for n, user in enumerate(ids)]
    rows[0]["item_ids"] = ["i0", "i1"]  # the first row on its own needs no escaping in its value
    return pa.RecordBatch.from_pylist(rows, schema=schemas.TOPN), rows


def _expected_value(row):
    return {"item_ids": row["item_ids"], "scores": row["scores"], "source": row["source"],
            "model_version": row["model_version"], "logical_date": row["logical_date"].isoformat(), "arm": row["arm"]}


def _tsv_key(key: str) -> str:
    """The decoding rule of ``TopNReader.export``'s docstring."""
    return json.loads(key) if key.startswith('"') else key


@pytest.mark.parametrize("together", [True, False], ids=["one batch", "a batch per id"])
def test_export_lines_round_trip_odd_ids_in_jsonl_and_tsv(together):
    """Each line decodes to its row: ``json.loads`` for jsonl; for tsv, split on the first tab,
    decode the key (a JSON string when it starts with a quote) and ``json.loads`` the value.
    Ids with a tab, a line break, a quote, a backslash, control or non-ASCII characters included;
    one id per batch sends the plain ones through the Arrow path, the odd ones through ``json``."""
    from nightly_topn.lookup import export_lines

    groups = [ODD_IDS] if together else [[user] for user in ODD_IDS]
    for ids in groups:
        batch, rows = _odd_batch(ids)
        for fmt in ("jsonl", "tsv"):
            text = export_lines(batch, fmt)
            assert text.endswith("\n") and text.count("\n") == len(rows), "one line per user, no stray breaks"
            lines = text.split("\n")[:-1]
            assert text.splitlines() == lines, "no line break a line-based reader would see either"
            for line, row in zip(lines, rows):
                if fmt == "jsonl":
                    decoded = json.loads(line)
                    assert decoded == {"key": row["user_id"], "value": _expected_value(row)}
                else:
                    key, value = line.split("\t", 1)
                    assert _tsv_key(key) == row["user_id"] and json.loads(value) == _expected_value(row)
                    needs = any(c in row["user_id"] for c in '"\\\t\n\r\x00\x1f\x85\u2028')
                    assert key.startswith('"') == needs, "raw unless the id needs escaping"
                    assert key.isascii() or not needs


def test_export_tsv_of_a_version_with_odd_ids_round_trips(published, tmp_path):
    """End to end through ``TopNReader.export``: a version whose part file holds odd ids."""
    _, path, _ = published
    copy = tmp_path / "v=odd"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "_manifest.json").read_text())
    batch, rows = _odd_batch(sorted(ODD_IDS))
    for name in manifest["files"]:
        (copy / name).unlink()
    manifest["files"] = ["part-odd.parquet"]
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    pq.write_table(pa.Table.from_batches([batch]), copy / "part-odd.parquet", row_group_size=4)
    ids = batch.column("user_id").to_pylist()
    pq.write_table(pa.table({"min_user_id": ids[::4], "max_user_id": ids[3::4] + ([ids[-1]] if len(ids) % 4 else []),
                             "file": ["part-odd.parquet"] * len(ids[::4]), "row_group": list(range(len(ids[::4])))}),
                   copy / "_index.parquet")
    reader = TopNReader(copy)
    for row in rows:
        assert reader.get(row["user_id"])["item_ids"] == row["item_ids"]
    out = tmp_path / "odd.tsv"
    assert reader.export(out, fmt="tsv") == len(rows)
    with open(out, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")[:-1]
    assert [_tsv_key(line.split("\t", 1)[0]) for line in lines] == ids
    assert [json.loads(line.split("\t", 1)[1]) for line in lines] == [_expected_value(r) for r in rows]
