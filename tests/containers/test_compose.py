"""compose.yaml brought up for real with a compose tool against the engine: the service and
its language containers score a mixed batch over HTTP, then everything comes down."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.containers.engine import ROOT, base_image, engine

pytest.importorskip("docker")
COMPOSE = shutil.which("docker-compose") or shutil.which("podman-compose")
PROJECT = f"assaysmoke{os.getpid()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _extra_ca() -> str:
    """This machine's own CAs (a TLS-intercepting proxy's), for pip inside the image build."""
    folder = Path("/usr/local/share/ca-certificates")
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.crt"))) if folder.is_dir() else ""


def _containers(url: str, label: str) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        return [c.name for c in client.containers.list(all=True, filters={"label": label})]
    finally:
        client.close()


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError("the composed service did not become ready in 180 s")


def _wait_postgres(url: str) -> None:
    """Until compose's PostgreSQL answers on its socket (its first start makes the cluster and
    the reader role; the service does not wait for it)."""
    import docker

    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = client.containers.list(
                filters={
                    "label": [
                        f"com.docker.compose.project={PROJECT}",
                        "com.docker.compose.service=postgres",
                    ]
                }
            )
            if found and found[0].exec_run(["pg_isready", "-h", "/run/postgresql"]).exit_code == 0:
                return
            time.sleep(1)
    finally:
        client.close()
    raise AssertionError("compose's PostgreSQL did not answer on its socket in 120 s")


ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
ITEMS = [
    {
        "id": "right",
        "verifier": "code",
        "completion": f"```python\n{ADD}```",
        "spec": {
            "language": "python",
            "tests": [
                {"stdin": "1 2\n", "expected_stdout": "3\n"},
                {"stdin": "5 5\n", "expected_stdout": "10\n"},
            ],
        },
    },
    {
        "id": "wrong",
        "verifier": "code",
        "completion": "print(0)",
        "spec": {"language": "python", "tests": [{"stdin": "1 2\n", "expected_stdout": "3\n"}]},
    },
    {
        "id": "asserts",
        "verifier": "code",
        "completion": "def f(x):\n    return x * 2\n",
        "spec": {"language": "python", "test_code": "assert f(2) == 4\n"},
    },
    {
        "id": "loops",
        "verifier": "code",
        "completion": "while True:\n    pass\n",
        "spec": {
            "language": "python",
            "time_limit_s": 1,
            "tests": [{"stdin": "", "expected_stdout": "x"}],
        },
    },
    {
        "id": "no-such",
        "verifier": "code",
        "completion": "x",
        "spec": {"language": "cobol", "tests": [{"stdin": "", "expected_stdout": "x"}]},
    },
]
# The sql verifier's workers in containers of assay/sql: a setup_sql database (built in one,
# copied into the next: the service's /tmp is on no volume), and compose's PostgreSQL reached
# by name over its socket on the shared volume, as the role compose made.
ITEMS += [
    {
        "id": "sql-setup",
        "verifier": "sql",
        "completion": "SELECT SUM(a) FROM t",
        "spec": {
            "setup_sql": "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2), (3);",
            "gold_sql": "SELECT 6",
        },
    },
    {
        "id": "sql-postgres",
        "verifier": "sql",
        "completion": "SELECT count(*) FROM pg_roles WHERE rolname = 'assay_reader'",
        "spec": {"database": "postgres", "dialect": "postgres", "gold_sql": "SELECT 1"},
    },
]
EXPECTED = {
    "sql-setup": ("passed", 1.0),
    "sql-postgres": ("passed", 1.0),
    "right": ("passed", 1.0),
    "wrong": ("failed", 0.0),
    "asserts": ("passed", 1.0),
    "loops": ("timeout", 0.0),
    "no-such": ("unavailable", None),
}


def test_compose_up_scores_a_mixed_batch_and_down_leaves_nothing() -> None:
    if COMPOSE is None:
        pytest.skip("no compose tool (scripts/install test installs docker-compose)")
    with engine() as engine_url:
        if engine_url is None or not engine_url.startswith("unix://"):
            pytest.skip("no container engine on a local socket here")
        port = _free_port()
        env = {
            **os.environ,
            "DOCKER_HOST": engine_url,
            "ENGINE_SOCKET": engine_url.removeprefix("unix://"),
            "BASE_IMAGE": base_image(engine_url),
            "EXTRA_CA_CERT": _extra_ca(),
            "ASSAY_PORT": str(port),
            # CI builds only what this test uses: the service, Python's image, PostgreSQL, the
            # sql workers' image.
            "ASSAY_DOCKER_IMAGES": '["assay/python"]',
            "ASSAY_DOCKER_CONTAINERS_PER_IMAGE": "2",
        }
        base = [COMPOSE, "-p", PROJECT, "-f", str(ROOT / "compose.yaml")]
        url = f"http://127.0.0.1:{port}"
        try:
            built = subprocess.run(
                [*base, "build", "assay", "postgres", "lang-python", "tool-sql"],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
            up = subprocess.run(
                [*base, "up", "-d", "assay"], env=env, capture_output=True, text=True, timeout=300
            )
            assert up.returncode == 0, up.stderr[-3000:]
            _wait_ready(url)
            _wait_postgres(engine_url)
            answer = httpx.post(f"{url}/v1/score", json={"items": ITEMS}, timeout=120)
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            got = {r["id"]: (r["status"], r["reward"]) for r in results}
            for result in results:
                want = EXPECTED[result["id"]]
                assert (result["status"], result["reward"]) == want, (
                    result["id"],
                    result["feedback"],
                )
            assert got == EXPECTED
            facts = httpx.get(f"{url}/v1/verifiers", timeout=30).json()["sandbox"]
            assert facts["backend"] == "docker"
            assert _containers(engine_url, "io.assay.sandbox")  # warm language containers
        finally:
            down = subprocess.run(
                [*base, "down", "-v", "--timeout", "30"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        assert down.returncode == 0, down.stderr[-3000:]
        # Nothing of the stack is left: neither compose's containers nor the service's own.
        assert _containers(engine_url, f"com.docker.compose.project={PROJECT}") == []
        assert _containers(engine_url, "io.assay.sandbox") == []
