"""The benchmarks still run and still agree with the plain way (a small run; no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
