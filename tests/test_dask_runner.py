"""The top-N step on Beam's Dask runner: a real dask.distributed cluster (scheduler + 2 worker
processes on 127.0.0.1, started here with Dask's CLI) gives the DirectRunner's rows, each worker
process loads each model once, and both workers do work."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
from test_pipeline import DATE, PARAMS, read_version, root  # noqa: F401  (module fixture: one trained day)

from nightly_topn.pipelines.topn_pipeline import runner_args
from tools.local_dask import LocalDask

#: Small ranges, so the cluster gets many more partitions than workers.
RANGES = ["--range_size=60", "--batch_size=32", "--row_group_size=16"]


def worker_model_loads():
    """Run on each Dask worker: how often that process loaded each model directory."""
    from nightly_topn.pipelines import topn_pipeline

    return dict(topn_pipeline.MODEL_LOADS)


def test_dask_cluster_writes_the_direct_runners_rows_loading_each_model_once_per_worker(root):  # noqa: F811
    from distributed import Client

    from nightly_topn.jobs.topn import topn
    from nightly_topn.registry import model_info
    from nightly_topn.storage import Storage

    direct = topn(DATE, root=root, params=PARAMS, beam_args=RANGES)
    files_direct, rows_direct = read_version(Path(direct["path"]))
    assert len(files_direct["files"]) >= 6  # enough partitions for both workers, several each

    with LocalDask(workers=2) as cluster:
        flags = [*RANGES, "--runner=apache_beam.runners.dask.dask_runner.DaskRunner", f"--dask_client_address={cluster.address}", "--scoring_threads=1"]
        dask = topn(DATE, root=root, params=PARAMS, beam_args=flags)
        with Client(cluster.address) as client:
            cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
            loads = client.run(worker_model_loads)

    files_dask, rows_dask = read_version(Path(dask["path"]))
    assert files_dask["files"] == files_direct["files"]
    assert rows_dask.equals(rows_direct)
    assert "--runner=apache_beam.runners.dask.dask_runner.DaskRunner" in files_dask["beam_args"]

    info = model_info(Storage.at(root), DATE)
    models = root / "models" / f"dt={DATE}" / "final"
    expected = {str(models / info["model"]), str(models / "popularity")}
    assert len(loads) == 2
    for worker, counts in loads.items():
        assert set(counts) == expected, worker  # every worker scored some ranges ...
        assert set(counts.values()) == {1}, worker  # ... and read each model once, not once per partition


def test_a_dask_run_gets_one_partition_per_range_unless_the_deployment_says():
    dask = ["--runner=DaskRunner", "--dask_client_address=tcp://127.0.0.1:8786"]
    assert runner_args(dask, 17) == [*dask, "--dask_npartitions=17"]
    assert runner_args([*dask, "--dask_partition_size=4"], 17) == [*dask, "--dask_partition_size=4"]
    assert runner_args([*dask, "--dask_npartitions=3"], 17) == [*dask, "--dask_npartitions=3"]
    assert runner_args(["--runner=FnApiRunner"], 17) == ["--runner=FnApiRunner"]
    assert runner_args([], 17) == []



def test_dask_workers_read_and_write_an_s3_root_with_the_local_roots_rows(root, monkeypatch):  # noqa: F811
    """The root on an S3 API (moto's server on 127.0.0.1): the Dask workers read the history and
    the model from the store and write the part files to it; nothing goes through a local disk
    the launching job and the workers share."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nightly_topn.jobs.topn import topn
    from nightly_topn.storage import Storage
    from tools.local_s3 import LocalS3

    local = topn(DATE, root=root, params=PARAMS, beam_args=RANGES)
    files_local, rows_local = read_version(Path(local["path"]))
    with LocalS3() as s3:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)  # before the workers start: they inherit the environment
        client = s3.client()
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative.split("/")[0] in ("features", "models"):
                client.upload_file(str(path), s3.bucket, f"day/{relative}")
        with LocalDask(workers=2) as cluster:
            flags = [*RANGES, "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                     f"--dask_client_address={cluster.address}", "--scoring_threads=1"]
            remote = topn(DATE, root=s3.url("day"), params=PARAMS, beam_args=flags)
        assert remote["path"].startswith(s3.url("day/topn/"))
        version = Storage.at(s3.url("day")).inside(remote["path"])
        manifest = json.loads((version / "_manifest.json").read_text())
        rows = pa.concat_tables(pq.read_table(f"{version}/{name}") for name in manifest["files"])
        keys = s3.keys(f"day/{Storage.at(s3.url('day')).relative(version)}/")
    assert manifest["files"] == files_local["files"] and rows.equals(rows_local)
    assert not any(".tmp" in key or ".candidates-" in key for key in keys)  # no temp names; reports folded in
