"""Top-N: run the Beam pipeline into a fresh, unpublished version directory of the run date.

``topn/dt=D/v=VERSION/`` is complete (all part files + manifest) before anything can point at
it; a failed attempt leaves only a ``.staging-*`` directory that nothing reads.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time

import pyarrow.parquet as pq

from nightly_topn.config import RunParams
from nightly_topn.storage import Storage, as_date

log = logging.getLogger(__name__)


def topn(date, *, root=None, params: RunParams = RunParams(), beam_args: list[str] | None = None) -> dict:
    from nightly_topn.pipelines import topn_pipeline

    date = as_date(date)
    store = Storage.at(root)
    features_dir = store.partition("features", date)
    models_dir = store.partition("models", date)
    info = json.loads((models_dir / "model_info.json").read_text())
    attempt = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = store.partition("topn", date) / f"v={attempt}"
    beam_args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args.insert(0, "--runner=DirectRunner")  # Prism's binary download is not needed locally
    started = time.perf_counter()
    with store.staged(target) as stage:
        topn_pipeline.run(
            [
                f"--features={features_dir}", f"--model={models_dir / 'final' / info['model']}",
                f"--fallback={models_dir / 'final' / 'popularity'}", f"--output={stage}",
                f"--logical_date={date.isoformat()}", f"--model_version={info['model_version']}",
                f"--top_n={params.top_n}", *beam_args,
            ]
        )
        parts = sorted(stage.glob("part-*.parquet"))
        rows = sum(pq.read_metadata(p).num_rows for p in parts)
        expected = pq.read_metadata(features_dir / "user_map.parquet").num_rows
        if rows != expected:
            raise RuntimeError(f"top-N pipeline wrote {rows} rows for {expected} users into {stage}")
        store.write_manifest(stage, producer="topn", date=date, inputs=[features_dir, models_dir],
                             extra={"files": [p.name for p in parts], "rows": rows, "top_n": params.top_n,
                                    "model_version": info["model_version"], "beam_args": beam_args,
                                    "seconds": round(time.perf_counter() - started, 3)})
    log.info("topn %s: %d users -> %s (%d files)", date, rows, target, len(parts))
    return {"date": date.isoformat(), "path": str(target), "rows": rows, "files": len(parts)}
