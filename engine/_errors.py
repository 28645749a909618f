"""The engine's exceptions, in one module that every other imports (and none imports back)."""

from __future__ import annotations

import concurrent.futures as cf

__all__ = ["ImageError", "WorkerError", "JobCancelled", "UsageError"]


class ImageError(ValueError):
    """The input is not an image this engine can represent: undecodable, truncated, too large,
    or of an unsupported mode. The one-line message says which, and what is allowed."""


class WorkerError(RuntimeError):
    """A worker process died while running a job. The engine replaces it; retrying works."""


class JobCancelled(cf.CancelledError):
    """``Job.result()`` of a job that was cancelled."""


class UsageError(Exception):
    """A command line that cannot run as given (the CLI prints it as one line, exit status 2)."""
