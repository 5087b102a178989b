"""Host processes of the local sandbox: starting them (safe to cancel), feeding and reading
them under limits, putting them into their memory cgroup, killing and reaping them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from assay.sandboxes.base import Job, RunResult
from assay.sandboxes.cgroups import JobCgroup
from assay.sandboxes.errors import SandboxError

T = TypeVar("T")
_CHUNK = 1 << 16
TOOL_LINE_LIMIT = 1 << 26  # a tool's longest line (readline / readuntil) on stdout
TOOL_STDERR = 1 << 16  # how much of a tool's stderr is kept


class LocalTool:
    """A running tool of `LocalSandbox.spawn`: its pipes, and what it holds until closed."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        stack: contextlib.AsyncExitStack,
        cgroup: JobCgroup | None,
        bare_uid: int | None,
        programs: JobCgroup | None = None,
    ) -> None:
        """`programs`: the cgroup the tool's programs move into (a warm worker's), where its
        steps' OOM kills are counted instead of the tool's own."""
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.pid = proc.pid
        self.stdin: asyncio.StreamWriter = proc.stdin
        self.stdout: asyncio.StreamReader = proc.stdout
        self._proc, self._stack, self._bare_uid = proc, stack, bare_uid
        self._cgroup = programs if programs is not None else cgroup
        self._stderr = bytearray()
        self._drain = asyncio.ensure_future(self._pump(proc.stderr))
        self._closed = False

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while chunk := await stream.read(_CHUNK):
            self._stderr += chunk
            del self._stderr[:-TOOL_STDERR]

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def stderr_tail(self) -> bytes:
        return bytes(self._stderr)

    def oom_killed(self) -> bool:
        return self.oom_kills() > 0

    def oom_kills(self) -> int:
        return self._cgroup.oom_kills() if self._cgroup is not None else 0

    def with_pressure(self, result: RunResult, oom: bool) -> RunResult:
        """`result` of a step that ran in this tool, told whether an OOM kill came with it:
        marked `host_pressure` where the kill may have come from outside the job's own cap
        (as `_run` does for a one-off job), so that its verdict is not cached."""
        if oom:
            reached = self._cgroup is not None and self._cgroup.cap_reached()
            if reached:
                assert self._cgroup is not None
                self._cgroup.reset_peak()  # the next step's reach is its own
            return dataclasses.replace(result, oom_killed=True, host_pressure=not reached)
        if (
            self._cgroup is None
            and result.signal == signal.SIGKILL
            and not (result.timed_out or result.output_exceeded)
        ):
            return dataclasses.replace(result, host_pressure=True)
        return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._drain.cancel()

        async def finish() -> None:
            await reap(self._proc)
            if self._bare_uid is not None:
                await kill_uid(self._bare_uid)
            await self._stack.aclose()

        await asyncio.shield(finish())


async def unless_cancelled(
    work: Coroutine[Any, Any, T | None], undo: Callable[[T], None]
) -> T | None:
    """Await `work` (a thread's); if the waiter is cancelled, `undo` what it makes once done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def undone(done: asyncio.Future[T | None]) -> None:
            if not done.cancelled() and done.exception() is None:
                made = done.result()
                if made is not None:
                    undo(made)

        task.add_done_callback(undone)
        raise


class BwrapGate:
    """Sets a bwrap job up from outside before its program starts, with no Python code in the
    child (a `preexec_fn` costs ~1 ms a job): bwrap makes its namespace child and waits; its
    `--json-status-fd` names that child; the service moves bwrap and the child into the job's
    cgroup (`cgroup`; what the program starts inherits it) and, with `uid_map`, writes the
    child's user namespace's uid and gid maps itself (bwrap waits for them on
    `--userns-block-fd`, writing none of its own), then lets them go."""

    def __init__(self, cgroup: JobCgroup | None, uid_map: str | None = None) -> None:
        self.cgroup, self.uid_map = cgroup, uid_map
        self._status_read, self._status_write = os.pipe()
        self._block_read, self._block_write = os.pipe()
        os.set_blocking(self._status_read, False)
        # Each fd is closed once only: a number closed twice may meanwhile be another job's.
        self._open = {self._status_read, self._status_write, self._block_read, self._block_write}
        self._userns_read = self._userns_write = -1
        if uid_map is not None:
            self._userns_read, self._userns_write = os.pipe()
            self._open |= {self._userns_read, self._userns_write}

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def bwrap_args(self) -> list[str]:
        if self.uid_map is None:
            status = ["--json-status-fd", str(self._status_write)]
        else:  # bwrap wants its older `--info-fd` with `--userns-block-fd`
            status = ["--info-fd", str(self._status_write)]
            status += ["--userns-block-fd", str(self._userns_read)]
        return [*status, "--block-fd", str(self._block_read)]

    def child_fds(self) -> list[int]:
        fds = [self._status_write, self._block_read]
        return fds if self.uid_map is None else [*fds, self._userns_read]

    async def admit(self, pid: int) -> None:
        # bwrap's own ends are its now; ours stay open to the end, since bwrap writes its exit
        # status to the status pipe last.
        for fd in self.child_fds():
            self._close(fd)
        line = b""
        # bwrap writes its status line in pieces; its info (one JSON document over several
        # lines) all at once, then closes it.
        while self.uid_map is not None or b"\n" not in line:
            chunk = await read_once(self._status_read)
            if not chunk:
                break
            line += chunk
        if not line:  # bwrap ended before making its child: its exit status says why
            return
        try:
            text = line if self.uid_map is not None else line.split(b"\n", 1)[0]
            child = int(json.loads(text)["child-pid"])
        except (ValueError, KeyError) as exc:
            raise SandboxError(f"bwrap's status did not name its child: {line[:200]!r}") from exc
        if self.uid_map is not None:
            try:
                for name in ("uid_map", "gid_map"):  # the same numbers: each uid its own group
                    fd = os.open(f"/proc/{child}/{name}", os.O_WRONLY)  # a proc file: no wait
                    try:
                        os.write(fd, self.uid_map.encode())
                    finally:
                        os.close(fd)
            except OSError as exc:
                raise SandboxError(f"could not map the job's uids: {exc}") from exc
            os.write(self._userns_write, b"x")
            self._close(self._userns_write)
        if self.cgroup is not None:
            try:
                self.cgroup.add(pid)
                self.cgroup.add(child)
            except OSError as exc:
                raise SandboxError(f"could not move the job into its memory cgroup: {exc}") from exc
        os.write(self._block_write, b"x")
        self._close(self._block_write)

    def __enter__(self) -> BwrapGate:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in list(self._open):
            self._close(fd)


async def read_once(fd: int) -> bytes:
    """One read of a non-blocking fd, awaited on the event loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 4096)


