"""The sandbox contract, table-driven: hostile programs on every real backend.

Each program must end with the right status within its deadline, and leave no process and no
file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assay.sandboxes import Job, Limits, LocalSandbox, MultiJob, Run, RunResult, languages
from assay.verifiers.base import Status
from assay.verifiers.code import classify
from tests.conftest import needs_bwrap

PYTHON = languages()["python"]
LIMITS = Limits(wall_s=2.0, memory_mb=256, processes=32, file_mb=8, output_bytes=64 << 10)
SLACK_S = 5.0  # sandbox start and teardown on a loaded 2-core machine


@dataclass(frozen=True)
class Hostile:
    name: str
    code: str
    status: Status
    stdout: bytes | None = None  # what it must (not) have printed, when it matters
    needs_cgroup: bool = False  # only a per-job memory cgroup can stop it


HOSTILE = [
    Hostile("loops_forever", "while True:\n    pass\n", Status.TIMEOUT),
    Hostile("sleeps_past_deadline", "import time\ntime.sleep(60)\n", Status.TIMEOUT),
    Hostile(
        "fork_bomb",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        Status.TIMEOUT,
    ),
    Hostile(
        "allocates_too_much",
        "x = bytearray(4 * 1024**3)\nprint('allocated')\n",
        Status.MEMORY_LIMIT,
        b"",
    ),
    Hostile("prints_forever", "while True:\n    print('x' * 1000)\n", Status.OUTPUT_LIMIT),
    Hostile(
        "huge_file",
        "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n",
        Status.OUTPUT_LIMIT,
    ),
    Hostile(
        "huge_file_in_tmp",
        "with open('/tmp/big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n",
        Status.OUTPUT_LIMIT,
    ),
    Hostile(
        "opens_network_connection",
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
        "    print('connected')\nexcept OSError as e:\n    print('blocked')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "connects_to_host_loopback",
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\n"
        "    print('connected')\nexcept OSError as e:\n    print('blocked')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "reads_host_home_and_env",
        "import os\nseen = []\nfor p in ['/root', '/home', '/work/main', '/srv', '/opt', '/var']:\n"
        "    try:\n        seen += [p + '/' + n for n in os.listdir(p)]\n    except OSError:\n"
        "        pass\n"
        "extra = [k for k in os.environ if k not in ('PATH', 'HOME', 'TMPDIR', 'LANG', 'PWD', "
        "'LC_CTYPE')]\nprint(seen, extra, sorted(os.listdir('/')))\n",
        Status.PASSED,
        b"[] [] ['bin', 'dev', 'etc', 'lib', 'lib64', 'proc', 'sbin', 'tmp', 'usr', 'work']\n",
    ),
    Hostile(
        "writes_to_system",
        "import os\nfor p in ['/usr/evil', '/etc/evil', '/evil']:\n    try:\n"
        "        open(p, 'w').write('x')\n        print('wrote', p)\n    except OSError:\n"
        "        pass\nprint('done')\n",
        Status.PASSED,
        b"done\n",
    ),
    Hostile(
        "kills_every_process",
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "print('alive')\n",
        Status.PASSED,
        b"alive\n",
    ),
    Hostile(
        # Its parent is its namespace's init: the kill is ignored (the same uid) or refused
        # (a warm program's own uid, where the service runs as root); either way it lives on.
        "kills_its_parent",
        "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
        "except PermissionError:\n    pass\nprint('alive')\n",
        Status.PASSED,
        b"alive\n",
    ),
    Hostile(
        "leaves_background_child",
        "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        "subprocess.Popen(['python3', '-c', 'import time\\nwhile True: time.sleep(1)'])\n"
        "print('bye')\n",
        Status.PASSED,
        b"bye\n",
    ),
    Hostile("crashes", "import os\nos.abort()\n", Status.RUNTIME_ERROR),
    Hostile(
        # tmpfs pages are outside RLIMIT_AS: bwrap's own /dev tmpfs has no size, so shared
        # memory must get a sized mount of its own.
        "fills_dev_shm",
        "for i in range(1000):\n    with open(f'/dev/shm/f{i}', 'wb') as f:\n"
        "        f.write(b'x' * (4 << 20))\n",
        Status.OUTPUT_LIMIT,
    ),
    Hostile(
        "writes_into_dev",
        "try:\n    open('/dev/evil', 'w').write('x')\n    print('wrote')\nexcept OSError:\n"
        "    print('blocked')\nopen('/dev/null', 'w').write('fine')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "nested_user_namespace",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('blocked' if libc.unshare(0x10000000) != 0 else 'unshared')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "reads_secrets_in_etc",
        "import os\nnames = ['pip.conf', 'npmrc', 'gitconfig', 'environment', 'shadow', 'ssh']\n"
        "print([n for n in names if os.path.exists('/etc/' + n)])\n",
        Status.PASSED,
        b"[]\n",
    ),
    Hostile(
        "hoards_file_descriptors",
        "import os\nfds = []\ntry:\n    while len(fds) < 100000:\n"
        "        fds.append(os.memfd_create('x'))\nexcept OSError:\n    pass\n"
        "print(len(fds) < 1000)\n",
        Status.PASSED,
        b"True\n",
    ),
    Hostile(
        # Loopback and netlink socket buffers are memory no cgroup v1 limit counts: only
        # AF_UNIX sockets may be made, and no io_uring (it makes sockets without socket()).
        "opens_sockets_other_than_unix",
        "import ctypes, socket\nout = []\n"
        "for family, kind in [(socket.AF_INET, socket.SOCK_DGRAM),\n"
        "        (socket.AF_INET6, socket.SOCK_STREAM), (socket.AF_NETLINK, socket.SOCK_RAW),\n"
        "        (socket.AF_PACKET, socket.SOCK_RAW), (socket.AF_UNIX, socket.SOCK_STREAM)]:\n"
        "    try:\n        socket.socket(family, kind).close()\n        out.append('open')\n"
        "    except OSError:\n        out.append('refused')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "out.append('refused' if libc.syscall(425, 8, params) < 0 else 'io_uring')\n"
        "print(' '.join(out))\n",
        Status.PASSED,
        b"refused refused refused refused open refused\n",
    ),
    Hostile(
        # Each child stays under its own address-space limit; together they are 5 x 200 MB,
        # all held at once (each waits for the others, however slowly the machine forks).
        "forks_to_multiply_its_memory",
        "import os, sys\nready_r, ready_w = os.pipe()\ngo_r, go_w = os.pipe()\nkids = []\n"
        "for _ in range(5):\n    pid = os.fork()\n    if pid == 0:\n"
        "        os.close(ready_r)\n        os.close(go_w)\n        block = bytearray(200 << 20)\n"
        "        os.write(ready_w, b'x')\n        os.close(ready_w)\n        os.read(go_r, 1)\n"
        "        os._exit(0)\n    kids.append(pid)\n"
        "os.close(ready_w)\nwhile os.read(ready_r, 5):\n    pass\nos.close(go_w)\n"
        "codes = [os.waitpid(k, 0)[1] for k in kids]\nprint(codes)\n"
        "sys.exit(1 if any(codes) else 0)\n",
        Status.MEMORY_LIMIT,
        needs_cgroup=True,
    ),
    Hostile(
        # memfd pages belong to no address space: 100 x 7 MB, each under the file-size limit.
        "hoards_memory_in_memfds",
        "import os\nfds = []\nfor _ in range(100):\n    fd = os.memfd_create('x')\n"
        "    os.write(fd, b'x' * (7 << 20))\n    fds.append(fd)\nprint('held 700 MB')\n",
        Status.MEMORY_LIMIT,
        b"",
        needs_cgroup=True,
    ),
]

# More of the same (issue 15's escapes table), each printing what it managed: "blocked" and
# the like where the sandbox held. Run on every path of `box` (cold and warm) as the above.
HOSTILE += [
    Hostile(
        # Anything but itself and the job's own runner: none is visible, none is attached.
        "ptraces_other_processes",
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nn = 0\n"
        "for pid in range(1, 5000):\n    if pid not in (os.getpid(), os.getppid()):\n"
        "        n += libc.ptrace(16, pid, 0, 0) == 0\nprint(n)\n",
        Status.PASSED,
        b"0\n",
    ),
    Hostile(
        "sees_no_other_processes",
        "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print('alone' if len(pids) <= 4 else pids)\n",
        Status.PASSED,
        b"alone\n",
    ),
    Hostile(
        "reads_service_environ_via_proc",
        "import os\nfound = []\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
        "        try:\n            env = open(f'/proc/{p}/environ', 'rb').read()\n"
        "        except OSError:\n            continue\n"
        "        if b'ASSAY_' in env or b'VIRTUAL_ENV' in env:\n            found.append(p)\n"
        "print(found)\n",
        Status.PASSED,
        b"[]\n",
    ),
    Hostile(
        "becomes_root",
        "import os\ntry:\n    os.setuid(0)\n    print('root')\nexcept OSError:\n"
        "    print('blocked')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "mounts_or_chroots",
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "m = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\n"
        "try:\n    os.chroot('/tmp')\n    c = 0\nexcept OSError:\n    c = -1\n"
        "print('blocked' if m != 0 and c != 0 else 'mounted')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "symlinks_out_of_workdir",
        "import os\nos.symlink('/etc/shadow', 'link')\n"
        "try:\n    open('link').read()\n    print('read')\nexcept OSError:\n    print('blocked')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "hard_links_a_host_file",
        "import os\nout = []\nfor src in ['/usr/bin/python3', '/etc/passwd']:\n"
        "    try:\n        os.link(src, 'x' + str(len(out)))\n        out.append('linked')\n"
        "    except OSError:\n        out.append('blocked')\nprint(' '.join(out))\n",
        Status.PASSED,
        b"blocked blocked\n",
    ),
    Hostile(
        "thread_bomb",
        "import threading, time\nn = 0\ntry:\n    while n < 100000:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        n += 1\nexcept RuntimeError:\n    pass\nprint('capped' if n < 100000 else n)\n",
        Status.PASSED,
        b"capped\n",
    ),
    Hostile(
        "hoards_memory_in_pipes",
        "import os\nfds = []\ntry:\n    for _ in range(5000):\n        r, w = os.pipe()\n"
        "        os.set_blocking(w, False)\n        try:\n            while True:\n"
        "                os.write(w, b'x' * 65536)\n        except BlockingIOError:\n"
        "            pass\n        fds += [r, w]\nexcept OSError:\n    pass\n"
        "print(len(fds) < 10000)\n",
        Status.PASSED,
        b"True\n",
    ),
    Hostile(
        "hoards_memory_in_socketpairs",
        "import socket\nheld = []\ntry:\n    for _ in range(5000):\n"
        "        a, b = socket.socketpair()\n        a.setblocking(False)\n        try:\n"
        "            while True:\n                a.send(b'x' * 65536)\n"
        "        except BlockingIOError:\n            pass\n        held.append((a, b))\n"
        "except OSError:\n    pass\nprint(len(held) < 5000)\n",
        Status.PASSED,
        b"True\n",
    ),
    Hostile(
        "floods_stdout",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        Status.OUTPUT_LIMIT,
    ),
    Hostile(
        "time_bomb_after_output",
        "import time\nprint('looks fine', flush=True)\ntime.sleep(60)\nprint('late')\n",
        Status.TIMEOUT,
    ),
    Hostile(
        "leaves_zombies",
        "import os\nfor _ in range(20):\n    if os.fork() == 0:\n        os._exit(0)\n"
        "print('left zombies')\n",
        Status.PASSED,
        b"left zombies\n",
    ),
    Hostile(
        "opens_a_pty",
        "import os, pty\ntry:\n    pid, fd = pty.fork()\nexcept OSError:\n    print('blocked')\n"
        "else:\n    if pid == 0:\n        os._exit(0)\n    print('pty, contained')\n",
        Status.PASSED,
    ),
    Hostile(
        "dns_lookup",
        "import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\n    print('resolved')\n"
        "except OSError:\n    print('blocked')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "connects_to_host_unix_sockets",
        "import socket, glob\nout = []\nfor path in glob.glob('/run/**/*.sock', recursive=True) + "
        "glob.glob('/var/run/*.sock') + ['/run/podman/podman.sock', '/var/run/docker.sock']:\n"
        "    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(path)\n"
        "        out.append(path)\n    except OSError:\n        pass\nprint(out)\n",
        Status.PASSED,
        b"[]\n",
    ),
    Hostile(
        "abstract_unix_socket_to_host",
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
        "    s.connect('\\0/tmp/.X11-unix/X0')\n    print('connected')\nexcept OSError:\n"
        "    print('blocked')\n",
        Status.PASSED,
        b"blocked\n",
    ),
    Hostile(
        "signals_every_pid",
        "import os, signal\nhit = 0\nfor pid in range(1, 5000):\n"
        "    if pid in (os.getpid(), os.getppid()):\n        continue\n    try:\n"
        "        os.kill(pid, signal.SIGTERM)\n        hit += 1\n    except OSError:\n"
        "        pass\nprint(hit)\n",
        Status.PASSED,
        b"0\n",
    ),
    Hostile(
        "writes_where_a_later_job_looks",
        "import os\nout = []\nfor d in ['/tmp', '/dev/shm', '/var/tmp', os.path.expanduser('~')]:\n"
        "    try:\n        open(os.path.join(d, 'assay-planted'), 'w').write('x')\n"
        "        out.append(d)\n    except OSError:\n        pass\nprint('planted')\n",
        Status.PASSED,
        b"planted\n",
    ),
]


# The host uids this module's sandboxes hand out: a range of its own, drawn at random, since
# other test runs on the machine may use the sandbox at the same time.
UID_COUNT = 50
UID_BASE = 63000 + UID_COUNT * random.randrange(100)


def _scratch_files() -> set[str]:
    """What a job could have left in the host's scratch places (/tmp, /dev/shm): entries its
    uids own, or that this process made for it (named `assay-*-PID-*`). What else appears there
    (other processes of the machine at work) is not the job's."""
    mine = f"-{os.getpid()}-"
    found = set()
    for place in (tempfile.gettempdir(), "/dev/shm"):
        if not os.path.isdir(place):
            continue
        for name in os.listdir(place):
            path = os.path.join(place, name)
            try:
                owner = os.lstat(path).st_uid
            except FileNotFoundError:
                continue
            if UID_BASE <= owner < UID_BASE + UID_COUNT or (
                name.startswith("assay-") and mine in name
            ):
                found.add(path)
    return found


