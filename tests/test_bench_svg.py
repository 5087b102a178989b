"""The svg benchmark still runs and agrees with the plain way (a small run; no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_bwrap

ROOT = Path(__file__).resolve().parent.parent


@needs_bwrap
def test_svg_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "svg_icons.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "svg_icons.py"), "--items", "24", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    (round_,) = report["rounds"]
    assert round_["items"] == 24
    assert round_["disagreements"] == []
    # Three groups of 8: each has the reference itself (passed) and a blank answer (failed).
    assert round_["statuses"]["passed"] >= 3
    assert report["svg_facts"]["pairs_compared"] >= 24 - 3
    assert "| ratio (assay / plain) |" in done.stdout
