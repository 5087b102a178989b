"""Warm Python: programs forked from one warm interpreter see nothing of each other.

Each test runs a hostile program, then a probe, on a pool of one worker (so both run on the
same interpreter, checked by the pool's count of started workers): whatever the first did to
its process, files, children, limits or fds, the probe sees a fresh program's world.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assay.clients.schema import CodeSpec
from assay.sandboxes import Job, Limits, LocalSandbox, MultiJob, Run, RunResult, steps
from assay.verifiers import CodeVerifier
from tests.conftest import needs_bwrap
from tests.sandboxes.test_contract import STARTS_EACH

pytestmark = needs_bwrap

UID_COUNT = 20
UID_BASE = 70000 + UID_COUNT * random.randrange(100)
LIMITS = Limits(wall_s=5.0, memory_mb=256, processes=16, file_mb=8)


@pytest.fixture(params=["c", "python"])
async def warm(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalSandbox]:
    """A sandbox with one warm worker, its loop between programs in C (`warm_init.c`) or in
    Python (where no C compiler is): every test here holds for both."""
    monkeypatch.setenv("ASSAY_WARM_INIT", request.param)
    box = LocalSandbox(
        uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path / "uids", warm_python=1
    )
    yield box
    await box.close()


async def _run(box: LocalSandbox, code: str, stdin: bytes = b"") -> RunResult:
    job = Job(argv=("python3", "-I", "-B", "main.py"), files={"main.py": code}, stdin=stdin)
    return await box.run(job)


def _started(box: LocalSandbox) -> int:
    assert box._warm is not None
    return box._warm.pool.stats.started


@dataclass(frozen=True)
class Leak:
    name: str
    attack: str
    probe: str
    fresh: bytes  # what the probe prints on a fresh interpreter


LEAKS = [
    Leak(
        "patched_builtins_and_stdlib",
        "import builtins, math, json, sys\nbuiltins.len = lambda x: 0\nmath.pi = 3\n"
        "json.dumps = None\nsys.modules['heapq'] = None\nsys.path.insert(0, '/tmp')\n",
        "import math, json, heapq, sys\nprint(len('ab'), math.pi, json.dumps(1), sys.path[0])\n",
        b"2 3.141592653589793 1 /work\n",
    ),
    Leak(
        "files_in_work_tmp_and_shm",
        "for p in ['left', '/tmp/left', '/dev/shm/left']:\n    open(p, 'w').write('x')\n",
        "import os\nprint(os.listdir('.'), os.listdir('/tmp'), os.listdir('/dev/shm'))\n",
        b"['main.py'] [] []\n",
    ),
    Leak(
        "threads_and_children",
        "import subprocess, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "subprocess.Popen(['python3', '-c', 'import os, time\\nos.fork()\\ntime.sleep(60)'])\n"
        "time.sleep(0.2)\n",
        "import os, threading\n"  # no process but itself: not the warm init, nothing left
        "print([p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()], "
        "threading.active_count())\n",
        b"[] 1\n",
    ),
    Leak(
        "main_module_globals",
        "import sys\nsys.modules['__main__'].__dict__['LEFT'] = 1\nALSO = 2\n"
        "sys.modules['__main__'].__doc__ = 'changed'\n",
        "import sys\nmain = sys.modules['__main__']\n"
        "print(sorted(k for k in globals() if not k.startswith('__')), main.__doc__, "
        "main.__dict__ is globals(), __file__)\n",
        b"['main', 'sys'] None True /work/main.py\n",
    ),
    Leak(
        "cwd_env_and_umask",
        "import os\nos.chdir('/tmp')\nos.environ['LEAK'] = '1'\nos.umask(0o777)\n",
        "import os\nprint(os.getcwd(), 'LEAK' in os.environ, oct(os.umask(0o22)))\n",
        b"/work False 0o22\n",
    ),
    Leak(
        "rlimits",
        "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (8, 8))\n"
        "resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))\n",
        "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))\n",
        b"(256, 256)\n",
    ),
    Leak(
        "closes_and_dups_fds",
        "import os\nfor fd in range(3, 20):\n    os.dup2(1, fd)\nos.close(0)\nos.close(2)\n",
        "import os, sys\nprint(sorted(os.listdir('/proc/self/fd')), sys.stdin.read())\n",
        b"['0', '1', '2', '3'] in\n",
    ),
    Leak(
        "signals_its_parent_and_everyone",
        "import os, signal\nfor pid, sig in [(os.getppid(), signal.SIGKILL), (1, signal.SIGTERM),"
        " (1, signal.SIGINT), (1, signal.SIGSTOP), (-1, signal.SIGKILL)]:\n"
        "    try:\n        os.kill(pid, sig)\n    except OSError:\n        pass\nprint('alive')\n",
        "print('next')\n",
        b"next\n",
    ),
    Leak(
        "posix_message_queue",  # an IPC namespace a program: its queues die with it
        "import ctypes, os\nrt = ctypes.CDLL('librt.so.1')\n"
        "print(rt.mq_open(b'/left', os.O_CREAT | os.O_RDWR, 0o644, None))\n",  # others may read
        "import ctypes, os\nrt = ctypes.CDLL('librt.so.1')\n"
        "print(rt.mq_open(b'/left', os.O_RDONLY) < 0)\n",
        b"True\n",
    ),
    Leak(
        "signal_handlers_and_alarm",
        "import signal\nsignal.signal(signal.SIGALRM, lambda *a: print('late'))\n"
        "signal.alarm(1)\nsignal.signal(signal.SIGPIPE, signal.SIG_DFL)\n",
        "import signal, time\nprint(signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN, "
        "signal.getsignal(signal.SIGALRM) == signal.SIG_DFL)\ntime.sleep(1.5)\n",
        b"True True\n",
    ),
]


@pytest.mark.parametrize("leak", LEAKS, ids=lambda c: c.name)
async def test_the_next_program_sees_nothing_of_the_last(warm: LocalSandbox, leak: Leak) -> None:
    before = await _run(warm, leak.probe, b"in")
    assert before.stdout == leak.fresh, before
    await _run(warm, leak.attack)
    after = await _run(warm, leak.probe, b"in")
    assert after.stdout == leak.fresh, after
    assert _started(warm) == 1  # all three on the same warm interpreter


# The IPC namespace stays from one program to the next only while the last left nothing in it
# (System V IPC is refused; a POSIX message queue left gets the next program a new one: see
# `runner._IpcView`). A queue made and removed leaves nothing, and may or may not (its root's
# times move by the coarse clock) get the next program a new one.
IPC_PROBE = (
    "import ctypes, os\nrt = ctypes.CDLL('librt.so.1')\n"
    "print(os.stat('/proc/self/ns/ipc').st_ino, rt.mq_open(b'/q', os.O_RDONLY) < 0)\n"
)
MQ = (
    "import ctypes, os\nrt = ctypes.CDLL('librt.so.1')\n"
    "assert rt.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o644, None) >= 0\n"  # others may read
)
IPC_ATTACKS = {
    "nothing": "",
    "made_and_removed": MQ + "assert rt.mq_unlink(b'/q') == 0\n",
    "left": MQ,
    "left_one_of_two": MQ.replace("/q", "/r") + MQ + "assert rt.mq_unlink(b'/r') == 0\n",
}


@pytest.mark.parametrize("attack", IPC_ATTACKS)
async def test_a_queue_left_gets_the_next_program_a_new_ipc_namespace(
    warm: LocalSandbox, attack: str
) -> None:
    first = (await _run(warm, IPC_PROBE)).stdout.split()
    used = await _run(warm, IPC_ATTACKS[attack])
    assert used.exit_code == 0, used
    after = (await _run(warm, IPC_PROBE)).stdout.split()
    assert first[1] == after[1] == b"True"  # no queue /q, before or after
    if attack == "nothing":
        assert after[0] == first[0]  # untouched: kept
    elif attack.startswith("left"):
        assert after[0] != first[0]
    assert _started(warm) == 1


# /tmp and /dev/shm stay from one program to the next only when the last left them exactly as
# mounted (see `runner._untouched`); anything it did to them gets the next program new ones.
# (It counts what is in them with statvfs: listing a directory moves its access time, which
# would be the next program's to see, and gets it a new mount.)
SCRATCH_PROBE = (
    "import os\nfor d in ('/tmp', '/dev/shm'):\n    st, fs = os.stat(d), os.statvfs(d)\n"
    "    print(d, st.st_ctime_ns, oct(st.st_mode), fs.f_files - fs.f_ffree, os.listxattr(d))\n"
)
SCRATCH_ATTACKS = {
    "listed": "os.listdir(d)\n",
    "file_made_and_removed": "open(f'{d}/x', 'w').write('x')\nos.unlink(f'{d}/x')\n",
    "dir_made_and_removed": "os.mkdir(f'{d}/x')\nos.rmdir(f'{d}/x')\n",
    "mode": "os.chmod(d, 0o700)\n",
    "xattr": "os.setxattr(d, 'user.left', b'1')\n",
    "fifo_left": "os.mkfifo(f'{d}/x')\n",
}


def _scratch(out: bytes) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.decode().splitlines()}


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
@pytest.mark.parametrize("attack", SCRATCH_ATTACKS, ids=str)
async def test_a_touched_tmp_is_mounted_afresh(warm: LocalSandbox, attack: str, where: str) -> None:
    fresh = _scratch((await _run(warm, SCRATCH_PROBE)).stdout)
    again = _scratch((await _run(warm, SCRATCH_PROBE)).stdout)
    assert again == fresh  # untouched: the same mounts, as they were
    # It waits after the change: a new mount's root takes the coarse clock, which within a tick
    # of the change may read the change's own time.
    code = (
        f"import os, time\nd = {where!r}\n{SCRATCH_ATTACKS[attack]}"
        "print(os.stat(d).st_ctime_ns)\ntime.sleep(0.05)\n"
    )
    touched = await _run(warm, code)
    if attack in ("mode", "xattr") and warm._uids is not None:
        # Programs have uids of their own (the service is root): /tmp's root, the warm
        # interpreter's, is not theirs to change, and stays as it was.
        assert touched.exit_code == 1, touched
        assert b"PermissionError" in touched.stderr
        assert _scratch((await _run(warm, SCRATCH_PROBE)).stdout) == fresh
        return
    assert touched.exit_code == 0, touched
    after = _scratch((await _run(warm, SCRATCH_PROBE)).stdout)
    assert int(after[where][0]) > int(touched.stdout)  # mounted after the attack
    assert after[where][1:] == fresh[where][1:] == ["0o41777", "1", "[]"]
    other = "/dev/shm" if where == "/tmp" else "/tmp"
    assert after[other] == fresh[other]  # the one it did not touch stays
    assert _started(warm) == 1


# The work dir's mount stays from one program to the next only when, its files unlinked by
# name, nothing of the last program is left there (see `runner._work_dir_emptied`); anything
# else it did gets the next program a new mount.
# It prints the root's birth time first (statx; a new mount, a new root), then what is in it.
WORK_PROBE = (
    "import ctypes, os\nbuf = ctypes.create_string_buffer(256)\n"
    "assert ctypes.CDLL(None).statx(-100, b'.', 0, 0x800, buf) == 0\n"  # STATX_BTIME
    "print(bytes(buf.raw[80:92]).hex(), sorted(os.listdir('.')), oct(os.stat('.').st_mode), "
    "os.listxattr('.'), open('main.py').read().startswith('import ctypes'))\n"
)
# A default ACL (version 2; the owner rwx, the group r-x, others nothing), as setfacl sets it.
_ACL = (
    "struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, p, 0xFFFFFFFF) "
    "for t, p in ((1, 7), (4, 5), (0x20, 0)))"
)
WORK_ATTACKS = {
    "file_left": "open('left', 'w').write('x')\n",
    "hard_link_to_its_file": "os.link('main.py', 'kept')\n",
    "its_file_renamed": "os.rename('main.py', 'moved.py')\n",
    "dir_left": "os.mkdir('d')\n",
    "symlink_left": "os.symlink('/etc/passwd', 'link')\n",
    "fifo_left": "os.mkfifo('f')\n",
    "mode": "os.chmod('.', 0o777)\n",
    "xattr": "os.setxattr('.', 'user.left', b'1')\n",
    "default_acl": f"import struct\nos.setxattr('.', 'system.posix_acl_default', {_ACL})\n",
    "chattr_nodump": "import fcntl\nfd = os.open('.', os.O_RDONLY)\n"
    "fcntl.ioctl(fd, 0x40086602, (0x40).to_bytes(8, 'little'))\n",  # FS_IOC_SETFLAGS
}


@pytest.mark.parametrize("attack", WORK_ATTACKS, ids=str)
async def test_a_work_dir_left_other_than_given_is_mounted_afresh(
    warm: LocalSandbox, attack: str
) -> None:
    fresh = (await _run(warm, WORK_PROBE)).stdout.split(maxsplit=1)
    again = (await _run(warm, WORK_PROBE)).stdout.split(maxsplit=1)
    assert again == fresh  # its files were all the last left: the same mount, emptied
    assert fresh[1] == b"['main.py'] 0o40755 [] True\n"
    # It waits after the attack: a new mount's root takes the coarse clock.
    code = f"import os, time\n{WORK_ATTACKS[attack]}time.sleep(0.05)\n"
    touched = await _run(warm, code)
    if attack in ("default_acl", "chattr_nodump") and b"OSError" in touched.stderr:
        pytest.skip(f"not on this kernel's tmpfs: {touched.stderr.decode().strip()}")
    assert touched.exit_code == 0, touched
    after = (await _run(warm, WORK_PROBE)).stdout.split(maxsplit=1)
    assert after[0] != fresh[0]  # a new mount
    assert after[1] == fresh[1]
    assert _started(warm) == 1


async def test_the_work_dir_times_a_program_set_are_not_the_next_ones(
    warm: LocalSandbox,
) -> None:
    """Times are not checked but set anew: the work dir stays, and what the last program read
    or set of its root's times (listing it moves the access time) does not reach the next."""
    probe = "import os\nst = os.stat('.')\nprint(st.st_atime_ns, st.st_mtime_ns)\n"
    assert (await _run(warm, "import os\nos.utime('.', ns=(1, 1))\n")).exit_code == 0
    got = await _run(warm, probe)
    assert b"1" not in got.stdout.split(), got
    assert all(int(t) > 10**18 for t in got.stdout.split())  # now, in ns since 1970


