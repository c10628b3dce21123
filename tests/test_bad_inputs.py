"""The bad-input matrix: each bad input arrives through the real entry points (a landing folder
read by ``ingest``, then the GX gates) and each test asserts the exact outcome — fail,
quarantine, warn or pass — the message naming the problem, and that the previously published
top-N is unchanged and still readable.

Setup (once per session, shared): a landing folder of 9 good days generated from the small
universe, and a storage root where day 2024-03-09 ran end to end and was published. Every test
copies that root and adds its own files for the run date 2024-03-10.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from nightly_topn.config import RunParams
from nightly_topn.quality import GateFailed
from nightly_topn.storage import Storage

SMALL = dict(seed=3, base_users=400, users_per_day=6, base_items=150, items_per_day=2)
FIRST, BASE_DAY, DAY = dt.date(2024, 3, 1), dt.date(2024, 3, 9), dt.date(2024, 3, 10)
PARAMS = RunParams(train_window_days=10, top_n=10, model="als")


def good_events(day: dt.date) -> pa.Table:
    from nightly_topn.sources.generated import GeneratedSource

    return GeneratedSource(**SMALL).events_for(day)


def run_steps(date, root, landing, *, until="publish", start=None):
    """Run the day's jobs in order (the same list the CLI and the DAG follow)."""
    from nightly_topn.jobs import steps

    results, started = {}, start is None
    for name, job in steps():
        started = started or name == start
        if not started:
            continue
        kwargs = {"root": root, "params": PARAMS}
        if name == "ingest":
            kwargs["source"] = f"landing:{landing}"
        results[name] = job(date, **kwargs)
        if name == until:
            break
    return results


@pytest.fixture(autouse=True)
def committed_gate_settings(monkeypatch):
    """Tests assert the committed thresholds (gates.json), whatever the caller's environment says."""
    monkeypatch.delenv("NIGHTLY_TOPN_GATES", raising=False)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    """(landing folder with good days FIRST..BASE_DAY, root with BASE_DAY published)."""
    base = tmp_path_factory.mktemp("bad_inputs_baseline")
    landing = base / "landing"
    day = FIRST
    while day <= BASE_DAY:
        folder = landing / f"dt={day.isoformat()}"
        folder.mkdir(parents=True)
        pacsv.write_csv(good_events(day), folder / "events.csv")
        day += dt.timedelta(days=1)
    root = base / "data"
    results = run_steps(BASE_DAY, root, landing)
    assert results["publish"]["published"], results["publish"]
    assert results["validate"]["outcome"] == "passed"
    return landing, root


@dataclass
class World:
    root: Path
    landing: Path
    pointer: dict
    user: str

    @property
    def store(self) -> Storage:
        return Storage.at(self.root)

    @property
    def day_dir(self) -> Path:
        folder = self.landing / f"dt={DAY.isoformat()}"
        folder.mkdir(exist_ok=True)
        return folder

    def write_csv(self, table: pa.Table, name: str = "events.csv") -> Path:
        pacsv.write_csv(table, self.day_dir / name)
        return self.day_dir / name

    def ingest(self):
        from nightly_topn.jobs.ingest import ingest

        return ingest(DAY, root=self.root, source=f"landing:{self.landing}", params=PARAMS)

    def validate(self):
        from nightly_topn.jobs.validate import validate_raw

        return validate_raw(DAY, root=self.root, params=PARAMS)

    def gate_result(self, name="raw_events") -> dict:
        return json.loads((self.store.partition("reports", DAY) / f"{name}.validation.json").read_text())

    def assert_previous_topn_live(self):
        """The pointer did not move and readers still get yesterday's list."""
        from nightly_topn.lookup import lookup

        assert self.store.published() == self.pointer
        row = lookup(self.user, root=self.root)
        assert row is not None and row["item_ids"], row
        assert str(row["logical_date"])[:10] == BASE_DAY.isoformat()


