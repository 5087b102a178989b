"""The docker backend's containers outlive no service: a service killed outright (no close, no
cleanup) leaves no runner behind, because a runner ends when its stdin closes, and its
container removes itself."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import pytest

from tests.containers.engine import ROOT, build

pytest.importorskip("docker")

# A service in miniature: warm containers started, a job run in each, their ids printed, and
# then the process is killed by SIGKILL while they are idle and attached.
SERVICE = """
import asyncio, json, os, signal, sys
from assay.sandboxes import Job, Limits
from assay.sandboxes.docker import DockerSandbox

async def main() -> None:
    box = DockerSandbox([sys.argv[2]], base_url=sys.argv[1], containers_per_image=2)
    assert await box.check() is None
    job = Job(argv=("python3", "-c", "print(1)"), limits=Limits())
    runs = await asyncio.gather(box.run(job), box.run(job))
    assert all(r.stdout == b"1\\n" for r in runs), runs
    print(json.dumps([w.container.id for w in box._live]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _running(url: str, ids: list[str]) -> list[str]:
    import docker

    with contextlib.closing(docker.DockerClient(base_url=url, timeout=60)) as client:
        left = []
        for cid in ids:
            with contextlib.suppress(docker.errors.NotFound):
                if client.containers.get(cid).status in ("created", "running", "paused"):
                    left.append(cid)
        return left


def test_a_killed_service_leaves_no_container(engine_url: str) -> None:
    image = build(engine_url, "toolchain", tag="localhost/assay-python:test")
    killed = subprocess.run(
        [sys.executable, "-c", SERVICE, engine_url, image],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    ids = json.loads(killed.stdout)
    assert len(ids) >= 1
    # The engine sees the attach connections close and the runners read EOF; give it time.
    deadline = time.monotonic() + 60
    while _running(engine_url, ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running(engine_url, ids) == []
