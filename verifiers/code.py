"""The `code` verifier: programs judged by running their tests in the sandbox.

Any language of the table (`sandboxes/languages.toml`, docs/languages.md). A compiled program
is built once (`builds.py`; the compile cache keeps its artefacts or its compile error), and
all its tests run in one multi-run sandbox start. A spec's `checker` (a special judge,
`checker.py`) may decide each test instead of `compare`.

Two kinds of test (API.md, code spec):
- `tests`: each test runs the program on its `stdin`, and its stdout must match
  `expected_stdout` under `compare` (the convention of competitive-programming RL sets such as
  APPS, CodeContests, TACO).
- `test_code`: the test code is appended to the program and the whole must exit 0
  (HumanEval, MBPP, MultiPL-E), having run to the end: a random token printed after the test
  code must appear (placed per language: `programs.py`), so that a program which exits early
  with status 0 does not pass. Where
  the language table allows, the program is fed on stdin, so that no file holds the tests or
  the token for the program to read, and the token's print vanishes with the asserts under
  `python -O`. The program may not start processes or threads (unless its runtime starts
  its own: JVM, Go, Node, Mono, shells): forked children could try answers against the
  asserts until one survives. The tests still run in the program's own
  process, as in every HumanEval-style harness: a program that attacks its interpreter (an
  `__eq__` that always holds, a tracer that jumps over the asserts, reading the token from its
  code objects or its memory) can fake a pass (tests/verifiers/test_code.py lists them).
  With `entry_point`, the test code runs in a harness process apart from the program instead
  (verifiers/isolated.py), which closes those holes; `details.mode` says which mode an item had.
  `tests` (I/O) runs have no such hole: the expected output never enters the sandbox.

Reward: 1.0 when every test passes, else 0.0; with `partial_credit`, the fraction of tests that
passed (tests not run after a stop count as failed). The status is that of the first failing
test. Every run has the spec's time and memory limits, enforced by the sandbox from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import re
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import BaseModel

from assay.clients.schema import CodeSpec, IOTest
from assay.sandboxes.base import Limits, MultiJob, Run, RunResult, Sandbox, StepResult
from assay.sandboxes.bwrap import SANDBOX_PATH
from assay.sandboxes.errors import SandboxError
from assay.sandboxes.languages import Language, languages, toolchain_versions
from assay.verifiers import isolated
from assay.verifiers.base import Status, Verdict, clip, escape_controls
from assay.verifiers.builds import BuildSettings, build, run_job
from assay.verifiers.checker import Case, CheckerError, decide
from assay.verifiers.compare import outputs_match
from assay.verifiers.compile_cache import Built, CompileCache
from assay.verifiers.programs import (
    Program,
    TestCodePlacementError,
    io_program,
    test_code_program,
)

# libc's words for a write past RLIMIT_FSIZE or a full work dir, whatever the language.
_FILE_LIMIT = re.compile(r"File too large|No space left on device|EFBIG|ENOSPC")

log = logging.getLogger(__name__)

_SHOWN = 300  # characters of expected/actual output shown in feedback
_TAIL_LINES = 8  # lines of an error shown in feedback
OUTPUT_BYTES = 1 << 20
FILE_MB = 32


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


def _tail(raw: bytes) -> str:
    lines = raw.decode(errors="replace").rstrip().split("\n")
    return escape_controls("\n".join(lines[-_TAIL_LINES:]))


def _with_source(stderr: bytes, frame: re.Pattern[str], program: str) -> bytes:
    """The tail of a traceback of a program read from stdin, with the source line of its last
    frame put back. Only that one, and only in the tail: the program writes its own stderr and
    could name any number of lines, of the hidden tests too, or none that exists."""
    lines = stderr.decode(errors="replace").rstrip("\n").split("\n")[-(_TAIL_LINES - 1) :]
    for i in range(len(lines) - 1, -1, -1):
        found = frame.match(lines[i][:_EXAMINED_LINE])
        if found is None:
            continue
        digits = found[1]
        number = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 10 else 0
        if number < 1:  # a line no program has: a frame the program wrote itself
            break
        text = next(itertools.islice(io.StringIO(program), number - 1, number), "").strip()
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if text and following != text[:_SHOWN]:  # syntax errors show their line already
            lines.insert(i + 1, f"    {text[:_SHOWN]}")
        break
    return "\n".join(lines).encode() + b"\n"


# What of a program's stderr the language table's patterns examine: its first and last lines,
# each cut short. The program writes its stderr (1 MiB of it), and a pattern's cost can grow
# faster than its input; these bound it whatever the pattern.
_EXAMINED_LINES = 32
_EXAMINED_LINE = 500


def _excerpt(stderr: str) -> str:
    lines = stderr.split("\n")
    if len(lines) > 2 * _EXAMINED_LINES:
        lines = lines[:_EXAMINED_LINES] + lines[-_EXAMINED_LINES:]
    return "\n".join(line[:_EXAMINED_LINE] for line in lines)


def _times(run: RunResult) -> dict[str, Any]:
    """A run's wall-clock time and, where measured, its CPU time and peak memory."""
    times: dict[str, Any] = {"time_ms": round(run.time_s * 1000, 1)}
    if run.cpu_time_s is not None:
        times["cpu_ms"] = round(run.cpu_time_s * 1000, 1)
    if run.memory_kb is not None:
        times["memory_kb"] = run.memory_kb
    return times


