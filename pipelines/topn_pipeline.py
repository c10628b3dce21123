"""Beam pipeline: precompute the top-N items of every user and write them to Parquet.

Elements are contiguous ranges of dense user indices. Since indices follow the sorted user
ids, each range becomes one Parquet part file covering a disjoint, sorted id range — which is
what makes point lookups cheap (file and row-group statistics skip to one user). Part files
are named by their range, so a retried bundle rewrites the same file (idempotent), and each is
written to a temporary name and renamed (on an object store straight to its name: an upload
appears whole or not at all), so no reader sees a partial file.

Per element, the work is vectorised end to end: ``TopNScorer`` scores the range in batches
(one GEMM per batch into a preallocated buffer, seen items masked by index, exact top-N by
block-max thresholding), and the writer turns the resulting ``users × N`` arrays into one
Arrow record batch (list columns built from offsets, item ids mapped with one ``take``)
handed to ``pq.ParquetWriter``: no Python per user or per item. Memory per worker = one
range's history rows + model + one ``batch × items`` float32 buffer per scoring thread,
independent of the total number of users and interactions (beyond the model's factors).

New items (``features/dt=D/new_items.parquet``, when preprocess wrote one) are scored from their
warm neighbours (``cold_start``): index ``n_warm + j`` in the lists, mapped to their ids by the
writer; their weights and who has seen them are ``n_cold × m`` and ``n_cold × few`` sparse.
Candidate rules (``features/dt=D/rules.parquet``, ``nightly_topn.rules``) are masked in the same
buffers before the cut, so lists stay full; ``--diversity_strength`` > 0 re-ranks each user's
candidates by MMR over the items' categories (``nightly_topn.diversity``). ``--candidates``
(``exact``/``ann``/``auto``) chooses exact scoring or faiss candidates (``nightly_topn.ann``); the
index is built and calibrated once per worker process (``ModelCache.item_index``), and each
scorer's method (for ANN: nprobe, calibration recall) is left as ``.candidates-ROLE.json`` in the
output directory for the job's manifest.

Run it directly (any runner; unknown flags go to ``PipelineOptions``, see docs/runners.md)::

    python -m nightly_topn.pipelines.topn_pipeline --features DIR --model DIR --fallback DIR \\
        --output DIR --logical_date 2024-03-01 --model_version V [--runner ... beam flags]
"""
from __future__ import annotations

import argparse
import collections
import logging
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

log = logging.getLogger(__name__)

#: Rows per Parquet row group: a lookup decodes one row group, so keep it small (see benchmarks).
DEFAULT_ROW_GROUP = 128
#: Part-file encoding. Item ids are plain-encoded (a per-row-group dictionary of ~12K distinct
#: ids costs a hash per value to write and saves nothing after zstd) and scores use
#: BYTE_STREAM_SPLIT, which zstd compresses well. Measured at 8192 users × top-100: ~1.7x faster
#: writes, ~1.8x faster row-group reads and 35% smaller files than the default dictionary encoding.
#: Statistics only for ``user_id``, the one column a reader seeks on (the list columns' min/max
#: would never be used; skipping them makes writes ~10% faster).
PARQUET_OPTIONS = dict(
    compression="zstd",
    write_statistics=["user_id"],
    use_dictionary=["source", "model_version", "logical_date"],
    use_byte_stream_split=["scores.list.element"],
)


