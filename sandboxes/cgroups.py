"""Per-job memory cgroups: one cap on all of a job's processes and the tmpfs files it writes.

RLIMIT_AS bounds one process. A job that forks, or that writes files into its tmpfs mounts
(tmpfs pages belong to no process's address space), is bounded as a whole only by a memory
cgroup. Each job gets one below this process's own cgroup, with the job's cap and no swap; the
job enters it before it runs anything (the child writes to a `cgroup.procs` that the service
opened), and the kernel's OOM kills in it are counted, so that a job killed for memory says so.

Both layouts of the memory controller are handled: cgroup v1 (its own hierarchy, as on hosts
with a hybrid layout) and v2 (unified; needs the memory controller delegated to the service's
cgroup). Making cgroups needs root, or a delegated cgroup; without them, `find` says why and the
sandbox keeps to per-process limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one version of the memory controller keeps each setting."""

    version: int
    limit: str
    swap_limit: str
    oom_events: str  # a file with a line "oom_kill N"
    # Whether a job reached its own cap (an OOM kill of one of its processes without that came
    # from above: the host's or a container's memory pressure). v2 counts it, as the "oom"
    # events of memory.events (the OOM killer ran because of this cgroup's max). v1's failcnt
    # stays 0 on recent kernels, so there it is the peak usage, reset for each job, against
    # the cap.
    peak: str | None


V1 = Layout(
    1,
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.oom_control",
    "memory.max_usage_in_bytes",
)
V2 = Layout(2, "memory.max", "memory.swap.max", "memory.events", None)
# How far below its cap a job's peak may be and still have reached it: charges are made in
# batches (64 pages), and a kill may come just before the last one.
_CAP_MARGIN = 4 << 20


class CgroupUnavailable(Exception):
    """Per-job memory cgroups cannot be made here; the message says why."""


def _own_memory_cgroup() -> tuple[Path, Layout]:
    """This process's memory cgroup directory and its layout."""
    v1_path = v2_path = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1_path = path
        elif number == "0" and controllers == "":
            v2_path = path
    mounts: dict[str, tuple[str, str]] = {}  # "v1" / "v2" -> (mount root, mount point)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup" and "memory" in options:
            mounts["v1"] = (fields[3], fields[4])
        elif fstype == "cgroup2":
            mounts["v2"] = (fields[3], fields[4])
    if v1_path is not None:
        if "v1" not in mounts:
            raise CgroupUnavailable("the cgroup v1 memory hierarchy is not mounted")
        return _under(mounts["v1"], v1_path), V1
    if v2_path is not None and "v2" in mounts:
        here = _under(mounts["v2"], v2_path)
        if "memory" not in (here / "cgroup.controllers").read_text().split():
            raise CgroupUnavailable(f"the memory controller is not delegated to {here}")
        return here, V2
    raise CgroupUnavailable("this process is in no memory cgroup")


def _under(mount: tuple[str, str], path: str) -> Path:
    root, point = mount
    relative = os.path.relpath(path, root) if path != root else "."
    if relative.startswith(".."):
        raise CgroupUnavailable(f"cgroup {path} lies outside the mounted hierarchy ({root})")
    return (Path(point) / relative).resolve()


_INSTANCES = itertools.count()


