"""Great Expectations gates: run a committed checkpoint on a frame, keep the evidence, apply severity.

The GX project lives in ``expectations/gx`` (suites, validation definitions, checkpoints as
version-controlled files). Each run copies it into the run's report folder and runs the
checkpoint there, so validation results and Data Docs are kept per run and the installed
project is never written to. Each expectation carries ``meta.severity``: ``hard`` failures
fail the gate, ``soft`` ones are warnings.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nightly_topn.storage import write_json

log = logging.getLogger(__name__)
GX_PROJECT = Path(__file__).resolve().parent.parent / "expectations" / "gx"


def gx_project_dir() -> Path:
    """The committed GX project (source checkout or installed package data)."""
    if GX_PROJECT.is_dir():
        return GX_PROJECT
    from nightly_topn import expectations

    return Path(expectations.__file__).resolve().parent / "gx"


class GateFailed(RuntimeError):
    """A hard expectation failed; the message lists which and how many rows."""


@dataclass
class GateResult:
    checkpoint: str
    success: bool
    failures: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    result_path: str = ""
    docs_path: str = ""

    def summary(self) -> str:
        lines = [f"gate {self.checkpoint}: {'PASSED' if self.success else 'FAILED'}"]
        for kind, items in (("HARD", self.failures), ("soft", self.warnings)):
            for f in items:
                lines.append(
                    f"  [{kind}] {f['expectation']} {f['kwargs']}: unexpected={f['unexpected_count']} "
                    f"observed={f['observed_value']} sample={f['sample']}"
                )
        if self.result_path:
            lines.append(f"  result: {self.result_path}")
        if self.docs_path:
            lines.append(f"  data docs: {self.docs_path}")
        return "\n".join(lines)


def run_gate(checkpoint: str, frame, report_dir: Path, parameters: dict | None = None) -> GateResult:
    """Run checkpoint ``checkpoint`` on ``frame`` (pandas) and write its result under ``report_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    workdir = report_dir / "gx_project"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(gx_project_dir(), workdir / "gx", ignore=shutil.ignore_patterns("uncommitted", "__pycache__"))
    context = gx.get_context(mode="file", project_root_dir=str(workdir))
    result = context.checkpoints.get(checkpoint).run(
        batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {}
    )
    gate = GateResult(checkpoint=checkpoint, success=True)
    payload = result.describe_dict()
    for run_result in result.run_results.values():
        for item in run_result.results:
            if item.success:
                continue
            config = item.expectation_config
            res = item.result or {}
            entry = {
                "expectation": config.type,
                "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)},
                "unexpected_count": res.get("unexpected_count"),
                "unexpected_percent": res.get("unexpected_percent"),
                "observed_value": res.get("observed_value"),
                "sample": (res.get("partial_unexpected_list") or [])[:5],
                "exception": (item.exception_info or {}).get("exception_message") if isinstance(item.exception_info, dict) else None,
            }
            severity = (config.meta or {}).get("severity", "hard")
            (gate.failures if severity == "hard" else gate.warnings).append(entry)
    gate.success = not gate.failures
    gate.result_path = str(report_dir / f"{checkpoint}.validation.json")
    write_json(Path(gate.result_path), {"success": gate.success, "failures": gate.failures,
                                        "warnings": gate.warnings, "checkpoint_result": payload})
    docs = workdir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    gate.docs_path = str(docs) if docs.is_file() else ""
    for line in gate.summary().splitlines():
        (log.info if gate.success else log.error)(line)
    return gate


def require(gate: GateResult, what: str) -> GateResult:
    """Raise ``GateFailed`` naming ``what`` and each hard failure; return the gate otherwise."""
    if not gate.success:
        raise GateFailed(f"{what} failed validation:\n{gate.summary()}")
    return gate
