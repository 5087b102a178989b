"""The uid pool hands each running job its own uid, across worker processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from assay.sandboxes import SandboxError
from assay.sandboxes.local import UidPool


def test_uids_are_exclusive_until_released(tmp_path: Path) -> None:
    pool = UidPool(70000, 3, tmp_path)
    held = {pool.acquire() for _ in range(3)}
    assert held == {70000, 70001, 70002}
    with pytest.raises(SandboxError, match="all 3 sandbox uids"):
        pool.acquire()
    pool.release(70001)
    assert pool.acquire() == 70001


def test_another_process_cannot_take_a_held_uid(tmp_path: Path) -> None:
    pool = UidPool(70000, 2, tmp_path)
    with pool.hold() as mine:
        other = (
            "from pathlib import Path\nfrom assay.sandboxes.local import UidPool\n"
            f"pool = UidPool(70000, 2, Path({str(tmp_path)!r}))\nprint(pool.acquire())\n"
        )
        theirs = subprocess.run(
            [sys.executable, "-c", other], capture_output=True, text=True, check=True
        ).stdout
        assert int(theirs) == ({70000, 70001} - {mine}).pop()
