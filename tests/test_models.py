"""Every model behind one interface: fit, batch recommend with history masking, fold-in of new
users, save/load without pickle, deterministic for a seed; EASE primal = dual, and its memory guard."""
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from nightly_topn.models import EASE, MODELS, load_model
from nightly_topn.sources.generated import GeneratedSource

FAST = {  # small configurations so the whole file runs in seconds
    "popularity": {},
    "als": {"factors": 8, "iterations": 5, "regularization": 0.5},
    "bpr": {"factors": 8, "iterations": 20},
    "itemknn": {"neighbours": 20},
    "ease": {"l2": 50.0},
    "puresvd": {"factors": 8},
    "multvae": {"hidden": 32, "latent": 8, "epochs": 3},
    "sequence": {"dim": 16, "max_len": 10, "epochs": 2},
    "horizon": {"hidden": 16, "epochs": 3, "cutoffs": 4, "stride_days": 1, "horizon_days": 2},
}


@pytest.fixture(scope="module")
def data():
    """A few days of the generator: ``users × items`` interactions and the latest event time per pair."""
    src = GeneratedSource(seed=5, base_users=150, users_per_day=3, base_items=60, items_per_day=1)
    rows = []
    for d in range(6):
        t = src.events_for(dt.date(2024, 1, 1) + dt.timedelta(days=d))
        rows.append((t.column("user_id").to_numpy(zero_copy_only=False), t.column("item_id").to_numpy(zero_copy_only=False),
                     t.column("event_time").cast("int64").to_numpy() / 1e6))
    user_ids, users = np.unique(np.concatenate([r[0] for r in rows]), return_inverse=True)
    item_ids, items = np.unique(np.concatenate([r[1] for r in rows]), return_inverse=True)
    times = np.concatenate([r[2] for r in rows])
    shape = (len(user_ids), len(item_ids))
    X = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
    X.data[:] = 1.0
    latest = {}
    for u, i, t in zip(users, items, times):
        latest[(u, i)] = max(t, latest.get((u, i), t))
    keys = np.array(list(latest))
    T = sp.csr_matrix((np.array(list(latest.values())), (keys[:, 0], keys[:, 1])), shape=shape)
    return X, T


def test_registry_covers_the_issue_models():
    from nightly_topn.config import MODEL_CHOICES

    assert {"popularity", "als", "bpr", "itemknn", "ease", "puresvd", "sequence", "horizon"} <= set(MODELS)
    assert set(MODEL_CHOICES) == {"auto", *MODELS}  # the form offers exactly the registry


@pytest.mark.parametrize("name", sorted(FAST))
def test_recommend_contract_masking_roundtrip_and_determinism(name, data, tmp_path):
    X, T = data
    model = MODELS[name](**FAST[name]).fit(X, T)
    users = np.arange(0, X.shape[0], 3)
    idx, scores = model.recommend(users, X[users], 10)
    assert idx.dtype == np.int32 and scores.dtype == np.float32 and idx.shape == (len(users), 10)
    for row, u in enumerate(users):
        valid = idx[row][idx[row] >= 0]
        assert not np.isin(valid, X[u].indices).any(), "seen items must be masked"
        assert len(set(valid)) == len(valid)
        assert np.all(np.diff(scores[row][idx[row] >= 0]) <= 1e-6), "best first"
    # save/load: npz with allow_pickle=False + JSON; same lists after loading
    model.save(tmp_path / name)
    meta = json.loads((tmp_path / name / "model.json").read_text())
    assert meta["name"] == name
    with np.load(tmp_path / name / "model.npz", allow_pickle=False) as arrays:
        assert all(arrays[k].dtype != object for k in arrays.files)
    loaded = load_model(tmp_path / name)
    idx2, scores2 = loaded.recommend(users, X[users], 10)
    assert np.array_equal(idx, idx2)
    np.testing.assert_allclose(scores, scores2, rtol=1e-4, atol=1e-5)
    # same data + same params = same lists
    again = MODELS[name](**FAST[name]).fit(X, T)
    assert np.array_equal(again.recommend(users, X[users], 10)[0], idx)
    assert model.describe()["name"] == name and model.describe()["params"] == model.params


