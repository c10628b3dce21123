"""Candidate rules: exclusions, per-user blocks, segment allow-lists and availability windows are
applied while scoring (lists stay full), validated by the raw gate, and checked by the top-N gate."""
from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_SOURCE, run_day
from test_cold_start import ScoresOnly, random_problem

from nightly_topn import schemas, scoring
from nightly_topn.errors import GateFailed
from nightly_topn.models import Popularity
from nightly_topn.rules import CandidateRules, resolve
from nightly_topn.sources.generated import GeneratedSource
from nightly_topn.storage import Storage

DATE = "2024-03-01"
RULED = f"{SMALL_SOURCE},exclude_share=0.1,blocks_per_user=2,segment_share=0.3"


def rules_table(rows: list[tuple]) -> pa.Table:
    """``(rule, item, user, segment)`` tuples as ``schemas.RULES``."""
    columns = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.table({"rule": columns[0], "item_id": columns[1], "user_id": pa.array(columns[2], pa.string()),
                     "segment": pa.array(columns[3], pa.string()), "reason": pa.nulls(len(rows), pa.string())},
                    schema=schemas.RULES)


def dense_reference(model, weights, history, n, forbidden):
    """Dense scores of warm ∪ new items, seen and forbidden masked, stable top-n."""
    n_warm = weights.shape[0]
    warm = model.score(np.arange(history.shape[0]), history[:, :n_warm])
    scores = np.hstack([warm, warm @ weights.toarray()]).astype(np.float32)
    scores[(history.toarray() > 0) | forbidden] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    values = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isfinite(values), order, -1), values


@pytest.mark.parametrize("path", ["fused", "generic"])
def test_the_kernel_masks_every_rule_before_the_cut(path):
    model, weights, history = random_problem(n_users=300, n_warm=400, n_cold=37)
    n_users, n_items = history.shape
    rng = np.random.default_rng(1)
    users_ids, item_ids = np.array([f"u{i:04d}" for i in range(n_users)]), np.array([f"i{i:04d}" for i in range(n_items)])
    excluded = rng.choice(n_items, 44, replace=False)  # ~10 %, warm and new items
    blocks = [(int(u), int(i)) for u in range(n_users) for i in rng.choice(n_items, 3, replace=False)]
    allow = np.flatnonzero(rng.random(n_items) < 0.6)
    rows = ([("exclude", item_ids[i], None, None) for i in excluded]
            + [("block", item_ids[i], users_ids[u], None) for u, i in blocks]
            + [("allow", item_ids[i], None, "eu") for i in allow] + [("exclude", "not-an-item", None, None)])
    members = pa.table({"user_id": users_ids, "segment": np.where(np.arange(n_users) % 3 == 0, "eu", "us")})
    table, stats = resolve(rules_table(rows), None, members, users_ids, item_ids, dt.date(2024, 3, 1))
    assert stats["excluded_items"] == 44 and stats["rules_naming_unknown_ids"] == 1
    assert stats["segments"] == {"eu": {"allowed_items": len(allow), "users": 100}}
    rules = CandidateRules(table, n_users, n_items)
    forbidden = np.zeros((n_users, n_items), dtype=bool)
    forbidden[:, excluded] = True
    forbidden[tuple(np.array(blocks).T)] = True
    outside = np.setdiff1d(np.arange(n_items), allow)
    forbidden[np.ix_(np.arange(0, n_users, 3), outside)] = True

    scorer_model = model if path == "fused" else ScoresOnly(model)
    scorer = scoring.TopNScorer(scorer_model, 25, batch_size=64, cold_weights=weights, rules=rules)
    assert scorer.fused == (path == "fused")
    idx, vals = scorer.recommend(np.arange(n_users), history)
    ref_idx, ref_vals = dense_reference(model, weights, history, 25, forbidden)
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)
    assert (idx >= 0).all()  # still 25 per user: the rules left enough
    assert not forbidden[np.arange(n_users)[:, None], idx].any()
    assert (idx >= 400).any()  # new items compete under the same rules


