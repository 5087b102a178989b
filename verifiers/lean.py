"""The `lean` verifier: Lean 4 proofs checked by warm REPLs, with checks a proof cannot talk
its way past.

Anchors: Kimina Lean Server (REPLs kept warm per header, a proof valid when it has no error and
no sorry), DeepSeek-Prover and Goedel-Prover (a default Mathlib header; the dataset's statement
must be the one proved) and leanprover/comparator (the statement is compared in the
environment, the axioms are allow-listed, the proof may be replayed in the kernel).

How one completion is judged (reward 1.0 only for `passed`, else 0.0):
1. Before Lean sees anything, its text is read as tokens (comments and strings left out):
   commands that run code while elaborating (`#eval`, `run_cmd`, `macro`, `elab`, `syntax`,
   `notation`, `initialize`, `instance`, `unsafe`, `native_decide`, options that weaken the
   kernel, attributes that register code) are `forbidden` unless the spec's `allow` names
   their group. With `theorem` given, the completion must state `theorem NAME` with the same
   text up to `:=` (whitespace normalised), else `forbidden`.
2. The completion runs in a REPL that has its header imported (the spec's or the server's
   header; a completion with its own `import`s gets a REPL of its own import block). Errors
   are `failed`, with the first ones (line and column in the completion) as feedback. A
   `sorry` anywhere (the `sorries` array, or either spelling of the warning) is `forbidden`.
3. Then assay asks the environment the completion produced, with a command of its own (a
   nonce-named command elaborator defined in the header before any completion is seen, so
   the completion can neither name nor redefine it): which declarations are new, whether
   `NAME` is a theorem whose type is the spec statement's (the statement is elaborated on the
   header alone, before the completion, and the two types are compared as expressions), and
   which axioms the new declarations depend on (`Lean.collectAxioms`). A new `axiom`, an
   axiom outside `axioms` (`sorryAx`, `Lean.ofReduceBool` from `native_decide`) or a changed
   statement is `forbidden`. With kernel replay on, every new theorem and definition is sent
   to the kernel again under a fresh name.

The REPL's wire protocol is in `lean_repl.py`; the token rules in `lean_syntax.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from assay.clients.schema import LeanSpec
from assay.sandboxes.base import Limits, Sandbox, ToolSpec
from assay.sandboxes.errors import SandboxError
from assay.sandboxes.pool import WorkerPool
from assay.verifiers.base import Status, Verdict, clip
from assay.verifiers.lean_repl import (
    CommandResponse,
    LeanRepl,
    Message,
    ReplBroken,
    ReplError,
    ReplKilled,
    Sorry,
    parse_command,
)
from assay.verifiers.lean_syntax import (
    Split,
    Statement,
    parse_statement,
    same_tokens,
    sorry_ax_at,
    split_imports,
    tokens,
    violations,
)

DEFAULT_HEADER = (
    "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\n"
    "open BigOperators Real Nat Topology Rat"
)
DEFAULT_COMMAND = ("lake", "env", "/opt/lean/repl/.lake/build/bin/repl")
PROBE_PREFIX = "ASSAY-PROBE "
_SHOWN_ERRORS = 3
# What a process says on stderr when its address-space limit stops an allocation (Lean's
# runtime, C++'s allocator, Python's for the tests' stand-in).
_OUT_OF_MEMORY = re.compile(r"out of memory|std::bad_alloc|MemoryError|Cannot allocate memory")
_REFS_PER_REPL = 256

log = logging.getLogger(__name__)

# The probe: a command elaborator that reports what the environment holds. Defined once per
# REPL, right after the imports and before the header's own `open`s, under a nonce name that
# no completion can know or take. It reads constants by the string of their names (no name
# resolution, no instance search, nothing the completion's `open`s or instances can reach).
# Its answer is one info message: PROBE_PREFIX + compact JSON. Every name assay adds (the
# probe's own syntax and elaborator, the reference statements) holds the nonce, and is left out
# of the new declarations; `known` names the header's own.
PROBE_SOURCE = """\
open Lean Elab Command in
elab (name := assayProbe_{nonce}) "assay_probe_{nonce}"
    target:str reference:str known:str replay:num tag:str : command => do
  let env ← getEnv
  let kenv := env.toKernelEnv
  let knownNames := known.getString.splitOn "\\n"
  let ref := reference.getString
  let fresh : Array Name := kenv.constants.map₂.foldl (init := #[]) fun acc n _ =>
    let s := toString n
    let ours := (s.splitOn "{nonce}").length > 1
    if s == ref || knownNames.contains s || ours then acc else acc.push n
  let kindOf : Option ConstantInfo → String := fun
    | some (.axiomInfo _) => "axiom"
    | some (.defnInfo _) => "def"
    | some (.thmInfo _) => "theorem"
    | some (.opaqueInfo _) => "opaque"
    | some (.quotInfo _) => "quot"
    | some (.inductInfo _) => "inductive"
    | some (.ctorInfo _) => "constructor"
    | some (.recInfo _) => "recursor"
    | none => "missing"
  let mut decls : Array Json := #[]
  let mut axioms : Array Name := #[]
  let mut replayed : Array Json := #[]
  for n in fresh do
    decls := decls.push (Json.mkObj [("name", Json.str (toString n)),
      ("kind", Json.str (kindOf (env.find? n)))])
    for a in (← collectAxioms n) do
      unless axioms.contains a do
        axioms := axioms.push a
{replay_block}  let mut statement : Json := Json.null
  if !target.getString.isEmpty then
    match fresh.find? (fun n => toString n == target.getString) with
    | none => statement := Json.mkObj [("found", Json.bool false)]
    | some n =>
      let ci? := env.find? n
      let same : Bool := match ci?, env.find? (Name.mkSimple ref) with
        | some ci, some r =>
          ci.levelParams.length == r.levelParams.length &&
            ci.type == r.type.instantiateLevelParams r.levelParams (ci.levelParams.map Level.param)
        | _, _ => false
      statement := Json.mkObj [("found", Json.bool true), ("kind", Json.str (kindOf ci?)),
        ("same", Json.bool same)]
  let answer := Json.mkObj [("tag", Json.str tag.getString), ("decls", Json.arr decls),
    ("axioms", Json.arr (axioms.map fun a => Json.str (toString a))),
    ("statement", statement), ("replay", Json.arr replayed)]
  logInfo m!"{PROBE_PREFIX}{{answer.compress}}"
"""


# Kernel replay, part of the probe only where it is turned on (so that an API it uses that a
# toolchain lacks breaks replay alone, not every check).
REPLAY_BLOCK = """\
    if replay.getNat == 1 then
      let copy := `assay_replay ++ n
      let decl? : Option Declaration := match env.find? n with
        | some (.thmInfo v) => some (.thmDecl { v with name := copy, all := [copy] })
        | some (.defnInfo v) =>
          if v.safety == .safe then
            some (.defnDecl { v with name := copy, all := [copy] })
          else none
        | _ => none
      if let some decl := decl? then
        match kenv.addDecl {} decl with
        | .ok _ => pure ()
        | .error e =>
          let msg ← (e.toMessageData {}).toString
          replayed := replayed.push (Json.str s!"{n}: {msg}")
"""


def probe_source(nonce: str, replay: bool = False) -> str:
    """The probe's Lean source (an `elab` command) for this nonce."""
    block = REPLAY_BLOCK if replay else ""  # `replay` then unused: a linter warning at most
    source = PROBE_SOURCE.replace("{PROBE_PREFIX}", PROBE_PREFIX)
    return source.replace("{replay_block}", "\x00").format(nonce=nonce).replace("\x00", block)


def _lean_string(text: str) -> str:
    r"""A Lean string literal: `\\`, `\"`, `\n`, `\t` and `\xHH` for other control
    characters are Lean's escapes; everything else goes as it is (UTF-8)."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def probe_command(
    nonce: str, target: str, reference: str, known: Sequence[str], replay: bool, tag: str
) -> str:
    """The command that asks the environment; its answer is parsed by `parse_probe`."""
    return (
        f"assay_probe_{nonce} {_lean_string(target)} {_lean_string(reference)} "
        f"{_lean_string(chr(10).join(known))} {1 if replay else 0} {_lean_string(tag)}"
    )