def test_exhausted_catalogue_gives_minus_one(data):
    X, _ = data
    model = MODELS["popularity"]().fit(X)
    everything = sp.csr_matrix(np.ones((1, X.shape[1]), dtype=np.float32))
    idx, _ = model.recommend(np.array([0]), everything, 5)
    assert (idx == -1).all()


@pytest.mark.parametrize("name", ["als", "bpr", "itemknn", "ease", "puresvd", "multvae", "sequence", "horizon"])
def test_new_user_is_folded_in_from_history(name, data):
    """A user absent from training but with history gets personal scores, close to a trained twin's."""
    X, T = data
    counts = np.diff(X.indptr)
    twin = int(np.argmax(counts))  # the most active user
    train = X.tolil()
    train[twin, :] = 0
    train = train.tocsr()
    train.eliminate_zeros()
    model = MODELS[name](**FAST[name]).fit(train, T)
    history = X[[twin]]
    assert not model.has_user(np.array([twin]))[0]
    assert model.has_user(np.array([twin]), history)[0]
    assert not model.has_user(np.array([twin]), sp.csr_matrix((1, X.shape[1])))[0]
    folded = model.score(np.array([twin]), history)[0]
    pop = MODELS["popularity"]().fit(train).score(np.array([twin]), history)[0]
    assert np.isfinite(folded).all()
    assert not np.allclose(np.argsort(-folded)[:10], np.argsort(-pop)[:10]), "fold-in must not just be popularity"
    # personal: a different history gives different scores
    other = X[[int(np.argsort(counts)[-2])]]
    assert not np.allclose(model.score(np.array([twin]), other)[0], folded)


def test_als_fold_in_matches_trained_user(data):
    X, _ = data
    model = MODELS["als"](factors=8, iterations=10, regularization=0.5).fit(X)
    users = np.flatnonzero(np.diff(X.indptr) >= 10)[:20]
    trained = model.score(users, X[users])
    model.known = np.zeros_like(model.known)  # forget them: score by fold-in from history
    folded = model.score(users, X[users])
    overlap = np.mean([len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10 for a, b in zip(trained, folded)])
    assert overlap > 0.7


def test_ease_dual_equals_primal_and_refuses_huge_catalogues(data):
    X, _ = data
    wide = X[:40]  # fewer users than items -> dual form
    dual = EASE(l2=20.0).fit(wide)
    assert dual.dual
    G = (wide.T @ wide).toarray() + 20.0 * np.eye(wide.shape[1])
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    expected = (X[40:60] @ B)
    got = dual.score(np.arange(40, 60), X[40:60])
    seen = X[40:60].toarray() > 0
    np.testing.assert_allclose(got[~seen], np.asarray(expected)[~seen], rtol=1e-3, atol=1e-4)
    primal = EASE(l2=20.0).fit(X)
    assert not primal.dual
    with pytest.raises(MemoryError, match="max_dense_gb"):
        EASE(l2=20.0, max_dense_gb=1e-6).fit(X)


def test_sequence_model_uses_order(data):
    """Reversing every user's time order changes the sequence model's lists (it is not a bag model)."""
    X, T = data
    model = MODELS["sequence"](**FAST["sequence"]).fit(X, T)
    flipped = T.copy()
    flipped.data = flipped.data.max() + 1 - flipped.data
    other = MODELS["sequence"](**FAST["sequence"]).fit(X, flipped)
    users = np.arange(0, X.shape[0], 2)
    assert not np.array_equal(model.recommend(users, X[users], 10)[0], other.recommend(users, X[users], 10)[0])


def test_horizon_model_learns_from_cutoffs_and_trend(data):
    """With times it trains on past cut-offs (future items as targets) and weighs recent history;
    without times it is a plain denoising autoencoder — the two must differ."""
    X, T = data
    timed = MODELS["horizon"](**FAST["horizon"]).fit(X, T)
    plain = MODELS["horizon"](**FAST["horizon"]).fit(X)
    assert timed.net.trend_now.gt(0).any() and not plain.net.trend_now.any()
    users = np.arange(0, X.shape[0], 2)
    assert not np.array_equal(timed.recommend(users, X[users], 10)[0], plain.recommend(users, X[users], 10)[0])
    # recency: trained users are scored from their time-weighted history, not the binary row
    row = timed.recency[int(np.argmax(np.diff(X.indptr)))]
    assert row.data.min() < row.data.max() <= 1.0


