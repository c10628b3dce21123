"""Loaders for the MovieLens formats: 100K (``u.data``), 1M (``.dat``), 20M/25M/latest (``.csv``).

Each returns ``(events, users, items)`` in the project's contract; ratings become events of
type ``rating`` whose weight is the star value.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from nightly_topn import schemas

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def load_movielens(path: str | Path) -> tuple[pa.Table, pa.Table | None, pa.Table | None]:
    """Detect the MovieLens variant in ``path`` and load it."""
    path = Path(path)
    if (path / "u.data").is_file():
        return _load_100k(path)
    if (path / "ratings.dat").is_file():
        return _load_1m(path)
    if (path / "ratings.csv").is_file():
        return _load_csv(path)
    raise FileNotFoundError(f"{path}: no MovieLens ratings file (u.data, ratings.dat or ratings.csv)")


def _events(frame: pd.DataFrame, source: str) -> pa.Table:
    table = pa.table(
        {
            "user_id": frame["user"].astype("int64").astype(str).to_numpy(),
            "item_id": frame["item"].astype("int64").astype(str).to_numpy(),
            "event_type": pa.array(["rating"] * len(frame)),
            "weight": frame["rating"].astype("float32").to_numpy(),
            "event_time": pa.array(frame["ts"].astype("int64").to_numpy() * 1_000_000, pa.timestamp("us", tz="UTC")),
        }
    )
    return schemas.conform(table, schemas.EVENTS, source=source)


def _items(ids, titles, categories, source) -> pa.Table:
    table = pa.table(
        {
            "item_id": pa.array([str(int(i)) for i in ids]),
            "title": pa.array(list(titles), pa.string()),
            "categories": pa.array(list(categories), pa.list_(pa.string())),
        }
    )
    return schemas.conform(table, schemas.ITEMS, source=source)


def _users(frame: pd.DataFrame, source: str) -> pa.Table:
    table = pa.table(
        {
            "user_id": frame["user"].astype("int64").astype(str).to_numpy(),
            "age": frame["age"].astype("int16").to_numpy(),
            "gender": frame["gender"].astype(str).to_numpy(),
            "occupation": frame["occupation"].astype(str).to_numpy(),
        }
    )
    return schemas.conform(table, schemas.USERS, source=source)


def _load_100k(path: Path):
    data = pd.read_csv(path / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    events = _events(data, str(path / "u.data"))
    items = users = None
    if (path / "u.item").is_file():
        raw = pd.read_csv(path / "u.item", sep="|", header=None, encoding="latin-1")
        flags = raw.iloc[:, 5:24].to_numpy()
        cats = [[g for g, f in zip(ML100K_GENRES, row) if f] for row in flags]
        items = _items(raw[0], raw[1], cats, str(path / "u.item"))
    if (path / "u.user").is_file():
        raw = pd.read_csv(path / "u.user", sep="|", names=["user", "age", "gender", "occupation", "zip"])
        users = _users(raw, str(path / "u.user"))
    return events, users, items


def _load_1m(path: Path):
    data = pd.read_csv(path / "ratings.dat", sep="::", engine="python", names=["user", "item", "rating", "ts"])
    events = _events(data, str(path / "ratings.dat"))
    items = users = None
    if (path / "movies.dat").is_file():
        raw = pd.read_csv(path / "movies.dat", sep="::", engine="python", names=["item", "title", "genres"], encoding="latin-1")
        items = _items(raw["item"], raw["title"], raw["genres"].str.split("|"), str(path / "movies.dat"))
    if (path / "users.dat").is_file():
        raw = pd.read_csv(path / "users.dat", sep="::", engine="python", names=["user", "gender", "age", "occupation", "zip"])
        users = _users(raw, str(path / "users.dat"))
    return events, users, items


def _load_csv(path: Path):
    data = pd.read_csv(path / "ratings.csv").rename(
        columns={"userId": "user", "movieId": "item", "timestamp": "ts"}
    )
    events = _events(data, str(path / "ratings.csv"))
    items = None
    if (path / "movies.csv").is_file():
        raw = pd.read_csv(path / "movies.csv")
        genres = raw["genres"].where(raw["genres"] != "(no genres listed)", "").str.split("|")
        items = _items(raw["movieId"], raw["title"], [[g for g in gs if g] for gs in genres], str(path / "movies.csv"))
    return events, None, items