def test_the_fallback_model_obeys_the_rules_too():
    _, _, history = random_problem(n_cold=0)
    users = np.arange(history.shape[0])
    pop = Popularity().fit(history)
    plain, _ = pop.recommend(users, history, 10)
    ids = np.array([f"i{i:04d}" for i in range(history.shape[1])])
    table, _ = resolve(rules_table([("exclude", ids[i], None, None) for i in plain[0, :3]]), None, None,
                       np.array([f"u{u:04d}" for u in users]), ids, dt.date(2024, 3, 1))
    ruled, _ = scoring.TopNScorer(pop, 10, rules=CandidateRules(table, *history.shape)).recommend(users, history)
    assert not np.isin(ruled, plain[0, :3]).any() and (ruled >= 0).all()


def test_availability_windows_exclude_items_outside_them_at_the_end_of_the_run_date():
    ids = np.array(["early", "late", "gone", "open", "ends-after"])
    ts = pa.timestamp("us", tz="UTC")
    items = pa.table({"item_id": ids,
                      "available_from": pa.array([dt.datetime(2024, 2, 1), dt.datetime(2024, 3, 3), None, None, None], ts),
                      "available_until": pa.array([None, None, dt.datetime(2024, 3, 2), None,
                                                   dt.datetime(2024, 3, 2, 0, 0, 1)], ts)})
    # lists of 2024-03-01 go on the air at 2024-03-02T00:00Z: "late" not yet, "gone" no longer
    table, stats = resolve(None, items, None, np.array(["u"]), ids, dt.date(2024, 3, 1))
    assert sorted(table.column("item_index").to_pylist()) == [1, 2] and stats["excluded_by_window"] == 2
    assert resolve(None, items.slice(3, 1), None, np.array(["u"]), ids, dt.date(2024, 3, 1)) is None


