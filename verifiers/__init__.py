"""The domain: what each verifier checks and how it turns a run into a reward."""

from __future__ import annotations

from assay.verifiers.base import Status, Verdict, Verifier
from assay.verifiers.code import CodeVerifier
from assay.verifiers.extract import ExtractError, extract
from assay.verifiers.svg import SvgVerifier

VERIFIERS: dict[str, type[Verifier]] = {v.name: v for v in (CodeVerifier, SvgVerifier)}
"""Every verifier this version knows, by name."""

__all__ = [
    "VERIFIERS",
    "CodeVerifier",
    "ExtractError",
    "Status",
    "SvgVerifier",
    "Verdict",
    "Verifier",
    "extract",
]
