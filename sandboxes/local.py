"""The local sandbox: each job in bubblewrap, limited by rlimits, killed from outside.

A job gets fresh namespaces (user, pid, net, ipc, uts, mount, cgroup) and may not make user
namespaces of its own, so it has no network and sees only its own processes; /usr and an
allowlist of /etc are mounted read-only, nothing of the host's homes, project trees or other
configuration is visible, the environment is cleared, and the only writable places are size-
capped tmpfs mounts: the work dir, /tmp and /dev/shm. The kill comes from outside: at the
deadline the whole process group is killed, and since the job's pid namespace dies with bwrap,
so does everything the program started. Nothing is written to the host's disk.

Memory: RLIMIT_AS bounds each process of a job, not the job; a job that forks can hold up to
`processes` times `memory_mb`, plus its tmpfs mounts (4 x file_mb, + file_mb for /dev/shm).
A per-job cgroup would bound the whole; the container backend has one.

When assay runs as root, each running job also gets a host uid of its own from a pool, so the
process limit (RLIMIT_NPROC counts per uid) holds per job and a job cannot signal another.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import fnmatch
import logging
import os
import random
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Literal

from assay.sandboxes.base import Job, Limits, RunResult
from assay.sandboxes.errors import SandboxError, SandboxUnavailable

log = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
WORK_DIR = "/work"
_CHUNK = 1 << 16
# What of /etc a job sees: what toolchains read (the dynamic linker's cache, alternatives
# symlinks, users, time zone, certificates, language runtimes' own config), and nothing else:
# /etc also holds things like pip.conf, npmrc or an environment file that may carry secrets.
# Shell-style patterns; a toolchain that needs more gets a row here.
ETC_ALLOWED = (
    "alternatives",
    "ca-certificates*",
    "debian_version",
    "fonts",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "java-*",
    "ld.so.*",
    "locale.alias",
    "localtime",
    "magic*",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "perl",
    "protocols",
    "python3*",
    "services",
    "ssl",
    "terminfo",
    "timezone",
    "xml",
)
# The job's own processes and open files: RLIMIT_NPROC counts threads too.
_NOFILE = 256

Isolation = Literal["bwrap", "unsandboxed"]


class UidPool:
    """Host uids for running jobs, one each, safe to share between worker processes.

    A uid is taken by holding an exclusive `flock` on its lock file, so two `assay serve`
    workers never hand out the same uid at the same time, and a crashed worker's uids free
    themselves when its file descriptors close.
    """

    def __init__(self, base: int, count: int, lock_dir: Path) -> None:
        self.base, self.count, self.lock_dir = base, count, lock_dir
        self._held: dict[int, int] = {}

    def acquire(self) -> int:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        start = random.randrange(self.count)
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            if uid in self._held:
                continue
            fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise SandboxError(f"all {self.count} sandbox uids from {self.base} are in use")

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid)
        os.close(fd)  # closing drops the flock

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        uid = self.acquire()
        try:
            yield uid
        finally:
            self.release(uid)


def _symlink_or_bind(path: str) -> list[str]:
    """Mirror a system path: as the symlink it is (merged /usr), or read-only."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.exists(path):
        return ["--ro-bind", path, path]
    return []


def _world_readable(path: str) -> bool:
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return True
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


def _copy_etc(dest: Path) -> None:
    """The allowed, world-readable part of /etc, copied into `dest` (symlinks kept as such)."""

    def unreadable(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if not _world_readable(os.path.join(folder, n))]

    for name in sorted(os.listdir("/etc")):
        source = f"/etc/{name}"
        if not any(fnmatch.fnmatchcase(name, p) for p in ETC_ALLOWED):
            continue
        try:
            if not _world_readable(source):
                continue
            if os.path.islink(source):
                os.symlink(os.readlink(source), dest / name)
            elif os.path.isdir(source):
                shutil.copytree(source, dest / name, symlinks=True, ignore=unreadable)
            else:
                shutil.copy2(source, dest / name)
        except OSError as exc:
            log.warning("sandbox /etc: %s left out: %s", source, exc)