def local_copy(model_dir: str) -> str:
    """``model_dir`` itself when local; a remote one (``gs://``, ``s3://``, ``hdfs://``...) is
    copied once per worker into a temporary directory, since models load from a local path."""
    if "://" not in model_dir:
        return model_dir
    import tempfile

    from apache_beam.io.filesystems import FileSystems

    from nightly_topn.models.base import ARRAYS_FILE, META_FILE

    local = tempfile.mkdtemp(prefix="topn-model-")
    for name in (META_FILE, ARRAYS_FILE):
        with FileSystems.open(FileSystems.join(model_dir, name)) as src, open(f"{local}/{name}", "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    return local


#: How often this process loaded each model directory (``ModelCache``): once per worker process
#: whatever the runner; tests/test_dask_runner.py reads it on each Dask worker.
MODEL_LOADS: collections.Counter = collections.Counter()


class ModelCache:
    """The models one worker process has loaded, by directory, shared by the process's DoFns.

    Most runners set a DoFn up once and reuse it for many bundles; Beam's Dask runner sets it up
    for every partition. The cache is held through one Beam ``Shared`` handle per pipeline run,
    so a model is read once per process on any runner, and the DoFn instances of a process's
    threads share one read-only copy. (Scorers, history readers and buffers stay per DoFn.)
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._models = {}

    def load(self, model_dir: str):
        with self._lock:  # a second thread waits for the model rather than reading it again
            if model_dir not in self._models:
                from nightly_topn.models import load_model

                started = time.perf_counter()
                self._models[model_dir] = load_model(local_copy(model_dir))
                MODEL_LOADS[model_dir] += 1
                log.info("loaded %s in %.2f s", model_dir, time.perf_counter() - started)
            return self._models[model_dir]

    def item_index(self, model_dir: str, item_factors, k: int, users, threads: int):
        """The ``ann.ItemIndex`` of a loaded model for top-``k`` lists, built once per process."""
        with self._lock:
            key = ("ann", model_dir, int(k))
            if key not in self._models:
                from nightly_topn.ann import ItemIndex

                self._models[key] = ItemIndex(item_factors, k, users=users, threads=threads)
            return self._models[key]


def use_filesystem_options(flags: list[str]) -> None:
    """Give Beam's ``FileSystems`` this pipeline's options in a worker process: its S3 and GCS
    filesystems are configured from them (``--s3_endpoint_url``..., else the standard ``AWS_*`` /
    Google variables), and a runner that runs DoFns in plain worker processes (Dask) does not
    set them there, so an ``s3://`` output would fail with "Must provide one of client or options"."""
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(PipelineOptions(flags))


def temporary_name(final: str, name: str) -> str:
    """Where to write ``final`` first: ``name`` beside it, renamed once complete, on a filesystem;
    ``final`` itself on an object store, where an upload appears whole or not at all and a
    "rename" would be a second copy of every byte."""
    from apache_beam.io.filesystems import FileSystems

    if "://" in final and not final.startswith("file://"):
        return final
    return FileSystems.join(FileSystems.split(final)[0], name)


class ScoreUserRange(beam.DoFn):
    """Score a range of users in batches with the model (popularity for users it cannot score)."""

    def __init__(self, features_dir: str, model_dir: str, fallback_dir: str, top_n: int, batch_size: int,
                 threads: int = 0, diversity_strength: float = 0.0, challenger_dir: str = "", experiment: str = "",
                 challenger_share: float = 0.0, candidates: str = "exact", report_dir: str = "",
                 pipeline_flags: tuple[str, ...] = ()):
        self.features_dir, self.model_dir, self.fallback_dir = features_dir, model_dir, fallback_dir
        self.pipeline_flags = list(pipeline_flags)
        self.models = Shared()  # -> ModelCache, one per worker process and pipeline run
        self.top_n, self.batch_size, self.threads = top_n, batch_size, threads
        self.diversity_strength = diversity_strength
        self.candidates, self.report_dir = candidates, report_dir
        # A/B: users hashed into the challenger's arm (nightly_topn.experiments) are scored by it
        self.challenger_dir, self.experiment, self.challenger_share = challenger_dir, experiment, challenger_share

    def setup(self):
        # Heavy state once per worker, not per element; history is read per range (``History``).
        from nightly_topn import scoring

        use_filesystem_options(self.pipeline_flags)
        from nightly_topn.features import History, read_new_items
        from nightly_topn.rules import CandidateRules

        self.threads = scoring.configure_threads(self.threads or None)
        self.history = History(self.features_dir)
        self.new_items = read_new_items(self.features_dir)
        cold = None if self.new_items is None else self.new_items.weights
        n_users, n_warm = self.history.shape
        n_items = n_warm + (0 if cold is None else cold.shape[1])
        rules = CandidateRules.read(self.features_dir, n_users, n_items)
        diversity = None
        if self.diversity_strength > 0:  # MMR over the items' category vectors (nightly_topn.diversity)
            from nightly_topn.diversity import CategorySimilarity
            from nightly_topn.features import read_item_categories

            categories = read_item_categories(self.features_dir)
            if categories is None:
                raise ValueError(f"diversity_strength={self.diversity_strength} needs item categories; "
                                 f"{self.features_dir} has none (land items.* with a categories column)")
            diversity = (CategorySimilarity(categories, n_items), self.diversity_strength)
        models = self.models.acquire(ModelCache)
        self.model, self.fallback = models.load(self.model_dir), models.load(self.fallback_dir)
        # Factor models: ``threads`` batches in flight, each on one torch thread (no intra-op
        # barriers, which stall on a busy machine); other models get BLAS threads instead.
        import functools

        self.scorer = scoring.TopNScorer(self.model, self.top_n, batch_size=self.batch_size, parallel=self.threads,
                                         cold_weights=cold, rules=rules, diversity=diversity,
                                         candidates=self.candidates,
                                         index_factory=functools.partial(models.item_index, self.model_dir))
        if self.scorer.fused and self.threads > 1:
            import torch

            torch.set_num_threads(1)
        self.fallback_scorer = scoring.TopNScorer(self.fallback, self.top_n, batch_size=self.batch_size,
                                                  cold_weights=cold, rules=rules, diversity=diversity)
        self.challenger = self.user_ids = None
        if self.challenger_dir:
            from nightly_topn.features import USER_MAP, InteractionsFile

            self.challenger = models.load(self.challenger_dir)
            self.challenger_scorer = scoring.TopNScorer(self.challenger, self.top_n, batch_size=self.batch_size,
                                                        parallel=self.threads, cold_weights=cold, rules=rules,
                                                        diversity=diversity, candidates=self.candidates,
                                                        index_factory=functools.partial(models.item_index,
                                                                                        self.challenger_dir))
            source = InteractionsFile(self.features_dir)
            try:
                self.user_ids = source.ids(USER_MAP)
            finally:
                source.close()
        self.report()

    def report(self):
        """Leave each scorer's candidate method in ``report_dir`` (``.candidates-ROLE.json``, written to a
        temporary name and renamed): the job reads them into the manifest. Deterministic content, so
        every worker process writes the same file."""
        if not self.report_dir:
            return
        import json
        import os

        from apache_beam.io.filesystems import FileSystems

        roles = {"champion": self.scorer}
        if self.challenger is not None:
            roles["challenger"] = self.challenger_scorer
        for role, scorer in roles.items():
            final = FileSystems.join(self.report_dir, f".candidates-{role}.json")
            tmp = temporary_name(final, f".tmp-candidates-{role}-{os.getpid()}-{id(self)}.json")
            with FileSystems.create(tmp) as handle:
                handle.write(json.dumps({"requested": self.candidates, **scorer.describe()}, sort_keys=True).encode())
            if tmp != final:
                FileSystems.rename([tmp], [final])

    def process(self, user_range):
        import numpy as np

        start, end = user_range
        users = np.arange(start, end)
        items = np.full((len(users), self.top_n), -1, dtype=np.int32)
        scores = np.full((len(users), self.top_n), -np.inf, dtype=np.float32)
        history = self.history[start:end]
        if self.new_items is not None:  # + the new items' columns, so seen ones are masked
            history = self.new_items.history(history, users)
        known = np.asarray(self.model.has_user(users, history), dtype=bool)  # incl. users folded in from history
        arm = groups = None
        if self.challenger is None:
            groups = ((np.flatnonzero(known), self.scorer), (np.flatnonzero(~known), self.fallback_scorer))
        else:
            from nightly_topn.experiments import in_challenger

            arm = in_challenger(self.user_ids.slice(start, end - start).to_pylist(), self.experiment,
                                self.challenger_share)
            known[arm] = np.asarray(self.challenger.has_user(users[arm], history[np.flatnonzero(arm)]), dtype=bool)
            groups = ((np.flatnonzero(known & ~arm), self.scorer), (np.flatnonzero(known & arm), self.challenger_scorer),
                      (np.flatnonzero(~known), self.fallback_scorer))
        for rows, scorer in groups:
            if not len(rows):
                continue
            contiguous = rows[-1] - rows[0] + 1 == len(rows)
            rows_history = history[rows[0] : rows[-1] + 1] if contiguous else history[rows]
            idx, val = scorer.recommend(users[rows], rows_history)
            items[rows, : idx.shape[1]], scores[rows, : idx.shape[1]] = idx, val
        yield start, end, items, scores, known, arm

    def teardown(self):
        close = getattr(getattr(self, "history", None), "close", None)
        if close is not None:
            close()


class WriteRangeParquet(beam.DoFn):
    """Write one scored range as ``part-START-END.parquet`` (temp name, then rename).

    One row per user (sorted by user id), zstd, row groups of ``row_group_size`` users with
    min/max statistics, ``sorting_columns`` declared, so a reader can go straight to one user.
    """

    def __init__(self, features_dir: str, output_dir: str, logical_date: str, model_version: str,
                 row_group_size: int = DEFAULT_ROW_GROUP, challenger_version: str = "",
                 pipeline_flags: tuple[str, ...] = ()):
        self.features_dir, self.output_dir = features_dir, output_dir
        self.pipeline_flags = list(pipeline_flags)
        self.logical_date, self.model_version = logical_date, model_version
        self.row_group_size, self.challenger_version = row_group_size, challenger_version

    def setup(self):
        from nightly_topn.features import ITEM_MAP, USER_MAP, InteractionsFile

        use_filesystem_options(self.pipeline_flags)
        source = InteractionsFile(self.features_dir)
        try:
            self.user_ids, self.item_ids = source.ids(USER_MAP), source.ids(ITEM_MAP)
            new_items = source.new_items()
        finally:
            source.close()
        if new_items is not None:  # item index n_warm + j is new item j
            import pyarrow as pa

            self.item_ids = pa.concat_arrays([self.item_ids, new_items.ids])

    def to_batch(self, start, end, items, scores, known, arm=None):
        """The range as one Arrow record batch in the ``schemas.TOPN`` layout (vectorised); ``arm``:
        which users are in the A/B challenger's arm (None: everybody is the champion's)."""
        import datetime as dt

        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from nightly_topn import schemas
        from nightly_topn.experiments import CHALLENGER, CHAMPION

        n = end - start
        valid = items >= 0
        if valid.all():
            offsets = np.arange(0, items.size + 1, items.shape[1], dtype=np.int32)
            flat_items, flat_scores = items.reshape(-1), scores.reshape(-1)
        else:
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(valid.sum(axis=1), out=offsets[1:])
            flat_items, flat_scores = items[valid], scores[valid]
        offsets = pa.array(offsets)
        item_ids = self.item_ids.take(pa.array(flat_items))
        return pa.RecordBatch.from_arrays(
            [
                self.user_ids.slice(start, n),
                pa.ListArray.from_arrays(offsets, item_ids),
                pa.ListArray.from_arrays(offsets, pa.array(flat_scores, pa.float32())),
                pc.if_else(pa.array(known), "model", "fallback"),
                pa.repeat(pa.scalar(self.model_version, pa.string()), n) if arm is None else
                pc.if_else(pa.array(arm), self.challenger_version, self.model_version),
                pa.repeat(pa.scalar(dt.date.fromisoformat(self.logical_date), pa.date32()), n),
                pa.repeat(pa.scalar(CHAMPION, pa.string()), n) if arm is None else
                pc.if_else(pa.array(arm), CHALLENGER, CHAMPION),
            ],
            schema=schemas.TOPN,
        )

    def process(self, scored):
        import pyarrow as pa
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        start, end = scored[0], scored[1]
        batch = self.to_batch(*scored)
        name = f"part-{start:010d}-{end:010d}.parquet"
        final = FileSystems.join(self.output_dir, name)
        tmp = temporary_name(final, f".tmp-{name}")
        with FileSystems.create(tmp) as handle:
            with pq.ParquetWriter(handle, batch.schema, sorting_columns=[pq.SortingColumn(0)],
                                  **PARQUET_OPTIONS) as writer:
                writer.write_batch(batch, row_group_size=self.row_group_size)
        if tmp != final:
            FileSystems.rename([tmp], [final])
        pa.default_memory_pool().release_unused()  # keep the worker's footprint flat across ranges
        yield name, end - start


def user_ranges(n_users: int, range_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + range_size, n_users)) for lo in range(0, n_users, range_size)]


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name (``--runner`` may be a name, a dotted path or an instance)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return (runner if isinstance(runner, str) else type(runner).__name__).rsplit(".", 1)[-1]


