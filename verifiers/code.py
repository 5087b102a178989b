"""The `code` verifier: programs judged by running their tests in the sandbox.

Two kinds of test (API.md, code spec):
- `tests`: each test runs the program on its `stdin`, and its stdout must match
  `expected_stdout` under `compare` (the convention of competitive-programming RL sets such as
  APPS, CodeContests, TACO).
- `test_code`: the test code is appended to the program and the whole must exit 0
  (HumanEval, MBPP, MultiPL-E), having run to the end: a random token printed after the test
  code must appear, so that a program which exits early with status 0 does not pass. Where
  the language table allows, the program is fed on stdin, so that no file holds the tests or
  the token for the program to read, and the token's print vanishes with the asserts under
  `python -O`. The program may not start processes or threads: forked children could try
  answers against the asserts until one survives. The tests still run in the program's own
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
import re
import secrets
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import BaseModel

from assay.clients.schema import CodeSpec, IOTest
from assay.sandboxes.base import Limits, MultiJob, Run, RunResult, Sandbox, StepResult
from assay.sandboxes.languages import Language, languages
from assay.verifiers import isolated
from assay.verifiers.base import Status, Verdict, clip, escape_controls
from assay.verifiers.compare import outputs_match

# libc's words for a write past RLIMIT_FSIZE or a full work dir, whatever the language.
_FILE_LIMIT = re.compile(r"File too large|No space left on device|EFBIG|ENOSPC")
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
    """A run's wall-clock time and, where measured, its CPU time, for `details`."""
    times: dict[str, Any] = {"time_ms": round(run.time_s * 1000, 1)}
    if run.cpu_time_s is not None:
        times["cpu_ms"] = round(run.cpu_time_s * 1000, 1)
    return times


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
    if run.exit_code != 0 and (run.oom_killed or _matches(language.memory_error, stderr)):
        return Status.MEMORY_LIMIT, f"memory limit exceeded ({limits.memory_mb} MB)"
    if run.exit_code == 0:
        return Status.PASSED, ""
    if _matches(language.compile_error, stderr):
        return Status.COMPILE_ERROR, _tail(run.stderr)
    how = f"killed by {run.signal_name}" if run.signal else f"exit status {run.exit_code}"
    tail = _tail(run.stderr)
    return Status.RUNTIME_ERROR, f"{how}\n{tail}" if tail else how


# Runs whose output is larger than this are judged (decoded, classified, compared) in a
# worker thread: it is linear work, but a megabyte of it costs the event loop milliseconds.
_INLINE = 64 << 10


def _judge_run(
    run: RunResult, test: IOTest, spec: CodeSpec, language: Language, limits: Limits
) -> tuple[Status, str]:
    """One I/O test's status and why."""
    status, why = classify(run, language, limits)
    if status is Status.PASSED:
        actual = run.stdout.decode(errors="replace")
        if not outputs_match(actual, test.expected_stdout, spec.compare, spec.float_tol):
            status = Status.FAILED
            why = (
                f"wrong answer\ninput: {_show(test.stdin)}\n"
                f"expected: {_show(test.expected_stdout)}\nactual: {_show(actual)}"
            )
    return status, why


def _judge_test_code(
    run: RunResult, language: Language, limits: Limits, program: str, token: str | None
) -> tuple[Status, str]:
    """A test_code run's status and why; `token` must have been printed, if given."""
    if language.stdin_frame is not None and language.test_code_run:
        run = replace(run, stderr=_with_source(run.stderr, language.stdin_frame, program))
    status, why = classify(run, language, limits)
    if status is Status.PASSED and token is not None and token.encode() not in run.stdout:
        status, why = Status.FAILED, "the program exited (status 0) before the test code ran"
    stderr = _excerpt(run.stderr.decode(errors="replace"))
    if status is Status.RUNTIME_ERROR and _matches(language.assertion_error, stderr):
        status, why = Status.FAILED, "a test assertion failed\n" + _tail(run.stderr)
    return status, why


