"""Every setting, defined once: deployment settings (environment) and per-run knobs (typed).

The deployment decides *where* things live, *which* source feeds the system and *which* Beam
runner (with which flags) computes the lists: ``$NIGHTLY_TOPN_ROOT``, ``$NIGHTLY_TOPN_SOURCE``,
``$NIGHTLY_TOPN_BEAM_ARGS``, ``$NIGHTLY_TOPN_MAX_BEAM_WORKERS``. A run chooses only the knobs of
``RunParams``: each is typed and bounded here, and the Airflow trigger form, the CLI flags and
the jobs all validate against this one definition, so a wrong value is refused before any work
starts, by every entry point, in one line that names the knob and the bound.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from nightly_topn.errors import ConfigError

ROOT_ENV = "NIGHTLY_TOPN_ROOT"
SOURCE_ENV = "NIGHTLY_TOPN_SOURCE"
BEAM_ARGS_ENV = "NIGHTLY_TOPN_BEAM_ARGS"
MAX_BEAM_WORKERS_ENV = "NIGHTLY_TOPN_MAX_BEAM_WORKERS"
DEFAULT_ROOT = "var/data"
DEFAULT_SOURCE = "generated"
#: The default runner of the top-N step: Beam's portable in-process runner. ``DirectRunner``
#: would first try to download and start the Prism binary from the internet; ``FnApiRunner``
#: never downloads anything and honours the same ``--direct_running_mode``/``--direct_num_workers``.
DEFAULT_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
#: Flags the top-N job sets itself (paths and identity of the version): nobody else may.
JOB_OWNED_FLAGS = ("features", "model", "fallback", "output", "logical_date", "model_version", "top_n",
                   "diversity_strength", "candidates", "challenger", "challenger_version", "challenger_share", "experiment")
#: The ``model`` knob's choices: ``auto`` and every model of ``nightly_topn.models.MODELS`` (listed
#: here so that parsing the DAG imports no model code; a test keeps the two in step).
MODEL_CHOICES = ("auto", "popularity", "als", "bpr", "itemknn", "ease", "puresvd", "multvae", "sequence", "horizon")
#: The ``challenger_model`` knob's choices: no experiment, or any model but popularity (the fallback).
CHALLENGER_CHOICES = ("none", *MODEL_CHOICES[2:])


def storage_root(root: str | os.PathLike | None = None):
    """The storage root: the argument, else ``$NIGHTLY_TOPN_ROOT``, else ``./var/data``. A local
    path (``pathlib.Path``, resolved) or an object-store URL (``s3://bucket/prefix``, ``gs://...``:
    a ``upath.UPath``, credentials and endpoint from the environment, never from the URL)."""
    value = root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    text = str(value)
    if "://" in text and not text.startswith("file://"):
        return value if hasattr(value, "protocol") else _object_store_root(text)  # a UPath already
    return Path(text.removeprefix("file://")).expanduser().resolve()


def _object_store_root(url: str):
    """``url`` as a ``UPath``: one of the supported schemes, a bucket, no ``..``, no credentials."""
    from nightly_topn.storage import as_path

    scheme, _, rest = url.partition("://")
    if scheme not in OBJECT_STORES:
        raise ConfigError(f"storage root {url!r}: unsupported scheme {scheme}://; expected a local path or "
                          f"one of {', '.join(s + '://' for s in OBJECT_STORES)}")
    parts = [p for p in rest.split("/") if p]
    if not parts or "@" in parts[0] or ".." in parts or "." in parts:
        raise ConfigError(f"storage root {url!r}: expected {scheme}://BUCKET[/PREFIX] without '..' or credentials "
                          "(credentials and the endpoint come from the environment, e.g. AWS_*)")
    try:
        return as_path(f"{scheme}://{'/'.join(parts)}")
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"storage root {url!r} needs the filesystem for {scheme}:// "
                          f"(pip install 'nightly-topn[{OBJECT_STORES[scheme]}]'): {exc}") from None


#: Object-store schemes a storage root may use, and the package extra that installs each.
OBJECT_STORES = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}


def source_spec(source: str | None = None) -> str:
    """The data source spec: ``generated``, ``movielens:PATH`` or ``landing:PATH``."""
    return source or os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE


def max_beam_workers() -> int:
    """The most local Beam worker processes a run may ask for: ``$NIGHTLY_TOPN_MAX_BEAM_WORKERS``,
    else this machine's cores (a run must not fork dozens of processes on a 2-core worker)."""
    value = os.environ.get(MAX_BEAM_WORKERS_ENV)
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ConfigError(f"{MAX_BEAM_WORKERS_ENV}={value!r} is not a whole number") from None
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _flag_name(token: str) -> str | None:
    return token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None


