"""The wire contract (API.md) as pydantic models, shared by the client, the CLI and the service.

This module is the one place every package may import, so it also holds the root of assay's
exception tree.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


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


# Trainer labels: the trainer adapters and the trainer protocols the service answers
# (OpenRLHF, slime) carry an item's verifier and spec in a label, a JSON object or its text:
# {"verifier": "code", "spec": {...}, "extract": "auto"}.


def _label_spec(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"the spec must be a JSON object, not {type(value).__name__}")
    # A `datasets` column of dicts becomes an Arrow struct that gives every row every key seen
    # in the column, absent ones as None; a spec field set to None means its default anyway.
    return {k: v for k, v in value.items() if v is not None}


def item_from_label(
    completion: str,
    label: Any,
    *,
    verifier: str | None = None,
    spec: Any = None,
    extract: Any = None,
    ident: str | int | None = None,
    default_verifier: str | None = None,
) -> ScoreItem | ScoreResult:
    """The item a label describes, or a ready `invalid_spec` result saying what is wrong.

    `label` is a JSON object (or its text) with `verifier`, `spec` and optionally `extract`;
    `verifier`/`spec`/`extract` given here (from dataset columns) take precedence over it;
    `default_verifier` is used only when neither names a verifier.
    """
    try:
        raw: dict[str, Any] = {}
        if label is not None and spec is None:
            parsed = json.loads(label) if isinstance(label, str) else label
            if not isinstance(parsed, Mapping):
                raise ValueError(f"the label must be a JSON object, not {type(parsed).__name__}")
            raw = dict(parsed)
        if spec is not None:
            raw["spec"] = spec
        if verifier is not None:
            raw["verifier"] = verifier
        if extract is not None:
            raw["extract"] = extract
        if "verifier" not in raw and default_verifier is not None:
            raw["verifier"] = default_verifier
        if "verifier" not in raw:
            raise ValueError("no verifier: the label or the dataset must name one")
        raw["spec"] = _label_spec(raw.get("spec", {}))
        if raw.get("extract") is None:
            raw.pop("extract", None)
        return ScoreItem(
            id=ident,
            verifier=raw["verifier"],
            completion=completion,
            spec=raw["spec"],
            **({"extract": raw["extract"]} if "extract" in raw else {}),
        )
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        problem = (
            str(exc).splitlines()[0]
            if not isinstance(exc, ValidationError)
            else ("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        )
        return ScoreResult(
            id=ident,
            reward=None,
            status="invalid_spec",
            feedback=f"bad label: {problem}"[:2000],
        )


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
    checker: CheckerSpec | None = None
    entry_point: (
        Annotated[str, Field(pattern=_IDENTIFIER)]
        | Annotated[list[Annotated[str, Field(pattern=_IDENTIFIER)]], Field(min_length=1)]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_kind_of_test(self) -> CodeSpec:
        if (self.tests is None) == (self.test_code is None):
            raise ValueError("give exactly one of `tests` and `test_code`")
        if self.checker is not None and self.tests is None:
            raise ValueError("a `checker` judges I/O `tests`; it does not go with `test_code`")
        if self.entry_point is not None and self.test_code is None:
            raise ValueError("`entry_point` goes with `test_code`")
        return self

    @property
    def stops_on_fail(self) -> bool:
        return not self.partial_credit if self.stop_on_fail is None else self.stop_on_fail


SPEC_TEXT_CHARS = 100_000
"""The longest Lean statement or header and Dafny reference a spec may give: the service reads
them with lexers in Python (milliseconds per 1,000 characters), as it reads the completion,
whose payload has the same bound."""

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
        max_length=SPEC_TEXT_CHARS,
    )
    header: str | None = Field(
        default=None,
        description="Imports and `open`s put before a completion that has no imports; "
        "default: the server's (`ASSAY_LEAN_HEADER`).",
        max_length=SPEC_TEXT_CHARS,
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
            # Doc comments; one never closed runs to the end (`\Z`: without it, each `/-` was
            # searched to the end again, quadratic in the statement's length).
            text = re.sub(r"/-.*?(?:-/|\Z)|--[^\n]*", " ", self.theorem, flags=re.S)
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
        max_length=SPEC_TEXT_CHARS,
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

    gold_sql: str | None = Field(default=None, min_length=1, max_length=SPEC_TEXT_CHARS)
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
    "CheckerSpec",
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
    "item_from_label",
]