# A program that dies with its peak memory this close to its limit died of the limit (a C
# program whose malloc failed and which then dereferenced NULL), whatever its last words.
_NEAR_LIMIT = 0.9


def _near_limit(run: RunResult, limits: Limits) -> bool:
    return run.memory_kb is not None and run.memory_kb >= _NEAR_LIMIT * limits.memory_mb * 1024


def _head(raw: bytes, lines: int = 12) -> str:
    """The first lines of a compiler's output: its first errors are the ones that matter."""
    text = "\n".join(raw.decode(errors="replace").strip().split("\n")[:lines])
    return escape_controls(text)


def _matches(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def classify(run: RunResult, language: Language, limits: Limits) -> tuple[Status, str]:
    """A run's status apart from its output, and why: `PASSED` means it ran to exit 0."""
    stderr = _excerpt(run.stderr.decode(errors="replace"))
    if run.timed_out and run.cpu_timed_out:
        cpu = limits.cpu_s if limits.cpu_s is not None else limits.wall_s + 1
        return Status.TIMEOUT, f"CPU time limit exceeded ({cpu:g} s)"
    if run.timed_out:
        return Status.TIMEOUT, f"time limit exceeded ({limits.wall_s:g} s)"
    if run.output_exceeded:
        return Status.OUTPUT_LIMIT, f"output limit exceeded ({limits.output_bytes} bytes)"
    if run.file_exceeded or (run.exit_code != 0 and _FILE_LIMIT.search(stderr)):
        return Status.OUTPUT_LIMIT, f"file size limit exceeded ({limits.file_mb} MB)"
    # A program that exits 0 although one of its processes died for memory has still done
    # its work; its output is judged.
    if run.exit_code != 0 and run.oom_killed and run.host_pressure:
        return Status.MEMORY_LIMIT, (
            f"killed for memory before reaching its limit ({limits.memory_mb} MB): the host "
            "was short of memory (not cached; the item is judged again when sent again)"
        )
    if run.exit_code != 0 and (
        run.oom_killed or _matches(language.memory_error, stderr) or _near_limit(run, limits)
    ):
        return Status.MEMORY_LIMIT, f"memory limit exceeded ({limits.memory_mb} MB)"
    if run.exit_code == 0:
        return Status.PASSED, ""
    if _matches(language.compile_error, stderr):
        return Status.COMPILE_ERROR, _tail(run.stderr)
    how = f"killed by {run.signal_name}" if run.signal else f"exit status {run.exit_code}"
    tail = _tail(run.stderr)
    return Status.RUNTIME_ERROR, f"{how}\n{tail}" if tail else how


# Runs whose output is larger than this are judged (decoded, compared) in a worker thread: it
# is linear work, but a megabyte of it costs the event loop milliseconds.
_INLINE = 64 << 10


def _judge_run(
    run: RunResult, test: IOTest, spec: CodeSpec, language: Language, limits: Limits
) -> tuple[Status, str]:
    """One I/O test's status and why (without a checker)."""
    status, why = classify(run, language, limits)
    if status is Status.PASSED and spec.checker is None:
        actual = run.stdout.decode(errors="replace")
        if not outputs_match(actual, test.expected_stdout, spec.compare, spec.float_tol):
            status = Status.FAILED
            why = (
                f"wrong answer\ninput: {_show(test.stdin)}\n"
                f"expected: {_show(test.expected_stdout)}\nactual: {_show(actual)}"
            )
    return status, why


class CodeVerifier:
    """Runs programs against I/O tests or appended test code, in any language of the table."""

    name: ClassVar[str] = "code"
    spec_model: ClassVar[type[BaseModel]] = CodeSpec

    def __init__(
        self,
        table: dict[str, Language] | None = None,
        *,
        compile_cache: CompileCache | None = None,
        build: BuildSettings | None = None,
    ) -> None:
        self.languages = table if table is not None else languages()
        self.compile_cache = compile_cache if compile_cache is not None else CompileCache()
        self.build_settings = build if build is not None else BuildSettings()

    def fences(self, spec: CodeSpec) -> tuple[str, ...]:
        language = self.languages.get(spec.language)
        return language.fences if language else (spec.language,)

    def deadline_s(self, spec: CodeSpec) -> float:
        runs = len(spec.tests) if spec.tests is not None else 1
        # Per run: the limit, plus the sandbox's start and teardown; a build and a checker's
        # build and runs on top.
        deadline = runs * (spec.time_limit_s + 2.0) + 5.0
        builds = [self.languages.get(spec.language)]
        if spec.checker is not None:
            deadline += runs * (spec.checker.time_limit_s + 2.0) + 5.0
            builds.append(self.languages.get(spec.checker.language))
        for language in builds:
            if language is not None and language.compiled:
                deadline += self.build_settings.time_s + 15.0
        return deadline

    def check(self, spec: CodeSpec, sandbox: Sandbox) -> str | None:
        wanted = [("", spec.language)]
        if spec.checker is not None:
            wanted.append(("checker: ", spec.checker.language))
        for what, name in wanted:
            language = self.languages.get(name)
            if language is None:
                known = ", ".join(sorted(self.languages))
                return f"{what}language {name!r} is not in this deployment's table ({known})"
            reason = self._language_reason(language, sandbox)
            if reason is not None:
                return what + reason
        if spec.entry_point is not None and (reason := isolated.unavailable(spec)):
            return reason
        return sandbox.unavailable_reason()

    @staticmethod
    def _language_reason(language: Language, sandbox: Sandbox) -> str | None:
        if language.unavailable:
            return f"{language.name}: {language.unavailable}"
        missing = [tool for tool in language.tools if not sandbox.has_tool(tool)]
        if missing:
            needs = f" (Debian: {' '.join(language.packages)})" if language.packages else ""
            return f"{language.name}: toolchain missing in the sandbox: {', '.join(missing)}{needs}"
        return None

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        """Each language: whether its toolchain is here, and its version (the version commands
        run once per process: blocking the first time, so called off the event loop)."""
        reasons = {n: self._language_reason(lang, sandbox) for n, lang in self.languages.items()}
        present = [lang for n, lang in self.languages.items() if reasons[n] is None]
        versions = toolchain_versions(present, SANDBOX_PATH)
        table: dict[str, Any] = {}
        for name, lang in sorted(self.languages.items()):
            entry: dict[str, Any] = {
                "available": reasons[name] is None,
                "version": versions.get(name),
                "compiled": lang.compiled,
                "tools": list(lang.tools),
                "packages": list(lang.packages),
            }
            if reasons[name] is not None:
                entry["reason"] = reasons[name]
            table[name] = entry
        cache = self.compile_cache
        return {
            "languages": table,
            "compile_cache": {
                "entries": cache.entries,
                "bytes": cache.bytes,
                "max_bytes": cache.max_bytes,
                "builds": cache.builds,
                "hits": cache.hits,
            },
        }

    def _limits(self, spec: CodeSpec, language: Language) -> Limits:
        extra = language.address_space_mb
        return Limits(
            wall_s=spec.time_limit_s,
            memory_mb=spec.memory_mb,
            address_space_mb=spec.memory_mb + extra if extra else None,
            file_mb=FILE_MB,
            output_bytes=OUTPUT_BYTES,
        )

    async def verify(self, payload: str, spec: CodeSpec, sandbox: Sandbox) -> Verdict:
        verdict = await self._verify_once(payload, spec, sandbox)
        if verdict.cacheable or verdict.status is Status.PASSED:
            return verdict
        # A run was killed from outside its own limits (SIGKILL where no memory cgroup says
        # why, an OOM kill before its cap: the host short of memory, an operator, a killed
        # warm worker; tests/reliability/test_faults.py): run once more, and judge by that.
        # A program that kills itself so is judged the same the second time.
        log.info("code: a run was killed from outside its limits; running the item again")
        return await self._verify_once(payload, spec, sandbox)

    async def _verify_once(self, payload: str, spec: CodeSpec, sandbox: Sandbox) -> Verdict:
        language = self.languages[spec.language]
        limits = self._limits(spec, language)
        if spec.test_code is not None and spec.entry_point is not None:
            return await isolated.verify(payload, spec, language, limits, sandbox)
        if spec.test_code is not None:
            return await self._run_test_code(payload, spec, language, limits, sandbox)
        return await self._run_io_tests(payload, spec, language, limits, sandbox)

    async def _build(
        self, program: Program, sandbox: Sandbox
    ) -> tuple[Built | None, dict[str, Any], Verdict | None]:
        """The program's build (`None` for interpreted languages), what `details` says of it,
        and the verdict if it does not compile."""
        if not program.language.compiled:
            return None, {}, None
        built, cached = await build(sandbox, self.compile_cache, program, self.build_settings)
        details: dict[str, Any] = {"build": {"cached": cached}}
        if built.error is None:
            return built, details, None
        feedback = clip(f"compile error\n{_head(built.error)}")
        return built, details, Verdict(Status.COMPILE_ERROR, 0.0, feedback, details)

    async def _run_test_code(
        self, payload: str, spec: CodeSpec, language: Language, limits: Limits, sandbox: Sandbox
    ) -> Verdict:
        assert spec.test_code is not None
        # No processes or threads: a program that may fork can search the tests' answers
        # (each child tries a value; the one that survives the asserts prints the token).
        # Runtimes that start threads of their own (JVM, Go, Node, Mono) keep their process
        # limit instead.
        if not language.spawns:
            limits = replace(limits, processes=1)
        try:
            program = test_code_program(
                language, payload, spec.test_code, build_memory_mb=self.build_settings.memory_mb
            )
        except TestCodePlacementError as exc:
            return Verdict(Status.INVALID_SPEC, None, str(exc))
        built, details, failed = await self._build(program, sandbox)
        if failed is not None:
            return failed
        argv = program.run_argv(spec.memory_mb, test_code=True)
        if program.reads_stdin:  # no file for the program to read its tests or token from
            job = MultiJob(argv=argv, runs=(Run(stdin=program.source.encode(), limits=limits),))
        else:
            job = run_job(program, built, [Run(limits=limits)], argv)
        run = await self._only_run(job, sandbox)
        if language.stdin_frame is not None and program.reads_stdin:
            run = replace(
                run, stderr=_with_source(run.stderr, language.stdin_frame, program.source)
            )
        status, why = classify(run, language, limits)
        said = run.stdout + run.stderr  # Go's builtin println writes the token on stderr
        if status is Status.PASSED and program.token and program.token.encode() not in said:
            status, why = Status.FAILED, "the program exited (status 0) before the test code ran"
        stderr = _excerpt(run.stderr.decode(errors="replace"))
        # Also on exit status 0: rackunit's failed checks print and go on.
        if status in (Status.PASSED, Status.RUNTIME_ERROR) and _matches(
            language.assertion_error, stderr
        ):
            status, why = Status.FAILED, "a test assertion failed\n" + _tail(run.stderr)
        detail: dict[str, Any] = {"passed": status is Status.PASSED, **_times(run)}
        details["mode"] = "in_process"
        details["tests"] = [detail]
        if status is Status.PASSED:
            return Verdict(Status.PASSED, 1.0, "test code passed", details)
        detail["status"] = status.value
        return Verdict(status, 0.0, clip(why), details, cacheable=not run.host_pressure)

    @staticmethod
    async def _only_run(job: MultiJob, sandbox: Sandbox) -> RunResult:
        run = None
        async with contextlib.aclosing(sandbox.run_many(job)) as steps:
            async for step in steps:
                if step.kind == "build" and not step.result.ok:
                    raise SandboxError("the program's files could not be made runnable")
                if step.kind == "run":
                    run = step.result
        if run is None:
            raise SandboxError("the sandbox reported no run")
        return run

    async def _run_io_tests(
        self, payload: str, spec: CodeSpec, language: Language, limits: Limits, sandbox: Sandbox
    ) -> Verdict:
        assert spec.tests is not None
        total = len(spec.tests)
        program = io_program(language, payload, build_memory_mb=self.build_settings.memory_mb)
        built, details, failed = await self._build(program, sandbox)
        if failed is not None:
            return failed
        results: list[dict[str, Any]] = []
        outputs: dict[int, bytes] = {}  # for the checker: outputs of runs that exited 0
        first_failure: tuple[Status, int, str] | None = None
        cacheable = [True]  # False once a failed run may have died of the host's shortage
        # Every test in one sandbox start; the runs come back one by one, and leaving the loop
        # stops the rest. The expected outputs stay here.
        runs = [Run(stdin=test.stdin.encode(), limits=limits) for test in spec.tests]
        job = run_job(program, built, runs, program.run_argv(spec.memory_mb))
        async with contextlib.aclosing(sandbox.run_many(job)) as steps:
            async for step in steps:
                if step.kind == "build":
                    if not step.result.ok:
                        raise SandboxError("the program's files could not be made runnable")
                    continue
                stop = await self._judge_io_step(
                    step, spec, language, limits, results, outputs, cacheable
                )
                if stop is not None and first_failure is None:
                    first_failure = stop
                    if spec.stops_on_fail or stop[0] is Status.COMPILE_ERROR:
                        break
        if spec.checker is not None and outputs:
            try:
                rejected = await self._check(spec, sandbox, results, outputs)
            except CheckerError as exc:
                return Verdict(Status.INVALID_SPEC, None, clip(f"checker: {exc}"), details)
            if rejected is not None and (first_failure is None or rejected[1] < first_failure[1]):
                first_failure = rejected
            if first_failure is not None and spec.stops_on_fail:
                del results[first_failure[1] :]
        n_passed = sum(r["passed"] for r in results)
        details.update({"tests": results, "passed": n_passed, "total": total})
        if first_failure is None:
            return Verdict(Status.PASSED, 1.0, f"{total}/{total} tests passed", details)
        reward = n_passed / total if spec.partial_credit else 0.0
        status, number, why = first_failure
        if status is Status.COMPILE_ERROR:
            return Verdict(status, 0.0, clip(f"compile error\n{why}"), details)
        feedback = f"{n_passed}/{total} tests passed; test {number}/{total}: {why}"
        return Verdict(status, reward, clip(feedback), details, cacheable=cacheable[0])

    async def _judge_io_step(
        self,
        step: StepResult,
        spec: CodeSpec,
        language: Language,
        limits: Limits,
        results: list[dict[str, Any]],
        outputs: dict[int, bytes],
        cacheable: list[bool],
    ) -> tuple[Status, int, str] | None:
        """Judge one run of an I/O job into `results`; the failure, if it failed. With a
        checker, a run that exits 0 is judged later, by the checker. `cacheable[0]` turns
        False when a failed run may have died of the host's memory shortage."""
        assert spec.tests is not None
        run = step.result
        number, test = step.index + 1, spec.tests[step.index]
        if len(run.stdout) + len(run.stderr) + len(test.expected_stdout) > _INLINE:
            status, why = await asyncio.to_thread(_judge_run, run, test, spec, language, limits)
        else:
            status, why = _judge_run(run, test, spec, language, limits)
        if status is Status.PASSED and spec.checker is not None:
            outputs[number] = run.stdout
        passed = status is Status.PASSED
        cacheable[0] = cacheable[0] and (passed or not run.host_pressure)
        entry: dict[str, Any] = {"passed": passed, **_times(run)}
        if not passed:
            entry["status"] = status.value
        results.append(entry)
        return None if passed else (status, number, why)

    async def _check(
        self,
        spec: CodeSpec,
        sandbox: Sandbox,
        results: list[dict[str, Any]],
        outputs: dict[int, bytes],
    ) -> tuple[Status, int, str] | None:
        """Let the spec's checker judge the outputs; update `results`; its first rejection."""
        assert spec.checker is not None
        assert spec.tests is not None
        numbers = sorted(outputs)
        cases = [
            Case(spec.tests[n - 1].stdin, outputs[n], spec.tests[n - 1].expected_stdout)
            for n in numbers
        ]
        language = self.languages[spec.checker.language]
        decisions = await decide(
            sandbox, self.compile_cache, self.build_settings, spec.checker, language, cases
        )
        for number, decision in zip(numbers, decisions, strict=True):
            entry = results[number - 1]
            if not decision.accepted:
                entry.update(passed=False, status=Status.FAILED.value)
                entry["checker"] = escape_controls(decision.message[:_SHOWN])
        for number in numbers:
            entry = results[number - 1]
            if not entry["passed"]:
                test = spec.tests[number - 1]
                said = entry.get("checker") or "rejected"
                why = f"wrong answer (checker: {said})\ninput: {_show(test.stdin)}"
                return Status.FAILED, number, why
        return None
