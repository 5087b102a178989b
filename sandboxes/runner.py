"""The runner: the small trusted program that carries out a sequence of runs inside a sandbox.

It runs inside bubblewrap with the sandbox's `python3` and the standard library only (it
imports nothing of assay: the service passes this file in as a memfd, compiled by that
`python3` and marshalled, `steps.runner_code`), and holds
`CAP_SYS_ADMIN` inside the sandbox's user namespace, no more. The service imports it too, for
the framing both sides share.

Two modes:
- `job`: one request (an optional build step, then N runs), then it exits. The build runs in
  the sandbox's work dir; each run gets a fresh work dir holding the build's files read-only.
- `warm`: a pre-initialised interpreter that serves requests until its input ends; each run is
  a Python program run in a process forked from it, with no interpreter start. Its work dir
  is fresh and empty but for the program's files.

A `job` run, the build included, is two processes. `init` is cloned from the runner into new
pid, mount and IPC namespaces, where it is pid 1: it mounts a fresh /proc, /tmp, /dev/shm (and
work dir), drops every capability, and forks the `program` (pid 2), which sets its rlimits,
no_new_privs and, for single-process runs, a seccomp filter that refuses fork, then execs the
argv. The program cannot see or signal the runner or anything outside its namespace; its files
and mounts die with its mount namespace; when `init` exits (the program ended, or the runner
killed `init` at the deadline) the kernel kills every process left in the namespace. `init`
writes the program's wait status to a report pipe; the runner waits for `init` and takes the
usage of the whole tree (CPU time, peak resident memory) from `wait4`.

A `warm` run is one process: the warm interpreter itself is pid 1 of pid, mount and IPC
namespaces of its own (`_become_warm_init`), and forks each program straight into them. Before
a program it mounts a fresh work dir, /tmp and /dev/shm over the last one's (or keeps one
the last program left empty: `_fresh_warm_mounts`); the program makes
an IPC namespace of its own, drops every capability and goes on as a job's program does; when
it exits (or at the deadline) the interpreter kills every other process of the namespace. The
interpreter is out of the programs' reach: not dumpable (no ptrace, and invisible in their
/proc, mounted `hidepid=invisible`), and as its namespace's init it gets no signal from them.
This halves a run's cost against the two processes and the mount namespace of a job's run.
The interpreter's loop between programs is `warm_init.c`, compiled by the service and passed
in as a memfd, where the service has a C compiler; the same loop in Python (`serve_warm`)
otherwise. Warm requests are binary (`warm_request`), so that the C loop reads them.

Framing, both ways: a 4-byte big-endian length, a JSON header of that length, then the binary
blobs whose sizes the header lists under "blobs". Requests carry the runs' stdins (and, warm,
the program's files); results carry each step's stdout and stderr, capped. Expected outputs
never come here.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stub: the C half of `signal`)
import builtins
import contextlib
import ctypes
import functools
import json
import mmap
import os
import platform
import resource
import select
import signal
import struct
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

# -- framing (shared with the service) ---------------------------------------------------------

_LEN = struct.Struct(">I")
MAX_HEADER = 1 << 20


def encode(header: dict[str, Any], blobs: list[bytes] | None = None) -> bytes:
    """One frame: `header` (its "blobs" set to the blobs' sizes) and the blobs."""
    blobs = blobs or []
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}).encode()
    return b"".join([_LEN.pack(len(head)), head, *blobs])


