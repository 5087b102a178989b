"""The domain: what each verifier checks and how it turns a run into a reward."""

from __future__ import annotations

from assay.verifiers.base import Status, Verdict, Verifier
from assay.verifiers.code import CodeVerifier
from assay.verifiers.dafny import DafnyVerifier
from assay.verifiers.extract import ExtractError, extract
from assay.verifiers.lean import LeanVerifier
from assay.verifiers.sql import SqlVerifier
from assay.verifiers.svg import SvgVerifier

VERIFIERS: dict[str, type[Verifier]] = {
    v.name: v for v in (CodeVerifier, DafnyVerifier, LeanVerifier, SqlVerifier, SvgVerifier)
}
"""Every verifier this version knows, by name."""

__all__ = [
    "VERIFIERS",
    "CodeVerifier",
    "DafnyVerifier",
    "ExtractError",
    "LeanVerifier",
    "SqlVerifier",
    "Status",
    "SvgVerifier",
    "Verdict",
    "Verifier",
    "extract",
]