@pytest.fixture(scope="module")
def ruled_day(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules") / "data"
    return root, run_day(DATE, root, source=RULED)


def test_every_user_gets_n_lists_items_none_of_them_excluded(ruled_day):
    root, result = ruled_day
    assert result["publish"] and result["validate_topn"]["outcome"] in ("passed", "warned")
    source = GeneratedSource(seed=3, base_users=400, users_per_day=6, base_items=150, items_per_day=2,
                             exclude_share=0.1, blocks_per_user=2, segment_share=0.3)
    day = dt.date.fromisoformat(DATE)
    landed = source.rules(day).to_pandas()
    excluded = set(landed.loc[landed.rule == "exclude", "item_id"])
    blocked = set(zip(landed.loc[landed.rule == "block", "user_id"], landed.loc[landed.rule == "block", "item_id"]))
    allowed = set(landed.loc[landed.rule == "allow", "item_id"])
    segment = dict(zip(*source.users(day).select(["user_id", "segment"]).to_pydict().values()))
    store = Storage.at(root)
    lists = pq.read_table(store.root / store.published()["path"]).to_pylist()
    assert len(lists) == result["topn"]["rows"]
    r1 = 0
    for row in lists:
        items = row["item_ids"]
        assert len(items) == 10 == len(set(items)), row["user_id"]
        assert not excluded & set(items)
        assert not {(row["user_id"], i) for i in items} & blocked
        if segment[row["user_id"]] == "r1":
            r1 += 1
            assert set(items) <= allowed
    assert r1 > 100
    stats = result["preprocess"]["rules"]
    assert stats["excluded_items"] > 10 and stats["blocks"] > 500 and stats["segments"]["r1"]["users"] == r1
    report = (root / "reports" / f"dt={DATE}" / "report.html").read_text()
    assert f"{stats['excluded_items']} items excluded for everyone" in report and "segment\n<code>r1</code>" in report


def test_the_top_n_gate_fails_a_version_that_shows_an_excluded_item(ruled_day, tmp_path):
    from nightly_topn.jobs.validate import validate_topn

    root, result = ruled_day
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    first = pq.read_table(sorted((copy / "topn" / f"dt={DATE}").glob("v=*/part-*.parquet"))[0]).slice(0, 1)
    user, shown = first.column("user_id")[0].as_py(), first.column("item_ids")[0].as_py()[0]
    raw = copy / "raw" / f"dt={DATE}" / "rules.parquet"
    landed = pq.read_table(raw)
    pq.write_table(pa.concat_tables([landed, rules_table([("block", shown, user, None)])]), raw)
    with pytest.raises(GateFailed, match="a candidate rule forbids the user"):
        validate_topn(DATE, root=copy)


def write_landing(path, days: list[dt.date], *, rules: str | None = None, items: str | None = None):
    """A landing folder of the small generated universe's days, plus ``rules.csv``/``items.csv``."""
    source = GeneratedSource(seed=3, base_users=400, users_per_day=6, base_items=150, items_per_day=2)
    for day in days:
        (path / f"dt={day.isoformat()}").mkdir(parents=True)
        pq.write_table(source.events_for(day), path / f"dt={day.isoformat()}" / "events.parquet")
    if rules is not None:
        (path / "rules.csv").write_text(rules)
    if items is not None:
        (path / "items.csv").write_text(items)
    return f"landing:{path}"


WEEK = [dt.date(2024, 2, 24) + dt.timedelta(days=k) for k in range(7)]


@pytest.mark.parametrize("rules, message", [
    ("rule,item_id,user_id,segment\nblock,i00001,,\n", "a block rule without a user"),
    ("rule,item_id,user_id,segment\nban,i00001,,\n", "unknown rule kind"),
    ("rule,item_id,user_id,segment\nexclude,i00001,u000001,\n", "did you mean block"),
    ("rule,item_id,user_id,segment\nallow,i00001,,\n", "an allow rule without a segment"),
])
def test_bad_rules_fail_the_raw_gate_in_one_line_and_nothing_is_trained(root, tmp_path, rules, message):
    source = write_landing(tmp_path / "landing", WEEK, rules=rules)
    with pytest.raises(GateFailed, match=message) as failure:
        run_day(WEEK[-1].isoformat(), root, source=source, train_window_days=7)
    assert str(failure.value).splitlines()[0].startswith("candidate rules of ")
    assert "(1 row(s))" in str(failure.value).splitlines()[0]
    assert not (root / "features").exists() and not (root / "raw" / f"dt={WEEK[-1]}").exists()


def test_landed_rules_and_windows_shape_the_published_lists(root, tmp_path):
    day = WEEK[-1].isoformat()
    plain = run_day(day, tmp_path / "plain", source=write_landing(tmp_path / "l0", WEEK), train_window_days=7)
    plain_lists = {r["user_id"]: r["item_ids"] for r in pq.read_table(
        sorted((tmp_path / "plain" / "topn" / f"dt={day}").glob("v=*"))[0]).to_pylist()}
    assert plain["publish"] and not (tmp_path / "plain" / "features" / f"dt={day}" / "rules.parquet").exists()
    user = sorted(plain_lists)[0]
    top, second, third = plain_lists[user][:3]
    rules = f"rule,item_id,user_id,segment,reason\nexclude,{top},,,withdrawn\nblock,{second},{user},,complaint\n"
    items = f"item_id,available_until\n{third},2024-03-01T00:00:00Z\n"
    result = run_day(day, root, source=write_landing(tmp_path / "l1", WEEK, rules=rules, items=items),
                     train_window_days=7)
    lists = {r["user_id"]: r["item_ids"] for r in pq.read_table(sorted((root / "topn" / f"dt={day}").glob("v=*"))[0])
             .to_pylist()}
    assert result["publish"] and len(lists[user]) == 10
    assert not {top, second, third} & set(lists[user])
    assert lists[user][:7] == [i for i in plain_lists[user] if i not in (top, second, third)]  # the rest moves up
    others = [u for u in lists if second in plain_lists[u] and u != user]
    assert others and all(second in lists[u] for u in others)  # a block is one user's only
    assert not any(top in items or third in items for items in lists.values())
