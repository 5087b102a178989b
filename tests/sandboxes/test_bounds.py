"""What a job holds beyond its processes' address space is bounded too, and the host's
configuration stays out of sight (issue 5, "The spine under attack").

Real bwrap jobs, each checked for what it could get: System V IPC, POSIX message queues,
ptys, the OOM killer's choice, files under /usr/local/etc, and the difference between a job
killed at its own memory cap and one killed by the host's shortage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from assay.clients.schema import ScoreItem
from assay.sandboxes import Job, Limits, LocalSandbox, languages
from assay.service.engine import Engine
from assay.verifiers.base import Status
from assay.verifiers.code import classify
from tests.conftest import needs_bwrap
from tests.sandboxes.test_contract import _gone

PYTHON = languages()["python"]
LIMITS = Limits(wall_s=10.0, memory_mb=256, processes=16, file_mb=8)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    box = LocalSandbox(uid_base=62200, uid_count=20, lock_dir=tmp_path / "uids")
    yield box
    await box.close()


async def _run(box: LocalSandbox, code: str, limits: Limits = LIMITS) -> bytes:
    run = await box.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=limits))
    assert run.exit_code == 0, run
    return run.stdout


SYSV = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_PRIVATE, CREATE = 0, 0o1600
seg = libc.shmget(IPC_PRIVATE, 600 << 20, CREATE)
if seg < 0:
    print('shm refused')
else:  # fill it and let go of it: the pages stay, in no process's address space
    at = libc.shmat(seg, None, 0)
    ctypes.memset(at, 1, 600 << 20)
    libc.shmdt(ctypes.c_void_p(at))
    print('shm held 600 MB')
print('msg refused' if libc.msgget(IPC_PRIVATE, CREATE) < 0 else 'msg made')
print('sem refused' if libc.semget(IPC_PRIVATE, 1, CREATE) < 0 else 'sem made')
"""


@needs_bwrap
async def test_system_v_ipc_is_refused(sandbox: LocalSandbox) -> None:
    """A job with memory_mb 128 held 600 MB in one SysV segment: the IPC namespace's limits
    are the kernel's near-unlimited defaults, and a detached segment is in no address space."""
    limits = Limits(wall_s=10.0, memory_mb=128, file_mb=8)
    assert await _run(sandbox, SYSV, limits) == b"shm refused\nmsg refused\nsem refused\n"


MQUEUES = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_long), ('maxmsg', ctypes.c_long),
                ('msgsize', ctypes.c_long), ('curmsgs', ctypes.c_long),
                ('pad', ctypes.c_long * 4)]
attr = Attr(0, 10, 8192, 0)
made = 0
for i in range(1000):
    if libc.mq_open(f'/q{i}'.encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr)) < 0:
        break
    made += 1
