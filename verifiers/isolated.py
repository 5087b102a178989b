"""`test_code` items with an `entry_point`: the test code runs apart from the program.

The in-process mode appends the test code to the program, so the program can attack the
asserts from inside (an `__eq__` that always holds, a tracer that skips them, a patched
builtin, the end token read from its own memory). Here the sandbox job is a trusted harness
(`harness_main.py`, shipped with this package) that starts the program in a second process,
a fresh interpreter under a no-fork seccomp filter, and calls its entry points across a pipe
with plain data only. The harness is non-dumpable (the program, the same uid, cannot ptrace it
or read its memory or fds), holds the test code and a nonce that never enter the program's
process, and prints its verdict prefixed with the nonce on its own stdout, which the program
cannot write to (its stdout and stderr are /dev/null). The verdict is read from that line
only: never from the program's output, exit status or files. A job that ends without it (the
time limit, memory, the harness killed) scores 0.

Python only for now: the harness is Python and so is the program's side. Another language
could follow with a small server of its own that reads the tagged JSON calls and answers
(README, "Code rewards that cannot be faked").
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any

from assay.clients.schema import CodeSpec
from assay.sandboxes import seccomp
from assay.sandboxes.base import Limits, MultiJob, Run, RunResult, Sandbox
from assay.sandboxes.errors import SandboxError
from assay.sandboxes.languages import Language
from assay.verifiers.base import Status, Verdict, clip, escape_controls

LANGUAGES = ("python",)
HARNESS_FILE = "harness.py"
_ARGV = ("python3", "-I", "-B", HARNESS_FILE)
_STATUSES = {
    "passed": Status.PASSED,
    "failed": Status.FAILED,
    "runtime_error": Status.RUNTIME_ERROR,
    "compile_error": Status.COMPILE_ERROR,
}


@cache
def harness_source() -> str:
    return resources.files("assay.verifiers").joinpath("harness_main.py").read_text("utf-8")


def entry_points(spec: CodeSpec) -> list[str]:
    names = spec.entry_point
    assert names is not None
    return [names] if isinstance(names, str) else list(names)


def unavailable(spec: CodeSpec) -> str | None:
    if spec.language not in LANGUAGES:
        return f"entry_point (isolated test_code) is supported for {', '.join(LANGUAGES)} only"
    return None


def read_verdict(stdout: bytes, nonce: str) -> tuple[Status, str] | None:
    """The harness's verdict line, if the harness printed one."""
    marker = f"\n{nonce} ".encode()
    at = stdout.rfind(marker)
    if at < 0:
        return None
    line = stdout[at + len(marker) :].split(b"\n", 1)[0]
    with contextlib.suppress(ValueError, TypeError):
        status, why = json.loads(line)
        if status in _STATUSES and isinstance(why, str):
            return _STATUSES[status], why
    return None


def judge(run: RunResult, nonce: str, language: Language, limits: Limits) -> tuple[Status, str]:
    from assay.verifiers.code import classify  # code.py imports this module

    found = read_verdict(run.stdout, nonce)
    if found is not None and not run.timed_out:
        return found
    status, why = classify(run, language, limits)
    if status in (Status.PASSED, Status.RUNTIME_ERROR, Status.COMPILE_ERROR):
        how = f"killed by {run.signal_name}" if run.signal else f"exit status {run.exit_code}"
        return Status.RUNTIME_ERROR, f"the test harness ended without a verdict ({how})"
    return status, why


async def only_run(sandbox: Sandbox, job: MultiJob) -> RunResult:
    """The result of a one-run job, through `run_many` (the runner reports the program's wait
    status as such; a plain run's bwrap folds a signal N into exit status 128+N)."""
    async with contextlib.aclosing(sandbox.run_many(job)) as steps:
        async for step in steps:
            return step.result
    raise SandboxError("the sandbox gave no result for the run")


async def verify(
    payload: str, spec: CodeSpec, language: Language, limits: Limits, sandbox: Sandbox
) -> Verdict:
    assert spec.test_code is not None
    nonce = secrets.token_hex(16)
    rules = seccomp.program(processes=False) or b""
    request = {
        "nonce": nonce,
        "program": payload,
        "test_code": spec.test_code,
        "entry_points": entry_points(spec),
        "seccomp": base64.b64encode(rules).decode(),
    }
    # The harness and the program (which itself may start none, by its seccomp filter), and
    # one to spare: RLIMIT_NPROC counts the uid's processes, and bwrap's own is one of them.
    limits = replace(limits, processes=3)
    job = MultiJob(
        argv=_ARGV,
        files={HARNESS_FILE: harness_source()},
        runs=(Run(stdin=json.dumps(request).encode(), limits=limits),),
    )
    run = await only_run(sandbox, job)
    status, why = judge(run, nonce, language, limits)
    detail: dict[str, Any] = {
        "passed": status is Status.PASSED,
        "time_ms": round(run.time_s * 1000, 1),
    }
    details: dict[str, Any] = {"mode": "isolated", "tests": [detail]}
    if status is Status.PASSED:
        return Verdict(Status.PASSED, 1.0, "test code passed", details)
    detail["status"] = status.value
    return Verdict(
        status, 0.0, clip(escape_controls(why)), details, cacheable=not run.host_pressure
    )
