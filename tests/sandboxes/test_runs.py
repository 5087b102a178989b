"""Multi-run jobs (`Sandbox.run_many`): a build, then many runs, in one sandbox start."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assay.sandboxes import Build, Limits, LocalSandbox, MultiJob, Run, StepResult
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

PY = ("python3", "-I", "-B", "main.py")
UID_COUNT = 20
UID_BASE = 72000 + UID_COUNT * random.randrange(100)  # a range of its own, drawn at random


@pytest.fixture(params=["bwrap", "unsandboxed"])
async def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    box = LocalSandbox(
        isolation=request.param, uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path / "uids"
    )
    yield box
    await box.close()


async def _all(box: LocalSandbox, job: MultiJob) -> list[StepResult]:
    async with contextlib.aclosing(box.run_many(job)) as steps:
        return [step async for step in steps]


async def test_build_then_runs_each_with_its_stdin(sandbox: LocalSandbox) -> None:
    code = "import sys\nprint(sys.stdin.read().upper(), open('built').read())\n"
    job = MultiJob(
        argv=PY,
        files={"main.py": code},
        build=Build(argv=("python3", "-c", "open('built', 'w').write('b')")),
        runs=tuple(Run(stdin=f"t{i}".encode()) for i in range(3)),
    )
    steps = await _all(sandbox, job)
    assert [(s.kind, s.index) for s in steps] == [("build", 0), ("run", 0), ("run", 1), ("run", 2)]
    assert [s.result.stdout for s in steps[1:]] == [b"T0 b\n", b"T1 b\n", b"T2 b\n"]
    if sandbox.isolation == "bwrap":
        assert all(s.result.cpu_time_s is not None for s in steps)


async def test_a_failed_build_ends_the_sequence(sandbox: LocalSandbox) -> None:
    job = MultiJob(
        argv=PY,
        files={"main.py": "print(1)"},
        build=Build(argv=("python3", "-c", "raise SystemExit(3)")),
        runs=(Run(), Run()),
    )
    steps = await _all(sandbox, job)
    assert [(s.kind, s.result.exit_code) for s in steps] == [("build", 3)]


@pytest.mark.parametrize("sandbox", ["bwrap"], indirect=True)
async def test_each_run_starts_from_the_builds_files_alone(sandbox: LocalSandbox) -> None:
    code = (
        "import os\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')), os.getpid())\n"
        "open('mine', 'w').write('x')\nopen('/tmp/mine', 'w').write('x')\n"
        "try:\n    open('main.py', 'w').write('')\nexcept OSError:\n    print('read-only')\n"
    )
    job = MultiJob(argv=PY, files={"main.py": code}, runs=(Run(), Run()))
    steps = await _all(sandbox, job)
    expected = b"['main.py'] [] 2\nread-only\n"
    assert [s.result.stdout for s in steps] == [expected, expected]


@pytest.mark.parametrize("sandbox", ["bwrap"], indirect=True)
async def test_wall_and_cpu_limits_are_separate(sandbox: LocalSandbox) -> None:
    sleeps = Run(stdin=b"sleep", limits=Limits(wall_s=1.0, cpu_s=10))
    spins = Run(stdin=b"spin", limits=Limits(wall_s=20.0, cpu_s=1))
    code = (
        "import sys, time\nif sys.stdin.read() == 'sleep':\n    time.sleep(30)\n"
        "else:\n    while True:\n        pass\n"
    )
    job = MultiJob(argv=PY, files={"main.py": code}, runs=(sleeps, spins))
    slept, spun = (s.result for s in await _all(sandbox, job))
    assert slept.timed_out
    assert not slept.cpu_timed_out
    assert spun.timed_out
    assert spun.cpu_timed_out
    assert spun.cpu_time_s is not None
    assert spun.cpu_time_s > 0.5  # rusage samples; the kernel killed it at 1 s of its own count


@pytest.mark.parametrize("sandbox", ["bwrap"], indirect=True)
async def test_stopping_early_kills_the_sequence(sandbox: LocalSandbox, tmp_path: Path) -> None:
    code = "import time\ntime.sleep(30)\n"
    job = MultiJob(
        argv=PY,
        files={"main.py": code},
        runs=tuple(Run(limits=Limits(wall_s=0.5)) for _ in range(50)),
    )
    async with contextlib.aclosing(sandbox.run_many(job)) as steps:
        async for step in steps:
            assert step.result.timed_out
            break
    # No process of the job's uid range is left, when the service can give jobs uids.
    if os.geteuid() == 0:
        from tests.sandboxes.test_contract import _gone

        assert await _gone(UID_BASE, UID_COUNT) == []


@pytest.mark.parametrize("compiled", [True, False], ids=["marshalled", "source"])
async def test_the_runner_runs_compiled_or_from_source(
    compiled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner goes into a sandbox compiled by the sandbox's interpreter (marshalled), or,
    where that interpreter cannot compile it here, as source: a job's runs and a warm
    worker's programs run either way."""
    from assay.sandboxes import Job, steps

    code = steps.runner_code(LocalSandbox()._python)
    assert code is not None  # this machine's interpreter compiles it
    assert steps.runner_code("/nonexistent/python3") is None
    if not compiled:
        monkeypatch.setattr(steps, "runner_code", lambda python: None)
    box = LocalSandbox(
        uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path / "uids", warm_python=1
    )
    try:
        job = MultiJob(
            argv=("python3", "-I", "-B", "-c", "import sys; print(sys.stdin.read()[::-1])"),
            runs=(Run(stdin=b"ab"), Run(stdin=b"cd")),
        )
        assert [s.result.stdout for s in await _all(box, job)] == [b"ba\n", b"dc\n"]
        warm = Job(argv=PY, files={"main.py": "print(__name__, 6 * 7)\n"})
        assert (await box.run(warm)).stdout == b"__main__ 42\n"
        assert box._warm is not None
        assert box._warm.pool.stats.started == 1
    finally:
        await box.close()
