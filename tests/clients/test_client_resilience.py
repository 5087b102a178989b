"""The client against real servers that stop and start, refuse work (429) and are slow:
every item gets exactly one result, its own, and no item is judged twice by the servers."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from assay.clients import AssayClient, AssayHTTPError, AsyncAssayClient
from tests.conftest import Server, needs_bwrap, start_server, stop_server

pytestmark = needs_bwrap
SPEC = {"language": "python", "tests": [{"stdin": "", "expected_stdout": "7\n"}]}


def items(n: int, sleep_s: float = 0.0, tag: str = "") -> list[dict[str, Any]]:
    """Distinct items (the engine's dedupe and cache cannot hide a double judgement); even
    ones pass, odd ones fail."""
    pause = f"import time; time.sleep({sleep_s})\n" if sleep_s else ""
    return [
        {
            "id": f"{tag}{n_}",
            "verifier": "code",
            "completion": f"{pause}# item {tag}{n_}\nprint({7 if n_ % 2 == 0 else 8})",
            "spec": {**SPEC, "time_limit_s": sleep_s + 30} if sleep_s else SPEC,
        }
        for n_ in range(n)
    ]


def judged(server: Server) -> float:
    """Items the server finished judging (all statuses), from its /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(v) for v in re.findall(r"^assay_items_total\{[^}]*\} (\S+)$", text, re.M))


def refused(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.findall(r'^assay_requests_total\{code="429",endpoint="stream"\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def check(results: list[Any], batch: list[dict[str, Any]]) -> None:
    assert [r.id for r in results] == [i["id"] for i in batch]
    assert [r.status for r in results] == [
        "passed" if n % 2 == 0 else "failed" for n in range(len(batch))
    ]


@pytest.fixture
def pair() -> Iterator[tuple[Server, Server]]:
    a, b = start_server(), start_server()
    yield a, b
    stop_server(a)
    stop_server(b)


async def test_a_server_stopped_and_started_again_loses_nothing() -> None:
    server = start_server()
    port = int(server.url.rsplit(":", 1)[1])
    batch = items(24, sleep_s=0.2, tag="s")
    restarted: list[Server] = []

    def bounce() -> None:
        stop_server(server)
        time.sleep(1.0)  # down for a while: connections are refused
        restarted.append(start_server(port=port))

    client = AsyncAssayClient(server.url, chunk_size=4, concurrency=2, retries=8, backoff_s=0.2)
    got: dict[int, Any] = {}
    bouncer: threading.Thread | None = None
    after_restart = 0.0
    try:
        async for index, result in client.stream(batch):
            assert index not in got  # each index once
            got[index] = result
            if len(got) == 3 and bouncer is None:
                bouncer = threading.Thread(target=bounce)
                bouncer.start()
    finally:
        await client.aclose()
        if bouncer is not None:
            bouncer.join()
        for s in restarted:
            after_restart = judged(s)
            stop_server(s)
    assert bouncer is not None
    assert restarted
    assert after_restart > 0  # the outage was real: the rest was judged by the new process
    check([got[i] for i in range(len(batch))], batch)


def test_a_dead_url_is_skipped_and_work_is_shared(pair: tuple[Server, Server]) -> None:
    a, b = pair
    dead = "http://127.0.0.1:9"
    batch = items(16, tag="d")
    with AssayClient([dead, a.url, b.url], chunk_size=2, concurrency=4, backoff_s=0.1) as client:
        check(client.score(batch), batch)
        assert client.describe().verifiers[0].name == "code"
    # Both live servers got work, and together judged each item once.
    assert judged(a) > 0
    assert judged(b) > 0
    assert judged(a) + judged(b) == len(batch)


def in_flight(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(r"^assay_items_in_flight (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_an_overloaded_server_is_waited_for() -> None:
    # At most 4 items pending. Another request holds all 4 for a few seconds first, so the
    # client's chunks are refused with 429 until they are done.
    server = start_server(max_pending_items="4", retry_after_s="1")
    hold = items(4, sleep_s=3.0, tag="h")
    holder = threading.Thread(
        target=lambda: httpx.post(f"{server.url}/v1/score", json={"items": hold}, timeout=120)
    )
    batch = items(8, tag="o")
    try:
        holder.start()
        for _ in range(600):
            if in_flight(server) >= 4:
                break
            await asyncio.sleep(0.05)
        assert in_flight(server) >= 4
        async with AsyncAssayClient(
            server.url, chunk_size=2, concurrency=4, retries=30, backoff_s=0.1, max_backoff_s=1
        ) as client:
            check(await client.score(batch), batch)
        holder.join()
        assert refused(server) > 0  # it was overloaded
        assert judged(server) == len(batch) + len(hold)  # and judged each item exactly once
    finally:
        holder.join()
        stop_server(server)


async def test_a_slow_server_costs_only_the_call_time_limit(server: Server) -> None:
    fast, slow = items(4, tag="f"), items(2, sleep_s=60, tag="w")
    async with AsyncAssayClient(server.url, chunk_size=1, concurrency=6) as client:
        results = await client.score([*fast, *slow], time_limit_s=5)
    check(results[:4], fast)
    for result in results[4:]:
        assert result.status == "internal_error"
        assert result.reward is None
        assert result.details == {"retryable": True}
        assert "no result within the call's time limit" in result.feedback


def test_no_answer_after_the_retries_is_a_result_not_an_exception() -> None:
    batch = items(3, tag="n")
    with AssayClient("http://127.0.0.1:9", retries=2, backoff_s=0.01) as client:
        results = client.score(batch)
    assert [r.status for r in results] == ["internal_error"] * 3
    assert [r.id for r in results] == ["n0", "n1", "n2"]
    assert all("not scored after 3 tries" in r.feedback for r in results)


class Counting(httpx.AsyncHTTPTransport):
    """The real transport, counting the requests it sends."""

    sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return await super().handle_async_request(request)


@pytest.mark.parametrize(("path", "code"), [("/nowhere", 404), ("", 401)])
async def test_caller_errors_are_not_retried(keyed_server: Server, path: str, code: int) -> None:
    transport = Counting()
    async with AsyncAssayClient(
        keyed_server.url + path, api_key="wrong", retries=5, transport=transport
    ) as client:
        with pytest.raises(AssayHTTPError) as err:
            await client.score(items(6, tag="c"))
    assert err.value.status_code == code
    assert transport.sent == 1


async def test_429_honours_retry_after_and_jitters() -> None:
    client = AsyncAssayClient("http://127.0.0.1:9", backoff_s=1.0, max_backoff_s=8.0)
    try:
        waits = [client._backoff(3, at_least=5.0) for _ in range(200)]
        assert min(waits) >= 5.0  # never sooner than the server asked
        assert max(waits) <= 8.0
        spread = [client._backoff(3) for _ in range(200)]
        assert len(set(spread)) > 100  # jittered, not in lockstep
    finally:
        await client.aclose()


def test_the_sync_client_works_inside_a_running_loop(server: Server) -> None:
    # A trainer may call a sync reward function from code that runs an event loop.
    async def inside() -> list[Any]:
        with AssayClient(server.url) as client:
            return client.score(items(2, tag="l"))

    check(asyncio.run(inside()), items(2, tag="l"))
