"""The domain's core types: statuses, the Verdict, the Verifier protocol and the registry."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from assay.sandboxes.base import Sandbox

FEEDBACK_LIMIT = 2048


class Status(enum.StrEnum):
    """The internal twin of the wire `Status` literal (a test keeps the two equal)."""

    PASSED = "passed"
    FAILED = "failed"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    FORMAT_ERROR = "format_error"
    FORBIDDEN = "forbidden"
    INVALID_SPEC = "invalid_spec"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"

    @property
    def judged(self) -> bool:
        return self not in _UNJUDGED


_UNJUDGED = {Status.INVALID_SPEC, Status.UNAVAILABLE, Status.INTERNAL_ERROR}


def _escapes() -> dict[int, str]:
    controls = [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]
    # Unicode's bidirectional controls (a U+202E turns the rest of a line around on screen),
    # the line and paragraph separators, and lone surrogates, which no UTF-8 text can hold.
    unicode = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    unicode += [0x2028, 0x2029, *range(0xD800, 0xE000)]
    return {c: f"\\x{c:02x}" for c in controls} | {c: f"\\u{c:04x}" for c in unicode}


_ESCAPES = _escapes()


def escape_controls(text: str) -> str:
    """`text` with control characters but tab and newline (terminal escapes, NULs, carriage
    returns), bidirectional controls and lone surrogates written as `\\xNN` / `\\uNNNN`: feedback
    is shown to people's terminals and fed back to models, and must mean what it shows."""
    return text.translate(_ESCAPES)


def clip(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    """Shorten text to `limit` characters, saying that it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 15] + " …[truncated]"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A verifier's judgement of one payload."""

    status: Status
    reward: float | None
    feedback: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    cacheable: bool = True
    """False when a rerun of the same item may be judged otherwise (the host's memory was
    short during a run): the Engine then does not cache it."""

    def __post_init__(self) -> None:
        if self.status.judged:
            if self.reward is None or not 0.0 <= self.reward <= 1.0:
                raise ValueError(f"a judged verdict needs a reward in [0, 1], not {self.reward}")
        elif self.reward is not None:
            raise ValueError(f"status {self.status} carries no reward")

    @classmethod
    def unjudged(cls, status: Status, feedback: str, **details: Any) -> Verdict:
        return cls(status, None, clip(feedback), details)


class Verifier(Protocol):
    """Judges one domain: extracts nothing itself, runs only through the sandbox it is given."""

    name: ClassVar[str]
    spec_model: ClassVar[type[BaseModel]]

    def fences(self, spec: Any) -> tuple[str, ...]:
        """Info strings of the fenced blocks that `extract="auto"` prefers for this spec."""
        ...

    def deadline_s(self, spec: Any) -> float:
        """How long judging one item with this spec may take, all included."""
        ...

    def check(self, spec: Any, sandbox: Sandbox) -> str | None:
        """`None` when this deployment can judge the spec; else why not (`unavailable`)."""
        ...

    async def verify(self, payload: str, spec: Any, sandbox: Sandbox) -> Verdict:
        """Judge the extracted payload against the spec."""
        ...

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        """What `GET /v1/verifiers` shows of this verifier (languages, versions)."""
        ...
