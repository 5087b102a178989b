"""Hostile items for every verifier, in one batch through a real `assay serve`: huge payloads,
NUL bytes, lone surrogates (as JSON escapes), thousands of fences and of tags, deep nesting in
the spec. Each gets a status of its own (never `internal_error`), the batch is answered, and
the server goes on serving. Bodies that are not UTF-8 or nest past the parser are the
envelope's 422, and the server is intact after them too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from assay.verifiers.base import Status
from tests.conftest import Server, needs_bwrap, start_server, stop_server

pytestmark = needs_bwrap

SQUARE = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10">'
    '<rect x="2" y="2" width="6" height="6" fill="#c00"/></svg>'
)
SPECS: dict[str, dict[str, Any]] = {
    "code": {"language": "python", "test_code": "assert True"},
    "sql": {"setup_sql": "CREATE TABLE t(v INTEGER);", "gold_sql": "SELECT 1"},
    "svg": {"reference_svg": SQUARE},
    "dafny": {},
    "lean": {"theorem": "theorem t : 1 = 1"},
}
PAYLOADS = {
    "huge": "A" * (2 << 20),
    "nul_bytes": "\x00" * 1000 + "print(1)\x00",
    "lone_surrogate": "x = '\ud800'\n",
    "fences": "```python\nprint(1)\n```\n" * 3000,
    "tags": "<svg>" + "<g>" * 5000 + "</g>" * 5000 + "</svg>",
    "open_fence": "```" * 20000,
    "regex_bait": "(" * 50000 + "a" * 50000,
    "control_and_bidi": "\u202e\u2066\x1b[31m" * 10000,
}


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[Server]:
    server = start_server(cache_entries="0", svg_device="cpu", svg_workers="1")
    yield server
    stop_server(server)


def test_hostile_items_for_every_verifier(hostile_server: Server) -> None:
    items = []
    for verifier, spec in SPECS.items():
        for name, payload in PAYLOADS.items():
            items.append(
                {
                    "id": f"{verifier}/{name}",
                    "verifier": verifier,
                    "completion": payload,
                    "spec": spec,
                }
            )
        items.append(
            {
                "id": f"{verifier}/deep_spec",
                "verifier": verifier,
                "completion": "x",
                "spec": {**spec, "extra": deep(400)},
            }
        )
        items.append(
            {
                "id": f"{verifier}/surrogate_in_spec",
                "verifier": verifier,
                "completion": "x",
                "spec": {**spec, "reference": "\udfff"},
            }
        )
    # ensure_ascii: the lone surrogates travel as JSON escapes, as a client's JSON would have them
    body = json.dumps({"items": items}, ensure_ascii=True).encode()
    response = httpx.post(
        f"{hostile_server.url}/v1/score",
        content=body,
        headers={"content-type": "application/json"},
        timeout=300,
    )
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    assert [r["id"] for r in results] == [i["id"] for i in items]
    statuses = {s.value for s in Status}
    for result in results:
        assert result["status"] in statuses, result
        assert result["status"] != "internal_error", (result["id"], result["feedback"])
        assert result["feedback"], result["id"]
    assert httpx.get(f"{hostile_server.url}/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"items": [{"verifier": "code", "completion": "\xff\xfe\x80", "spec": {}}]}',
        b'{"items": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        b"\x00" * 1000,
    ],
    ids=["invalid_utf8", "nested_100000", "nul_body"],
)
def test_bodies_the_parser_refuses_are_422(hostile_server: Server, body: bytes) -> None:
    response = httpx.post(
        f"{hostile_server.url}/v1/score",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 422, response.text[:300]
    assert httpx.get(f"{hostile_server.url}/healthz", timeout=30).status_code == 200


def test_a_utf8_encoded_surrogate_is_the_items_own_status(hostile_server: Server) -> None:
    """Python's JSON parser reads the bytes of a surrogate (ED A0 80) as a lone surrogate: the
    item is judged or refused on its own, like the JSON escape."""
    spec = json.dumps(SPECS["code"]).encode()
    body = b'{"items": [{"verifier": "code", "completion": "x = 1  # \xed\xa0\x80", "spec": '
    response = httpx.post(
        f"{hostile_server.url}/v1/score",
        content=body + spec + b"}]}",
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    (result,) = response.json()["results"]
    assert result["status"] not in ("internal_error",), result
    assert httpx.get(f"{hostile_server.url}/healthz", timeout=30).status_code == 200
