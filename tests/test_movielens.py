"""Real data: MovieLens 100K replayed day by day, one date run end to end."""
import json

import pyarrow.parquet as pq
from conftest import run_day

from nightly_topn.storage import Storage

LAST_DAY = "1998-04-22"


def test_movielens_replay_day_end_to_end_als_beats_popularity(ml100k, tmp_path):
    root = tmp_path / "data"
    results = run_day(LAST_DAY, root, source=f"movielens:{ml100k}", train_window_days=400, top_n=10)
    assert len(results["ingest"]["landed"]) > 150  # every day of the replay up to the date, one partition each
    store = Storage.at(root)
    report = json.loads((store.partition("reports", LAST_DAY) / "evaluation.json").read_text())
    als, pop = report["metrics"]["als"]["ndcg"], report["metrics"]["popularity"]["ndcg"]
    print(f"MovieLens 100K {LAST_DAY}: NDCG@10 ALS={als:.4f} popularity={pop:.4f}")
    assert als > pop
    assert store.published()["date"] == LAST_DAY
    lists = pq.read_table(store.root / store.published()["path"])
    assert lists.num_rows == 943
