"""The service as a hostile client and a hostile model would attack it (issue 5), through a
real `assay serve` process: pathological items beside honest ones, bodies without a key, bad
JSON envelopes, clients that go away, clients that send the same item again.

No timing assertions: "answers at all" within bounds that are minutes away from what the
attacks had cost (hours for the pathological items, the item's whole time limit for abandoned
work).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Server, needs_bwrap, start_server, stop_server

pytestmark = needs_bwrap

SPEC = {"language": "python", "tests": [{"stdin": "2 3\n", "expected_stdout": "5\n"}]}
RIGHT = "a, b = map(int, input().split())\nprint(a + b)"


def item(completion: str, id: Any = None, spec: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": id, "verifier": "code", "completion": completion, "spec": spec or SPEC, **extra}


@pytest.fixture(scope="module")
def open_server() -> Iterator[Server]:
    s = start_server()
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    s = start_server(api_keys='["key-one"]')
    yield s
    stop_server(s)


def _in_flight(server: Server) -> float:
    found = re.search(
        r"^assay_items_in_flight (\S+)$", httpx.get(server.url + "/metrics").text, re.M
    )
    assert found is not None
    return float(found[1])


# -- bounded work per item --------------------------------------------------------------------

FLOAT = {"language": "python", "compare": "float", "tests": [{"expected_stdout": "1\n"}]}
PATHOLOGICAL = [
    # A fence opener followed by blanks (the `auto` extraction's pattern backtracked on it).
    item("```" + " " * 300_000, "fence-blanks"),
    item("x\n```" + "\t" * 300_000 + "\n", "fence-tabs"),
    # Opening tags repeated, never closed ({"tag": ...} extraction).
    item("<answer>" * 100_000, "tags", extract={"tag": "answer"}),
    # A program printing a long run of digits under `compare: float`.
    item("print('1' * 200_000 + 'x')", "digits", spec=FLOAT),
    item("print('1' * 100_000 + 'e' + '1' * 100_000 + 'x')", "digits-e", spec=FLOAT),
    # A megabyte of stderr in one line, for the language table's patterns.
    item("import sys\nsys.stderr.write(' ' * 900_000 + 'x')\nsys.exit(1)", "stderr-line"),
]
HONEST = [item(RIGHT, f"honest-{n}") for n in range(4)] + [
    item(f"```python\n{RIGHT}\n```", "honest-fenced"),
    item(
        f"<answer>\n```python\n{RIGHT}\n```\n</answer>", "honest-tagged", extract={"tag": "answer"}
    ),
]


def test_pathological_items_beside_honest_ones(open_server: Server) -> None:
    """The honest items pass, and the service answers /healthz all along."""
    answer: dict[str, Any] = {}

    def send() -> None:
        body = {"items": PATHOLOGICAL + HONEST}
        response = httpx.post(open_server.url + "/v1/score", json=body, timeout=300)
        answer["status"], answer["body"] = response.status_code, response.json()

    thread = threading.Thread(target=send)
    thread.start()
    health = []
    try:
        while thread.is_alive():  # the event loop answers while the batch is judged
            health.append(httpx.get(open_server.url + "/healthz", timeout=30).status_code)
            time.sleep(0.1)
    finally:
        thread.join()
    assert health
    assert set(health) == {200}
    assert answer["status"] == 200
    got = {r["id"]: r["status"] for r in answer["body"]["results"]}
    assert {got[h["id"]] for h in HONEST} == {"passed"}, got
    for hostile in PATHOLOGICAL:  # judged, each: never a failure of the service
        assert got[hostile["id"]] not in ("internal_error", "timeout"), (hostile["id"], got)


# -- the key before the body ------------------------------------------------------------------


def _raw_request(server: Server, head: bytes, body: bytes) -> bytes:
    """Send `head` and only the start of a body it declares larger; return what comes back."""
    address = urlsplit(server.url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head + body)
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b""


def test_unauthenticated_bodies_are_not_read(keyed: Server) -> None:
    """A 30 MB body without a key gets its 401 before it is sent (it had been read, parsed,
    and held: 54 MB to 877 MB of the service's memory for a 401)."""
    head = (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 30000000\r\n\r\n"
    )
    reply = _raw_request(keyed, head, b'{"items": [' + b" " * 1000)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    wrong = head.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer nope\r\n")
    assert _raw_request(keyed, wrong, b"{").startswith(b"HTTP/1.1 401")
    ok = httpx.post(
        keyed.url + "/v1/score",
        json={"items": [item(RIGHT)]},
        headers={"Authorization": "Bearer key-one"},
        timeout=60,
    )
    assert ok.json()["results"][0]["status"] == "passed"


# -- bad envelopes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"items": [{"id": NaN, "verifier": "code", "completion": "x"}]}',
        b'{"items": [{"id": "a", "verifier": "code", "completion": "x", "spec": {"x": Infinity}}]}',
        b'{"items": [{"id": -Infinity, "verifier": "code", "completion": "x"}]}',
        b'{"items": [{"id": 1e999, "verifier": "code", "completion": "x"}]}',
        b'{"items": [{"id": "\\ud800", "verifier": "code", "completion": 5}]}',
        b'{"items": [{"verifier": "code", "completion": "x", "spec": {"float_tol": 1e400}}]}',
        b'{"items": [{"id": ' + b"9" * 5000 + b', "verifier": "code", "completion": "x"}]}',
        b'{"items": [{"verifier": "code", "completion": "\xff\xfe"}]}',
        b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=[
        "nan_id",
        "infinity_in_spec",
        "minus_infinity",
        "overflowing_number",
        "surrogate_echo",
        "overflowing_tolerance",
        "huge_integer",
        "not_utf8",
        "nested_deeply",
    ],
)
@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/stream"])
def test_bodies_that_are_not_strict_json_are_422(
    open_server: Server, body: bytes, path: str
) -> None:
    response = httpx.post(open_server.url + path, content=body, timeout=30)
    assert response.status_code == 422, response.text[:300]
    response.json()  # and the answer is JSON itself


