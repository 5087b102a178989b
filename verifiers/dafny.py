"""The `dafny` verifier: a program passes when Dafny proves all of it, and proves what it was
asked to.

Checked in this order (each step's failure is the item's status):
1. The program reads (tokens; an unclosed comment or string is `compile_error`).
2. No way around the prover (`forbid`, on tokens and declarations, never on comments or
   strings): `assume`, `expect`, a method/lemma/function with an ensures clause and no body,
   `decreases *`, `include`, `{:axiom}`, `{:verify …}`, `{:extern}`, `{:options}`, `{:only}`,
   `{:autoReq}` and every attribute not known to be sound (`{:*}`: Dafny hands unknown
   attributes to Boogie, where `{:inline N}` assumes false past depth N). What the reference
   itself has may be kept. A loop or `forall` statement with no body (Dafny warns: it
   assumes its invariant) is found in Dafny's own output. Any of these: `forbidden`.
3. With a `reference`, its specification is kept (`dafny_syntax.spec_changes`): signatures,
   requires/ensures/decreases/reads/modifies clauses, function bodies, types and constants
   unchanged; no requires, reads or modifies added. Else `forbidden`. Without one, a program
   whose ensures clauses all hold whatever the code does (none, `true`, `x == x`, ...) is
   `failed`: Re:Form's reward (Veri-Code/ReForm) scores those 0.
4. Dafny verifies it (`/compile:0`, `/verifySnapshots:0`: never a cached verdict,
   `/noCheating:1`, `/timeLimit` per procedure and a wall-clock kill for the whole):
   parse, resolution and type errors are `compile_error`; a proof that fails is `failed`, one
   that runs out of time `timeout`; `passed` only when every procedure verified and none
   failed. A Dafny 4 program that 2.x cannot read is retried once in the 2.x forms that prove
   the same (`dafny_syntax.to_dafny2`), and `details.rewrites` says what was rewritten.

Reward: 1.0 for `passed`, else 0.0 (DafnyBench's pass: verified with 0 errors and the
specification unchanged).

Dafny 2.x (Debian's 2.3, Mono) runs as a pool of warm `DafnyServer.exe` processes inside the
sandbox, each recycled after `server_uses` programs and replaced when a program overruns its
time or the server dies. Dafny 4 (`dafny verify`) runs one process per program.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from assay.clients.schema import DafnySpec
from assay.sandboxes.base import (
    Job,
    Limits,
    Sandbox,
    ToolProcess,
    ToolSpec,
    exit_status,
    killed_from_outside,
)
from assay.sandboxes.errors import SandboxError
from assay.sandboxes.pool import WorkerPool
from assay.verifiers import dafny_syntax as syntax
from assay.verifiers.base import Status, Verdict, clip

log = logging.getLogger(__name__)

FILE = "program.dfy"
SERVER_EOM = b"[[DAFNY-SERVER: EOM]]\n"
CLIENT_EOM = "[[DAFNY-CLIENT: EOM]]"
_SHOWN_ERRORS = 5
MAX_CHARS = 100_000  # DafnyBench's longest program has 29,000

# `file(line,col): Error BP5003: message` (CLI and server alike, 2.x and 4).
_DIAGNOSTIC = re.compile(
    r"^(?P<file>[^()\n]*)\((?P<line>\d+),(?P<col>\d+)\): "
    r"(?P<kind>Error|Warning|Info|Related location)(?: [A-Z]+\d+)?:? ?(?P<message>.*)$"
)
_VERIFYING = re.compile(r"^Verifying (?P<name>\S+) \.\.\.$")
_OUTCOME = re.compile(
    r"^\s*\[\d+ proof obligations?\]\s+(?P<outcome>verified|error|errors|timed out|"
    r"out of resource|out of memory|inconclusive)"
)
_SUMMARY = re.compile(
    r"Dafny program verifier finished with (?P<verified>\d+) verified, (?P<errors>\d+) errors?"
    r"(?:, (?P<inconclusive>\d+) inconclusive)?(?:, (?P<timeouts>\d+) time outs?)?"
    r"(?:, (?P<oom>\d+) out of memory)?"
)
# Boogie sends z3 4.8.12 an option it rejects: ~25 lines of "Prover error … Legal parameters"
# per z3 start, harmless (DOMAINS.md). Left out of what is parsed and shown.
_Z3_NOISE = re.compile(
    r"^(Prover error: .*unknown parameter|Legal parameters are:|  [a-z_0-9.]+ \([^)]*\)"
    r"( \(default: .*\))?$)"
)
# Dafny's warnings for statements that assume what they should prove.
_ASSUMING = re.compile(r"this (loop|forall statement) has no body|must have a body")


def read_version(home: str) -> str | None:
    """Dafny's version from its assemblies' version resource (no process to start): the
    `FileVersion` string of `DafnyPipeline.dll`, 2.x and 4.x alike."""
    for name in ("DafnyPipeline.dll", "Dafny.dll", "Dafny.exe"):
        try:
            data = Path(home, name).read_bytes()
        except OSError:
            continue
        key = "FileVersion\0".encode("utf-16-le")
        at = data.find(key)
        if at < 0:
            continue
        tail = data[at + len(key) : at + len(key) + 80].decode("utf-16-le", errors="replace")
        found = re.search(r"\d+\.\d+\.\d+(?:\.\d+)?", tail)
        if found:
            return found.group()
    return None


@dataclass(slots=True)
class Outcome:
    """What Dafny said of one program."""

    status: Status
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    verified: int = 0
    failed: int = 0
    timed_out: int = 0
    other: str = ""

    def details(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "errors": len(self.errors),
        }


def parse_output(output: str) -> Outcome:
    """Dafny's messages (server reply or CLI output) as an outcome."""
    out = Outcome(Status.PASSED)
    procedures = 0
    summary = None
    other: list[str] = []
    for raw in output.splitlines():
        line = raw.rstrip()
        if not line or _Z3_NOISE.match(line):
            continue
        if m := _DIAGNOSTIC.match(line):
            entry = {"line": int(m["line"]), "col": int(m["col"]), "message": m["message"]}
            if m["kind"] == "Error":
                out.errors.append(entry)
            elif m["kind"] == "Warning":
                out.warnings.append(entry)
            elif m["kind"] == "Related location" and out.errors:
                out.errors[-1].setdefault("related", []).append(entry)
            continue
        if _VERIFYING.match(line):
            procedures += 1
            continue
        if m := _OUTCOME.match(line):
            outcome = m["outcome"]
            if outcome == "verified":
                out.verified += 1
            elif outcome in ("timed out", "out of resource"):
                out.timed_out += 1
            else:
                out.failed += 1
            continue
        if m := _SUMMARY.search(line):
            summary = m
            continue
        if line.startswith(("Execution trace:", "    ", "[SUCCESS]", "Verification completed")):
            continue
        other.append(line)
    if summary is not None and procedures == 0:  # the CLI: counts from its last line
        out.verified = int(summary["verified"])
        out.timed_out = int(summary["timeouts"] or 0) + int(summary["inconclusive"] or 0)
        out.failed = int(summary["oom"] or 0)
        procedures = out.verified + out.timed_out + out.failed + len(out.errors)
    out.other = "\n".join(other[-8:])
    if out.errors and procedures == 0 and summary is None:
        out.status = Status.COMPILE_ERROR
    elif out.errors or out.failed:
        out.status = Status.FAILED
    elif out.timed_out:
        out.status = Status.TIMEOUT
    elif out.verified == 0:
        out.status = Status.FAILED
        out.other = out.other or "nothing was verified"
    return out