print(made * 10 * 8192)
"""


@pytest.fixture
def raised_msgqueue_limit() -> Iterator[None]:
    """The service started with `ulimit -q unlimited` (a systemd unit, a container's ulimits)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to raise a hard limit")
    before = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    try:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (resource.RLIM_INFINITY,) * 2)
    except (ValueError, OSError) as exc:  # no CAP_SYS_RESOURCE (a container's root)
        pytest.skip(f"cannot raise RLIMIT_MSGQUEUE here: {exc}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, before)


@needs_bwrap
async def test_posix_message_queues_are_capped(raised_msgqueue_limit: None, tmp_path: Path) -> None:
    box = LocalSandbox(uid_base=62200, uid_count=20, lock_dir=tmp_path / "uids")
    try:
        held = int(await _run(box, MQUEUES))
    finally:
        await box.close()
    assert 0 < held <= 1 << 20


@needs_bwrap
async def test_no_ptys(sandbox: LocalSandbox) -> None:
    """Ptys come from a host-wide count (kernel.pty.max); a job has no use for one."""
    code = (
        "import os\nfor open_one in (os.openpty, lambda: os.open('/dev/ptmx', os.O_RDWR),\n"
        "        lambda: os.open('/dev/pts/ptmx', os.O_RDWR)):\n"
        "    try:\n        open_one()\n        print('opened')\n"
        "    except OSError:\n        print('refused')\n"
    )
    assert await _run(sandbox, code) == b"refused\nrefused\nrefused\n"


@needs_bwrap
async def test_jobs_are_the_oom_killers_first_choice(sandbox: LocalSandbox) -> None:
    code = "print(open('/proc/self/oom_score_adj').read().strip())\n"
    assert await _run(sandbox, code) == b"1000\n"


@pytest.fixture
def usr_local_etc_file() -> Iterator[str]:
    """A file of the host's configuration under /usr/local/etc (an npmrc with a token, say)."""
    folder = Path("/usr/local/etc")
    if not os.access(folder.parent, os.W_OK):
        pytest.skip("needs to write to /usr/local")
    made = not folder.exists()
    folder.mkdir(exist_ok=True)
    path = folder / f"assay-test-{secrets.token_hex(4)}"
    path.write_text("token=secret\n")
    try:
        yield path.name
    finally:
        path.unlink()
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()


@needs_bwrap
async def test_usr_local_etc_is_hidden(usr_local_etc_file: str, tmp_path: Path) -> None:
    box = LocalSandbox(uid_base=62200, uid_count=20, lock_dir=tmp_path / "uids")
    code = "import os\nprint(os.listdir('/usr/local/etc'), os.listdir('/usr/local/bin') != 1)\n"
    try:
        assert await _run(box, code) == b"[] True\n"
    finally:
        await box.close()


HOG = "x = b'x' * (300 << 20)\nprint('held')\n"


@pytest.fixture
async def short_host(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    """A sandbox in a container whose memory (96 MB) is below a job's cap: its own cgroup
    capped, as a container's limit would be."""
    box = LocalSandbox(uid_base=62200, uid_count=20, lock_dir=tmp_path / "uids")
    if box._cgroups is None:
        await box.close()
        pytest.skip(f"no per-job memory cgroups here: {box.cgroups_reason}")
    box._cgroups._cap(box._cgroups.base, 96 << 20)
    yield box
    await box.close()


@needs_bwrap
async def test_a_kill_for_the_hosts_shortage_is_told_apart(short_host: LocalSandbox) -> None:
    limits = Limits(wall_s=10.0, memory_mb=512, file_mb=8)
    run = await short_host.run(Job(argv=PYTHON.run, files={PYTHON.file: HOG}, limits=limits))
    assert (run.oom_killed, run.host_pressure) == (True, True), run
    status, why = classify(run, PYTHON, limits)
    assert status is Status.MEMORY_LIMIT
    assert "host" in why


@needs_bwrap
async def test_a_kill_at_the_jobs_own_cap_is_its_own(sandbox: LocalSandbox) -> None:
    if sandbox._cgroups is None:
        pytest.skip(f"no per-job memory cgroups here: {sandbox.cgroups_reason}")
    code = (
        "import os, time\nkids = []\nfor _ in range(3):\n    pid = os.fork()\n"
        "    if pid == 0:\n        block = bytearray(100 << 20)\n        time.sleep(1)\n"
        "        os._exit(0)\n    kids.append(pid)\n"
        "os._exit(1 if any(os.waitpid(k, 0)[1] for k in kids) else 0)\n"
    )
    limits = Limits(wall_s=10.0, memory_mb=128, processes=8, file_mb=8)
    run = await sandbox.run(Job(argv=PYTHON.run, files={PYTHON.file: code}, limits=limits))
    assert (run.oom_killed, run.host_pressure) == (True, False), run


@needs_bwrap
async def test_the_hosts_shortage_is_not_cached(short_host: LocalSandbox) -> None:
    """With the container's limit below the sum of the job caps, a job's neighbour can be the
    one killed: that verdict may differ on a rerun, and is not cached."""
    engine = Engine(short_host)
    spec = {"language": "python", "tests": [{"stdin": "", "expected_stdout": "held\n"}]}
    item = ScoreItem(verifier="code", completion=HOG, spec={**spec, "memory_mb": 512})
    first, again = [(await engine.score([item]))[0] for _ in range(2)]
    assert (first.status, again.status) == ("memory_limit", "memory_limit"), first
    assert not again.cached
    assert len(engine.cache) == 0


@needs_bwrap
async def test_the_kernels_keyrings_are_out_of_reach(sandbox: LocalSandbox) -> None:
    """Keyrings are not namespaced: a job would inherit the service's session keyring."""
    code = (
        "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "KEYCTL_GET_KEYRING_ID, SESSION = 0, -3\n"
        "nr = {'x86_64': 250, 'aarch64': 219}[__import__('platform').machine()]\n"
        "found = libc.syscall(nr, KEYCTL_GET_KEYRING_ID, SESSION, 0)\n"
        "print('refused' if found < 0 and ctypes.get_errno() == errno.ENOSYS else 'reached')\n"
    )
    assert await _run(sandbox, code) == b"refused\n"


@needs_bwrap
async def test_jobs_cancelled_while_they_start_leave_no_process(tmp_path: Path) -> None:
    """Cancelled at each step of its start, a job leaves nothing running: asyncio kills only
    the first process of one cancelled while it starts, and bwrap's namespace child then waited
    for its killed parent forever."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the jobs' processes are found by their uids")
    # No cgroup: its set-up is a thread's work, and the steps below are the event loop's.
    box = LocalSandbox(
        uid_base=62500, uid_count=20, lock_dir=tmp_path / "uids", memory_cgroups=False
    )
    await box.check()  # the probe job, uncancelled
    job = Job(argv=PYTHON.run, files={PYTHON.file: "import time\ntime.sleep(30)\n"}, limits=LIMITS)
    try:
        async with asyncio.timeout(120):  # (a start that never ends fails, too)
            for steps in range(20):
                for _ in range(3):
                    task = asyncio.ensure_future(box.run(job))
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        assert await _gone(62500, 20) == []
    finally:
        await box.close()