async def test_a_program_that_rewrites_its_file_leaves_the_next_its_own(
    warm: LocalSandbox,
) -> None:
    """The work dir stays (the program's own file was all it left), but the file is the next
    program's, not the content the last one wrote into it."""
    planted = (
        "import os\nopen('main.py', 'w').write('print(\"planted\")')\nos.chmod('main.py', 0o777)\n"
    )
    assert (await _run(warm, planted)).exit_code == 0
    got = await _run(warm, "import os\nprint(oct(os.stat('main.py').st_mode))\n")
    assert got.stdout == b"0o100644\n", got


async def test_a_file_held_open_unnamed_leaves_nothing(warm: LocalSandbox) -> None:
    fresh = _scratch((await _run(warm, SCRATCH_PROBE)).stdout)
    code = (
        "import os\nfd = os.open('/tmp', os.O_TMPFILE | os.O_WRONLY)\nos.write(fd, b'x' * 8192)\n"
    )
    assert (await _run(warm, code)).exit_code == 0
    assert _scratch((await _run(warm, SCRATCH_PROBE)).stdout) == fresh


UID_PROBE = """import os
print(os.getuid(), os.getgid(), os.getgroups(), os.stat('.').st_uid, os.stat('main.py').st_uid)
open('mine', 'w').write('x')
status = open('/proc/self/status').read()
print(status.split('CapEff:')[1].split()[0], status.split('CapPrm:')[1].split()[0])
"""


