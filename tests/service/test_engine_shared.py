"""The Engine's work across requests (issue 5): one run per key in flight over all requests,
cancelled only when no request waits for it any more; a cache bounded in bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import ScoreItem
from assay.sandboxes import LocalSandbox
from assay.service.cache import ResultCache
from assay.service.engine import Engine
from tests.conftest import needs_bwrap
from tests.service.test_engine import SUM_SPEC, CountingSandbox

pytestmark = needs_bwrap


@pytest.fixture
def sandbox(tmp_path: Path) -> CountingSandbox:
    return CountingSandbox(LocalSandbox(uid_base=62400, uid_count=20, lock_dir=tmp_path / "u"))


def item(completion: str, id: str | None = None, **spec: Any) -> ScoreItem:
    return ScoreItem(id=id, verifier="code", completion=completion, spec={**SUM_SPEC, **spec})


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a job of the sandbox's to start (it counts them; no event to wait on)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


SLOW = "import time\ntime.sleep(1.5)\nprint(3)"


async def test_a_resent_item_joins_the_run_of_another_request(sandbox: CountingSandbox) -> None:
    engine = Engine(sandbox)  # type: ignore[arg-type]
    first = asyncio.ensure_future(engine.score([item(SLOW, "a")]))
    await until(lambda: sandbox.runs > 0)
    second = await engine.score([item(SLOW, "b")])
    [one] = await first
    assert (one.status, one.cached, one.id) == ("passed", False, "a")
    assert (second[0].status, second[0].cached, second[0].id) == ("passed", True, "b")
    assert sandbox.runs == 1


async def test_a_request_that_goes_leaves_a_shared_run_to_the_other(
    sandbox: CountingSandbox,
) -> None:
    engine = Engine(sandbox)  # type: ignore[arg-type]
    leaving = asyncio.ensure_future(engine.score([item(SLOW, "a")]))
    await until(lambda: sandbox.runs > 0)
    staying = asyncio.ensure_future(engine.score([item(SLOW, "b")]))
    await asyncio.sleep(0.2)
    leaving.cancel()
    [result] = await staying
    assert (result.status, result.id) == ("passed", "b")
    assert sandbox.runs == 1
    assert not engine._running


async def test_the_last_request_to_go_cancels_the_run(sandbox: CountingSandbox) -> None:
    engine = Engine(sandbox)  # type: ignore[arg-type]
    sleeper = item("import time\ntime.sleep(60)", time_limit_s=90)
    requests = [asyncio.ensure_future(engine.score([sleeper])) for _ in range(2)]
    await until(lambda: sandbox.running > 0)
    for request in requests:
        request.cancel()
    await asyncio.gather(*requests, return_exceptions=True)
    for _ in range(100):  # the job's teardown, briefly
        if not sandbox.running:
            break
        await asyncio.sleep(0.05)
    assert sandbox.running == 0
    assert not engine._running
    assert engine.in_flight == 0


def test_the_cache_is_bounded_in_bytes() -> None:
    cache = ResultCache[str](max_entries=1000, max_bytes=10_000)
    for n in range(100):
        cache.put(f"k{n}", "v", 1_000)
    assert cache.bytes <= 10_000
    assert len(cache) == 10
    assert cache.get("k99") == "v"
    assert cache.get("k0") is None
    cache.put("huge", "v", 20_000)  # larger than the whole budget: not kept
    assert cache.get("huge") is None
    assert len(cache) == 10


async def test_big_verdicts_are_counted_by_size(sandbox: CountingSandbox) -> None:
    """A many-test partial-credit verdict holds a detail per test."""
    tests = [{"stdin": f"{n}\n", "expected_stdout": f"{n}\n"} for n in range(30)]
    engine = Engine(sandbox, cache_bytes=6_000)  # type: ignore[arg-type]
    spec = {"language": "python", "tests": tests, "partial_credit": True}
    for n in range(3):
        program = f"print(int(input()) + {n} % 1)"
        await engine.score([ScoreItem(verifier="code", completion=program, spec=spec)])
    assert 0 < engine.cache.bytes <= 6_000
    assert len(engine.cache) < 3
