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

    root = tmp_path_factory.mktemp("lookup_root")
    ingest(DATE, root=root, source="generated", params=PARAMS)
    preprocess(DATE, root=root, params=PARAMS)
    train(DATE, root=root, params=PARAMS)
    result = topn(DATE, root=root, params=PARAMS, beam_args=["--range_size=300", "--row_group_size=32"])
    publish(DATE, root=root, params=PARAMS)
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


def test_reader_uses_the_sidecar_and_works_without_it(published, tmp_path):
    _, path, table = published
    reader = TopNReader(path)
    assert len(reader.index) == pq.read_metadata(f"{path}/_index.parquet").num_rows > len(reader.files)
    copy = tmp_path / "v=old"
    shutil.copytree(path, copy)
    (copy / "_index.parquet").unlink()
    manifest = json.loads((copy / "_manifest.json").read_text())
    manifest.pop("index")
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    old = TopNReader(copy)
    assert [e[:2] + (e[3],) for e in old.index] == [e[:2] + (e[3],) for e in reader.index]
    user = table.column("user_id")[123].as_py()
    assert old.get(user) == reader.get(user)


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
    from nightly_topn.lookup import _json_lines, export_lines

    _, _, table = published
    batch = table.slice(0, 50).to_batches()[0]
    fast = export_lines(batch, "jsonl")

    def parsed(text, tsv=False):
        rows = [line.split("\t", 1) if tsv else line for line in text.splitlines()]
        rows = [{"key": r[0], "value": json.loads(r[1])} if tsv else json.loads(r) for r in rows]
        for row in rows:
            row["value"]["scores"] = np.float32(row["value"]["scores"]).tolist()
        return rows

    assert parsed(fast) == parsed(_json_lines(batch.to_pylist(), "jsonl"))  # the Arrow path writes what json would
    assert parsed(export_lines(batch, "tsv"), True) == parsed(_json_lines(batch.to_pylist(), "tsv"), True) == parsed(fast)
    odd = pa.RecordBatch.from_pylist([
        {"user_id": 'u"1\\', "item_ids": ['i\t2', "i3"], "scores": [0.5, 0.25], "source": "model",
         "model_version": "v", "logical_date": dt.date(2024, 3, 4)},
        {"user_id": "u2", "item_ids": [], "scores": [], "source": "fallback", "model_version": "v",
         "logical_date": dt.date(2024, 3, 4)},
    ], schema=schemas.TOPN)
    lines = [json.loads(line) for line in export_lines(odd).splitlines()]
    assert lines[0]["key"] == 'u"1\\' and lines[0]["value"]["item_ids"] == ["i\t2", "i3"]
    assert lines[1] == {"key": "u2", "value": {"item_ids": [], "scores": [], "source": "fallback",
                                               "model_version": "v", "logical_date": "2024-03-04"}}
    plain = [json.loads(line) for line in export_lines(odd.slice(1, 1)).splitlines()]  # the Arrow path
    assert plain == lines[1:]
    for line, row in zip(fast.splitlines(), table.slice(0, 50).to_pylist()):
        value = json.loads(line)["value"]
        assert np.array_equal(np.float32(value["scores"]), np.float32(row["scores"]))  # float32 round trip
