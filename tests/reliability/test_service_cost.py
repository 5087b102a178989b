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
SQL payload caps; linear lexers and patterns), single items here took from 4 s to minutes of
the service's CPU, and one item's text or query result 76 MiB and more of its memory. This test
fails with the completion cap or the Dafny fix taken out (checked)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.service_cost import Cost, Server, cases, measure
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

CPU_MS = 2000
"""CPU of the service process for one item, at most."""
PEAK_MIB = 96
"""Growth of the service's peak resident memory for one item, at most (an item past the
completion cap is refused before it is read; what it costs is the request's parse)."""
LARGE = (6000, 512)
"""The same for a spec at its largest (kind `large`: an svg compared at 1024 px, whose torch
metrics hold about 300 MiB on the CPU, 1.4 s): bounded, above the others."""


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
    over = []
    for c in costs:
        cpu_ms, peak_mib = LARGE if c.case.kind == "large" else (CPU_MS, PEAK_MIB)
        if max(c.cpu_ms) > cpu_ms or max(c.peak_mib) > peak_mib or c.status == "internal_error":
            shown = f"{max(c.cpu_ms):.0f} ms, {max(c.peak_mib):.1f} MiB"
            over.append((c.case.verifier, c.case.name, c.status, shown))
    assert not over, over


def test_the_server_is_intact_after_them(cost_server: Server, costs: list[Cost]) -> None:
    assert costs
    with httpx.Client(base_url=cost_server.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        normal = next(c for c in cases({"code"}) if c.kind == "normal")
        assert measure(client, cost_server.pid, normal, 1, "after").status == "passed"