def _uids_running(base: int, count: int) -> list[str]:
    """Live (non-zombie) processes owned by the sandbox uid range."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[1])
        if base <= uid < base + count and not fields["State"].strip().startswith("Z"):
            found.append(f"{pid} {fields['Name'].strip()}")
    return found


async def _only_the_worker_left(sandbox: LocalSandbox, grace_s: float = 3.0) -> bool:
    """A warm sandbox's uids run its idle workers' sandboxes and interpreters, nothing else:
    for each worker, bwrap (twice: its monitor and its namespace's pid 1), the runner and the
    warm init it forks (pid 1 of the namespaces the programs run in)."""
    assert sandbox._warm is not None
    pool = sandbox._warm.pool
    deadline = time.monotonic() + grace_s
    while True:
        left = _uids_running(UID_BASE, UID_COUNT)
        if len(left) == 4 * pool.live and pool.idle(_warm_key()) == pool.live:
            return True
        if time.monotonic() > deadline:
            print(left)
            return False
        await asyncio.sleep(0.05)


def _warm_key() -> object:
    from assay.sandboxes.warm import _Key

    return _Key(LIMITS.memory_mb, LIMITS.file_mb)


async def _gone(base: int, count: int, grace_s: float = 3.0) -> list[str]:
    """Processes of the uid range still alive after a grace for the kernel's teardown (a killed
    bwrap's pid namespace dies a few milliseconds after it)."""
    deadline = time.monotonic() + grace_s
    while (left := _uids_running(base, count)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return left


# How jobs run: `cold` (a bwrap per job), `runner` (the job as the one run of a multi-run job,
# carried out by the in-sandbox runner), `warm` (forked from a warm interpreter, whose loop
# between programs is C) and `warm-python` (the same, the loop in Python: where no C compiler is).
PATHS = ["cold", "runner", "warm", "warm-python"]


class Box:
    """A sandbox and the way this test runs jobs on it."""

    def __init__(self, sandbox: LocalSandbox, path: str) -> None:
        self.sandbox, self.path = sandbox, path

    async def run(self, job: Job) -> RunResult:
        if self.path == "runner":
            multi = MultiJob(job.argv, (Run(job.stdin, job.limits),), job.files)
            async with contextlib.aclosing(self.sandbox.run_many(multi)) as steps:
                results = [step.result async for step in steps]
            assert len(results) == 1
            return results[0]
        return await self.sandbox.run(job)


@pytest.fixture(params=PATHS)
async def box(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Box]:
    """Every way jobs run on every backend here; the Docker backend joins this list."""
    if request.param == "warm-python":
        monkeypatch.setenv("ASSAY_WARM_INIT", "python")
    sandbox = LocalSandbox(
        uid_base=UID_BASE,
        uid_count=UID_COUNT,
        lock_dir=tmp_path / "uids",
        warm_python=1 if request.param.startswith("warm") else 0,
    )
    yield Box(sandbox, request.param)
    await sandbox.close()


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    """The cold path alone, for what only it has."""
    box = LocalSandbox(uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path / "uids")
    yield box
    await box.close()


@needs_bwrap
@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
async def test_hostile_program(box: Box, case: Hostile) -> None:
    sandbox = box.sandbox
    if case.needs_cgroup and sandbox.cgroups_reason:
        pytest.skip(f"no per-job memory cgroup here: {sandbox.cgroups_reason}")
    tmp_before = _scratch_files()
    run: RunResult = await box.run(
        Job(argv=PYTHON.run, files={PYTHON.file: case.code}, limits=LIMITS)
    )
    status, why = classify(run, PYTHON, LIMITS)
    if case.status is Status.MEMORY_LIMIT and status is Status.TIMEOUT:
        # The cap held (the kernel killed for it), but on a loaded machine what the cap's
        # reclaim costs can also outlast the clock: the run is then a time-out. Either way
        # the memory is contained, which is what this case is about.
        assert run.oom_killed, (why, run)
    else:
        assert status is case.status, (why, run)
    if case.stdout is not None:
        assert run.stdout == case.stdout
    assert run.time_s < LIMITS.wall_s + SLACK_S
    warm = box.path.startswith("warm")
    if os.geteuid() == 0 and not warm:  # a warm worker lives on, by design
        assert await _gone(UID_BASE, UID_COUNT) == []
    assert _scratch_files() - tmp_before == set()
    if sandbox._cgroups is not None and not warm:  # empty, ready for the next job
        for job_cgroup in (p for p in sandbox._cgroups.base.iterdir() if p.is_dir()):
            assert (job_cgroup / "cgroup.procs").read_text() == ""
            assert job_cgroup in sandbox._cgroups._free
    if warm:  # the program's processes are gone; its worker is well and reused
        assert sandbox._warm is not None
        assert await _only_the_worker_left(sandbox)


@needs_bwrap
async def test_stdin_and_files_reach_the_program(sandbox: LocalSandbox) -> None:
    code = "import sys\nprint(sys.stdin.read().upper(), open('data.txt').read())\n"
    run = await sandbox.run(
        Job(argv=PYTHON.run, files={PYTHON.file: code, "data.txt": b"file"}, stdin=b"abc")
    )
    assert run.ok
    assert run.stdout == b"ABC file\n"


@needs_bwrap
async def test_process_limit_holds_per_job(sandbox: LocalSandbox) -> None:
    code = (
        "import os, time\nn = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(5)\n            os._exit(0)\n        n += 1\n    except OSError:\n"
        "        break\nprint(n)\n"
    )
    run = await sandbox.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=LIMITS))
    assert run.exit_code == 0
    assert int(run.stdout) == LIMITS.processes - 1  # the program itself is one


