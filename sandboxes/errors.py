"""Errors of the sandbox layer: the sandbox itself failed, not the program in it."""

from __future__ import annotations

from assay.clients.schema import AssayError


class SandboxError(AssayError):
    """The sandbox failed to run a job (not the job's program failing)."""

    retryable: bool = True


class SandboxUnavailable(SandboxError):
    """This sandbox cannot run untrusted work here (bwrap missing, engine down)."""

    retryable = False