def test_a_422_does_not_echo_a_large_input(open_server: Server) -> None:
    body = {"items": [{"verifier": "code", "completion": ["x" * 1_000_000]}]}
    response = httpx.post(open_server.url + "/v1/score", json=body, timeout=30)
    assert response.status_code == 422
    assert len(response.content) < 10_000


def test_lone_surrogate_id_is_the_items_own_status(open_server: Server) -> None:
    body = (
        b'{"items": [{"id": "bad\\ud800", "verifier": "code", "completion": "print(5)",'
        b' "spec": '
        + json.dumps(SPEC).encode()
        + b"}, "
        + json.dumps(item(RIGHT, "good")).encode()
        + b"]}"
    )
    response = httpx.post(open_server.url + "/v1/score", content=body, timeout=60)
    assert response.status_code == 200
    bad, good = response.json()["results"]
    assert (bad["id"], bad["status"]) == ("bad\ufffd", "invalid_spec")
    assert (good["id"], good["status"]) == ("good", "passed")
    with httpx.stream("POST", open_server.url + "/v1/score/stream", content=body, timeout=60) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert {line["id"]: line["status"] for line in lines} == {
        "bad\ufffd": "invalid_spec",
        "good": "passed",
    }


# -- abandoned and repeated work --------------------------------------------------------------

SLEEPER = {"language": "python", "time_limit_s": 120, "tests": [{"expected_stdout": "x\n"}]}


def test_a_client_that_goes_away_stops_its_work(open_server: Server) -> None:
    """The item would run for two minutes; once its client is gone, it is no longer in flight
    (it had gone on to its end, and a client's retries had run it three times at once)."""
    body = {"items": [item("import time\ntime.sleep(100)\nprint('x')", spec=SLEEPER)]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(open_server.url + "/v1/score", json=body, timeout=httpx.Timeout(30, read=2))
    deadline = time.monotonic() + 40
    while _in_flight(open_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _in_flight(open_server) == 0


def test_a_resent_item_joins_the_run_in_flight(open_server: Server) -> None:
    """A retry after a read timeout sends the same item again, in another request."""
    code = "import time\ntime.sleep(3)\nprint(5)  # resent"
    first: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: first.update(
            httpx.post(
                open_server.url + "/v1/score", json={"items": [item(code, "a")]}, timeout=60
            ).json()["results"][0]
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while _in_flight(open_server) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = httpx.post(
            open_server.url + "/v1/score", json={"items": [item(code, "b")]}, timeout=60
        ).json()["results"][0]
    finally:
        thread.join()
    assert (first["status"], second["status"]) == ("passed", "passed")
    assert (first["cached"], second["cached"]) == (False, True)
