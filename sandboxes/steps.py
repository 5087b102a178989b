"""The service's side of the runner protocol (`runner.py`): requests out, step results in."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from assay.sandboxes import runner
from assay.sandboxes.base import Limits, MultiJob, RunResult
from assay.sandboxes.errors import SandboxError

log = logging.getLogger(__name__)

# Room the runner (or a warm interpreter) takes in a sandbox's memory cgroup beside the runs.
RUNNER_MB = 64
# Per step, beyond its own wall-clock limit: the runner's own work (namespaces, mounts, reaping).
STEP_SLACK_S = 2.0
START_SLACK_S = 10.0


@cache
def runner_source() -> bytes:
    return resources.files("assay.sandboxes").joinpath("runner.py").read_bytes()


# Run by the sandbox's interpreter outside any sandbox, on the runner's source alone.
_MARSHAL = (
    "import marshal, sys; "
    "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.buffer.read(), 'runner.py', 'exec')))"
)


_NOT_COMPILED = "the runner was not compiled by %s (%s): each sandbox compiles it"


@cache
def runner_code(python: str) -> bytes | None:
    """`runner.py` compiled by the interpreter that runs it in the sandboxes, marshalled
    (once a process); None where that interpreter cannot be run here, and the runner is
    compiled from source in each sandbox instead (`runner_loader`).

    Compiled from source, a runner costs its interpreter the compile (7 ms, in every cold job)
    and leaves the freed syntax tree's holes in its heap, which the warm interpreter's later
    imports fill: its objects lie on more pages, and every program's fork touches more of them
    (10 page faults a program, on this kind of machine about 5 us each)."""
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-B", "-c", _MARSHAL],
            input=runner_source(),
            capture_output=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(_NOT_COMPILED, python, exc)
        return None
    if done.returncode != 0 or not done.stdout:
        log.warning(_NOT_COMPILED, python, done.stderr.decode(errors="replace").strip()[-500:])
        return None
    return done.stdout


def runner_loader(fd: int, compiled: bool) -> tuple[str, str]:
    """The `python3` arguments that run the runner from the memfd `fd`: its code marshalled by
    `runner_code` when `compiled`, else its source. Not the memfd as the script: CPython keeps
    a script's syntax tree until the script ends, and the runner's (3.7 MB) would live as long
    as the runner: in a warm worker, in every program's fork, whose copy and teardown of the
    page tables scale with what the interpreter holds (`compile()` frees its tree before the
    code runs)."""
    path = f"/proc/self/fd/{fd}"
    if compiled:
        return "-c", f"import marshal; exec(marshal.loads(open('{path}', 'rb').read()))"
    return "-c", f"exec(compile(open('{path}', 'rb').read(), 'runner.py', 'exec'))"


def warm_init_library() -> bytes | None:
    """`warm_init.c`, the warm workers' loop between programs, compiled for this machine; None
    where it cannot be (no C compiler) or `ASSAY_WARM_INIT=python` asks so, and warm workers
    run the same loop in Python, slower (see `runner.serve_warm`)."""
    if os.environ.get("ASSAY_WARM_INIT", "c") == "python":
        return None
    return _compiled_warm_init()


@cache
def _compiled_warm_init() -> bytes | None:
    """Once a process (a third of a second), into a directory of its own: nothing compiled
    earlier, which another process could have written, is loaded into a sandbox."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc): warm Python workers run their loop in Python, slower")
        return None
    source = resources.files("assay.sandboxes").joinpath("warm_init.c").read_bytes()
    with tempfile.TemporaryDirectory(prefix="assay-warm-init-") as tmp:
        (Path(tmp) / "warm_init.c").write_bytes(source)
        argv = [compiler, "-O2", "-shared", "-fPIC", "-o", "warm_init.so", "warm_init.c"]
        done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log.warning(
                "warm_init.c did not compile (%s): warm Python workers run their loop in "
                "Python, slower",
                done.stderr.strip()[-500:],
            )
            return None
        return (Path(tmp) / "warm_init.so").read_bytes()


_LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))


def limits_json(limits: Limits) -> dict[str, Any]:
    # Not `dataclasses.asdict`, which deep-copies each field: a tenth of a millisecond an item.
    return {name: getattr(limits, name) for name in _LIMIT_FIELDS}


def envelope(job: MultiJob) -> Limits:
    """What the sandbox as a whole needs: the largest of its steps' limits, the runner's
    memory on top, and processes enough for the runner to start each step."""
    every = [r.limits for r in job.runs] + ([job.build.limits] if job.build else [])
    if not every:
        every = [Limits()]
    return Limits(
        wall_s=max(x.wall_s for x in every),
        memory_mb=max(x.memory_mb for x in every) + RUNNER_MB,
        address_space_mb=max((x.address_space_mb or x.memory_mb) for x in every) + RUNNER_MB,
        processes=max(x.processes for x in every) + 4,
        file_mb=max(x.file_mb for x in every),
        output_bytes=max(x.output_bytes for x in every),
    )


def deadline_s(job: MultiJob) -> float:
    """How long the whole sequence may take before the sandbox counts as failed."""
    walls = [r.limits.wall_s for r in job.runs] + ([job.build.limits.wall_s] if job.build else [])
    return START_SLACK_S + sum(w + STEP_SLACK_S for w in walls)


def job_request(job: MultiJob, no_fork: bytes) -> bytes:
    """The `job` mode request: the build (in the work dir) and the runs (each fresh)."""
    steps: list[dict[str, Any]] = []
    stdins: list[bytes] = []
    if job.build is not None:
        steps.append(
            {
                "kind": "build",
                "argv": list(job.build.argv),
                "limits": limits_json(job.build.limits),
                "fresh_work": False,
            }
        )
        stdins.append(b"")
    for run in job.runs:
        steps.append(
            {
                "kind": "run",
                "argv": list(run.argv or job.argv),
                "limits": limits_json(run.limits),
                "fresh_work": True,
            }
        )
        stdins.append(run.stdin)
    return runner.encode({"steps": steps}, [no_fork, *stdins])


async def read_frame(stream: asyncio.StreamReader) -> tuple[dict[str, Any], list[bytes]] | None:
    """The next frame from the runner; `None` if its output ended."""
    import json

    try:
        raw = await stream.readexactly(4)
        size = int.from_bytes(raw, "big")
        if size > runner.MAX_HEADER:
            raise SandboxError(f"the runner sent a frame header of {size} bytes")
        header: dict[str, Any] = json.loads(await stream.readexactly(size))
        blobs = [await stream.readexactly(int(n)) for n in header.get("blobs", [])]
    except asyncio.IncompleteReadError:
        return None
    return header, blobs


def step_result(header: dict[str, Any], blobs: list[bytes], oom_killed: bool) -> RunResult:
    """A step's `RunResult` from its frame. A run the runner could not set up is the
    sandbox's failure, not the program's."""
    if "error" in header:
        raise SandboxError(f"the sandbox runner failed: {header['error']}")
    sig = header["signal"]
    exit_code = header["exit"]
    stdout, stderr = blobs
    return RunResult(
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        time_s=float(header["wall_s"]),
        timed_out=bool(header["timed_out"] or header["cpu_timed_out"]),
        output_exceeded=bool(header["output_exceeded"]),
        file_exceeded=bool(header["file_exceeded"]) or sig == signal.SIGXFSZ,
        oom_killed=oom_killed,
        cpu_time_s=float(header["cpu_s"]),
        memory_kb=int(header["memory_kb"]),
        cpu_timed_out=bool(header["cpu_timed_out"]),
    )
