"""The contract between verifiers and the places untrusted work runs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Limits:
    """What one job may use. Every limit is enforced from outside the program."""

    wall_s: float = 5.0
    """Wall-clock seconds: a program that sleeps or waits is stopped by this."""
    cpu_s: float | None = None
    """CPU seconds (all the program's threads; for runs of `run_many`, its children waited
    for too): a program that spins is stopped by this. `None`: the wall-clock limit plus one
    second."""
    memory_mb: int = 512
    """Address space of each process; where the sandbox has a per-job cgroup, also the job's
    memory as a whole (all its processes), with room for its files in memory on top."""
    address_space_mb: int | None = None
    """The address-space rlimit of each process where it must differ from `memory_mb`: runtimes
    that reserve far more address space than they use (JVM, Go, .NET, V8) get room on top."""
    processes: int = 64
    """Processes and threads of the program, itself included; 1: it may start none (enforced
    by seccomp where the sandbox has it, as well as by RLIMIT_NPROC)."""
    file_mb: int = 64
    """The largest file the program may write, and the size of its writable work dir."""
    output_bytes: int = 1 << 20
    """Cap on stdout and on stderr, each; more is `output_exceeded`."""


@dataclass(frozen=True, slots=True)
class Job:
    """One program run: `argv` in a fresh work dir holding `files`, fed `stdin`."""

    argv: tuple[str, ...]
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    stdin: bytes = b""
    limits: Limits = field(default_factory=Limits)
    ro_paths: tuple[str, ...] = ()
    """Host paths bound read-only at the same place (a toolchain's files outside /usr)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What the program did. The sandbox's own failures raise `SandboxError` instead."""

    exit_code: int | None
    """The program's exit status; `None` when it was killed by a signal."""
    signal: int | None
    stdout: bytes
    stderr: bytes
    time_s: float
    """Wall-clock time."""
    timed_out: bool = False
    """Killed at the wall-clock deadline or by the CPU limit (`cpu_timed_out` says which)."""
    output_exceeded: bool = False
    """Printed more than `Limits.output_bytes` on stdout or stderr."""
    file_exceeded: bool = False
    """Tried to write a file larger than `Limits.file_mb`, or filled its work dir."""
    oom_killed: bool = False
    """Killed by a memory limit that the sandbox can observe (cgroups, containers)."""
    host_pressure: bool = False
    """Killed where the job may not have reached its own limits: an OOM kill that came from
    outside its memory cgroup (the host's or a container's shortage), or, without a cgroup, a
    SIGKILL the sandbox did not send. A rerun may end otherwise: verdicts resting on it are
    not cached."""
    cpu_time_s: float | None = None
    """CPU time, user and system, of the program and the children it waited for (`None`
    where the sandbox does not measure it)."""
    memory_kb: int | None = None
    """Peak resident memory of its largest process, in KiB (`None` where not measured); a
    program forked from a warm interpreter counts the interpreter's pages it shares too."""
    cpu_timed_out: bool = False
    """Stopped by (or found over) the CPU-time limit rather than the wall clock."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (
            self.timed_out or self.output_exceeded or self.file_exceeded or self.oom_killed
        )

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a `MultiJob`: its stdin and limits, and its argv if not the job's."""

    stdin: bytes = b""
    limits: Limits = field(default_factory=Limits)
    argv: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Build:
    """The step before the runs (compile, byte-compile, type-check), in the same work dir."""

    argv: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class MultiJob:
    """One sandbox start for a sequence: `build` (if any), then each of `runs`.

    The build runs in a work dir holding `files`; what it leaves there (a binary, class
    files) stays for the runs. Each run gets its own fresh work dir holding those files
    read-only (it may write others beside them), its own /tmp, processes and limits, fed its
    own stdin. A build that fails (not exit 0, or over a limit) ends the sequence. Limits
    that hold for the whole sandbox (its memory cgroup, its work dir's size) are the largest
    of the steps'."""

    argv: tuple[str, ...]
    runs: tuple[Run, ...]
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    build: Build | None = None
    ro_paths: tuple[str, ...] = ()
    """Host paths bound read-only at the same place (a toolchain's files outside /usr)."""
    tools: tuple[str, ...] = ()
    """Programs of the toolchain the job belongs with, beyond those its commands name: a
    compiled program's `./main` needs its compiler's runtime libraries (libgfortran, D's
    phobos). The docker backend sends the job to an image that has them; the local backend,
    one system for all, has nothing to choose."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step of a `MultiJob` did: the build (`index` 0) or run number `index`."""

    kind: Literal["build", "run"]
    index: int
    result: RunResult


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A long-lived process inside the sandbox (a warm tool: a Dafny server, a Lean REPL, a
    renderer, a database worker), talked to over its stdin and stdout.

    It gets the isolation of a job (no network, its own filesystem view and processes, a uid
    and a memory cgroup of its own where the host allows) for as long as it lives. `limits`
    apply as for a job, except `wall_s`, which the tool's user enforces per request (and
    `close`s the tool when a request overruns)."""

    argv: tuple[str, ...]
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    ro_paths: tuple[str, ...] = ()
    """Host paths bound read-only at the same place: the tool's software (a package dir, a
    toolchain's home). A container backend ignores them: the tool's image carries its own."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the sandbox's cleared environment."""
    tool: str = ""
    """What the tool is (`sql`, `svg`, `dafny`, `lean`): a container backend picks its image by
    this name."""
    data: tuple[str, ...] = ()
    """Host files or folders the tool reads as data (a database's folder): bound read-only at
    the same place, by every backend (a container backend mounts or copies them in)."""