@cache
def etc_view() -> str:
    """This process's copy of the part of /etc that jobs see, made once and bound read-only as
    their /etc: one mount per job (binding each entry costs ~0.1 ms of every job's start). It is
    a snapshot: what is installed into /etc later shows after a restart."""
    dest = Path(tempfile.mkdtemp(prefix="assay-etc-"))
    dest.chmod(0o755)
    _copy_etc(dest)
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    return str(dest)


class LocalSandbox:
    """Runs jobs on this machine, in bubblewrap (`isolation="bwrap"`, the default).

    `bwrap` names the bubblewrap program (`None`: act as if it were missing).
    `isolation="unsandboxed"` runs programs bare, with only rlimits, a temporary work dir and a
    process-group kill: an operator's explicit choice for machines without bubblewrap, never a
    fallback.
    """

    name = "local"

    def __init__(
        self,
        *,
        isolation: Isolation = "bwrap",
        max_jobs: int | None = None,
        uid_base: int = 61000,
        uid_count: int = 1000,
        lock_dir: Path | None = None,
        bwrap: str | None = "bwrap",
    ) -> None:
        self.isolation = isolation
        self.max_jobs = max_jobs or 2 * (os.cpu_count() or 1)
        self._slots = asyncio.Semaphore(self.max_jobs)
        self._as_root = os.geteuid() == 0
        lock_dir = lock_dir or Path(tempfile.gettempdir()) / "assay-sandbox-uids"
        self._uids = UidPool(uid_base, uid_count, lock_dir) if self._as_root else None
        self._bwrap = shutil.which(bwrap) if bwrap else None
        self._prlimit = shutil.which("prlimit")
        self._probe: str | None | Literal[False] = False  # False: not probed yet
        self._etc = etc_view() if isolation == "bwrap" and self._bwrap else ""
        if isolation == "unsandboxed":
            log.warning(
                "ASSAY: running untrusted code WITHOUT a sandbox (isolation=unsandboxed); "
                "programs can read this machine's files and reach its network"
            )

    # -- availability -----------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if self._prlimit is None:
            return "prlimit (util-linux) is not installed, so no limits can be set"
        if self.isolation == "unsandboxed":
            return None
        if self._bwrap is None:
            return (
                "bubblewrap (bwrap) is not installed, so untrusted code cannot be sandboxed: "
                "install it (apt-get install bubblewrap), or set ASSAY_SANDBOX=unsandboxed to "
                "run code without a sandbox"
            )
        if isinstance(self._probe, str):
            return self._probe
        return None

    async def check(self) -> str | None:
        """Run a trivial job once so that a bwrap that cannot start is found before work is."""
        reason = self.unavailable_reason()
        if reason is not None or self._probe is not False:
            return reason
        try:
            result = await self._run_checked(Job(argv=("true",), limits=Limits(wall_s=10)))
        except SandboxError as exc:
            self._probe = f"the sandbox does not start here: {exc}"
        else:
            self._probe = (
                None
                if result.exit_code == 0
                else (
                    "the sandbox does not start here: "
                    + result.stderr.decode(errors="replace").strip()[-500:]
                )
            )
        return self._probe

    def has_tool(self, tool: str) -> bool:
        return shutil.which(tool, path=SANDBOX_PATH) is not None

    async def close(self) -> None:
        return None

    # -- running ------------------------------------------------------------------------------

    async def run(self, job: Job) -> RunResult:
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        return await self._run_checked(job)

    async def _run_checked(self, job: Job) -> RunResult:
        async with self._slots:
            if self._uids is None:
                return await self._run(job, None)
            with self._uids.hold() as uid:
                return await self._run(job, uid)

    def _prlimit_args(self, limits: Limits) -> list[str]:
        assert self._prlimit is not None
        cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.wall_s + 1) + 1
        memory = limits.memory_mb << 20
        file_size = limits.file_mb << 20
        # bwrap and its pid-1 reaper count against the process limit too; `processes` is what
        # the program itself may have, itself included.
        nproc = limits.processes + 2
        return [
            self._prlimit,
            f"--cpu={cpu}:{cpu + 1}",
            f"--as={memory}",
            f"--fsize={file_size}",
            f"--nproc={nproc}",
            f"--nofile={_NOFILE}",
            "--core=0",
            "--",
        ]

    def _bwrap_args(self, job: Job, fds: dict[str, int]) -> list[str]:
        assert self._bwrap is not None
        # Room for two files of the largest size, so that one big file meets the file-size
        # limit (a clear EFBIG / SIGXFSZ) before it fills the work dir.
        size = str(2 * job.limits.file_mb << 20)
        # No user namespaces inside: a nested one would give the job the right to mount fresh,
        # unsized tmpfs (memory outside every limit) and reach kernel code meant for root.
        args = [self._bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--uid", "1000", "--gid", "1000"]
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        args += ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
            args += _symlink_or_bind(top)
        args += ["--ro-bind", self._etc, "/etc", "--proc", "/proc", "--dev", "/dev"]
        # bwrap's /dev is a tmpfs of its own, with no size: shared memory gets a sized one and
        # the rest of /dev is read-only (its device nodes still work).
        shm = str(job.limits.file_mb << 20)
        args += ["--size", shm, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
        args += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", WORK_DIR]
        for name, fd in fds.items():
            args += ["--perms", "0644", "--file", str(fd), f"{WORK_DIR}/{name}"]
        # The root bwrap builds is a tmpfs of its own: make it read-only, so that only the two
        # sized tmpfs mounts can be written.
        args += ["--remount-ro", "/", "--chdir", WORK_DIR, "--clearenv"]
        for key, value in _sandbox_env(WORK_DIR).items():
            args += ["--setenv", key, value]
        return [*args, "--", *job.argv]

    async def _run(self, job: Job, uid: int | None) -> RunResult:
        for name in job.files:
            if "/" in name or name in ("", ".", ".."):
                raise SandboxError(f"file name {name!r} must be a plain name in the work dir")
        with contextlib.ExitStack() as stack:
            if self.isolation == "bwrap":
                fds = {
                    name: stack.enter_context(_memfd(name, data))
                    for name, data in job.files.items()
                }
                argv = self._prlimit_args(job.limits) + self._bwrap_args(job, fds)
                cwd, env = None, {"PATH": SANDBOX_PATH}
            else:
                fds = {}
                workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="assay-job-"))
                _write_files(Path(workdir), job.files, uid)
                argv = self._prlimit_args(job.limits) + list(job.argv)
                cwd, env = workdir, _sandbox_env(workdir)
            return await _execute(argv, job, uid, cwd, env, list(fds.values()))
        raise AssertionError("unreachable")


