"""bench/docker_python.py still runs and its ways still agree (a small run; no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_bwrap
from tests.containers.engine import ROOT, engine

pytest.importorskip("docker")


@pytest.fixture(scope="module")
def engine_up() -> Iterator[None]:
    with engine() as url:
        if url is None:
            pytest.skip("no container engine here (scripts/install test sets up Podman)")
        yield  # the bench starts its own API service; this only says one can run


@needs_bwrap
def test_docker_python_benchmark_runs_and_agrees(engine_up: None, tmp_path: Path) -> None:
    out = tmp_path / "docker_python.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "docker_python.py"),
            "--items",
            "30",
            "--per-job-items",
            "4",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    report = json.loads(out.read_text())
    (round_,) = report["rounds"]
    assert round_["disagreements"] == 0
    assert round_["per_job_items"] == 4
    assert report["per_job_extrapolated"] is True
    assert "extrapolated" in done.stdout
    assert "| docker / one container per job |" in done.stdout