def runner_args(pipeline_args: list[str], n_ranges: int) -> list[str]:
    """``pipeline_args`` plus what a runner needs to spread the ranges over its workers.

    Beam's Dask runner turns ``Create`` into a Dask bag of 128 elements per partition and skips
    ``Reshuffle``, and a partition is its unit of work: the ranges would all run in one task, on
    one worker. Unless the deployment partitions the bag itself, each range gets its own partition.
    """
    if runner_name(PipelineOptions(pipeline_args)) == "DaskRunner" and not any(
            arg.startswith(("--dask_npartitions", "--dask_partition_size")) for arg in pipeline_args):
        return [*pipeline_args, f"--dask_npartitions={max(1, n_ranges)}"]
    return list(pipeline_args)


def threads_per_worker(options: PipelineOptions, requested: int = 0) -> int:
    """Scoring threads per worker process so that workers × threads ≤ cores (0 = decide here).

    Local multi-process runs split this machine's cores between ``--direct_num_workers``
    processes; a single-process run uses them all; on a cluster the worker's own cores are not
    known here, so 0 is passed through and each worker uses its cores (set ``--scoring_threads``
    to ``cores / SDK processes per VM`` when a runner starts several per machine).
    """
    if requested:
        return requested
    from apache_beam.options.pipeline_options import DirectOptions

    from nightly_topn.scoring import available_cores

    from nightly_topn.config import LOCAL_RUNNERS

    if runner_name(options) not in LOCAL_RUNNERS:
        return 0
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        workers = direct.direct_num_workers or available_cores()
        if direct.direct_running_mode == "multi_processing":
            return max(1, available_cores() // workers)
    return available_cores()


def build_parser() -> argparse.ArgumentParser:
    from nightly_topn.scoring import CANDIDATE_METHODS, DEFAULT_BATCH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="features partition (interactions + id maps)")
    parser.add_argument("--model", required=True, help="directory of the model to score with")
    parser.add_argument("--fallback", required=True, help="directory of the fallback (popularity) model")
    parser.add_argument("--output", required=True, help="directory to write part files into (must exist)")
    parser.add_argument("--logical_date", required=True)
    parser.add_argument("--model_version", required=True)
    parser.add_argument("--top_n", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH, help="users scored per matrix product")
    parser.add_argument("--range_size", type=int, default=8192, help="users per element / part file")
    parser.add_argument("--row_group_size", type=int, default=DEFAULT_ROW_GROUP, help="users per Parquet row group")
    parser.add_argument("--diversity_strength", type=float, default=0.0,
                        help="MMR strength (0 = plain ranking), over the features' item categories")
    parser.add_argument("--candidates", choices=CANDIDATE_METHODS, default="auto",
                        help="exact scoring, ANN candidates (faiss, re-scored exactly), or auto (ANN on large catalogues)")
    parser.add_argument("--challenger", default="", help="A/B: directory of the challenger model (empty = no experiment)")
    parser.add_argument("--challenger_version", default="", help="A/B: the challenger's model version")
    parser.add_argument("--challenger_share", type=float, default=0.0, help="A/B: share of users in its arm")
    parser.add_argument("--experiment", default="", help="A/B: experiment name (salt of the user assignment)")
    parser.add_argument("--scoring_threads", type=int, default=0,
                        help="torch/BLAS threads per worker process (0 = cores / local worker processes)")
    return parser


