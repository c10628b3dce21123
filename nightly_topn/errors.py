"""The project's errors: one hierarchy, each with a one-line message a person can act on.

Every job raises one of these for a problem that is not a bug: the message names the file,
column, flag or knob and the row count; the CLI and the task logs print that line, and the
traceback goes to the debug log only. Each also subclasses the builtin a caller would catch
before this hierarchy existed (``ValueError``, ``FileNotFoundError``), so nothing upstream breaks.
"""
from __future__ import annotations


def cause_of(exc: BaseException) -> str:
    """``module.Type: first line of the message`` of ``exc``, for the end of a one-line error."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0][:200]}" if text else name


class NightlyTopNError(Exception):
    """Base class: an expected failure with a message meant for a person."""

    #: Exit code of the CLI for this kind of failure (2 = usage, like argparse).
    exit_code = 1


class BadInput(NightlyTopNError, ValueError):
    """Input data (a landed file, a partition, a model file) is unreadable or off-contract."""


class ConfigError(NightlyTopNError, ValueError):
    """A knob, flag or deployment setting is out of bounds or not allowed here."""

    exit_code = 2


class MissingPartition(NightlyTopNError, FileNotFoundError):
    """An input partition or version that a job needs does not exist (or is incomplete)."""


class GateFailed(NightlyTopNError):
    """A data gate (Great Expectations) had a hard failure; nothing downstream may run."""


class QualityGateFailed(NightlyTopNError):
    """The model did not pass the evaluation gate (lift over popularity, champion tolerance)."""


class PublishRefused(NightlyTopNError):
    """Publish was asked to move the pointer to a version no gate passed (or that changed since)."""


class RunInProgress(NightlyTopNError):
    """Another run of the same date holds its lock: two runs of one date never interleave."""


class JobFailed(NightlyTopNError):
    """A step failed for a reason outside its input data (a full disk, a runner error); the
    message names the innermost cause, the traceback is in the debug log."""
