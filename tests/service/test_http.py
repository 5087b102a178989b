"""The wire contract through a real `assay serve` process."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from assay.clients import AssayClient, AssayHTTPError, AsyncAssayClient
from tests.conftest import Server, needs_bwrap

pytestmark = needs_bwrap

SPEC = {"language": "python", "tests": [{"stdin": "2 3\n", "expected_stdout": "5\n"}]}
RIGHT = "a, b = map(int, input().split())\nprint(a + b)"


def item(completion: str, id: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": id, "verifier": "code", "completion": completion, "spec": SPEC, **extra}


def post(server: Server, body: Any, path: str = "/v1/score", **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


def test_results_in_order_with_ids(server: Server) -> None:
    items = [item(f"print({n})", id=f"p{n}") for n in range(8)] + [item(RIGHT, id=17)]
    response = post(server, {"items": items})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [f"p{n}" for n in range(8)] + [17]
    assert [r["status"] for r in results] == ["failed"] * 5 + ["passed"] + ["failed"] * 2 + [
        "passed"
    ]
    assert results[5]["reward"] == 1.0
    assert results[0]["reward"] == 0.0
    for r in results:
        assert set(r) == {"id", "reward", "status", "feedback", "details", "elapsed_ms", "cached"}


def test_duplicates_in_a_batch_and_across_batches(server: Server) -> None:
    code = "print(2 + 3)  # dedupe"
    results = post(server, {"items": [item(code, 1), item(code, 2), item(code, 3)]}).json()[
        "results"
    ]
    assert [r["cached"] for r in results].count(False) == 1
    assert {r["status"] for r in results} == {"passed"}
    again = post(server, {"items": [item(code, 4)]}).json()["results"]
    assert again[0]["cached"] is True
    assert again[0]["id"] == 4


def test_stream_is_ndjson_with_indexes(server: Server) -> None:
    items = [
        item("import time\ntime.sleep(1)\nprint(5)", "slow"),
        item("print(5)", "fast"),
        item("print(", "broken"),
    ]
    with httpx.stream(
        "POST", server.url + "/v1/score/stream", json={"items": items}, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert sorted(line["index"] for line in lines) == [0, 1, 2]
    assert lines[-1]["id"] == "slow"  # streamed as finished, not in order
    by_id = {line["id"]: line for line in lines}
    assert by_id["broken"]["status"] == "compile_error"
    assert by_id["slow"]["index"] == 0


def test_a_stream_s_gathering_is_the_request_s_to_choose(server: Server) -> None:
    """`?gather_ms=0` sends each line as its result is ready; out of [0, 1000] is a 422 that
    names the parameter."""
    items = [item("import time\ntime.sleep(0.5)\nprint(5)", "slow"), item("print(5)", "fast")]
    with httpx.stream(
        "POST",
        server.url + "/v1/score/stream?gather_ms=0",
        json={"items": items},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["id"] for line in lines] == ["fast", "slow"]
    for bad in ("-1", "1001", "soon"):
        refused = post(server, {"items": items}, path=f"/v1/score/stream?gather_ms={bad}")
        assert refused.status_code == 422
        assert "gather_ms" in refused.text


def test_malformed_items_beside_good_ones(server: Server) -> None:
    items = [
        item(RIGHT, "good"),
        {"id": "nospec", "verifier": "code", "completion": RIGHT, "spec": {"language": "python"}},
        {"id": "typo", "verifier": "code", "completion": RIGHT, "spec": {**SPEC, "time_limit": 1}},
        {"id": "unknown", "verifier": "chess", "completion": "e4"},
        {
            "id": "nolang",
            "verifier": "code",
            "completion": RIGHT,
            "spec": {**SPEC, "language": "cobol"},
        },
        item("no code here", "nofence", extract={"fence": "python"}),
        item(RIGHT, "good2", extract={"tag": "answer"}),
        item(f"<answer>{RIGHT}</answer>", "tagged", extract={"tag": "answer"}),
    ]
    results = post(server, {"items": items}).json()["results"]
    got = {r["id"]: (r["status"], r["reward"]) for r in results}
    assert got == {
        "good": ("passed", 1.0),
        "nospec": ("invalid_spec", None),
        "typo": ("invalid_spec", None),
        "unknown": ("unavailable", None),
        "nolang": ("unavailable", None),
        "nofence": ("format_error", 0.0),
        "good2": ("format_error", 0.0),
        "tagged": ("passed", 1.0),
    }
    typo = next(r for r in results if r["id"] == "typo")
    assert "time_limit" in typo["feedback"]


@pytest.mark.parametrize(
    "body",
    [
        {"itemz": []},
        {"items": "x"},
        {"items": [{"verifier": "code"}]},
        [1, 2],
        {"items": [{"verifier": "code", "completion": "x", "extract": "sideways"}]},
    ],
    ids=["no_items", "items_not_list", "item_without_completion", "not_object", "bad_extract"],
)
def test_bad_envelope_is_422(server: Server, body: Any) -> None:
    assert post(server, body).status_code == 422


def test_invalid_json_is_422(server: Server) -> None:
    response = httpx.post(server.url + "/v1/score", content=b"{not json", timeout=10)
    assert response.status_code == 422


def test_plain_curl_style_post_is_read_as_json(server: Server) -> None:
    body = json.dumps({"items": [item("print(5)")]})
    response = httpx.post(
        server.url + "/v1/score",
        content=body,
        timeout=30,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.json()["results"][0]["status"] == "passed"


def test_too_many_items_is_413(server: Server) -> None:
    response = post(server, {"items": [item("print(5)")] * 51})
    assert response.status_code == 413
    assert "at most 50" in response.json()["detail"]


def test_too_many_bytes_is_413(server: Server) -> None:
    response = post(server, {"items": [item("#" * 250_000)]})
    assert response.status_code == 413

    def chunks() -> Any:  # no content-length: counted as it streams
        yield b'{"items": [{"verifier": "code", "completion": "'
        for _ in range(30):
            yield b"#" * 10_000
        yield b'"}]}'

    response = httpx.post(server.url + "/v1/score", content=chunks(), timeout=30)
    assert response.status_code == 413


def test_overload_is_429_with_retry_after(server: Server) -> None:
    slow = [item(f"import time\ntime.sleep(0.5)\nprint({n})") for n in range(40)]
    first: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: first.setdefault("code", post(server, {"items": slow}).status_code)
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "assay_items_in_flight 40.0" not in (
            httpx.get(server.url + "/metrics").text
        ):
            time.sleep(0.02)  # until the slow batch is admitted
        response = post(server, {"items": [item(f"print({n})") for n in range(30)]})
        assert response.status_code == 429, (first, response.text[:200])
        assert response.headers["retry-after"].isdigit()
    finally:
        thread.join()
    assert first["code"] == 200


def test_auth(keyed_server: Server) -> None:
    body = {"items": [item("print(5)")]}
    assert post(keyed_server, body).status_code == 401
    assert post(keyed_server, body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert post(keyed_server, body, headers={"Authorization": "key-one"}).status_code == 401
    assert post(keyed_server, body, path="/v1/score/stream").status_code == 401
    assert httpx.get(keyed_server.url + "/v1/verifiers").status_code == 401
    ok = post(keyed_server, body, headers={"Authorization": "Bearer key-two"})
    assert ok.status_code == 200
    assert ok.json()["results"][0]["status"] == "passed"
    assert httpx.get(keyed_server.url + "/healthz").status_code == 200
    with AssayClient(keyed_server.url, api_key="key-one") as client:
        assert client.score([item("print(5)")])[0].reward == 1.0
    with AssayClient(keyed_server.url, retries=0) as client, pytest.raises(AssayHTTPError) as err:
        client.score([item("print(5)")])
    assert err.value.status_code == 401


def test_operational_endpoints(server: Server) -> None:
    post(server, {"items": [item("print(5)")]})
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"ready": True}
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'assay_items_total{status="passed",verifier="code"}' in metrics.text
    assert "assay_item_seconds_bucket" in metrics.text
    assert "swagger" in httpx.get(server.url + "/docs").text.lower()
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/score", "/v1/score/stream", "/v1/verifiers"} <= set(paths)
    listing = httpx.get(server.url + "/v1/verifiers").json()
    assert listing["sandbox"]["isolation"] == "bwrap"
    assert isinstance(listing["sandbox"]["memory_cgroup_per_job"], bool)
    verifiers = listing["verifiers"]
    code = next(v for v in verifiers if v["name"] == "code")
    assert code["available"] is True
    assert code["facts"]["languages"]["python"]["available"] is True


def test_python_client(server: Server) -> None:
    with AssayClient(server.url) as client:
        results = client.score([item(RIGHT, "x"), item("print(1)", "y")])
        assert [(r.id, r.status) for r in results] == [("x", "passed"), ("y", "failed")]
        streamed = list(client.score_stream([item(RIGHT, "x"), item("print(1)", "y")]))
        assert sorted(r.index for r in streamed) == [0, 1]
        assert "code" in [v.name for v in client.verifiers()]


async def test_async_python_client(server: Server) -> None:
    async with AsyncAssayClient(server.url) as client:
        results = await client.score([item(RIGHT, "x")])
        assert results[0].reward == 1.0
        streamed = [r async for r in client.score_stream([item(RIGHT, "a"), item("1/0", "b")])]
        assert {r.id: r.status for r in streamed} == {"a": "passed", "b": "runtime_error"}
