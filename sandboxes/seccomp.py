"""The seccomp filter of sandbox jobs: a raw cBPF program, the form bwrap's `--seccomp` loads.

What it refuses, and why:
- sockets of every family but AF_UNIX (`EAFNOSUPPORT`). A job's network namespace has a
  loopback device; the buffers of loopback TCP and UDP sockets, and of netlink sockets, are
  memory that a cgroup v1 memory limit does not count (a red-team run held 2.9 GB with a
  224 MB cap). AF_UNIX sockets and pipes are counted, and are what programs use locally.
- io_uring (`ENOSYS`): it can make sockets without calling socket().
- System V IPC: shared memory, message queues and semaphores (`ENOSYS`, as on a kernel built
  without it). The job's IPC namespace has the kernel's default limits, which are near
  unlimited (a red-team job with `memory_mb: 128` held 600 MB in one segment), and a segment
  no process maps is in no address space, so RLIMIT_AS does not count it. POSIX shared memory
  (`shm_open`: files in the sized `/dev/shm`) and POSIX message queues (RLIMIT_MSGQUEUE) are
  what programs use instead.
- the kernel's keyrings: add_key, request_key, keyctl (`ENOSYS`). They are not namespaced: a
  job could read the keys of the session keyring it inherits from the service (a container
  runtime's default profile refuses them for the same reason).
- for jobs that may not start processes (`processes == 1`): fork, vfork and clone (`EAGAIN`,
  as at a process limit) and clone3 (`ENOSYS`, so that libc falls back to clone). This holds
  whatever uid the job runs as, where RLIMIT_NPROC needs a uid per job. (A warm program with a
  uid of its own goes without it: its RLIMIT_NPROC of 1 counts its processes alone. See
  `warm_init.c`.)
- syscalls of any ABI but the native one (the process is killed): a 32-bit or x32 call has
  other numbers and would pass the checks above.

Architectures: x86_64 and aarch64. Elsewhere `program` returns None and jobs run without it.
The layout follows linux/filter.h (`struct sock_filter`) and linux/seccomp.h (`struct
seccomp_data`: nr at offset 0, arch at 4, args from 16).
"""

from __future__ import annotations

import errno
import platform
import socket
import struct
from functools import cache

# cBPF opcodes (linux/bpf_common.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_ERRNO = 0x00050000
_X32_BIT = 0x40000000

_NR = "nr"
_ARCH_FIELD = "arch"
_ARG0 = "arg0"
_OFFSETS = {_NR: 0, _ARCH_FIELD: 4, _ARG0: 16}  # arg0's low 32 bits (little endian)

# (AUDIT_ARCH_*, syscall numbers) per machine; aarch64 has no fork or vfork.
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "shmget": 29,
            "shmat": 30,
            "shmctl": 31,
            "clone": 56,
            "fork": 57,
            "vfork": 58,
            "semget": 64,
            "semop": 65,
            "semctl": 66,
            "shmdt": 67,
            "msgget": 68,
            "msgsnd": 69,
            "msgrcv": 70,
            "msgctl": 71,
            "semtimedop": 220,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "msgget": 186,
            "msgctl": 187,
            "msgrcv": 188,
            "msgsnd": 189,
            "semget": 190,
            "semctl": 191,
            "semtimedop": 192,
            "semop": 193,
            "shmget": 194,
            "shmctl": 195,
            "shmat": 196,
            "shmdt": 197,
            "socket": 198,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "clone": 220,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "clone3": 435,
        },
    ),
}


_SYSV_IPC = (
    "shmget",
    "shmat",
    "shmctl",
    "shmdt",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
)


_KEYRINGS = ("add_key", "request_key", "keyctl")


class _Assembler:
    """cBPF with named labels; jumps are resolved to the relative offsets cBPF wants."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def load(self, field: str) -> None:
        self.ops.append((_LD_W_ABS, 0, 0, _OFFSETS[field]))

    def jump(self, code: int, k: int, yes: str | int = 0, no: str | int = 0) -> None:
        self.ops.append((code, yes, no, k))

    def ret(self, value: int) -> None:
        self.ops.append((_RET_K, 0, 0, value))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ops)

    def assemble(self) -> bytes:
        out = bytearray()
        for at, (code, yes, no, k) in enumerate(self.ops):
            out += struct.pack("=HBBI", code, self._offset(at, yes), self._offset(at, no), k)
        return bytes(out)

    def _offset(self, at: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - at - 1
        assert 0 <= offset < 256, "cBPF jumps go forward, at most 255 instructions"
        return offset


@cache
def program(*, processes: bool) -> bytes | None:
    """The filter for this machine; `processes=False` also refuses fork and clone."""
    known = _ARCHES.get(platform.machine())
    if known is None:
        return None
    arch, numbers = known
    refused = {"io_uring_setup", "io_uring_enter", "io_uring_register", *_SYSV_IPC, *_KEYRINGS}
    again: set[str] = set()
    if not processes:
        refused.add("clone3")
        again = {"fork", "vfork", "clone"} & numbers.keys()

    asm = _Assembler()
    asm.load(_ARCH_FIELD)
    asm.jump(_JEQ_K, arch, no="kill")
    asm.load(_NR)
    if arch == _ARCHES["x86_64"][0]:
        asm.jump(_JGE_K, _X32_BIT, yes="kill")
    asm.jump(_JEQ_K, numbers["socket"], yes="socket")
    for name in sorted(refused):
        asm.jump(_JEQ_K, numbers[name], yes="nosys")
    for name in sorted(again):
        asm.jump(_JEQ_K, numbers[name], yes="again")
    asm.ret(_ALLOW)
    asm.label("socket")
    asm.load(_ARG0)
    asm.jump(_JEQ_K, socket.AF_UNIX, yes="allow")
    asm.ret(_ERRNO | errno.EAFNOSUPPORT)
    asm.label("allow")
    asm.ret(_ALLOW)
    asm.label("nosys")
    asm.ret(_ERRNO | errno.ENOSYS)
    asm.label("again")
    asm.ret(_ERRNO | errno.EAGAIN)
    asm.label("kill")
    asm.ret(_KILL_PROCESS)
    return asm.assemble()
