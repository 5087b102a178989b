"""The local sandbox: each job in bubblewrap, limited by rlimits, killed from outside.

The pieces: `bwrap.py` (bubblewrap's command line and the /etc view), `uids.py` (a host uid
per job), `cgroups.py` (a memory cgroup per job), `processes.py` (starting, feeding, killing
and reaping host processes), `runner.py` and `steps.py` (multi-run jobs: the in-sandbox runner
and its protocol), `warm.py` (warm Python interpreters), `pool.py` (warm workers in general).

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
import logging
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable
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
from assay.sandboxes.bwrap import (
    ETC_ALLOWED,
    SANDBOX_PATH,
    SANDBOX_UID,
    WARM_PROGRAM_UIDS,
    bwrap_args,
    make_etc_view,
    sandbox_env,
)
from assay.sandboxes.cgroups import CgroupUnavailable, JobCgroup, MemoryCgroups
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.sandboxes.processes import (
    TOOL_LINE_LIMIT,
    BwrapGate,
    LocalTool,
    create_process,
    execute,
    memfd,
    unless_cancelled,
    write_files,
)
from assay.sandboxes.uids import UidPool
from assay.sandboxes.warm import WarmPython, warm_source

log = logging.getLogger(__name__)

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

Isolation = Literal["bwrap", "unsandboxed"]
T = TypeVar("T")


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
        warm_max_uses: int = 1000,
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
        self._probing: asyncio.Future[str | None] | None = None
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
        self._tools_found: set[str] = set()
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
        # One probe, shared by whoever asks meanwhile and run to its end even if they are
        # cancelled (a probe cancelled halfway would leave the question open).
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._probing)

    async def _run_probe(self) -> str | None:
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
        # Asked for every item: a tool found is remembered (a search of PATH costs more than
        # a warm run's bookkeeping); one missing is looked for again, as it may be installed.
        if tool in self._tools_found:
            return True
        found = shutil.which(tool, path=SANDBOX_PATH) is not None
        if found:
            self._tools_found.add(tool)
        return found

    def tool_reason(self, tool: str) -> str | None:
        return self.unavailable_reason()

    def facts(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "isolation": self.isolation,
            "uid_per_job": self._uids is not None,
            # A warm worker's programs each take one of its uids in turn (`runner.serve_warm`).
            "uid_per_warm_program": self._uids is not None and self.isolation == "bwrap",
            "memory_cgroup_per_job": self.cgroups_reason is None,
            "warm_python": self._warm.facts() if self._warm is not None else None,
            **({"memory_cgroup_reason": self.cgroups_reason} if self.cgroups_reason else {}),
        }

    async def close(self) -> None:
        if self._probing is not None and not self._probing.done():
            with contextlib.suppress(Exception):
                await self._probing  # its job ends within its own limit
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
            argv=(self._python, "-I", "-S", "-B"),
            files=job.files,
            limits=steps.envelope(job),
            ro_paths=job.ro_paths,
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
            write_files(Path(workdir), job.files, None)
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
        memory = (limits.address_space_mb or limits.memory_mb) << 20
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

    def _bwrap_argv(
        self, job: Job, fds: dict[str, int], extra: list[str], **options: Any
    ) -> list[str]:
        assert self._bwrap is not None
        assert self._etc is not None
        return bwrap_args(self._bwrap, self._etc, job, fds, extra, **options)

    async def _run(self, job: Job, uid: int | None, workdir: str | None = None) -> RunResult:
        for name in job.files:
            if "/" in name or name in ("", ".", ".."):
                raise SandboxError(f"file name {name!r} must be a plain name in the work dir")
        async with contextlib.AsyncExitStack() as stack:
            # Off the event loop: capping a reused cgroup may make the kernel reclaim what the
            # last job left charged to it (0.7 s seen).
            cgroup = None
            if self._cgroups is not None:
                cgroup = await unless_cancelled(
                    asyncio.to_thread(self._job_cgroup, job.limits), JobCgroup.abandon
                )
            if cgroup is not None:
                stack.push_async_callback(cgroup.release)
            enter: Callable[[], None] | None = None
            on_start: Callable[[int], Awaitable[None]] | None = None
            if self.isolation == "bwrap":
                files = {
                    name: stack.enter_context(memfd(name, data)) for name, data in job.files.items()
                }
                fds, extra = list(files.values()), []
                rules = seccomp.program(processes=job.limits.processes > 1)
                if rules is not None:
                    fds.append(stack.enter_context(memfd("seccomp", rules)))
                    extra += ["--seccomp", str(fds[-1])]
                if cgroup is not None:
                    gate = stack.enter_context(BwrapGate(cgroup))
                    extra += gate.bwrap_args()
                    fds += gate.child_fds()
                    on_start = gate.admit
                bwrap = self._bwrap_argv(job, files, extra, ro_paths=job.ro_paths)
                argv = self._prlimit_args(job.limits, nproc=False) + bwrap
                cwd, env = None, {"PATH": SANDBOX_PATH}
            else:
                fds = []
                if workdir is None:
                    workdir = stack.enter_context(
                        tempfile.TemporaryDirectory(prefix=f"assay-job-{os.getpid()}-")
                    )
                write_files(Path(workdir), job.files, uid)
                argv = self._prlimit_args(job.limits, nproc=True) + list(job.argv)
                cwd, env = workdir, sandbox_env(workdir)
                enter = cgroup.join if cgroup is not None else None
            if uid is not None:
                assert self._setpriv is not None
                argv = [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
            result = await execute(argv, job, uid, cwd, env, fds, enter, on_start)
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

    async def _start(self, spec: ToolSpec, runner_mode: str | None = None) -> LocalTool:
        """Start `spec` as a tool; with `runner_mode`, its argv is the runner's interpreter,
        which is run on `runner.py` (passed in as a memfd) in that mode."""
        job = Job(argv=spec.argv, files=spec.files, limits=spec.limits)
        for name in job.files:
            if "/" in name or name in ("", ".", ".."):
                raise SandboxError(f"file name {name!r} must be a plain name in the work dir")
        stack = contextlib.AsyncExitStack()
        try:
            uid, uid_map = None, None
            mode_args: tuple[str, ...] = (runner_mode,) if runner_mode else ()
            if self._uids is not None and runner_mode == "warm" and self.isolation == "bwrap":
                # A uid for the worker and one for each program it runs in turn: the service
                # maps them into the sandbox's user namespace itself (see `runner.serve_warm`).
                block = self._uids.acquire_block(1 + WARM_PROGRAM_UIDS)
                stack.callback(self._uids.release_block, block)
                uid = block[0]
                first = SANDBOX_UID + 1
                uid_map = f"{SANDBOX_UID} {uid} 1\n{first} {uid + 1} {WARM_PROGRAM_UIDS}\n"
                mode_args += (f"--uids={first}:{WARM_PROGRAM_UIDS}",)
            elif self._uids is not None:
                uid = self._uids.acquire()
                stack.callback(self._uids.release, uid)
            cgroup = programs = None
            if self._cgroups is not None:
                cgroup = await asyncio.to_thread(self._job_cgroup, spec.limits)
            if cgroup is not None:
                stack.push_async_callback(cgroup.release)
            if cgroup is not None and runner_mode == "warm" and self.isolation == "bwrap":
                # The programs' own cgroup, capped as a job with their limits would be (the
                # worker's limits hold the interpreter's room, `steps.RUNNER_MB`, besides):
                # each program moves itself in as it starts (`runner.run_warm_step`).
                room = dataclasses.replace(
                    spec.limits, memory_mb=max(1, spec.limits.memory_mb - steps.RUNNER_MB)
                )
                programs = await asyncio.to_thread(self._job_cgroup, room)
            if programs is not None:
                stack.push_async_callback(programs.release)
                mode_args += (f"--cgroup-fd={programs.procs_fd}",)
            on_start: Callable[[int], Awaitable[None]] | None = None
            enter: Callable[[], None] | None = None
            if self.isolation == "bwrap":
                files = {n: stack.enter_context(memfd(n, d)) for n, d in job.files.items()}
                fds, extra = list(files.values()), []
                if programs is not None:
                    fds.append(programs.procs_fd)
                rules = seccomp.program(processes=job.limits.processes > 1)
                if rules is not None:
                    fds.append(stack.enter_context(memfd("seccomp", rules)))
                    extra += ["--seccomp", str(fds[-1])]
                if cgroup is not None or uid_map is not None:
                    gate = stack.enter_context(BwrapGate(cgroup, uid_map))
                    extra += gate.bwrap_args()
                    fds += gate.child_fds()
                    on_start = gate.admit
                library = None
                if runner_mode == "warm":
                    library = await asyncio.to_thread(steps.warm_init_library)
                if library is not None:
                    fds.append(stack.enter_context(memfd("warm-init", library)))
                    mode_args += (f"--init-fd={fds[-1]}",)
                if runner_mode is not None:
                    code = await asyncio.to_thread(steps.runner_code, job.argv[0])
                    runner = code if code is not None else steps.runner_source()
                    fds.append(stack.enter_context(memfd("runner", runner)))
                    loader = steps.runner_loader(fds[-1], compiled=code is not None)
                    job = dataclasses.replace(job, argv=(*job.argv, *loader, *mode_args))
                bwrap = self._bwrap_argv(
                    job,
                    files,
                    extra,
                    ro_paths=spec.ro_paths + spec.data,
                    env=spec.env,
                    runner=runner_mode is not None,
                    uids_mapped=uid_map is not None,
                )
                argv = self._prlimit_args(job.limits, nproc=False, cpu=False) + bwrap
                cwd, env = None, {"PATH": SANDBOX_PATH}
            else:
                fds = []
                workdir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"assay-tool-{os.getpid()}-")
                )
                write_files(Path(workdir), job.files, uid)
                argv = self._prlimit_args(job.limits, nproc=True, cpu=False) + list(job.argv)
                cwd, env = workdir, {**sandbox_env(workdir), **spec.env}
                enter = cgroup.join if cgroup is not None else None
            if uid is not None:
                assert self._setpriv is not None
                argv = [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
            proc = await create_process(
                argv, pass_fds=fds, preexec_fn=enter, cwd=cwd, env=env, limit=TOOL_LINE_LIMIT
            )
            tool = LocalTool(proc, stack, cgroup, uid if cwd is not None else None, programs)
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


# ETC_ALLOWED and UidPool were defined here before the split; kept importable from here.
__all__ = ["ETC_ALLOWED", "Isolation", "LocalSandbox", "UidPool"]
