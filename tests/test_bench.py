"""The benchmarks still run and still agree with the plain way (a small run; no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assay.verifiers.dafny import read_version
from tests.conftest import needs_bwrap

ROOT = Path(__file__).resolve().parent.parent


@needs_bwrap
def test_code_sum_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "code_sum.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "code_sum.py"), "--items", "40", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    (round_,) = report["rounds"]
    assert round_["items"] == 40
    assert round_["disagreements"] == []
    assert round_["cached"] == 4  # the 10% exact copies
    # 36 unique items, half of them right, and 4 copies of any of them.
    assert set(round_["statuses"]) == {"passed", "failed"}
    assert 18 <= round_["statuses"]["passed"] <= 22
    assert report["service_rss_after_mb"] > 0
    assert "| ratio (assay / plain) |" in done.stdout


@needs_bwrap
def test_lean_overhead_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "lean_overhead.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lean_overhead.py"), "--proofs", "20"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    assert report["assay_passed"] == report["plain_passed"] == 20
    assert "| ratio (assay / plain) |" in done.stdout


def test_dafny_pool_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    if read_version("/usr/lib/dafny") is None:
        pytest.skip("Dafny is not installed (scripts/install does it)")
    out = tmp_path / "dafny_pool.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "dafny_pool.py"),
            "--items",
            "10",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    (round_,) = json.loads(out.read_text())["rounds"]
    assert round_["items"] == 10
    assert round_["disagreements"] == []
    assert round_["cached"] == 1  # the 10% exact copy
    assert set(round_["statuses"]) <= {"passed", "failed"}
    assert round_["statuses"]["passed"] >= 1
