"""The embedded default data: a deterministic generator of realistic daily interaction logs.

Users have latent tastes, items belong to categories and have skewed (log-normal) popularity,
new users and items arrive every day, and events happen at plausible times of day. The same
seed and date always give the same rows, so runs and backfills are reproducible without any
files shipped in the repo.
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache

import numpy as np
import pyarrow as pa

from nightly_topn import schemas

EPOCH = dt.date(2024, 1, 1)
CATEGORIES = [
    "action", "comedy", "drama", "documentary", "kids", "music",
    "news", "sports", "sci-fi", "romance", "horror", "cooking",
]
EVENT_TYPES = np.array(["view", "click", "play", "purchase", "rating"])
EVENT_TYPE_P = np.array([0.45, 0.25, 0.18, 0.05, 0.07])
_BLOCK = 1024
_DIM = 8


class GeneratedSource:
    name = "generated"

    def __init__(
        self,
        seed: int = 7,
        *,
        base_users: int = 3000,
        users_per_day: int = 30,
        base_items: int = 600,
        items_per_day: int = 4,
        active_share: float = 0.12,
        events_per_active_user: float = 6.0,
        exclude_share: float = 0.0,
        blocks_per_user: int = 0,
        segment_share: float = 0.0,
    ):
        self.seed = seed
        # Candidate rules (``rules``), all off by default: the share of the catalogue excluded, items
        # each user blocks, and the share of the catalogue outside segment "r1"'s allow-list.
        self.exclude_share, self.blocks_per_user, self.segment_share = exclude_share, int(blocks_per_user), segment_share
        self.base_users, self.users_per_day = base_users, users_per_day
        self.base_items, self.items_per_day = base_items, items_per_day
        self.active_share = active_share
        self.events_per_active_user = events_per_active_user

    # -- the universe ------------------------------------------------------------------------
    def n_users(self, date: dt.date) -> int:
        return self.base_users + max(0, (date - EPOCH).days + 1) * self.users_per_day

    def n_items(self, date: dt.date) -> int:
        return self.base_items + max(0, (date - EPOCH).days + 1) * self.items_per_day

    def _block(self, kind: int, block: int) -> dict[str, np.ndarray]:
        return _universe_block(self.seed, kind, block)

    def _rows(self, kind: int, n: int) -> dict[str, np.ndarray]:
        blocks = [self._block(kind, b) for b in range((n + _BLOCK - 1) // _BLOCK)]
        rows = {key: np.concatenate([b[key] for b in blocks])[:n] for key in blocks[0]}
        if kind == 1:  # items past the base catalog arrive ``items_per_day`` a day from EPOCH
            index = np.arange(n)
            rows["arrival_day"] = np.where(index < self.base_items, -1, (index - self.base_items) // self.items_per_day)
        return rows

    def first_date(self) -> dt.date | None:
        return None

    # -- one day -----------------------------------------------------------------------------
    def events_for(self, date: dt.date) -> pa.Table:
        day = (date - EPOCH).days
        rng = np.random.default_rng([self.seed, 2, day + 100_000])
        nu, ni = self.n_users(date), self.n_items(date)
        users, items = self._rows(0, nu), self._rows(1, ni)
        previous_nu = self.n_users(date - dt.timedelta(days=1))

        # Who is active: today's arrivals all, plus a share of the others weighted by activity.
        activity = users["activity"][:previous_nu]
        k = min(previous_nu, int(self.active_share * previous_nu))
        chosen = rng.choice(previous_nu, size=k, replace=False, p=activity / activity.sum())
        active = np.concatenate([np.sort(chosen), np.arange(previous_nu, nu)])

        # Item appeal: taste match + popularity + a freshness boost for recently added items.
        age_days = day - items["arrival_day"]
        fresh = np.where((age_days >= 0) & (age_days < 7), 1.0, 0.0)
        logits = users["taste"][active] @ items["factor"].T * 1.6 + items["popularity"] + fresh
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)

        counts = 1 + rng.poisson(self.events_per_active_user * users["activity"][active] / 1.5)
        cdf = np.cumsum(probs, axis=1)
        row = np.repeat(np.arange(len(active)), counts)
        draws = rng.random(len(row))
        item = np.minimum((cdf[row] < draws[:, None]).sum(axis=1), ni - 1)
        etype = rng.choice(len(EVENT_TYPES), size=len(row), p=EVENT_TYPE_P)
        affinity = (users["taste"][active[row]] * items["factor"][item]).sum(axis=1)
        stars = np.clip(np.round(3.2 + 1.2 * affinity + rng.normal(0, 0.7, len(row))), 1, 5)
        weight = np.where(EVENT_TYPES[etype] == "rating", stars, np.where(EVENT_TYPES[etype] == "purchase", rng.integers(1, 3, len(row)), 1.0))

        # Times of day: a bimodal daily rhythm (lunch and evening peaks), in UTC.
        hour = np.where(rng.random(len(row)) < 0.35, rng.normal(12.5, 2.0, len(row)), rng.normal(20.0, 2.5, len(row)))
        seconds = np.clip((hour * 3600).astype(np.int64), 0, 86_399)
        start_us = (date - dt.date(1970, 1, 1)).days * 86_400_000_000
        times = start_us + seconds * 1_000_000 + rng.integers(0, 1_000_000, len(row))
        order = np.argsort(times, kind="stable")

        return pa.table(
            {
                "user_id": pa.array(_ids("u", active[row][order], 6)),
                "item_id": pa.array(_ids("i", item[order], 5)),
                "event_type": pa.array(EVENT_TYPES[etype][order]),
                "weight": pa.array(weight[order].astype(np.float32)),
                "event_time": pa.array(times[order], pa.timestamp("us", tz="UTC")),
            },
            schema=schemas.EVENTS,
        )

    def users(self, date: dt.date) -> pa.Table:
        n = self.n_users(date)
        rows = self._rows(0, n)
        signup_day = np.maximum(0, np.arange(n) - self.base_users) // self.users_per_day
        return pa.table(
            {
                "user_id": pa.array(_ids("u", np.arange(n), 6)),
                "age": pa.array(rows["age"].astype(np.int16)),
                "gender": pa.array(np.where(rows["gender"], "F", "M")),
                "occupation": pa.array(np.array(["student", "engineer", "artist", "other"])[rows["occupation"]]),
                "signup_time": pa.array(
                    [dt.datetime.combine(EPOCH + dt.timedelta(days=int(d)), dt.time(), dt.timezone.utc) for d in signup_day],
                    pa.timestamp("us", tz="UTC"),
                ),
                "segment": pa.array(self._segments(n) if self.segment_share else pa.nulls(n, pa.string()),
                                    pa.string()),
            },
            schema=schemas.USERS,
        )

    def items(self, date: dt.date) -> pa.Table:
        n = self.n_items(date)
        rows = self._rows(1, n)
        return pa.table(
            {
                "item_id": pa.array(_ids("i", np.arange(n), 5)),
                "title": pa.array([f"{CATEGORIES[c].title()} #{i}" for i, c in enumerate(rows["category"])]),
                "categories": pa.array([[CATEGORIES[c]] for c in rows["category"]], pa.list_(pa.string())),
                "release_time": pa.array(
                    [dt.datetime.combine(EPOCH + dt.timedelta(days=int(max(d, 0))), dt.time(), dt.timezone.utc) for d in rows["arrival_day"]],
                    pa.timestamp("us", tz="UTC"),
                ),
                "available_from": pa.nulls(n, pa.timestamp("us", tz="UTC")),
                "available_until": pa.nulls(n, pa.timestamp("us", tz="UTC")),
            },
            schema=schemas.ITEMS,
        )

    def _segments(self, n: int) -> np.ndarray:
        """Users alternate between regions "r0" (no allow-list) and "r1" (allow-list)."""
        return np.where(np.arange(n) % 2, "r1", "r0")

    def rules(self, date: dt.date) -> pa.Table | None:
        """``schemas.RULES`` known on ``date`` (None when every rule knob is off): deterministic
        draws over the catalogue and the users of that day."""
        if not (self.exclude_share or self.blocks_per_user or self.segment_share):
            return None
        rng = np.random.default_rng([self.seed, 5, (date - EPOCH).days + 100_000])
        ni, nu = self.n_items(date), self.n_users(date)
        rule, item, user, segment = [], [], [], []

        def add(kind, items, users=None, seg=None):
            rule.extend([kind] * len(items))
            item.extend(_ids("i", items, 5))
            user.extend(_ids("u", users, 6) if users is not None else [None] * len(items))
            segment.extend([seg] * len(items))

        if self.exclude_share:
            add("exclude", np.sort(rng.choice(ni, int(round(self.exclude_share * ni)), replace=False)))
        if self.blocks_per_user:
            users = np.repeat(np.arange(nu), self.blocks_per_user)
            add("block", rng.integers(0, ni, len(users)), users)
        if self.segment_share:
            outside = rng.random(ni) < self.segment_share
            add("allow", np.flatnonzero(~outside), seg="r1")
        return pa.table({"rule": rule, "item_id": item, "user_id": pa.array(user, pa.string()),
                         "segment": pa.array(segment, pa.string()),
                         "reason": pa.nulls(len(rule), pa.string())}, schema=schemas.RULES)


@lru_cache(maxsize=4096)
def _universe_block(seed: int, kind: int, block: int) -> dict[str, np.ndarray]:
    """Attributes of users (kind 0) or items (kind 1) ``block*1024 .. +1024``; cached, deterministic."""
    rng = np.random.default_rng([seed, kind, block])
    if kind == 0:
        home = rng.integers(0, len(CATEGORIES), _BLOCK)
        taste = _centroids(seed)[home] + rng.normal(0, 0.5, (_BLOCK, _DIM))
        return {
            "taste": taste,
            "activity": rng.lognormal(0.0, 0.6, _BLOCK),
            "age": rng.integers(16, 70, _BLOCK),
            "gender": rng.random(_BLOCK) < 0.5,
            "occupation": rng.integers(0, 4, _BLOCK),
        }
    category = rng.integers(0, len(CATEGORIES), _BLOCK)
    return {
        "factor": _centroids(seed)[category] + rng.normal(0, 0.4, (_BLOCK, _DIM)),
        "category": category,
        "popularity": rng.normal(0.0, 1.1, _BLOCK),
    }


@lru_cache(maxsize=8)
def _centroids(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 9]).normal(0, 1.0, (len(CATEGORIES), _DIM)) / np.sqrt(_DIM) * 2


def _ids(prefix: str, index: np.ndarray, width: int) -> list[str]:
    return [f"{prefix}{i:0{width}d}" for i in index]
