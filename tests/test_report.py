"""The run report people open after a nightly run: it must state the decision and the numbers,
escape whatever came from data or config, and read offline (no scripts, no remote resources)."""
import re

import numpy as np
import pytest

from nightly_topn.report import COLUMNS, render, write_report
from nightly_topn.storage import Storage, write_json

DATE, BEFORE = "2024-03-02", "2024-03-01"
EVIL = "<script>alert(1)</script>"


def evaluation(date=DATE, *, winner="ease", passed=True, detail="0.2100 > 0.1500 (+40%)") -> dict:
    """The shape ``jobs/evaluate.py`` hands to ``write_report``, with made-up numbers."""
    ndcg = {winner: 0.21, "popularity": 0.15, "als": 0.123456}
    metrics = {}
    for name, value in ndcg.items():
        m = {c: 0.1 for c in COLUMNS}
        m.update(ndcg=value, novelty=9.87, segments={
            "new": {"users": 4, "ndcg": value / 2, "recall_capped": 0.05, "hit_rate": 0.25},
            "established": {"users": 40, "ndcg": value, "recall_capped": 0.1, "hit_rate": 0.5}})
        metrics[name] = m
    metrics["als"]["diversity"] = float("nan")
    return {"date": date, "k": 10, "model": winner, "params": {"l2": 250.0},
            "model_version": f"{winner}-1a2b3c", "protocol": "temporal", "selection": "best validation ndcg",
            "tuning_seconds": 3.5, "tuning_budget_seconds": 10.0,
            "holdout": {"users": 44, "pairs": 120}, "segments": {"rule": "new = fewer than 5 training interactions"},
            "metrics": metrics, "champion": None,
            "gate": {"passed": passed, "reason": "" if passed else detail,
                     "checks": [{"check": "beats popularity", "passed": passed, "detail": detail}]},
            "data_fingerprint": "fp", "code_version": "0.1.0"}


@pytest.fixture
def store(root) -> Storage:
    store = Storage.at(root)
    write_json(store.partition("reports", BEFORE) / "evaluation.json", evaluation(BEFORE))
    return store


def page(store, ev=None, **kwargs) -> str:
    rng = np.random.default_rng(0)
    return render(store, DATE, ev or evaluation(), recommended=rng.integers(0, 30, size=200),
                  item_popularity=rng.integers(1, 50, size=30), **kwargs)


def test_report_states_winner_metrics_gate_and_charts(store):
    ev = evaluation()
    path = write_report(store, DATE, ev, recommended=np.arange(10), item_popularity=np.arange(30, 0, -1))
    text = path.read_text(encoding="utf-8")
    assert path == store.partition("reports", DATE) / "report.html"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left behind
    assert "Winner: ease" in text and 'class="winner"' in text
    for m in ev["metrics"].values():
        assert f"<td>{m['ndcg']:.4f}</td>" in text
    assert "<td>0.1235</td>" in text and "<td>–</td>" in text  # 4 decimals; NaN as a dash
    assert "Quality gate: PASSED — lists published" in text
    assert text.count("<svg") >= 4  # three trend charts and the popularity profile
    failed = page(store, evaluation(passed=False))
    assert "Quality gate: FAILED — live lists kept" in failed and "❌ beats popularity" in failed


def test_user_controlled_text_is_escaped(store):
    ev = evaluation(winner=EVIL, detail=f"lift {EVIL}")
    ev["params"] = {"note": EVIL}
    ev["selection"] = EVIL
    text = page(store, ev, registry_record={"candidates": {EVIL: {"best_metric": 0.2, "trials": 3, "seconds": 1.0,
                                                                  "budget_seconds": 5.0, "best_params": {"x": EVIL}}},
                                            "data_fingerprint": EVIL, "code_version": "0.1.0"})
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "lift &lt;script&gt;" in text


def test_report_reads_offline(store):
    text = page(store)
    urls = re.findall(r"https?://[^\s\"'<>)]*", text)
    assert urls and set(urls) == {"http://www.w3.org/2000/svg"}  # only the SVG namespace, never fetched
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|\bhref=|@import|url\(", text, re.I)
