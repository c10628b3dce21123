"""Hostile raw inputs: each arrives through the real entry points (a landing folder read by
``ingest``, then the raw gate ``validate_raw``; the CLI where the printed line matters) and each
test asserts the outcome -- refused, quarantined, warned, or read correctly -- and the message:
one line naming the file / column / how many rows, never the file's content.

Reuses the session baseline of ``test_bad_inputs`` (9 good landed days, 2024-03-09 published);
every test adds its own files for the run date 2024-03-10.
"""
from __future__ import annotations

import bz2
import datetime as dt
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from test_bad_inputs import (  # noqa: F401 - fixtures are used by name
    DAY, PARAMS, World, assert_quarantined, baseline, committed_gate_settings, good_events, with_rows, world)

from nightly_topn.errors import BadInput, GateFailed
from nightly_topn.schemas import MAX_ID_LENGTH

SECRET = "SECRET-TOKEN-5f3a"


def raw_times(world: World) -> list:
    return pq.read_table(world.store.partition("raw", DAY) / "events.parquet").column("event_time").to_pylist()


def assert_refused_at_ingest(world: World, excinfo, *needles):
    """A one-line ``BadInput`` naming what is wrong; nothing landed; the live lists unchanged."""
    message = str(excinfo.value)
    assert isinstance(excinfo.value, BadInput) and isinstance(excinfo.value, ValueError)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert not (world.store.partition("raw", DAY) / "_manifest.json").exists()
    world.assert_previous_topn_live()
    return message


def csv_text(table: pa.Table) -> str:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue().decode()


def cli(*args) -> int:
    from nightly_topn.cli import main

    return main([*args, "--date", DAY.isoformat(), "--train-window-days", "10"])


# -- 1. ids longer than MAX_ID_LENGTH are quarantined, row by row ---------------------------------
def test_overlong_ids_are_quarantined_naming_the_limit(world):
    table = with_rows(good_events(DAY), "user_id", [3, 8], "u" * 10_000)
    table = with_rows(table, "item_id", [11], "i" * (MAX_ID_LENGTH + 1))
    table = with_rows(table, "user_id", [20], "v" * MAX_ID_LENGTH)  # at the limit: kept
    world.write_csv(table)
    world.ingest()
    result = world.validate()
    assert_quarantined(world, result, 3, f"longer than MAX_ID_LENGTH={MAX_ID_LENGTH} characters")
    reasons = pq.read_table(world.store.partition("quarantine", DAY) / "events.parquet").to_pandas()
    assert reasons.set_index("row_number")["reason"].to_dict() == {
        3: f"expect_column_value_lengths_to_be_between(column=user_id, max_value={MAX_ID_LENGTH}): "
           f"a user id longer than MAX_ID_LENGTH={MAX_ID_LENGTH} characters (ids are keys, not payloads)",
        8: f"expect_column_value_lengths_to_be_between(column=user_id, max_value={MAX_ID_LENGTH}): "
           f"a user id longer than MAX_ID_LENGTH={MAX_ID_LENGTH} characters (ids are keys, not payloads)",
        11: f"expect_column_value_lengths_to_be_between(column=item_id, max_value={MAX_ID_LENGTH}): "
            f"an item id longer than MAX_ID_LENGTH={MAX_ID_LENGTH} characters (ids are keys, not payloads)",
    }
    clean = pq.read_table(world.store.partition("clean", DAY) / "events.parquet")
    assert max(pc.utf8_length(clean.column("user_id")).to_pylist()) == MAX_ID_LENGTH
    # the kept evidence (and any log line) shows a 10,000-character id cut, with its length
    kept = json.loads(Path(result["result"]).read_text())
    samples = [v for f in kept["failures"] for v in f["sample"] if isinstance(v, str) and v.startswith("uuu")]
    assert samples and all(v.endswith("... (10000 chars)") and len(v) < 120 for v in samples)


