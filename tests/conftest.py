from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (scripts/install does it)"
)


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(port: int | None = None, **settings: str) -> Server:
    """A real `assay serve` process on a free loopback port (or `port`), settings as ASSAY_*
    variables."""
    port = port or _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env.update({f"ASSAY_{k.upper()}": v for k, v in settings.items()})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assay.clients.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"assay serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("assay serve did not answer /healthz within 30 s")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """An open server with small envelope limits, so that 413 and 429 are reachable."""
    s = start_server(max_items="50", max_body_bytes="200000", max_pending_items="60")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[Server]:
    s = start_server(api_keys='["key-one", "key-two"]')
    yield s
    stop_server(s)
