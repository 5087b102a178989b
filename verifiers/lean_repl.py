"""A client for the Lean 4 JSON REPL (leanprover-community/repl), over a sandboxed tool's pipes.

The wire protocol, as the REPL at commit 8948401 (Lean v4.33.0-rc2) speaks it and as the
transcripts in tests/fixtures/lean-repl/ record it:

- a request is one JSON object followed by a blank line. The REPL reads lines until a blank
  one and joins them with their line ends dropped, so a raw newline inside a string would be
  lost (`by` + newline + `sorry` becomes `bysorry`): requests are written on one line, with
  every newline inside a string escaped (`json.dumps` does it);
- an answer is pretty-printed JSON (it may span lines) followed by one empty line; strings in
  it have their newlines escaped, so the first blank line ends the answer. Key order is
  whatever Lean's printer emits: nothing here depends on it;
- a command `{"cmd", "env"?}` answers `{"env", "messages"?, "sorries"?, "tactics"?}`; a
  failure answers `{"message": "..."}` (an unknown env, a Lean exception);
- messages carry `severity` (`info`, `warning`, `error`; `trace` exists in the REPL's type),
  `pos` and `endPos` (`endPos` may be absent), lines 1-based, columns 0-based in characters
  (Unicode code points), and `data`, the text.

The REPL has no timeout of its own and never frees memory: a request that overruns its
deadline, or an answer that is not the protocol, closes the process (`ReplBroken`); the pool
starts a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Literal, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

# pydantic validates TypedDicts only from typing_extensions before Python 3.12.
from typing_extensions import TypedDict

from assay.sandboxes.base import ToolProcess, exit_status, killed_from_outside

ANSWER_END = b"\n\n"


@with_config(ConfigDict(extra="forbid", strict=True))
class Pos(TypedDict):
    line: int
    column: int


@with_config(ConfigDict(extra="forbid", strict=True))
class Message(TypedDict):
    severity: Literal["error", "warning", "info", "trace"]
    pos: Pos
    endPos: NotRequired[Pos | None]
    data: str


@with_config(ConfigDict(extra="forbid", strict=True))
class Sorry(TypedDict):
    goal: str
    proofState: NotRequired[int | None]
    pos: NotRequired[Pos]
    endPos: NotRequired[Pos]


@with_config(ConfigDict(extra="allow", strict=True))
class Tactic(TypedDict):
    tactic: str
    goals: str
    pos: Pos
    endPos: Pos
    proofState: NotRequired[int | None]
    usedConstants: NotRequired[list[str]]


@with_config(ConfigDict(extra="forbid", strict=True))
class CommandResponse(TypedDict):
    """The answer to `{"cmd": ..., "env": ...}` (and to pickling, which answers `{"env"}`)."""

    env: int
    messages: NotRequired[list[Message]]
    sorries: NotRequired[list[Sorry]]
    tactics: NotRequired[list[Tactic]]
    infotree: NotRequired[Any]


@with_config(ConfigDict(extra="forbid", strict=True))
class ProofStepResponse(TypedDict):
    """The answer to `{"tactic": ..., "proofState": ...}`."""

    proofState: int
    goals: list[str]
    proofStatus: NotRequired[str]
    messages: NotRequired[list[Message]]
    sorries: NotRequired[list[Sorry]]
    traces: NotRequired[list[str]]


@with_config(ConfigDict(extra="forbid", strict=True))
class ErrorResponse(TypedDict):
    """The REPL's own failure: `Unknown environment.`, `Lean error:\\n...`."""

    message: str


_COMMAND = TypeAdapter(CommandResponse)
_STEP = TypeAdapter(ProofStepResponse)
_ERROR = TypeAdapter(ErrorResponse)


class ReplBroken(Exception):
    """The REPL died, overran a deadline, or answered something that is not the protocol.
    The process is closed; it must not be used again."""


class ReplKilled(ReplBroken):
    """The REPL was killed from outside (a signal no completion sends it: an operator, the
    host's OOM killer) while it worked on a request: the request was not judged."""