def _read_exact(fd: int, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf


def read_frame(fd: int) -> tuple[dict[str, Any], list[bytearray]] | None:
    """The next frame on `fd` (blocking); `None` at the end of input."""
    raw = _read_exact(fd, _LEN.size)
    if raw is None:
        return None
    (size,) = _LEN.unpack(raw)
    if size > MAX_HEADER:
        raise ValueError(f"frame header of {size} bytes")
    head = _read_exact(fd, size)
    if head is None:
        return None
    header: dict[str, Any] = json.loads(head)
    blobs = []
    for n in header.get("blobs", []):
        blob = _read_exact(fd, int(n))
        if blob is None:
            return None
        blobs.append(blob)
    return header, blobs


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the kernel's interfaces, through ctypes (Python 3.11 has no os.unshare, mount or clone) ---

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER = 4, 22, 36
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SECCOMP_MODE_FILTER = 2
_CAP_VERSION_3 = 0x20080522
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
# capset, prctl and unshare, by machine (arch/x86/entry/syscalls, include/uapi/asm-generic)
_SYSCALLS = {"x86_64": (126, 157, 272), "aarch64": (91, 167, 97)}


class _Kernel:
    """libc through ctypes. `raw` does not release the GIL: a clone must happen with it held,
    as in `os.fork`."""

    def __init__(self) -> None:
        self.libc: Any = ctypes.CDLL(None, use_errno=True)
        self.raw: Any = ctypes.PyDLL(None, use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self.libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self.raw.syscall.restype = ctypes.c_long

    def check(self, result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")


@functools.cache
def kernel() -> _Kernel:
    return _Kernel()


def clone_into_namespaces() -> int:
    """Like `os.fork`, but the child is pid 1 of new pid, mount and IPC namespaces.

    A raw clone, with the interpreter's fork hooks run around it as `os.fork` runs them; the
    child is single-threaded and only forks again or exits, as a forked child would."""
    k = kernel()
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | signal.SIGCHLD
    number = _SYS_CLONE[platform.machine()]
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = int(k.raw.syscall(ctypes.c_long(number), ctypes.c_ulong(flags), None, None, None, None))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    result = kernel().libc.mount(
        enc(source), target.encode(), enc(fstype), flags, enc(data or None)
    )
    kernel().check(result, f"mount {target}")


def umount(target: str) -> None:
    """Detach the mount at `target` (the one on top, when several are stacked there)."""
    result = kernel().libc.umount2(target.encode(), MNT_DETACH)
    kernel().check(result, f"umount {target}")


def unshare(flags: int) -> None:
    kernel().check(kernel().libc.unshare(flags), "unshare")


def prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    kernel().check(kernel().libc.prctl(option, arg, arg3, 0, 0), f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Calls:
    """The system calls a process makes between its fork and its program, each with its
    arguments built beforehand, in the process that forks.

    Every page a forked child writes is copied (a page fault each, about 5 us on this kind of
    machine), and a ctypes call that converts its arguments writes to many of the
    interpreter's pages: measured in a forked child, capset through `libc.capset` cost 55 page
    faults, through `syscall` with arguments built ahead 15. The capabilities' buffers and the
    seccomp programs live here, so their addresses stay good in every child."""

    def __init__(self) -> None:
        self._syscall = kernel().raw.syscall
        capset, prctl_, unshare_ = (ctypes.c_long(n) for n in _SYSCALLS[platform.machine()])
        self._header = _CapHeader(_CAP_VERSION_3, 0)
        self._data = (_CapData * 2)()

        def prctl_args(option: int, arg: int) -> tuple[Any, ...]:
            return (prctl_, *(ctypes.c_long(x) for x in (option, arg, 0, 0, 0)))

        self.clear_ambient = prctl_args(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        self.capset = (
            capset,
            ctypes.c_void_p(ctypes.addressof(self._header)),
            ctypes.c_void_p(ctypes.addressof(self._data)),
        )
        self.dumpable = prctl_args(PR_SET_DUMPABLE, 1)
        self.new_ipc = (unshare_, ctypes.c_long(CLONE_NEWIPC))
        self._prctl = prctl_
        self._filters: dict[bytes, tuple[Any, ...]] = {}
        self._buffers: dict[bytes, tuple[Any, Any]] = {}

    def seccomp(self, program: bytes) -> tuple[Any, ...]:
        """The arguments that install `program` (a cBPF filter; needs no_new_privs)."""
        args = self._filters.get(program)
        if args is None:
            if len(self._filters) >= 4:  # the service sends one or two filters
                self._filters.clear()
                self._buffers.clear()
            buf = ctypes.create_string_buffer(program, len(program))
            prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
            args = (self._prctl, *(ctypes.c_long(x) for x in (PR_SET_SECCOMP, SECCOMP_MODE_FILTER)))
            args += (ctypes.c_void_p(ctypes.addressof(prog)), ctypes.c_long(0), ctypes.c_long(0))
            self._filters[program] = args
            self._buffers[program] = (buf, prog)  # alive as long as the arguments
        return args

    def call(self, args: tuple[Any, ...], what: str) -> None:
        if self._syscall(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def drop_capabilities(self) -> None:
        """No capability left in any set: effective, permitted, inheritable and ambient."""
        self.call(self.clear_ambient, "prctl ambient")
        self.call(self.capset, "capset")


@functools.cache
def calls() -> _Calls:
    return _Calls()


# -- one run ------------------------------------------------------------------------------------

WORK_DIR = "/work"
_CHUNK = 1 << 16
_FS_IOC_GETFLAGS = 0x80086601  # <linux/fs.h>: the inode flags chattr sets
NOFILE = 256
# The runner and init run as the program's uid: the process limit counts them.
_OWN_PROCESSES = 2
_DRAIN_S = 5.0  # after a kill, how long the pipes may take to close


class Spec:
    """One step's settings, from the request."""

    def __init__(self, raw: dict[str, Any]) -> None:
        limits = raw["limits"]
        self.argv: list[str] = list(raw.get("argv") or [])
        self.wall_s = float(limits["wall_s"])
        cpu = limits.get("cpu_s")
        self.cpu_s = float(cpu) if cpu is not None else self.wall_s + 1.0
        self.memory_mb = int(limits["memory_mb"])
        # Room in address space beyond the memory limit, for runtimes that reserve much more
        # than they use (JVM, Go, V8): the memory cgroup bounds what they use.
        self.address_space_mb = int(limits.get("address_space_mb") or self.memory_mb)
        self.processes = int(limits["processes"])
        self.file_mb = int(limits["file_mb"])
        self.output_bytes = int(limits["output_bytes"])
        self.fresh_work = bool(raw.get("fresh_work", True))

    @property
    def cpu_rlimit(self) -> int:
        return max(1, int(self.cpu_s + 0.999))  # RLIMIT_CPU counts whole seconds


def _set_limits(spec: Spec, own: int = _OWN_PROCESSES) -> None:
    cpu = spec.cpu_rlimit
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = spec.address_space_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = spec.file_mb << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nproc = spec.processes + own
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _write_files(files: Sequence[tuple[str, bytes | bytearray]], owner: int | None = None) -> None:
    """`files` in the work dir; `owner`: the uid (and gid) they go to, else this process's."""
    for name, data in files:
        fd = os.open(f"{WORK_DIR}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if owner is not None:
                os.fchown(fd, owner, owner)
            _write_all(fd, bytes(data))
        finally:
            os.close(fd)


def _fresh_mounts(spec: Spec, files: Sequence[tuple[str, bytes | bytearray]]) -> None:
    """In init's new mount namespace: its own /proc, /tmp, /dev/shm and, for runs, work dir."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Room for two files of the largest size (as for a one-run job), so that one big file
    # meets the file-size limit before it fills the mount.
    size = 2 * spec.file_mb << 20
    flags = MS_NOSUID | MS_NODEV
    mount("tmpfs", "/tmp", "tmpfs", flags, f"size={size},mode=1777")
    mount("tmpfs", "/dev/shm", "tmpfs", flags, f"size={spec.file_mb << 20},mode=1777")
    if spec.fresh_work:
        # What the build left stays visible, read-only, at its place in the fresh work dir.
        old = os.open(WORK_DIR, os.O_PATH | os.O_DIRECTORY)
        names = os.listdir(f"/proc/self/fd/{old}")
        mount("tmpfs", WORK_DIR, "tmpfs", flags, f"size={size},mode=0755")
        for name in names:
            source, target = f"/proc/self/fd/{old}/{name}", f"{WORK_DIR}/{name}"
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
                continue
            if os.path.isdir(source):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
            mount(source, target, None, MS_BIND | MS_REC)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        os.close(old)
        _write_files(files)
    os.chdir(WORK_DIR)


class _Pipes:
    """The program's stdin, stdout and stderr, and init's report pipe."""

    def __init__(self) -> None:
        self.stdin = os.pipe()
        self.stdout = os.pipe()
        self.stderr = os.pipe()
        self.report = os.pipe()

    def child_ends(self) -> tuple[int, int, int, int]:
        return self.stdin[0], self.stdout[1], self.stderr[1], self.report[1]

    def parent_ends(self) -> tuple[int, int, int, int]:
        return self.stdin[1], self.stdout[0], self.stderr[0], self.report[0]


def _close_fds_but(keep: tuple[int, ...]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


# The runner holds no fd at or above this (`main` sets it as its soft limit), so a program
# closes what it inherited with `closerange`, without listing /proc/self/fd.
_RUNNER_FDS = 64


def _program(
    spec: Spec,
    pipes: _Pipes,
    seccomp: tuple[Any, ...] | None,
    body: Callable[[], None],
    own: int = _OWN_PROCESSES,
) -> None:
    """In the program's process, before its code: fds, limits, filter (its arguments built by
    the parent, `_Calls.seccomp`; no_new_privs is inherited). Never returns."""
    stdin, stdout, stderr, report = pipes.child_ends()
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    try:
        c = calls()
        c.call(c.dumpable, "prctl")  # init is not: this makes /proc/self the program's again
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)  # the memory killer takes it first
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)
        _set_limits(spec, own)
        if seccomp is not None:
            c.call(seccomp, "seccomp")
    except BaseException as exc:
        os.write(report, f"E the program's set-up failed: {exc!r}\n".encode())
        os._exit(127)
    os.closerange(3, _RUNNER_FDS)
    body()
    os._exit(127)


def _init(
    spec: Spec,
    pipes: _Pipes,
    seccomp: tuple[Any, ...] | None,
    files: Sequence[tuple[str, bytes | bytearray]],
    body: Callable[[], None],
) -> None:
    """pid 1 of the run's namespaces: sets them up, starts the program, reports its end."""
    report = pipes.report[1]
    try:
        _close_fds_but((2, *pipes.child_ends()))
        _fresh_mounts(spec, files)
        calls().drop_capabilities()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_DUMPABLE, 0)  # the program (the same uid) may not ptrace init
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # init ignores what it has no handler for
        os.write(report, f"T {time.monotonic()}\n".encode())  # set up: for diagnostics
        pid = os.fork()
    except BaseException as exc:
        os.write(report, f"E the run's set-up failed: {exc!r}\n".encode())
        os._exit(1)
    if pid == 0:
        _program(spec, pipes, seccomp, body)
    for fd in pipes.child_ends()[:3]:
        os.close(fd)
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if got == pid:
            os.write(report, f"S {status}\nU {time.monotonic()}\n".encode())
            os._exit(0)  # the kernel kills whatever is left in the namespace


class _Output:
    """What a run's pipes carried, and how the run was cut short."""

    def __init__(self) -> None:
        self.out, self.err, self.report = bytearray(), bytearray(), bytearray()
        self.timed_out = self.exceeded = self.killed = False


def _pump(
    spec: Spec,
    stdin: bytes | bytearray,
    pipes: _Pipes,
    started: float,
    kill: Callable[[], None],
    ended: tuple[int, Callable[[], None]] | None = None,
) -> _Output:
    """Feed the program its stdin and read its stdout, stderr and report pipe until they all
    close, calling `kill` at the wall-clock deadline or when the output passes its cap.
    `ended`: a pidfd of the program and what to do when it exits (end what it left behind).

    `select.poll` straight, not `selectors`: this loop runs while the program, a fork of this
    process, shares its pages, so every object it makes costs a page copy (see `_Calls`)."""
    for fd in pipes.child_ends():
        os.close(fd)
    feed, out_fd, err_fd, report_fd = pipes.parent_ends()
    got = _Output()
    poller = select.poll()
    live = {out_fd, err_fd, report_fd}
    if ended is not None:
        live.add(ended[0])
    for fd in live:
        poller.register(fd, select.POLLIN)
    view = memoryview(stdin)
    if view:
        os.set_blocking(feed, False)
        view = _feed(feed, view)  # a small stdin fits the pipe at once
    if view:
        live.add(feed)
        poller.register(feed, select.POLLOUT)
    else:
        os.close(feed)
    deadline = started + spec.wall_s

    def stop() -> None:
        if not got.killed:
            got.killed = True
            kill()

    def drop(fd: int) -> None:
        poller.unregister(fd)
        live.discard(fd)
        if ended is None or fd != ended[0]:
            os.close(fd)

    if ended is not None and feed not in live and _quiet_end(ended[0], deadline):
        drop(ended[0])  # it ended within the pipes' room: what it wrote waits there
        ended[1]()

    while live:  # a pipe is open, or the program has not ended
        left = deadline - time.monotonic()
        if left <= 0:
            if got.killed:
                break  # pipes still open well after the kill: give up on them
            got.timed_out = True
            stop()
            deadline = time.monotonic() + _DRAIN_S
            continue
        for fd, _ in poller.poll(int(left * 1000) + 1):
            if fd not in live:
                continue
            if ended is not None and fd == ended[0]:
                drop(fd)  # the program ended: nothing it started outlives it
                ended[1]()
                continue
            if fd == feed:
                view = _feed(fd, view)
                if not view:
                    drop(fd)
                continue
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                drop(fd)
                continue
            if fd == report_fd:
                got.report += chunk
                continue
            buf = got.out if fd == out_fd else got.err
            room = spec.output_bytes - len(buf)
            if len(chunk) > room:
                buf += chunk[: max(room, 0)]
                got.exceeded = True
                stop()
            else:
                buf += chunk
    for fd in list(live):
        drop(fd)
    return got


# How long a forked program may run before its pipes are read as it goes. Most programs
# end well within this, having written less than a pipe holds (64 KiB): waiting for their end
# alone spares the parent a wake-up per write, and the page copies its work costs while it
# shares its pages with the running program. A program that fills a pipe sooner waits this
# long at most.
_QUIET_S = 0.005


def _quiet_end(pidfd: int, deadline: float) -> bool:
    """Whether the program of `pidfd` ends within `_QUIET_S` (and its deadline)."""
    left = min(_QUIET_S, deadline - time.monotonic())
    if left <= 0:
        return False
    waiter = select.poll()
    waiter.register(pidfd, select.POLLIN)
    return bool(waiter.poll(int(left * 1000) + 1))


def _feed(fd: int, view: memoryview) -> memoryview:
    """Write what the pipe takes now of `view`; what is left (nothing once the reader is
    gone)."""
    try:
        while view:
            view = view[os.write(fd, view[:_CHUNK]) :]
    except BlockingIOError:
        pass
    except BrokenPipeError:
        return view[:0]
    return view


def _result(
    spec: Spec, got: _Output, elapsed: float, usage: Any, status: int | None
) -> dict[str, Any]:
    """A step's result header: `status` is the program's wait status, None if it never ended
    on its own (killed with its namespace)."""
    cpu = usage.ru_utime + usage.ru_stime
    result: dict[str, Any] = {
        "exit": None,
        "signal": None,
        "wall_s": elapsed,
        "cpu_s": cpu,
        "memory_kb": usage.ru_maxrss,
        "timed_out": got.timed_out,
        "cpu_timed_out": False,
        "output_exceeded": got.exceeded,
        "file_exceeded": False,
    }
    lines = got.report.decode(errors="replace").splitlines()
    errors = [line[2:] for line in lines if line.startswith("E ")]
    if errors:
        result["error"] = errors[0]
    if status is not None:
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            result["signal"] = -code
        else:
            result["exit"] = code
    else:
        result["signal"] = signal.SIGKILL
    sig = result["signal"]
    over_cpu = sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= spec.cpu_rlimit)
    if over_cpu or (cpu > spec.cpu_s and not got.timed_out):
        result["cpu_timed_out"] = True
    result["file_exceeded"] = sig == signal.SIGXFSZ
    return result


def run_step(
    spec: Spec,
    stdin: bytes | bytearray,
    seccomp: bytes,
    files: Sequence[tuple[str, bytes | bytearray]],
    body: Callable[[], None],
) -> tuple[dict[str, Any], bytes, bytes]:
    """Carry out one step in namespaces of its own (`init`, then the program); its result
    header, stdout and stderr."""
    filter_args = calls().seccomp(seccomp) if seccomp else None
    pipes = _Pipes()
    started = time.monotonic()
    init = clone_into_namespaces()
    if init == 0:
        try:
            _init(spec, pipes, filter_args, files, body)
        finally:
            os._exit(1)

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)

    got = _pump(spec, stdin, pipes, started, kill)
    if b"S " not in got.report:  # the pipes closed, yet init has not said how the program ended
        got.killed = True
        kill()
    _, _, usage = os.wait4(init, 0)
    ended = time.monotonic()
    lines = got.report.decode(errors="replace").splitlines()
    statuses = [int(line[2:]) for line in lines if line.startswith("S ")]
    result = _result(spec, got, ended - started, usage, statuses[0] if statuses else None)
    marks = {line[0]: float(line[2:]) for line in lines if line[:2] in ("T ", "U ")}
    if len(marks) == 2:  # where the time went: namespaces and mounts, and their teardown
        result["setup_s"] = marks["T"] - started
        result["teardown_s"] = ended - marks["U"]
    return result, bytes(got.out), bytes(got.err)


# -- job mode -----------------------------------------------------------------------------------


def _exec(argv: list[str]) -> Callable[[], None]:
    def body() -> None:
        try:
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)  # ignored ones would stay so across exec
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"{argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)

    return body


def serve_job(ctl_in: int, ctl_out: int) -> None:
    """One request: {"steps": [{"kind", "argv", "limits", "fresh_work"}...]}; blobs: the
    no-fork seccomp filter, then one stdin per step. A result frame per step; a build that
    fails ends the sequence."""
    frame = read_frame(ctl_in)
    if frame is None:
        return
    header, blobs = frame
    seccomp = bytes(blobs[0])
    for index, raw in enumerate(header["steps"]):
        spec = Spec(raw)
        result, out, err = run_step(
            spec, blobs[index + 1], seccomp if spec.processes == 1 else b"", [], _exec(spec.argv)
        )
        result["kind"] = raw["kind"]
        _write_all(ctl_out, encode(result, [out, err]))
        failed = result["exit"] != 0 or result["timed_out"] or result["output_exceeded"]
        if raw["kind"] == "build" and failed:
            break


# -- warm mode ----------------------------------------------------------------------------------

# Imported once by the warm interpreter, so that programs find them loaded: what programs of
# competitive programming and HumanEval-style tests import most (HumanEval's 164 problems
# import typing 21 times, math 6, random 4, copy and string 2, collections, re and hashlib
# once). Every module here makes each fork dearer, whether the program uses it or not (a
# fork copies the interpreter's page tables and its exit tears down the child's): dataclasses,
# decimal, fractions and statistics, which none of them imports, made the interpreter 1.3 MB
# larger and each program about 0.1 ms slower; a program that imports one pays for it alone.
# `ast`: its import builds the compiler's AST types, which `compile()` otherwise builds in
# every program's process (0.9 ms each).
WARM_IMPORTS = (
    "ast",
    "bisect",
    "collections",
    "copy",
    "functools",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "string",
    "typing",
)


class _RandomOnImport:
    """`random`, imported by the warm interpreter and kept out of `sys.modules`, for the programs
    that import it (a meta path finder and loader: `importlib`'s protocol). A program that
    imports it gets this module then, reseeded as a fresh import seeds it, with the reseed
    registered for its own forks; one that does not pays nothing for it. A reload, or an import
    after `sys.modules` lost it, runs `random`'s own loader, as a fresh interpreter would."""

    def __init__(self, module: types.ModuleType, reseed: Callable[[], None]) -> None:
        self.module, self.reseed, self.given = module, reseed, False
        self.spec: Any = module.__spec__

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        if name != "random":
            return None
        return type(self.spec)(name, self, origin=self.spec.origin)

    def create_module(self, spec: object) -> types.ModuleType | None:
        return None if self.given else self.module

    def exec_module(self, module: types.ModuleType) -> None:
        if self.given or module is not self.module:
            self.spec.loader.exec_module(module)
            return
        self.given = True
        module.__spec__ = self.spec
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)


def _prepare_random() -> None:
    """Import `random` for the programs, with no after-fork hook in this interpreter.

    `random` registers its instance's `seed` (a Python method) to run in every forked child,
    and in a fork of this interpreter that cost 0.12 ms and 40 page faults a program (the
    method's frame, code and objects, each touched page a copy), whether or not the program
    uses `random`. Imported here with that registration caught, it is handed to the programs
    that import it (`_RandomOnImport`) and reseeded then by what the method does with no
    argument: the C seed (`os.urandom`), `gauss_next` cleared. Where the import registers
    anything else, or `random` was imported before, it stays as it is, hook and all."""
    if "random" in sys.modules:
        return
    caught: list[dict[str, Any]] = []
    register = os.register_at_fork
    os.register_at_fork = lambda **hooks: caught.append(hooks)
    try:
        import random
    finally:
        os.register_at_fork = register
    inst: Any = random._inst
    if caught != [{"after_in_child": inst.seed}]:
        for hooks in caught:
            register(**hooks)
        return
    seed = super(random.Random, inst).seed  # the C seed: urandom, as `Random.seed(None)`

    def reseed() -> None:
        seed()
        if inst.gauss_next is not None:
            inst.gauss_next = None

    del sys.modules["random"]
    sys.meta_path.insert(0, _RandomOnImport(random, reseed))


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of `SystemExit` at the top (Python/pythonrun.c)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{code}\n")
    return 1


# The `__main__` module of every program: made once by the warm init, which never uses it, so
# that each program's process has its own pristine copy (copy-on-write) without making one:
# in a fork's child each object made touches pages that cost a fault each (with no closure
# made either, 9 faults a program fewer: 292 to 283, three runs of 200 programs).
_fresh_main: types.ModuleType | None = None


def _python(source_file: str | None, text: bytes | None = None) -> Callable[[], None]:
    """`run_python` of this program, to call in its forked process (the Python loop)."""
    return functools.partial(run_python, source_file, text)


def run_python(source_file: str | None, text: bytes | None = None) -> None:
    """Run a Python program in this (forked) interpreter as `python3 -I -B FILE` would, or as
    `python3 -I -B -` (the program on stdin) when `source_file` is None, then exit. `text`: the
    file's content, as this process wrote it to the work dir (the program compiles it from
    here, not from a read of the file: three system calls and a dozen page copies less)."""
    # What a fresh interpreter has: SIGPIPE and SIGXFSZ ignored (as in this one, see `main`),
    # SIGINT as an exception, SIGTERM default (as in this one). `_signal`, not `signal`,
    # whose enum conversions touch pages enough to cost a fork's child 0.2 ms.
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    if source_file is None:
        chunks = []
        while chunk := os.read(0, _CHUNK):
            chunks.append(chunk)
        source, filename = b"".join(chunks), "<stdin>"
        sys.argv, sys.path[0] = ["-"], ""
    else:
        filename = f"{WORK_DIR}/{source_file}"
        source = text if text is not None else _read_file(filename)
        sys.argv, sys.path[0] = [source_file], WORK_DIR
    main = _fresh_main if _fresh_main is not None else types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    if source_file is not None:
        main.__dict__["__file__"] = filename
        main.__dict__["__cached__"] = None
    sys.modules["__main__"] = main
    code = 0
    try:
        program = compile(source, filename, "exec", dont_inherit=True)
        exec(program, main.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        # Without this function's frame, as the interpreter shows it.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        code = 1
    code = _finish(code)
    os._exit(code if -(1 << 31) <= code < (1 << 31) else 255)


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _finish(code: int) -> int:
    """The interpreter's exit: wait for non-daemon threads, run atexit, flush. (Neither
    `threading` nor `atexit` is imported by the warm interpreter: a program that started a
    thread or registered an exit function imported them.)"""
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()
    atexit = sys.modules.get("atexit")
    if atexit is not None:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            if stream is sys.stdout:
                code = 120  # as the interpreter, when flushing stdout fails at exit
    return code


def _refuse_user_namespaces() -> None:
    """No user namespace may be made in this one from now on (what bwrap's
    `--disable-userns` gives a job): a program's own would let it mount fresh, unsized tmpfs
    and reach kernel code meant for root. Needs CAP_SYS_RESOURCE here; the limit is this
    namespace's, which no process in it without that capability can raise."""
    fd = os.open("/proc/sys/user/max_user_namespaces", os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def _become_warm_init(ctl_in: int, ctl_out: int, refuse_user_namespaces: bool = False) -> None:
    """Go on as pid 1 of new pid, mount and IPC namespaces, the one process of them that
    outlives a program; the process that called this waits for it and ends with it.

    Programs are forked from this process straight into its pid namespace, where it is
    invisible and out of their reach: it is not dumpable, so neither ptrace nor /proc (mounted
    `hidepid=invisible`) gives a program anything of it, and as its namespace's init it gets
    no signal from inside for which it has no handler (it has none). Before each program it
    mounts a fresh work dir, /tmp and /dev/shm over the last one's (keeping those it left
    empty: `_fresh_warm_mounts`); after each it kills every
    other process of the namespace. One fork a program, where a namespace of its own costs two
    (init and the program) and a mount namespace to build and tear down."""
    server = clone_into_namespaces()
    if server != 0:
        for fd in (ctl_in, ctl_out):
            os.close(fd)
        while True:
            try:
                _, status = os.waitpid(server, 0)
                break
            except InterruptedError:
                continue
        os._exit(max(os.waitstatus_to_exitcode(status), 0) & 0xFF)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
    if refuse_user_namespaces:
        _refuse_user_namespaces()
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # for itself and every program it forks
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # no handler: a program's SIGINT is ignored
    os.chdir("/")


# The tmpfs mounts this process made over bwrap's: target -> (options, its root's state just
# after the mount). The work dir is always new; /tmp and /dev/shm are new unless untouched.
_warm_mounts: dict[str, tuple[str, tuple[int, ...]]] = {}


def _root_state(target: str) -> tuple[int, ...]:
    """What of a tmpfs root the loop compares: device, inode, mode, owner, change and access
    time (a program that only lists a directory moves its access time), inode flags."""
    st = os.stat(target)
    state = (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)
    return state + (st.st_atime_ns, _inode_flags(target))


def _inode_flags(path: str) -> int:
    """The inode flags of `path` (chattr's, FS_IOC_GETFLAGS); -1 where they cannot be read."""
    import fcntl  # the Python loop's alone: the C loop reads them itself

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return -1
    try:
        return int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8)), sys.byteorder)
    except OSError:
        return -1
    finally:
        os.close(fd)


