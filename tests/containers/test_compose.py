"""compose.yaml brought up for real with a compose tool against the engine: the service and
its language containers score a mixed batch over HTTP, then everything comes down.

CI builds only what this test needs: the service, PostgreSQL, the Python image and a C-only
build of the native image (an override file gives lang-native just gcc, and every image a tag
of this checkout's own, so that runs from two checkouts on one engine never swap images).
The batch holds an item of each kind the docker backend serves: I/O tests, test code, the
isolated `entry_point` mode, a checker, a compiled language (C), and sql items through the
sql verifier's workers in containers of the sql tool image (a `setup_sql` database, and
compose's PostgreSQL reached over its socket). About 3 minutes from cold (no image built, the base
image local), under a minute warm (docs/containers.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
TAG = "smoke-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
# The services this test builds, and the tag each gets here.
IMAGES = {
    "assay": f"assay/service:{TAG}",
    "postgres": f"assay/postgres:{TAG}",
    "lang-python": f"assay/python:{TAG}",
    "lang-native": f"assay/native:{TAG}",
    "tool-sql": f"assay/sql:{TAG}",
}
OVERRIDE = f"""services:
  assay:
    image: {IMAGES["assay"]}
    environment:
      ASSAY_DOCKER_TOOL_IMAGES: '{{"sql": "{IMAGES["tool-sql"]}"}}'
  postgres:
    image: {IMAGES["postgres"]}
  lang-python:
    image: {IMAGES["lang-python"]}
  lang-native:
    image: {IMAGES["lang-native"]}
    build:
      args:
        PACKAGES: gcc libc6-dev
  tool-sql:
    image: {IMAGES["tool-sql"]}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _extra_ca() -> str:
    """This machine's own CAs (a TLS-intercepting proxy's), for pip inside the image build."""
    folder = Path("/usr/local/share/ca-certificates")
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.crt"))) if folder.is_dir() else ""


def _containers(url: str, filters: dict[str, str]) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        return [c.name for c in client.containers.list(all=True, filters=filters)]
    finally:
        client.close()


def _volumes(url: str) -> list[str]:
    import docker

    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        found = client.volumes.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
        return [v.name for v in found if v.name.startswith(PROJECT)]
    finally:
        client.close()


def _image_ids(url: str) -> dict[str, str]:
    import docker

    client = docker.DockerClient(base_url=url, timeout=60)
    ids = {}
    try:
        for image in IMAGES.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                ids[image] = client.images.get(image).id
    finally:
        client.close()
    return ids


def _drop_replaced(url: str, before: dict[str, str]) -> None:
    """The images this checkout's earlier runs built and this run's build replaced: nothing
    else points at them any more."""
    import docker

    after = _image_ids(url)
    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        for image, old in before.items():
            if after.get(image) not in (None, old):
                # One still used (by a container of another run) is left.
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(old)
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
C_ADD = (
    "#include <stdio.h>\n"
    'int main(void) { long a, b; scanf("%ld %ld", &a, &b); printf("%ld\\n", a + b); }\n'
)
CHECKER = (
    "import sys\n"
    "got, answer = open(sys.argv[2]).read().split(), open(sys.argv[3]).read().split()\n"
    "sys.exit(0 if [int(x) for x in got] == [int(x) for x in answer] else 1)\n"
)
ITEMS += [
    {
        "id": "entry-point",
        "verifier": "code",
        "completion": "def add(a, b):\n    return a + b\n",
        "spec": {
            "language": "python",
            "test_code": "assert add(2, 3) == 5\n",
            "entry_point": "add",
        },
    },
    {
        "id": "checker",
        "verifier": "code",
        "completion": "print(int(input()) * 2)\n",
        "spec": {
            "language": "python",
            "tests": [{"stdin": "3\n", "expected_stdout": "006\n"}],
            "checker": {"language": "python", "source": CHECKER},
        },
    },
    {
        "id": "c-right",
        "verifier": "code",
        "completion": f"```c\n{C_ADD}```",
        "spec": {"language": "c", "tests": [{"stdin": "1 2\n", "expected_stdout": "3\n"}]},
    },
    {
        "id": "c-broken",
        "verifier": "code",
        "completion": "int main(void) { return 0 }",
        "spec": {"language": "c", "tests": [{"stdin": "", "expected_stdout": ""}]},
    },
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
    "entry-point": ("passed", 1.0),
    "checker": ("passed", 1.0),
    "c-right": ("passed", 1.0),
    "c-broken": ("compile_error", 0.0),
}


def test_compose_up_scores_a_mixed_batch_and_down_leaves_nothing(tmp_path: Path) -> None:
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
            "ASSAY_DOCKER_IMAGES": json.dumps([IMAGES["lang-python"], IMAGES["lang-native"]]),
            "ASSAY_DOCKER_CONTAINERS_PER_IMAGE": "2",
        }
        override = tmp_path / "compose.override.yaml"
        override.write_text(OVERRIDE)
        base = [COMPOSE, "-p", PROJECT, "-f", str(ROOT / "compose.yaml"), "-f", str(override)]
        url = f"http://127.0.0.1:{port}"
        before = _image_ids(engine_url)
        phases: dict[str, float] = {}
        clock = time.monotonic()

        def phase(name: str) -> None:  # where the time goes, for the log (-s); no assertion
            nonlocal clock
            phases[name] = round(time.monotonic() - clock, 1)
            clock = time.monotonic()

        try:
            built = subprocess.run(
                [*base, "build", *IMAGES],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
            _drop_replaced(engine_url, before)
            phase("build")
            up = subprocess.run(
                [*base, "up", "-d", "assay"], env=env, capture_output=True, text=True, timeout=300
            )
            assert up.returncode == 0, up.stderr[-3000:]
            phase("up")
            _wait_ready(url)
            phase("ready")
            _wait_postgres(engine_url)
            answer = httpx.post(f"{url}/v1/score", json={"items": ITEMS}, timeout=300)
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            got = {r["id"]: (r["status"], r["reward"]) for r in results}
            phase("score")
            assert got == EXPECTED, {r["id"]: r["feedback"] for r in results}
            facts = httpx.get(f"{url}/v1/verifiers", timeout=30).json()["sandbox"]
            assert facts["backend"] == "docker"
            assert facts["images"] == {IMAGES["lang-python"]: True, IMAGES["lang-native"]: True}
            assert _sandboxes(engine_url)  # the warm language containers of this stack
        finally:
            down = subprocess.run(
                [*base, "down", "-v", "--timeout", "30"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        phase("down")
        print(f"compose smoke test, seconds per phase: {phases}")
        assert down.returncode == 0, down.stderr[-3000:]
        # Nothing of the stack is left: compose's containers and volume, the service's own.
        assert _containers(engine_url, {"label": f"com.docker.compose.project={PROJECT}"}) == []
        assert _sandboxes(engine_url) == []
        assert _volumes(engine_url) == []


def _sandboxes(url: str) -> list[str]:
    """The language containers of this checkout's images (others' tests may run beside)."""
    import docker

    ids = _image_ids(url)
    ours = {ids[IMAGES[s]] for s in ("lang-python", "lang-native", "tool-sql") if IMAGES[s] in ids}
    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        found = client.containers.list(all=True, filters={"label": "io.assay.sandbox"})
        return [c.name for c in found if c.attrs.get("Image") in ours]
    finally:
        client.close()
