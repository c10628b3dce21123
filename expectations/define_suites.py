"""(Re)write the gate suites, their validation definitions and checkpoints into ``gx/``.

The JSON files under ``expectations/gx`` are the version-controlled truth the jobs run; this
script is how they are authored (GX's own API, file-backed context), so a change to a suite is
a reviewed diff of this file *and* of the JSON it writes::

    GX_ANALYTICS_ENABLED=false python expectations/define_suites.py

(GX mints new ids on every write; ``keep_ids`` puts back the previous id of everything that did
not change, so the diff is only the change itself.)

Every expectation carries ``meta.severity`` (``hard``: fails the gate, ``soft``: warning in the
log and report) and, for row-level raw checks, ``meta.quarantine: true`` (rows failing it are
moved to the quarantine partition; the run continues on the clean rows while the rejected share
stays under ``gates.json``'s ``max_rejected_share``). Thresholds that change per run (the data
interval, volume bounds, counts) are suite parameters (``{"$PARAMETER": name}``) filled in by
``nightly_topn.jobs.validate`` at checkpoint run time.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402

PROJECT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT.parent))  # run as a script from a checkout: nightly_topn beside it
from nightly_topn.schemas import MAX_ID_LENGTH, RULE_KINDS  # noqa: E402

EVENT_TYPES = ["view", "click", "play", "rating", "purchase"]


def P(name: str) -> dict:
    return {"$PARAMETER": name}


def hard(why: str, **extra) -> dict:
    return {"severity": "hard", "why": why, **extra}


def soft(why: str, **extra) -> dict:
    return {"severity": "soft", "why": why, **extra}


def row_level(why: str) -> dict:
    return hard(why, quarantine=True)


def raw_events() -> list:
    cols = ["user_id", "item_id", "event_type", "weight", "event_time"]
    exps = [gxe.ExpectColumnToExist(column=c, meta=hard(f"contract column {c} is required")) for c in cols]
    types = {"user_id": "str", "item_id": "str", "event_type": "str", "weight": "float32", "event_time": "Timestamp"}
    exps += [gxe.ExpectColumnValuesToBeOfType(column=c, type_=t, meta=hard(f"{c} must be {t} (contract type)"))
             for c, t in types.items()]
    exps += [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=hard("an empty day means the upstream drop failed")),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=P("volume_hard_min"), max_value=P("volume_hard_max"),
            meta=hard("row count far outside the trailing days' median (volume drop or spike)")),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=P("volume_soft_min"), max_value=P("volume_soft_max"),
            meta=soft("row count unusually far from the trailing days' median")),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id", meta=row_level("an event without a user")),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id", meta=row_level("an event without an item")),
        gxe.ExpectColumnValueLengthsToBeBetween(column="user_id", min_value=1,
                                                meta=row_level("an empty user id (a blank CSV field)")),
        gxe.ExpectColumnValueLengthsToBeBetween(column="item_id", min_value=1,
                                                meta=row_level("an empty item id (a blank CSV field)")),
        # a separate check, so an empty id gets one reason, not two
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="user_id", max_value=MAX_ID_LENGTH,
            meta=row_level(f"a user id longer than MAX_ID_LENGTH={MAX_ID_LENGTH} characters "
                           "(ids are keys, not payloads)")),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="item_id", max_value=MAX_ID_LENGTH,
            meta=row_level(f"an item id longer than MAX_ID_LENGTH={MAX_ID_LENGTH} characters "
                           "(ids are keys, not payloads)")),
        gxe.ExpectColumnValuesToNotBeNull(column="event_type", meta=row_level("an event without a type")),
        gxe.ExpectColumnValuesToNotBeNull(column="event_time", meta=row_level("an event without a time")),
        gxe.ExpectColumnValuesToNotBeNull(column="weight", meta=row_level("missing or NaN weight")),
        gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0.0, max_value=P("max_weight"),
                                          meta=row_level("weight outside its allowed range")),
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=EVENT_TYPES,
                                        meta=row_level("unknown event type")),
        gxe.ExpectColumnValuesToBeBetween(column="event_time", min_value=P("min_time"), max_value=P("max_time"),
                                          strict_max=True,
                                          meta=row_level("event time outside the data interval (+ late allowance)")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "event_type", "event_time"],
                                            mostly=P("duplicate_mostly"),
                                            meta=hard("too many duplicated events (replayed upstream load?)")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "event_type", "event_time"],
                                            meta=soft("some duplicated events (preprocess drops them)")),
    ]
    return exps


def raw_rules() -> list:
    """The candidate rules of the day (``schemas.RULES``) and, as ``rule == "window"`` rows, the
    items table's availability windows (``validate_raw`` builds this frame). Every check is hard:
    a rule dropped or misread would show someone an item they must not see."""
    def when(kind: str) -> dict:
        return {"row_condition": f'rule == "{kind}"', "condition_parser": "pandas"}

    def unless(kind: str) -> dict:
        return {"row_condition": f'rule != "{kind}"', "condition_parser": "pandas"}

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="rule", meta=hard("a rule without its kind")),
        gxe.ExpectColumnValuesToBeInSet(column="rule", value_set=[*RULE_KINDS, "window"],
                                        meta=hard(f"unknown rule kind (expected one of {', '.join(RULE_KINDS)})")),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id", meta=hard("a rule without an item")),
        gxe.ExpectColumnValueLengthsToBeBetween(column="item_id", min_value=1, max_value=MAX_ID_LENGTH,
                                                meta=hard("an empty or over-long item id in a rule")),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id", **when("block"), meta=hard("a block rule without a user")),
        gxe.ExpectColumnValueLengthsToBeBetween(column="user_id", min_value=1, max_value=MAX_ID_LENGTH, **when("block"),
                                                meta=hard("an empty or over-long user id in a block rule")),
        gxe.ExpectColumnValuesToBeNull(column="user_id", **unless("block"),
                                       meta=hard("a user id on a rule that is not a block (did you mean block?)")),
        gxe.ExpectColumnValuesToNotBeNull(column="segment", **when("allow"),
                                          meta=hard("an allow rule without a segment")),
        gxe.ExpectColumnValueLengthsToBeBetween(column="segment", min_value=1, max_value=MAX_ID_LENGTH, **when("allow"),
                                                meta=hard("an empty or over-long segment in an allow rule")),
        gxe.ExpectColumnValuesToBeNull(column="segment", **unless("allow"),
                                       meta=hard("a segment on a rule that is not an allow rule")),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="available_until", column_B="available_from", ignore_row_if="either_value_is_missing",
            meta=hard("an item whose available_until is not after its available_from")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["rule", "item_id", "user_id", "segment"],
                                            ignore_row_if="never", meta=soft("a rule given more than once")),
    ]


def raw_activity() -> list:
    """The raw day summarised in one row (``top_user_share``: the most active user's share of the
    day's clean events), computed by ``validate_raw``; ``max_user_share`` is None on days too small
    to judge (``user_share_min_events``)."""
    return [
        gxe.ExpectColumnMaxToBeBetween(
            column="top_user_share", max_value=P("max_user_share"),
            meta=soft("one user holds more than max_user_share of the day's events (a bot, a load test, "
                      "a replayed session?)")),
    ]


def features() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=hard("no interactions to train on")),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id", meta=hard("user_index without an id in user_map")),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id", meta=hard("item_index without an id in item_map")),
        gxe.ExpectColumnValuesToBeBetween(column="user_index", min_value=0, max_value=P("max_user_index"),
                                          meta=hard("user_index outside the user map")),
        gxe.ExpectColumnValuesToBeBetween(column="item_index", min_value=0, max_value=P("max_item_index"),
                                          meta=hard("item_index outside the item map")),
        gxe.ExpectColumnValuesToNotBeNull(column="confidence", meta=hard("NaN weight")),
        gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, strict_min=True,
                                          max_value=P("max_confidence"),
                                          meta=hard("weight must be positive and finite")),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "holdout", "late"],
                                        meta=hard("unknown split")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_index", "item_index"],
                                            meta=hard("a (user, item) pair in two rows: train and holdout not disjoint")),
        gxe.ExpectColumnMeanToBeBetween(column="is_holdout", min_value=P("holdout_min"), max_value=P("holdout_max"),
                                        meta=hard("holdout share outside its bounds")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="user_index", min_value=P("min_users"),
                                                    meta=hard("too few users to train on")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="item_index", min_value=P("min_items"),
                                                    meta=hard("too few items to train on")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="user_index", min_value=P("users_soft_min"),
                                                    max_value=P("users_soft_max"),
                                                    meta=soft("user count moved a lot since the previous run")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="item_index", min_value=P("items_soft_min"),
                                                    max_value=P("items_soft_max"),
                                                    meta=soft("item count moved a lot since the previous run")),
    ]


def topn() -> list:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="user_id", meta=hard("a list without a user")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="user_id", min_value=P("n_users"), max_value=P("n_users"),
                                                    meta=hard("one list per active user")),
        gxe.ExpectColumnValuesToNotBeNull(column="user_index",
                                          meta=hard("a list for a user who is not active (not in user_map)")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "rank"],
                                            meta=hard("a user has more than one row")),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="n_items", column_B="expected_n",
            meta=hard("exactly N items per user, fewer only when the rules and the user's history leave fewer")),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_items", column_B="n_scores",
                                            meta=hard("one score per item")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"],
                                            meta=hard("an item twice in one user's list")),
        gxe.ExpectColumnValuesToBeBetween(column="score_drop", min_value=0.0,
                                          meta=hard("scores must be non-increasing down the list")),
        gxe.ExpectColumnValuesToBeNull(column="seen_pair", meta=hard("an item from the user's history")),
        gxe.ExpectColumnValuesToBeNull(
            column="excluded_pair",
            meta=hard("an item a candidate rule forbids the user (exclude, block, allow-list, availability window)")),
        gxe.ExpectColumnValuesToNotBeNull(column="item_index", row_condition="n_items > 0", condition_parser="pandas",
                                          meta=hard("an item that is not in the catalog (not in item_map)")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="item_id", min_value=P("coverage_hard_min"),
                                                    meta=hard("catalog coverage below its floor")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="item_id", min_value=P("coverage_soft_min"),
                                                    meta=soft("catalog coverage low")),
        gxe.ExpectColumnValuesToNotBeNull(column="model_version", meta=hard("model version missing")),
        gxe.ExpectColumnValuesToBeInSet(column="model_version", value_set=P("model_versions"),
                                        meta=hard("model version differs from the trained model")),
        gxe.ExpectColumnValuesToNotBeNull(column="logical_date", meta=hard("logical date missing")),
        gxe.ExpectColumnValuesToBeInSet(column="logical_date", value_set=P("dates"),
                                        meta=hard("logical date differs from the run date")),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=["model", "fallback"], meta=hard("unknown source")),
        gxe.ExpectColumnValuesToBeInSet(column="arm", value_set=["champion", "challenger"],
                                        meta=hard("unknown A/B arm")),
        gxe.ExpectColumnValuesToBeNull(
            column="wrong_arm",
            meta=hard("a list that is not its user's A/B arm's (the arm differs from the assignment, or the model "
                      "version from that arm's model)")),
    ]


def similar() -> list:
    """The similar items of a version, one row per (item, rank) (``validate_similar`` builds it)."""
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="item_id", meta=hard("a row without its item")),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="item_id", min_value=P("n_items"), max_value=P("n_items"),
                                                    meta=hard("one row per catalogue item")),
        gxe.ExpectColumnValuesToNotBeNull(column="source_index", meta=hard("a row for an item not in the catalogue")),
        gxe.ExpectColumnValuesToNotBeNull(column="item_index", row_condition="n_items > 0", condition_parser="pandas",
                                          meta=hard("a similar item that is not in the catalogue")),
        gxe.ExpectColumnValuesToBeNull(column="self_pair", meta=hard("an item listed as similar to itself")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["item_id", "similar_id"],
                                            meta=hard("an item twice in one list")),
        gxe.ExpectColumnValuesToBeBetween(column="score_drop", min_value=0.0,
                                          meta=hard("scores must be non-increasing down the list")),
        gxe.ExpectColumnValuesToBeBetween(column="n_items", min_value=0, max_value=P("k"),
                                          meta=hard("at most K similar items per item")),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_items", column_B="n_scores", meta=hard("one score per item")),
        gxe.ExpectColumnValuesToBeNull(column="excluded_pair",
                                       meta=hard("an item the candidate rules exclude for everyone")),
        gxe.ExpectColumnValuesToBeBetween(column="n_items", min_value=1, mostly=0.9,
                                          meta=soft("more than 10 % of the items have no similar item")),
        gxe.ExpectColumnValuesToBeInSet(column="model_version", value_set=P("model_versions"),
                                        meta=hard("model version differs from the trained model")),
        gxe.ExpectColumnValuesToBeInSet(column="logical_date", value_set=P("dates"),
                                        meta=hard("logical date differs from the run date")),
    ]


GATES = {
    "raw_events": (raw_events, {"result_format": "COMPLETE", "partial_unexpected_count": 20}),
    "raw_rules": (raw_rules, {"result_format": "SUMMARY", "partial_unexpected_count": 20}),
    "raw_activity": (raw_activity, {"result_format": "SUMMARY", "partial_unexpected_count": 20}),
    "features": (features, {"result_format": "SUMMARY", "partial_unexpected_count": 20}),
    "topn": (topn, {"result_format": "SUMMARY", "partial_unexpected_count": 20}),
    "similar": (similar, {"result_format": "SUMMARY", "partial_unexpected_count": 20}),
}


#: The folders of the GX project whose JSON files carry ids GX assigns anew on every write.
ID_FOLDERS = ("expectations", "validation_definitions", "checkpoints")


def _expectation_key(expectation: dict) -> str:
    return json.dumps([expectation["type"], expectation.get("kwargs", {})], sort_keys=True)


def _ids(project: Path) -> dict:
    """``{(folder, name, expectation key or ""): id}`` of the JSON files under ``project/gx``."""
    ids = {}
    for folder in ID_FOLDERS:
        for path in sorted((project / "gx" / folder).glob("*.json")):
            document = json.loads(path.read_text())
            ids[(folder, document["name"], "")] = document["id"]
            for expectation in document.get("expectations", []):
                ids[(folder, document["name"], _expectation_key(expectation))] = expectation["id"]
    return ids


def keep_ids(project: Path, before: dict) -> int:
    """Give what was rewritten unchanged its previous id back (GX mints new ones on every write),
    so the reviewed diff of ``gx/`` shows only what changed. References between the files (a
    checkpoint's validation definition, a definition's suite) are rewritten the same way."""
    renames = {new: before[key] for key, new in _ids(project).items() if key in before and before[key] != new}
    for folder in ID_FOLDERS:
        for path in (project / "gx" / folder).glob("*.json"):
            text = original = path.read_text()
            for new, old in renames.items():
                text = text.replace(f'"{new}"', f'"{old}"')
            if text != original:
                path.write_text(text)
    return len(renames)


def main() -> int:
    before = _ids(PROJECT)
    context = gx.get_context(mode="file", project_root_dir=str(PROJECT))
    source = context.data_sources.get("frames")
    for name, (build, result_format) in GATES.items():
        for store, getter in ((context.checkpoints, "checkpoints"), (context.validation_definitions, "vd"),
                              (context.suites, "suites")):
            try:
                store.delete(name)
            except Exception:  # noqa: BLE001 - absent is fine
                pass
        try:
            asset = source.get_asset(name)
        except LookupError:
            asset = source.add_dataframe_asset(name)
        try:
            batch = asset.get_batch_definition("day")
        except (KeyError, LookupError, ValueError):
            batch = asset.add_batch_definition_whole_dataframe("day")
        suite = gx.ExpectationSuite(name=name, meta={"owner": "nightly_topn", "gate": name})
        for expectation in build():
            suite.add_expectation(expectation)
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="docs")], result_format=result_format))
        print(f"{name}: {len(suite.expectations)} expectations")
    keep_ids(PROJECT, before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
