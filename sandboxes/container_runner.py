"""The trusted runner inside a warm language container (the docker backend's side of the pipe).

It is the container's main process, started as `python3 -u -c <this file's text>` so that any
image with a python3 can serve, and it runs one job at a time for the service, which writes a
request as one JSON line on the container's stdin and reads the answer as one JSON line on its
stdout:

    {"op": "run", "argv": [...], "files": {name: base64}, "stdin": base64, "limits": {...}}
    -> {"exit_code", "signal", "stdout": base64, "stderr": base64, "time_s", "timed_out",
        "output_exceeded", "file_exceeded", "oom_killed", "clean": bool, "why": str}
    {"op": "run", ..., "keep": "after" | "before"}: the same, but the work dir is kept as the
        job left it ("after": a build's output, for the runs of the same item that follow), or
        as it was before the job ("before": a run; what it added there is removed, and a file
        it changed makes the container unclean); /tmp and /dev/shm are emptied as always
    {"op": "wipe"} -> {"clean": bool, "why": str}: end an item (kill, empty everything)
    {"op": "exec", "argv": [...], "files": {...}, "env": {...}, "limits": {...},
     "seccomp": base64}
    -> the runner writes the files, starts the tool as its child with the limits and filters
       of a job (but the CPU time: a tool's user bounds each request), which answers
       {"ready": true} and execs; the tool has the container's stdin and stdout to itself. When
       it ends, the runner kills what it left, writes how it ended as its last stderr line
       (`TOOL_EXIT` {"exit_code", "oom_killed"}) and exits: a container serves one tool for its
       whole life, and goes with it

Every limit is applied to the job from outside it: rlimits set in the child before exec, the
deadline and the output caps by this process, the whole process group killed at the end. After
each job the runner kills every other process in the container (it sees them all: the container
is its pid namespace), empties the writable mounts (the work dir, /tmp, /dev/shm) and SysV IPC,
and checks that nothing is left; `clean: false` makes the service replace the container rather
than give it another job. The runner makes itself non-dumpable, so that a job running as the
same uid can neither ptrace it nor read its memory; a job that kills it ends the container,
which the service sees and replaces.

Only the standard library: it runs in every language image.
"""

# This file is executed as a script inside containers: keep it free of assay imports.
from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import platform
import resource
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import Any

WORK = "/work"
# /var/tmp: Podman mounts a writable tmpfs there on a read-only root (its `read_only_tmpfs`),
# which outlived jobs until tests/reliability/test_escapes_native.py found a file planted there.
WRITABLE = ("/work", "/tmp", "/dev/shm", "/var/tmp")
PATH = "/usr/local/bin:/usr/bin:/bin"
TOOL_EXIT = "assay-runner: tool exit "
"""The start of the runner's last line on stderr after a tool ends (`_exec`), before a JSON
object: `exit_code` (negative: the signal that killed it) and `oom_killed`."""
CHUNK = 1 << 16
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
# (unshare, clone, clone3) per machine: no job makes namespaces of its own (a user namespace
# would let it mount unsized tmpfs and reach kernel code meant for root).
_NAMESPACE_CALLS = {"x86_64": (272, 56, 435), "aarch64": (97, 220, 435)}


def _namespace_filter() -> bytes:
    """cBPF: unshare -> EPERM, clone with CLONE_NEWUSER -> EPERM, clone3 -> ENOSYS (libc then
    uses clone, whose flags can be seen); anything else goes on to the service's filter."""
    calls = _NAMESPACE_CALLS.get(platform.machine())
    if calls is None:
        return b""
    unshare, clone, clone3 = calls
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("<HBBI", code, jt, jf, k)

    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    return b"".join(
        [
            op(ld, 0, 0, 0),  # A = nr
            op(jeq, 4, 0, unshare),  # -> deny
            op(jeq, 5, 0, clone3),  # -> enosys
            op(jeq, 0, 3, clone),  # clone: look at its flags, else allow
            op(ld, 0, 0, 16),  # A = arg0 (low 32 bits)
            op(jset, 0, 1, CLONE_NEWUSER),  # -> deny, else allow
            op(ret, 0, 0, eperm),
            op(ret, 0, 0, allow),
            op(ret, 0, 0, enosys),
        ]
    )


