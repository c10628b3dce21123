"""Deployment-level settings, read from the environment.

Per-run knobs (top N, hyperparameters, window) are job arguments / Airflow Params; what is
here names *where* things live and *which* data source feeds the system.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "NIGHTLY_TOPN_ROOT"
SOURCE_ENV = "NIGHTLY_TOPN_SOURCE"
BEAM_ARGS_ENV = "NIGHTLY_TOPN_BEAM_ARGS"
DEFAULT_ROOT = "var/data"
DEFAULT_SOURCE = "generated"


def storage_root(root: str | os.PathLike | None = None) -> Path:
    """The storage root: the argument, else ``$NIGHTLY_TOPN_ROOT``, else ``./var/data``."""
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser().resolve()


def source_spec(source: str | None = None) -> str:
    """The data source spec: ``generated``, ``movielens:PATH`` or ``landing:PATH``."""
    return source or os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE


def beam_args(*more: str | list[str] | None) -> list[str]:
    """Beam flags of the top-N pipeline: ``$NIGHTLY_TOPN_BEAM_ARGS`` (the deployment's runner,
    e.g. ``--runner=FlinkRunner --flink_master=...``), then each of ``more`` (a run's
    ``beam_args`` Param, a CLI's extra flags). A later flag overrides an earlier one."""
    args = shlex.split(os.environ.get(BEAM_ARGS_ENV, ""))
    for extra in more:
        args += shlex.split(extra) if isinstance(extra, str) else list(extra or [])
    return args


@dataclass(frozen=True)
class RunParams:
    """Per-run knobs shared by the jobs, the DAG's Params and the CLIs (one set of defaults)."""

    top_n: int = 20
    train_window_days: int = 60
    min_user_interactions: int = 1
    min_item_interactions: int = 2
    holdout_quantile: float = 0.8
    model: str = "auto"
    factors: int = 32
    regularization: float = 1.0
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 42
    eval_k: int = 10
    min_lift_over_popularity: float = 0.0
    publish: bool = True
    allow_older: bool = False
    tuning_budget_seconds: float = 30.0
    eval_protocol: str = "temporal"
    champion_tolerance: float = 0.02
    beam_args: str = ""

    @classmethod
    def from_mapping(cls, values: dict | None) -> "RunParams":
        """Build from a dict (e.g. Airflow ``params``), ignoring keys that are not knobs."""
        values = values or {}
        known = {f: values[f] for f in cls.__dataclass_fields__ if f in values and values[f] is not None}
        return cls(**known)


#: Bounds and descriptions of every RunParams knob: the Airflow trigger form and the CLI help
#: are both built from this, so a knob is described once.
PARAM_SPECS: dict[str, dict] = {
    "top_n": {"minimum": 1, "maximum": 500, "description": "Items per user in the published lists."},
    "train_window_days": {"minimum": 1, "maximum": 3650,
                          "description": "Days of events, up to and including the run date, used for training."},
    "min_user_interactions": {"minimum": 1, "maximum": 1000,
                              "description": "Users with fewer distinct items are not trained on (they get the fallback)."},
    "min_item_interactions": {"minimum": 1, "maximum": 1000,
                              "description": "Items with fewer distinct users are dropped from the catalog."},
    "holdout_quantile": {"minimum": 0.5, "maximum": 0.99,
                         "description": "Pairs first seen after this quantile of event times form the evaluation holdout."},
    "model": {"enum": ["auto", "popularity", "als", "bpr", "itemknn", "ease", "puresvd", "multvae", "sequence",
                       "horizon"],
              "description": "Which model scores the lists: 'auto' tunes every candidate and picks the best on a "
                             "validation split; a name tunes only that model."},
    "factors": {"minimum": 4, "maximum": 512, "description": "Latent factors (ALS)."},
    "regularization": {"minimum": 0.0, "maximum": 100.0, "description": "L2 regularisation (ALS)."},
    "alpha": {"minimum": 0.01, "maximum": 1000.0, "description": "Confidence scaling of interaction weights (ALS)."},
    "iterations": {"minimum": 1, "maximum": 200, "description": "Training sweeps (ALS)."},
    "seed": {"minimum": 0, "maximum": 2**31 - 1, "description": "Random seed: same data + same seed = same lists."},
    "eval_k": {"minimum": 1, "maximum": 200, "description": "Cut-off K of the evaluation metrics (NDCG@K...)."},
    "min_lift_over_popularity": {"minimum": -1.0, "maximum": 10.0,
                                 "description": "Quality gate: the chosen model's NDCG@K must be > popularity x (1 + this)."},
    "publish": {"description": "Publish the lists when every gate passes (off = dry run: compute, keep unpublished)."},
    "tuning_budget_seconds": {"minimum": 0.0, "maximum": 86400.0,
                              "description": "Wall-clock budget of the hyperparameter search over all candidates "
                                             "(0 = no search: each model's default configuration)."},
    "eval_protocol": {"enum": ["temporal", "random"],
                      "description": "Holdout protocol: 'temporal' (pairs after the holdout quantile of event times) "
                                     "or 'random' (per-user 20 % holdout, seeded)."},
    "champion_tolerance": {"minimum": 0.0, "maximum": 1.0,
                           "description": "Quality gate: the new model may be at most this fraction below the live "
                                          "champion's NDCG@K (both measured on tonight's holdout)."},
    "beam_args": {"maxLength": 4000,
                  "description": "Extra Beam flags for the top-N pipeline, after the deployment's $NIGHTLY_TOPN_BEAM_ARGS "
                                 "(e.g. '--direct_running_mode=multi_processing --direct_num_workers=2', or a "
                                 "runner's flags: docs/runners.md). Empty = the deployment's runner."},
    "allow_older": {"description": "Let this run move the published pointer back to an OLDER date than the live one "
                                   "(off: a backfill of history computes and keeps its lists but never replaces newer live lists)."},
}
