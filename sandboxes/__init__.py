"""Where untrusted work runs: the Sandbox contract and its backends."""

from __future__ import annotations

from assay.sandboxes.base import Job, Limits, RunResult, Sandbox, ToolProcess, ToolSpec
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.sandboxes.languages import Language, languages
from assay.sandboxes.local import LocalSandbox
from assay.sandboxes.pool import WorkerPool

__all__ = [
    "Job",
    "Language",
    "Limits",
    "LocalSandbox",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailable",
    "ToolProcess",
    "ToolSpec",
    "WorkerPool",
    "languages",
]