def _header_imports(imports: Sequence[str]) -> list[str]:
    lines = list(imports)
    if "import Lean" not in lines:
        lines.append("import Lean")
    return lines


def probe_lines(imports: Sequence[str], replay: bool = False) -> tuple[int, int]:
    """The lines (first, last) the probe takes in `header_command`'s text."""
    first = len(_header_imports(imports)) + 2
    return first, first + probe_source("n", replay).count("\n") - 1


def header_command(imports: Sequence[str], rest: str, nonce: str, replay: bool = False) -> str:
    """The REPL's first command: the imports (with `import Lean`, which the probe needs), the
    probe, then the header's own commands (`open`s, options, given definitions)."""
    text = "\n".join(_header_imports(imports)) + "\n\n" + probe_source(nonce, replay)
    if rest.strip():
        text += "\n" + rest.strip("\n") + "\n"
    return text


def reference_command(statement: Statement, name: str) -> str:
    """The spec's statement under assay's own name, proved by `sorry`, on the header alone."""
    return statement.with_name(name) + " := sorry"


@dataclass(frozen=True, slots=True)
class Probe:
    decls: list[tuple[str, str]]
    axioms: list[str]
    statement: dict[str, Any] | None
    replay: list[str]


class ProbeError(Exception):
    """The probe's answer is not what it must be."""


