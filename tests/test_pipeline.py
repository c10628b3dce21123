"""The Beam top-N pipeline and job on small generated data: layout, content, runners agree."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from nightly_topn.config import RunParams
from nightly_topn.features import Features, History
from nightly_topn.models import load_model
from nightly_topn.pipelines import topn_pipeline
from nightly_topn.storage import Storage

DATE = "2024-03-04"
# new_item_days=0: these tests compare the warm lists with model.recommend (new items: test_cold_start.py)
PARAMS = RunParams(train_window_days=4, iterations=3, factors=16, top_n=15, model="als", tuning_budget_seconds=0,
                   new_item_days=0)
SMALL = ["--range_size=400", "--batch_size=96", "--row_group_size=64"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A storage root with features and trained models of one day (real ingest → preprocess → train)."""
    from nightly_topn.jobs.ingest import ingest
    from nightly_topn.jobs.preprocess import preprocess
    from nightly_topn.jobs.train import train

    path = tmp_path_factory.mktemp("topn_root")
    ingest(DATE, root=path, source="generated", params=PARAMS)
    preprocess(DATE, root=path, params=PARAMS)
    train(DATE, root=path, params=PARAMS)
    return path


@pytest.fixture(scope="module")
def single(root):
    from nightly_topn.jobs.topn import topn

    return topn(DATE, root=root, params=PARAMS, beam_args=SMALL)


def read_version(path):
    manifest = json.loads((path / "_manifest.json").read_text())
    return manifest, pa.concat_tables(pq.read_table(path / f) for f in manifest["files"])


def test_history_equals_features_matrix(root):
    features_dir = Storage.at(root).partition("features", DATE)
    history = History(str(features_dir))[:]
    expected = Features.load(features_dir).matrix()
    assert history.shape == expected.shape and history.dtype == np.float32
    assert (history != expected).nnz == 0


def write_features(features_dir, target, interactions, row_group_size=None):
    """A features partition with ``features_dir``'s id maps and the given interactions table."""
    import shutil

    target.mkdir()
    for name in ("user_map.parquet", "item_map.parquet"):
        shutil.copy(features_dir / name, target / name)
    pq.write_table(interactions, target / "interactions.parquet", row_group_size=row_group_size)
    return target


def test_history_ranges_read_only_their_row_groups(root, tmp_path):
    features_dir = Storage.at(root).partition("features", DATE)
    expected = Features.load(features_dir).matrix()
    table = pq.read_table(features_dir / "interactions.parquet")
    small = write_features(features_dir, tmp_path / "small_groups", table, row_group_size=97)
    history = History(str(small))
    assert history._whole is None and history._source.file.metadata.num_row_groups > 10  # read range by range
    n_users = expected.shape[0]
    for lo, hi in [(0, 1), (0, 57), (13, 200), (n_users - 5, n_users), (0, n_users), (5, 5)]:
        rows = history[lo:hi]
        assert rows.shape == (hi - lo, expected.shape[1]) and rows.has_sorted_indices
        assert (rows != expected[lo:hi]).nnz == 0
    with pytest.raises(IndexError):
        history[0:10:2]


def test_history_of_an_unsorted_file_is_read_whole(root, tmp_path):
    features_dir = Storage.at(root).partition("features", DATE)
    expected = Features.load(features_dir).matrix()
    table = pq.read_table(features_dir / "interactions.parquet")
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    for name, rows_per_group in (("one_group", None), ("many_groups", 101)):
        target = write_features(features_dir, tmp_path / name, shuffled, row_group_size=rows_per_group)
        history = History(str(target))
        assert (history[10:90] != expected[10:90]).nnz == 0
        assert history._whole is not None
        assert (History(str(target))[:] != expected).nnz == 0


