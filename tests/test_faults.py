"""The fault matrix of publishing: unchecked versions, run parameters that reach for paths or
resources, wrong knob values, a killed top-N job, a publish killed in a loop, a full disk, two
runs of one date at once, a deleted live version, ids too long for Parquet statistics.

Each test asserts the outcome (refused / failed with a message / carried on), the one-line
message, and that the live lists are unchanged and readable (or, where a run legitimately
publishes, that what is live passed its gate).

Setup (once per module): a storage root where day DATE ran end to end and was published, plus
a second version of DATE that its gate passed. Every test works on its own copy of that root.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_SOURCE, run_day

from nightly_topn.config import RunParams
from nightly_topn.errors import JobFailed, PublishRefused
from nightly_topn.lookup import TopNReader
from nightly_topn.storage import Storage

DATE = "2024-03-01"
KNOBS = {"train_window_days": 21, "top_n": 10, "model": "als", "tuning_budget_seconds": 0}
PARAMS = RunParams.from_mapping(KNOBS)
CLI_KNOBS = ["--train-window-days", "21", "--top-n", "10", "--model", "als", "--tuning-budget-seconds", "0"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.validate import validate_topn

    root = tmp_path_factory.mktemp("faults") / "data"
    results = run_day(DATE, root, tuning_budget_seconds=0)
    assert results["publish"]["published"]
    spare = topn(DATE, root=root, params=PARAMS)["path"]  # a second version the gate passed
    validate_topn(DATE, root=root, params=PARAMS, version=spare)
    return root, Path(results["publish"]["path"]), Path(spare)


@pytest.fixture
def world(baseline, tmp_path, monkeypatch):
    """A private copy of the baseline root (also $NIGHTLY_TOPN_ROOT), and its live pointer."""
    root = tmp_path / "data"
    shutil.copytree(baseline[0], root, symlinks=True)
    monkeypatch.setenv("NIGHTLY_TOPN_ROOT", str(root))
    monkeypatch.delenv("NIGHTLY_TOPN_BEAM_ARGS", raising=False)
    store = Storage.at(root)
    live = store.published()
    return store, live, root / baseline[1].relative_to(baseline[0]), root / baseline[2].relative_to(baseline[0])


def assert_live_unchanged(store: Storage, live: dict) -> None:
    """The pointer is the same valid JSON, names a version its gate passed, and lookups work."""
    assert json.loads(store.pointer_path().read_text()) == live
    assert store.verdict_problem(store.root / live["path"]) is None
    reader = TopNReader.published(store.root)
    first = reader.index[0][0]
    assert reader.get(first)["user_id"] == first


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nightly_topn.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The CLI's error: one ``nightly-topn: error:`` line, never a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nightly-topn: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# -- 1. only the version a gate passed goes live --------------------------------------------
def test_a_new_unchecked_version_cannot_be_published(world):
    """Run a day; ``topn`` again (a new version, never checked); ``publish``: refused, live kept."""
    from nightly_topn.jobs.topn import topn

    store, live, _, _ = world
    unchecked = topn(DATE, root=store.root, params=PARAMS)["path"]
    proc = cli("publish", "--date", DATE)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "never checked by validate_topn" in line and Path(unchecked).name in line
    with pytest.raises(PublishRefused, match="never checked"):
        from nightly_topn.jobs.publish import publish

        publish(DATE, root=store.root, params=PARAMS, version=unchecked)
    assert_live_unchanged(store, live)


def test_a_version_that_failed_its_gate_cannot_be_published(world):
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.validate import validate_topn
    from nightly_topn.quality import GateFailed

    store, live, _, _ = world
    version = Path(topn(DATE, root=store.root, params=PARAMS)["path"])
    part = version / json.loads((version / "_manifest.json").read_text())["files"][0]
    table = pq.read_table(part)
    lists = table.column("item_ids").to_pylist()
    lists[0] = [lists[0][0]] * len(lists[0])  # a list of one item repeated
    pq.write_table(table.set_column(table.schema.get_field_index("item_ids"), "item_ids",
                                    pa.array(lists, table.schema.field("item_ids").type)), part)
    with pytest.raises(GateFailed):
        validate_topn(DATE, root=store.root, params=PARAMS, version=str(version))
    assert json.loads((version / "_gate.json").read_text())["passed"] is False
    with pytest.raises(PublishRefused, match="failed validate_topn"):
        publish(DATE, root=store.root, params=PARAMS, version=str(version))
    assert_live_unchanged(store, live)


@pytest.mark.parametrize("change, needle", [("delete", "lost 1 part file"),
                                           ("rewrite", r"1 file\(s\) changed after validate_topn checked them")])
def test_a_version_changed_after_its_gate_cannot_be_published(world, change, needle):
    from nightly_topn.jobs.publish import publish

    store, live, _, spare = world
    part = spare / json.loads((spare / "_manifest.json").read_text())["files"][0]
    if change == "delete":
        part.unlink()
    else:  # same rows written again (as an edit by hand would): not what the gate checked
        pq.write_table(pq.read_table(part), part)
    with pytest.raises(PublishRefused, match=needle):
        publish(DATE, root=store.root, params=PARAMS, version=str(spare))
    assert_live_unchanged(store, live)


@pytest.mark.parametrize("version", ["../../etc", "/tmp", "topn/dt=2024-02-01/v=1", "raw/dt=2024-03-01"])
def test_a_version_parameter_outside_the_dates_versions_is_refused(world, version):
    store, live, _, _ = world
    proc = cli("publish", "--date", DATE, "--version", version)
    assert proc.returncode != 0
    line = one_line_error(proc)
    assert "escapes the storage root" in line or "is not a top-N version of 2024-03-01" in line
    assert_live_unchanged(store, live)


# -- 2./3. what a run may ask for ------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--top-n", "0"], "--top-n=0: input should be greater than or equal to 1 (allowed: minimum 1; maximum 500)"),
    (["--top-n", "100000"], "--top-n=100000: input should be less than or equal to 500"),
    (["--train-window-days", "-5"], "--train-window-days=-5: input should be greater than or equal to 1"),
    (["--holdout-quantile", "nan"], "--holdout-quantile=nan: input should be a finite number"),
    (["--model", "nope"], "--model=nope: input should be 'auto', 'popularity'"),
    (["--publish", "maybe"], "--publish=maybe: input should be a valid boolean"),
    (["--beam-workers", "64"], "beam_workers=64 is above this worker's limit"),
    (["--output=/tmp/anywhere"], "unrecognized arguments: --output=/tmp/anywhere"),
    (["--beam-args=--output=/tmp/x"], "unrecognized arguments: --beam-args=--output=/tmp/x"),
    (["--model=/tmp/some-model"], "--model=/tmp/some-model: input should be"),
    (["--min-lift-over-popularity", "-0.5"], "min_lift_over_popularity=-0.5 is below this deployment's floor 0.0"),
    (["--champion-tolerance", "0.9"], "champion_tolerance=0.9 is above this deployment's limit 0.1"),
])
def test_wrong_knobs_are_refused_before_any_work(world, args, needle):
    store, live, _, _ = world
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    proc = cli("run", "--date", "2024-03-02", *args)
    assert proc.returncode == 2
    assert needle in (one_line_error(proc) if "unrecognized" not in needle else proc.stderr)
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before  # nothing started
    assert_live_unchanged(store, live)


@pytest.mark.parametrize("text, needle", [
    ("2024-03-01x", "date '2024-03-01x' refused: expected YYYY-MM-DD"),
    ("2024-02-30", "date '2024-02-30' refused: not a calendar day"),
    ("../../etc", "date '../../etc' refused: expected YYYY-MM-DD"),
])
def test_wrong_dates_are_refused_by_every_command(world, text, needle):
    store, live, _, _ = world
    for command in (["run"], ["topn"], ["publish"], ["lookup", "u000001"], ["export", "-"]):
        proc = cli(*command, "--date", text)
        assert proc.returncode == 2, command
        assert needle in one_line_error(proc), command
    assert_live_unchanged(store, live)


# -- kill -9 ---------------------------------------------------------------------------------
def test_kill_9_of_the_topn_job_mid_write_leaves_the_live_lists_and_is_swept(world):
    store, live, _, _ = world
    base = store.partition("topn", DATE)
    before = sorted(p.name for p in base.glob("v=*"))
    env = {"NIGHTLY_TOPN_BEAM_ARGS": "--range_size=40 --row_group_size=16"}  # many part files to catch
    proc = subprocess.Popen([sys.executable, "-m", "nightly_topn.cli", "topn", "--date", DATE, *CLI_KNOBS],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(stage.glob("part-*") for stage in base.glob(".staging-v=*")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the top-N job ended before a part file was written"
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its Beam workers
    proc.wait()
    leftovers = list(base.glob(".staging-v=*"))
    assert leftovers, "kill -9 mid-write leaves its staging folder"
    assert sorted(p.name for p in base.glob("v=*")) == before  # no new (half) version
    assert_live_unchanged(store, live)
    # the next job of the date sweeps what the killed one left
    proc = cli("validate_topn", "--date", DATE, *CLI_KNOBS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(base.glob(".staging-*"))


PUBLISH_LOOP = """
import sys
from nightly_topn.config import RunParams
from nightly_topn.jobs.publish import publish
root, date, versions = sys.argv[1], sys.argv[2], sys.argv[3:]
print("ready", flush=True)
while True:
    for version in versions:
        publish(date, root=root, params=RunParams(), version=version)
