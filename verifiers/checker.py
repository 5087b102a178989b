"""Checkers (special judges): a program of the item's spec decides each test's output.

For problems with many right answers (any valid permutation, a float within the problem's own
tolerance, a constructed object), the spec carries `checker: {language, source}`. It follows
testlib's convention (Codeforces, Polygon, CodeContests): run as `checker INPUT OUTPUT ANSWER`
(the paths of the test's input, the program's output and the expected output), exit status 0
accepts; any other status rejects, and what it printed is the feedback (testlib prints "wrong
answer ..." on stderr). testlib's status 3 ("the checker itself failed"), a crash, a time-out or
a memory limit is the checker's own failure: the item is `invalid_spec`, never a wrong answer.

The checker runs sandboxed like the program, in a sandbox start of its own (the program's
sandbox never holds an expected output), all the item's tests in that one start. A compiled
checker is built once and kept in the compile cache, like a program.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from assay.clients.schema import CheckerSpec
from assay.sandboxes.base import Limits, Run, RunResult, Sandbox
from assay.sandboxes.languages import Language
from assay.verifiers.builds import BuildSettings, build, run_job
from assay.verifiers.compile_cache import CompileCache
from assay.verifiers.programs import io_program

_MESSAGE_BYTES = 1 << 16
_TESTLIB_FAIL = 3


class CheckerError(Exception):
    """The checker could not judge (it does not build, crashed, ran out of time): the item's
    spec is at fault, not the program."""


@dataclass(frozen=True, slots=True)
class Case:
    """One test for the checker: its input, what the program printed, what was expected."""

    stdin: str
    output: bytes
    expected: str


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: bool
    message: str


def limits(checker: CheckerSpec, language: Language) -> Limits:
    extra = language.address_space_mb
    return Limits(
        wall_s=checker.time_limit_s,
        memory_mb=checker.memory_mb,
        address_space_mb=checker.memory_mb + extra if extra else None,
        processes=64,
        file_mb=64,
        output_bytes=_MESSAGE_BYTES,
    )


async def decide(
    sandbox: Sandbox,
    cache: CompileCache,
    settings: BuildSettings,
    checker: CheckerSpec,
    language: Language,
    cases: Sequence[Case],
) -> list[Decision]:
    """The checker's decision on each case, in order. Raises `CheckerError`."""
    program = io_program(
        language, checker.source, build_memory_mb=settings.memory_mb, support=checker.files
    )
    built = None
    if language.compiled:
        built, _ = await build(sandbox, cache, program, settings)
        if built.error is not None:
            head = "\n".join(built.error.decode(errors="replace").splitlines()[:10])
            raise CheckerError(f"the checker does not compile:\n{head}")
    argv = program.run_argv(checker.memory_mb)
    runs = []
    data: dict[str, bytes] = {}
    for number, case in enumerate(cases, start=1):
        names = (f"input.{number}", f"output.{number}", f"answer.{number}")
        contents = (case.stdin.encode(), case.output, case.expected.encode())
        data.update(zip(names, contents, strict=True))
        runs.append(Run(argv=(*argv, *names), limits=limits(checker, language)))
    job = run_job(program, built, runs, argv, extra_files=data)
    results: list[RunResult] = []
    async with contextlib.aclosing(sandbox.run_many(job)) as steps:
        async for step in steps:
            if step.kind == "build":
                if not step.result.ok:
                    raise CheckerError("the checker's files could not be set up")
                continue
            results.append(step.result)
    if len(results) != len(cases):
        raise CheckerError(f"the checker ran {len(results)} of {len(cases)} tests")
    return [_decision(number, result) for number, result in enumerate(results, start=1)]


def _decision(number: int, result: RunResult) -> Decision:
    said = (result.stderr + result.stdout).decode(errors="replace").strip()
    if result.ok:
        return Decision(True, said)
    failed = (
        result.timed_out
        or result.oom_killed
        or result.output_exceeded
        or result.exit_code is None
        or result.exit_code == _TESTLIB_FAIL
    )
    if failed:
        if result.timed_out:
            how = "ran out of time"
        elif result.oom_killed:
            how = "ran out of memory"
        elif result.exit_code is None:
            how = f"was killed by {result.signal_name}"
        else:
            how = f"failed (exit status {result.exit_code})"
        raise CheckerError(f"the checker {how} on test {number}: {said[:500]}")
    return Decision(False, said)
