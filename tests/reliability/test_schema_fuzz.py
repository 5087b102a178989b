"""schemathesis over the service's own OpenAPI schema, against a real `assay serve`: whatever
the generated requests hold (envelopes, items, specs of every verifier, odd strings), no answer
is a 5xx and none hangs (each call has a 60 s timeout). A bounded number of examples per
operation keeps it to about a minute. (Driven by hypothesis directly: schemathesis's pytest
fixture integration does not run under this pytest.)"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import needs_bwrap, start_server, stop_server

pytestmark = needs_bwrap

EXAMPLES = 25


def test_no_5xx_and_no_hang() -> None:
    server = start_server(max_items="20", max_body_bytes="200000", cache_entries="0")
    calls: dict[str, int] = {}
    try:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 6  # score, stream, verifiers, healthz, readyz, metrics
        for operation in operations:
            calls[operation.label] = 0

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def fuzz(case: Any) -> None:
                response = case.call(base_url=server.url, timeout=60)
                calls[case.operation.label] += 1
                assert response.status_code < 500, (response.status_code, response.text[:500])

            fuzz()
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        assert server.process.poll() is None
    finally:
        stop_server(server)
    assert sum(calls.values()) >= len(calls) * 5, calls