"""


def test_kill_9_of_publish_in_a_loop_leaves_a_valid_pointer_to_a_gated_version(world):
    store, _, live_version, spare = world
    gated = {str(live_version.relative_to(store.root)), str(spare.relative_to(store.root))}
    rng = random.Random(7)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(store.root), DATE, str(live_version),
                                 str(spare)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        pointer = json.loads(store.pointer_path().read_text())  # valid JSON, never empty or torn
        assert pointer["path"] in gated and pointer["date"] == DATE
        assert store.verdict_problem(store.root / pointer["path"]) is None
    reader = TopNReader.published(store.root)
    assert reader.get(reader.index[0][0]) is not None


# -- a full disk -----------------------------------------------------------------------------
def test_disk_full_during_the_topn_write_fails_in_one_line_and_keeps_the_live_lists(world, tmp_path):
    from nightly_topn.jobs.topn import topn

    store, live, _, _ = world
    base = store.partition("topn", DATE)
    kept = tmp_path / "kept"
    shutil.move(base, kept)
    base.mkdir()
    pages = sum(-(-p.stat().st_size // 4096) for p in kept.rglob("*") if p.is_file())
    size_kb = pages * 4 + 8  # what is there (tmpfs stores whole pages), and no room for a new version
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(base)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        shutil.rmtree(base)
        shutil.move(kept, base)
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        for child in kept.iterdir():
            shutil.copytree(child, base / child.name)
        assert_live_unchanged(store, live)
        with pytest.raises(JobFailed, match="no space left on device while writing .*nothing was published"):
            topn(DATE, root=store.root, params=PARAMS)
        assert not list(base.glob(".staging-*")) and sorted(p.name for p in base.glob("v=*")) == sorted(
            p.name for p in kept.glob("v=*"))
        assert_live_unchanged(store, live)
    finally:
        subprocess.run(["umount", str(base)], check=False)


# -- two runs of one date at once ------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_runs_of_one_date_never_interleave(world):
    store, live, _, _ = world
    procs = [subprocess.Popen([sys.executable, "-m", "nightly_topn.cli", "run", "--date", DATE,
                               "--source", SMALL_SOURCE, *CLI_KNOBS], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    for (out, err), code in zip(outs, codes):
        assert "FileExistsError" not in err and "Traceback" not in err, err[-3000:]
        if code != 0:  # the earlier run stops with a message once the later one owns the date
            line = one_line_error(subprocess.CompletedProcess([], code, out, err))
            assert "stops: run cli__" in line and "now owns the date" in line, line
    assert 0 in codes, [e[-2000:] for _, e in outs]
    pointer = store.published()
    assert pointer != live  # a run published
    assert store.verdict_problem(store.root / pointer["path"]) is None
    published = [json.loads(line)["result"]["path"] for (out, _), code in zip(outs, codes) if code == 0
                 for line in out.splitlines() if json.loads(line)["job"] == "publish"]
    assert pointer["path"] in {str(Path(p).relative_to(store.root)) for p in published}
    reader = TopNReader.published(store.root)
    assert reader.get(reader.index[0][0]) is not None


def test_a_run_whose_date_was_claimed_by_a_later_run_stops(world):
    from nightly_topn.errors import RunInProgress
    from nightly_topn.jobs import run_job

    store, live, _, _ = world
    run_job("ingest", DATE, root=store.root, params=PARAMS, run_id="scheduled", source=SMALL_SOURCE)
    run_job("ingest", DATE, root=store.root, params=PARAMS, run_id="manual", source=SMALL_SOURCE)
    with pytest.raises(RunInProgress, match="run scheduled of 2024-03-01 stops: run manual started later"):
        run_job("validate", DATE, root=store.root, params=PARAMS, run_id="scheduled")
    run_job("validate", DATE, root=store.root, params=PARAMS, run_id="manual")  # the later run carries on
    assert_live_unchanged(store, live)


# -- readers ---------------------------------------------------------------------------------
def test_a_deleted_live_version_is_one_line_from_lookup_and_export(world):
    store, live, _, _ = world
    shutil.rmtree(store.root / live["path"])
    for command in (["lookup", "u000001"], ["export", "-"]):
        proc = cli(*command)
        assert proc.returncode == 1
        line = one_line_error(proc)
        assert live["path"].split("/")[-1] in line


def test_ids_too_long_for_parquet_statistics_are_still_indexed(tmp_path):
    """Parquet writers drop min/max statistics of long values; the lookup index must not rely on them."""
    from nightly_topn.jobs.topn import lookup_index
    from nightly_topn.pipelines.topn_pipeline import PARQUET_OPTIONS
    from nightly_topn.schemas import TOPN

    ids = ["a" * 10_000, "b" * 10_000, "c"]
    table = pa.table({"user_id": ids, "item_ids": [["i1"], ["i2"], ["i3"]], "scores": [[1.0], [1.0], [1.0]],
                      "source": ["model"] * 3, "model_version": ["m"] * 3,
                      "logical_date": pa.array([19783] * 3, pa.int32()).cast(pa.date32()), "arm": ["champion"] * 3},
                     schema=TOPN)
    pq.write_table(table, tmp_path / "part-0-3.parquet", row_group_size=2, **PARQUET_OPTIONS)
    stats = pq.read_metadata(tmp_path / "part-0-3.parquet").row_group(0).column(0).statistics
    assert stats is None or not stats.has_min_max  # the writer really dropped them
    index = lookup_index(tmp_path, ["part-0-3.parquet"])
    assert index.column("min_user_id").to_pylist() == [ids[0], "c"]
    assert index.column("max_user_id").to_pylist() == [ids[1], "c"]
