"""Candidate rules: which items a user may be shown, resolved once per run and applied while scoring.

Rules land as ``rules.*`` (``schemas.RULES``) beside the item attributes, whose availability
window (``available_from``/``available_until``) is a rule too; the raw gate validates both.
Preprocess resolves them for the run date into the features partition's index space
(``resolve`` -> ``rules.parquet``, ``schemas.SCORING_RULES``), and ``CandidateRules`` turns that
table into masks the scoring kernel applies to each batch's score buffer *before* the top-N cut,
so a list stays full when rules remove items (peers filter after the cut and return short lists):

* global exclusions: one ``index_fill`` of the excluded columns per batch;
* per-user blocks: a CSR matrix applied by flat index, like the user's history;
* segment allow-lists: the columns outside a segment's list, filled for that segment's rows
  (one step per segment present in the batch).

No Python runs per user or per item. An item's window is judged at the end of the run date
(midnight UTC after it), when the lists go on the air.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from nightly_topn import schemas

RULES_FILE = "rules.parquet"


def on_air(date: dt.date) -> pd.Timestamp:
    """When the lists of ``date`` go on the air: the midnight (UTC) after it."""
    return pd.Timestamp(date + dt.timedelta(days=1), tz="UTC")


def unavailable(items: pa.Table | None, date: dt.date) -> pd.Series:
    """Ids of the items whose availability window does not hold ``on_air(date)``."""
    if items is None or "available_from" not in items.column_names:
        return pd.Series([], dtype="object")
    frame = items.select(["item_id", "available_from", "available_until"]).to_pandas()
    when = on_air(date)
    out = (frame["available_from"].notna() & (frame["available_from"] > when)) | \
          (frame["available_until"].notna() & (frame["available_until"] <= when))
    return frame.loc[out, "item_id"]


def resolve(rules: pa.Table | None, items: pa.Table | None, users: pa.Table | None, user_ids: np.ndarray,
            catalogue_ids: np.ndarray, date: dt.date) -> tuple[pa.Table, dict] | None:
    """The landed rules of ``date`` in index space (``schemas.SCORING_RULES``) and counts of what
    they do; None when there are none. ``catalogue_ids``: warm item ids then new ones, in index
    order; ``user_ids``: the user map's ids."""
    frame = (rules.to_pandas() if rules is not None and rules.num_rows
             else pd.DataFrame({c: pd.Series([], dtype="object") for c in schemas.RULES.names}))
    gone = unavailable(items, date)
    if frame.empty and gone.empty:
        return None
    item_index = pd.Index(catalogue_ids).get_indexer(frame["item_id"])
    user_index = pd.Index(user_ids).get_indexer(frame["user_id"].fillna(""))
    kind = frame["rule"].to_numpy()
    known_item = item_index >= 0
    exclude = known_item & (kind == "exclude")
    block = known_item & (kind == "block") & (user_index >= 0)
    allow = known_item & (kind == "allow")
    window = pd.Index(catalogue_ids).get_indexer(gone)
    excluded = np.union1d(item_index[exclude], window[window >= 0]).astype(np.int32)
    segments = sorted(set(frame.loc[kind == "allow", "segment"]))
    members = pd.DataFrame({"user_id": [], "segment": []})
    if segments and users is not None and "segment" in users.column_names:
        members = users.select(["user_id", "segment"]).to_pandas()
        members = members[members["segment"].isin(segments)].drop_duplicates("user_id")
    member_index = pd.Index(user_ids).get_indexer(members["user_id"])
    members = members[member_index >= 0].assign(user_index=member_index[member_index >= 0])

    def part(rule, user=None, item=None, segment=None, n=0):
        return pd.DataFrame({"rule": [rule] * n,
                             "user_index": pd.array(user if user is not None else [None] * n, dtype="Int32"),
                             "item_index": pd.array(item if item is not None else [None] * n, dtype="Int32"),
                             "segment": segment if segment is not None else [None] * n})

    table = pd.concat([
        part("exclude", item=excluded, n=len(excluded)),
        part("block", user=user_index[block], item=item_index[block], n=int(block.sum())),
        part("allow", item=item_index[allow], segment=frame.loc[allow, "segment"].to_numpy(), n=int(allow.sum())),
        part("member", user=members["user_index"].to_numpy(), segment=members["segment"].to_numpy(),
             n=len(members)),
    ], ignore_index=True).drop_duplicates()
    stats = {
        "excluded_items": int(len(excluded)),
        "excluded_by_window": int((window >= 0).sum()),
        "blocks": int(table["rule"].eq("block").sum()),
        "segments": {s: {"allowed_items": int(((kind == "allow") & known_item & (frame["segment"] == s)).sum()),
                         "users": int((members["segment"] == s).sum())} for s in segments},
        "rules_landed": int(len(frame)),
        "rules_naming_unknown_ids": int((~known_item | ((kind == "block") & (user_index < 0))).sum()),
    }
    return pa.Table.from_pandas(table, schema=schemas.SCORING_RULES, preserve_index=False), stats