# -- 2. a rejected day is moved aside by validate_raw itself, and re-landed after the fix ---------
@pytest.mark.parametrize("case", ["rejected share too high", "hard failure"])
def test_a_rejected_day_is_moved_aside_and_relanded_after_the_fix(world, case):
    day = good_events(DAY)
    if case == "hard failure":
        world.write_csv(day.slice(0, 0))  # the upstream drop failed: an empty day
        needle = "expect_table_row_count_to_be_between(min_value=1): an empty day means the upstream drop failed"
    else:  # 25% of rows with a 300-character user id, above max_rejected_share (5%)
        world.write_csv(with_rows(day, "user_id", list(range(0, day.num_rows, 4)), "x" * 300))
        needle = "failed row-level checks, above max_rejected_share 5.00%"
    world.ingest()
    with pytest.raises(GateFailed) as excinfo:
        world.validate()
    headline = str(excinfo.value).splitlines()[0]
    (moved,) = list((world.root / "quarantine" / "rejected-raw").glob(f"dt={DAY.isoformat()}.*"))
    assert needle in headline, headline
    assert f"the raw partition was moved to {moved}, so the next run re-lands the day from the source" in headline
    assert (moved / "events.parquet").is_file() and (moved / "_manifest.json").is_file()
    assert not world.store.partition("raw", DAY).exists() and not world.store.partition("clean", DAY).exists()
    evidence = json.loads((world.store.partition("quarantine", DAY) / "_manifest.json").read_text())
    assert evidence["outcome"] == "failed" and evidence["rejected_raw"] == str(moved)
    world.assert_previous_topn_live()

    world.write_csv(day)  # the upstream fix: the same day, landed again correctly
    assert world.ingest()["landed"] == [DAY.isoformat()]
    result = world.validate()
    assert result["outcome"] == "passed" and result["rows"] == day.num_rows, result
    assert (world.store.partition("clean", DAY) / "_manifest.json").is_file()
    assert moved.is_dir()  # the evidence stays


def test_the_cli_moves_a_rejected_day_aside_too_and_says_so_in_one_line(world, capsys):
    world.write_csv(good_events(DAY).slice(0, 0))
    assert cli("ingest", "--root", str(world.root), "--source", f"landing:{world.landing}") == 0
    capsys.readouterr()
    assert cli("validate", "--root", str(world.root)) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("nightly-topn: error: raw events ") and "(0 rows) failed validation" in first, first
    assert f"quarantine/rejected-raw/dt={DAY.isoformat()}." in first and "re-lands the day" in first, first
    world.write_csv(good_events(DAY))
    assert cli("ingest", "--root", str(world.root), "--source", f"landing:{world.landing}") == 0
    assert cli("validate", "--root", str(world.root)) == 0