def _load_filter(program: bytes) -> None:
    """Load a raw cBPF program (struct sock_filter[]) as a seccomp filter on this process."""
    if not program:
        return

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prog = SockFprog(len(program) // 8, program)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def _oom_kills() -> int:
    """The container's OOM kill count, where its cgroup is visible (v2, then v1)."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def _limits(limits: dict[str, Any], service_filter: bytes, *, cpu_limit: bool = True) -> Any:
    cpu = int(limits.get("cpu_s") or limits["wall_s"] + 1) + 1
    # Runtimes that reserve far more address space than they use (JVM, Go, V8) get room.
    memory = int(limits.get("address_space_mb") or limits["memory_mb"]) << 20
    file_size = int(limits["file_mb"]) << 20

    def apply() -> None:
        # The job, not the runner, is what the kernel kills when the container runs out.
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "no_new_privs refused")
        _load_filter(_namespace_filter())
        _load_filter(service_filter)
        if cpu_limit:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Last: this (forked) interpreter may already hold more address space than the job
        # may; any allocation after it could fail here instead of in the job.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return apply


def _exited(pid: int) -> bool:
    """Whether the process has ended, without reaping it (its usage is read when it is)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _reap(pid: int, deadline: float | None) -> tuple[int | None, Any]:
    """The process's exit code (negative: the signal) and resource usage, once it ends; `None`
    if it is still running at `deadline` (`None`: wait as long as it takes)."""
    while True:
        got, status, usage = os.wait4(pid, 0 if deadline is None else os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status), usage
        if deadline is not None and time.monotonic() >= deadline:
            return None, None
        _wait_for_exit(pid, deadline)


def _wait_for_exit(pid: int, deadline: float | None) -> None:
    """Sleep until the process ends or the deadline passes. A program closes its pipes just
    before it exits, so the runner usually gets here a moment too early: waiting on a pidfd
    wakes at the exit itself (a 5 ms sleep cost most jobs 5 ms); where the kernel or the
    container's seccomp profile has no pidfd_open, a short sleep."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        time.sleep(0.005)
        return
    try:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        select.select([fd], [], [], left)
    finally:
        os.close(fd)


def _write_files(files: dict[str, str]) -> None:
    for name, data in files.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"file name {name!r} must be a plain name in the work dir")
        with open(os.path.join(WORK, name), "wb") as f:
            f.write(base64.b64decode(data))


def _others() -> list[int]:
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]


def _kill_others() -> None:
    """Kill every process but this one (the container is our pid namespace) and reap them."""
    for _ in range(50):
        pids = _others()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.01)


def _snapshot() -> dict[str, tuple[int, int, int]]:
    """The work dir's files as (size, mtime, mode), to tell what a job added or changed."""
    found = {}
    for name in os.listdir(WORK):
        try:
            st = os.lstat(os.path.join(WORK, name))
        except OSError:
            continue
        found[name] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


def _wipe(keep: dict[str, tuple[int, int, int]] | None = None) -> list[str]:
    """Empty the writable mounts but, in the work dir, the unchanged files of `keep`; what
    could not be removed is returned."""
    left = []
    for top in WRITABLE:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            if top == WORK and keep is not None and name in keep:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if keep[name] == (st.st_size, st.st_mtime_ns, st.st_mode):
                    continue
                left.append(f"{path} (changed by a later step)")
                continue
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    for root, dirs, _ in os.walk(path):  # a job may have left dirs unreadable
                        for d in dirs:
                            os.chmod(os.path.join(root, d), 0o700)
                    os.chmod(path, 0o700)
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                left.append(path)
    for kind, flag in (("shm", "-m"), ("msg", "-q"), ("sem", "-s")):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                if any(line.strip() for line in f):
                    left.append(f"SysV {kind} ({flag})")
        except (OSError, StopIteration):
            pass
    return left


def _run(request: dict[str, Any]) -> dict[str, Any]:
    limits = request["limits"]
    _write_files(request.get("files", {}))
    keep = request.get("keep")  # "before": keep the work dir as it was; "after": as left
    before = _snapshot() if keep == "before" else None
    stdin = base64.b64decode(request.get("stdin", ""))
    oom_before = _oom_kills()
    started = time.monotonic()
    proc = subprocess.Popen(
        request["argv"],
        cwd=WORK,
        env={"PATH": PATH, "HOME": WORK, "TMPDIR": "/tmp", "LANG": "C.UTF-8"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_limits(limits, base64.b64decode(request.get("seccomp", ""))),
    )
    cap = int(limits["output_bytes"])
    out, err = bytearray(), bytearray()
    exceeded = timed_out = False
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdin is not None
    for stream, buf in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ, buf)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE, None)
    else:
        proc.stdin.close()
    deadline = started + float(limits["wall_s"])
    exited_at: float | None = None
    while selector.get_map():
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            timed_out = exited_at is None
            break
        if exited_at is None and _exited(proc.pid):
            exited_at = now
        # Once the program has exited, what it started may hold its pipes open: read what is
        # there, briefly, and stop.
        if exited_at is not None and now - exited_at > 0.05:
            break
        for key, _ in selector.select(min(left, 0.05)):
            if key.data is None:  # stdin
                try:
                    pending = pending[os.write(key.fd, pending[:CHUNK]) :]
                except (BrokenPipeError, ConnectionResetError):
                    pending = memoryview(b"")
                if not pending:
                    selector.unregister(key.fileobj)
                    proc.stdin.close()
                continue
            chunk = os.read(key.fd, CHUNK)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buf = key.data
            room = cap - len(buf)
            buf += chunk[:room]
            if len(chunk) > room:
                exceeded = True
                break
        if exceeded:
            break
    code: int | None = None
    usage = None
    if not (timed_out or exceeded):
        # Its pipes are closed: it is exiting (a program closes its output before it ends).
        # Wait for its status before the kill, or the kill would be what it died of.
        code, usage = _reap(proc.pid, deadline)
        timed_out = code is None  # it closed its output and went on running
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if code is None:
        code, usage = _reap(proc.pid, None)
    assert code is not None
    proc.returncode = code  # reaped here, with its resource usage
    elapsed = time.monotonic() - started
    selector.close()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            stream.close()
    sig = -code if code < 0 else None
    _kill_others()
    if keep == "after":
        before = _snapshot()
    remains = _wipe(before)
    return {
        "exit_code": None if sig is not None else code,
        "signal": sig,
        "stdout": base64.b64encode(bytes(out)).decode(),
        "stderr": base64.b64encode(bytes(err)).decode(),
        "time_s": elapsed,
        "timed_out": timed_out or sig == signal.SIGXCPU,
        "output_exceeded": exceeded,
        "file_exceeded": sig == signal.SIGXFSZ,
        "oom_killed": _oom_kills() > oom_before,
        "memory_kb": usage.ru_maxrss if usage is not None else None,
        "cpu_time_s": usage.ru_utime + usage.ru_stime if usage is not None else None,
        "clean": not remains and not _others(),
        "why": ", ".join(remains),
    }