def run(argv=None) -> None:
    """Run the pipeline to completion; part files appear in ``--output``."""
    known_args, pipeline_args = build_parser().parse_known_args(argv)
    from nightly_topn.features import InteractionsFile

    source = InteractionsFile(known_args.features)
    n_users = source.shape[0]
    source.close()
    ranges = user_ranges(n_users, known_args.range_size)
    flags = runner_args(pipeline_args, len(ranges))
    options = PipelineOptions(flags)
    threads = threads_per_worker(options, known_args.scoring_threads)
    pipeline = beam.Pipeline(options=options)
    (
        pipeline
        | "UserRanges" >> beam.Create(ranges)
        | "Spread" >> beam.Reshuffle()
        | "Score" >> beam.ParDo(ScoreUserRange(known_args.features, known_args.model, known_args.fallback,
                                              known_args.top_n, known_args.batch_size, threads,
                                              known_args.diversity_strength, known_args.challenger,
                                              known_args.experiment, known_args.challenger_share,
                                              known_args.candidates, known_args.output, flags))
        | "Write" >> beam.ParDo(WriteRangeParquet(known_args.features, known_args.output,
                                                  known_args.logical_date, known_args.model_version,
                                                  known_args.row_group_size, known_args.challenger_version, flags))
    )
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the Dask runner's connection to the scheduler: not
        if client is not None:  # left open (and reconnecting) in the task's process after the run
            client.close()


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