def parse_probe(response: CommandResponse, tag: str) -> Probe:
    """The probe's one info message, read strictly: anything else means something answered in
    its place (or the probe is broken), and nothing is concluded from it."""
    messages = response.get("messages") or []
    if response.get("sorries"):
        raise ProbeError("the check command reported sorries")
    if len(messages) != 1 or messages[0]["severity"] != "info":
        shown = "; ".join(m["data"][:300] for m in messages) or "no message"
        raise ProbeError(f"the check command did not answer with one info message: {shown}")
    data = messages[0]["data"]
    if not data.startswith(PROBE_PREFIX):
        raise ProbeError(f"the check command answered {data[:200]!r}")
    try:
        value = json.loads(data[len(PROBE_PREFIX) :])
        if value["tag"] != tag:
            raise ProbeError("the check command answered another request's tag")
        decls = [(str(d["name"]), str(d["kind"])) for d in value["decls"]]
        axioms = [str(a) for a in value["axioms"]]
        statement = value["statement"]
        replay = [str(r) for r in value["replay"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProbeError(f"the check command's answer is malformed: {exc}") from exc
    if statement is not None and not isinstance(statement, dict):
        raise ProbeError("the check command's statement is malformed")
    return Probe(decls, axioms, statement, replay)


# -- the verdict, from what Lean answered ------------------------------------------------------


def _pos(message: Message | Sorry, offset: int) -> tuple[int, int]:
    pos = message.get("pos") or {"line": 0, "column": 0}
    return pos["line"] + offset, pos["column"]


def _show_errors(errors: list[Message], offset: int) -> str:
    shown = []
    for message in errors[:_SHOWN_ERRORS]:
        line, column = _pos(message, offset)
        shown.append(f"line {line}, col {column}: {message['data']}")
    more = len(errors) - _SHOWN_ERRORS
    text = "\n".join(shown)
    return text + (f"\n(and {more} more errors)" if more > 0 else "")


def _error_details(errors: list[Message], offset: int) -> list[dict[str, Any]]:
    found = []
    for message in errors[:20]:
        line, column = _pos(message, offset)
        entry: dict[str, Any] = {"line": line, "column": column, "message": message["data"][:500]}
        end = message.get("endPos")
        if end:
            entry["end_line"], entry["end_column"] = end["line"] + offset, end["column"]
        found.append(entry)
    return found


_SORRY_WARNINGS = ("declaration uses `sorry`", "declaration uses 'sorry'")


def judge_completion(response: CommandResponse, offset: int, spec: LeanSpec) -> Verdict | None:
    """The verdict from the completion's own answer, or `None` when the environment must be
    asked. `offset` maps the REPL's line numbers back to the completion's."""
    messages = response.get("messages") or []
    errors = [m for m in messages if m["severity"] == "error"]
    if errors:
        return Verdict(
            Status.FAILED,
            0.0,
            clip("Lean reported errors:\n" + _show_errors(errors, offset)),
            {"errors": _error_details(errors, offset)},
        )
    sorries: list[Sorry] = list(response.get("sorries") or [])
    warned = [m for m in messages if m["severity"] == "warning" and m["data"] in _SORRY_WARNINGS]
    if (sorries or warned) and not spec.allow_sorry:
        where = sorries[0] if sorries else warned[0]
        line, column = _pos(where, offset)
        return Verdict(
            Status.FORBIDDEN,
            0.0,
            f"the proof uses `sorry` (line {line}, col {column}); sorry/admit is not allowed",
            {"sorries": len(sorries) or len(warned)},
        )
    return None


def judge_probe(probe: Probe, spec: LeanSpec, statement: Statement | None) -> Verdict:
    details: dict[str, Any] = {
        "declarations": [name for name, _ in probe.decls][:50],
        "axioms": probe.axioms,
    }
    if statement is not None:
        found = probe.statement or {}
        if not found.get("found"):
            theorems = [n for n, k in probe.decls if k == "theorem"][:5]
            return Verdict(
                Status.FORBIDDEN,
                0.0,
                f"the completion does not prove `{statement.name}` (its theorems: "
                f"{', '.join(theorems) or 'none'})",
                details,
            )
        if found.get("kind") != "theorem":
            return Verdict(
                Status.FORBIDDEN,
                0.0,
                f"`{statement.name}` is a {found.get('kind')}, not a proved theorem",
                details,
            )
        if not found.get("same"):
            return Verdict(
                Status.FORBIDDEN,
                0.0,
                f"`{statement.name}` does not have the spec's statement (its type, elaborated, "
                "differs from the spec's)",
                details,
            )
    new_axioms = [name for name, kind in probe.decls if kind == "axiom"]
    if new_axioms:
        return Verdict(
            Status.FORBIDDEN,
            0.0,
            f"the completion declares axioms: {', '.join(new_axioms)}",
            details,
        )
    allowed = set(spec.axioms) | ({"sorryAx"} if spec.allow_sorry else set())
    extra = [a for a in probe.axioms if a not in allowed]
    if extra:
        return Verdict(
            Status.FORBIDDEN,
            0.0,
            f"the proof depends on axioms outside the allowed ones: {', '.join(extra)}",
            details,
        )
    if probe.replay:
        return Verdict(
            Status.FORBIDDEN,
            0.0,
            clip("the kernel rejected a declaration on replay: " + "; ".join(probe.replay)),
            details,
        )
    what = f"`{statement.name}` proved" if statement is not None else "the completion checks"
    return Verdict(
        Status.PASSED, 1.0, f"{what}; axioms: {', '.join(probe.axioms) or 'none'}", details
    )


# -- text checks before Lean -------------------------------------------------------------------


_CANDIDATES = 8
"""Declarations of the spec's theorem name compared with its statement, at most (Lean refuses
a second declaration of a name; more than one is a namespace's, rarely several)."""
MAX_CHARS = 100_000
"""The longest Lean payload judged: its text checks (a lexer in Python, several passes) cost
the service about 3 ms of CPU per 1,000 characters (bench/service_cost.py); miniF2F and
PutnamBench proofs are a few thousand."""


def statement_text_matches(body: str, statement: Statement) -> str | None:
    """`None` when the body declares `theorem NAME` with the spec's statement text (the same
    tokens: whitespace, line breaks and comments aside); else why not."""
    toks = list(tokens(body))
    lines = body.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    found = 0
    for k, tok in enumerate(toks[:-1]):
        if tok.text in ("theorem", "lemma") and toks[k + 1].text == statement.name:
            found += 1
            if found > _CANDIDATES:
                break  # each is read to its `:=`: a bound, or `theorem t theorem t ...` is n²
            begin = starts[tok.line - 1] + tok.column
            try:
                theirs = parse_statement(body[begin:])
            except ValueError:
                continue
            if same_tokens(theirs.text, statement.text):
                return None
    if not found:
        others = [
            toks[k + 1].text for k, t in enumerate(toks[:-1]) if t.text in ("theorem", "lemma")
        ]
        if others:
            shown = ", ".join(others[:3])
            return f"the completion proves other theorems ({shown}), not `{statement.name}`"
        return f"the completion does not state `theorem {statement.name}`"
    return (
        f"the statement of `{statement.name}` is not the spec's "
        "(compared token by token, whitespace and comments aside)"
    )


# -- backends ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Checked:
    """What a backend learnt about one completion."""

    verdict: Verdict | None = None
    """Set when the backend decided already (errors, sorry, timeout, header failure)."""
    probe: Probe | None = None


class HeaderFailed(Exception):
    def __init__(self, errors: str) -> None:
        super().__init__(errors)
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Job:
    split: Split
    header_rest: str
    statement: Statement | None
    spec: LeanSpec
    own_imports: bool


def _imports_and_rest(header: str) -> tuple[tuple[str, ...], str]:
    split = split_imports(header)
    return split.imports, split.body


def _reference_failed(job: Job, errors: str) -> Verdict:
    """The spec's statement does not elaborate: the spec's fault on its own header, the
    completion's when its own imports replaced the header (else a completion could dodge
    its reward by importing too little)."""
    if job.own_imports:
        return Verdict(
            Status.FAILED,
            0.0,
            clip(f"the spec's theorem does not elaborate with the completion's imports: {errors}"),
        )
    return Verdict.unjudged(
        Status.INVALID_SPEC, f"the spec's theorem does not elaborate on its header: {errors}"
    )


class ReplBackend:
    """Warm REPLs in the sandbox, in a pool keyed by header (imports and header commands)."""

    name = "repl"

    def __init__(
        self,
        *,
        command: Sequence[str],
        project_dir: str | None,
        ro_paths: Sequence[str],
        env: dict[str, str],
        pool_size: int,
        memory_mb: int,
        memory_ceiling_mb: int,
        max_proofs: int,
        start_timeout_s: float,
        check_timeout_s: float,
        kernel_replay: bool,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        self.command = tuple(command)
        self.project_dir = project_dir or None
        self.ro_paths = tuple(ro_paths)
        self.env = dict(env)
        self.memory_mb = memory_mb
        self.memory_ceiling_mb = memory_ceiling_mb
        self.start_timeout_s = start_timeout_s
        self.check_timeout_s = check_timeout_s
        self.kernel_replay = kernel_replay
        self._nonce = nonce or (lambda: secrets.token_hex(8))
        self._sandbox: Sandbox | None = None
        self.pool: WorkerPool[LeanRepl] = WorkerPool(
            self._start,
            self._close,
            size=pool_size,
            max_uses=max_proofs,
            healthy=self._healthy,
            name="lean",
        )

    # -- availability --

    def unavailable_reason(self) -> str | None:
        program = self.command[0] if self.command else ""
        path = self.env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        found = (
            os.access(program, os.X_OK)
            if os.path.isabs(program)
            else shutil.which(program, path=path)
        )
        missing = []
        if not found:
            missing.append(f"the REPL command's program {program!r} is not found (PATH={path})")
        if self.project_dir and not os.path.isdir(self.project_dir):
            missing.append(f"the Lean project {self.project_dir} does not exist")
        for ro in self.ro_paths:
            if not os.path.exists(ro):
                missing.append(f"{ro} does not exist")
        if missing:
            return (
                "no Lean REPL here (repl/lake not found): "
                + "; ".join(missing)
                + ". Build the image sandboxes/images/lean, or set ASSAY_LEAN_REPL_COMMAND, "
                "ASSAY_LEAN_PROJECT_DIR and ASSAY_LEAN_PATHS"
            )
        return None

    def facts(self) -> dict[str, Any]:
        return {
            "command": list(self.command),
            "project_dir": self.project_dir,
            "memory_mb": self.memory_mb,
            "memory_ceiling_mb": self.memory_ceiling_mb,
            "kernel_replay": self.kernel_replay,
            "pool": self.pool.facts(),
        }

    # -- the pool's hooks --

    def _argv(self) -> tuple[str, ...]:
        if self.project_dir:
            return ("env", "-C", self.project_dir, *self.command)
        return self.command

    async def _start(self, key: Hashable) -> LeanRepl:
        assert self._sandbox is not None
        assert isinstance(key, tuple)
        imports: tuple[str, ...] = key[0]
        rest: str = key[1]
        cores = os.cpu_count() or 1
        spec = ToolSpec(
            argv=self._argv(),
            limits=Limits(memory_mb=self.memory_mb, processes=max(64, 4 * cores + 16), file_mb=256),
            ro_paths=tuple(p for p in (*self.ro_paths, self.project_dir) if p),
            env=self.env,
            tool="lean",
        )
        tool = await self._sandbox.spawn(spec)
        nonce = self._nonce()
        repl = LeanRepl(tool, nonce)
        try:
            answer = await repl.command(
                header_command(imports, rest, nonce, self.kernel_replay),
                None,
                self.start_timeout_s,
            )
            errors = [m for m in answer.get("messages") or [] if m["severity"] == "error"]
            first, last = probe_lines(imports, self.kernel_replay)
            ours = [m for m in errors if first <= m["pos"]["line"] <= last]
            if ours:  # assay's own Lean does not compile with this toolchain
                raise SandboxError(
                    "assay's Lean probe does not compile with this Lean: " + _show_errors(ours, 0)
                )
            if errors:
                raise HeaderFailed(_show_errors(errors, 0))
            repl.header_env = answer["env"]
            tag = f"{nonce}-start"
            listing = await repl.command(
                probe_command(nonce, "", "", [], False, tag), repl.header_env, self.check_timeout_s
            )
            try:
                probe = parse_probe(listing, tag)
            except ProbeError as exc:
                raise SandboxError(f"the Lean probe does not work in this REPL: {exc}") from exc
            repl.known = [name for name, _ in probe.decls]
        except TimeoutError as exc:
            await repl.close()
            raise SandboxError(
                f"the Lean REPL did not import its header within {self.start_timeout_s:g} s"
            ) from exc
        except ReplBroken as exc:
            await repl.close()
            raise SandboxError(f"the Lean REPL failed while importing its header: {exc}") from exc
        except ReplError as exc:
            await repl.close()
            raise HeaderFailed(exc.message) from exc
        except BaseException:
            await repl.close()
            raise
        return repl

    async def _close(self, repl: LeanRepl) -> None:
        await repl.close()

    def _healthy(self, repl: LeanRepl) -> bool:
        if not repl.alive:
            return False
        return repl.rss_mb() < self.memory_ceiling_mb

    async def close(self) -> None:
        await self.pool.close()

    # -- one completion --

    async def check(self, job: Job, sandbox: Sandbox) -> Checked:
        self._sandbox = sandbox
        key = (job.split.imports, job.header_rest)
        for attempt in (1, 2):
            try:
                async with self.pool.lease(key) as repl:
                    return await self._check(repl, job)
            except ReplKilled as exc:
                # Not by the completion (tests/reliability/test_faults.py): once more on a
                # fresh REPL, else the item says it was not judged.
                if attempt == 2:
                    raise SandboxError(
                        f"{exc} while checking this completion, twice: not judged; "
                        "send the item again"
                    ) from exc
                log.warning("lean: a REPL was killed mid-item; checking it again")
            except HeaderFailed as exc:
                return self._header_failed(job, exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _header_failed(job: Job, exc: HeaderFailed) -> Checked:
        if job.own_imports:
            return Checked(
                Verdict(Status.FAILED, 0.0, clip(f"the completion's imports fail: {exc.errors}"))
            )
        return Checked(
            Verdict.unjudged(Status.INVALID_SPEC, f"the header does not elaborate: {exc.errors}")
        )

    async def _check(self, repl: LeanRepl, job: Job) -> Checked:
        nonce = repl.nonce
        env = repl.header_env
        reference = ""
        if job.statement is not None:
            refs = repl.refs
            cached = refs.get(job.statement.text)
            if cached is None:
                reference = f"assay_ref_{nonce}_{len(refs)}"
                try:
                    answer = await repl.command(
                        reference_command(job.statement, reference), env, self.check_timeout_s
                    )
                except ReplKilled:
                    raise
                except (TimeoutError, ReplBroken) as exc:
                    raise SandboxError(
                        f"the Lean REPL failed on the spec's statement: {exc}"
                    ) from exc
                errors = [m for m in answer.get("messages") or [] if m["severity"] == "error"]
                if errors:
                    return Checked(_reference_failed(job, _show_errors(errors, 0)))
                if len(refs) < _REFS_PER_REPL:
                    refs[job.statement.text] = (reference, answer["env"])
                env = answer["env"]
            else:
                reference, env = cached
        offset = job.split.body_line - 1
        try:
            answer = await repl.command(job.split.body, env, job.spec.timeout_s)
        except TimeoutError:
            return Checked(
                Verdict(Status.TIMEOUT, 0.0, f"Lean did not finish within {job.spec.timeout_s:g} s")
            )
        except ReplKilled:
            raise
        except ReplBroken as exc:
            if repl.tool.oom_killed() or _OUT_OF_MEMORY.search(str(exc)):
                return Checked(
                    Verdict(
                        Status.MEMORY_LIMIT, 0.0, f"Lean ran out of memory ({self.memory_mb} MB)"
                    )
                )
            return Checked(
                Verdict(Status.RUNTIME_ERROR, 0.0, clip(f"Lean crashed on the completion: {exc}"))
            )
        except ReplError as exc:
            return Checked(Verdict(Status.FAILED, 0.0, clip(f"Lean failed: {exc.message}")))
        repl.proofs += 1
        early = judge_completion(answer, offset, job.spec)
        if early is not None:
            return Checked(early)
        tag = f"{nonce}-{repl.proofs}"
        target = job.statement.name if job.statement is not None else ""
        command = probe_command(nonce, target, reference, repl.known, self.kernel_replay, tag)
        try:
            probed = await repl.command(command, answer["env"], self.check_timeout_s)
            return Checked(probe=parse_probe(probed, tag))
        except TimeoutError:
            return Checked(
                Verdict(
                    Status.TIMEOUT,
                    0.0,
                    f"the environment checks did not finish within {self.check_timeout_s:g} s",
                )
            )
        except ReplKilled:
            raise
        except (ReplBroken, ReplError, ProbeError) as exc:
            await repl.close()
            raise SandboxError(f"assay's environment check failed: {exc}") from exc


class KiminaBackend:
    """An existing Kimina Lean Server (`POST /api/check`) runs the Lean; assay's checks run on
    top. One snippet per completion: the imports, assay's probe, the header's commands, the
    spec's statement under assay's name, the completion, and the probe's call, in that order:
    the same commands the REPL backend sends one by one, as one file."""

    name = "kimina"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        check_timeout_s: float = 60.0,
        kernel_replay: bool = False,
        nonce: Callable[[], str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.check_timeout_s = check_timeout_s
        self.kernel_replay = kernel_replay
        self._nonce = nonce or (lambda: secrets.token_hex(8))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, transport=transport)

    def unavailable_reason(self) -> str | None:
        return None

    def facts(self) -> dict[str, Any]:
        return {"url": self.url, "kernel_replay": self.kernel_replay}

    async def close(self) -> None:
        await self._client.aclose()

    async def check(self, job: Job, sandbox: Sandbox) -> Checked:
        nonce = self._nonce()
        header = header_command(job.split.imports, job.header_rest, nonce, self.kernel_replay)
        start = f"{nonce}-start"  # lists the header's own declarations, as the REPL backend does
        parts = [("header", header), ("listing", probe_command(nonce, "", "", [], False, start))]
        reference = ""
        if job.statement is not None:
            reference = f"assay_ref_{nonce}_0"
            parts.append(("reference", reference_command(job.statement, reference)))
        parts.append(("completion", job.split.body))
        tag = f"{nonce}-1"
        target = job.statement.name if job.statement is not None else ""
        parts.append(
            ("probe", probe_command(nonce, target, reference, [], self.kernel_replay, tag))
        )
        code, lines = "", {}
        for name, text in parts:
            first = code.count("\n") + 1
            text = text.rstrip("\n")
            lines[name] = (first, first + text.count("\n"))
            code += text + "\n\n"
        body = {
            "snippets": [{"id": tag, "code": code}],
            "timeout": int(job.spec.timeout_s + self.check_timeout_s),
            "reuse": True,
        }
        try:
            reply = await self._client.post(
                f"{self.url}/api/check",
                json=body,
                timeout=job.spec.timeout_s + self.check_timeout_s + 30,
            )
            reply.raise_for_status()
            result = reply.json()["results"][0]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise SandboxError(f"the Kimina Lean Server failed: {exc}") from exc
        if result.get("error"):
            error = str(result["error"])
            if "header command timed out" in error:  # the import, not the completion
                raise SandboxError(f"the Kimina Lean Server could not import the header: {error}")
            if "timed out" in error.lower():
                return Checked(Verdict(Status.TIMEOUT, 0.0, f"Lean did not finish: {error}"))
            return Checked(Verdict(Status.RUNTIME_ERROR, 0.0, clip(f"Lean failed: {error}")))
        try:
            response = _kimina_response(result.get("response"))
        except ReplError as exc:
            return Checked(Verdict(Status.FAILED, 0.0, clip(f"Lean failed: {exc.message}")))
        except ReplBroken as exc:
            raise SandboxError(
                f"the Kimina Lean Server answered an unexpected shape: {exc}"
            ) from exc
        messages = response.get("messages") or []
        completion = lines["completion"]

        def inside(item: Message | Sorry, span: tuple[int, int]) -> bool:
            line = (item.get("pos") or {"line": 0})["line"]
            return span[0] <= line <= span[1]

        probe_messages = [m for m in messages if inside(m, lines["probe"])]
        listing_messages = [m for m in messages if inside(m, lines["listing"])]
        other = [m for m in messages if not inside(m, lines["probe"]) and m not in listing_messages]
        reference_errors = [
            m
            for m in other
            if m["severity"] == "error" and inside(m, lines.get("reference", (0, -1)))
        ]
        header_errors = [
            m
            for m in other
            if m["severity"] == "error" and not inside(m, completion) and m not in reference_errors
        ]
        first, last = probe_lines(job.split.imports, self.kernel_replay)  # the header is first
        ours = [m for m in header_errors if first <= m["pos"]["line"] <= last]
        if ours:
            raise SandboxError(
                "assay's Lean probe does not compile with this Lean: " + _show_errors(ours, 0)
            )
        if reference_errors and not header_errors:
            return Checked(_reference_failed(job, _show_errors(reference_errors, 0)))
        if header_errors:
            text = _show_errors(header_errors, 0)
            if job.own_imports:
                return Checked(
                    Verdict(Status.FAILED, 0.0, clip(f"the completion's imports fail: {text}"))
                )
            return Checked(
                Verdict.unjudged(Status.INVALID_SPEC, f"the header does not elaborate: {text}")
            )
        own: CommandResponse = {
            "env": 0,
            "messages": [m for m in other if inside(m, completion)],
            "sorries": [s for s in response.get("sorries") or [] if inside(s, completion)],
        }
        offset = job.split.body_line - completion[0]
        early = judge_completion(own, offset, job.spec)
        if early is not None:
            return Checked(early)
        try:
            listed = parse_probe({"env": 0, "messages": listing_messages}, start)
            probe = parse_probe({"env": 0, "messages": probe_messages}, tag)
        except ProbeError as exc:
            raise SandboxError(f"assay's environment check failed: {exc}") from exc
        # The header's own declarations are not the completion's (their axioms still count in
        # the union the probe computes: list them in the spec's `axioms`).
        known = {name for name, _ in listed.decls}
        decls = [(name, kind) for name, kind in probe.decls if name not in known]
        return Checked(probe=Probe(decls, probe.axioms, probe.statement, probe.replay))


def _kimina_response(raw: Any) -> CommandResponse:
    """The REPL's answer inside a Kimina result, read with the REPL's own shapes: Kimina may
    leave out `env`, write `null` for empty lists, and add its own keys (`time`)."""
    if not isinstance(raw, dict):
        raise ReplBroken(f"no response object: {raw!r:.200}")
    if "message" in raw and "messages" not in raw and "env" not in raw:
        return parse_command({"message": raw["message"]})
    kept = {k: v for k, v in raw.items() if k in ("messages", "sorries", "tactics") and v}
    return parse_command({"env": raw.get("env") or 0, **kept})


Backend = ReplBackend | KiminaBackend


class LeanVerifier:
    """Lean 4 proofs, checked by warm REPLs (or a Kimina Lean Server) and by the environment."""

    name: ClassVar[str] = "lean"
    spec_model: ClassVar[type[BaseModel]] = LeanSpec

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        default_header: str = DEFAULT_HEADER,
    ) -> None:
        self.backend: Backend = backend or ReplBackend(
            command=DEFAULT_COMMAND,
            project_dir="/opt/lean/project",
            ro_paths=("/opt/lean",),
            env={"PATH": "/opt/lean/toolchain/bin:/usr/local/bin:/usr/bin:/bin"},
            pool_size=1,
            memory_mb=12288,
            memory_ceiling_mb=10240,
            max_proofs=200,
            start_timeout_s=600,
            check_timeout_s=60,
            kernel_replay=False,
        )
        self.default_header = default_header

    def fences(self, spec: LeanSpec) -> tuple[str, ...]:
        return ("lean4", "lean")

    def deadline_s(self, spec: LeanSpec) -> float:
        start = getattr(self.backend, "start_timeout_s", 0.0)
        return spec.timeout_s + start + 2 * self.backend.check_timeout_s + 30.0

    def unavailable_reason(self, sandbox: Sandbox) -> str | None:
        """Why no `lean` item can be judged here (`GET /v1/verifiers`), or `None`."""
        if isinstance(self.backend, ReplBackend):
            # The sandbox first: a container backend has no Lean image, and says why.
            reason = sandbox.tool_reason("lean")
            if reason is not None:
                return reason
        return self.backend.unavailable_reason()

    def check(self, spec: LeanSpec, sandbox: Sandbox) -> str | None:
        return self.unavailable_reason(sandbox)

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "default_header": self.default_header,
            **self.backend.facts(),
        }

    async def close(self) -> None:
        await self.backend.close()

    async def verify(self, payload: str, spec: LeanSpec, sandbox: Sandbox) -> Verdict:
        if not payload.strip():
            return Verdict(Status.FORMAT_ERROR, 0.0, "the completion holds no Lean code")
        if len(payload) > MAX_CHARS:
            return Verdict(
                Status.FORMAT_ERROR,
                0.0,
                f"the proof is {len(payload)} characters long; at most {MAX_CHARS} are judged",
            )
        # The text checks read the payload several times with a lexer in Python: off the loop.
        early = await asyncio.to_thread(self._text_checks, payload, spec)
        if isinstance(early, Verdict):
            return early
        statement, split = early
        header = spec.header if spec.header is not None else self.default_header
        header_imports, header_rest = _imports_and_rest(header)
        job = Job(
            split=split if split.imports else Split(header_imports, split.body, split.body_line),
            header_rest=header_rest,
            statement=statement,
            spec=spec,
            # A completion repeating the header's imports is judged as on the header.
            own_imports=bool(split.imports) and set(split.imports) != set(header_imports),
        )
        checked = await self.backend.check(job, sandbox)
        if checked.verdict is not None:
            return checked.verdict
        assert checked.probe is not None
        return judge_probe(checked.probe, spec, statement)

    @staticmethod
    def _text_checks(payload: str, spec: LeanSpec) -> Verdict | tuple[Statement | None, Split]:
        """What can be judged before Lean sees the payload: a verdict, else the spec's
        statement and the payload's imports and body."""
        statement = None
        if spec.theorem is not None:
            try:
                statement = parse_statement(spec.theorem)
            except ValueError as exc:
                return Verdict.unjudged(Status.INVALID_SPEC, str(exc))
        split = split_imports(payload.rstrip())
        found = violations(split.body, spec.allow)
        if found:
            shown = "\n".join(v.describe(split.body_line - 1) for v in found[:3])
            return Verdict(
                Status.FORBIDDEN,
                0.0,
                clip(f"the completion uses commands that are not allowed:\n{shown}"),
                {"forbidden": sorted({v.group for v in found})},
            )
        by_hand = None if spec.allow_sorry else sorry_ax_at(split.body)
        if by_hand is not None:
            return Verdict(
                Status.FORBIDDEN,
                0.0,
                f"line {by_hand.line + split.body_line - 1}, col {by_hand.column}: `sorryAx` "
                "is `sorry`; sorry is not allowed",
            )
        if statement is not None:
            why = statement_text_matches(split.body, statement)
            if why is not None:
                # No theorem at all is a wrong answer; another statement or name is a dodge.
                declares = any(t.text in ("theorem", "lemma") for t in tokens(split.body))
                status = Status.FORBIDDEN if declares else Status.FAILED
                return Verdict(status, 0.0, why)
        return statement, split


__all__ = [
    "DEFAULT_HEADER",
    "KiminaBackend",
    "LeanVerifier",
    "Probe",
    "ReplBackend",
    "header_command",
    "judge_completion",
    "judge_probe",
    "parse_probe",
    "probe_command",
    "probe_source",
    "reference_command",
]
