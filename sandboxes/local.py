"""The local sandbox: each job in bubblewrap, limited by rlimits, killed from outside.

A job gets fresh namespaces (user, pid, net, ipc, uts, mount, cgroup) and may not make user
namespaces of its own, so it has no network and sees only its own processes; /usr and an
allowlist of /etc are mounted read-only, nothing of the host's homes, project trees or other
configuration is visible, the environment is cleared, and the only writable places are size-
capped tmpfs mounts: the work dir, /tmp and /dev/shm. The kill comes from outside: at the
deadline the whole process group is killed, and since the job's pid namespace dies with bwrap,
so does everything the program started. Nothing is written to the host's disk.

Memory: RLIMIT_AS bounds each process of a job at `memory_mb`; where this process may make
memory cgroups (root, or a delegated cgroup: `cgroups.py`), each job also gets one that caps all
its processes and the files in its tmpfs mounts together, at `memory_mb` plus the tmpfs sizes.
Without one, a job that forks can hold up to `processes` times `memory_mb`.

When assay runs as root, each running job also gets a host uid of its own from a pool, so the
process limit (RLIMIT_NPROC counts per uid) holds per job and a job cannot signal another.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import fcntl
import fnmatch
import json
import logging
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from assay.sandboxes import seccomp, steps
from assay.sandboxes.base import (
    Job,
    Limits,
    MultiJob,
    Run,
    RunResult,
    StepResult,
    ToolProcess,
    ToolSpec,
)
from assay.sandboxes.cgroups import CgroupUnavailable, JobCgroup, MemoryCgroups, pid_alive
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.sandboxes.warm import WarmPython, warm_source

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
# The job's open files; and, for unsandboxed runs, which share the host's process count, room
# for a previous job's zombies over the process limit.
_NOFILE = 256
_NPROC_SLACK = 8
# POSIX message queues: their bytes (RLIMIT_MSGQUEUE); the kernel's default is 800 KiB, but the
# service's own limit, which jobs would inherit, may have been raised (`ulimit -q unlimited`).
_MSGQUEUE = 1 << 20
# Jobs are the OOM killer's first choice, before the service (a memory shortage of the host or
# container then costs a job, which is judged again, not every item in flight).
_OOM_SCORE_ADJ = 1000
# Host configuration under /usr, hidden like the rest of /etc is: the job sees empty dirs.
_USR_ETC = ("/usr/local/etc", "/usr/etc")

Isolation = Literal["bwrap", "unsandboxed"]
T = TypeVar("T")


class UidPool:
    """Host uids for running jobs, one each, safe to share between worker processes.

    A uid is taken by holding an exclusive `flock` on its lock file, so two `assay serve`
    workers never hand out the same uid at the same time, and a crashed worker's uids free
    themselves when its file descriptors close.
    """

    def __init__(self, base: int, count: int, lock_dir: Path) -> None:
        self.base, self.count, self.lock_dir = base, count, lock_dir
        self._held: dict[int, int] = {}
        # Round robin from a random start: a uid comes back only after the whole pool has
        # turned over, by when what its last job left (zombies that the host's init has yet
        # to reap) is gone; several workers start at different places.
        self._next = random.randrange(count)
        self._checked = False

    def _check_lock_dir(self) -> None:
        """The lock dir must be this user's alone: in a place others may write to, another
        user could take every uid (all jobs fail) or plant links that root then follows."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = os.lstat(self.lock_dir)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
            raise SandboxUnavailable(
                f"the sandbox uid lock dir {self.lock_dir} is not a directory of this user's"
            )
        if found.st_mode & 0o077:
            raise SandboxUnavailable(
                f"the sandbox uid lock dir {self.lock_dir} is open to others "
                f"(mode {stat.S_IMODE(found.st_mode):o}); it must be 0700"
            )

    def acquire(self) -> int:
        if not self._checked:
            self._check_lock_dir()
            self._checked = True
        start = self._next
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            if uid in self._held:
                continue
            try:
                fd = os.open(
                    self.lock_dir / f"{uid}.lock",
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                raise SandboxError(f"cannot open the lock of uid {uid}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            self._next = (uid - self.base + 1) % self.count
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


def make_etc_view() -> Path:
    """A copy of the part of /etc that jobs see, bound read-only as their /etc: one mount per
    job (binding each entry costs ~0.1 ms of every job's start). It is a snapshot: what is
    installed into /etc later shows after a restart. The sandbox's `close` removes it."""
    # In memory where there is a tmpfs: /etc holds ~700 symlinks (certificates, alternatives),
    # and making one costs 0.7 ms on a journaled disk against 4 µs on tmpfs.
    where = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    for stale in Path(where).glob("assay-etc-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):  # left by a process that died
            shutil.rmtree(stale, ignore_errors=True)
    dest = Path(tempfile.mkdtemp(prefix=f"assay-etc-{os.getpid()}-", dir=where))
    dest.chmod(0o755)
    _copy_etc(dest)
    atexit.register(shutil.rmtree, dest, ignore_errors=True)  # if `close` never comes
    return dest


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
        memory_cgroups: bool = True,
        warm_python: int = 0,
        warm_max_uses: int = 200,
    ) -> None:
        self.isolation = isolation
        self.max_jobs = max_jobs or 2 * (os.cpu_count() or 1)
        self._slots = asyncio.Semaphore(self.max_jobs)
        self._as_root = os.geteuid() == 0
        # Root's own place (/run), not the world-writable /tmp.
        lock_dir = lock_dir or Path("/run/assay/sandbox-uids")
        self._uids = UidPool(uid_base, uid_count, lock_dir) if self._as_root else None
        self._bwrap = shutil.which(bwrap) if bwrap else None
        self._prlimit = shutil.which("prlimit")
        self._choom = shutil.which("choom")
        # Lowered, never raised: a job without privileges may not raise a hard limit.
        hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1]
        self._msgqueue = _MSGQUEUE if hard == resource.RLIM_INFINITY else min(hard, _MSGQUEUE)
        if self._choom is None:
            log.warning(
                "sandbox: choom (util-linux) is missing: jobs are not the OOM killer's first choice"
            )
        # The job's uid is taken in the child by setpriv, not by Popen(user=...): that would make
        # Python fork() the whole service (2.8 ms, in the event loop's thread) instead of vfork.
        self._setpriv = shutil.which("setpriv")
        # The runner's interpreter (`runner.py`): Debian's, where there is one.
        self._python = (
            "/usr/bin/python3"
            if os.path.exists("/usr/bin/python3")
            else shutil.which("python3", path=SANDBOX_PATH) or "python3"
        )
        self._probe: str | None | Literal[False] = False  # False: not probed yet
        self._etc = make_etc_view() if isolation == "bwrap" and self._bwrap else None
        self._cgroups: MemoryCgroups | None = None
        self.cgroups_reason: str | None = "per-job memory cgroups need root"
        if self._as_root and memory_cgroups:
            try:
                self._cgroups = MemoryCgroups.find()
            except CgroupUnavailable as exc:
                self.cgroups_reason = str(exc)
            else:
                self.cgroups_reason = None
                atexit.register(self._cgroups.close)
        elif not memory_cgroups:
            self.cgroups_reason = "turned off"
        if self.cgroups_reason:
            log.info(
                "sandbox: no per-job memory cgroup (%s): memory_mb bounds each process only",
                self.cgroups_reason,
            )
        # Warm interpreters run the sandbox's own `python3`, so that programs run the same
        # warm and cold.
        self._warm: WarmPython | None = None
        python = shutil.which("python3", path=SANDBOX_PATH)
        if warm_python > 0 and isolation == "bwrap" and self._bwrap and python:
            self._warm = WarmPython(
                lambda spec: self._start(spec, runner_mode="warm"),
                python=python,
                size=warm_python,
                max_uses=warm_max_uses,
            )
        if isolation == "unsandboxed":
            log.warning(
                "ASSAY: running untrusted code WITHOUT a sandbox (isolation=unsandboxed); "
                "programs can read this machine's files and reach its network"
            )

    # -- availability -----------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if self._prlimit is None:
            return "prlimit (util-linux) is not installed, so no limits can be set"
        if self._as_root and self._setpriv is None:
            return "setpriv (util-linux) is not installed, so jobs cannot get a uid of their own"
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

    def facts(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "isolation": self.isolation,
            "uid_per_job": self._uids is not None,
            "memory_cgroup_per_job": self.cgroups_reason is None,
            "warm_python": self._warm.facts() if self._warm is not None else None,
            **({"memory_cgroup_reason": self.cgroups_reason} if self.cgroups_reason else {}),
        }

    async def close(self) -> None:
        if self._warm is not None:
            await self._warm.close()
        if self._cgroups is not None:
            self._cgroups.close()
        if self._etc is not None:
            shutil.rmtree(self._etc, ignore_errors=True)

    # -- running ------------------------------------------------------------------------------

    async def run(self, job: Job) -> RunResult:
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        if self._warm is not None and warm_source(job.argv, job.files) is not None:
            multi = MultiJob(job.argv, (Run(job.stdin, job.limits),), job.files)
            async with contextlib.aclosing(self.run_many(multi)) as results:
                async for step in results:
                    return step.result
            raise SandboxError("the warm run gave no result")
        return await self._run_checked(job)

    async def _run_checked(self, job: Job) -> RunResult:
        async with self._slots:
            if self._uids is None:
                return await self._run(job, None)
            with self._uids.hold() as uid:
                return await self._run(job, uid)

    async def run_many(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        for name in job.files:
            if "/" in name or name in ("", ".", ".."):
                raise SandboxError(f"file name {name!r} must be a plain name in the work dir")
        # Each inner generator is closed here, not left to the garbage collector, when the
        # caller stops early: closing is what kills the sandbox.
        inner: AsyncGenerator[StepResult, None] | None = None
        source = warm_source(job.argv, job.files)
        plain = job.build is None and bool(job.runs) and all(r.argv is None for r in job.runs)
        if self._warm is not None and source is not None and plain:
            inner = self._warm.run_many(job, source)
        if self.isolation != "bwrap":
            inner = self._run_many_bare(job)
        elif inner is None:
            inner = self._run_many_runner(job)
        async with contextlib.aclosing(inner):
            async for step in inner:
                yield step

    async def _run_many_runner(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        """The sequence in one bwrap, carried out by `runner.py` in `job` mode."""
        async with self._slots, contextlib.aclosing(self._runner_steps(job)) as steps:
            async for step in steps:
                yield step

    async def _runner_steps(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        spec = ToolSpec(
            argv=(self._python, "-I", "-S", "-B"), files=job.files, limits=steps.envelope(job)
        )
        tool = await self._start(spec, runner_mode="job")
        try:
            no_fork = seccomp.program(processes=False) or b""
            tool.stdin.write(steps.job_request(job, no_fork))
            await tool.stdin.drain()
            tool.stdin.close()
            kinds = (["build"] if job.build else []) + ["run"] * len(job.runs)
            oom_seen = 0
            async with asyncio.timeout(steps.deadline_s(job)):
                for index, kind in enumerate(kinds):
                    frame = await steps.read_frame(tool.stdout)
                    if frame is None:
                        await tool.close()
                        tail = tool.stderr_tail().decode(errors="replace").strip()[-500:]
                        raise SandboxError(f"the sandbox runner ended early: {tail}")
                    kills = tool.oom_kills()
                    result = tool.with_pressure(
                        steps.step_result(*frame, oom_killed=False), kills > oom_seen
                    )
                    oom_seen = kills
                    number = index - 1 if job.build is not None and kind == "run" else index
                    yield StepResult(kind, number, result)  # type: ignore[arg-type]
                    if kind == "build" and not result.ok:
                        break
        except (TimeoutError, ConnectionResetError, BrokenPipeError) as exc:
            raise SandboxError(f"the sandbox runner failed: {exc!r}") from exc
        finally:
            await tool.close()

    async def _run_many_bare(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        """Unsandboxed: each step a plain run, in one shared temporary work dir."""
        with tempfile.TemporaryDirectory(prefix=f"assay-job-{os.getpid()}-") as workdir:
            _write_files(Path(workdir), job.files, None)
            sequence: list[tuple[str, Job]] = []
            if job.build is not None:
                sequence.append(("build", Job(argv=job.build.argv, limits=job.build.limits)))
            for run in job.runs:
                sequence.append(
                    ("run", Job(argv=run.argv or job.argv, stdin=run.stdin, limits=run.limits))
                )
            for index, (kind, step) in enumerate(sequence):
                async with self._slots:
                    result = await self._run(step, None, workdir=workdir)
                number = index - 1 if job.build is not None and kind == "run" else index
                yield StepResult(kind, number, result)  # type: ignore[arg-type]
                if kind == "build" and not result.ok:
                    break

    def _prlimit_args(self, limits: Limits, *, nproc: bool, cpu: bool = True) -> list[str]:
        """prlimit, setting every limit but the process count unless `nproc` (see `_run`), and
        the CPU time unless not `cpu` (a long-lived tool is limited per request instead)."""
        assert self._prlimit is not None
        memory = limits.memory_mb << 20
        file_size = limits.file_mb << 20
        args = [self._prlimit]
        if self._choom is not None:
            args = [self._choom, "-n", str(_OOM_SCORE_ADJ), "--", *args]
        if cpu or limits.cpu_s is not None:
            seconds = int(limits.cpu_s if limits.cpu_s is not None else limits.wall_s + 1) + 1
            args.append(f"--cpu={seconds}:{seconds + 1}")
        args += [
            f"--as={memory}",
            f"--fsize={file_size}",
            f"--nofile={_NOFILE}",
            f"--msgqueue={self._msgqueue}",
            "--core=0",
        ]
        if nproc:  # a previous job's zombies may hold the uid for a moment: some slack
            args.append(f"--nproc={limits.processes + _NPROC_SLACK}")
        return [*args, "--"]

    def _bwrap_args(
        self,
        job: Job,
        fds: dict[str, int],
        extra: list[str],
        *,
        ro_paths: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        runner: bool = False,
    ) -> list[str]:
        """bwrap's argv for `job`, with its files from `fds`, `extra` options, host paths bound
        read-only where they are, and `env` added to the sandbox's environment. A `runner`
        job (`runner.py`) keeps CAP_SYS_ADMIN inside the sandbox's user namespace, to make
        each run's namespaces, and sets each run's process limit itself."""
        assert self._bwrap is not None
        # Room for two files of the largest size, so that one big file meets the file-size
        # limit (a clear EFBIG / SIGXFSZ) before it fills the work dir.
        size = str(2 * job.limits.file_mb << 20)
        # No user namespaces inside: a nested one would give the job the right to mount fresh,
        # unsized tmpfs (memory outside every limit) and reach kernel code meant for root.
        args = [self._bwrap, *extra, "--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--uid", "1000", "--gid", "1000"]
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if runner:
            args += ["--cap-add", "CAP_SYS_ADMIN"]
        args += ["--ro-bind", "/usr", "/usr"]
        for hidden in _USR_ETC:
            if os.path.isdir(hidden):
                args += ["--size", "4096", "--tmpfs", hidden, "--remount-ro", hidden]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
            args += _symlink_or_bind(top)
        assert self._etc is not None
        args += ["--ro-bind", str(self._etc), "/etc", "--proc", "/proc", "--dev", "/dev"]
        # bwrap's /dev is a tmpfs of its own, with no size: shared memory gets a sized one and
        # the rest of /dev is read-only (its device nodes still work).
        shm = str(job.limits.file_mb << 20)
        args += ["--size", shm, "--tmpfs", "/dev/shm"]
        # No ptys: each is taken from a host-wide count (kernel.pty.max), and a job has no use
        # for a terminal. An empty read-only mount hides bwrap's devpts, so /dev/ptmx (a link
        # into it) leads nowhere.
        args += ["--size", "4096", "--tmpfs", "/dev/pts", "--remount-ro", "/dev/pts"]
        args += ["--remount-ro", "/dev"]
        args += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", WORK_DIR]
        for name, fd in fds.items():
            args += ["--perms", "0644", "--file", str(fd), f"{WORK_DIR}/{name}"]
        # After the tmpfs mounts, so that a path under /tmp is not hidden by the job's own /tmp.
        for path in ro_paths:
            if not os.path.isabs(path) or not os.path.exists(path):
                raise SandboxError(f"read-only path {path!r} must be an absolute, existing path")
            args += ["--ro-bind", path, path]
        # The root bwrap builds is a tmpfs of its own: make it read-only, so that only the
        # sized tmpfs mounts (work dir, /tmp, /dev/shm) can be written.
        args += ["--remount-ro", "/", "--chdir", WORK_DIR, "--clearenv"]
        for key, value in {**_sandbox_env(WORK_DIR), **(env or {})}.items():
            args += ["--setenv", key, value]
        # The process limit is set inside, once bwrap has made the job's user namespace: the
        # kernel then counts only the job's processes (bwrap's pid 1, the program and what it
        # starts), whatever else the host uid runs. Set outside, it would count every process
        # of that uid: the service's own, when it does not run as root.
        if runner:
            return [*args, "--", *job.argv]
        nproc = ["prlimit", f"--nproc={job.limits.processes + 1}", "--"]
        return [*args, "--", *nproc, *job.argv]

    async def _run(self, job: Job, uid: int | None, workdir: str | None = None) -> RunResult:
        for name in job.files:
            if "/" in name or name in ("", ".", ".."):
                raise SandboxError(f"file name {name!r} must be a plain name in the work dir")
        async with contextlib.AsyncExitStack() as stack:
            # Off the event loop: capping a reused cgroup may make the kernel reclaim what the
            # last job left charged to it (0.7 s seen).
            cgroup = None
            if self._cgroups is not None:
                cgroup = await _unless_cancelled(
                    asyncio.to_thread(self._job_cgroup, job.limits), JobCgroup.abandon
                )
            if cgroup is not None:
                stack.push_async_callback(cgroup.release)
            enter: Callable[[], None] | None = None
            on_start: Callable[[int], Awaitable[None]] | None = None
            if self.isolation == "bwrap":
                files = {
                    name: stack.enter_context(_memfd(name, data))
                    for name, data in job.files.items()
                }
                fds, extra = list(files.values()), []
                rules = seccomp.program(processes=job.limits.processes > 1)
                if rules is not None:
                    fds.append(stack.enter_context(_memfd("seccomp", rules)))
                    extra += ["--seccomp", str(fds[-1])]
                if cgroup is not None:
                    gate = stack.enter_context(_BwrapGate(cgroup))
                    extra += gate.bwrap_args()
                    fds += gate.child_fds()
                    on_start = gate.admit
                bwrap = self._bwrap_args(job, files, extra)
                argv = self._prlimit_args(job.limits, nproc=False) + bwrap
                cwd, env = None, {"PATH": SANDBOX_PATH}
            else:
                fds = []
                if workdir is None:
                    workdir = stack.enter_context(
                        tempfile.TemporaryDirectory(prefix=f"assay-job-{os.getpid()}-")
                    )
                _write_files(Path(workdir), job.files, uid)
                argv = self._prlimit_args(job.limits, nproc=True) + list(job.argv)
                cwd, env = workdir, _sandbox_env(workdir)
                enter = cgroup.join if cgroup is not None else None
            if uid is not None:
                assert self._setpriv is not None
                argv = [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
            result = await _execute(argv, job, uid, cwd, env, fds, enter, on_start)
            if cgroup is not None and cgroup.oom_kills():
                result = dataclasses.replace(
                    result, oom_killed=True, host_pressure=not cgroup.cap_reached()
                )
            elif cgroup is None and result.signal == signal.SIGKILL and not result.timed_out:
                # Not the sandbox's kill (deadline, output cap): the program's own, or the OOM
                # killer's, which without a cgroup cannot be told apart.
                result = dataclasses.replace(result, host_pressure=not result.output_exceeded)
            return result
        raise AssertionError("unreachable")

    async def spawn(self, spec: ToolSpec) -> ToolProcess:
        """Start a long-lived tool with a job's isolation; it holds a uid and a memory cgroup
        of its own until it is closed, and no job slot (pools bound how many tools run)."""
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        return await self._start(spec)

    async def _start(self, spec: ToolSpec, runner_mode: str | None = None) -> _LocalTool:
        """Start `spec` as a tool; with `runner_mode`, its argv is the runner's interpreter,
        which is run on `runner.py` (passed in as a memfd) in that mode."""
        job = Job(argv=spec.argv, files=spec.files, limits=spec.limits)
        for name in job.files:
            if "/" in name or name in ("", ".", ".."):
                raise SandboxError(f"file name {name!r} must be a plain name in the work dir")
        stack = contextlib.AsyncExitStack()
        try:
            uid = None
            if self._uids is not None:
                uid = self._uids.acquire()
                stack.callback(self._uids.release, uid)
            cgroup = None
            if self._cgroups is not None:
                cgroup = await asyncio.to_thread(self._job_cgroup, spec.limits)
            if cgroup is not None:
                stack.push_async_callback(cgroup.release)
            on_start: Callable[[int], Awaitable[None]] | None = None
            enter: Callable[[], None] | None = None
            if self.isolation == "bwrap":
                files = {n: stack.enter_context(_memfd(n, d)) for n, d in job.files.items()}
                fds, extra = list(files.values()), []
                rules = seccomp.program(processes=job.limits.processes > 1)
                if rules is not None:
                    fds.append(stack.enter_context(_memfd("seccomp", rules)))
                    extra += ["--seccomp", str(fds[-1])]
                if cgroup is not None:
                    gate = stack.enter_context(_BwrapGate(cgroup))
                    extra += gate.bwrap_args()
                    fds += gate.child_fds()
                    on_start = gate.admit
                if runner_mode is not None:
                    source = steps.runner_source()
                    fds.append(stack.enter_context(_memfd("runner", source)))
                    script = f"/proc/self/fd/{fds[-1]}"
                    job = dataclasses.replace(job, argv=(*job.argv, script, runner_mode))
                bwrap = self._bwrap_args(
                    job,
                    files,
                    extra,
                    ro_paths=spec.ro_paths,
                    env=spec.env,
                    runner=runner_mode is not None,
                )
                argv = self._prlimit_args(job.limits, nproc=False, cpu=False) + bwrap
                cwd, env = None, {"PATH": SANDBOX_PATH}
            else:
                fds = []
                workdir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"assay-tool-{os.getpid()}-")
                )
                _write_files(Path(workdir), job.files, uid)
                argv = self._prlimit_args(job.limits, nproc=True, cpu=False) + list(job.argv)
                cwd, env = workdir, {**_sandbox_env(workdir), **spec.env}
                enter = cgroup.join if cgroup is not None else None
            if uid is not None:
                assert self._setpriv is not None
                argv = [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=fds,
                    preexec_fn=enter,
                    cwd=cwd,
                    env=env,
                    limit=_TOOL_LINE_LIMIT,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"could not start {argv[0]}: {exc}") from exc
            tool = _LocalTool(proc, stack, cgroup, uid if cwd is not None else None)
            try:
                if on_start is not None:
                    async with asyncio.timeout(30):
                        await on_start(proc.pid)
            except BaseException:
                await tool.close()
                raise
            return tool
        except BaseException:
            await stack.aclose()
            raise

    def _job_cgroup(self, limits: Limits) -> JobCgroup | None:
        if self._cgroups is None:
            return None
        # The job's processes together, plus what its tmpfs mounts may hold: the work dir and
        # /tmp (2 x file_mb each) and /dev/shm (file_mb).
        cap = (limits.memory_mb + 5 * limits.file_mb) << 20
        try:
            return self._cgroups.job(cap)
        except OSError as exc:
            raise SandboxError(f"could not make the job's memory cgroup: {exc}") from exc


_TOOL_LINE_LIMIT = 1 << 26  # a tool's longest line (readline / readuntil) on stdout
_TOOL_STDERR = 1 << 16  # how much of a tool's stderr is kept


class _LocalTool:
    """A running tool of `LocalSandbox.spawn`: its pipes, and what it holds until closed."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        stack: contextlib.AsyncExitStack,
        cgroup: JobCgroup | None,
        bare_uid: int | None,
    ) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.pid = proc.pid
        self.stdin: asyncio.StreamWriter = proc.stdin
        self.stdout: asyncio.StreamReader = proc.stdout
        self._proc, self._stack, self._cgroup, self._bare_uid = proc, stack, cgroup, bare_uid
        self._stderr = bytearray()
        self._drain = asyncio.ensure_future(self._pump(proc.stderr))
        self._closed = False

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while chunk := await stream.read(_CHUNK):
            self._stderr += chunk
            del self._stderr[:-_TOOL_STDERR]

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
            await _reap(self._proc)
            if self._bare_uid is not None:
                await _kill_uid(self._bare_uid)
            await self._stack.aclose()

        await asyncio.shield(finish())


async def _unless_cancelled(
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


class _BwrapGate:
    """Puts a bwrap job into its cgroup before the program starts, with no Python code in the
    child (a `preexec_fn` costs ~1 ms a job): bwrap makes its namespace child and waits on
    `--block-fd`; its `--json-status-fd` names that child; the service moves bwrap and the
    child into the cgroup and lets them go. What the program starts inherits the cgroup."""

    def __init__(self, cgroup: JobCgroup) -> None:
        self.cgroup = cgroup
        self._status_read, self._status_write = os.pipe()
        self._block_read, self._block_write = os.pipe()
        os.set_blocking(self._status_read, False)
        # Each fd is closed once only: a number closed twice may meanwhile be another job's.
        self._open = {self._status_read, self._status_write, self._block_read, self._block_write}

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def bwrap_args(self) -> list[str]:
        return ["--json-status-fd", str(self._status_write), "--block-fd", str(self._block_read)]

    def child_fds(self) -> list[int]:
        return [self._status_write, self._block_read]

    async def admit(self, pid: int) -> None:
        # bwrap's own ends are its now; ours stay open to the end, since bwrap writes its exit
        # status to the status pipe last.
        for fd in self.child_fds():
            self._close(fd)
        line = b""
        while b"\n" not in line:  # bwrap writes its status line in pieces
            chunk = await _read_once(self._status_read)
            if not chunk:  # bwrap ended before making its child: its exit status says why
                return
            line += chunk
        try:
            child = int(json.loads(line.split(b"\n", 1)[0])["child-pid"])
        except (ValueError, KeyError) as exc:
            raise SandboxError(f"bwrap's status did not name its child: {line[:200]!r}") from exc
        try:
            self.cgroup.add(pid)
            self.cgroup.add(child)
        except OSError as exc:
            raise SandboxError(f"could not move the job into its memory cgroup: {exc}") from exc
        os.write(self._block_write, b"x")
        self._close(self._block_write)

    def __enter__(self) -> _BwrapGate:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in list(self._open):
            self._close(fd)


async def _read_once(fd: int) -> bytes:
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
    enter: Callable[[], None] | None = None,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> RunResult:
    """Run `argv` to its end or its deadline. `enter` runs in the child before exec (slow: it
    makes the child run Python); `on_start` is awaited with the child's pid before stdin is fed."""
    limits = job.limits
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=pass_fds,
            preexec_fn=enter,
            cwd=cwd,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as exc:
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
