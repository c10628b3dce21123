import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from nightly_topn import schemas
from nightly_topn.errors import BadInput
from nightly_topn.sources import open_source
from nightly_topn.sources.generated import GeneratedSource
from nightly_topn.sources.landing import LandingSource, MissingPartitionError
from nightly_topn.sources.movielens import load_movielens
from nightly_topn.sources.replay import ReplaySource

DAY = dt.date(2024, 3, 1)


def test_generator_is_deterministic_and_follows_the_contract():
    a, b = GeneratedSource(seed=5).events_for(DAY), GeneratedSource(seed=5).events_for(DAY)
    assert a.equals(b)
    assert a.schema.equals(schemas.EVENTS, check_metadata=False)
    assert not GeneratedSource(seed=6).events_for(DAY).equals(a)
    assert set(pc.cast(a.column("event_time"), pa.date32()).to_pylist()) == {DAY}
    assert set(pc.unique(a.column("event_type")).to_pylist()) <= set(schemas.EVENT_TYPE_CONFIDENCE)


def test_generator_has_skewed_popularity_and_arrivals():
    src = GeneratedSource()
    events = pa.concat_tables([src.events_for(DAY + dt.timedelta(days=d)) for d in range(7)])
    counts = np.sort(pc.value_counts(events.column("item_id")).field("counts").to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()  # top 10% of items: >30% of events
    day1 = set(src.events_for(DAY).column("user_id").to_pylist())
    newcomers = {f"u{i:06d}" for i in range(src.n_users(DAY - dt.timedelta(days=1)), src.n_users(DAY))}
    assert newcomers and newcomers <= day1  # today's arrivals are active today
    assert src.n_items(DAY + dt.timedelta(days=1)) > src.n_items(DAY)
    assert src.items(DAY).column("categories").null_count == 0


def test_movielens_100k_loader(ml100k):
    events, users, items = load_movielens(ml100k)
    assert events.num_rows == 100_000
    assert pc.count_distinct(events.column("user_id")).as_py() == 943
    assert pc.count_distinct(events.column("item_id")).as_py() == 1682
    assert users.num_rows == 943 and items.num_rows == 1682
    assert "Animation" in items.column("categories")[0].as_py()  # Toy Story
    replay = ReplaySource(events, users, items)
    assert replay.first_date() == dt.date(1997, 9, 20) and replay.last_date() == dt.date(1998, 4, 22)
    day = replay.events_for(dt.date(1997, 12, 1))
    assert day.num_rows > 0
    assert set(pc.cast(day.column("event_time"), pa.date32()).to_pylist()) == {dt.date(1997, 12, 1)}


def test_movielens_1m_and_csv_formats(tmp_path):
    one_m = tmp_path / "ml-1m"
    one_m.mkdir()
    (one_m / "ratings.dat").write_text("1::10::5::978300760\n2::20::3::978302109\n")
    (one_m / "movies.dat").write_bytes("10::Caf\xe9 (1995)::Comedy|Drama\n20::B (1996)::Horror\n".encode("latin-1"))
    (one_m / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    events, users, items = load_movielens(one_m)
    assert events.column("weight").to_pylist() == [5.0, 3.0]
    assert items.column("categories").to_pylist()[0] == ["Comedy", "Drama"]
    assert items.column("title").to_pylist()[0] == "Café (1995)"
    latest = tmp_path / "ml-latest"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,964982703\n")
    (latest / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n")
    events, users, items = load_movielens(latest)
    assert events.column("weight").to_pylist() == [4.5] and users is None
    with pytest.raises(FileNotFoundError, match="no MovieLens ratings file"):
        load_movielens(tmp_path)


def test_landing_folder_reads_reordered_extra_columns_and_flags_missing_days(tmp_path):
    day = tmp_path / "dt=2024-03-01"
    day.mkdir()
    (day / "drop.csv").write_text(
        "event_time,extra,item_id,user_id,weight,event_type\n"
        "2024-03-01T10:00:00Z,x,i1,u1,1.0,click\n2024-03-01T11:00:00Z,y,i2,u1,4,rating\n"
    )
    src = open_source(f"landing:{tmp_path}")
    events = src.events_for(dt.date(2024, 3, 1))
    assert events.schema.names == schemas.EVENTS.names and events.num_rows == 2
    assert events.column("user_id").to_pylist() == ["u1", "u1"]
    with pytest.raises(MissingPartitionError, match="dt=2024-03-02"):
        src.events_for(dt.date(2024, 3, 2))


def test_flat_landing_folder_is_replayed_by_day(tmp_path):
    (tmp_path / "history.csv").write_text(
        "user_id,item_id,event_type,weight,event_time\n"
        "u1,i1,view,1,2024-03-01T10:00:00Z\nu2,i1,view,1,2024-03-02T10:00:00Z\n"
    )
    src = LandingSource(tmp_path)
    assert src.first_date() == dt.date(2024, 3, 1)
    assert src.events_for(dt.date(2024, 3, 2)).column("user_id").to_pylist() == ["u2"]


def test_unknown_source_spec_is_refused():
    with pytest.raises(ValueError, match="unknown source spec"):
        open_source("kafka:topic")


def test_flat_landing_folder_reads_gzip_csv_and_refuses_rows_without_a_time(tmp_path):
    import gzip

    header = "user_id,item_id,event_type,weight,event_time\n"
    (tmp_path / "history.csv.gz").write_bytes(gzip.compress(
        (header + "u1,i1,view,1,1709287200\nu2,i1,view,1,1709373600\n").encode()))  # epoch seconds
    (tmp_path / "naive.csv").write_text(header + "u4,i3,view,1,2024-03-02 11:00:00\n")
    (tmp_path / "README.md").write_text("a flat folder may hold other files: they are not read\n")
    src = LandingSource(tmp_path)
    assert src.first_date() == dt.date(2024, 3, 1)  # 1709287200 = 2024-03-01T10:00:00Z
    assert src.events_for(dt.date(2024, 3, 2)).column("event_time").to_pylist() == [
        dt.datetime(2024, 3, 2, 10, tzinfo=dt.timezone.utc), dt.datetime(2024, 3, 2, 11, tzinfo=dt.timezone.utc)]
    (tmp_path / "more.csv").write_text(header + "u3,i2,view,1,\n")
    with pytest.raises(BadInput, match=r"1 of 4 event\(s\) have no event_time, so they cannot be replayed"):
        LandingSource(tmp_path).first_date()


def test_badly_named_day_folder_is_refused_by_name(tmp_path):
    (tmp_path / "dt=2024-03-01").mkdir()
    (tmp_path / "dt=2024-3-2").mkdir()
    with pytest.raises(BadInput, match=r"dt=2024-3-2: day folders are named dt=YYYY-MM-DD"):
        LandingSource(tmp_path).first_date()