def test_importing_the_models_does_not_import_torch():
    """Airflow parses the DAGs and Beam pickles the DoFns: the torch networks are built on first use."""
    import subprocess
    import sys

    code = "import sys, nightly_topn.models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


@pytest.mark.parametrize("name, extra", [("multvae", {"ensemble": 2}), ("sequence", {}), ("horizon", {})])
def test_torch_models_save_the_state_dict_and_score_the_same_after_loading(name, extra, data, tmp_path, monkeypatch):
    """The npz holds each network's ``state_dict`` (``m0.<key>``, plain float arrays); the loaded
    model scores trained and folded-in users exactly as the fitted one, and in row blocks as in one."""
    from nightly_topn.models import base

    X, T = data
    model = MODELS[name](**FAST[name], **extra).fit(X, T)
    nets = model.members if name == "multvae" else [model.net]
    assert len(nets) == extra.get("ensemble", 1)
    model.save(tmp_path)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as arrays:
        state = {k: arrays[k] for k in arrays.files if k.startswith("m") and "." in k}
    assert set(state) == {f"m{m}.{key}" for m, net in enumerate(nets) for key in net.state_dict()}
    for m, net in enumerate(nets):
        for key, tensor in net.state_dict().items():
            np.testing.assert_array_equal(state[f"m{m}.{key}"], tensor.numpy())
    loaded = load_model(tmp_path)
    users = np.arange(X.shape[0] + 5)  # the last 5 were not trained on: folded in from a history row
    history = sp.vstack([X, X[:5]]).tocsr()
    expected = model.score(users, history)
    assert expected.shape == (len(users), X.shape[1]) and expected.dtype == np.float32
    np.testing.assert_array_equal(loaded.score(users, history), expected)
    np.testing.assert_array_equal(model.score(users, history), expected)  # eval mode: no dropout noise
    monkeypatch.setattr(base, "TORCH_SCORE_BLOCK", 7 * X.shape[1])  # blocks of 7 users
    np.testing.assert_allclose(loaded.score(users, history), expected, rtol=1e-5, atol=1e-6)


# -- loading a broken model directory: one line naming the file, never a traceback -----------------
@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """Every model fitted once and saved; tests break copies of these directories."""
    X, T = data
    base = tmp_path_factory.mktemp("saved_models")
    for name in FAST:
        MODELS[name](**FAST[name]).fit(X, T).save(base / name)
    return base


def _copy(saved, name, tmp_path):
    import shutil

    # a path like the real layout, so the message shows which run's model is broken
    return Path(shutil.copytree(saved / name, tmp_path / "models" / "dt=2024-01-06" / "final" / name))


def _load_error(directory):
    """The ``BadInput`` that loading ``directory`` raises; its message must be one line."""
    from nightly_topn.errors import BadInput

    with pytest.raises(BadInput) as info:
        load_model(directory)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot load model ")
    assert isinstance(info.value, ValueError)  # callers that caught ValueError still do
    return info.value