class CandidateRules:
    """Masks of one features partition's rules over ``n_users × n_items`` (warm + new items)."""

    def __init__(self, table: pa.Table, n_users: int, n_items: int):
        frame = table.to_pandas()
        self.n_users, self.n_items = n_users, n_items
        kind = frame["rule"].to_numpy()
        items, users = frame["item_index"], frame["user_index"]
        self.excluded = np.unique(items[kind == "exclude"].to_numpy(dtype=np.int64))
        block = kind == "block"
        self.blocks = sp.csr_matrix((np.ones(int(block.sum()), dtype=np.float32),
                                     (users[block].to_numpy(dtype=np.int64), items[block].to_numpy(dtype=np.int64))),
                                    shape=(n_users, n_items))
        self.blocks.sum_duplicates()
        allow = frame[kind == "allow"]
        self.segments = sorted(allow["segment"].unique())
        # per segment: the columns outside its allow-list (what its users must not be shown)
        self.outside = []
        for name in self.segments:
            inside = np.zeros(n_items, dtype=bool)
            inside[allow.loc[allow["segment"] == name, "item_index"].to_numpy(dtype=np.int64)] = True
            self.outside.append(np.flatnonzero(~inside))
        self.segment_of = np.full(n_users, -1, dtype=np.int32)
        member = frame[kind == "member"]
        position = {name: k for k, name in enumerate(self.segments)}
        self.segment_of[member["user_index"].to_numpy(dtype=np.int64)] = member["segment"].map(position).to_numpy()

    @classmethod
    def read(cls, features_dir, n_users: int, n_items: int) -> "CandidateRules | None":
        """The partition's rules (local path or any ``pyarrow.fs`` URI), None when it has none."""
        from nightly_topn.features import read_optional

        table = read_optional(features_dir, RULES_FILE)
        return None if table is None else cls(table, n_users, n_items)

    def mask(self, scores: np.ndarray, users: np.ndarray, lo: int = 0) -> None:
        """Set to ``-inf`` (in place) what the rules forbid in ``scores``: rows ``users``, columns
        ``lo .. lo + scores.shape[1]`` of the catalogue (the warm buffer, or the new items' block)."""
        import torch

        rows, width = scores.shape
        if not rows or not width:
            return
        hi = lo + width
        view = torch.from_numpy(scores)  # shares memory: the fills below write into ``scores``
        cols = self.excluded[(self.excluded >= lo) & (self.excluded < hi)] - lo
        if len(cols):
            view.index_fill_(1, torch.from_numpy(cols), float("-inf"))
        flat = [self._flat(self.blocks[users], lo, hi, width)]
        if self.segments:
            segment = self.segment_of[users]
            for k in np.unique(segment[segment >= 0]):
                outside = self.outside[k]
                outside = outside[(outside >= lo) & (outside < hi)] - lo
                members = np.flatnonzero(segment == k)
                flat.append((members[:, None] * width + outside[None, :]).reshape(-1))
        flat = np.concatenate(flat)
        if len(flat):
            view.view(-1).index_fill_(0, torch.from_numpy(flat), float("-inf"))

    def forbids(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Which entries of a ``users × k`` array of item indices the rules forbid (-1: padding, never)."""
        users = np.broadcast_to(np.asarray(users)[:, None], items.shape)
        valid = items >= 0
        safe = np.where(valid, items, 0)
        hit = np.isin(safe, self.excluded)
        hit |= np.asarray(self.blocks[users.reshape(-1), safe.reshape(-1)]).reshape(items.shape) > 0
        segment = self.segment_of[users]
        for k, outside in enumerate(self.outside):
            rows = segment == k
            hit[rows] |= np.isin(safe[rows], outside)
        return hit & valid

    @staticmethod
    def _flat(rows: sp.csr_matrix, lo: int, hi: int, width: int) -> np.ndarray:
        """Flat indices into a ``len(rows) × width`` array of the entries of ``rows`` in ``[lo, hi)``."""
        if not rows.nnz:
            return np.empty(0, dtype=np.int64)
        which = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr))
        keep = (rows.indices >= lo) & (rows.indices < hi)
        return which[keep] * width + rows.indices[keep] - lo
