"""The compile-once benchmark still runs, counts its compiles, and agrees with the plain way
(a small run: no timings)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_bwrap

ROOT = Path(__file__).resolve().parent.parent


@needs_bwrap
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_languages_benchmark_counts_compiles(tmp_path: Path) -> None:
    out = tmp_path / "languages.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "languages.py"),
            *("--programs", "3", "--tests", "2", "--plain-programs", "1"),
            *("--languages", "cpp", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    row = json.loads(out.read_text())["languages"]["cpp"]
    assert (row["compiles_first_batch"], row["compiles_batch_again"]) == (3, 0)
    assert row["passed"] == 3
    assert row["disagreements"] == []
    assert "| cpp | 3 / 0 |" in done.stdout
