"""Backpressure holes, through a real `assay serve`: streams must count against the pending
bound from the moment they are admitted, and a trainer that goes away must stop its work.

No timing assertions: the bounds here are minutes away from what the holes cost (every
stream admitted past the bound; the abandoned item's whole two-minute run)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, needs_bwrap, start_server, stop_server

pytestmark = needs_bwrap

SLOW = {"language": "python", "tests": [{"stdin": "", "expected_stdout": "1\n"}]}
SLEEPER = {"language": "python", "time_limit_s": 120, "tests": [{"expected_stdout": "x\n"}]}


def item(code: str, spec: dict[str, Any], ident: str) -> dict[str, Any]:
    return {"id": ident, "verifier": "code", "completion": code, "spec": spec}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # One code item at a time, four pending at most.
    s = start_server(max_pending_items="4", concurrency='{"code": 1}', cache_entries="0")
    yield s
    stop_server(s)


async def _stream(client: httpx.AsyncClient, n: int, tag: str) -> tuple[int, list[str]]:
    body = {
        "items": [
            item(f"import time\ntime.sleep(0.5)\nprint(1)  # {tag}{i}", SLOW, f"{tag}{i}")
            for i in range(n)
        ]
    }
    async with client.stream("POST", "/v1/score/stream", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, []
        statuses = [json.loads(line)["status"] async for line in response.aiter_lines() if line]
        return 200, statuses


def test_streams_count_against_the_pending_bound_when_admitted(server: Server) -> None:
    """Eight streams of two items at once against a bound of four: at most two admitted (the
    Engine counted a stream's items only once its body started, after the response was
    returned, so that streams sent together all passed the bound)."""

    async def main() -> list[tuple[int, list[str]]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(_stream(client, 2, f"s{k}-") for k in range(8)))

    answers = asyncio.run(main())
    codes = sorted(code for code, _ in answers)
    admitted = [statuses for code, statuses in answers if code == 200]
    assert 2 * len(admitted) <= 4, codes
    assert codes.count(429) >= 4, codes
    assert all(statuses == ["passed", "passed"] for statuses in admitted), answers

    # Nothing stays reserved: the bound is free again for a stream of four.
    async def again() -> tuple[int, list[str]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await _stream(client, 4, "after-")

    assert asyncio.run(again()) == (200, ["passed"] * 4)


@pytest.mark.parametrize("protocol", ["openrlhf", "slime"])
def test_a_trainer_that_goes_away_stops_its_work(server: Server, protocol: str) -> None:
    """The trainer's item would hold the server's one code slot for two minutes; once the
    trainer is gone (its read timeout), the next item gets the slot at once."""
    label = {"verifier": "code", "spec": SLEEPER}
    sleeper = f"import time\ntime.sleep(100)\nprint('x')  # {protocol}"
    if protocol == "openrlhf":
        body: dict[str, Any] = {"query": [sleeper], "prompts": [""], "labels": [label]}
    else:
        body = {"prompt": "", "response": sleeper, "label": label}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/v1/trainers/{protocol}",
            json=body,
            timeout=httpx.Timeout(30, read=2),
        )
    quick = item(f"print(1)  # after {protocol}", SLOW, "quick")
    # Minutes before the sleeper would have let go of the slot.
    response = httpx.post(f"{server.url}/v1/score", json={"items": [quick]}, timeout=60)
    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == "passed"
