"""A/B arms: a challenger model's lists for a hashed share of the users, published, gated, looked up
and evaluated beside the champion's."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_SOURCE, run_day

from nightly_topn import cli
from nightly_topn.config import RunParams
from nightly_topn.errors import ConfigError, GateFailed
from nightly_topn.experiments import arm_of, buckets, in_challenger
from nightly_topn.jobs import run_job
from nightly_topn.jobs.evaluate import experiment_verdict
from nightly_topn.jobs.rolling_eval import served_quality
from nightly_topn.lookup import TopNReader
from nightly_topn.serving.encoding import bodies, body_of
from nightly_topn.storage import MANIFEST, Storage, read_json, write_json

DATE = "2024-03-01"
AB = {"challenger_model": "itemknn", "challenger_share": 0.3, "experiment": "knn-test"}


def test_assignment_is_the_documented_hash_stable_and_monotone_in_the_share():
    ids = [f"user-{n}" for n in range(20000)]
    # the formula of nightly_topn.experiments, written out independently
    expected = [int.from_bytes(hashlib.sha256(f"exp:{u}".encode()).digest()[:8], "big") / 2**64 for u in ids[:50]]
    np.testing.assert_array_equal(buckets(ids[:50], "exp"), expected)
    arm = in_challenger(ids, "exp", 0.2)
    assert abs(arm.mean() - 0.2) < 0.015  # binomial sd at n=20000 is 0.003
    assert np.array_equal(arm, in_challenger(list(reversed(ids)), "exp", 0.2)[::-1])  # per user, not per position
    wider = in_challenger(ids, "exp", 0.4)
    assert (wider | ~arm).all()  # raising the share only moves champion users over
    other = in_challenger(ids, "another-experiment", 0.2)
    assert 0.1 < (arm & other).sum() / arm.sum() < 0.3  # a new name reshuffles (independent: ~0.2 overlap)
    assert not in_challenger(ids, "exp", 0.0).any()
    assert arm_of(ids[0], "exp", 0.2) == ("challenger" if arm[0] else "champion")


def test_experiment_knobs_are_bounded_and_named_in_one_line():
    with pytest.raises(ConfigError, match=r"challenger_share=0\.9.*maximum 0\.5"):
        RunParams.from_mapping({"challenger_model": "ease", "challenger_share": 0.9})
    with pytest.raises(ConfigError, match="experiment=../x"):
        RunParams.from_mapping({"experiment": "../x"})
    with pytest.raises(ConfigError, match="challenger_model=popularity"):
        RunParams.from_mapping({"challenger_model": "popularity"})


def test_a_challenger_that_does_not_beat_popularity_gets_no_arm():
    info = {"model": "als", "model_version": "v-als",
            "challenger": {"model": "bpr", "experiment": "e", "share": 0.2, "active": True, "model_version": "v-bpr"}}
    results = {"als": {"ndcg": 0.30}, "bpr": {"ndcg": 0.19}, "popularity": {"ndcg": 0.20}}
    verdict = experiment_verdict(info, results, RunParams())
    assert not verdict["active"] and "does not beat popularity" in verdict["reason"]
    assert verdict["arms"]["challenger"]["ndcg"] == 0.19
    results["bpr"]["ndcg"] = 0.21
    assert experiment_verdict(info, results, RunParams())["active"]
    assert experiment_verdict({**info, "challenger": None}, results, RunParams()) is None


def _lists(version) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(version.glob("part-*.parquet"))])


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """The same day with and without the experiment (same data, same seed)."""
    base = tmp_path_factory.mktemp("ab")
    plain = run_day(DATE, base / "plain", until="publish")
    ab = run_day(DATE, base / "ab", until="publish", **AB)
    return base / "plain", plain, base / "ab", ab


def test_each_user_gets_their_arms_list_and_the_champions_users_see_no_difference(days):
    plain_root, _, root, result = days
    store = Storage.at(root)
    assert result["train"]["challenger"]["active"] and result["publish"]["published"]
    assert result["validate_topn"]["outcome"] in ("passed", "warned")
    version = store.root / store.published()["path"]
    lists = _lists(version)
    users = lists.column("user_id").to_pylist()
    expected = in_challenger(users, AB["experiment"], AB["challenger_share"])
    arms = np.array(lists.column("arm").to_pylist())
    assert np.array_equal(arms == "challenger", expected) and 0.2 < expected.mean() < 0.4
    versions = np.array(lists.column("model_version").to_pylist())
    champion, challenger = result["train"]["model_version"], result["train"]["challenger"]["model_version"]
    assert set(versions[~expected]) == {champion} and set(versions[expected]) == {challenger}
    manifest = read_json(version / MANIFEST)["experiment"]
    assert manifest["users"] == {"champion": int((~expected).sum()), "challenger": int(expected.sum())}
    report = (store.partition("reports", DATE) / "report.html").read_text()
    assert "Experiment <code>knn-test</code>" in report and "both arms published" in report

    plain = Storage.at(plain_root)
    reference = _lists(plain.root / plain.published()["path"])
    assert reference.column("user_id").to_pylist() == users
    ref_items = reference.column("item_ids").to_pylist()
    items = lists.column("item_ids").to_pylist()
    assert all(items[i] == ref_items[i] for i in np.flatnonzero(~expected))  # champion arm: the same lists
    differ = sum(items[i] != ref_items[i] for i in np.flatnonzero(expected))
    assert differ > 0.5 * expected.sum()  # the challenger's users really get another model's lists


def test_lookup_export_and_service_bodies_carry_the_arm(days, capsys):
    _, _, root, _ = days
    store = Storage.at(root)
    version = store.root / store.published()["path"]
    lists = _lists(version)
    challenger_user = lists.filter(pc.equal(lists["arm"], "challenger"))["user_id"][0].as_py()
    assert cli.main(["lookup", "--root", str(root), challenger_user]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arm"] == "challenger" and shown["model_version"].split(".")[1] == "itemknn"
    row = TopNReader(version).get(challenger_user)
    body = json.loads(body_of(row, "v"))
    assert body["arm"] == "challenger"
    batch = lists.filter(pc.equal(lists["user_id"], challenger_user))
    assert json.loads(bodies(batch, "v")[0].as_py()) == body  # the Redis load's Arrow path says the same


def test_the_top_n_gate_refuses_lists_that_do_not_follow_the_assignment(days, tmp_path):
    _, _, root, result = days
    store = Storage.at(root)
    version = store.root / store.published()["path"]
    copy = version.parent / "v=99990101T000000000000"
    shutil.copytree(version, copy)
    (copy / "_gate.json").unlink(missing_ok=True)
    part = sorted(copy.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    flipped = pc.if_else(pc.equal(table["arm"], "champion"), "challenger", "champion")
    pq.write_table(table.set_column(table.schema.get_field_index("arm"), "arm", flipped), part)
    with pytest.raises(GateFailed, match="A/B arm"):
        run_job("validate_topn", DATE, root=root, params=RunParams.from_mapping({"top_n": 10, **AB}),
                version=str(copy))
    assert store.published()["path"] == str(version.relative_to(store.root))  # the live lists stay
    shutil.rmtree(copy)


def test_without_an_admitting_verdict_everybody_gets_the_champion(days):
    _, _, root, result = days
    store = Storage.at(root)
    path = store.partition("reports", DATE) / "evaluation.json"
    original = read_json(path)
    params = RunParams.from_mapping({"train_window_days": 21, "top_n": 10, "model": "als", **AB})
    written = None
    try:
        write_json(path, {**original, "experiment": {**original["experiment"], "active": False}})
        written = run_job("topn", DATE, root=root, params=params)
        lists = _lists(Path(written["path"]))
        assert set(lists.column("arm").to_pylist()) == {"champion"}
        assert set(lists.column("model_version").to_pylist()) == {result["train"]["model_version"]}
        assert run_job("validate_topn", DATE, root=root, params=params, version=written["path"])["outcome"] != "failed"
    finally:
        write_json(path, original)
        if written:  # the module's other tests read the date's newest gated version: the two-arm one
            shutil.rmtree(written["path"])


def test_rolling_evaluation_scores_each_arm_on_its_own(days):
    _, _, root, _ = days
    store = Storage.at(root)
    next_day = (dt.date.fromisoformat(DATE) + dt.timedelta(days=1)).isoformat()
    run_job("ingest", next_day, root=root, params=RunParams(train_window_days=21), source=SMALL_SOURCE)
    result = served_quality(store, DATE, k=10, horizon_days=1)
    arms = result["arms"]
    assert set(arms) == {"champion", "challenger"}
    assert arms["champion"]["users"] + arms["challenger"]["users"] == result["users"] > 0
    assert arms["challenger"]["model_versions"] == [read_json(store.partition("models", DATE) / "model_info.json")
                                                    ["challenger"]["model_version"]]
    assert all(0 <= arms[a]["ndcg"] <= 1 for a in arms)

