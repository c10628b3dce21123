"""The gate runner: evidence kept (JSON + offline Data Docs), a readable log summary, severity."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from nightly_topn.quality import GateFailed, gate_settings, gx_project_dir, require, run_gate

RAW_PARAMS = {
    "min_time": "2024-03-09T00:00:00+00:00", "max_time": "2024-03-11T00:00:00+00:00", "max_weight": 1000,
    "duplicate_mostly": 0.99, "volume_hard_min": None, "volume_hard_max": None,
    "volume_soft_min": 100, "volume_soft_max": None,
}


def raw_frame(n=40) -> pd.DataFrame:
    times = pd.date_range("2024-03-10 01:00", periods=n, freq="7min", tz="UTC").as_unit("us")
    return pd.DataFrame({
        "user_id": pd.array([f"u{i % 7}" for i in range(n)], dtype="str"),
        "item_id": pd.array([f"i{i % 11}" for i in range(n)], dtype="str"),
        "event_type": pd.array(["view"] * n, dtype="str"),
        "weight": np.ones(n, dtype="float32"),
        "event_time": times,
    })


@pytest.fixture(autouse=True)
def committed_gate_settings(monkeypatch):
    """Tests assert the committed thresholds (gates.json), whatever the caller's environment says."""
    monkeypatch.delenv("NIGHTLY_TOPN_GATES", raising=False)


@pytest.fixture(scope="module")
def failed_gate(tmp_path_factory):
    frame = raw_frame()
    frame.loc[[3, 9], "event_type"] = "like"
    report = tmp_path_factory.mktemp("reports")
    return run_gate("raw_events", frame, report, RAW_PARAMS), report


def test_every_expectation_is_hard_or_soft():
    for name in ("raw_events", "features", "topn"):
        suite = json.loads((gx_project_dir() / "expectations" / f"{name}.json").read_text())
        assert suite["expectations"], name
        for expectation in suite["expectations"]:
            assert expectation["meta"]["severity"] in ("hard", "soft"), expectation
            assert expectation["meta"]["why"], expectation
            if expectation["meta"].get("quarantine"):
                assert name == "raw_events" and expectation["meta"]["severity"] == "hard"


def test_hard_failure_is_kept_as_json_with_counts_and_samples(failed_gate):
    gate, report = failed_gate
    assert not gate.success
    kept = json.loads((report / "raw_events.validation.json").read_text())
    assert kept["success"] is False and kept["rows"] == 40
    [failure] = kept["failures"]
    assert failure["expectation"] == "expect_column_values_to_be_in_set"
    assert failure["unexpected_count"] == 2 and failure["sample"] == ["like", "like"]
    assert failure["quarantine"] is True and failure["severity"] == "hard"
    assert gate.unexpected_index[failure["label"]] == [3, 9]
    # the soft volume expectation (min 100 rows) is a warning, not a failure
    assert [w["expectation"] for w in kept["warnings"]] == ["expect_table_row_count_to_be_between"]
    assert kept["checkpoint_result"]["success"] is False
    with pytest.raises(GateFailed, match=r"(?s)my data failed validation:\n.*\[HARD\] expect_column_values_to_be_in_set"):
        require(gate, "my data")


def test_summary_in_the_log_names_expectation_count_and_sample(tmp_path, caplog):
    frame = raw_frame()
    frame.loc[5, "weight"] = -3.0
    caplog.set_level("INFO", logger="nightly_topn.quality")
    run_gate("raw_events", frame, tmp_path, RAW_PARAMS)
    assert re.search(r"\[HARD\] expect_column_values_to_be_between\(column=weight.*unexpected=1 \(2\.50%\); "
                     r"sample=\[-3\.0\]", caplog.text), caplog.text
    assert "[soft] expect_table_row_count_to_be_between(min_value=100)" in caplog.text