def _untouched(target: str, options: str) -> bool:
    """Whether the tmpfs at `target` is as it was mounted with `options`: nothing in it but
    its root (tmpfs counts an xattr as an inode too), no block used, and its root's owner,
    mode and change time as they were (any write to the root's metadata or entries moves its
    change time, which no program can set). Called with every process of the last program
    gone, so nothing holds a file open in it."""
    mounted = _warm_mounts.get(target)
    if mounted is None or mounted[0] != options:
        return False
    fs = os.statvfs(target)
    if fs.f_files - fs.f_ffree != 1 or fs.f_blocks != fs.f_bfree:
        return False
    return _root_state(target) == mounted[1]


# The names of the files the last program was given in the work dir.
_work_files: list[str] = []


def _work_dir_emptied(options: str) -> bool:
    """Whether the work dir's mount can be the next program's: the last program's files
    unlinked by their names, nothing is left in it (no inode but its root, no block: a hard
    link, a new file, a renamed one all show), and its root is the one mounted, with its mode,
    its inode flags and no xattr (ACLs are xattrs); its times are then set anew, and its owner
    is the next program's. Called with every process of the last program gone."""
    mounted = _warm_mounts.get(WORK_DIR)
    if mounted is None or mounted[0] != options:
        return False
    try:
        os.chown(WORK_DIR, os.getuid(), os.getgid())  # the last program's: its entries ours
        for name in _work_files:
            os.unlink(f"{WORK_DIR}/{name}")
        fs = os.statvfs(WORK_DIR)
        if os.listxattr(WORK_DIR):
            return False
    except OSError:
        return False
    if fs.f_files - fs.f_ffree != 1 or fs.f_blocks != fs.f_bfree:
        return False
    state = _root_state(WORK_DIR)
    if state[:3] != mounted[1][:3] or state[-1] != mounted[1][-1]:
        return False
    os.utime(WORK_DIR)  # what it read or set of the root's times: gone
    return True