def _counter(path: Path, key: str) -> int:
    """A cgroup file's counter: its line `key N`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _counter_at(fd, key)
    finally:
        os.close(fd)


def _counter_at(fd: int, key: str) -> int:
    """The counter `key` of the cgroup file open at `fd`, read afresh (`pread` from its start
    makes the kernel write it anew). A job's events file is kept open and read so after every
    warm run of several processes: two system calls and a path less than opening it."""
    for line in os.pread(fd, 1 << 16, 0).decode().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(here: Path) -> None:
    """Remove what services that died without closing left here (`assay-PID-N`, PID gone)."""
    for base in here.glob("assay-*-*"):
        pid = base.name.split("-")[1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        for job in base.glob("job-*"):
            with contextlib.suppress(OSError):
                job.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


class MemoryCgroups:
    """Makes the per-job cgroups, below a cgroup of its own (`assay-PID-N`), and reuses them:
    a job's cgroup, once empty, serves a later job (with that job's cap), since making and
    removing one per job costs ~5% of a job and leaves the kernel dying cgroups to clean up."""

    def __init__(self, base: Path, layout: Layout) -> None:
        self.base, self.layout = base, layout
        self._names = itertools.count()
        self._free: list[Path] = []  # empty job cgroups, ready for the next job

    @classmethod
    def find(cls) -> MemoryCgroups:
        """Per-job cgroups below this process's own; raises `CgroupUnavailable` saying why not."""
        try:
            here, layout = _own_memory_cgroup()
            _sweep(here)
            base = here / f"assay-{os.getpid()}-{next(_INSTANCES)}"
            base.mkdir()
            if layout.version == 2:
                # The jobs below `base` get the memory controller; `base` itself holds no
                # process, as v2 asks of a cgroup that hands controllers down.
                (here / "cgroup.subtree_control").write_text("+memory")
                (base / "cgroup.subtree_control").write_text("+memory")
        except CgroupUnavailable:
            raise
        except (OSError, ValueError) as exc:
            raise CgroupUnavailable(f"cannot make memory cgroups: {exc}") from exc
        return cls(base, layout)

    def job(self, limit_bytes: int) -> JobCgroup:
        """An empty cgroup capped at `limit_bytes`, swap included."""
        try:  # called from worker threads: pop, do not check first
            path: Path | None = self._free.pop()
        except IndexError:
            path = None
        if path is not None:
            try:
                self._cap(path, limit_bytes)
            except OSError:  # it could not be lowered to the cap (charges it cannot reclaim):
                path = None  # left out of use; close() removes it
        if path is None:
            path = self.base / f"job-{next(self._names)}"
            path.mkdir()
            try:
                self._cap(path, limit_bytes)
            except OSError:
                path.rmdir()
                raise
        procs = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        return JobCgroup(self, path, procs)

    def _cap(self, path: Path, limit_bytes: int) -> None:
        limit, swap = path / self.layout.limit, path / self.layout.swap_limit
        if self.layout.version == 2:
            limit.write_text(str(limit_bytes))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: nothing to cap
                swap.write_text("0")
            return
        # v1 keeps memory <= memory+swap at every step: lift the latter, set, then close it.
        has_swap = swap.exists()
        if has_swap:
            swap.write_text("-1")
        limit.write_text(str(limit_bytes))
        if has_swap:
            swap.write_text(str(limit_bytes))
        assert self.layout.peak is not None
        (path / self.layout.peak).write_text("0")  # the peak from now: the usage now

    def _cap_hits(self, path: Path) -> int:
        """v2: how often this cgroup's own cap made the OOM killer run."""
        return _counter(path / self.layout.oom_events, "oom")

    def _cap_reached_since_reset(self, path: Path) -> bool:
        """v1: whether the usage, since `_cap` reset its peak, came within reach of the cap."""
        assert self.layout.peak is not None
        cap = int((path / self.layout.limit).read_text())
        return int((path / self.layout.peak).read_text()) >= cap - _CAP_MARGIN

    def close(self) -> None:
        """Remove every job cgroup, and the base."""
        for path in self.base.glob("job-*"):
            with contextlib.suppress(OSError):
                path.rmdir()
        self._free.clear()
        with contextlib.suppress(OSError):
            self.base.rmdir()


class JobCgroup:
    """One job's cgroup: the job enters it (`add` or `join`), then `oom_kills`, then `release`."""

    def __init__(self, owner: MemoryCgroups, path: Path, procs: int) -> None:
        self.owner, self.path, self._procs = owner, path, procs
        try:
            self._events = os.open(path / owner.layout.oom_events, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(procs)
            raise
        self._oom_before = self._oom_after = _counter_at(self._events, "oom_kill")
        self._cap_before = owner._cap_hits(path) if owner.layout.version == 2 else 0

    @property
    def procs_fd(self) -> int:
        """The `cgroup.procs` the service opened, for a process that moves itself in by
        writing "0" to it (`join`; a warm program, which gets the fd from its worker)."""
        return self._procs

    def reset_peak(self) -> None:
        """v1: count the peak from now (for the next of the jobs that share this cgroup in
        turn, after one reached the cap)."""
        if self.owner.layout.version == 1:
            assert self.owner.layout.peak is not None
            (self.path / self.owner.layout.peak).write_text("0")

    def add(self, pid: int) -> None:
        """Move process `pid` (not its existing children) into this cgroup."""
        os.write(self._procs, str(pid).encode())

    def join(self) -> None:
        """Move the calling process into this cgroup (run in the child, as `preexec_fn`).

        The file was opened by the service, so a child that has already become the job's
        unprivileged uid may still write to it."""
        os.write(self._procs, b"0")

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for memory during this job (up to its
        release, when asked after it: a tool's user asks once the tool has died and gone)."""
        if self._events >= 0:
            self._oom_after = _counter_at(self._events, "oom_kill")
        return self._oom_after - self._oom_before

    def _close_events(self) -> None:
        """The events file's last count kept, and the file closed (once: its number may be
        another file's afterwards)."""
        if self._events < 0:
            return
        with contextlib.suppress(OSError):
            self._oom_after = _counter_at(self._events, "oom_kill")
        os.close(self._events)
        self._events = -1

    def cap_reached(self) -> bool:
        """Whether the job reached its own cap during this job (not only its host's)."""
        if self.owner.layout.version == 1:
            return self.owner._cap_reached_since_reset(self.path)
        return self.owner._cap_hits(self.path) > self._cap_before

    def abandon(self) -> None:
        """Give back a cgroup no job entered."""
        os.close(self._procs)
        self._close_events()
        self.owner._free.append(self.path)

    async def release(self) -> None:
        """Give the cgroup back once the job's last process has left it (the kernel may take a
        moment after a kill); one that stays busy is set aside and removed at close."""
        os.close(self._procs)
        try:
            for _ in range(100):
                if not (self.path / "cgroup.procs").read_text().strip():
                    self.owner._free.append(self.path)
                    return
                await asyncio.sleep(0.01)
        finally:
            self._close_events()  # after the kill and the wait: the kills all counted
        log.warning("cgroup %s still holds processes after its job; set aside", self.path)