# Starts a process, a thread and a program, and says of each whether it started or was refused.
STARTS_EACH = (
    "import os, subprocess, threading\n"
    "def fork():\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
    "    os.waitpid(pid, 0)\n"
    "for name, start in [('fork', fork), ('thread', lambda: threading.Thread(\n"
    "        target=print).start()), ('spawn', lambda: subprocess.run(['true']))]:\n"
    "    try:\n        start()\n        print(name, 'started')\n"
    "    except (OSError, RuntimeError):\n        print(name, 'refused')\n"
)


@needs_bwrap
async def test_single_process_jobs_cannot_fork_or_thread(sandbox: LocalSandbox) -> None:
    code = STARTS_EACH
    one = Limits(wall_s=5, processes=1)
    run = await sandbox.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=one))
    assert run.stdout == b"fork refused\nthread refused\nspawn refused\n", run
    many = await sandbox.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=LIMITS))
    assert many.stdout.count(b"started") == 3, many


async def test_missing_bwrap_refuses_work(tmp_path: Path) -> None:
    from assay.sandboxes import SandboxUnavailable

    box = LocalSandbox(bwrap=None, lock_dir=tmp_path)
    reason = box.unavailable_reason()
    assert reason is not None
    assert "bubblewrap" in reason
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        await box.run(Job(argv=("true",)))