def test_job_writes_sorted_part_files_index_and_manifest(root, single):
    from pathlib import Path

    path = Path(single["path"])
    manifest, table = read_version(path)
    n_users = pq.read_metadata(Storage.at(root).partition("features", DATE) / "user_map.parquet").num_rows
    assert manifest["rows"] == table.num_rows == n_users == single["rows"]
    assert manifest["model_version"] and manifest["index"] == "_index.parquet"
    assert len(manifest["files"]) == -(-n_users // 400)
    ids = table.column("user_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # one row per user, sorted across files
    for name in manifest["files"]:
        meta = pq.read_metadata(path / name)
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert meta.row_group(0).sorting_columns == (pq.SortingColumn(0),)
        assert all(meta.row_group(g).num_rows <= 64 for g in range(meta.num_row_groups))
        file_ids = pq.read_table(path / name, columns=["user_id"]).column(0).to_pylist()
        assert file_ids == sorted(file_ids)
        stats = meta.row_group(0).column(0).statistics
        assert stats.min == file_ids[0]
    index = pq.read_table(path / "_index.parquet")
    assert sum(index.column("num_rows").to_pylist()) == n_users
    assert not list(path.glob(".tmp-*"))


def test_lists_match_the_model_recommend(root, single):
    from pathlib import Path

    _, table = read_version(Path(single["path"]))
    features_dir = Storage.at(root).partition("features", DATE)
    features = Features.load(features_dir)
    model_dir = Storage.at(root).partition("models", DATE) / "final"
    info = json.loads((model_dir.parent / "model_info.json").read_text())
    model = load_model(model_dir / info["model"])
    history = features.matrix()
    users = np.random.default_rng(0).choice(len(features.user_ids), 50, replace=False)
    ref_idx, ref_vals = model.recommend(users, history[users], PARAMS.top_n)
    for row, user in enumerate(users):
        got = table.slice(int(user), 1).to_pylist()[0]
        assert got["user_id"] == features.user_ids[user]
        keep = ref_idx[row] >= 0
        assert got["item_ids"] == list(features.item_ids[ref_idx[row][keep]])
        np.testing.assert_allclose(got["scores"], ref_vals[row][keep], rtol=1e-5)
        seen = set(features.item_ids[history[user].indices])
        assert not seen & set(got["item_ids"])
        assert got["source"] == "model" and got["model_version"] == info["model_version"]


def test_multi_process_runner_output_is_identical(root, single):
    from pathlib import Path

    from nightly_topn.jobs.topn import topn

    import dataclasses

    # the run's bounded knobs (trigger form / CLI), on the default local runner
    params = dataclasses.replace(PARAMS, beam_running_mode="multi_processing", beam_workers=2)
    multi = topn(DATE, root=root, params=params, beam_args=SMALL)
    assert {"--direct_running_mode=multi_processing", "--direct_num_workers=2"} <= set(
        json.loads((Path(multi["path"]) / "_manifest.json").read_text())["beam_args"])
    files_a, a = read_version(Path(single["path"]))
    files_b, b = read_version(Path(multi["path"]))
    assert files_a["files"] == files_b["files"]
    assert a.equals(b)


def test_fold_in_users_fallback_users_and_short_lists(root, tmp_path):
    import scipy.sparse as sp

    store = Storage.at(root)
    features_dir = store.partition("features", DATE)
    final = store.partition("models", DATE) / "final"
    score = topn_pipeline.ScoreUserRange(str(features_dir), str(final / "als"), str(final / "popularity"), 15, 32, 1)
    score.setup()
    score.model.known = score.model.known.copy()
    score.model.known[10:20] = False  # not trained on, but with history: the model folds them in
    score.model.known[30:35] = False
    lil = score.history[:].tolil()
    for row in range(30, 35):  # no history at all: only the fallback can score them
        lil.rows[row], lil.data[row] = [], []
    score.history = sp.csr_matrix(lil)
    start, end, items, scores, known, arm = next(score.process((0, 40)))
    assert arm is None  # no A/B experiment: every user is the champion's
    assert known[:30].all() and not known[30:35].any() and known[35:].all()
    fold_idx, _ = score.model.recommend(np.arange(10, 20), score.history[10:20], 15)
    assert np.array_equal(items[10:20], fold_idx)
    trained_idx, _ = score.model.recommend(np.arange(0, 10), score.history[0:10], 15)
    assert np.array_equal(items[0:10], trained_idx)
    pop_idx, _ = score.fallback.recommend(np.arange(30, 35), score.history[30:35], 15)
    assert np.array_equal(items[30:35], pop_idx)
    items[0, 5:] = -1  # a user with only 5 unseen items left
    write = topn_pipeline.WriteRangeParquet(str(features_dir), str(tmp_path), DATE, "v1", row_group_size=16)
    write.setup()
    name, rows = next(write.process((start, end, items, scores, known)))
    table = pq.read_table(tmp_path / name)
    assert rows == 40 and table.num_rows == 40 and pq.read_metadata(tmp_path / name).num_row_groups == 3
    assert len(table.column("item_ids")[0].as_py()) == 5 and len(table.column("scores")[0].as_py()) == 5
    assert table.column("source").to_pylist()[29:36] == ["model"] + ["fallback"] * 5 + ["model"]


def test_threads_per_worker_splits_cores_between_local_processes(monkeypatch):
    monkeypatch.setattr("nightly_topn.scoring.available_cores", lambda: 4)
    opts = PipelineOptions
    assert topn_pipeline.threads_per_worker(opts([])) == 4
    assert topn_pipeline.threads_per_worker(opts(["--direct_running_mode=multi_processing",
                                                  "--direct_num_workers=2"])) == 2
    assert topn_pipeline.threads_per_worker(opts(["--direct_running_mode=multi_processing",
                                                  "--direct_num_workers=8"])) == 1
    assert topn_pipeline.threads_per_worker(opts(["--runner=DataflowRunner"])) == 0  # worker decides
    assert topn_pipeline.threads_per_worker(opts([]), requested=3) == 3


def test_user_ranges_cover_every_user_once():
    ranges = topn_pipeline.user_ranges(1001, 250)
    assert ranges[0] == (0, 250) and ranges[-1] == (1000, 1001)
    assert sum(hi - lo for lo, hi in ranges) == 1001


def test_remote_model_dirs_are_copied_locally(root, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    from nightly_topn.models import load_model

    final = Storage.at(root).partition("models", DATE) / "final" / "popularity"
    assert topn_pipeline.local_copy(str(final)) == str(final)
    opened = []

    def fake_open(path):  # stands in for gs:// / s3:// (no cloud filesystem installed here)
        opened.append(path)
        return open(path.replace("fake://bucket/pop", str(final)), "rb")

    monkeypatch.setattr(FileSystems, "open", staticmethod(fake_open))
    monkeypatch.setattr(FileSystems, "join", staticmethod(lambda a, b: f"{a}/{b}"))
    local = topn_pipeline.local_copy("fake://bucket/pop")
    assert sorted(opened) == ["fake://bucket/pop/model.json", "fake://bucket/pop/model.npz"]
    assert (load_model(local).item_scores == load_model(final).item_scores).all()


def test_deployment_and_run_beam_flags_reach_the_pipeline(root, monkeypatch):
    """$NIGHTLY_TOPN_BEAM_ARGS (the deployment's runner) + flags given by code + the run's bounded
    knobs, later ones winning: how a DAG run is pointed at another runner without code changes."""
    import dataclasses
    from pathlib import Path

    from nightly_topn import config
    from nightly_topn.jobs.topn import topn

    monkeypatch.setenv(config.BEAM_ARGS_ENV, "--direct_running_mode=multi_threading --direct_num_workers=2 --range_size=999")
    assert config.deployment_beam_args("--range_size=250", ["--row_group_size=64"]) == [
        "--direct_running_mode=multi_threading", "--direct_num_workers=2", "--range_size=999", "--range_size=250",
        "--row_group_size=64"]
    params = dataclasses.replace(PARAMS, beam_workers=1)
    result = topn(DATE, root=root, params=params, beam_args=["--range_size=250", "--row_group_size=64"])
    manifest, table = read_version(Path(result["path"]))
    assert manifest["beam_args"][0] == "--runner=FnApiRunner"
    assert manifest["beam_args"][-1] == "--direct_num_workers=1"  # the run's knob comes last
    assert "--direct_running_mode=multi_threading" in manifest["beam_args"]
    assert len(manifest["files"]) == -(-table.num_rows // 250)  # the code's flag beat the deployment's
    assert all(pq.read_metadata(Path(result["path"]) / f).row_group(0).num_rows <= 64 for f in manifest["files"])


@pytest.mark.parametrize("flag", ["--output=/tmp/elsewhere", "--model=/tmp/any-model", "--features /x",
                                  "--top_n=100000", "--logical-date=2020-01-01"])
def test_no_flag_may_replace_a_path_or_identity_the_job_sets(root, monkeypatch, flag):
    from nightly_topn import config
    from nightly_topn.errors import ConfigError
    from nightly_topn.jobs.topn import topn

    name = flag[2:].split("=")[0].split()[0].replace("-", "_")
    with pytest.raises(ConfigError, match=f"Beam flag --{name} is set by the top-N job itself"):
        topn(DATE, root=root, params=PARAMS, beam_args=flag.split())
    monkeypatch.setenv(config.BEAM_ARGS_ENV, flag)
    with pytest.raises(ConfigError, match=f"--{name}"):
        topn(DATE, root=root, params=PARAMS)
    assert not list(Storage.at(root).partition("topn", DATE).glob(".staging-*"))


def test_run_knobs_are_bounded_by_the_machine_and_the_deployments_runner(root, monkeypatch):
    import dataclasses

    from nightly_topn import config
    from nightly_topn.errors import ConfigError
    from nightly_topn.jobs.topn import topn

    monkeypatch.setenv(config.MAX_BEAM_WORKERS_ENV, "2")
    with pytest.raises(ConfigError, match="beam_workers=3 is above this worker's limit of 2"):
        topn(DATE, root=root, params=dataclasses.replace(PARAMS, beam_workers=3))
    with pytest.raises(ValueError, match="beam_workers"):
        dataclasses.replace(PARAMS, beam_workers=65)  # above the form's own bound
    monkeypatch.setenv(config.BEAM_ARGS_ENV, "--runner=FlinkRunner --flink_master=localhost:8081")
    with pytest.raises(ConfigError, match="apply to a local runner only; .* runs on FlinkRunner"):
        topn(DATE, root=root, params=dataclasses.replace(PARAMS, beam_running_mode="multi_processing"))


def test_the_default_runner_downloads_nothing(root, monkeypatch):
    """Beam's DirectRunner first tries to fetch the Prism binary from the internet; the default
    runner of the top-N step must never try (nor start Prism)."""
    import urllib.request
    from pathlib import Path

    from apache_beam.runners.portability import prism_runner

    from nightly_topn.jobs.topn import topn

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)
    monkeypatch.setattr(prism_runner.PrismJobServer, "local_bin", refuse)
    monkeypatch.setattr(prism_runner, "urlopen", refuse)
    result = topn(DATE, root=root, params=PARAMS, beam_args=SMALL)
    assert attempts == []
    assert read_version(Path(result["path"]))[1].num_rows == result["rows"]