def _where(entry: dict[str, Any]) -> str:
    return f"line {entry['line']}, col {entry['col']}: {entry['message']}"


def _errors_feedback(errors: list[dict[str, Any]]) -> str:
    shown = [_where(e) for e in errors[:_SHOWN_ERRORS]]
    if len(errors) > _SHOWN_ERRORS:
        shown.append(f"… and {len(errors) - _SHOWN_ERRORS} more")
    return "\n".join(shown)


@dataclass(slots=True)
class _Checked:
    """What was judged without Dafny."""

    verdict: Verdict | None = None  # `compile_error`, `forbidden`, `invalid_spec`
    trivial: str | None = None  # why the specification proves nothing
    excused: bool = False  # it keeps an `assume` or body-less member of its reference, or a
    # trait's abstract member: Dafny's own guards would refuse what the token checks allow


def _static_checks(payload: str, spec: DafnySpec) -> _Checked:
    try:
        tokens = syntax.tokenize(payload)  # once, for both
        decls = syntax.parse(payload, tokens)
    except syntax.DafnySyntaxError as exc:
        return _Checked(Verdict(Status.COMPILE_ERROR, 0.0, f"compile error\n{exc}"))
    found = [f for f in syntax.findings(payload, decls, tokens) if f.construct in spec.forbid]
    reference: list[syntax.Decl] | None = None
    excused = False
    if spec.reference is not None:
        try:
            reference = syntax.parse(spec.reference)
            kept = syntax.unmatched(found, syntax.findings(spec.reference, reference))
        except syntax.DafnySyntaxError as exc:
            why = f"the reference does not read: {exc}"
            return _Checked(Verdict.unjudged(Status.INVALID_SPEC, why))
        # By identity: `f not in kept` compared each finding with each kept one (n²: seconds
        # for thousands of `assume`s).
        still = {id(f) for f in kept}
        excused = any(f.construct in ("assume", "bodiless") for f in found if id(f) not in still)
        found = kept
    excused = excused or syntax.abstract_trait_members(decls)
    if found:
        shown = [f"{f.construct} at {f.describe()}" for f in found[:_SHOWN_ERRORS]]
        return _Checked(
            Verdict(
                Status.FORBIDDEN,
                0.0,
                clip("the program accepts a claim without a proof:\n" + "\n".join(shown)),
                {"forbidden": [{"construct": f.construct, "line": f.line} for f in found]},
            )
        )
    if reference is None:
        return _Checked(trivial=syntax.proves_nothing(decls), excused=excused)
    changes = syntax.spec_changes(reference, decls)
    if changes:
        return _Checked(
            Verdict(
                Status.FORBIDDEN,
                0.0,
                clip("the specification was changed:\n" + "\n".join(changes[:8])),
                {"spec_changes": changes},
            )
        )
    return _Checked(excused=excused)  # `trivial` is for programs without a reference