def _sandbox_env(workdir: str) -> dict[str, str]:
    return {"PATH": SANDBOX_PATH, "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


@contextlib.contextmanager
def _memfd(name: str, data: str | bytes) -> Iterator[int]:
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


def _write_files(workdir: Path, files: Mapping[str, str | bytes], uid: int | None) -> None:
    for name, data in files.items():
        path = workdir / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    if uid is not None:
        os.chown(workdir, uid, uid)
        for name in files:
            os.chown(workdir / name, uid, uid)


async def _execute(
    argv: list[str],
    job: Job,
    uid: int | None,
    cwd: str | None,
    env: dict[str, str],
    pass_fds: list[int],
) -> RunResult:
    limits = job.limits
    ids: dict[str, object] = {}
    if uid is not None:
        ids = {"user": uid, "group": uid, "extra_groups": []}
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=pass_fds,
            cwd=cwd,
            env=env,
            **ids,  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise SandboxError(f"could not start {argv[0]}: {exc}") from exc

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
            await asyncio.gather(out, err, fed)
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        # Whatever happened (deadline, cap, cancellation), nothing of the job outlives this.
        kill()
        for task in (out, err, fed):
            task.cancel()
        await asyncio.shield(_reap(proc))
        if uid is not None and cwd is not None:
            await _kill_uid(uid)
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


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed job and read its pipes to the end, so that they close."""
    await proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is None:
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while await stream.read(_CHUNK):
                    pass


async def _kill_uid(uid: int) -> None:
    """Unsandboxed runs have no pid namespace: kill whatever else runs as the job's uid."""
    pkill = shutil.which("pkill")
    if pkill:
        proc = await asyncio.create_subprocess_exec(pkill, "-KILL", "-U", str(uid))
        await proc.wait()