async def test_each_program_has_a_uid_of_its_own(warm: LocalSandbox) -> None:
    """Where the service is root: each program takes the next of its worker's uids, never the
    warm interpreter's (1000 inside), owns its work dir and files, and has no capability."""
    if warm._uids is None:
        pytest.skip("programs share their worker's uid where the service is not root")
    seen = []
    for _ in range(3):
        run = await _run(warm, UID_PROBE)
        assert run.exit_code == 0, run
        ids, caps = run.stdout.decode().splitlines()
        uid, gid, groups, work_owner, file_owner = ids.split(" ", 4)
        assert uid == gid == work_owner == file_owner
        assert groups == "[]"
        assert caps == "0000000000000000 0000000000000000"
        seen.append(int(uid))
    assert len(set(seen)) == 3, seen
    assert 1000 not in seen
    assert _started(warm) == 1
    assert warm.facts()["uid_per_warm_program"] is True
    # On the host, the worker holds a block of the pool's uids, its own and its programs'.
    held = sorted(warm._uids._held)
    assert held == list(range(held[0], held[0] + 5)), held
    await warm.close()
    assert warm._uids._held == {}  # given back with the worker


TWO_HOGS = """import os, time
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        block = bytearray(70 << 20)
        for at in range(0, len(block), 4096):
            block[at] = 1
        time.sleep(1)
        os._exit(0)
    kids.append(pid)
print([os.waitpid(kid, 0)[1] for kid in kids])
"""