async def test_unsandboxed_mode_runs_only_when_chosen(tmp_path: Path) -> None:
    box = LocalSandbox(isolation="unsandboxed", bwrap=None, lock_dir=tmp_path)
    assert box.unavailable_reason() is None
    run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: "print(6 * 7)"}))
    assert run.stdout == b"42\n"
    slow = await box.run(
        Job(
            argv=PYTHON.run,
            files={PYTHON.file: "import time\ntime.sleep(30)"},
            limits=Limits(wall_s=0.5),
        )
    )
    assert slow.timed_out


def _check_etc_view(view: Path) -> None:
    from assay.sandboxes.bwrap import ETC_ALLOWED

    assert (view / "passwd").is_file()
    assert (view / "ld.so.cache").is_file()
    for path in view.rglob("*"):
        top = path.relative_to(view).parts[0]
        assert any(Path(top).match(p) for p in ETC_ALLOWED), path
        if not path.is_symlink():
            assert path.stat().st_mode & 0o004, f"{path} is not world-readable on the host"
    private = Path("/etc/ssl/private")
    if private.is_dir() and not private.stat().st_mode & 0o004:
        assert not (view / "ssl" / "private").exists()


async def test_jobs_see_only_world_readable_allowed_etc(sandbox: LocalSandbox) -> None:
    assert sandbox._etc is not None
    _check_etc_view(sandbox._etc)
    await sandbox.close()
    assert sandbox._etc.name not in os.listdir(sandbox._etc.parent)