def test_data_docs_are_built_per_run_and_readable_offline(failed_gate):
    gate, report = failed_gate
    page = gate.docs_path
    assert page.startswith(str(report / "gx" / "raw_events")) and page.endswith(".html")
    html = open(page, encoding="utf-8").read()
    assert not re.search(r"<link[^>]*href=\"https?://", html)       # no CDN stylesheets
    assert not re.search(r"<script[^>]*src=\"https?://", html)      # no CDN scripts
    assert "data_docs_default_styles" not in html or "<style>" in html
    assert html.count("<style>") >= 2                                # GX's packaged CSS + ours, inlined
    assert "event_type" in html and "like" in html                   # the failed expectation is shown


def test_passing_gate(tmp_path):
    gate = run_gate("raw_events", raw_frame(), tmp_path, {**RAW_PARAMS, "volume_soft_min": None})
    assert gate.success and not gate.failures and not gate.warnings
    assert require(gate, "good data") is gate


def test_gate_settings_env_override_and_bad_json(monkeypatch):
    assert gate_settings("raw_events")["max_rejected_share"] == 0.05
    monkeypatch.setenv("NIGHTLY_TOPN_GATES", '{"raw_events": {"max_rejected_share": 0.2}}')
    assert gate_settings("raw_events")["max_rejected_share"] == 0.2
    assert gate_settings("raw_events", {"max_rejected_share": 0.1})["max_rejected_share"] == 0.1
    monkeypatch.setenv("NIGHTLY_TOPN_GATES", "not json")
    with pytest.raises(ValueError, match="NIGHTLY_TOPN_GATES is not a JSON object"):
        gate_settings("raw_events")


def test_a_gate_session_finds_what_run_gate_finds_without_data_docs(tmp_path):
    from nightly_topn.quality import GateSession

    frame = pd.DataFrame({"top_user_share": [0.9], "top_user_events": [900], "events": [1000]})
    full = run_gate("raw_activity", frame, tmp_path / "full", {"max_user_share": 0.5})
    with GateSession() as gates:
        light = gates.run("raw_activity", frame, tmp_path / "light", {"max_user_share": 0.5})
    assert [w["label"] for w in light.warnings] == [w["label"] for w in full.warnings] and light.warnings
    assert full.docs_path and not light.docs_path and json.loads(open(light.result_path).read())["warnings"]


def test_the_first_run_of_a_window_gates_every_day_that_feeds_the_model(root):
    import datetime as dt

    from conftest import SMALL_WINDOW, run_day

    from nightly_topn.jobs.validate import gated_events
    from nightly_topn.storage import Storage, read_json

    result = run_day("2024-03-01", root, until="preprocess")
    store = Storage.at(root)
    days = [dt.date(2024, 3, 1) - dt.timedelta(days=k) for k in range(SMALL_WINDOW)]
    assert all(gated_events(store, day) is not None for day in days)
    assert len(result["validate"]["window"]["days"]) == SMALL_WINDOW - 1
    inputs = read_json(store.partition("features", "2024-03-01") / "_manifest.json")["inputs"]
    assert [p for p in inputs if "/raw/" in p and p.endswith("events.parquet")] == []  # only gated rows
    assert run_day("2024-03-02", root, until="validate")["validate"]["window"]["days"] == []  # once is enough


def test_a_bad_earlier_day_of_the_window_fails_the_run_in_one_line_and_is_moved_aside(root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import run_day
    from test_rules import WEEK, write_landing

    source = write_landing(tmp_path / "landing", WEEK)
    bad = tmp_path / "landing" / f"dt={WEEK[2]}" / "events.parquet"
    events = pq.read_table(bad)
    pq.write_table(events.set_column(2, "event_type", pa.array(["bogus"] * events.num_rows)), bad)
    with pytest.raises(GateFailed) as failure:
        run_day(WEEK[-1].isoformat(), root, source=source, train_window_days=7)
    first = str(failure.value).splitlines()[0]
    assert first.startswith(f"window day {WEEK[2]} of the {WEEK[-1]} run: raw events ") and "max_rejected_share" in first
    assert not (root / "raw" / f"dt={WEEK[2]}").exists() and not (root / "features").exists()
    assert list((root / "quarantine" / "rejected-raw").glob(f"dt={WEEK[2]}.*"))