async def test_a_program_is_capped_at_its_own_memory(warm: LocalSandbox) -> None:
    """Programs move into a memory cgroup of their own as they start, capped at their limits
    (as a cold job's): two processes of 70 MB each, each within the 100 MB address space, meet
    the 100 MB cap together. In the worker's cgroup (which holds the interpreter's room too)
    they would both have lived. The kill is the program's, and the worker stays well."""
    if warm.cgroups_reason is not None:
        pytest.skip(f"no memory cgroups here: {warm.cgroups_reason}")
    limits = Limits(wall_s=10.0, memory_mb=100, processes=4, file_mb=8)
    job = Job(argv=("python3", "-I", "-B", "main.py"), files={"main.py": TWO_HOGS}, limits=limits)
    hogs = await warm.run(job)
    assert hogs.oom_killed, hogs
    assert not hogs.host_pressure
    assert b"9" in hogs.stdout  # one child ended by SIGKILL; the program itself lived
    after = await warm.run(Job(argv=job.argv, files={"main.py": "print('well')\n"}, limits=limits))
    assert (after.stdout, after.oom_killed) == (b"well\n", False)
    assert _started(warm) == 1


async def test_a_crashing_program_leaves_the_worker_well(warm: LocalSandbox) -> None:
    crashes = [
        "import ctypes\nctypes.string_at(0)\n",
        "import os\nos._exit(3)\n",
        "import os\nos.abort()\n",
        "raise SystemExit('bye')\n",
    ]
    codes = [(await _run(warm, code)) for code in crashes]
    assert [(r.exit_code, r.signal) for r in codes] == [(None, 11), (3, None), (None, 6), (1, None)]
    assert codes[3].stderr == b"bye\n"
    assert (await _run(warm, "print(7)")).stdout == b"7\n"
    assert _started(warm) == 1