@pytest.mark.parametrize("name", ["popularity", "als", "ease", "multvae"])
def test_truncated_npz_is_bad_input_naming_the_file(name, saved, tmp_path):
    import zipfile

    directory = _copy(saved, name, tmp_path)
    npz = directory / "model.npz"
    blob = npz.read_bytes()
    npz.write_bytes(blob[: len(blob) // 2])
    error = _load_error(directory)
    assert str(error) == (f"cannot load model {npz}: truncated or not an npz archive "
                          f"(zipfile.BadZipFile: File is not a zip file)")
    assert isinstance(error.__cause__, zipfile.BadZipFile)  # chained, for the debug log


def test_missing_empty_or_foreign_model_files_name_the_file(saved, tmp_path):
    directory = _copy(saved, "als", tmp_path)
    npz, meta = directory / "model.npz", directory / "model.json"
    blob = npz.read_bytes()
    npz.unlink()
    assert str(_load_error(directory)) == f"cannot load model {npz}: the file is missing"
    npz.write_bytes(b"")
    assert str(_load_error(directory)) == f"cannot load model {npz}: empty file, not an npz archive"
    np.save(tmp_path / "one.npy", np.zeros(3))  # an .npy, and a pickle: neither is an npz archive
    npz.write_bytes((tmp_path / "one.npy").read_bytes())
    assert str(_load_error(directory)) == f"cannot load model {npz}: not an npz archive (no zip header)"
    npz.write_bytes(b"\x80\x04garbage")
    assert str(_load_error(directory)) == f"cannot load model {npz}: not an npz archive (no zip header)"
    np.savez(npz, junk=np.array(["not", "numbers"], dtype=object))  # an object array would need pickle
    assert f"cannot load model {npz}: unreadable npz archive (ValueError: " in str(_load_error(directory))
    npz.write_bytes(blob)
    assert load_model(directory).n_items == json.loads(meta.read_text())["n_items"]  # intact again
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    assert str(_load_error(directory)).startswith(f"cannot load model {meta}: not the metadata of a saved model "
                                                  f"(json.decoder.JSONDecodeError: ")
    meta.write_text(json.dumps({**json.loads(text), "name": "nope"}))
    assert str(_load_error(directory)).startswith(f"cannot load model {meta}: unknown model 'nope'; known: [")
    meta.unlink()
    assert str(_load_error(directory)) == f"cannot load model {meta}: the file is missing"
    assert str(_load_error(tmp_path / "nowhere")) == f"cannot load model {tmp_path / 'nowhere' / 'model.json'}: " \
                                                     f"the file is missing"


@pytest.mark.parametrize("name", sorted(FAST))
def test_arrays_that_do_not_fit_model_json_are_bad_input(name, saved, tmp_path):
    """Arrays of another shape than ``model.json`` says (a model.json of another run), or of
    another model altogether, fail at load with the npz named, not later inside scoring."""
    directory = _copy(saved, name, tmp_path)
    npz, meta_path = directory / "model.npz", directory / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "n_items": meta["n_items"] + 7}))
    message = str(_load_error(directory))
    assert message.startswith(f"cannot load model {npz}: arrays missing or of the wrong shape for model.json "
                              f"({name}, {meta['n_users']} users × {meta['n_items'] + 7} items) (")
    if name != "popularity":  # it keeps no per-user state
        meta_path.write_text(json.dumps({**meta, "n_users": meta["n_users"] + 1}))
        assert "'known' has" in str(_load_error(directory))
    meta_path.write_text(json.dumps(meta))
    other = "als" if name == "popularity" else "popularity"
    npz.write_bytes((saved / other / "model.npz").read_bytes())  # the arrays of another model
    assert str(_load_error(directory)).startswith(f"cannot load model {npz}: arrays missing or of the wrong shape")


@pytest.mark.parametrize("name", ["multvae", "sequence", "horizon"])
def test_torch_state_of_the_wrong_shape_is_bad_input_naming_the_array(name, saved, tmp_path):
    directory = _copy(saved, name, tmp_path)
    npz = directory / "model.npz"
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    key = next(k for k in sorted(arrays) if k.startswith("m0.") and arrays[k].ndim == 2)
    np.savez(npz, **{**arrays, key: arrays[key][:, :-1]})
    error = _load_error(directory)
    assert str(error).startswith(f"cannot load model {npz}: arrays missing or of the wrong shape")
    assert f"(ValueError: {key} has shape {arrays[key][:, :-1].shape}, the network needs {arrays[key].shape})" in str(error)
    np.savez(npz, **{k: v for k, v in arrays.items() if k != key})
    assert f"(KeyError: '{key}')" in str(_load_error(directory))
    np.savez(npz, **arrays, **{"m0.extra.weight": np.zeros(3, np.float32)})
    assert "unexpected arrays ['m0.extra.weight']" in str(_load_error(directory))


