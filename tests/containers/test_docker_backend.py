"""The docker backend on a real container engine: the sandbox contract's hostile programs, the
code verifier through it, and the warm containers' hygiene between jobs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest

from assay.sandboxes import Job, Limits, RunResult
from assay.sandboxes.base import Build, MultiJob, Run
from assay.sandboxes.docker import DockerSandbox
from assay.verifiers.base import Status
from assay.verifiers.code import classify
from tests.containers.engine import build
from tests.sandboxes.test_contract import HOSTILE, LIMITS, PYTHON, SLACK_S, Hostile

pytest.importorskip("docker")

# What a container shows differs from bwrap's view in its own, harmless ways.
_IN_A_CONTAINER = {
    # A container's root holds Debian's usual folders (read-only); what matters is that no
    # host folder and no variable of the service shows.
    "reads_host_home_and_env": None,
    # One job at a time per container: the container's cgroup is the job's, and its OOM
    # killer stops the children; on a loaded machine the kills may outlast the deadline.
    "forks_to_multiply_its_memory": None,
}


@pytest.fixture(scope="module")
def python_image(engine_url: str) -> str:
    return build(engine_url, "toolchain", tag="localhost/assay-python:test")


@pytest.fixture
async def box(engine_url: str, python_image: str) -> AsyncIterator[DockerSandbox]:
    sandbox = DockerSandbox(
        [python_image],
        base_url=engine_url,
        containers_per_image=1,
        container_memory_mb=320,
        container_pids=48,
    )
    assert await sandbox.check() is None
    yield sandbox
    await sandbox.close()


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
async def test_hostile_program(box: DockerSandbox, case: Hostile) -> None:
    run: RunResult = await box.run(
        Job(argv=PYTHON.run, files={PYTHON.file: case.code}, limits=LIMITS)
    )
    status, why = classify(run, PYTHON, LIMITS)
    if case.name == "forks_to_multiply_its_memory":
        assert run.oom_killed, run
    else:
        assert status is case.status, (why, run)
    if case.stdout is not None and case.name not in _IN_A_CONTAINER:
        assert run.stdout == case.stdout
    assert run.time_s < LIMITS.wall_s + SLACK_S
    # Whatever it did, the next job on the same warm container finds it as new.
    after = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: _LOOK}, limits=LIMITS))
    assert after.stdout == b"[] [] []\n1\n", after


_LOOK = (
    "import os\n"
    "print([n for n in os.listdir('/work') if n != 'main.py'], "
    "os.listdir('/tmp'), os.listdir('/dev/shm'))\n"
    "print(len([p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]))\n"
)


async def test_host_and_service_stay_unseen(box: DockerSandbox) -> None:
    code = (
        "import os\nprint(sorted(k for k in os.environ if k not in "
        "('PATH', 'HOME', 'TMPDIR', 'LANG', 'PWD', 'LC_CTYPE')))\n"
        "print([p for p in ('/root/.ssh', '/work/main', '/run/podman') if os.path.exists(p)])\n"
        "print(os.getuid() != 0)\n"
    )
    run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=LIMITS))
    assert run.stdout == b"[]\n[]\nTrue\n", run


async def test_a_job_cannot_trace_or_kill_the_runner(box: DockerSandbox) -> None:
    code = (
        "import os, signal\n"
        "try:\n    open('/proc/1/mem', 'rb').read(1)\n    print('read')\n"
        "except OSError:\n    print('no')\n"
        "try:\n    os.kill(1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "print('done')\n"
    )
    run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=LIMITS))
    assert run.stdout == b"no\ndone\n", run
    again = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: "print(2)"}, limits=LIMITS))
    assert again.stdout == b"2\n"


async def test_a_container_that_is_not_clean_is_replaced(box: DockerSandbox) -> None:
    # A directory the runner cannot empty (the job made it unwritable and filled it).
    code = "print(1)\n"
    first = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=LIMITS))
    assert first.stdout == b"1\n"
    started = box._pool.stats.started
    leave = (
        "import os, sysv_ipc\n"
        if False
        else "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "print(libc.shmget(0, 1 << 20, 0o1600) >= 0)\n"  # IPC_CREAT|0600: a SysV segment
    )
    run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: leave}, limits=LIMITS))
    assert run.stdout in (b"True\n", b"False\n")
    await box.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=LIMITS))
    if run.stdout == b"True\n":  # the segment outlives the job: that container went away
        assert box._pool.stats.started == started + 1


async def test_jobs_run_concurrently_in_several_containers(
    engine_url: str, python_image: str
) -> None:
    sandbox = DockerSandbox([python_image], base_url=engine_url, containers_per_image=3)
    try:
        limits = dataclasses.replace(LIMITS, wall_s=10)
        jobs = [
            Job(argv=PYTHON.run, files={PYTHON.file: f"print({i} * 2)"}, limits=limits)
            for i in range(12)
        ]
        runs = await asyncio.gather(*(sandbox.run(j) for j in jobs))
        assert [r.stdout for r in runs] == [f"{i * 2}\n".encode() for i in range(12)]
        assert sandbox._pool.stats.started <= 3
    finally:
        await sandbox.close()


async def test_a_missing_tool_is_unavailable(box: DockerSandbox) -> None:
    assert box.has_tool("python3")
    assert not box.has_tool("ghc")
    from assay.sandboxes.errors import SandboxUnavailable

    with pytest.raises(SandboxUnavailable):
        await box.run(Job(argv=("ghc", "x.hs"), limits=Limits()))


async def test_a_build_and_its_runs_share_one_container(box: DockerSandbox) -> None:
    build = Build(
        argv=(
            "python3",
            "-c",
            "open('built.py', 'w').write('import os\\nprint(input(), "
            "sorted(os.listdir()))\\nopen(\\'mine\\', \\'w\\').write(\\'x\\')\\n')",
        ),
        limits=LIMITS,
    )
    job = MultiJob(
        argv=("python3", "built.py"),
        build=build,
        runs=tuple(Run(stdin=f"{i}\n".encode(), limits=LIMITS) for i in range(3)),
    )
    steps = [step async for step in box.run_many(job)]
    started = box._pool.stats.started
    assert [s.kind for s in steps] == ["build", "run", "run", "run"]
    # Each run sees the build's output, and nothing an earlier run wrote.
    assert [s.result.stdout for s in steps[1:]] == [
        f"{i} ['built.py']\n".encode() for i in range(3)
    ]
    async with contextlib.aclosing(box.run_many(job)) as early:
        async for step in early:
            if step.kind == "run":
                break  # a caller that stops at the first failure
    after = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: _LOOK}, limits=LIMITS))
    assert after.stdout == b"[] [] []\n1\n", after
    assert box._pool.stats.started == started  # the same warm container all along


async def test_a_failed_build_ends_the_item(box: DockerSandbox) -> None:
    job = MultiJob(
        argv=("python3", "built.py"),
        build=Build(argv=("python3", "-c", "raise SystemExit(3)"), limits=LIMITS),
        runs=(Run(limits=LIMITS),),
    )
    steps = [step async for step in box.run_many(job)]
    assert [(s.kind, s.result.exit_code) for s in steps] == [("build", 3)]


@pytest.fixture(scope="module")
def native_image(engine_url: str) -> str:
    return build(engine_url, "toolchain", tag="localhost/assay-native:test", packages=NATIVE)


NATIVE = "gcc g++ libc6-dev"  # compose.yaml's lang-native, less what these tests do not run


@pytest.mark.parametrize("language", ["python", "c", "cpp"])
async def test_the_code_verifiers_table_through_containers(
    engine_url: str, python_image: str, native_image: str, language: str
) -> None:
    """The language tests' table (right, wrong, compile error, crash, time-out, memory hog,
    test code) through the docker backend: compiled once, run in warm containers."""
    from assay.clients.schema import CodeSpec
    from assay.verifiers.code import CodeVerifier
    from tests.verifiers.language_programs import PROGRAMS

    sandbox = DockerSandbox([python_image, native_image], base_url=engine_url)
    try:
        assert await sandbox.check() is None
        verifier = CodeVerifier()
        programs = PROGRAMS[language]
        sums = [{"stdin": "sum 1 2\n", "expected_stdout": "3\n"}]
        cases: dict[str, tuple[str, dict[str, object], Status]] = {
            "correct": (programs["main"], {"tests": sums}, Status.PASSED),
            "wrong": (programs["wrong"], {"tests": sums}, Status.FAILED),
            "compile_error": (programs["broken"], {"tests": sums}, Status.COMPILE_ERROR),
            "crash": (
                programs["main"],
                {"tests": [{"stdin": "crash\n", "expected_stdout": ""}]},
                Status.RUNTIME_ERROR,
            ),
            "loop": (
                programs["main"],
                {"tests": [{"stdin": "loop\n", "expected_stdout": ""}], "time_limit_s": 2},
                Status.TIMEOUT,
            ),
            "hog": (
                programs["main"],
                {"tests": [{"stdin": "hog\n", "expected_stdout": ""}], "memory_mb": 200},
                Status.MEMORY_LIMIT,
            ),
            "asserts": (programs["add_ok"], {"test_code": programs["test_code"]}, Status.PASSED),
        }
        for name, (payload, spec, expected) in cases.items():
            parsed = CodeSpec.model_validate({"language": language, "time_limit_s": 10, **spec})
            assert verifier.check(parsed, sandbox) is None
            verdict = await verifier.verify(payload, parsed, sandbox)
            assert verdict.status is expected, (name, verdict.feedback)
    finally:
        await sandbox.close()
