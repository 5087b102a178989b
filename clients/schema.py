"""The wire contract (API.md) as pydantic models, shared by the client, the CLI and the service.

This module is the one place every package may import, so it also holds the root of assay's
exception tree.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class AssayError(Exception):
    """Root of every exception assay raises itself."""


Status = Literal[
    "passed",
    "failed",
    "compile_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    "format_error",
    "forbidden",
    "invalid_spec",
    "unavailable",
    "internal_error",
]
"""Every status a result can carry; API.md's table explains each."""

UNJUDGED: frozenset[str] = frozenset({"invalid_spec", "unavailable", "internal_error"})
"""Statuses whose reward is null: the service could not say whether the model was right."""


class FenceExtract(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fence: str = Field(description="Take the last fenced block with this info string.")


class TagExtract(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(description="Take the text of the last <tag>…</tag>.", pattern=r"^[\w.:-]+$")


Extract = Literal["auto", "raw"] | FenceExtract | TagExtract


class ScoreItem(BaseModel):
    """One completion to judge."""

    # Unknown fields are ignored, so that newer clients can talk to older servers.
    model_config = ConfigDict(extra="ignore")

    id: str | int | None = Field(default=None, description="Optional; echoed back in the result.")
    verifier: str = Field(description="`code`, `sql`, `lean`, `dafny`, `svg`, ...")
    completion: str = Field(description="The model's text as generated.")
    spec: dict[str, Any] = Field(
        default_factory=dict, description="The verifier's ground truth and options (API.md)."
    )
    extract: Extract = Field(
        default="auto", description="How the payload is found in the completion."
    )


class ScoreRequest(BaseModel):
    items: list[ScoreItem]


class ScoreResult(BaseModel):
    id: str | int | None = None
    reward: float | None = Field(
        description="In [0, 1]; null when the item was not judged (invalid_spec, unavailable, "
        "internal_error)."
    )
    status: Status
    feedback: str = Field(default="", description="At most 2 KB, for a person or a model.")
    details: dict[str, Any] = Field(default_factory=dict)
    elapsed_ms: float = 0.0
    cached: bool = Field(
        default=False,
        description="True when the result came from the cache or an identical item of the batch.",
    )


class IndexedResult(ScoreResult):
    """A line of `/v1/score/stream`: a result with its item's position in the request."""

    index: int


class ScoreResponse(BaseModel):
    results: list[ScoreResult]


class VerifierInfo(BaseModel):
    name: str
    available: bool
    reason: str | None = None
    facts: dict[str, Any] = Field(default_factory=dict)


class VerifiersResponse(BaseModel):
    verifiers: list[VerifierInfo]
    sandbox: dict[str, Any] = Field(
        default_factory=dict,
        description="How this deployment isolates jobs: backend, isolation, per-job memory cap.",
    )


# Specs: each verifier validates its item's `spec` against one of these. A spec that does not
# validate gives that item `invalid_spec`, never a 422 for the batch.


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IOTest(SpecModel):
    stdin: str = ""
    expected_stdout: str


class CheckerSpec(SpecModel):
    """A special judge: a program deciding each test instead of `compare` (testlib's convention:
    run with the paths of the test's input, the program's output and the expected output;
    exit status 0 accepts)."""

    language: str = Field(description="a language of the table (often `cpp` or `python`)")
    source: str = Field(min_length=1, description="the checker's program")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="files beside the checker's source for its build, e.g. `testlib.h`",
    )
    time_limit_s: float = Field(default=10.0, gt=0, le=300, description="per test")
    memory_mb: int = Field(default=512, ge=16, le=65536)

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}", name):
                raise ValueError(f"checker file name {name!r} must be a plain file name")
        return files


class CodeSpec(SpecModel):
    language: str
    tests: Annotated[list[IOTest], Field(min_length=1)] | None = None
    test_code: str | None = None
    compare: Literal["exact", "lines", "tokens", "float"] = "tokens"
    float_tol: float = Field(default=1e-6, ge=0)
    time_limit_s: float = Field(default=5.0, gt=0, le=300)
    memory_mb: int = Field(default=512, ge=16, le=65536)
    partial_credit: bool = False
    stop_on_fail: bool | None = None
    checker: CheckerSpec | None = None

    @model_validator(mode="after")
    def _one_kind_of_test(self) -> CodeSpec:
        if (self.tests is None) == (self.test_code is None):
            raise ValueError("give exactly one of `tests` and `test_code`")
        if self.checker is not None and self.tests is None:
            raise ValueError("a `checker` judges I/O `tests`; it does not go with `test_code`")
        return self

    @property
    def stops_on_fail(self) -> bool:
        return not self.partial_credit if self.stop_on_fail is None else self.stop_on_fail


__all__ = [
    "UNJUDGED",
    "AssayError",
    "CheckerSpec",
    "CodeSpec",
    "Extract",
    "FenceExtract",
    "IOTest",
    "IndexedResult",
    "ScoreItem",
    "ScoreRequest",
    "ScoreResponse",
    "ScoreResult",
    "SpecModel",
    "Status",
    "TagExtract",
    "VerifierInfo",
    "VerifiersResponse",
]
