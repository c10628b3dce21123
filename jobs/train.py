"""Train: fit the configured model twice, on the training split (for honest evaluation) and on all
prepared data (the model that scores tonight's lists), plus the popularity baseline/fallback.

Layout: ``models/dt=D/{eval,final}/{MODEL,popularity}/model.{npz,json}``.
"""
from __future__ import annotations

import json
import logging
import time

from nightly_topn.config import RunParams
from nightly_topn.features import Features
from nightly_topn.models import MODELS
from nightly_topn.storage import Storage, as_date

log = logging.getLogger(__name__)


def model_params(params: RunParams) -> dict:
    if params.model == "als":
        return {"factors": params.factors, "regularization": params.regularization, "alpha": params.alpha,
                "iterations": params.iterations, "seed": params.seed}
    return {}


def train(date, *, root=None, params: RunParams = RunParams()) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    if params.model not in MODELS:
        raise ValueError(f"unknown model {params.model!r}; choose one of {sorted(MODELS)}")
    features_dir = store.partition("features", date)
    features = Features.load(features_dir)
    fingerprint = features.fingerprint()
    version = f"{date.isoformat()}.{params.model}.{fingerprint[:8]}"
    timings = {}
    with store.staged(store.partition("models", date)) as stage:
        for purpose, matrix in (("eval", features.matrix("train")), ("final", features.matrix())):
            for name, kwargs in ((params.model, model_params(params)), ("popularity", {})):
                started = time.perf_counter()
                MODELS[name](**kwargs).fit(matrix).save(stage / purpose / name)
                timings[f"{purpose}/{name}"] = round(time.perf_counter() - started, 3)
        info = {"model": params.model, "params": model_params(params), "model_version": version,
                "data_fingerprint": fingerprint, "fit_seconds": timings}
        (stage / "model_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        store.write_manifest(stage, producer="train", date=date, inputs=[features_dir], extra=info)
    log.info("train %s: %s", date, info)
    return {"date": date.isoformat(), **info}
