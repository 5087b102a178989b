"""The uid pool hands each running job its own uid, across worker processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from assay.sandboxes import SandboxError
from assay.sandboxes.uids import UidPool


def test_uids_are_exclusive_until_released(tmp_path: Path) -> None:
    pool = UidPool(70000, 3, tmp_path)
    held = {pool.acquire() for _ in range(3)}
    assert held == {70000, 70001, 70002}
    with pytest.raises(SandboxError, match="all 3 sandbox uids"):
        pool.acquire()
    pool.release(70001)
    assert pool.acquire() == 70001


def test_blocks_are_consecutive_and_skip_held_uids(tmp_path: Path) -> None:
    """A warm worker's block: consecutive uids, none held by another, within the pool."""
    pool = UidPool(70000, 10, tmp_path)
    pool._next = 0
    single = pool.acquire()  # 70000
    block = pool.acquire_block(4)
    assert block == [70001, 70002, 70003, 70004]
    pool.release(single)
    pool._next = 8  # 70008 and 70009 are free, but a block does not wrap around the end
    assert pool.acquire_block(3) == [70005, 70006, 70007]
    assert pool.acquire() in (70000, 70008, 70009)
    with pytest.raises(SandboxError, match="blocks of 3 uids are in use"):
        pool.acquire_block(3)
    pool.release_block(block)
    assert pool.acquire_block(3) == [70000, 70001, 70002]  # what a failed try took was freed
    assert len(pool._held) == 7


def test_another_process_cannot_take_a_held_uid(tmp_path: Path) -> None:
    pool = UidPool(70000, 2, tmp_path)
    with pool.hold() as mine:
        other = (
            "from pathlib import Path\nfrom assay.sandboxes.uids import UidPool\n"
            f"pool = UidPool(70000, 2, Path({str(tmp_path)!r}))\nprint(pool.acquire())\n"
        )
        theirs = subprocess.run(
            [sys.executable, "-c", other], capture_output=True, text=True, check=True
        ).stdout
        assert int(theirs) == ({70000, 70001} - {mine}).pop()


def test_a_lock_dir_open_to_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(SandboxError, match="open to others"):
        UidPool(70000, 2, shared).acquire()


def test_a_planted_link_is_not_followed(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    target = tmp_path / "created-through-the-link"
    (locks / "70000.lock").symlink_to(target)
    with pytest.raises(SandboxError, match="uid 70000"):
        UidPool(70000, 1, locks).acquire()
    assert not target.exists()