async def test_the_warm_init_is_out_of_reach(warm: LocalSandbox) -> None:
    """Programs run in the warm init's pid namespace: they cannot see it in /proc, trace it,
    or stop or kill it (it is the namespace's init, with no signal handler)."""
    code = (
        "import ctypes, os, signal\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(os.path.exists('/proc/1'), os.getppid(), libc.ptrace(16, 1, None, None))\n"
        "for sig in (signal.SIGSTOP, signal.SIGKILL):\n    os.kill(1, sig)\n"
    )
    run = await _run(warm, code)
    assert run.stdout == b"False 1 -1\n", run
    assert (await _run(warm, "print(7)")).stdout == b"7\n"
    assert _started(warm) == 1


async def test_a_program_ends_when_it_exits_whatever_it_left_running(warm: LocalSandbox) -> None:
    """A child that outlives the program, holding its stdout, is killed when the program
    exits: the run ends then, as it does cold (where the run's namespace dies with it)."""
    code = "import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('done')\n"
    job = Job(argv=("python3", "-I", "-B", "main.py"), files={"main.py": code}, limits=LIMITS)
    run = await warm.run(job)
    assert (run.exit_code, run.stdout, run.timed_out) == (0, b"done\n", False), run
    assert _started(warm) == 1


async def test_the_loop_is_the_one_asked_for(warm: LocalSandbox) -> None:
    """`ASSAY_WARM_INIT=python` runs the Python loop; by default, with a C compiler here, the C
    loop (`warm_init.c`), which the worker was handed."""
    result = await _run(warm, "print('ok')")
    assert result.stdout == b"ok\n"
    facts = warm.facts()["warm_python"]
    assert facts["loop"] == os.environ["ASSAY_WARM_INIT"]
    assert (steps.warm_init_library() is not None) == (facts["loop"] == "c")
    if os.geteuid() != 0:
        return  # the warm init is not dumpable: only root reads its memory map
    assert warm._warm is not None
    [[slot]] = warm._warm.pool._idle.values()
    maps = "".join(_maps(pid) for pid in _descendants(slot.worker.tool.pid))
    assert ("assay-warm-init" in maps) == (facts["loop"] == "c")  # the library, from its memfd


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{found[-1]}/task"):
                with open(f"/proc/{found[-1]}/task/{task}/children") as f:
                    todo += [int(p) for p in f.read().split()]
    return found


