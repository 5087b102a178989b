"""Warm workers, reused across items: the one pool every long-lived tool is kept in.

A worker is whatever a verifier keeps warm (a Dafny server, a Lean REPL with its header
imported, a renderer, a database worker, a pre-initialised interpreter), usually wrapping a
`ToolProcess` started by `Sandbox.spawn`. The pool knows nothing of what a worker does; it
starts workers on demand (per key: a Lean header, a database), lends one at a time to one user,
and takes it back:

- a worker whose lease ended in an exception (the request failed, overran its deadline, or
  its waiter was cancelled mid-request) is closed, never reused: it may be mid-answer;
- a worker that `healthy` rejects (it died, its memory grew past a ceiling) is closed;
- a worker is recycled after `max_uses` leases;
- at most `size` workers live at once over all keys; when the pool is full, an idle worker
  of another key is closed to make room, else the lease waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

W = TypeVar("W")


@dataclass(slots=True)
class _Slot(Generic[W]):
    worker: W
    key: Hashable
    uses: int = 0


@dataclass(slots=True)
class PoolStats:
    started: int = 0
    recycled: int = 0
    discarded: int = 0
    leases: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerPool(Generic[W]):
    """At most `size` warm workers over all keys, each lent to one user at a time."""

    def __init__(
        self,
        start: Callable[[Hashable], Awaitable[W]],
        close: Callable[[W], Awaitable[None]],
        *,
        size: int,
        max_uses: int = 1000,
        healthy: Callable[[W], bool] | None = None,
        name: str = "pool",
    ) -> None:
        if size < 1:
            raise ValueError("a pool holds at least one worker")
        self._start, self._close, self._healthy = start, close, healthy
        self.size, self.max_uses, self.name = size, max_uses, name
        self._idle: dict[Hashable, list[_Slot[W]]] = {}
        self._live = 0  # workers alive or starting, idle or lent
        self._changed = asyncio.Condition()
        self._closed = False
        self.stats = PoolStats()

    @property
    def live(self) -> int:
        return self._live

    def idle(self, key: Hashable = None) -> int:
        return len(self._idle.get(key, ()))

    @contextlib.asynccontextmanager
    async def lease(self, key: Hashable = None) -> AsyncIterator[W]:
        """A warm worker for `key`, started if need be; given back when the block ends."""
        slot = await self._take(key)
        ok = False
        try:
            yield slot.worker
            ok = True
        finally:
            await asyncio.shield(self._give_back(slot, ok))

    async def _take(self, key: Hashable) -> _Slot[W]:
        while True:
            victim: _Slot[W] | None = None
            recycled = True
            async with self._changed:
                if self._closed:
                    raise RuntimeError(f"the {self.name} pool is closed")
                idle = self._idle.get(key)
                if idle:
                    slot = idle.pop()
                    # A worker may have died while it sat idle (killed from outside, the OOM
                    # killer): it is replaced, not lent (tests/reliability/test_faults.py).
                    if self._healthy is None or self._healthy(slot.worker):
                        self.stats.leases += 1
                        return slot
                    victim, recycled = slot, False
                elif self._live < self.size:
                    self._live += 1
                    break
                else:
                    victim = self._oldest_idle()
                    if victim is None:
                        await self._changed.wait()
                        continue
            await self._discard(victim, recycled=recycled)
        try:
            worker = await self._start(key)
        except BaseException:
            async with self._changed:
                self._live -= 1
                self._changed.notify()
            raise
        self.stats.started += 1
        self.stats.leases += 1
        return _Slot(worker, key)

    def _oldest_idle(self) -> _Slot[W] | None:
        """An idle worker of any key, taken out of the idle lists (its key's oldest)."""
        for key, slots in self._idle.items():
            if slots:
                slot = slots.pop(0)
                if not slots:
                    del self._idle[key]
                return slot
        return None

    async def _give_back(self, slot: _Slot[W], ok: bool) -> None:
        slot.uses += 1
        healthy = ok and (self._healthy is None or self._healthy(slot.worker))
        if healthy and slot.uses < self.max_uses and not self._closed:
            async with self._changed:
                self._idle.setdefault(slot.key, []).append(slot)
                self._changed.notify()
            return
        await self._discard(slot, recycled=healthy)

    async def _discard(self, slot: _Slot[W], *, recycled: bool) -> None:
        if recycled:
            self.stats.recycled += 1
        else:
            self.stats.discarded += 1
        try:
            await self._close(slot.worker)
        except Exception:  # a worker that fails to close is gone all the same
            log.exception("%s pool: closing a worker failed", self.name)
        finally:
            async with self._changed:
                self._live -= 1
                self._changed.notify()

    async def close(self) -> None:
        """Close every idle worker; lent ones are closed as they come back."""
        async with self._changed:
            self._closed = True
            slots = [s for slots in self._idle.values() for s in slots]
            self._idle.clear()
            self._changed.notify_all()
        for slot in slots:
            await self._discard(slot, recycled=True)

    def facts(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "live": self._live,
            "idle": sum(len(s) for s in self._idle.values()),
            "max_uses": self.max_uses,
            "started": self.stats.started,
            "recycled": self.stats.recycled,
            "discarded": self.stats.discarded,
            "leases": self.stats.leases,
        }


__all__ = ["PoolStats", "WorkerPool"]