class ReplError(Exception):
    """The REPL answered `{"message": ...}` to a request: the request failed, the REPL lives."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def encode_request(request: dict[str, Any]) -> bytes:
    """One request as the REPL reads it: a single line of JSON, then a blank line.

    `json.dumps` escapes every control character inside strings (so no raw newline reaches
    the REPL's line reader) and writes no newline of its own. Non-ASCII text goes as UTF-8, not
    as `\\u` escapes: Lean's JSON parser reads UTF-8, and a character outside the BMP (𝔽, 𝓝)
    would otherwise need a surrogate pair."""
    return json.dumps(request, ensure_ascii=False).encode() + ANSWER_END


def decode_answer(raw: bytes) -> dict[str, Any]:
    """The JSON object of one answer (its framing blank line stripped); `ReplBroken` if it is
    not one."""
    try:
        value = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReplBroken(f"the REPL answered something that is not JSON: {raw[:200]!r}") from exc
    if not isinstance(value, dict):
        raise ReplBroken(f"the REPL answered JSON that is not an object: {raw[:200]!r}")
    return value


def parse_command(value: dict[str, Any]) -> CommandResponse:
    """A command's answer, checked field by field; `ReplError` for `{"message": ...}`."""
    if "message" in value and "env" not in value:
        raise ReplError(_checked(_ERROR, value)["message"])
    response: CommandResponse = _checked(_COMMAND, value)
    return response


def parse_step(value: dict[str, Any]) -> ProofStepResponse:
    """A tactic step's answer, checked field by field; `ReplError` for `{"message": ...}`."""
    if "message" in value and "proofState" not in value:
        raise ReplError(_checked(_ERROR, value)["message"])
    response: ProofStepResponse = _checked(_STEP, value)
    return response


def _checked(adapter: TypeAdapter[Any], value: dict[str, Any]) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ReplBroken(f"the REPL's answer does not have the expected shape: {exc}") from exc


class LeanRepl:
    """One REPL process: requests go one at a time, each with a deadline.

    `header_env` is the env id of the header imported when the REPL started (`None`: no
    header, each command starts from Lean's prelude)."""

    def __init__(self, tool: ToolProcess, nonce: str = "") -> None:
        self.tool = tool
        self.nonce = nonce
        """The name assay's own commands in this REPL carry (see verifiers/lean.py)."""
        self.header_env: int | None = None
        self.known: list[str] = []
        """The header's own declarations."""
        self.refs: dict[str, tuple[str, int]] = {}
        """Spec statements elaborated in this REPL: statement → (constant, env)."""
        self.proofs = 0
        self._broken = False

    @property
    def alive(self) -> bool:
        return not self._broken and self.tool.returncode is None

    async def request(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and read its answer; on a deadline or a broken answer the process
        is closed and `ReplBroken` (or `TimeoutError`) raised."""
        if not self.alive:
            raise ReplBroken("the REPL is closed")
        try:
            async with asyncio.timeout(timeout_s):
                self.tool.stdin.write(encode_request(request))
                await self.tool.stdin.drain()
                raw = await self.tool.stdout.readuntil(ANSWER_END)
        except TimeoutError:
            await self.close()
            raise
        except asyncio.IncompleteReadError as exc:
            code = await exit_status(self.tool)
            await self.close()
            if killed_from_outside(code) and not self.tool.oom_killed():
                raise ReplKilled(f"the REPL was killed from outside (exit status {code})") from exc
            raise ReplBroken(self._died(exc.partial)) from exc
        except ConnectionError as exc:
            code = await exit_status(self.tool)
            await self.close()
            if killed_from_outside(code) and not self.tool.oom_killed():
                raise ReplKilled(f"the REPL was killed from outside (exit status {code})") from exc
            raise ReplBroken(f"the REPL's pipe failed: {exc}") from exc
        except (asyncio.LimitOverrunError, OSError) as exc:
            await self.close()
            raise ReplBroken(f"the REPL's pipe failed: {exc}") from exc
        try:
            return decode_answer(raw)
        except ReplBroken:
            await self.close()
            raise

    async def command(
        self, cmd: str, env: int | None, timeout_s: float, **options: Any
    ) -> CommandResponse:
        """Run Lean commands (on top of `env`, or from scratch: then `cmd` may `import`)."""
        request: dict[str, Any] = {"cmd": cmd, **options}
        if env is not None:
            request["env"] = env
        value = await self.request(request, timeout_s)
        try:
            return parse_command(value)
        except ReplBroken:
            await self.close()
            raise

    async def tactic(self, tactic: str, proof_state: int, timeout_s: float) -> ProofStepResponse:
        value = await self.request({"tactic": tactic, "proofState": proof_state}, timeout_s)
        try:
            return parse_step(value)
        except ReplBroken:
            await self.close()
            raise

    def _died(self, partial: bytes) -> str:
        tail = self.tool.stderr_tail().decode(errors="replace").strip()[-500:]
        how = "was killed by its memory limit" if self.tool.oom_killed() else "exited"
        text = f"the REPL {how} before answering"
        if partial:
            text += f" (partial answer {partial[:200]!r})"
        return f"{text}: {tail}" if tail else text

    def rss_mb(self) -> float:
        """Resident memory of the REPL's whole process tree, in MB (0 where /proc cannot say)."""
        return tree_rss_kb(self.tool.pid) / 1024

    async def close(self) -> None:
        self._broken = True
        await self.tool.close()


def tree_rss_kb(pid: int) -> int:
    """The resident set of `pid` and its descendants, in kB, read from /proc.

    The sandbox's outer process (bwrap) is `pid`; the REPL runs below it in its own pid
    namespace, which the host's /proc still lists."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _rss_kb(current)
        todo.extend(_children(current))
    return total


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found.extend(int(c) for c in children.read().split())
        except (OSError, ValueError):
            continue
    return found


def messages_of(response: CommandResponse | ProofStepResponse) -> list[Message]:
    return list(response.get("messages") or [])


def sorries_of(response: CommandResponse | ProofStepResponse) -> list[Sorry]:
    return list(response.get("sorries") or [])


__all__ = [
    "CommandResponse",
    "ErrorResponse",
    "LeanRepl",
    "Message",
    "Pos",
    "ProofStepResponse",
    "ReplBroken",
    "ReplError",
    "ReplKilled",
    "Sorry",
    "Tactic",
    "decode_answer",
    "encode_request",
    "parse_command",
    "parse_step",
    "tree_rss_kb",
]
