"""The top-N step on Beam's Dask runner: a real dask.distributed cluster (scheduler + 2 worker
processes on 127.0.0.1, started here with Dask's CLI) gives the DirectRunner's rows, each worker
process loads each model once, and both workers do work."""
from __future__ import annotations

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