@needs_bwrap
async def test_cancelled_jobs_leave_nothing_behind(sandbox: LocalSandbox) -> None:
    """Jobs cancelled at every point of their life (a deadline, a client gone) leave no process,
    no cgroup, no scratch file once the sandbox closes."""
    before = _scratch_files()
    job = Job(argv=PYTHON.run, files={PYTHON.file: "import time\ntime.sleep(5)\n"}, limits=LIMITS)
    for delay_ms in range(0, 60, 3):
        task = asyncio.ensure_future(sandbox.run(job))
        await asyncio.sleep(delay_ms / 1000)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if os.geteuid() == 0:
        assert await _gone(UID_BASE, UID_COUNT) == []
    cgroups = sandbox._cgroups
    await sandbox.close()
    if cgroups is not None:
        assert cgroups.base.name not in os.listdir(cgroups.base.parent)
    assert _scratch_files() - before == set()


@pytest.fixture
def busy_uid() -> Iterator[int]:
    """A host uid that already runs 100 processes, as a service's own uid would."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as another uid")
    uid = 62900
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    sleepers = [subprocess.Popen([*drop, "sleep", "60"]) for _ in range(100)]
    try:
        yield uid
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


@needs_bwrap
async def test_process_limit_counts_only_the_jobs_processes(busy_uid: int, tmp_path: Path) -> None:
    code = (
        "import os, time\nn = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(5)\n            os._exit(0)\n        n += 1\n    except OSError:\n"
        "        break\nprint(n)\n"
    )
    box = LocalSandbox(uid_base=busy_uid, uid_count=1, lock_dir=tmp_path / "uids")
    try:
        run = await box.run(
            Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=Limits(processes=16))
        )
    finally:
        await box.close()
    assert (run.exit_code, run.stdout) == (0, b"15\n"), run


@needs_bwrap
async def test_a_later_job_does_not_see_what_an_earlier_one_planted(box: Box) -> None:
    plant = next(c for c in HOSTILE if c.name == "writes_where_a_later_job_looks")
    for _ in range(2):  # the warm path reuses its worker: twice, so the second may see it
        run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: plant.code}, limits=LIMITS))
        assert run.stdout == b"planted\n"
    look = (
        "import os\nprint([d for d in ['/tmp', '/dev/shm', '/var/tmp', os.path.expanduser('~')]"
        " if os.path.exists(os.path.join(d, 'assay-planted'))])\n"
    )
    run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: look}, limits=LIMITS))
    assert run.stdout == b"[]\n"
