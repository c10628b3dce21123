"""Great Expectations gates: run a committed checkpoint on a frame, keep the evidence, apply severity.

The GX project lives in ``expectations/gx`` (suites, validation definitions, checkpoints and
``gates.json`` thresholds, all version-controlled files; ``expectations/define_suites.py``
authors them). Each gate run copies the project into the run's report folder
(``reports/dt=D/gx/NAME/``) and runs the checkpoint there, so GX's own validation results and
Data Docs are kept per run and the installed project is never written to. Data Docs are made
readable offline (CDN stylesheets/scripts removed, GX's packaged CSS plus ours inlined).

Each expectation carries ``meta.severity``: ``hard`` failures fail the gate, ``soft`` ones are
warnings. ``meta.quarantine`` marks row-level checks whose failing rows can be set aside
(see ``nightly_topn.jobs.validate``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from nightly_topn.errors import ConfigError, GateFailed
from nightly_topn.storage import as_path, staged, write_json

log = logging.getLogger(__name__)
GX_PROJECT = Path(__file__).resolve().parent.parent / "expectations" / "gx"
GATES_ENV = "NIGHTLY_TOPN_GATES"
#: Lists longer than this are cut in the kept JSON (the full rows live in the quarantine partition).
KEEP_LIST = 20


def gx_project_dir() -> Path:
    """The committed GX project (source checkout or installed package data)."""
    if GX_PROJECT.is_dir():
        return GX_PROJECT
    from nightly_topn import expectations

    return Path(expectations.__file__).resolve().parent / "gx"


def gate_settings(gate: str, overrides: dict | None = None) -> dict:
    """Thresholds of ``gate`` from ``gates.json``, then ``$NIGHTLY_TOPN_GATES`` (JSON), then ``overrides``."""
    settings = dict(json.loads((gx_project_dir() / "gates.json").read_text())[gate])
    env = os.environ.get(GATES_ENV)
    if env:
        try:
            settings.update(json.loads(env).get(gate, {}))
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"{GATES_ENV} is not a JSON object of gate settings: {exc}") from exc
    settings.update(overrides or {})
    return settings


__all__ = ["GateFailed", "GateResult", "check_gate_knobs", "gate_settings", "require", "run_gate"]


@dataclass
class GateResult:
    checkpoint: str
    success: bool
    rows: int = 0
    failures: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    result_path: str = ""
    docs_path: str = ""
    seconds: float = 0.0
    #: Per failed row-level expectation (label -> frame index values), not written to JSON.
    unexpected_index: dict[str, list] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        lines = [f"gate {self.checkpoint}: {'PASSED' if self.success else 'FAILED'} "
                 f"({self.rows} rows, {len(self.failures)} hard failure(s), {len(self.warnings)} warning(s), "
                 f"{self.seconds:.2f}s)"]
        for kind, items in (("HARD", self.failures), ("soft", self.warnings)):
            for f in items:
                line = f"  [{kind}] {f['label']}: {f['why']}"
                if f["unexpected_count"] is not None:
                    line += f"; unexpected={f['unexpected_count']}"
                    if f["unexpected_percent"] is not None:
                        line += f" ({f['unexpected_percent']:.2f}%)"
                if f["observed_value"] is not None:
                    line += f"; observed={f['observed_value']}"
                if f["sample"]:
                    line += f"; sample={f['sample'][:5]}"
                if f["exception"]:
                    line += f"; error={f['exception']}"
                lines.append(line)
        if self.result_path:
            lines.append(f"  result: {self.result_path}")
        if self.docs_path:
            lines.append(f"  data docs: {self.docs_path}")
        return "\n".join(lines)


@lru_cache(maxsize=1)
def import_gx():
    """Import GX once per process (the import is the slow part: seconds)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter drowns the summary
    import great_expectations as gx

    return gx