def _fresh_warm_mounts(
    spec: Spec, files: Sequence[tuple[str, bytes | bytearray]], uid: int | None
) -> None:
    """A fresh work dir holding `files`, /tmp and /dev/shm, over the last program's. /tmp or
    /dev/shm the last program left exactly as mounted stays (two system calls to check, where
    a new mount costs an unmount and a mount); the work dir stays when the last program's
    files were all it left (`_work_dir_emptied`). `uid`: the program's, when not this
    process's: the work dir and its files are its."""
    size = 2 * spec.file_mb << 20
    for target, options in (
        ("/tmp", f"size={size},mode=1777"),
        ("/dev/shm", f"size={spec.file_mb << 20},mode=1777"),
        (WORK_DIR, f"size={size},mode=0755"),
    ):
        if _work_dir_emptied(options) if target == WORK_DIR else _untouched(target, options):
            continue
        if target in _warm_mounts:
            umount(target)
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        _warm_mounts[target] = (options, _root_state(target))
    _work_files[:] = [name for name, _ in files]  # for `_work_dir_emptied`, next time
    _write_files(files, uid)
    if uid is not None:  # written: now the program's
        os.chown(WORK_DIR, uid, uid)


class _IpcView:
    """The IPC namespace programs run in, kept from one program to the next while the last
    left nothing in it (`warm_init.c`'s `fresh_ipc` says why this is all it may hold): its
    POSIX message queues, seen through an mqueue mount of this process's own that is attached
    nowhere (fsopen, fsmount), whose root's size counts the queues. Where the kernel has no
    fsmount, every program gets a new namespace."""

    _SYSCALLS = (430, 431, 432)  # fsopen, fsconfig, fsmount: one number on every machine
    _CLOEXEC, _CMD_CREATE, _NOSUID_NODEV_NOEXEC = 1, 6, 0x2 | 0x4 | 0x8

    def __init__(self) -> None:
        self.fd: int | None = None
        self.root: tuple[int, ...] = ()

    def _open(self) -> None:
        syscall = kernel().raw.syscall
        fsopen, fsconfig, fsmount = (ctypes.c_long(n) for n in self._SYSCALLS)
        fs = syscall(fsopen, ctypes.c_char_p(b"mqueue"), ctypes.c_long(self._CLOEXEC))
        if fs < 0:
            return
        try:
            create = (ctypes.c_long(self._CMD_CREATE), None, None, ctypes.c_long(0))
            if syscall(fsconfig, ctypes.c_long(fs), *create) != 0:
                return
            attrs = (ctypes.c_long(self._CLOEXEC), ctypes.c_long(self._NOSUID_NODEV_NOEXEC))
            fd = syscall(fsmount, ctypes.c_long(fs), *attrs)
        finally:
            os.close(fs)
        if fd < 0:
            return
        if fd >= _RUNNER_FDS:  # each program closes the runner's fds below this, not above
            os.close(fd)
            return
        self.fd, self.root = fd, self._state(fd)

    @staticmethod
    def _state(fd: int) -> tuple[int, ...]:
        st = os.fstat(fd)
        ids = (st.st_ino, st.st_size, st.st_nlink, st.st_mode, st.st_uid, st.st_gid)
        return ids + (st.st_ctime_ns, st.st_mtime_ns, st.st_atime_ns)

    def fresh(self) -> None:
        """The namespace the next program runs in: this one if the last left it untouched."""
        if self.fd is not None and self._state(self.fd) == self.root:
            return
        calls().call(calls().new_ipc, "unshare")
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._open()


