"""The wire contract (API.md) as pydantic models, shared by the client, the CLI and the service.

This module is the one place every package may import, so it also holds the root of assay's
exception tree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


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

    @model_validator(mode="after")
    def _one_kind_of_test(self) -> CodeSpec:
        if (self.tests is None) == (self.test_code is None):
            raise ValueError("give exactly one of `tests` and `test_code`")
        return self

    @property
    def stops_on_fail(self) -> bool:
        return not self.partial_credit if self.stop_on_fail is None else self.stop_on_fail


__all__ = [
    "UNJUDGED",
    "AssayError",
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
    "item_from_label",
]