class ToolProcess(Protocol):
    """A running tool. Its user frames requests on `stdin`/`stdout` and must `close` it."""

    pid: int
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader

    @property
    def returncode(self) -> int | None:
        """`None` while it runs."""
        ...

    def stderr_tail(self) -> bytes:
        """The last bytes it wrote to stderr (kept bounded), for diagnostics."""
        ...

    def oom_killed(self) -> bool:
        """Whether the memory limit killed one of its processes."""
        ...

    async def close(self) -> None:
        """Kill it and everything it started, and give back what it held. Idempotent."""
        ...


class Sandbox(Protocol):
    """Runs jobs isolated: no network, its own filesystem view, limits, nothing left behind."""

    name: str

    async def run(self, job: Job) -> RunResult:
        """Run one job. Raises `SandboxUnavailable` or `SandboxError` if the sandbox fails."""
        ...

    def run_many(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        """Run a build and its runs in one sandbox start, yielding each step's result as it
        finishes (the build first). Stopping the iteration early (leaving the loop; close the
        iterator with `contextlib.aclosing`) stops the sequence and kills what runs. Raises
        `SandboxUnavailable` or `SandboxError` if the sandbox fails."""
        ...

    def unavailable_reason(self) -> str | None:
        """`None` when the sandbox can take untrusted work; else why not (what is known now)."""
        ...

    async def check(self) -> str | None:
        """Like `unavailable_reason`, after making sure: start a trivial job once if need be."""
        ...

    def facts(self) -> dict[str, Any]:
        """What `GET /v1/verifiers` shows of the sandbox (backend, isolation, limits it has)."""
        ...

    async def spawn(self, spec: ToolSpec) -> ToolProcess:
        """Start a long-lived tool. Raises `SandboxUnavailable` or `SandboxError`."""
        ...

    def has_tool(self, tool: str) -> bool:
        """Whether a program of that name can be started inside the sandbox."""
        ...

    def tool_reason(self, tool: str) -> str | None:
        """`None` when a `ToolSpec` of that `tool` name can be spawned (as far as is known now);
        else why not (a container backend with no image for it)."""
        ...

    async def close(self) -> None:
        """Stop whatever the sandbox keeps running."""
        ...


# Signals that reach a tool from outside its sandbox (an operator, a supervisor, the host's OOM
# killer where no memory cgroup is made), never by crashing on its input: a tool that crashes
# on an item dies of SIGSEGV, SIGABRT, SIGBUS and the like, or exits with a status of its own.
_KILLS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


async def exit_status(tool: ToolProcess, wait_s: float = 2.0) -> int | None:
    """The exit status of a tool that stopped answering, once the event loop has reaped it
    (an end of file on its stdout comes a moment before); `None` if it still runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    # No event to wait on: the event loop's child watcher sets `returncode` when it reaps.
    while tool.returncode is None and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return tool.returncode


def killed_from_outside(returncode: int | None) -> bool:
    """Whether a tool's exit status says it was killed from outside, not by what it was asked:
    the sandbox's own process killed by a signal (negative; the item cannot reach it), or the
    tool inside it by one of `_KILLS` (bwrap exits with 128 + the signal). A tool killed so
    under an item has not judged it: the item is run again on a fresh tool, not charged."""
    if returncode is None:
        return False
    if returncode < 0:
        return True
    return returncode > 128 and returncode - 128 in _KILLS
