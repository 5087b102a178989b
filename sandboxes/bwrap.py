"""bubblewrap's command line for a job or a tool: its mounts, namespaces and environment.

What a sandboxed process sees: `/usr` and an allowlist of `/etc` read-only (a private copy of
its allowed part, `make_etc_view`), size-capped tmpfs mounts for the work dir, `/tmp` and
`/dev/shm`, fresh namespaces (no network), no user namespaces of its own, a cleared
environment.
"""

from __future__ import annotations

import atexit
import fnmatch
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from assay.sandboxes.base import Job
from assay.sandboxes.cgroups import pid_alive
from assay.sandboxes.errors import SandboxError

log = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
WORK_DIR = "/work"
SANDBOX_UID = 1000  # a job's uid (and gid) inside its sandbox
# The uids a warm worker's programs take in turn (`runner.serve_warm`), where the service runs
# as root and maps them: a program's processes are all gone before the next program starts,
# so a few are enough for no program to share its uid with the one before it.
WARM_PROGRAM_UIDS = 4
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
    "mono",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "ldc2.conf",
    "mono",
    "nim",
    "perl",
    "protocols",
    "python3*",
    "R",
    "racket",
    "services",
    "ssl",
    "terminfo",
    "timezone",
    "xml",
)


# Host configuration under /usr, hidden like the rest of /etc is: the job sees empty dirs.
_USR_ETC = ("/usr/local/etc", "/usr/etc")


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


def sandbox_env(workdir: str) -> dict[str, str]:
    return {"PATH": SANDBOX_PATH, "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


def bwrap_args(
    bwrap: str,
    etc: Path,
    job: Job,
    fds: dict[str, int],
    extra: list[str],
    *,
    ro_paths: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    runner: bool = False,
    uids_mapped: bool = False,
) -> list[str]:
    """bwrap's argv for `job`, with its files from `fds`, `extra` options, host paths bound
    read-only where they are, and `env` added to the sandbox's environment. A `runner`
    job (`runner.py`) keeps CAP_SYS_ADMIN inside the sandbox's user namespace, to make
    each run's namespaces, and sets each run's process limit itself.

    `uids_mapped`: the service maps the user namespace's uids itself (`BwrapGate`): a warm
    worker's and its programs' (`WARM_PROGRAM_UIDS`). bwrap's `--disable-userns` would put the
    sandbox in a nested namespace of one uid, so the runner refuses further user namespaces
    itself (`runner._refuse_user_namespaces`), and keeps what it needs to give each program
    its uid and files and end it: CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_KILL, and
    CAP_SYS_RESOURCE (to set the namespace's limit), all within the sandbox's user
    namespace."""
    # Room for two files of the largest size, so that one big file meets the file-size
    # limit (a clear EFBIG / SIGXFSZ) before it fills the work dir.
    size = str(2 * job.limits.file_mb << 20)
    # No user namespaces inside: a nested one would give the job the right to mount fresh,
    # unsized tmpfs (memory outside every limit) and reach kernel code meant for root.
    args = [bwrap, *extra, "--unshare-all", "--unshare-user"]
    if not uids_mapped:
        args += ["--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if runner:
        args += ["--cap-add", "CAP_SYS_ADMIN"]
    if runner and uids_mapped:
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_SYS_RESOURCE"):
            args += ["--cap-add", cap]
    args += ["--ro-bind", "/usr", "/usr"]
    for hidden in _USR_ETC:
        if os.path.isdir(hidden):
            args += ["--size", "4096", "--tmpfs", hidden, "--remount-ro", hidden]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        args += _symlink_or_bind(top)
    args += ["--ro-bind", str(etc), "/etc", "--proc", "/proc", "--dev", "/dev"]
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
    for key, value in {**sandbox_env(WORK_DIR), **(env or {})}.items():
        args += ["--setenv", key, value]
    # The process limit is set inside, once bwrap has made the job's user namespace: the
    # kernel then counts only the job's processes (bwrap's pid 1, the program and what it
    # starts), whatever else the host uid runs. Set outside, it would count every process
    # of that uid: the service's own, when it does not run as root.
    if runner:
        return [*args, "--", *job.argv]
    nproc = ["prlimit", f"--nproc={job.limits.processes + 1}", "--"]
    return [*args, "--", *nproc, *job.argv]