class _Server:
    """One warm `DafnyServer.exe` in the sandbox, talked to in its own protocol (dafny-lang/
    dafny v2.3.0 `Source/DafnyServer/`): a verb line, the base64 of a JSON task, the client's
    end-of-message line; the reply ends with `[SUCCESS]` or `[FAILURE]` and the server's."""

    def __init__(self, tool: ToolProcess) -> None:
        self.tool = tool

    async def verify(self, source: str, args: list[str], wall_s: float) -> str:
        task = {"args": args, "filename": FILE, "source": source, "sourceIsFile": False}
        encoded = base64.b64encode(json.dumps(task).encode()).decode()
        self.tool.stdin.write(f"verify\n{encoded}\n{CLIENT_EOM}\n".encode())
        async with asyncio.timeout(wall_s):
            await self.tool.stdin.drain()
            reply = await self.tool.stdout.readuntil(SERVER_EOM)
        return reply.decode(errors="replace")


class DafnyVerifier:
    """Dafny programs, verified by a warm pool of Dafny servers (2.x) or `dafny verify` (4.x)."""

    name: ClassVar[str] = "dafny"
    spec_model: ClassVar[type[BaseModel]] = DafnySpec

    def __init__(
        self,
        home: str = "/usr/lib/dafny",
        *,
        runtime: str = "/usr/bin/cli",
        version: str | None = None,
        servers: int | None = None,
        server_uses: int = 200,
        memory_mb: int = 2048,
        use_server: bool = True,
    ) -> None:
        self.home, self.runtime = home, runtime
        # Given: Dafny is not on this machine but in a tool image (the docker backend's).
        self.version = version or read_version(home)
        self.generation = int(self.version.split(".")[0]) if self.version else None
        self.servers = servers or os.cpu_count() or 1
        self.server_uses, self.memory_mb = server_uses, memory_mb
        self.use_server = use_server and self.generation is not None and self.generation < 4
        self._pool: WorkerPool[_Server] | None = None
        self._sandbox: Sandbox | None = None

    # -- the Verifier protocol ----------------------------------------------------------------

    def fences(self, spec: DafnySpec) -> tuple[str, ...]:
        return ("dafny", "dfy")

    def deadline_s(self, spec: DafnySpec) -> float:
        # Up to two runs (the Dafny 4 rewrite's retry), a server's start, a queue's wait.
        return 2 * spec.timeout_s + 30.0

    def check(self, spec: DafnySpec, sandbox: Sandbox) -> str | None:
        if self.version is None:
            return f"no Dafny found in {self.home} (DafnyPipeline.dll with a version)"
        if self.use_server:
            reason = sandbox.tool_reason("dafny")
            if reason is not None:
                return reason
        if self.generation is not None and self.generation < 4:
            if not sandbox.has_tool(self.runtime):
                return f"Dafny {self.version} needs the Mono runtime {self.runtime}"
        elif not sandbox.has_tool(os.path.join(self.home, "dafny")):
            return f"Dafny {self.version}: no `dafny` program in {self.home}"
        return sandbox.unavailable_reason()

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "version": self.version,
            **({} if self.version else {"reason": f"no Dafny found in {self.home}"}),
            "home": self.home,
            "mode": "server pool" if self.use_server else "one process per program",
        }
        if self.use_server:
            facts["pool"] = self._pool.facts() if self._pool is not None else {"size": 0}
            facts["pool"]["size"] = self.servers
        return facts

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    # -- judging ------------------------------------------------------------------------------

    async def verify(self, payload: str, spec: DafnySpec, sandbox: Sandbox) -> Verdict:
        if len(payload) > MAX_CHARS:
            return Verdict(
                Status.FORMAT_ERROR,
                0.0,
                f"the program is {len(payload)} characters long; at most {MAX_CHARS} are judged",
            )
        if "[[DAFNY-" in payload:
            return Verdict(Status.FORMAT_ERROR, 0.0, "the program holds the Dafny server's marker")
        # Tokens and declarations: linear, but milliseconds to seconds of CPU; off the loop.
        checked = await asyncio.to_thread(_static_checks, payload, spec)
        if checked.verdict is not None:
            return checked.verdict
        details: dict[str, Any] = {"dafny": self.version}
        if checked.trivial is not None:
            details["trivial_spec"] = checked.trivial
        # Dafny's own guards (/noCheating:1, its warnings of body-less loops) back the token
        # checks up, unless the program keeps an assumption its reference states itself.
        guarded = not checked.excused and {"assume", "bodiless"} <= set(spec.forbid)
        outcome = await self._run(payload, spec, sandbox, guarded)
        if (
            outcome.status is Status.COMPILE_ERROR
            and self.generation is not None
            and self.generation < 4
        ):
            rewritten, rewrites = await asyncio.to_thread(syntax.to_dafny2, payload)
            if rewrites:
                details["rewrites"] = rewrites
                details["before_rewrites"] = _errors_feedback(outcome.errors[:1])
                outcome = await self._run(rewritten, spec, sandbox, guarded)
        return self._judge(outcome, spec, details, guarded)

    def _judge(
        self, outcome: Outcome, spec: DafnySpec, details: dict[str, Any], guarded: bool
    ) -> Verdict:
        details.update(outcome.details())
        if outcome.errors:
            details["first_errors"] = outcome.errors[:_SHOWN_ERRORS]
        assuming = [w for w in outcome.warnings + outcome.errors if _ASSUMING.search(w["message"])]
        if assuming and guarded:
            return Verdict(
                Status.FORBIDDEN,
                0.0,
                clip("the program accepts a claim without a proof:\n" + _errors_feedback(assuming)),
                {**details, "forbidden": [{"construct": "bodiless", "line": assuming[0]["line"]}]},
            )
        status = outcome.status
        if status is Status.COMPILE_ERROR:
            feedback = "compile error\n" + _errors_feedback(outcome.errors)
            return Verdict(status, 0.0, clip(feedback), details)
        if status is Status.PASSED and "trivial_spec" in details:
            # Verified, and worth nothing: Re:Form's reward scores these 0 too.
            why = details["trivial_spec"]
            return Verdict(
                Status.FAILED,
                0.0,
                f"verified, but the specification proves nothing: {why}",
                details,
            )
        if status is Status.PASSED:
            return Verdict(status, 1.0, f"verified ({outcome.verified} procedures)", details)
        if status is Status.TIMEOUT:
            return Verdict(
                status,
                0.0,
                f"verification ran out of time ({spec.timeout_s:g} s); "
                f"{outcome.verified} verified, {outcome.timed_out} timed out",
                details,
            )
        if status is Status.MEMORY_LIMIT:
            return Verdict(status, 0.0, f"Dafny ran out of memory ({self.memory_mb} MB)", details)
        if outcome.errors:
            head = f"{len(outcome.errors)} verification errors; {outcome.verified} verified"
            feedback = f"{head}\n{_errors_feedback(outcome.errors)}"
            return Verdict(status, 0.0, clip(feedback), details)
        return Verdict(status, 0.0, clip(outcome.other or "not verified"), details)

    def _args(self, spec: DafnySpec, guarded: bool) -> list[str]:
        args = ["/compile:0", "/nologo", "/verifySnapshots:0"]
        # Per procedure; a second less than the whole, so that one slow procedure is reported
        # by z3 (`timed out`) rather than cut by the wall-clock kill.
        args.append(f"/timeLimit:{max(1, math.ceil(spec.timeout_s) - 1)}")
        if guarded:
            args.append("/noCheating:1")  # a second guard behind the token checks
        return args

    async def _run(self, source: str, spec: DafnySpec, sandbox: Sandbox, guarded: bool) -> Outcome:
        if self.use_server:
            return await self._run_server(source, spec, sandbox, guarded)
        return await self._run_cli(source, spec, sandbox, guarded)

    async def _run_cli(
        self, source: str, spec: DafnySpec, sandbox: Sandbox, guarded: bool
    ) -> Outcome:
        if self.generation is not None and self.generation >= 4:
            # Only options every 4.x has; the output is read, not the exit status (but for
            # a crash), so warnings need no `--allow-warnings`.
            argv: tuple[str, ...] = (
                os.path.join(self.home, "dafny"),
                "verify",
                "--cores",
                "1",
                "--verification-time-limit",
                str(max(1, math.ceil(spec.timeout_s) - 1)),
                FILE,
            )
        else:
            # A fresh process has no cache; and with /verifySnapshots the 2.3 command line
            # prints no verdict at all.
            args = [a for a in self._args(spec, guarded) if not a.startswith("/verifySnapshots")]
            argv = (self.runtime, os.path.join(self.home, "Dafny.exe"), *args, FILE)
        limits = Limits(wall_s=spec.timeout_s + 5, memory_mb=self.memory_mb, processes=64)
        run = await sandbox.run(Job(argv=argv, files={FILE: source}, limits=limits))
        if run.timed_out:
            return Outcome(Status.TIMEOUT)
        if run.oom_killed:
            return Outcome(Status.MEMORY_LIMIT)
        outcome = parse_output(run.stdout.decode(errors="replace"))
        if run.exit_code not in (0, 2, 3, 4) and outcome.status is Status.PASSED:
            # 1: Dafny itself failed (2.x: a crash; 4.x: its command line); never a pass.
            outcome.status = Status.COMPILE_ERROR
            outcome.errors.append(
                {"line": 0, "col": 0, "message": f"Dafny crashed (exit status {run.exit_code})"}
            )
        return outcome

    def _pool_for(self, sandbox: Sandbox) -> WorkerPool[_Server]:
        if self._pool is None or self._sandbox is not sandbox:
            spec = ToolSpec(
                argv=(self.runtime, os.path.join(self.home, "DafnyServer.exe")),
                limits=Limits(memory_mb=self.memory_mb, processes=64, file_mb=64),
                ro_paths=() if self.home.startswith("/usr/") else (self.home,),
                tool="dafny",
            )

            async def start(key: Hashable) -> _Server:
                return _Server(await sandbox.spawn(spec))

            async def close(server: _Server) -> None:
                await server.tool.close()

            self._sandbox = sandbox
            self._pool = WorkerPool(
                start,
                close,
                size=self.servers,
                max_uses=self.server_uses,
                healthy=lambda s: s.tool.returncode is None,
                name="dafny",
            )
        return self._pool

    async def _run_server(
        self, source: str, spec: DafnySpec, sandbox: Sandbox, guarded: bool
    ) -> Outcome:
        pool = self._pool_for(sandbox)
        for attempt in (1, 2):
            server: _Server | None = None
            try:
                async with pool.lease() as server:
                    reply = await server.verify(source, self._args(spec, guarded), spec.timeout_s)
                break
            except TimeoutError:  # the lease ended in an exception: the pool closed that server
                return Outcome(Status.TIMEOUT)
            except (
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ConnectionError,
            ) as exc:
                assert server is not None
                code = await exit_status(server.tool)
                if server.tool.oom_killed():
                    return Outcome(Status.MEMORY_LIMIT)
                if killed_from_outside(code):
                    # Killed from outside, not by the program (tests/reliability/
                    # test_faults.py): once more on a fresh server, else not judged.
                    if attempt == 1:
                        log.warning("dafny: a server was killed mid-item; running it again")
                        continue
                    raise SandboxError(
                        f"the Dafny server was killed from outside (exit status {code}) while "
                        "verifying this program, twice: not judged; send the item again"
                    ) from exc
                # Dafny 2.3 dies on some programs (a stack overflow on deep nesting): the
                # program's to answer for, as the CLI's exit status 1 would be.
                tail = server.tool.stderr_tail().decode(errors="replace").strip().splitlines()
                crash = f"the Dafny server died on this program ({type(exc).__name__})"
                return Outcome(
                    Status.COMPILE_ERROR,
                    errors=[{"line": 0, "col": 0, "message": " ".join([crash, *tail[-2:]])[:500]}],
                )
        body, _, end = reply.rpartition("\n[")
        outcome = parse_output(body)
        if end.startswith(("FAILURE", "FATAL")):
            outcome.status = Status.COMPILE_ERROR
            if not outcome.errors:
                outcome.errors.append(
                    {"line": 0, "col": 0, "message": f"Dafny failed: {outcome.other[:300]}"}
                )
        return outcome
