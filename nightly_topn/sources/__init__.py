"""Where interaction logs come from: the embedded generator, MovieLens files, a landing folder.

Every source answers the same questions for the ingest job: which day does its data
start, what are the events of day D (as the ``schemas.EVENTS`` contract), what user/item
attributes does it know, and which candidate rules are in force (``rules``, optional).
``open_source(spec)`` turns a spec string into a source.
"""
from __future__ import annotations

import datetime as dt
from typing import Protocol

import pyarrow as pa

from nightly_topn.errors import ConfigError


class Source(Protocol):
    name: str

    def first_date(self) -> dt.date | None:
        """The first day with data (None: unbounded, e.g. the generator)."""

    def events_for(self, date: dt.date) -> pa.Table:
        """Events whose ``event_time`` falls on ``date`` (UTC); may be empty."""

    def users(self, date: dt.date) -> pa.Table | None:
        """User attributes known on ``date``, or None."""

    def items(self, date: dt.date) -> pa.Table | None:
        """Item attributes known on ``date``, or None."""

    def rules(self, date: dt.date) -> pa.Table | None:
        """Candidate rules (``schemas.RULES``) in force on ``date``, or None."""


def open_source(spec: str) -> Source:
    """``generated[:SEED | :key=value,...]`` | ``movielens:PATH`` | ``landing:PATH``.

    e.g. ``generated:seed=3,base_users=300,base_items=120`` for a small universe.
    """
    kind, _, arg = spec.partition(":")
    if kind == "generated":
        from nightly_topn.sources.generated import GeneratedSource

        if arg and "=" not in arg:
            return GeneratedSource(seed=int(arg))
        options = dict(pair.split("=", 1) for pair in arg.split(",") if pair)
        try:
            kwargs = {k: (float(v) if "." in v else int(v)) for k, v in options.items()}
            return GeneratedSource(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad generated source spec {spec!r}: {exc}") from exc
    if kind == "movielens":
        from nightly_topn.sources.movielens import load_movielens
        from nightly_topn.sources.replay import ReplaySource

        return ReplaySource(*load_movielens(arg), name=f"movielens:{arg}")
    if kind == "landing":
        from nightly_topn.sources.landing import LandingSource

        return LandingSource(arg)
    raise ConfigError(f"unknown source spec {spec!r}: expected generated, movielens:PATH or landing:PATH")