@pytest.fixture
def world(baseline, tmp_path) -> World:
    landing, root = baseline
    shutil.copytree(landing, tmp_path / "landing")
    shutil.copytree(root, tmp_path / "data")
    store = Storage.at(tmp_path / "data")
    pointer = store.published()
    part = sorted((tmp_path / "data" / pointer["path"]).glob("part-*.parquet"))[0]
    user = pq.read_table(part, columns=["user_id"]).column(0)[0].as_py()
    return World(tmp_path / "data", tmp_path / "landing", pointer, user)


def with_rows(table: pa.Table, column: str, rows: list[int], value) -> pa.Table:
    """``table`` with ``column`` set to ``value`` at ``rows`` (column may become nullable/any type)."""
    column_values = table.column(column)
    if isinstance(value, str) and not pa.types.is_string(column_values.type):
        column_values = column_values.cast(pa.string())
    values = column_values.to_pylist()
    for r in rows:
        values[r] = value
    array = pa.array(values, type=column_values.type)
    return table.set_column(table.schema.get_field_index(column), pa.field(column, array.type), array)


def assert_failed(excinfo, *needles):
    message = str(excinfo.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"


def assert_quarantined(world: World, result: dict, n_bad: int, reason: str):
    """Outcome quarantine: the bad rows (with reasons) are set aside, preprocess reads only the rest."""
    landed = result["rows"]
    assert result["outcome"] == "quarantined", result
    assert result["rejected"] == n_bad and result["clean_rows"] == landed - n_bad
    quarantined = pq.read_table(world.store.partition("quarantine", DAY) / "events.parquet").to_pandas()
    assert len(quarantined) == n_bad
    assert quarantined["reason"].str.contains(reason, regex=False).all(), quarantined["reason"].tolist()
    clean = pq.read_table(world.store.partition("clean", DAY) / "events.parquet")
    assert clean.num_rows == landed - n_bad and clean.column("user_id").null_count == 0
    from nightly_topn.jobs.preprocess import load_window

    events, inputs = load_window(world.store, DAY, PARAMS.train_window_days)
    assert str(world.store.partition("clean", DAY) / "events.parquet") in inputs
    day_rows = events[events["event_time"].dt.date == DAY]
    assert len(day_rows) <= landed - n_bad
    world.assert_previous_topn_live()


# -- fail at ingest: the file cannot become the contract -------------------------------------
def test_missing_column_fails_ingest_naming_the_column(world):
    world.write_csv(good_events(DAY).drop_columns(["weight"]))
    with pytest.raises(ValueError, match=r"required column 'weight' is missing"):
        world.ingest()
    assert not (world.store.partition("raw", DAY) / "_manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="raw partition for 2024-03-10 is missing"):
        world.validate()
    world.assert_previous_topn_live()


def test_wrong_column_type_fails_ingest_naming_column_and_type(world):
    world.write_csv(with_rows(good_events(DAY), "weight", [0, 5], "heavy"))
    with pytest.raises(ValueError, match=r"events.csv: column 'weight' has type string, expected float"):
        world.ingest()
    world.assert_previous_topn_live()


def test_undecodable_ids_fail_ingest_naming_the_file(world):
    path = world.write_csv(good_events(DAY))
    data = path.read_bytes().replace(b'"u000', b'"\xff\xfe0', 3)
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"cannot read landed file .*events\.csv.*(UTF8|utf-?8)"):
        world.ingest()
    world.assert_previous_topn_live()


def test_truncated_parquet_fails_ingest_naming_the_file(world):
    path = world.day_dir / "events.parquet"
    pq.write_table(good_events(DAY), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read landed file .*events\.parquet"):
        world.ingest()
    world.assert_previous_topn_live()


def test_missing_partition_fails_ingest_and_gate(world):
    from nightly_topn.sources.landing import MissingPartitionError

    with pytest.raises(MissingPartitionError, match=r"has no partition dt=2024-03-10"):
        world.ingest()
    with pytest.raises(FileNotFoundError, match=r"raw partition for 2024-03-10 is missing"):
        world.validate()
    world.assert_previous_topn_live()


# -- fail at the raw gate ---------------------------------------------------------------------
def test_empty_partition_fails_the_gate_and_the_run_stops(world, capsys):
    from nightly_topn.cli import main

    world.write_csv(good_events(DAY).slice(0, 0))
    code = main(["run", "--date", DAY.isoformat(), "--root", str(world.root), "--source", f"landing:{world.landing}",
                 "--train-window-days", "10", "--top-n", "10"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in ("nightly-topn: error: raw events", "(0 rows)", "expect_table_row_count_to_be_between(min_value=1)",
                   "an empty day means the upstream drop failed", "observed=0", "the next run re-lands the day"):
        assert needle in err, (needle, err)
    assert not world.store.partition("features", DAY).exists()  # the run stopped before preprocess
    assert not world.store.partition("clean", DAY).exists()
    world.assert_previous_topn_live()


def test_volume_spike_of_10x_fails_the_gate(world):
    day = good_events(DAY)
    copies = []
    for i in range(10):  # ten distinct copies (shifted by i ms): a spike, not duplicates
        times = pa.array(day.column("event_time").to_numpy() + np.timedelta64(i, "ms"), pa.timestamp("us", tz="UTC"))
        copies.append(day.set_column(4, "event_time", times))
    world.write_csv(pa.concat_tables(copies))
    world.ingest()
    with pytest.raises(GateFailed) as excinfo:
        world.validate()
    median = world.gate_result()["parameters"]["trailing_median"]
    assert_failed(excinfo, f"[HARD] expect_table_row_count_to_be_between(min_value={int(median * 0.1)}, "
                  f"max_value={int(np.ceil(median * 8))})", "volume drop or spike", f"observed={10 * day.num_rows}")
    failed = [f["expectation"] for f in world.gate_result()["failures"]]
    assert failed == ["expect_table_row_count_to_be_between"], failed  # nothing else was wrong
    world.assert_previous_topn_live()


def test_heavily_duplicated_events_fail_the_gate(world):
    world.write_csv(good_events(DAY), "events.csv")
    world.write_csv(good_events(DAY), "events-replayed.csv")  # the same drop landed twice
    world.ingest()
    with pytest.raises(GateFailed) as excinfo:
        world.validate()
    assert_failed(excinfo, "expect_compound_columns_to_be_unique(column_list=['user_id', 'item_id', 'event_type', "
                  "'event_time'], mostly=0.99)", "too many duplicated events", "unexpected=")
    world.assert_previous_topn_live()


def test_a_few_duplicated_events_warn_and_the_run_continues(world, caplog):
    day = good_events(DAY)
    world.write_csv(pa.concat_tables([day, day.slice(0, 3)]))
    world.ingest()
    result = world.validate()
    assert result["outcome"] == "warned" and result["rejected"] == 0, result
    assert any("compound_columns_to_be_unique" in w for w in result["warnings"])
    assert "[soft] expect_compound_columns_to_be_unique" in caplog.text
    assert "some duplicated events" in caplog.text
    world.assert_previous_topn_live()


# -- quarantine: a few bad rows are set aside, the run continues on the rest -------------------
@pytest.mark.parametrize("fmt, reason", [
    ("parquet", "expect_column_values_to_not_be_null(column=user_id): an event without a user"),
    ("csv", "expect_column_value_lengths_to_be_between(column=user_id, min_value=1): an empty user id"),
])
def test_null_user_ids_are_quarantined(world, fmt, reason):
    table = with_rows(good_events(DAY), "user_id", [1, 7, 30], None)
    if fmt == "csv":  # a null is written as a blank field, which CSV readers load as ""
        world.write_csv(table)
    else:
        pq.write_table(table, world.day_dir / "events.parquet")
    world.ingest()
    result = world.validate()
    assert_quarantined(world, result, 3, reason)


def test_many_null_user_ids_fail_above_the_rejected_share(world):
    table = good_events(DAY)
    world.write_csv(with_rows(table, "user_id", list(range(0, table.num_rows, 4)), None))  # 25%
    world.ingest()
    with pytest.raises(GateFailed) as excinfo:
        world.validate()
    assert_failed(excinfo, "failed row-level checks, above max_rejected_share 5.00%",
                  "expect_column_value_lengths_to_be_between(column=user_id, min_value=1)")
    quarantine = world.store.partition("quarantine", DAY)
    assert json.loads((quarantine / "_manifest.json").read_text())["outcome"] == "failed"  # evidence kept
    assert pq.read_metadata(quarantine / "events.parquet").num_rows == len(range(0, table.num_rows, 4))
    assert not world.store.partition("clean", DAY).exists()
    world.assert_previous_topn_live()


def test_nan_and_negative_weights_are_quarantined(world):
    table = with_rows(good_events(DAY), "weight", [2, 3], float("nan"))
    world.write_csv(with_rows(table, "weight", [10], -1.0))
    world.ingest()
    result = world.validate()
    assert_quarantined(world, result, 3, "weight")
    reasons = pq.read_table(world.store.partition("quarantine", DAY) / "events.parquet").to_pandas()
    assert reasons.set_index("row_number")["reason"].to_dict() == {
        2: "expect_column_values_to_not_be_null(column=weight): missing or NaN weight",
        3: "expect_column_values_to_not_be_null(column=weight): missing or NaN weight",
        10: "expect_column_values_to_be_between(column=weight, min_value=0.0, max_value=1000.0): "
            "weight outside its allowed range",
    }


def test_events_outside_the_interval_are_quarantined_late_ones_allowed(world):
    table = good_events(DAY)
    times = table.column("event_time").to_pylist()
    start = dt.datetime(2024, 3, 10, tzinfo=dt.timezone.utc)
    times[0] = start + dt.timedelta(days=1, hours=2)  # from the future
    times[1] = start - dt.timedelta(days=3)           # far too late
    times[2] = start - dt.timedelta(hours=6)          # late, inside the 24 h allowance: kept
    table = table.set_column(4, "event_time", pa.array(times, pa.timestamp("us", tz="UTC")))
    world.write_csv(table)
    world.ingest()
    result = world.validate()
    assert_quarantined(world, result, 2, "event time outside the data interval")
    rows = pq.read_table(world.store.partition("quarantine", DAY) / "events.parquet").column("row_number").to_pylist()
    assert sorted(rows) == [0, 1]


def test_unknown_event_type_is_quarantined(world):
    world.write_csv(with_rows(good_events(DAY), "event_type", [4, 5], "like"))
    world.ingest()
    result = world.validate()
    assert_quarantined(world, result, 2, "unknown event type")
    gate = world.gate_result()
    assert gate["failures"][0]["sample"] == ["like", "like"]
    assert world.gate_result("raw_events.clean")["success"] is True  # the clean rows were re-validated


# -- pass: tolerated variations ---------------------------------------------------------------
def test_csv_with_extra_and_reordered_columns_passes_matched_by_name(world):
    day = good_events(DAY)
    shuffled = pa.table({
        "event_time": day.column("event_time"), "session": pa.array(["s"] * day.num_rows),
        "weight": day.column("weight"), "item_id": day.column("item_id"), "debug": pa.array(range(day.num_rows)),
        "event_type": day.column("event_type"), "user_id": day.column("user_id"),
    })
    world.write_csv(shuffled)
    world.ingest()
    result = world.validate()
    assert result["outcome"] == "passed" and result["rejected"] == 0, result
    landed = pq.read_table(world.store.partition("raw", DAY) / "events.parquet")
    assert landed.column_names == day.column_names
    assert landed.cast(day.schema).equals(day)
    world.assert_previous_topn_live()


# -- the top-N gate: a bad output is never published -----------------------------------------
@pytest.fixture(scope="module")
def unpublished_day(baseline, tmp_path_factory):
    """A root where DAY ran up to (not including) the top-N gate: an unpublished version exists."""
    landing, root = baseline
    base = tmp_path_factory.mktemp("unpublished")
    shutil.copytree(landing, base / "landing")
    (base / "landing" / f"dt={DAY.isoformat()}").mkdir()
    pacsv.write_csv(good_events(DAY), base / "landing" / f"dt={DAY.isoformat()}" / "events.csv")
    shutil.copytree(root, base / "data")
    results = run_steps(DAY, base / "data", base / "landing", until="topn")
    assert results["validate_features"]["outcome"] in ("passed", "warned")
    return base


@pytest.fixture
def topn_world(unpublished_day, tmp_path) -> World:
    shutil.copytree(unpublished_day / "landing", tmp_path / "landing")
    shutil.copytree(unpublished_day / "data", tmp_path / "data")
    store = Storage.at(tmp_path / "data")
    pointer = store.published()
    assert pointer["date"] == BASE_DAY.isoformat()
    part = sorted((tmp_path / "data" / pointer["path"]).glob("part-*.parquet"))[0]
    user = pq.read_table(part, columns=["user_id"]).column(0)[0].as_py()
    return World(tmp_path / "data", tmp_path / "landing", pointer, user)


def rewrite_lists(world: World, edit) -> tuple[str, str]:
    """Apply ``edit(user_id, items, scores, history) -> (items, scores)`` to the first user with history."""
    version = world.store.newest_version(DAY)
    features = world.store.partition("features", DAY)
    users = pq.read_table(features / "user_map.parquet").to_pandas().set_index("user_index")["user_id"]
    items = pq.read_table(features / "item_map.parquet").to_pandas().set_index("item_index")["item_id"]
    inter = pq.read_table(features / "interactions.parquet").to_pandas()
    part = sorted(version.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    rows = table.to_pylist()
    target = rows[0]
    history = [items[i] for i in inter.loc[inter["user_index"] == users[users == target["user_id"]].index[0], "item_index"]]
    target["item_ids"], target["scores"] = edit(target["user_id"], target["item_ids"], target["scores"], history)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    return target["user_id"], str(version)


def test_topn_with_a_seen_item_fails_and_is_not_published(topn_world):
    from nightly_topn.jobs.validate import validate_topn

    def inject_seen(user, items, scores, history):
        return [history[0], *items[1:]], scores

    user, version = rewrite_lists(topn_world, inject_seen)
    with pytest.raises(GateFailed) as excinfo:
        validate_topn(DAY, root=topn_world.root, params=PARAMS)
    assert_failed(excinfo, f"top-N {version}", "expect_column_values_to_be_null(column=seen_pair)",
                  "an item from the user's history", "unexpected=1", f"{user}/")
    topn_world.assert_previous_topn_live()


def test_topn_with_duplicated_items_fails_and_is_not_published(topn_world):
    from nightly_topn.jobs.validate import validate_topn

    def duplicate(user, items, scores, history):
        return [items[0], items[0], *items[2:]], scores

    user, _ = rewrite_lists(topn_world, duplicate)
    with pytest.raises(GateFailed) as excinfo:
        validate_topn(DAY, root=topn_world.root, params=PARAMS)
    assert_failed(excinfo, "expect_compound_columns_to_be_unique(column_list=['user_id', 'item_id'])",
                  "an item twice in one user's list", user)
    topn_world.assert_previous_topn_live()


def test_good_topn_passes_and_publishes(topn_world):
    results = run_steps(DAY, topn_world.root, topn_world.landing, start="validate_topn")
    assert results["validate_topn"]["outcome"] in ("passed", "warned")
    assert results["publish"]["published"]
    assert topn_world.store.published()["date"] == DAY.isoformat()


def test_rejected_share_threshold_is_configurable(world, monkeypatch):
    table = good_events(DAY)
    bad = list(range(0, table.num_rows, 4))  # 25%: fails with the committed 5% threshold (test above)
    world.write_csv(with_rows(table, "user_id", bad, None))
    world.ingest()
    monkeypatch.setenv("NIGHTLY_TOPN_GATES", json.dumps({"raw_events": {"max_rejected_share": 0.3}}))
    result = world.validate()
    assert_quarantined(world, result, len(bad), "an empty user id")


# -- the features gate: bad training data never reaches a model ------------------------------
def _edit_interactions(world: World, edit):
    path = world.store.partition("features", DAY) / "interactions.parquet"
    frame = pq.read_table(path).to_pandas()
    frame = edit(frame)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


FEATURE_CASES = {
    "nan weight": (lambda f: f.assign(confidence=f["confidence"].where(f.index != 3, np.nan)),
                   ["expect_column_values_to_not_be_null(column=confidence)", "NaN weight", "unexpected=1"]),
    "train/holdout overlap": (lambda f: pa.concat_tables([pa.Table.from_pandas(f, preserve_index=False),
                                                          pa.Table.from_pandas(f.iloc[:2].assign(split="holdout"),
                                                                               preserve_index=False)]).to_pandas(),
                              ["expect_compound_columns_to_be_unique(column_list=['user_index', 'item_index'])",
                               "train and holdout not disjoint", "unexpected=4"]),
    "unmapped user": (lambda f: f.assign(user_index=f["user_index"].where(f.index != 0, 10_000)),
                      ["expect_column_values_to_not_be_null(column=user_id)",
                       "user_index without an id in user_map", "user_index outside the user map"]),
    "no holdout": (lambda f: f.assign(split="train"),
                   ["expect_column_mean_to_be_between(column=is_holdout", "holdout share outside its bounds",
                    "observed=0.0"]),
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_bad_features_fail_the_features_gate(topn_world, case):
    from nightly_topn.jobs.validate import validate_features

    edit, needles = FEATURE_CASES[case]
    _edit_interactions(topn_world, edit)
    with pytest.raises(GateFailed) as excinfo:
        validate_features(DAY, root=topn_world.root, params=PARAMS)
    assert_failed(excinfo, "features ", *needles)
    assert json.loads((topn_world.store.partition("reports", DAY) / "features.validation.json").read_text())[
        "success"] is False
    topn_world.assert_previous_topn_live()


def test_gates_sit_before_what_they_protect():
    """The CLI ``run`` and the DAG follow ``steps()``: each gate runs before the job it protects."""
    from nightly_topn.jobs import steps

    names = [name for name, _ in steps()]
    assert names.index("validate") < names.index("preprocess")
    assert names.index("preprocess") < names.index("validate_features") < names.index("train")
    assert names.index("topn") < names.index("validate_topn") < names.index("publish")


def test_dag_runs_no_train_or_publish_after_a_failed_gate():
    """Each gate task is upstream of what it protects; default trigger rules skip the rest on failure."""
    import importlib.util

    from tools.local_airflow import PROJECT_DIR

    spec = importlib.util.spec_from_file_location("dag_under_gate_test", PROJECT_DIR / "dags" / "daily_topn_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.nightly_topn()
    for gate, protected in (("validate_raw", "preprocess"), ("validate_features", "train"),
                            ("validate_topn", "publish")):
        assert gate in dag.get_task(protected).upstream_task_ids
        assert dag.get_task(gate).retries == 0  # bad data stays bad: no retry
    downstream = {gate: dag.get_task(gate).get_flat_relative_ids(upstream=False)
                  for gate in ("validate_raw", "validate_features", "validate_topn")}
    assert {"preprocess", "train", "topn", "publish"} <= downstream["validate_raw"]
    assert {"train", "evaluate", "topn", "validate_topn", "publish"} <= downstream["validate_features"]
    assert downstream["validate_topn"] == {"publish"}
    for task in ("preprocess", "train", "evaluate", "topn", "validate_topn", "publish"):
        assert dag.get_task(task).trigger_rule == "all_success"


# -- a raw partition written by something other than ingest (e.g. an older producer) ----------
@pytest.mark.parametrize("change, needle", [
    (lambda t: t.drop_columns(["weight"]), "expect_column_to_exist(column=weight)"),
    (lambda t: t.set_column(3, "weight", t.column("weight").cast(pa.string())),
     "expect_column_values_to_be_of_type(column=weight, type_=float32)"),
])
def test_off_contract_raw_partition_fails_the_gate(world, change, needle):
    world.write_csv(good_events(DAY))
    world.ingest()
    path = world.store.partition("raw", DAY) / "events.parquet"
    pq.write_table(change(pq.read_table(path)), path)
    with pytest.raises(GateFailed) as excinfo:
        world.validate()
    assert_failed(excinfo, "[HARD] " + needle)
    world.assert_previous_topn_live()
