"""A fair limit on items judged at once: a slot that frees goes to the next batch in turn.

`asyncio.Semaphore` hands slots out first come, first served: a client's 10,000-item batch puts
10,000 waiters in the queue, and another client's 4-item batch sent a second later waits for
all of them. `FairLimiter` keeps one queue per batch (its owner) and serves the owners round
robin, so the small batch's items start as soon as a slot frees and the giant batch still gets
every slot nobody else wants. Hand-written: neither asyncio nor anyio has a fair-across-owners
semaphore, and it is a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairLimiter:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._busy = 0
        # owner -> its waiters, in arrival order; the dict's order is the round robin's.
        self._queues: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @asynccontextmanager
    async def slot(self, owner: Hashable) -> AsyncIterator[None]:
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, owner: Hashable) -> None:
        if self._busy < self.slots and not self._queues:
            self._busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(owner, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # it was handed a slot as it was cancelled: pass it on
            else:
                self._drop(owner, waiter)
            raise

    def _drop(self, owner: Hashable, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self._queues[owner]

    def _release(self) -> None:
        self._busy -= 1
        while self._queues and self._busy < self.slots:
            owner, queue = next(iter(self._queues.items()))
            waiter = queue.popleft()
            # The owner goes to the back of the round robin (or leaves it, with nothing left).
            del self._queues[owner]
            if queue:
                self._queues[owner] = queue
            if not waiter.done():
                waiter.set_result(None)
                self._busy += 1