def deployment_beam_args(*more: str | list[str] | None) -> list[str]:
    """Beam flags chosen by the deployment: ``$NIGHTLY_TOPN_BEAM_ARGS`` (e.g.
    ``--runner=FlinkRunner --flink_master=...``), then ``more`` (flags given by code the
    deployment runs: benchmarks, tests). A later flag overrides an earlier one. The flags the
    job sets itself (``JOB_OWNED_FLAGS``: paths, date, model version, N) are refused."""
    args = shlex.split(os.environ.get(BEAM_ARGS_ENV, ""))
    for extra in more:
        args += shlex.split(extra) if isinstance(extra, str) else list(extra or [])
    for token in args:
        name = _flag_name(token)
        if name in JOB_OWNED_FLAGS:
            raise ConfigError(f"Beam flag --{name} is set by the top-N job itself (paths, date, model, N); "
                              f"remove it from {BEAM_ARGS_ENV} / beam_args")
    return args


def runner_of(args: list[str]) -> str:
    """The runner named by the last ``--runner`` flag of ``args`` (default ``DEFAULT_RUNNER``)."""
    runner = DEFAULT_RUNNER
    for i, token in enumerate(args):
        if token == "--runner" and i + 1 < len(args):
            runner = args[i + 1]
        elif token.startswith("--runner="):
            runner = token.split("=", 1)[1]
    return runner.rsplit(".", 1)[-1]


EVENT_WEIGHTS_ENV = "NIGHTLY_TOPN_EVENT_WEIGHTS"


