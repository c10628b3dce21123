"""Beam pipeline: precompute the top-N items of every user and write them to Parquet.

Elements are contiguous ranges of dense user indices. Since indices follow the sorted user
ids, each range becomes one Parquet part file covering a disjoint, sorted id range — which is
what makes point lookups cheap (file and row-group statistics skip to one user). Part files
are named by their range, so a retried bundle rewrites the same file (idempotent), and each is
written to a temporary name and renamed, so no reader sees a partial file.

Run it directly (any runner; unknown flags go to ``PipelineOptions``)::

    python -m nightly_topn.pipelines.topn_pipeline --features DIR --model DIR --fallback DIR \\
        --output DIR --logical_date 2024-03-01 --model_version V [--runner ... beam flags]
"""
from __future__ import annotations

import argparse
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger(__name__)


class ScoreUserRange(beam.DoFn):
    """Score a range of users in batches with the model (popularity for users it cannot score)."""

    def __init__(self, features_dir: str, model_dir: str, fallback_dir: str, top_n: int, batch_size: int):
        self.features_dir, self.model_dir, self.fallback_dir = features_dir, model_dir, fallback_dir
        self.top_n, self.batch_size = top_n, batch_size

    def setup(self):
        # Heavy state once per worker, not per element.
        from nightly_topn.features import Features
        from nightly_topn.models import load_model

        features = Features.load(self.features_dir)
        self.history = features.matrix()
        self.user_ids, self.item_ids = features.user_ids, features.item_ids
        self.model = load_model(self.model_dir)
        self.fallback = load_model(self.fallback_dir)

    def process(self, user_range):
        import numpy as np

        start, end = user_range
        users = np.arange(start, end)
        items = np.empty((len(users), self.top_n), dtype=np.int32)
        scores = np.empty((len(users), self.top_n), dtype=np.float32)
        known = self.model.has_user(users)
        for rows, model in ((np.flatnonzero(known), self.model), (np.flatnonzero(~known), self.fallback)):
            for lo in range(0, len(rows), self.batch_size):
                chunk = rows[lo : lo + self.batch_size]
                idx, val = model.recommend(users[chunk], self.history[users[chunk]], self.top_n)
                items[chunk], scores[chunk] = idx, val
        yield start, end, items, scores, known


class WriteRangeParquet(beam.DoFn):
    """Write one scored range as ``part-START-END.parquet`` (temp name, then rename)."""

    def __init__(self, features_dir: str, output_dir: str, logical_date: str, model_version: str):
        self.features_dir, self.output_dir = features_dir, output_dir
        self.logical_date, self.model_version = logical_date, model_version

    def setup(self):
        import pyarrow.parquet as pq

        self.user_ids = pq.read_table(f"{self.features_dir}/user_map.parquet").column("user_id")
        self.item_ids = pq.read_table(f"{self.features_dir}/item_map.parquet").column("item_id")

    def process(self, scored):
        import datetime as dt

        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        from nightly_topn import schemas

        start, end, items, scores, known = scored
        valid = items >= 0
        lengths = valid.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat_items = self.item_ids.take(pa.array(items[valid]))
        n = end - start
        table = pa.Table.from_arrays(
            [
                self.user_ids.slice(start, n),
                pa.ListArray.from_arrays(pa.array(offsets), flat_items.combine_chunks()),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid], pa.float32())),
                pa.array(np.where(known, "model", "fallback")),
                pa.array([self.model_version] * n, pa.string()),
                pa.array([dt.date.fromisoformat(self.logical_date)] * n, pa.date32()),
            ],
            schema=schemas.TOPN,
        )
        name = f"part-{start:010d}-{end:010d}.parquet"
        final = FileSystems.join(self.output_dir, name)
        tmp = FileSystems.join(self.output_dir, f".tmp-{name}")
        with FileSystems.create(tmp) as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=1024)
        FileSystems.rename([tmp], [final])
        yield name, n


def user_ranges(n_users: int, range_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + range_size, n_users)) for lo in range(0, n_users, range_size)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="features partition (interactions + id maps)")
    parser.add_argument("--model", required=True, help="directory of the model to score with")
    parser.add_argument("--fallback", required=True, help="directory of the fallback (popularity) model")
    parser.add_argument("--output", required=True, help="directory to write part files into (must exist)")
    parser.add_argument("--logical_date", required=True)
    parser.add_argument("--model_version", required=True)
    parser.add_argument("--top_n", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=1024, help="users scored per matrix product")
    parser.add_argument("--range_size", type=int, default=8192, help="users per element / part file")
    return parser


def run(argv=None) -> None:
    """Run the pipeline to completion; part files appear in ``--output``."""
    known_args, pipeline_args = build_parser().parse_known_args(argv)
    import pyarrow.parquet as pq

    n_users = pq.read_metadata(f"{known_args.features}/user_map.parquet").num_rows
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        (
            pipeline
            | "UserRanges" >> beam.Create(user_ranges(n_users, known_args.range_size))
            | "Spread" >> beam.Reshuffle()
            | "Score" >> beam.ParDo(ScoreUserRange(known_args.features, known_args.model, known_args.fallback,
                                                  known_args.top_n, known_args.batch_size))
            | "Write" >> beam.ParDo(WriteRangeParquet(known_args.features, known_args.output,
                                                      known_args.logical_date, known_args.model_version))
        )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
