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
