"""The sql benchmark still runs and agrees with the plain way (a small run; no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_bwrap

ROOT = Path(__file__).resolve().parent.parent


@needs_bwrap
def test_sql_benchmark_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "sql_exec.json"
    args = ["--golds", "5", "--per-gold", "20", "--orders", "2000", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sql_exec.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(out.read_text())
    (round_,) = report["rounds"]
    assert round_["items"] == 100
    assert round_["disagreements"] == []
    assert round_["gold_runs"] == 5  # once per gold query, whatever the group size
    assert round_["cached"] == 50  # each distinct prediction sent twice
    assert set(round_["statuses"]) == {"passed", "failed", "runtime_error", "compile_error"}