def event_weights() -> dict[str, float]:
    """Confidence per event type: ``schemas.EVENT_TYPE_CONFIDENCE`` with the deployment's
    overrides from ``$NIGHTLY_TOPN_EVENT_WEIGHTS``, a JSON object such as
    ``{"purchase": 8, "view": 0.5}`` (a type weighted 0 is ignored). A deployment decision, not a
    run knob: every date of a backfill must weigh events alike. Anything else is ``ConfigError``."""
    import json
    import math

    from nightly_topn.schemas import EVENT_TYPE_CONFIDENCE

    weights = dict(EVENT_TYPE_CONFIDENCE)
    raw = os.environ.get(EVENT_WEIGHTS_ENV, "").strip()
    if not raw:
        return weights
    try:
        overrides = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{EVENT_WEIGHTS_ENV} is not JSON ({exc})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"{EVENT_WEIGHTS_ENV} must be a JSON object of event type -> weight, "
                          f"got a {type(overrides).__name__}")
    for name, value in overrides.items():
        if name not in weights:
            raise ConfigError(f"{EVENT_WEIGHTS_ENV}: unknown event type {name!r}; known: {sorted(weights)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{EVENT_WEIGHTS_ENV}: the weight of {name!r} must be a finite number >= 0, got {value!r}")
        weights[name] = float(value)
    if not any(weights.values()):
        raise ConfigError(f"{EVENT_WEIGHTS_ENV} weighs every event type 0: nothing would be trained on")
    return weights


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class RunParams:
    """Per-run knobs shared by the jobs, the DAG's Params and the CLI (one set of defaults and
    bounds). Constructing one validates it; ``RunParams.from_mapping`` turns a refusal into a
    one-line ``ConfigError`` naming the knob and its bound."""

    top_n: Annotated[int, Field(ge=1, le=500, description="Items per user in the published lists.")] = 20
    train_window_days: Annotated[int, Field(
        ge=1, le=3650, description="Days of events, up to and including the run date, used for training.")] = 60
    min_user_interactions: Annotated[int, Field(
        ge=1, le=1000, description="Users with fewer distinct items are not trained on (they get the fallback).")] = 1
    min_item_interactions: Annotated[int, Field(
        ge=1, le=1000, description="Items with fewer distinct users are dropped from the catalog.")] = 2
    recency_half_life_days: Annotated[float, Field(
        ge=0.0, le=3650.0,
        description="Older events weigh less: an event this many days before the end of the run date "
                    "counts half (0 = every event of the window counts fully).")] = 0.0
    new_item_days: Annotated[int, Field(
        ge=0, le=3650,
        description="Items released (or first seen) within this many days that have too few interactions for "
                    "the catalogue are recommended through their attribute neighbours (0 = off).")] = 14
    holdout_quantile: Annotated[float, Field(
        ge=0.5, le=0.99,
        description="Pairs first seen after this quantile of event times form the evaluation holdout.")] = 0.8
    model: Annotated[Literal[MODEL_CHOICES], Field(  # type: ignore[valid-type]
        description="Which model scores the lists: 'auto' tunes every candidate and picks the best on a "
                    "validation split; a name tunes only that model.")] = "auto"
    factors: Annotated[int, Field(ge=4, le=512, description="Latent factors (ALS).")] = 32
    regularization: Annotated[float, Field(ge=0.0, le=100.0, description="L2 regularisation (ALS).")] = 1.0
    alpha: Annotated[float, Field(ge=0.01, le=1000.0,
                                  description="Confidence scaling of interaction weights (ALS).")] = 1.0
    iterations: Annotated[int, Field(ge=1, le=200, description="Training sweeps (ALS).")] = 15
    seed: Annotated[int, Field(ge=0, le=2**31 - 1,
                               description="Random seed: same data + same seed = same lists.")] = 42
    eval_k: Annotated[int, Field(ge=1, le=200, description="Cut-off K of the evaluation metrics (NDCG@K...).")] = 10
    min_lift_over_popularity: Annotated[float, Field(
        ge=-1.0, le=10.0,
        description="Quality gate: the chosen model's NDCG@K must be > popularity x (1 + this).")] = 0.0
    publish: Annotated[bool, Field(
        description="Publish the lists when every gate passes (off = dry run: compute, keep unpublished).")] = True
    allow_older: Annotated[bool, Field(
        description="Let this run move the published pointer back to an OLDER date than the live one (off: a "
                    "backfill of history computes and keeps its lists but never replaces newer live lists).")] = False
    tuning_budget_seconds: Annotated[float, Field(
        ge=0.0, le=86400.0,
        description="Wall-clock budget of the hyperparameter search over all candidates "
                    "(0 = no search: each model's default configuration).")] = 30.0
    holdout_candidates: Annotated[Literal["needed", "all"], Field(
        description="Which tuned candidates are refit on the evaluation split and scored on the holdout: "
                    "'needed' (the winner, popularity for the gate, an A/B challenger) or 'all' (every "
                    "candidate, for the report's comparison, at one more fit each).")] = "needed"
    search_users: Annotated[int, Field(
        ge=0, le=100_000_000,
        description="Users the hyperparameter search fits and validates on (a seeded sample when there are "
                    "more; 0 = all): keeps each trial's cost bounded at any volume; the chosen configuration "
                    "is refit on every user.")] = 20_000
    eval_protocol: Annotated[Literal["temporal", "random"], Field(
        description="Holdout protocol: 'temporal' (pairs after the holdout quantile of event times) "
                    "or 'random' (per-user 20 % holdout, seeded).")] = "temporal"
    champion_tolerance: Annotated[float, Field(
        ge=0.0, le=1.0,
        description="Quality gate: the new model may be at most this fraction below the live "
                    "champion's NDCG@K (both measured on tonight's holdout).")] = 0.02
    diversity_strength: Annotated[float, Field(
        ge=0.0, le=0.9,
        description="MMR re-ranking of the published lists: 0 = plain ranking; higher trades relevance for "
                    "lists that span more item categories (the report shows what it costs in NDCG).")] = 0.0
    candidates: Annotated[Literal["auto", "exact", "ann"], Field(
        description="How the top-N step finds each user's best items: 'exact' scores every item; 'ann' takes "
                    "candidates from an approximate nearest-neighbour index over the item factors (faiss, the "
                    "'ann' extra), re-scored exactly, its search breadth calibrated to recall >= 0.99 of exact "
                    "top-N; 'auto' = 'ann' for factor models on catalogues of 150,000 items or more, else "
                    "'exact'. The manifest records what ran.")] = "auto"
    similar_items: Annotated[int, Field(
        ge=0, le=200,
        description="Similar items published per catalogue item (from the chosen model), looked up with "
                    "'nightly-topn lookup --item'; 0 = none.")] = 20
    challenger_model: Annotated[Literal[CHALLENGER_CHOICES], Field(  # type: ignore[valid-type]
        description="A/B experiment: a second model trained tonight whose lists a share of the users get "
                    "(each user keeps an arm: a hash of user id and experiment name, nightly_topn.experiments); "
                    "'none' = no experiment. Its lists go out only if it passes the same quality gate.")] = "none"
    challenger_share: Annotated[float, Field(
        ge=0.0, le=0.5,
        description="Share of the users in the challenger's arm (when challenger_model is set).")] = 0.1
    experiment: Annotated[str, Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Name of the A/B experiment, salt of the user assignment (renaming it reshuffles the "
                    "arms).")] = "ab"
    beam_running_mode: Annotated[Literal["deployment", "in_memory", "multi_threading", "multi_processing"], Field(
        description="How the local Beam runner executes this run's top-N step: 'deployment' = as the "
                    "deployment's $NIGHTLY_TOPN_BEAM_ARGS says; 'multi_processing' spreads it over "
                    "beam_workers processes. Only for a deployment on a local runner.")] = "deployment"
    beam_workers: Annotated[int, Field(
        ge=0, le=64,
        description="Local Beam workers (threads or processes) of this run's top-N step; 0 = the "
                    "deployment's choice. At most the worker machine's cores "
                    f"(${MAX_BEAM_WORKERS_ENV}).")] = 0

    @classmethod
    def from_mapping(cls, values: dict | None, *, flags: bool = False) -> "RunParams":
        """Build from a dict (Airflow ``params``, CLI flags as strings), ignoring keys that are not
        knobs and ``None`` values; a refused value raises ``ConfigError`` naming the knob (as a
        CLI flag with ``flags``) and its bound."""
        values = values or {}
        known = {f.name: values[f.name] for f in dataclasses.fields(cls) if values.get(f.name) is not None}
        try:
            return cls(**known)
        except ValidationError as exc:
            raise config_error(exc, flags=flags) from None

    def run_beam_args(self, deployment_args: list[str]) -> list[str]:
        """The Beam flags this run adds after the deployment's: only the bounded local-runner
        options ``beam_running_mode``/``beam_workers``, refused on a non-local runner and above
        ``max_beam_workers()``."""
        extra = []
        if self.beam_running_mode != "deployment":
            extra.append(f"--direct_running_mode={self.beam_running_mode}")
        if self.beam_workers:
            cap = max_beam_workers()
            if self.beam_workers > cap:
                raise ConfigError(f"beam_workers={self.beam_workers} is above this worker's limit of {cap} "
                                  f"(its cores, or ${MAX_BEAM_WORKERS_ENV})")
            extra.append(f"--direct_num_workers={self.beam_workers}")
        runner = runner_of(deployment_args)
        if extra and runner not in LOCAL_RUNNERS:
            raise ConfigError(f"beam_running_mode/beam_workers apply to a local runner only; this deployment's "
                              f"top-N step runs on {runner} (set its options in ${BEAM_ARGS_ENV})")
        return extra


