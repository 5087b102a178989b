"""What users run: the wire models, the HTTP client (sync and async) and the `assay` CLI."""

from __future__ import annotations

from assay.clients.client import (
    AssayClient,
    AssayConnectionError,
    AssayHTTPError,
    AsyncAssayClient,
)
from assay.clients.schema import AssayError, IndexedResult, ScoreItem, ScoreResult, Status

__all__ = [
    "AssayClient",
    "AssayConnectionError",
    "AssayError",
    "AssayHTTPError",
    "AsyncAssayClient",
    "IndexedResult",
    "ScoreItem",
    "ScoreResult",
    "Status",
]