class CodeVerifier:
    """Runs programs against I/O tests or appended test code."""

    name: ClassVar[str] = "code"
    spec_model: ClassVar[type[BaseModel]] = CodeSpec

    def __init__(self, table: dict[str, Language] | None = None) -> None:
        self.languages = table if table is not None else languages()

    def fences(self, spec: CodeSpec) -> tuple[str, ...]:
        language = self.languages.get(spec.language)
        return language.fences if language else (spec.language,)

    def deadline_s(self, spec: CodeSpec) -> float:
        runs = len(spec.tests) if spec.tests is not None else 1
        # Per run: the limit, plus the sandbox's start and teardown.
        return runs * (spec.time_limit_s + 2.0) + 5.0

    def check(self, spec: CodeSpec, sandbox: Sandbox) -> str | None:
        language = self.languages.get(spec.language)
        if language is None:
            known = ", ".join(sorted(self.languages))
            return f"language {spec.language!r} is not in this deployment's table ({known})"
        missing = [tool for tool in language.tools if not sandbox.has_tool(tool)]
        if missing:
            return f"{spec.language}: toolchain missing in the sandbox: {', '.join(missing)}"
        if spec.entry_point is not None and (reason := isolated.unavailable(spec)):
            return reason
        return sandbox.unavailable_reason()

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        return {
            "languages": {
                name: {
                    "available": all(sandbox.has_tool(t) for t in lang.tools),
                    "tools": list(lang.tools),
                }
                for name, lang in sorted(self.languages.items())
            }
        }

    def _limits(self, spec: CodeSpec) -> Limits:
        return Limits(
            wall_s=spec.time_limit_s,
            memory_mb=spec.memory_mb,
            file_mb=FILE_MB,
            output_bytes=OUTPUT_BYTES,
        )

    async def verify(self, payload: str, spec: CodeSpec, sandbox: Sandbox) -> Verdict:
        language = self.languages[spec.language]
        limits = self._limits(spec)
        if spec.test_code is not None and spec.entry_point is not None:
            return await isolated.verify(payload, spec, language, limits, sandbox)
        if spec.test_code is not None:
            return await self._run_test_code(payload, spec, language, limits, sandbox)
        return await self._run_io_tests(payload, spec, language, limits, sandbox)

    async def _run_test_code(
        self, payload: str, spec: CodeSpec, language: Language, limits: Limits, sandbox: Sandbox
    ) -> Verdict:
        assert spec.test_code is not None
        # No processes or threads: a program that may fork can search the tests' answers
        # (each child tries a value; the one that survives the asserts prints the token).
        limits = replace(limits, processes=1)
        token = secrets.token_hex(16)
        end = language.test_code_end.format(token=token)
        program = payload.rstrip("\n") + language.test_code_join + spec.test_code + end
        if language.test_code_run:  # no file for the program to read its tests or token from
            run_one = Run(stdin=program.encode(), limits=limits)
            job = MultiJob(argv=language.test_code_run, runs=(run_one,))
        else:
            run_one = Run(limits=limits)
            job = MultiJob(argv=language.run, files={language.file: program}, runs=(run_one,))
        # Through the runner (`run_many`), which reports the wait status itself: a plain run's
        # bwrap reports a signal N as exit status 128+N, so `sys.exit(152)` read as SIGXCPU.
        run = await isolated.only_run(sandbox, job)
        check = (run, language, limits, program, token if end else None)
        if len(run.stdout) + len(run.stderr) > _INLINE:
            status, why = await asyncio.to_thread(_judge_test_code, *check)
        else:
            status, why = _judge_test_code(*check)
        detail: dict[str, Any] = {"passed": status is Status.PASSED, **_times(run)}
        details: dict[str, Any] = {"mode": "in_process", "tests": [detail]}
        if status is Status.PASSED:
            return Verdict(Status.PASSED, 1.0, "test code passed", details)
        detail["status"] = status.value
        return Verdict(status, 0.0, clip(why), details, cacheable=not run.host_pressure)

    async def _run_io_tests(
        self, payload: str, spec: CodeSpec, language: Language, limits: Limits, sandbox: Sandbox
    ) -> Verdict:
        assert spec.tests is not None
        total = len(spec.tests)
        results: list[dict[str, Any]] = []
        first_failure: tuple[Status, int, str] | None = None
        cacheable = [True]  # False once a run may have died of the host's memory shortage
        # Every test in one sandbox start; the runs come back one by one, and leaving the loop
        # stops the rest. The expected outputs stay here.
        job = MultiJob(
            argv=language.run,
            files={language.file: payload},
            runs=tuple(Run(stdin=test.stdin.encode(), limits=limits) for test in spec.tests),
        )
        async with contextlib.aclosing(sandbox.run_many(job)) as steps:
            async for step in steps:
                stop = await self._judge_io_step(step, spec, language, limits, results, cacheable)
                if stop is not None and first_failure is None:
                    first_failure = stop
                    if spec.stops_on_fail or stop[0] is Status.COMPILE_ERROR:
                        break
        n_passed = sum(r["passed"] for r in results)
        details = {"tests": results, "passed": n_passed, "total": total}
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
        cacheable: list[bool],
    ) -> tuple[Status, int, str] | None:
        """Judge one step of an I/O job into `results`; the failure, if it failed.
        `cacheable[0]` turns False when a failed run may have died of the host's shortage."""
        assert spec.tests is not None
        run = step.result
        if step.kind == "build":
            status, why = classify(run, language, limits)
            if status is Status.PASSED:
                return None
            cacheable[0] = cacheable[0] and not run.host_pressure
            return Status.COMPILE_ERROR, 0, why
        number, test = step.index + 1, spec.tests[step.index]
        if len(run.stdout) + len(run.stderr) + len(test.expected_stdout) > _INLINE:
            status, why = await asyncio.to_thread(_judge_run, run, test, spec, language, limits)
        else:
            status, why = _judge_run(run, test, spec, language, limits)
        passed = status is Status.PASSED
        cacheable[0] = cacheable[0] and (passed or not run.host_pressure)
        entry: dict[str, Any] = {"passed": passed, **_times(run)}
        if not passed:
            entry["status"] = status.value
        results.append(entry)
        return None if passed else (status, number, why)