def _write_data(data: dict[str, str]) -> None:
    """A tool's data copied in (the service could not mount it): each at its own absolute
    path, on the tmpfs the service put at its folder, read-only."""
    for path, blob in data.items():
        if not os.path.isabs(path) or ".." in path.split("/"):
            raise ValueError(f"data path {path!r} must be absolute")
        with open(path, "wb") as f:
            f.write(base64.b64decode(blob))
        os.chmod(path, 0o444)


def _exec(request: dict[str, Any]) -> int:
    """Start the tool as this runner's child, on the container's stdin and stdout, and wait for
    it; then kill what it left and write its exit report (`TOOL_EXIT`) as the last line on
    stderr. The runner stays the container's pid 1, which nothing in the container can kill,
    so the report comes from it and no one else: the service learns how the tool ended (a kill
    from outside is not charged to the item it was judging, as on the local backend)."""
    _write_files(request.pop("files", {}))
    _write_data(request.pop("data", {}))
    env = {"PATH": PATH, "HOME": WORK, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    env.update(request.get("env", {}))
    os.chdir(WORK)
    oom_before = _oom_kills()
    pid = os.fork()
    if pid == 0:  # the tool: what a job gets from its parent, it takes itself
        try:
            if "limits" in request:
                seccomp = base64.b64decode(request.get("seccomp", ""))
                _limits(request["limits"], seccomp, cpu_limit=False)()
            sys.stdout.write(json.dumps({"ready": True}) + "\n")
            sys.stdout.flush()
            os.execvpe(request["argv"][0], request["argv"], env)
        except BaseException as exc:  # a forked child must never return
            with contextlib.suppress(BaseException):
                sys.stderr.write(f"the tool did not start: {type(exc).__name__}: {exc}\n")
                sys.stderr.flush()
        os._exit(127)
    # The tool alone holds the container's stdin and stdout: when it ends, they end with this
    # process (the attach stream closes as the container does).
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    code, _ = _reap(pid, None)
    assert code is not None
    _kill_others()
    report = {"exit_code": code, "oom_killed": _oom_kills() > oom_before}
    os.write(2, f"\n{TOOL_EXIT}{json.dumps(report)}\n".encode())
    return 0


def main() -> None:
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "exec":
            _exec(request)
            return
        if request.get("op") == "wipe":
            _kill_others()
            remains = _wipe()
            answer = {"clean": not remains and not _others(), "why": ", ".join(remains)}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            continue
        try:
            answer = _run(request)
        except (OSError, ValueError, KeyError) as exc:
            _kill_others()
            answer = {"error": f"{type(exc).__name__}: {exc}", "clean": not _wipe()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