@contextlib.contextmanager
def memfd(name: str, data: str | bytes) -> Iterator[int]:
    fd = os.memfd_create(f"assay-{name}", 0)
    try:
        payload = data.encode() if isinstance(data, str) else data
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def write_files(workdir: Path, files: Mapping[str, str | bytes], uid: int | None) -> None:
    for name, data in files.items():
        path = workdir / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    if uid is not None:
        os.chown(workdir, uid, uid)
        for name in files:
            os.chown(workdir / name, uid, uid)


async def execute(
    argv: list[str],
    job: Job,
    uid: int | None,
    cwd: str | None,
    env: dict[str, str],
    pass_fds: list[int],
    enter: Callable[[], None] | None = None,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> RunResult:
    """Run `argv` to its end or its deadline. `enter` runs in the child before exec (slow: it
    makes the child run Python); `on_start` is awaited with the child's pid before stdin is fed."""
    limits = job.limits
    started = time.monotonic()
    proc = await create_process(argv, pass_fds=pass_fds, preexec_fn=enter, cwd=cwd, env=env)

    exceeded = False

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def pump(stream: asyncio.StreamReader | None) -> bytes:
        nonlocal exceeded
        assert stream is not None
        buf = bytearray()
        while chunk := await stream.read(_CHUNK):
            room = limits.output_bytes - len(buf)
            if len(chunk) > room:
                buf += chunk[:room]
                exceeded = True
                kill()
                break
            buf += chunk
        return bytes(buf)

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            if job.stdin:
                proc.stdin.write(job.stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass

    out = asyncio.ensure_future(pump(proc.stdout))
    err = asyncio.ensure_future(pump(proc.stderr))
    fed = asyncio.ensure_future(feed())
    timed_out = False
    try:
        async with asyncio.timeout(limits.wall_s):
            if on_start is not None:
                await on_start(proc.pid)
            await asyncio.gather(out, err, fed)
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        # Whatever happened (deadline, cap, cancellation), nothing of the job outlives this.
        kill()
        for task in (out, err, fed):
            task.cancel()
        await asyncio.shield(reap(proc))
        if uid is not None and cwd is not None:
            await kill_uid(uid)
    elapsed = time.monotonic() - started
    stdout = out.result() if out.done() and not out.cancelled() else b""
    stderr = err.result() if err.done() and not err.cancelled() else b""

    code = proc.returncode
    assert code is not None
    sig: int | None = None
    if code < 0:  # killed by us
        sig, code = -code, None
    elif code > 128 and code - 128 < signal.NSIG:  # bwrap reports a signalled child as 128+N
        sig, code = code - 128, None
    cpu_killed = sig in (signal.SIGXCPU,)
    return RunResult(
        exit_code=code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        time_s=elapsed,
        timed_out=timed_out or cpu_killed,
        output_exceeded=exceeded,
        file_exceeded=sig == signal.SIGXFSZ,
    )


async def create_process(argv: list[str], **options: Any) -> asyncio.subprocess.Process:
    """`argv` started with pipes on stdin, stdout and stderr, in a session of its own; a failure
    to start is a `SandboxError`. Safe to cancel: cancelled halfway, asyncio's own clean-up
    waits for a process that a sandbox gate may hold forever; here the creation finishes, then
    the process group is killed and reaped."""
    pipe = asyncio.subprocess.PIPE
    task = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv, stdin=pipe, stdout=pipe, stderr=pipe, start_new_session=True, **options
        )
    )
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        async def undo() -> None:
            with contextlib.suppress(BaseException):
                proc = await task
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await reap(proc)

        await asyncio.shield(asyncio.ensure_future(undo()))
        raise
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"could not start {argv[0]}: {exc}") from exc


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed job and read its pipes to the end, so that they close."""
    await proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is None:
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while await stream.read(_CHUNK):
                    pass
    # asyncio closes a subprocess transport by itself only once both pipes have reached their
    # end; one still held open after 5 s (a process that outlived the kill, stuck exiting)
    # would leave it open for good, and a ResourceWarning when it is collected. The process
    # has been waited for: closing the transport only closes its pipes.
    transport = getattr(proc, "_transport", None)
    if transport is not None and not transport.is_closing():
        transport.close()


async def kill_uid(uid: int) -> None:
    """Unsandboxed runs have no pid namespace: kill whatever else runs as the job's uid."""
    pkill = shutil.which("pkill")
    if pkill:
        proc = await asyncio.create_subprocess_exec(pkill, "-KILL", "-U", str(uid))
        await proc.wait()