def test_corrupt_registry_file_is_bad_input_naming_it(tmp_path):
    from nightly_topn import registry
    from nightly_topn.errors import BadInput
    from nightly_topn.storage import Storage

    store = Storage.at(tmp_path)
    run = store.partition("models", "2024-01-06")
    run.mkdir(parents=True)
    assert registry.read_run(store, "2024-01-06") is None
    (run / registry.REGISTRY_FILE).write_text('{"candidates": [')
    with pytest.raises(BadInput, match=f"^{run / registry.REGISTRY_FILE} is not valid JSON"):
        registry.read_run(store, "2024-01-06")
    (run / registry.INFO_FILE).write_text("[1, 2]")
    with pytest.raises(BadInput, match=r"model_info.json is not a JSON object \(a list\)$"):
        registry.model_info(store, "2024-01-06")


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_ease_in_float32_and_in_place_matches_the_float64_closed_form(data, monkeypatch, form):
    from nightly_topn.models import neighbours

    X, _ = data
    train = X if form == "primal" else X[:40]
    G = (train.T @ train).toarray().astype(np.float64) + 20.0 * np.eye(train.shape[1])
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    expected = np.asarray(X[40:60] @ B)
    monkeypatch.setattr(neighbours, "FLOAT64_MAX_ELEMENTS", 0)  # what a 27K-item catalogue gets
    monkeypatch.setattr(neighbours, "GRAM_BLOCK", 7)  # several blocks, a ragged last one
    model = EASE(l2=20.0).fit(train)
    assert model.dual == (form == "dual") and (model.P.dtype == np.float32) and model.diag_p.dtype == np.float32
    got = model.score(np.arange(40, 60), X[40:60])
    seen = X[40:60].toarray() > 0
    scale = np.abs(expected[~seen]).max()
    assert np.abs(got[~seen] - expected[~seen]).max() / scale < 1e-4
    assert neighbours.ease_peak_bytes(100_000, 27_000) < 6.5e9  # float32: fits where float64 (17 GB) could not


ITERATIVE = {"als": "iterations", "bpr": "iterations", "multvae": "epochs", "sequence": "epochs", "horizon": "epochs"}


@pytest.mark.parametrize("name", sorted(ITERATIVE))
def test_an_iterative_fit_stops_at_its_deadline_and_keeps_what_it_learnt(name, data):
    """The search's trials fit under ``fit_deadline``: a fit past it stops after the pass or
    mini-batch in progress, says how far it got, and is still a model that recommends."""
    import time

    from nightly_topn.models.base import fit_deadline

    X, T = data
    params = {**FAST[name], ITERATIVE[name]: 50}
    whole = MODELS[name](**params).fit(X, T)
    assert whole.stopped_early is None
    if ITERATIVE[name] == "epochs":  # a fraction of the first epoch is no model: the trial gives up
        from nightly_topn.models.base import OutOfTime

        with fit_deadline(time.monotonic() - 1), pytest.raises(OutOfTime, match="into its first epoch"):
            MODELS[name](**{**params, "batch_size": 8}).fit(X, T)  # several mini-batches per epoch
        with fit_deadline(time.monotonic() - 1):  # past the first epoch it stops and keeps what it learnt
            probe = MODELS[name](**params)
            assert probe._stop_here(1.5, 50, "epochs") and probe.stopped_early["done"] == 1.5
        with fit_deadline(time.monotonic() + 3600):
            cut = MODELS[name](**{**params, "epochs": 1}).fit(X, T)
        assert cut.stopped_early is None
    else:
        with fit_deadline(time.monotonic() - 1):  # already passed
            cut = MODELS[name](**params).fit(X, T)
        assert cut.stopped_early["unit"] == ITERATIVE[name] and cut.stopped_early["planned"] == 50
        assert cut.stopped_early["done"] == 1  # one iteration
    users = np.arange(X.shape[0])
    ids, _ = cut.recommend(users[:20], X[:20], 5)
    assert (ids >= 0).all()
    again = MODELS[name](**params).fit(X, T)  # the deadline ended with its block
    assert again.stopped_early is None


def test_als_uses_every_core_and_learns_the_same_factors_at_any_thread_count(data, monkeypatch):
    """ALS fits on all cores by default (``fit_threads``), which is only right because the factors
    do not depend on the thread count: a rerun on a bigger or busier worker gives the same lists."""
    from nightly_topn.models import base
    from nightly_topn.scoring import available_cores

    X, _ = data
    monkeypatch.delenv(base.FIT_THREADS_ENV, raising=False)
    assert base.fit_threads() == available_cores()
    fits = []
    for threads in ("1", "2", "4"):
        monkeypatch.setenv(base.FIT_THREADS_ENV, threads)
        fits.append(MODELS["als"](**{**FAST["als"], "factors": 16}).fit(X))
    for other in fits[1:]:
        assert np.array_equal(fits[0].item_factors, other.item_factors)
        assert np.array_equal(fits[0].user_factors, other.user_factors)