def _maps(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()
    except OSError:
        return ""


async def test_random_numbers_differ_between_programs(warm: LocalSandbox) -> None:
    code = "import random\nprint(random.random())\n"
    outs = {(await _run(warm, code)).stdout for _ in range(3)}
    assert len(outs) == 3


SPAWNS = (  # the seccomp filters it runs under (the sandbox's, and the no-fork one), then what
    # it could start
    "status = open('/proc/self/status').read().splitlines()\n"
    "print('filters', [s.split()[1] for s in status if s.startswith('Seccomp_filters')][0])\n"
    + STARTS_EACH
)


async def test_a_single_process_program_starts_no_process_or_thread(warm: LocalSandbox) -> None:
    """With a uid of its own (the service is root), its process limit of 1 refuses it: it runs
    under the sandbox's seccomp filter alone, the no-fork one left out. A program allowed more
    processes starts all three. Where the
    service is not root: `test_where_the_service_is_not_root_...` below."""
    if warm._uids is None:
        pytest.skip("programs share their worker's uid where the service is not root")
    argv = ("python3", "-I", "-B", "main.py")
    one = await warm.run(
        Job(argv=argv, files={"main.py": SPAWNS}, limits=dataclasses.replace(LIMITS, processes=1))
    )
    assert one.stdout == b"filters 1\nfork refused\nthread refused\nspawn refused\n", one
    many = await warm.run(Job(argv=argv, files={"main.py": SPAWNS}, limits=LIMITS))
    assert many.stdout.startswith(b"filters 1\n"), many
    assert many.stdout.count(b"started") == 3, many
    assert _started(warm) == 1


NOT_ROOT = """
import asyncio, json, sys
from assay.sandboxes import Job, Limits, LocalSandbox

async def main():
    box = LocalSandbox(warm_python=1)
    argv = ("python3", "-I", "-B", "main.py")
    out = {"facts": box.facts(), "unavailable": box.unavailable_reason()}
    for processes in (1, 16):
        job = Job(argv=argv, files={"main.py": sys.argv[1]}, limits=Limits(processes=processes))
        run = await box.run(job)
        out[processes] = [run.stdout.decode(), run.stderr.decode()[-500:]]
        out["ids"] = (await box.run(Job(argv=argv, files={"main.py": sys.argv[2]}))).stdout.decode()
    out["started"] = box._warm.pool.stats.started
    await box.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.parametrize("loop", ["c", "python"])
def test_where_the_service_is_not_root_programs_keep_the_no_fork_filter(loop: str) -> None:
    """A service that is not root (here `nobody`, with the sandbox's own Python) has no uid pool:
    its warm programs all have their worker's uid, and a single-process program runs under the
    no-fork seccomp filter too (a second filter), which refuses it any process or thread. (Its
    process limit cannot: it counts the uid's processes, the worker's among them; here it
    refuses too, counting the service's, which a test cannot tell apart.)"""
    import json
    import shutil
    import subprocess
    import sysconfig

    import assay.sandboxes

    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or setpriv is None or not os.path.exists(python):
        pytest.skip("needs root, setpriv and the sandbox's /usr/bin/python3")
    # What `nobody` can read: the package through a link, and this interpreter's packages.
    shared = Path(tempfile.mkdtemp(prefix="assay-not-root-"))
    try:
        shared.chmod(0o755)
        package = Path(assay.sandboxes.__file__).resolve().parent.parent
        (shared / "assay").symlink_to(package)
        (shared / "main.py").write_text(NOT_ROOT)
        paths = [str(shared), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        as_nobody = [
            setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--",
            "env", "-i", "HOME=/tmp", "PATH=/usr/bin:/bin", f"ASSAY_WARM_INIT={loop}",
            f"PYTHONPATH={':'.join(paths)}", python,
        ]  # fmt: skip
        # This interpreter's packages, for the sandbox's Python as nobody: where it cannot read
        # them (they lie under a private home) or cannot load them (another version), skip.
        probe = subprocess.run(
            [*as_nobody, "-c", "import assay.sandboxes, pydantic"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            pytest.skip(f"nobody cannot load assay with {python} here: {probe.stderr[-300:]}")
        ids = "import os\nprint(os.getuid(), os.getgid())\n"
        run = subprocess.run(
            [*as_nobody, str(shared / "main.py"), SPAWNS, ids],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        out = json.loads(run.stdout)
    finally:
        shutil.rmtree(shared)
    if out["unavailable"] is not None:
        pytest.skip(f"no sandbox for nobody here: {out['unavailable']}")
    assert out["facts"]["uid_per_warm_program"] is False
    assert out["1"] == ["filters 2\nfork refused\nthread refused\nspawn refused\n", ""], out
    assert out["16"][0].startswith("filters 1\n"), out
    assert out["16"][0].count("started") == 3, out
    assert out["ids"] == "1000 1000\n"  # the worker's uid in the sandbox, as every program's
    assert out["started"] == 1


async def test_random_is_imported_as_in_a_fresh_interpreter(warm: LocalSandbox) -> None:
    """`random` is not in `sys.modules` until a program imports it (the warm interpreter holds it
    ready: `runner._RandomOnImport`); then it is the module of its file, seeded; a reload, or an
    import after `sys.modules` lost it, runs the module's own loader."""
    code = (
        "import importlib, sys\n"
        "print('random' in sys.modules)\n"
        "import random\n"
        "print(random.__spec__.name, type(random.__spec__.loader).__name__, "
        "random.__file__.endswith('/random.py'), 0 <= random.random() < 1)\n"
        "again = importlib.reload(random)\n"
        "print(again is random, random.randint(4, 4))\n"
        "del sys.modules['random']\n"
        "import random as fresh\n"
        "print(fresh is random, fresh.randint(5, 5), 'random' in sys.modules)\n"
    )
    for _ in range(2):
        result = await _run(warm, code)
        assert (result.stdout, result.stderr) == (
            b"False\nrandom SourceFileLoader True True\nTrue 4\nFalse 5 True\n",
            b"",
        )
    assert _started(warm) == 1


async def test_a_program_s_own_forks_reseed_random(warm: LocalSandbox) -> None:
    """As in a fresh interpreter, a program's fork reseeds `random` and forgets the gauss it
    cached (the warm interpreter registers a reseed of its own in place of `random`'s)."""
    code = (
        "import os, random\n"
        "random.gauss(0, 1)\n"  # the second of the pair is cached
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, repr([random.gauss(0, 1), random.random()]).encode())\n"
        "    os._exit(0)\n"
        "os.close(w)\n"
        "child = eval(os.read(r, 200))\n"
        "os.wait()\n"
        "mine = [random.gauss(0, 1), random.random()]\n"
        "print(child[0] == mine[0], child[1] == mine[1])\n"
    )
    job = Job(argv=("python3", "-I", "-B", "main.py"), files={"main.py": code}, limits=LIMITS)
    for _ in range(2):
        result = await warm.run(job)
        assert (result.stdout, result.stderr) == (b"False False\n", b"")
    assert _started(warm) == 1


@pytest.mark.parametrize("filler_kb", [0, 400])
async def test_a_program_runs_as_its_file_whatever_its_size(
    warm: LocalSandbox, filler_kb: int
) -> None:
    """The C loop hands a program's text to Python in an area of 256 KiB; a larger one is read
    from the work dir. Either way it runs as `python3 -I -B main.py` would run that file."""
    code = (
        "import sys\n"
        + "# filler\n" * (filler_kb * 100)
        + "print(__file__, sys.argv, __name__)\n"
        + "raise ValueError('here')\n"
    )
    result = await _run(warm, code)
    assert result.stdout == b"/work/main.py ['main.py'] __main__\n"
    line = code.count("\n")
    assert f'File "/work/main.py", line {line}, in <module>'.encode() in result.stderr
    assert result.stderr.endswith(b"ValueError: here\n")
    assert result.exit_code == 1


async def test_a_worker_is_recycled_after_its_uses(tmp_path: Path) -> None:
    box = LocalSandbox(
        uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path, warm_python=1, warm_max_uses=2
    )
    try:
        for _ in range(5):
            assert (await _run(box, "print(1)")).stdout == b"1\n"
        assert box._warm is not None
        assert box._warm.pool.stats.started == 3
    finally:
        await box.close()


async def test_stopping_early_keeps_the_worker(warm: LocalSandbox) -> None:
    job = MultiJob(
        argv=("python3", "-I", "-B", "main.py"),
        files={"main.py": "print(input())"},
        runs=tuple(Run(stdin=f"{i}\n".encode()) for i in range(10)),
    )
    seen = []
    async with contextlib.aclosing(warm.run_many(job)) as steps:
        async for step in steps:
            seen.append(step.result.stdout)
            if len(seen) == 2:
                break
    assert seen == [b"0\n", b"1\n"]
    assert (await _run(warm, "print(5)")).stdout == b"5\n"
    assert _started(warm) == 1


# -- the same verdicts warm and cold ---------------------------------------------------------

IO_PROGRAMS = {
    "right": "a, b = map(int, input().split())\nprint(a + b)\n",
    "wrong": "a, b = map(int, input().split())\nprint(a - b)\n",
    "crashes": "a, b = map(int, input().split())\nprint(a // 0)\n",
    "syntax": "print(\n",
    "exits_early": "import sys\nsys.exit(0)\n",
    "exits_2": "import sys\nsys.exit(2)\n",
    "exit_message": "raise SystemExit('no')\n",
    "sleeps": "import time\ntime.sleep(10)\n",
    "closes_its_output_and_sleeps": "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(10)\n",
    "spins": "while True:\n    pass\n",
    "allocates": "x = bytearray(1 << 40)\n",
    "floods": "while True:\n    print('x' * 1000)\n",
    "reads_all": "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n",
    "threads": "import threading\nout = []\nt = threading.Thread(target=lambda: out.append("
    "sum(map(int, input().split()))))\nt.start()\nt.join()\nprint(out[0])\n",
    "atexit": "import atexit\na, b = map(int, input().split())\natexit.register(print, a + b)\n",
    "unflushed": "import sys\na, b = map(int, input().split())\nsys.stdout.write(str(a + b))\n",
}


async def test_io_verdicts_are_the_same_warm_and_cold(warm: LocalSandbox, tmp_path: Path) -> None:
    cold = LocalSandbox(uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path / "uids")
    verifier = CodeVerifier()
    spec = CodeSpec.model_validate(
        {
            "language": "python",
            "time_limit_s": 1.0,
            "tests": [
                {"stdin": "1 2\n", "expected_stdout": "3\n"},
                {"stdin": "5 5\n", "expected_stdout": "10\n"},
            ],
            "partial_credit": True,
        }
    )
    try:
        for name, code in IO_PROGRAMS.items():
            a = await verifier.verify(code, spec, cold)
            b = await verifier.verify(code, spec, warm)
            assert (a.status, a.reward) == (b.status, b.reward), (name, a, b)
            assert a.feedback.splitlines()[:2] == b.feedback.splitlines()[:2], name
    finally:
        await cold.close()