def knob_schemas() -> dict[str, dict]:
    """JSON schema of each knob (type, default, bounds or choices, description): the trigger form's Params."""
    schema = TypeAdapter(RunParams).json_schema()
    return {name: {k: v for k, v in prop.items() if k != "title"} for name, prop in schema["properties"].items()}


def config_error(exc: ValidationError, *, flags: bool = False) -> ConfigError:
    """One line naming each refused knob and its bound: ``top_n=0: input should be greater than
    or equal to 1 (allowed: minimum 1; maximum 500)`` (``--top-n=0: ...`` with ``flags``)."""
    specs = knob_schemas()
    parts = []
    for error in exc.errors():
        name = ".".join(str(x) for x in error["loc"]) or "params"
        shown_name = "--" + name.replace("_", "-") if flags else name
        bound = error["msg"][0].lower() + error["msg"][1:]
        spec = specs.get(name, {})
        limits = [f"{k} {spec[k]}" for k in ("minimum", "maximum") if k in spec]
        hint = f" (allowed: {'; '.join(limits)})" if limits else ""
        shown = error.get("input")
        parts.append(f"{shown_name}={shown}: {bound}{hint}" if error["type"] != "unexpected_keyword_argument"
                     else f"{shown_name}: not a run knob")
    return ConfigError("refused run parameter " + "; ".join(parts))