_ipc = _IpcView()


def _end_the_rest() -> None:
    """Kill every process of the namespace but this one (init)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)


def _reap_all() -> None:
    _end_the_rest()
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def run_warm_step(
    spec: Spec,
    stdin: bytes | bytearray,
    seccomp: bytes,
    files: Sequence[tuple[str, bytes | bytearray]],
    body: Callable[[], None],
    uid: int | None = None,
    cgroup: int | None = None,
) -> tuple[dict[str, Any], bytes, bytes]:
    """One program forked from this warm init (see `_become_warm_init`): its own work dir,
    /tmp, /dev/shm and IPC namespace, and `uid` and the memory cgroup of `cgroup` (an fd of its
    `cgroup.procs`) when given; its result header, stdout and stderr."""
    _fresh_warm_mounts(spec, files, uid)
    c = calls()
    # An IPC namespace no program before it left anything in, which the program inherits
    # (made here, not in the program, where the same call costs it more: see `_Calls`).
    _ipc.fresh()
    # A program with a uid of its own needs no no-fork filter: its process limit (its
    # processes alone, `own` below) refuses it fork and threads as the filter would, and the
    # second filter cost a program its attach, teardown and runs (warm_init.c).
    filter_args = c.seccomp(seccomp) if seccomp and uid is None else None
    pipes = _Pipes()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            if cgroup is not None:  # first: what it touches from here is charged there
                os.write(cgroup, b"0")
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            c.drop_capabilities()
            os.chdir(WORK_DIR)
        except BaseException as exc:
            os.write(pipes.report[1], f"E the run's set-up failed: {exc!r}\n".encode())
            os._exit(127)
        # With a uid of its own, the program's process limit counts its processes alone.
        _program(spec, pipes, filter_args, body, own=_OWN_PROCESSES if uid is None else 0)
    pidfd = os.pidfd_open(pid)
    try:

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _end_the_rest()

        got = _pump(spec, stdin, pipes, started, kill, ended=(pidfd, _end_the_rest))
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    _reap_all()
    result = _result(spec, got, time.monotonic() - started, usage, status)
    return result, bytes(got.out), bytes(got.err)


_END = encode({"kind": "end"})

# -- warm requests: binary (little-endian), so that the C loop reads them with no JSON parser ---

_WARM_MAGIC = b"AWR1"
_WARM_REQUEST = struct.Struct(
    "<4sIIiI"
)  # magic, files, steps, the program's file (-1: stdin), filter
_WARM_FILE = struct.Struct("<II")  # its name's size, its data's size
_WARM_STEP = struct.Struct("<ddQIIII")  # wall_s, cpu_s, output_bytes, file_mb, processes,
# address_space_mb, its stdin's size


def warm_request(
    source: str | None,
    files: Sequence[tuple[str, bytes]],
    steps: Sequence[dict[str, Any]],
    stdins: Sequence[bytes],
    seccomp: bytes,
) -> bytes:
    """One warm request, framed: run the program `source` (one of `files`; None: the program is
    the stdin) once per step (`{"limits": ...}`, as `Spec` reads it) with its stdin.
    `seccomp`: the no-fork filter of runs that may start no process."""
    names = [name.encode() for name, _ in files]
    index = -1 if source is None else [n for n, _ in files].index(source)
    parts = [_WARM_REQUEST.pack(_WARM_MAGIC, len(files), len(steps), index, len(seccomp))]
    parts += [_WARM_FILE.pack(len(n), len(d)) for n, (_, d) in zip(names, files, strict=True)]
    for raw, stdin in zip(steps, stdins, strict=True):
        spec = Spec(raw)
        parts.append(
            _WARM_STEP.pack(
                spec.wall_s,
                spec.cpu_s,
                spec.output_bytes,
                spec.file_mb,
                spec.processes,
                spec.address_space_mb,
                len(stdin),
            )
        )
    parts.append(seccomp)
    for name, (_, data) in zip(names, files, strict=True):
        parts += [name, data]
    parts += stdins
    size = sum(len(p) for p in parts)
    return b"".join([_LEN.pack(size), *parts])


class _WarmRequest:
    """A warm request as the Python loop reads it (`warm_request` wrote it)."""

    def __init__(self, body: bytearray) -> None:
        view = memoryview(body)
        magic, nfiles, nsteps, index, seccomp_len = _WARM_REQUEST.unpack_from(view)
        if magic != _WARM_MAGIC:
            raise ValueError("not a warm request")
        at = _WARM_REQUEST.size
        heads = [_WARM_FILE.unpack_from(view, at + i * _WARM_FILE.size) for i in range(nfiles)]
        at += nfiles * _WARM_FILE.size
        self.specs, sizes = [], []
        for i in range(nsteps):
            wall, cpu, output, file_mb, processes, space, stdin = _WARM_STEP.unpack_from(
                view, at + i * _WARM_STEP.size
            )
            limits = {"wall_s": wall, "cpu_s": cpu, "output_bytes": output, "file_mb": file_mb}
            limits |= {"processes": processes, "memory_mb": space, "address_space_mb": space}
            self.specs.append(Spec({"limits": limits}))
            sizes.append(stdin)
        at += nsteps * _WARM_STEP.size
        self.blobs: list[bytearray] = [body]
        self.seccomp = bytes(view[at : at + seccomp_len])
        at += seccomp_len
        self.files: list[tuple[str, bytearray]] = []
        for name_len, data_len in heads:
            name = bytes(view[at : at + name_len]).decode()
            self.files.append((name, bytearray(view[at + name_len : at + name_len + data_len])))
            at += name_len + data_len
        self.stdins = []
        for size in sizes:
            self.stdins.append(bytearray(view[at : at + size]))
            at += size
        if at != len(body):
            raise ValueError("a warm request's sizes do not add up")
        self.source = None if index < 0 else self.files[index][0]
        self.blobs += [d for _, d in self.files] + self.stdins

    def wipe(self) -> None:
        """No copy of this program's code or input stays for the next."""
        for blob in self.blobs:
            blob[:] = bytes(len(blob))


