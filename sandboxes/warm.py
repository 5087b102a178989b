"""Warm Python: programs forked from pre-initialised interpreters in long-lived sandboxes.

Each worker is a bubblewrap sandbox (its own uid and memory cgroup where the host allows, as a
job's) running `runner.py` in `warm` mode: an interpreter that has imported what programs
import most, made itself pid 1 of pid, mount and IPC namespaces of its own, and waits for
requests. A request is one item's program and its runs; each run is a process forked from the
interpreter (see `runner.py`), so it starts in about the time of a fork instead of a sandbox
start plus an interpreter start, with the isolation of a job: its own empty work dir, /tmp and
/dev/shm (fresh mounts over the last program's), its own IPC namespace, no view of the
interpreter or of earlier programs (all killed when it ends), no capabilities, no_new_privs,
the seccomp filter, rlimits, everything it started killed at its end or deadline. Nothing a
program does reaches the interpreter: it runs in a copy (fork), the interpreter is not
dumpable and, as its namespace's init, takes no signal from it, and only reads its pipes.

Workers live in a `WorkerPool`: one lent per item; a worker whose request failed (the runner
crashed, overran the request's deadline, sent something unexpected, or the request was
cancelled mid-answer) is closed, never reused; every worker is recycled after `max_uses` items.
A worker's memory cgroups (its own, which holds the interpreter, and its programs') are sized
by the runs' limits, so the pool is keyed by the runs' memory and file limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from assay.sandboxes import runner, seccomp, steps
from assay.sandboxes.base import Limits, MultiJob, StepResult, ToolSpec
from assay.sandboxes.errors import SandboxError
from assay.sandboxes.pool import WorkerPool

log = logging.getLogger(__name__)

_READY_S = 30.0  # a worker's start, interpreter and imports included, on a loaded machine


class WarmWorker:
    """One warm interpreter: the tool process it runs in, and how many programs it ran."""

    def __init__(self, tool: Any) -> None:
        self.tool = tool
        self.programs = 0
        self.oom_kills = 0  # the worker's memory cgroup's count, when last read

    @property
    def alive(self) -> bool:
        return bool(self.tool.returncode is None)


@dataclass(frozen=True, slots=True)
class _Key:
    memory_mb: int
    file_mb: int


def warm_source(argv: tuple[str, ...], files: Mapping[str, object]) -> str | None:
    """The program file of a `python3 -I -B FILE` argv ("-": the program on stdin), or None
    when the argv is anything else (which then runs cold)."""
    if len(argv) != 4 or argv[0] != "python3" or argv[1:3] != ("-I", "-B"):
        return None
    if argv[3] == "-" or (argv[3] in files and "/" not in argv[3]):
        return argv[3]
    return None


class WarmPython:
    """The pool of warm interpreters of one sandbox. `start` starts a runner tool in `warm`
    mode with the given limits (the sandbox's `_start`)."""

    def __init__(
        self,
        start: Callable[[ToolSpec], Awaitable[Any]],
        *,
        python: str,
        size: int,
        max_uses: int,
    ) -> None:
        self._start_tool, self.python = start, python
        self.pool: WorkerPool[WarmWorker] = WorkerPool(
            self._start,
            self._close,
            size=size,
            max_uses=max_uses,
            healthy=lambda w: w.alive,
            name="warm python",
        )

    async def _start(self, key: Hashable) -> WarmWorker:
        assert isinstance(key, _Key)
        limits = Limits(
            memory_mb=key.memory_mb + steps.RUNNER_MB, file_mb=key.file_mb, processes=64
        )
        tool = await self._start_tool(ToolSpec(argv=(self.python, "-I", "-B"), limits=limits))
        worker = WarmWorker(tool)
        try:
            async with asyncio.timeout(_READY_S):
                frame = await steps.read_frame(tool.stdout)
            if frame is None or frame[0].get("kind") != "ready":
                tail = tool.stderr_tail().decode(errors="replace").strip()[-500:]
                raise SandboxError(f"a warm Python worker did not start: {tail}")
        except BaseException:
            await tool.close()
            raise
        return worker

    async def _close(self, worker: WarmWorker) -> None:
        await worker.tool.close()

    async def close(self) -> None:
        await self.pool.close()

    def facts(self) -> dict[str, Any]:
        # `loop`: where a worker's loop between programs runs (see `runner.serve_warm`).
        loop = "c" if steps.warm_init_library() is not None else "python"
        return self.pool.facts() | {"loop": loop}

    async def run_many(self, job: MultiJob, source: str) -> AsyncGenerator[StepResult, None]:
        """The runs of `job` on a warm worker; `source` is the program's file, or "-"."""
        every = [r.limits for r in job.runs]
        key = _Key(max(x.memory_mb for x in every), max(x.file_mb for x in every))
        files = [(n, d.encode() if isinstance(d, str) else d) for n, d in job.files.items()]
        request = runner.warm_request(
            None if source == "-" else source,
            files,
            [{"limits": steps.limits_json(r.limits)} for r in job.runs],
            [r.stdin for r in job.runs],
            seccomp.program(processes=False) or b"",
        )
        async with self.pool.lease(key) as worker:
            tool = worker.tool
            worker.programs += 1
            try:
                tool.stdin.write(request)
                await tool.stdin.drain()
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise SandboxError(f"a warm Python worker is gone: {exc!r}") from exc
            last = len(job.runs) - 1
            end: tuple[dict[str, Any], list[bytes]] | None = None
            for index, run in enumerate(job.runs):
                budget = run.limits.wall_s + steps.STEP_SLACK_S + steps.START_SLACK_S
                if index < last:
                    frame = await self._next(tool, budget)
                else:  # the end follows the last result with no word from here: one wait
                    frame, end = await self._frames(tool, budget + steps.START_SLACK_S, 2)
                result = steps.step_result(*frame, oom_killed=False)
                # The memory killer kills with SIGKILL: a single-process run that ended any
                # other way met none (its cgroup file is not read, a cost on every run).
                if result.signal is not None or run.limits.processes > 1:
                    kills = tool.oom_kills()
                    result = tool.with_pressure(result, kills > worker.oom_kills)
                    worker.oom_kills = kills
                stop = False
                try:
                    yield StepResult("run", index, result)
                except GeneratorExit:  # the caller stopped: the worker stays good for others
                    stop = True
                if index < last:
                    tool.stdin.write(b"\x00" if stop else b"\x01")
                    await tool.stdin.drain()
                if stop:
                    break
            if end is None:
                end = await self._next(tool, steps.START_SLACK_S)
            if end[0].get("kind") != "end":
                raise SandboxError(f"a warm Python worker sent {end[0]!r} for the end")

    async def _next(self, tool: Any, budget_s: float) -> tuple[dict[str, Any], list[bytes]]:
        (frame,) = await self._frames(tool, budget_s, 1)
        return frame

    async def _frames(
        self, tool: Any, budget_s: float, count: int
    ) -> list[tuple[dict[str, Any], list[bytes]]]:
        """The worker's next `count` frames, within one budget."""
        got = []
        try:
            async with asyncio.timeout(budget_s):
                for _ in range(count):
                    frame = await steps.read_frame(tool.stdout)
                    if frame is None:
                        tail = tool.stderr_tail().decode(errors="replace").strip()[-500:]
                        raise SandboxError(f"a warm Python worker died: {tail}")
                    got.append(frame)
        except TimeoutError as exc:
            raise SandboxError("a warm Python worker overran its deadline") from exc
        return got


__all__ = ["WarmPython", "WarmWorker", "warm_source"]
