"""The wire contract (API.md) as pydantic models, shared by the client, the CLI and the service.

This module is the one place every package may import, so it also holds the root of assay's
exception tree.
"""

from __future__ import annotations

import base64
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
    # NaN or an infinity is never a meaningful limit or tolerance (JSON has neither; Python's
    # json module and an overflowing 1e999 make them).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class IOTest(SpecModel):
    stdin: str = ""
    expected_stdout: str


_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


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
    entry_point: (
        Annotated[str, Field(pattern=_IDENTIFIER)]
        | Annotated[list[Annotated[str, Field(pattern=_IDENTIFIER)]], Field(min_length=1)]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_kind_of_test(self) -> CodeSpec:
        if (self.tests is None) == (self.test_code is None):
            raise ValueError("give exactly one of `tests` and `test_code`")
        if self.entry_point is not None and self.test_code is None:
            raise ValueError("`entry_point` goes with `test_code`")
        return self

    @property
    def stops_on_fail(self) -> bool:
        return not self.partial_credit if self.stop_on_fail is None else self.stop_on_fail


LeanAllow = Literal[
    "eval", "syntax", "initialize", "unsafe", "instance", "native_decide", "options", "attributes"
]
"""Groups of Lean commands that run code while elaborating, forbidden unless a spec allows
them (docs/api.md, lean spec)."""


class LeanSpec(SpecModel):
    theorem: str | None = Field(
        default=None,
        description="`theorem NAME ... : STATEMENT` (a proof or `:= sorry` after it is ignored): "
        "the completion must prove exactly this statement, under this name.",
        min_length=1,
    )
    header: str | None = Field(
        default=None,
        description="Imports and `open`s put before a completion that has no imports; "
        "default: the server's (`ASSAY_LEAN_HEADER`).",
    )
    allow_sorry: bool = False
    axioms: list[str] = Field(
        default_factory=lambda: ["propext", "Classical.choice", "Quot.sound"],
        description="The axioms the completion's declarations may depend on.",
    )
    allow: list[LeanAllow] = Field(
        default_factory=list,
        description="Groups of commands that run code while elaborating (`#eval`, `macro`, "
        "`instance`...) that this item may use; by default none.",
    )
    timeout_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _named_theorem(self) -> LeanSpec:
        if self.theorem is not None:
            text = re.sub(r"/-.*?-/|--[^\n]*", " ", self.theorem, flags=re.S)  # doc comments
            words = text.replace("@[", " @[").split()
            while words and words[0].startswith("@["):
                words.pop(0)
            while words and words[0] in ("private", "protected", "noncomputable", "nonrec"):
                words.pop(0)
            if len(words) < 2 or words[0] not in ("theorem", "lemma"):
                raise ValueError("`theorem` must be one `theorem NAME ... : STATEMENT`")
        return self


DAFNY_FORBID = (
    "assume",
    "expect",
    "bodiless",
    "decreases *",
    "include",
    "{:axiom}",
    "{:verify false}",
    "{:extern}",
    "{:options}",
    "{:only}",
    "{:autoReq}",
    "{:imported}",
    "{:*}",
)
"""What a Dafny program may not use by default: each way Dafny accepts a claim without
proving it (docs/dafny.md). `{:*}` is every attribute not known to be sound."""
_DAFNY_CONSTRUCT = re.compile(r"assume|expect|bodiless|decreases \*|include|\{:(\*|[A-Za-z_]\w*)\}")


class DafnySpec(SpecModel):
    reference: str | None = Field(
        default=None,
        description="A program whose specification the completion must keep: signatures, "
        "requires/ensures/decreases/reads/modifies clauses, function bodies, types, constants.",
    )
    forbid: list[str] = Field(
        default_factory=lambda: list(DAFNY_FORBID),
        description="Constructs that make the answer `forbidden` (those the reference has "
        "itself may be kept).",
    )
    timeout_s: float = Field(default=60.0, gt=0, le=600, description="For the whole check.")

    @field_validator("forbid")
    @classmethod
    def _known_constructs(cls, forbid: list[str]) -> list[str]:
        for item in forbid:
            if item != "{:verify false}" and not _DAFNY_CONSTRUCT.fullmatch(item):
                raise ValueError(
                    f"unknown construct {item!r}: one of assume, expect, bodiless, "
                    "`decreases *`, include, `{:name}`, `{:verify false}`, `{:*}`"
                )
        return forbid


SqlDialect = Literal["sqlite", "duckdb", "postgres"]


class SqlSpec(SpecModel):
    """The `sql` verifier's spec (API.md, sql): a predicted query judged by its result."""

    gold_sql: str | None = Field(default=None, min_length=1, max_length=1 << 20)
    expected_rows: list[list[Any]] | None = None
    database: str | None = Field(default=None, pattern=r"^[\w.-]{1,200}$")
    databases: (
        Annotated[
            list[Annotated[str, Field(pattern=r"^[\w.-]{1,200}$")]],
            Field(min_length=1, max_length=64),
        ]
        | None
    ) = None
    setup_sql: str | None = Field(default=None, min_length=1, max_length=16 << 20)
    dialect: SqlDialect | None = Field(
        default=None,
        description="The engine: by default the named database's, or sqlite for `setup_sql`.",
    )
    transpile_from: SqlDialect | None = Field(
        default=None,
        description="The predicted query is written in this dialect: sqlglot transpiles it.",
    )
    order_matters: bool | None = None
    compare: Literal["set", "multiset"] = "set"
    column_permutations: bool = False
    float_tol: float = Field(default=1e-6, ge=0, le=1)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    empty_gold: Literal["score", "zero"] | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> SqlSpec:
        if (self.gold_sql is None) == (self.expected_rows is None):
            raise ValueError("give exactly one of `gold_sql` and `expected_rows`")
        given = [self.database, self.databases, self.setup_sql]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of `database`, `databases` and `setup_sql`")
        if self.setup_sql is not None and self.dialect == "postgres":
            raise ValueError("`setup_sql` builds SQLite or DuckDB databases; name a postgres one")
        return self

    @property
    def targets(self) -> list[str]:
        """The named databases this spec runs on (none for `setup_sql`)."""
        if self.databases is not None:
            return list(self.databases)
        return [self.database] if self.database is not None else []


SvgMetric = Literal["pixel", "ssim", "edge"]


def _svg_weights() -> dict[SvgMetric, float]:
    return {"pixel": 0.5, "ssim": 0.5}


class SvgSpec(SpecModel):
    reference_svg: str | None = Field(default=None, max_length=1 << 20)
    reference_png: str | None = Field(
        default=None, max_length=16 << 20, description="The target as a base64 PNG."
    )
    size: int = Field(default=256, ge=16, le=1024)
    weights: dict[SvgMetric, float] = Field(default_factory=_svg_weights)
    length_penalty: float = Field(default=0.0, ge=0, le=1)
    allow_text: bool = False
    pass_threshold: float = Field(default=0.99, gt=0, le=1)
    return_images: bool = False
    time_limit_s: float = Field(default=10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _one_reference(self) -> SvgSpec:
        if (self.reference_svg is None) == (self.reference_png is None):
            raise ValueError("give exactly one of `reference_svg` and `reference_png`")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("`weights` must be non-negative with a positive sum")
        if self.reference_png is not None:
            try:
                base64.b64decode(self.reference_png, validate=True)
            except ValueError as exc:
                raise ValueError(f"`reference_png` is not base64: {exc}") from None
        return self


__all__ = [
    "DAFNY_FORBID",
    "UNJUDGED",
    "AssayError",
    "CodeSpec",
    "DafnySpec",
    "Extract",
    "FenceExtract",
    "IOTest",
    "IndexedResult",
    "LeanAllow",
    "LeanSpec",
    "ScoreItem",
    "ScoreRequest",
    "ScoreResponse",
    "ScoreResult",
    "SpecModel",
    "SqlDialect",
    "SqlSpec",
    "SvgMetric",
    "SvgSpec",
    "Status",
    "TagExtract",
    "VerifierInfo",
    "VerifiersResponse",
]
