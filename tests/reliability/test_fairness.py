"""Fair between clients: a small batch sent while another client's giant batch fills every slot
of the verifier is served next in turn, not after the giant batch (service/fair.py). Checked by
order of completion, not by time."""

from __future__ import annotations

import asyncio

from assay.clients.schema import ScoreItem
from assay.sandboxes.local import LocalSandbox
from assay.service.engine import Engine
from assay.service.fair import FairLimiter
from tests.conftest import needs_bwrap

SPEC = {"language": "python", "test_code": "assert f() == 1"}


def batch(tag: str, n: int, sleep_s: float) -> list[ScoreItem]:
    code = f"import time\ndef f():\n    time.sleep({sleep_s})\n    return 1"
    return [
        ScoreItem(id=f"{tag}{i}", verifier="code", completion=f"{code}  # {tag}{i}", spec=SPEC)
        for i in range(n)
    ]


@needs_bwrap
def test_a_small_batch_is_not_starved_by_a_giant_one() -> None:
    async def main() -> tuple[int, int]:
        engine = Engine(LocalSandbox(), concurrency={"code": 2}, cache_entries=0)
        giant_done = 0
        try:

            async def giant() -> None:
                nonlocal giant_done
                async for _ in engine.stream(batch("g", 30, 0.3)):
                    giant_done += 1

            task = asyncio.ensure_future(giant())
            await asyncio.sleep(0.5)  # the giant batch holds both slots and queues the rest
            small = await engine.score(batch("s", 2, 0))
            assert [r.status for r in small] == ["passed", "passed"], small
            at_small = giant_done
            await task
            return at_small, giant_done
        finally:
            await engine.close()

    at_small, total = asyncio.run(main())
    assert total == 30
    # First come, first served would have finished (nearly) all 30 first.
    assert at_small <= 10, at_small


def test_the_limiter_serves_owners_in_turn() -> None:
    async def main() -> list[str]:
        limiter = FairLimiter(1)
        order: list[str] = []
        gate = asyncio.Event()

        async def work(owner: str, i: int) -> None:
            async with limiter.slot(owner):
                await gate.wait()
                order.append(f"{owner}{i}")

        tasks = [asyncio.ensure_future(work("a", i)) for i in range(4)]
        await asyncio.sleep(0)
        tasks += [asyncio.ensure_future(work("b", i)) for i in range(2)]
        await asyncio.sleep(0)
        # A waiter cancelled in the queue gives up its place and nothing else.
        tasks[2].cancel()
        gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert limiter.waiting == 0
        return order

    assert asyncio.run(main()) == ["a0", "a1", "b0", "a3", "b1"]
