"""The container engine going away and coming back, under a real `assay serve` on the docker
backend: the tests' own Podman API service (on a socket of its own) is stopped in the middle of
a batch, then started again on the same socket.

While it is gone: every item of the batch gets a result (judged right, or a status saying it
was not judged: never a wrong reward), the request does not hang, the service stays up and
`/readyz` says it is not ready. Once it is back: `/readyz` is ready again, the backend starts
new warm containers, and items are judged right."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.containers.engine import _answers, build

pytest.importorskip("docker")

SPEC = {"language": "python", "time_limit_s": 20, "tests": [{"expected_stdout": "1\n"}]}


class Podman:
    """`podman system service` on a socket of its own, which can be stopped and started."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="assay-outage-")
        self.url = f"unix://{self.folder}/podman.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        podman = shutil.which("podman")
        assert podman is not None
        self.process = subprocess.Popen(
            [podman, "system", "service", "--time=0", self.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.folder,  # what conmon leaves in its working directory (engine.py) goes here
        )
        deadline = time.monotonic() + 30
        while not _answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if shutil.which("podman") is None or os.geteuid() != 0:
        pytest.skip("no Podman here (scripts/install test sets it up)")
    engine = Podman()
    if not engine.start():
        engine.stop()
        pytest.skip("Podman's API service did not start")
    try:
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(engine.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(podman: Podman) -> Iterator[Server]:
    image = build(podman.url, "toolchain", tag="localhost/assay-python:test")
    s = start_server(
        sandbox="docker",
        docker_host=podman.url,
        docker_images=f'["{image}"]',
        docker_containers_per_image="2",
        docker_memory_mb="320",
        cache_entries="0",
    )
    try:
        yield s
    finally:
        stop_server(s)
        # Whatever the service left (its containers, orphaned by the outage).
        with contextlib.suppress(Exception):
            if podman.process is None:
                podman.start()
            import docker

            client = docker.DockerClient(base_url=podman.url, timeout=30)
            for left in client.containers.list(
                all=True, filters={"label": f"io.assay.sandbox={s.process.pid}"}
            ):
                left.remove(force=True)


def item(n: int, tag: str, sleep_s: float = 0.0) -> dict[str, Any]:
    code = f"import time\ntime.sleep({sleep_s})\nprint(1)  # {tag}{n}"
    return {"id": f"{tag}{n}", "verifier": "code", "completion": code, "spec": SPEC}


def score(server: Server, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = httpx.post(f"{server.url}/v1/score", json={"items": items}, timeout=180)
    assert response.status_code == 200, response.text[:500]
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def in_flight(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    found = re.search(r"^assay_items_in_flight (\S+)$", metrics, re.M)
    assert found is not None
    return float(found[1])


def started(server: Server) -> int:
    facts = httpx.get(f"{server.url}/v1/verifiers", timeout=30).json()["sandbox"]
    return int(facts["pool"]["started"])


def test_the_engine_goes_away_and_comes_back(server: Server, podman: Podman) -> None:
    assert [r["status"] for r in score(server, [item(n, "warm") for n in range(2)])] == [
        "passed"
    ] * 2
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200

    # A batch in flight when the engine goes away.
    answers: dict[str, Any] = {}
    batch = [item(n, "a", sleep_s=1.5) for n in range(6)]
    thread = threading.Thread(target=lambda: answers.update(results=score(server, batch)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while in_flight(server) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the first items are running in their containers
        podman.stop()
    finally:
        thread.join(timeout=300)
    assert not thread.is_alive(), "the batch hung"
    results = answers["results"]
    assert len(results) == 6
    for result in results:
        if result["reward"] is not None:
            assert (result["status"], result["reward"]) == ("passed", 1.0), result
        else:
            assert result["status"] in ("internal_error", "unavailable"), result
            if result["status"] == "internal_error":
                assert result["details"].get("retryable") is True, result
    unjudged = sum(r["reward"] is None for r in results)
    print(f"engine stopped mid-batch: {6 - unjudged}/6 judged right, {unjudged} unjudged")

    # The service is up, and says it is not ready; new items say why they are not judged.
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{server.url}/readyz", timeout=30)).status_code == 200:
        assert time.monotonic() < deadline, "/readyz stayed ready without an engine"
        time.sleep(0.5)
    assert ready.status_code == 503
    assert any("sandbox" in m for m in ready.json()["missing"]), ready.json()
    during = score(server, [item(0, "during")])[0]
    assert during["reward"] is None
    assert during["status"] in ("unavailable", "internal_error")

    # It comes back: ready again, new warm containers, every item right.
    before = started(server)
    assert podman.start()
    deadline = time.monotonic() + 120
    while httpx.get(f"{server.url}/readyz", timeout=60).status_code != 200:
        assert time.monotonic() < deadline, "/readyz did not come back"
        time.sleep(0.5)
    after = score(server, [item(n, "b") for n in range(4)])
    assert [r["status"] for r in after] == ["passed"] * 4, after
    assert started(server) > before
