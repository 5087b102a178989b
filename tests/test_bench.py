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


@needs_bwrap
def test_warm_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "warm.json"
    command = [sys.executable, str(ROOT / "bench" / "warm.py"), "--rounds", "1", "--json", str(out)]
    command += ["--parts", "stdin,io", "--items", "20", "--io-items", "3", "--io-tests", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    (round_,) = report["stdin"]["rounds"]
    assert round_["agree"]  # warm, cold, plain and the floor give every item the same reward
    (io,) = report["io"]["rounds"]
    # One sandbox per test, one per item, and none per item on warm workers (each started once).
    assert io["per_test"]["sandbox_starts"] == 3 * 4
    assert io["run_many"]["sandbox_starts"] == 3
    assert io["warm"]["sandbox_starts"] <= 3
    assert all(way["all_passed"] for way in io.values())


@needs_bwrap
def test_trl_step_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "trl_step.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trl_step.py"), "--prompts", "4", "--group", "4"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    (round_,) = report["rounds"]
    assert round_["completions"] == 16
    assert round_["rewards_agree"] is True
    assert 0.0 < round_["mean_reward"] < 1.0  # right and wrong programs both
    assert "| assay TRL adapter, one call |" in done.stdout
