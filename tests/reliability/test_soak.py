"""The soak's short form: `bench/soak.py` for 30 s of mixed load on a real server. It checks
only that no item failed and that the service's resources did not grow past a bound after the
warm-up (no timing assertions: the figures go in the README from the full 10-minute run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_has_no_errors_and_bounded_growth(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "30", "--rate", "2"]
    done = subprocess.run(
        [*argv, "--warmup-s", "10", "--json", str(out)], capture_output=True, timeout=600
    )
    report = json.loads(out.read_text())
    # Every verifier is in the mix (Lean through the stand-in REPL; Dafny where installed).
    assert {"code-io", "code-test", "sql-db", "sql-setup", "svg", "lean"} <= set(report["mix"])
    assert report["errors"] == 0, report["first_errors"]
    assert done.returncode == 0
    assert report["answered"] == report["sent"] > 0
    grew = {name: r["growth"] for name, r in report["resources"].items()}
    # Bounds: the warm pools are full after the warm-up, so the processes and cgroups under
    # the service come and go with the jobs in flight (at most a few at this rate); memory may
    # settle a little; a leak of one temp dir, fd or process per item would pass these in 80.
    assert grew["processes"] <= 20, report
    assert grew["fds"] <= 40, report
    assert grew["cgroups"] <= 20, report
    assert grew["temp_dirs"] <= 10, report
    assert grew["rss_mb"] <= 150, report
