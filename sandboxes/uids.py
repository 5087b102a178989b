"""Host uids for running jobs, one each, when the service runs as root."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

from assay.sandboxes.errors import SandboxError, SandboxUnavailable


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
        return self.acquire_block(1)[0]

    def acquire_block(self, size: int) -> list[int]:
        """`size` consecutive uids (a warm worker's: its own and its programs'), each held as
        `acquire` holds one; released with `release_block`."""
        if not self._checked:
            self._check_lock_dir()
            self._checked = True
        if not 1 <= size <= self.count:
            raise SandboxError(f"a block of {size} uids from a pool of {self.count}")
        start = self._next
        for i in range(self.count):
            first = (start + i) % self.count
            if first + size > self.count:  # a block does not wrap around the pool's end
                continue
            taken: list[int] = []
            for uid in range(self.base + first, self.base + first + size):
                if uid in self._held or not self._lock(uid):
                    break
                taken.append(uid)
            if len(taken) == size:
                self._next = (first + size) % self.count
                return taken
            for uid in taken:
                self.release(uid)
        what = "uids are" if size == 1 else f"blocks of {size} uids are"
        raise SandboxError(f"all {self.count} sandbox {what} in use (from {self.base})")

    def _lock(self, uid: int) -> bool:
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
            return False
        self._held[uid] = fd
        return True

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid)
        os.close(fd)  # closing drops the flock

    def release_block(self, uids: list[int]) -> None:
        for uid in uids:
            self.release(uid)

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        uid = self.acquire()
        try:
            yield uid
        finally:
            self.release(uid)
