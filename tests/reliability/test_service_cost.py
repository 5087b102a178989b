"""What one item may cost the service process itself: every verifier, sent hostile items (at
and past the size limits, thousands of fences and tags, regex and lexer bait, programs printing
at their output cap on every test, huge query results, nesting), through a real `assay serve`
(bench/service_cost.py's: every verifier, Lean through the tests' stand-in REPL). Each item
alone; around it, from /proc/<pid> of the server this test started, the CPU time of that
process (its threads, not the sandboxed tools under it) and its peak resident memory (VmHWM,
reset before the item).

The bounds are resource bounds, not timings, and wide: the costliest item here takes about a
third of the CPU bound on a quiet machine. What they catch is work that grows faster than the
item: before the caps and fixes they guard (ASSAY_MAX_COMPLETION_CHARS; the Lean, Dafny and
SQL payload caps; linear lexers; `tests/reliability/test_service_cost.py` was run with each
removed), single items here took from 4 s to minutes of the service's CPU, and one item's
query result or text 100 MiB and more of its memory."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.service_cost import Cost, Server, cases, measure
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

CPU_MS = 2000
"""CPU of the service process for one item, at most."""
PEAK_MIB = 64
"""Growth of the service's peak resident memory for one item, at most (an item past the
completion cap is refused before it is read; what it costs is the request's parse)."""


@pytest.fixture(scope="module")
def cost_server() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def costs(cost_server: Server) -> list[Cost]:
    out = []
    with httpx.Client(base_url=cost_server.url, timeout=600) as client:
        for verifier in ("code", "sql", "svg", "dafny", "lean"):
            mine = cases({verifier})
            if not mine:
                continue  # Dafny where it is not installed
            normal = [c for c in mine if c.kind == "normal"]
            for case in normal:  # the pools (and torch) up before anything counts
                measure(client, cost_server.pid, case, 2, "warm")
            out += [measure(client, cost_server.pid, c, 1, "test") for c in mine]
    return out


def test_every_verifier_gets_hostile_items(costs: list[Cost]) -> None:
    hostile = {c.case.verifier for c in costs if c.case.kind == "hostile"}
    assert {"code", "sql", "svg", "lean"} <= hostile
    assert all(c.status.startswith("HTTP") is False for c in costs), [
        (c.case.name, c.status, c.feedback) for c in costs if c.status.startswith("HTTP")
    ]


def test_no_item_costs_the_service_more_than_the_bounds(costs: list[Cost]) -> None:
    over = [
        (
            c.case.verifier,
            c.case.name,
            c.status,
            f"{max(c.cpu_ms):.0f} ms",
            f"{max(c.peak_mib):.1f} MiB",
        )
        for c in costs
        if max(c.cpu_ms) > CPU_MS or max(c.peak_mib) > PEAK_MIB or c.status == "internal_error"
    ]
    assert not over, over


def test_the_server_is_intact_after_them(cost_server: Server, costs: list[Cost]) -> None:
    assert costs
    with httpx.Client(base_url=cost_server.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        normal = next(c for c in cases({"code"}) if c.kind == "normal")
        assert measure(client, cost_server.pid, normal, 1, "after").status == "passed"
