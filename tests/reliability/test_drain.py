"""SIGTERM during a batch, through a real `assay serve`: the batches in flight are drained up to
`ASSAY_DRAIN_S`, new batches get 503 with Retry-After meanwhile, the items still unjudged at the
deadline get a retryable `internal_error`, every stream ends with a line per item, and the
process exits by itself."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx

from tests.conftest import needs_bwrap, start_server

pytestmark = needs_bwrap

SPEC = {"language": "python", "tests": [{"stdin": "", "expected_stdout": "5\n"}]}


def item(ident: str, sleep_s: float) -> dict[str, Any]:
    code = f"import time\ntime.sleep({sleep_s})\nprint(5)"
    spec = {**SPEC, "time_limit_s": 120}
    return {"id": ident, "verifier": "code", "completion": code, "spec": spec}


def stream_in_thread(url: str, items: list[dict[str, Any]], out: list[dict[str, Any]]) -> Any:
    def read() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/score/stream", json={"items": items}, timeout=120
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    out.append(json.loads(line))

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def wait_running(url: str, n: int) -> None:
    """Until the server's in-flight gauge shows `n` items (they were admitted)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("assay_items_in_flight ") and float(line.split()[1]) >= n:
                return
        time.sleep(0.1)
    raise AssertionError("the batch was not admitted")


def test_sigterm_drains_then_ends_the_rest_retryable() -> None:
    server = start_server(drain_s="4")
    out: list[dict[str, Any]] = []
    items = [item(f"quick{n}", 1) for n in range(3)] + [item(f"slow{n}", 90) for n in range(2)]
    thread = stream_in_thread(server.url, items, out)
    wait_running(server.url, len(items))
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # New work during the drain: refused with 503 and Retry-After, not a refused connection.
    refused = httpx.post(f"{server.url}/v1/score", json={"items": [item("late", 0)]}, timeout=30)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) > 0
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503
    thread.join(timeout=60)
    assert not thread.is_alive()
    by_id = {r["id"]: r for r in out}
    assert sorted(by_id) == sorted(i["id"] for i in items)  # a line per item, none twice
    assert len(out) == len(items)
    for n in range(3):
        assert by_id[f"quick{n}"]["status"] == "passed"
    for n in range(2):
        slow = by_id[f"slow{n}"]
        assert slow["status"] == "internal_error"
        assert slow["details"]["retryable"] is True
        assert "shut down" in slow["feedback"]
    # uvicorn exits by raising the SIGTERM it captured again, once it has shut down.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_sigterm_waits_for_a_batch_that_finishes_within_the_drain() -> None:
    server = start_server(drain_s="60")
    out: list[dict[str, Any]] = []
    items = [item(f"i{n}", 2) for n in range(4)]
    thread = stream_in_thread(server.url, items, out)
    wait_running(server.url, len(items))
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert [r["status"] for r in out] == ["passed"] * 4
    # uvicorn exits by raising the SIGTERM it captured again, once it has shut down.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