# -- 3a. integer event_time is epoch seconds ------------------------------------------------------
def _as_epoch(table: pa.Table, per_second: int) -> pa.Table:
    micros = pc.cast(table.column("event_time"), pa.int64())
    return table.set_column(4, "event_time", pc.divide(micros, 1_000_000 // per_second))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_integer_event_time_is_read_as_epoch_seconds(world, fmt):
    day = _as_epoch(good_events(DAY), 1)
    if fmt == "csv":
        world.write_csv(day)
    else:
        pq.write_table(day, world.day_dir / "events.parquet")
    world.ingest()
    expected = [dt.datetime.fromtimestamp(s, dt.timezone.utc) for s in day.column("event_time").to_pylist()]
    assert raw_times(world) == expected
    assert {t.date() for t in expected} == {DAY}
    result = world.validate()
    assert result["outcome"] == "passed" and result["rejected"] == 0, result


@pytest.mark.parametrize("unit, per_second", [("milliseconds", 1_000), ("microseconds", 1_000_000)])
def test_epoch_milli_or_microseconds_are_refused_naming_file_column_and_rows(world, unit, per_second):
    day = _as_epoch(good_events(DAY), per_second)
    world.write_csv(day)
    with pytest.raises(BadInput) as excinfo:
        world.ingest()
    assert_refused_at_ingest(
        world, excinfo, str(world.day_dir / "events.csv"), "column 'event_time' holds integers",
        "read as epoch seconds", f"{day.num_rows} of {day.num_rows} row(s) would be after the year 3000",
        "looks like milliseconds/microseconds")


# -- 3b. naive timestamps are UTC; offsets are converted ------------------------------------------
def test_naive_timestamps_are_utc_and_offsets_are_converted(world):
    day = good_events(DAY)
    times = day.column("event_time").to_pylist()
    naive = [t.replace(tzinfo=None).isoformat(sep=" ") for t in times]
    shifted = [(t + dt.timedelta(hours=2)).replace(tzinfo=dt.timezone(dt.timedelta(hours=2))).isoformat()
               for t in times]
    mixed = [n if i % 2 else s for i, (n, s) in enumerate(zip(naive, shifted))]
    third = day.num_rows // 3
    for name, texts, rows in (("naive.csv", naive, slice(0, third)), ("offsets.csv", shifted, slice(third, 2 * third)),
                              ("mixed.csv", mixed, slice(2 * third, None))):
        part = day.slice(rows.start, (rows.stop or day.num_rows) - rows.start)
        world.write_csv(part.set_column(4, "event_time", pa.array(texts[rows])), name)
    world.ingest()
    order = [*range(2 * third, day.num_rows), *range(0, third), *range(third, 2 * third)]  # files by name
    assert raw_times(world) == [times[i] for i in order]
    result = world.validate()
    assert result["outcome"] == "passed", result


# -- 3c. compressed CSV is read; any other file in a day folder is refused ------------------------
def test_gzip_and_bzip2_csv_are_read_and_hidden_files_ignored(world):
    day = good_events(DAY)
    half = day.num_rows // 2
    (world.day_dir / "a.csv.gz").write_bytes(gzip.compress(csv_text(day.slice(0, half)).encode()))
    (world.day_dir / "b.csv.bz2").write_bytes(bz2.compress(csv_text(day.slice(half)).encode()))
    (world.day_dir / "_SUCCESS").write_text("")
    (world.day_dir / ".events.csv.swp").write_text("junk")
    world.ingest()
    landed = pq.read_table(world.store.partition("raw", DAY) / "events.parquet")
    assert landed.cast(day.schema).equals(day)
    result = world.validate()
    assert result["outcome"] == "passed" and result["rows"] == day.num_rows, result


@pytest.mark.parametrize("stray", ["notes.json", "events.xlsx", "events.csv.zip", "users.csv", "more/"])
def test_an_unrecognised_file_in_a_day_folder_is_refused_by_name(world, stray):
    world.write_csv(good_events(DAY))
    path = world.day_dir / stray.rstrip("/")
    if stray.endswith("/"):
        path.mkdir()
    else:
        path.write_text("whatever\n")
    with pytest.raises(BadInput) as excinfo:
        world.ingest()
    message = assert_refused_at_ingest(world, excinfo, str(path))
    expected = {"users.csv": "attribute file inside a day folder", "more/": "is a folder inside the day folder"}
    assert expected.get(stray, "is not an event file: a day folder holds only .csv, .csv.gz, .csv.bz2, "
                                   ".parquet files") in message


# -- 3d. symbolic links must stay inside the landing folder ---------------------------------------
@pytest.mark.parametrize("what", ["file", "day folder"])
def test_a_symlink_leading_outside_the_landing_folder_is_refused(world, tmp_path, what):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    pacsv.write_csv(good_events(DAY), outside / "events.csv")
    if what == "file":
        link = world.day_dir / "events.csv"
        link.symlink_to(outside / "events.csv")
    else:
        link = world.landing / f"dt={DAY.isoformat()}"
        link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInput) as excinfo:
        world.ingest()
    assert_refused_at_ingest(world, excinfo, f"{link} is a symbolic link to", "outside the landing folder")


def test_a_symlink_inside_the_landing_folder_is_followed(world):
    shared = world.landing / "_shared"  # '_': not a day folder, not read by itself
    shared.mkdir()
    pacsv.write_csv(good_events(DAY), shared / "drop.csv")
    (world.day_dir / "events.csv").symlink_to(shared / "drop.csv")
    world.ingest()
    assert world.validate()["outcome"] == "passed"


# -- 3e. an unreadable file is named, its content never echoed ------------------------------------
def _ragged(world):  # a row with 3 fields: Arrow's message quotes the row
    day = good_events(DAY)
    path = world.write_csv(day)
    path.write_text(path.read_text() + f"{SECRET},i1,view\n")  # line 1 is the header
    return path, [f"CSV parse error: 1 row(s) do not have the header's 5 fields (the first at line "
                  f"{day.num_rows + 2} has 3)"]


def _headerless(world):  # the first line is data: it would become the "column names"
    path = world.day_dir / "events.csv"
    path.write_text(f"{SECRET},i1,view,1,2024-03-10T01:00:00Z\n")
    return path, ["required column 'user_id' is missing", "found no contract column and 5 other column(s)",
                  "is the header line missing?"]


def _bad_number(world):
    table = with_rows(good_events(DAY), "weight", [7], SECRET)
    return world.write_csv(table), [f"column 'weight' has type string, expected float: 1 of {table.num_rows} "
                                    f"value(s) cannot be read as float"]


def _bad_time(world):
    table = with_rows(good_events(DAY), "event_time", [7, 9], SECRET)
    return world.write_csv(table), [f"column 'event_time': 2 of {table.num_rows} row(s) are not ISO-8601 timestamps"]


def _corrupt_gzip(world):
    path = world.day_dir / "events.csv.gz"
    path.write_text(f"user_id,item_id\n{SECRET},i1\n")
    return path, ["cannot read landed file", "cannot decompress it as .csv.gz"]


UNREADABLE = {"ragged row": _ragged, "no header line": _headerless, "unparsable number": _bad_number,
              "unparsable time": _bad_time, "corrupt gzip": _corrupt_gzip}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_file_is_named_without_echoing_its_content(world, case):
    path, needles = UNREADABLE[case](world)
    with pytest.raises(BadInput) as excinfo:
        world.ingest()
    message = assert_refused_at_ingest(world, excinfo, str(path), *needles)
    assert SECRET not in message
    if excinfo.value.__cause__ is not None:  # the original error stays chained, for the debug log
        assert isinstance(excinfo.value.__cause__, (pa.ArrowException, OSError))


def test_the_cli_prints_one_line_without_the_content(world, capsys):
    _ragged(world)
    assert cli("ingest", "--root", str(world.root), "--source", f"landing:{world.landing}") == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nightly-topn: error:")]
    assert len(lines) == 1 and lines[0].startswith("nightly-topn: error: cannot read landed file "), err
    assert "events.csv: CSV parse error" in lines[0] and SECRET not in err, err


# -- 3f. one user holding most of a day's events is a warning -------------------------------------
def test_one_user_holding_most_of_the_day_warns(world, caplog):
    day = good_events(DAY)
    bot = list(range(0, day.num_rows, 5)) + list(range(1, day.num_rows, 5)) + list(range(2, day.num_rows, 5))
    world.write_csv(with_rows(day, "user_id", bot, "u-bot"))
    world.ingest()
    result = world.validate()
    label = "expect_column_max_to_be_between(column=top_user_share, max_value=0.5)"
    assert result["outcome"] == "warned" and result["rejected"] == 0 and result["warnings"] == [label], result
    share = len(bot) / day.num_rows
    assert f"[soft] {label}: one user holds more than max_user_share of the day's events" in caplog.text
    assert f"observed={share}" in caplog.text
    assert (f"raw {DAY}: user u-bot holds {len(bot)} of the day's {day.num_rows} events ({100 * share:.1f}%), "
            f"above max_user_share 50.0%") in caplog.text
    kept = json.loads((world.store.partition("reports", DAY) / "raw_activity.validation.json").read_text())
    assert kept["warnings"][0]["observed_value"] == share and kept["parameters"] == {"max_user_share": 0.5}
    assert (world.store.partition("clean", DAY) / "_manifest.json").is_file()  # a warning: the run goes on
    world.assert_previous_topn_live()


def test_a_tiny_day_of_one_user_does_not_warn(tmp_path):
    from nightly_topn.jobs.ingest import ingest
    from nightly_topn.jobs.validate import validate_raw

    folder = tmp_path / "landing" / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True)
    start = dt.datetime(2024, 3, 10, 1, tzinfo=dt.timezone.utc)
    (folder / "events.csv").write_text("user_id,item_id,event_type,weight,event_time\n" + "".join(
        f"u1,i{i},view,1,{(start + dt.timedelta(minutes=i)).isoformat()}\n" for i in range(40)))
    ingest(DAY, root=tmp_path / "data", source=f"landing:{tmp_path / 'landing'}", params=PARAMS)
    result = validate_raw(DAY, root=tmp_path / "data", params=PARAMS)
    assert result["outcome"] == "passed" and result["warnings"] == [], result
    kept = json.loads((tmp_path / "data" / "reports" / f"dt={DAY}" / "raw_activity.validation.json").read_text())
    assert kept["parameters"] == {"max_user_share": None} and kept["success"] is True