def _label(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    args = ", ".join(f"{k}={v['$PARAMETER'] if isinstance(v, dict) and '$PARAMETER' in v else v}"
                     for k, v in kwargs.items() if k != "value_set" or not isinstance(v, list) or len(v) <= 10)
    return f"{config.type}({args})"


def _exception(info) -> str | None:
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return info.get("exception_message")
    for value in info.values():  # GX 1.x: {metric id: {...}}
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message")
    return None


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _short(value, limit: int = 80):
    """A sample value as a person reads it: a 10,000-character id is cut, with its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} chars)"
    return value


def _trim(value):
    """Cut long lists (COMPLETE result formats list every unexpected row) in the kept JSON."""
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > KEEP_LIST:
            return [_trim(v) for v in value[:KEEP_LIST]] + [f"... {len(value) - KEEP_LIST} more"]
        return [_trim(v) for v in value]
    return value


def run_gate(checkpoint: str, frame, report_dir: Path, parameters: dict | None = None, *,
             name: str | None = None) -> GateResult:
    """Run checkpoint ``checkpoint`` on ``frame`` (pandas) and keep its evidence under ``report_dir``.

    ``name`` (default: the checkpoint name) names the kept JSON (``NAME.validation.json``) and the
    per-run GX project (``gx/NAME/``, holding GX's validation results and the Data Docs).
    """
    started = time.perf_counter()
    gx = import_gx()
    name = name or checkpoint
    report_dir = as_path(report_dir)
    workdir = report_dir / "gx" / name
    # Built in a staging folder of its own and renamed into place: two gate runs never share a GX
    # project, and a failed or killed one leaves nothing half-written (storage.staged).
    with staged(workdir) as stage:
        shutil.copytree(gx_project_dir(), stage / "gx", ignore=shutil.ignore_patterns("uncommitted", "__pycache__"))
        context = gx.get_context(mode="file", project_root_dir=str(stage))
        result = context.checkpoints.get(checkpoint).run(
            batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {}
        )
        docs = _offline_docs(stage / "gx" / "uncommitted" / "data_docs" / "local_site")
        docs = Path(docs).relative_to(stage) if docs else None
    return _gate_result(checkpoint, frame, list(result.run_results.values()), result.describe_dict(), report_dir,
                        name, parameters, str(workdir / docs) if docs else "", started)


class GateSession:
    """Several gate runs in one GX context, without Data Docs: for the earlier days of a window that
    a run gates besides its own (``validate_window``), where a project copy, a context and a Data
    Docs build per gate would cost more than the checks. Each run keeps its validation JSON;
    the suites and result formats are the checkpoints' own."""

    def __enter__(self) -> "GateSession":
        import tempfile

        gx = import_gx()
        self._dir = tempfile.TemporaryDirectory(prefix="nightly-topn-gx-")
        shutil.copytree(gx_project_dir(), Path(self._dir.name) / "gx",
                        ignore=shutil.ignore_patterns("uncommitted", "__pycache__"))
        self.context = gx.get_context(mode="file", project_root_dir=self._dir.name)
        return self

    def __exit__(self, *exc) -> None:
        self._dir.cleanup()

    def run(self, checkpoint: str, frame, report_dir: Path, parameters: dict | None = None, *,
            name: str | None = None) -> GateResult:
        """``run_gate`` without Data Docs: the checkpoint's validation definition, run directly."""
        started = time.perf_counter()
        result_format = self.context.checkpoints.get(checkpoint).result_format
        result = self.context.validation_definitions.get(checkpoint).run(
            batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {},
            result_format=result_format)
        return _gate_result(checkpoint, frame, [result], result.describe_dict(), as_path(report_dir),
                            name or checkpoint, parameters, "", started)


def _gate_result(checkpoint, frame, suite_results, described, report_dir: Path, name: str, parameters,
                 docs_path: str, started: float) -> GateResult:
    """The failures and warnings of GX's suite results, kept as ``NAME.validation.json`` and logged."""
    gate = GateResult(checkpoint=checkpoint, success=True, rows=len(frame))
    for run_result in suite_results:
        for item in run_result.results:
            if item.success:
                continue
            config = item.expectation_config
            meta = config.meta or {}
            res = item.result or {}
            label = _label(config)
            entry = {
                "expectation": config.type,
                "label": label,
                "why": meta.get("why", ""),
                "severity": meta.get("severity", "hard"),
                "quarantine": bool(meta.get("quarantine")),
                "kwargs": _jsonable({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
                "unexpected_count": res.get("unexpected_count"),
                "unexpected_percent": res.get("unexpected_percent"),
                "observed_value": _jsonable(res.get("observed_value")),
                "sample": [_short(v) for v in _jsonable((res.get("partial_unexpected_list") or [])[:10])],
                "exception": _exception(item.exception_info),
            }
            if entry["quarantine"] and res.get("unexpected_index_list") is not None:
                gate.unexpected_index[label] = list(res["unexpected_index_list"])
            (gate.failures if entry["severity"] == "hard" else gate.warnings).append(entry)
    gate.success = not gate.failures
    gate.docs_path = docs_path
    gate.seconds = round(time.perf_counter() - started, 3)
    gate.result_path = str(report_dir / f"{name}.validation.json")
    write_json(as_path(gate.result_path), {
        "checkpoint": checkpoint, "success": gate.success, "rows": gate.rows, "seconds": gate.seconds,
        "parameters": _jsonable(_trim(parameters or {})), "failures": gate.failures, "warnings": gate.warnings,
        "data_docs": gate.docs_path, "checkpoint_result": _jsonable(_trim(described)),
    })
    for line in gate.summary().splitlines():
        if gate.success:
            (log.warning if gate.warnings and line.startswith("  [soft]") else log.info)(line)
        else:
            log.error(line)
    return gate


def check_gate_knobs(params) -> None:
    """A run may make the quality gate stricter, never looser than the deployment allows
    (``gates.json`` ``quality``: ``min_lift_floor``, ``max_champion_tolerance``, overridable by
    ``$NIGHTLY_TOPN_GATES``): a trigger-form user cannot switch the gate off."""
    limits = gate_settings("quality")
    if params.min_lift_over_popularity < limits["min_lift_floor"]:
        raise ConfigError(f"min_lift_over_popularity={params.min_lift_over_popularity} is below this deployment's "
                          f"floor {limits['min_lift_floor']} (gates.json quality.min_lift_floor)")
    if params.champion_tolerance > limits["max_champion_tolerance"]:
        raise ConfigError(f"champion_tolerance={params.champion_tolerance} is above this deployment's limit "
                          f"{limits['max_champion_tolerance']} (gates.json quality.max_champion_tolerance)")


def require(gate: GateResult, what: str) -> GateResult:
    """Raise ``GateFailed`` naming ``what`` and each hard failure; return the gate otherwise."""
    if not gate.success:
        raise GateFailed(f"{what} failed validation:\n{gate.summary()}")
    return gate


# -- offline Data Docs -----------------------------------------------------------------------
_REMOTE_LINK = re.compile(r"<link[^>]*href=\"https?://[^\"]*\"[^>]*>\s*", re.I)
_REMOTE_SCRIPT = re.compile(r"<script[^>]*src=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
_REMOTE_IMG = re.compile(r"<img[^>]*src=\"https?://[^\"]*\"[^>]*>", re.I)
_LOCAL_CSS = re.compile(r"<link[^>]*href=\"([^\"]*static/styles/[^\"]+\.css)\"[^>]*>", re.I)


def _offline_docs(site: Path) -> str:
    """Strip CDN references from the site's pages and inline the CSS that ships with GX (+ ours).

    Returns the newest validation page (or the index), or "" when no docs were built.
    """
    index = site / "index.html"
    if not index.is_file():
        return ""
    ours = gx_project_dir() / "plugins" / "custom_data_docs" / "styles" / "offline.css"
    offline_css = ours.read_text() if ours.is_file() else ""
    used: set[str] = set()
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")

        def inline(match, page=page):
            css = (page.parent / match.group(1)).resolve()
            return f"<style>\n{css.read_text()}\n</style>" if css.is_file() else ""

        html = _REMOTE_LINK.sub("", html)
        html = _REMOTE_SCRIPT.sub("", html)
        html = _REMOTE_IMG.sub("", html)
        html = _LOCAL_CSS.sub(inline, html)
        html = html.replace("</head>", f"<style>\n{offline_css}\n</style>\n</head>", 1)
        page.write_text(html, encoding="utf-8")
        used.update(re.findall(r"static/images/([\w.-]+)", html))
    # GX copies ~4 MB of tutorial images and fonts into every site; keep what the pages show.
    shutil.rmtree(site / "static" / "fonts", ignore_errors=True)
    for image in (site / "static" / "images").glob("*"):
        if image.name not in used:
            image.unlink()
    pages = sorted((site / "validations").rglob("*.html"), key=lambda p: p.stat().st_mtime)
    return str(pages[-1] if pages else index)
