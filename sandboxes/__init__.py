"""Where untrusted work runs: the Sandbox contract and its backends."""

from __future__ import annotations

from assay.sandboxes.base import (
    Build,
    Job,
    Limits,
    MultiJob,
    Run,
    RunResult,
    Sandbox,
    StepResult,
    ToolProcess,
    ToolSpec,
)
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.sandboxes.languages import Language, languages
from assay.sandboxes.local import LocalSandbox
from assay.sandboxes.pool import WorkerPool

__all__ = [
    "Build",
    "Job",
    "Language",
    "Limits",
    "LocalSandbox",
    "MultiJob",
    "Run",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailable",
    "StepResult",
    "ToolProcess",
    "ToolSpec",
    "WorkerPool",
    "languages",
]
