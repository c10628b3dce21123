"""Development tooling: one user's published list under each candidate rule, through the real jobs.

Runs one day of the small embedded universe (ALS, top 10), picks a user, then for each rule kind
lands a rule aimed at that user's list in a copy of the day's raw partition (an ``exclude`` of
their first item, a ``block`` of their second, an allow-list for their segment without their
third, an availability window that opens after the run date on their fourth), reruns the day from
the raw gate to publish, and prints the published list (``nightly-topn lookup``) beside the one
without rules: what left, and what filled the slot.

    python -m tools.rules_example [--workdir var/rules-example] [--date 2024-03-01]
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SMALL_SOURCE = "generated:seed=3,base_users=400,users_per_day=6,base_items=150,items_per_day=2"
KNOBS = {"train_window_days": 21, "top_n": 10, "model": "als"}
AFTER_INGEST = ("validate", "preprocess", "validate_features", "train", "evaluate", "topn", "validate_topn", "publish")


def run(date: str, root: Path, *, first: bool) -> dict:
    from nightly_topn.config import RunParams
    from nightly_topn.jobs import run_day, run_job

    params = RunParams.from_mapping(KNOBS)
    if first:
        return dict(run_day(date, root=root, source=SMALL_SOURCE, params=params))
    versions = {}
    for name in AFTER_INGEST:  # the landed (edited) raw day stays as it is: no ingest
        result = run_job(name, date, root=root, params=params, **({"version": versions.get("topn")}
                                                                   if name in ("validate_topn", "publish") else {}))
        versions[name] = result.get("path")
    return versions


def rules_table(rows: list[dict]) -> pa.Table:
    from nightly_topn.schemas import RULES

    return pa.Table.from_pylist([{"user_id": None, "segment": None, "reason": None, **r} for r in rows], schema=RULES)


def land(raw: Path, kind: str, user: str, items: list[str], date: dt.date) -> str:
    """Edit the copied raw day so that ``kind`` removes one item of ``user``'s list; returns what was landed."""
    if kind == "exclude":
        pq.write_table(rules_table([{"rule": "exclude", "item_id": items[0], "reason": "out of stock"}]),
                       raw / "rules.parquet")
        return f"exclude {items[0]} (everyone)"
    if kind == "block":
        pq.write_table(rules_table([{"rule": "block", "user_id": user, "item_id": items[1]}]), raw / "rules.parquet")
        return f"block {items[1]} for {user}"
    if kind == "allow":
        users = pq.read_table(raw / "users.parquet")
        segment = pc.if_else(pc.equal(users["user_id"], user), "eu", users["segment"])
        pq.write_table(users.set_column(users.schema.get_field_index("segment"), "segment", segment),
                       raw / "users.parquet")
        catalogue = pq.read_table(raw / "items.parquet").column("item_id").to_pylist()
        pq.write_table(rules_table([{"rule": "allow", "segment": "eu", "item_id": i} for i in catalogue
                                    if i != items[2]]), raw / "rules.parquet")
        return f"{user} in segment eu, whose allow-list is the catalogue but {items[2]}"
    table = pq.read_table(raw / "items.parquet")  # the availability window
    opens = pa.scalar(dt.datetime.combine(date + dt.timedelta(days=10), dt.time(), dt.timezone.utc),
                      pa.timestamp("us", tz="UTC"))
    column = pc.if_else(pc.equal(table["item_id"], items[3]), opens, table["available_from"])
    pq.write_table(table.set_column(table.schema.get_field_index("available_from"), "available_from", column),
                   raw / "items.parquet")
    return f"{items[3]} available from {date + dt.timedelta(days=10)}"


def main(argv=None) -> int:
    from nightly_topn.lookup import lookup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/rules-example")
    parser.add_argument("--date", default="2024-03-01")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    date = dt.date.fromisoformat(args.date)
    base = work / "no-rules"
    run(args.date, base, first=True)
    from nightly_topn.storage import Storage

    store = Storage.at(base)
    lists = pq.read_table(store.root / store.published()["path"])
    user = lists.filter(pc.equal(lists["source"], "model"))["user_id"][0].as_py()
    plain = lookup(user, root=base)["item_ids"]
    print(f"user {user}, {args.date}, top {len(plain)} (ALS); no rules:\n  {' '.join(plain)}")
    for kind in ("exclude", "block", "allow", "window"):
        root = work / kind
        shutil.copytree(base, root)
        raw = Storage.at(root).partition("raw", date)
        landed = land(raw, kind, user, plain, date)
        run(args.date, root, first=False)
        shaped = lookup(user, root=root)["item_ids"]
        gone = [i for i in plain if i not in shaped]
        came = [i for i in shaped if i not in plain]
        print(f"{kind}: {landed}\n  {' '.join(shaped)}\n  removed {gone or '-'}, filled by {came or '-'}; "
              f"{len(shaped)} items, gate passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