def _read_warm_request(fd: int) -> _WarmRequest | None:
    raw = _read_exact(fd, _LEN.size)
    if raw is None:
        return None
    body = _read_exact(fd, _LEN.unpack(raw)[0])
    return None if body is None else _WarmRequest(body)


class _WarmProgram(ctypes.Structure):
    """What the C loop hands a program's process (`warm_init.c`: `struct assay_program`)."""

    _fields_ = [
        ("after_fork", ctypes.c_void_p),
        ("area", ctypes.c_void_p),
        ("area_size", ctypes.c_uint64),
    ]


# Where the C loop puts a program's name and text in its process: a private anonymous mapping,
# never touched by this process (a fork copies none of it). The program's address space holds
# it too, so it is small; a text that does not fit is read from the work dir.
_AREA_BYTES = 1 << 18
_AREA_HEAD = struct.Struct("=QQ")  # the name's size and the text's, or _NO_SIZE
_NO_SIZE = (1 << 64) - 1


def _serve_in_c(
    library: ctypes.CDLL, ctl_in: int, ctl_out: int, uids: Sequence[int], cgroup: int | None
) -> None:
    """The loop of `serve_warm` in C (`warm_init.c`): it returns here only when the requests
    end, and in each program's process, set up, to run the program.

    Nothing of ctypes is used in a program's process: its first call there cost 0.1 ms and 30
    page faults (the objects it touches, each page a copy), and the interpreter's after-fork
    hook through it 0.2 ms more. The C loop calls the hook, as `os.fork` does in C (the
    interpreter's locks and threads, the at-fork hooks), and puts the program's name and text
    in `area`, read here as bytes."""
    area = mmap.mmap(-1, _AREA_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(area)
    program = _WarmProgram(
        after_fork=ctypes.cast(ctypes.pythonapi.PyOS_AfterFork_Child, ctypes.c_void_p).value,
        area=ctypes.addressof(ctypes.c_char.from_buffer(area)),
        area_size=_AREA_BYTES,
    )
    serve = library.assay_warm_serve
    serve.argtypes = [ctypes.c_int] * 5 + [ctypes.POINTER(_WarmProgram)]
    serve.restype = ctypes.c_int
    first, count = (uids[0], len(uids)) if uids else (-1, 0)
    got = serve(ctl_in, ctl_out, first, count, -1 if cgroup is None else cgroup, program)
    if got < 0:
        raise SystemExit(1)  # the loop said why on stderr
    if got == 0:
        return
    name_size, text_size = _AREA_HEAD.unpack_from(view)
    name = text = None
    if name_size != _NO_SIZE:
        at = _AREA_HEAD.size
        name = str(view[at : at + name_size], "utf-8")
        if text_size != _NO_SIZE:
            text = bytes(view[at + name_size : at + name_size + text_size])
    run_python(name, text)


def serve_warm(
    ctl_in: int,
    ctl_out: int,
    uids: Sequence[int] = (),
    cgroup: int | None = None,
    library: ctypes.CDLL | None = None,
) -> None:
    """Requests until the input ends (`warm_request`), each one program and its runs. A result
    frame per run, each but the last answered by one byte (1: go on, 0: stop; the service stops
    at a failure), then {"kind": "end"}.

    `uids`: where the service, as root, mapped more than this process's uid into the
    sandbox's user namespace, the uids programs take in turn (each run of a request the
    next): a program never has this process's uid nor the last program's, owns its work dir,
    and its process limit counts its own processes.

    `cgroup`: an fd of the `cgroup.procs` of the programs' own memory cgroup (the service opened
    it): each program moves itself in as it starts, so that it is capped at its own limits,
    not at its worker's (which hold this interpreter too), and its OOM kills are its own.

    `library`: `warm_init.c`, compiled, which runs this loop with no Python between forks (see
    there); without it, the loop below does the same in Python."""
    import gc
    import importlib

    _become_warm_init(ctl_in, ctl_out, refuse_user_namespaces=bool(uids))
    global _fresh_main
    turn = 0
    _prepare_random()
    _fresh_main = types.ModuleType("__main__")
    for name in WARM_IMPORTS:
        if name == "random":  # above
            continue
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    gc.collect()
    gc.freeze()  # the forked programs share these objects' pages instead of copying them
    _write_all(ctl_out, encode({"kind": "ready", "pid": os.getpid()}))
    if library is not None:
        _serve_in_c(library, ctl_in, ctl_out, uids, cgroup)
        return
    while (request := _read_warm_request(ctl_in)) is not None:
        body = _python(
            request.source, next((bytes(d) for n, d in request.files if n == request.source), None)
        )
        last = len(request.specs) - 1
        if last < 0:
            _write_all(ctl_out, _END)
        for index, spec in enumerate(request.specs):
            uid = uids[turn % len(uids)] if uids else None
            turn += 1
            result, out, err = run_warm_step(
                spec,
                request.stdins[index],
                request.seccomp if spec.processes == 1 else b"",
                request.files,
                body,
                uid,
                cgroup,
            )
            result["kind"] = "run"
            answer = encode(result, [out, err])
            del out, err
            if index == last:  # one write for the last result and the end
                _write_all(ctl_out, answer + _END)
                break
            _write_all(ctl_out, answer)
            go = _read_exact(ctl_in, 1)  # the service says whether to go on
            if go is None:
                return
            if not go[0]:
                _write_all(ctl_out, _END)
                break
        request.wipe()
        del request, body


def main() -> None:
    # The control channel moves off fds 0 and 1, which the programs' own stdio objects (kept
    # from this interpreter) will wrap; they point at /dev/null meanwhile.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    options = dict(arg.removeprefix("--").split("=", 1) for arg in sys.argv[2:])
    cgroup = int(options["cgroup-fd"]) if "cgroup-fd" in options else None
    library = None
    if "init-fd" in options:  # warm_init.c, compiled, in a memfd
        library = ctypes.PyDLL(f"/proc/self/fd/{options['init-fd']}")  # the GIL held, as in os.fork
    _close_fds_but((0, 1, 2, ctl_in, ctl_out, *([cgroup] if cgroup is not None else [])))
    if cgroup is not None:  # below the fds a program closes (`_RUNNER_FDS`)
        low = os.dup(cgroup)
        os.close(cgroup)
        cgroup = low
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = _RUNNER_FDS if most == resource.RLIM_INFINITY else min(_RUNNER_FDS, most)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds, most))
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # what the runs' namespaces leave is this process's
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    if sys.argv[1:2] == ["warm"]:
        uids: Sequence[int] = ()
        if "uids" in options:  # --uids=FIRST:COUNT
            first, count = options["uids"].split(":")
            uids = range(int(first), int(first) + int(count))
        serve_warm(ctl_in, ctl_out, uids, cgroup, library)
    else:
        serve_job(ctl_in, ctl_out)


if __name__ == "__main__":
    main()
