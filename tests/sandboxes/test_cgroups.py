"""A job's memory cgroup, on the host's real cgroups (root): its OOM kill count, read from an
events file the job keeps open, holds after the job's release."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import pytest

from assay.sandboxes.cgroups import CgroupUnavailable, MemoryCgroups

HOG = "x = bytearray(256 << 20)\nx[::4096] = b'x' * len(x[::4096])\n"


@pytest.fixture
def cgroups() -> Iterator[MemoryCgroups]:
    try:
        found = MemoryCgroups.find()
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroups here: {exc}")
    yield found
    found.close()


async def test_the_oom_kill_count_holds_after_release(cgroups: MemoryCgroups) -> None:
    job = cgroups.job(64 << 20)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOG, preexec_fn=job.join)
    assert await proc.wait() == -9
    assert job.oom_kills() == 1
    await job.release()
    # The events file is closed; whatever opens next may take its number.
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        assert job.oom_kills() == 1  # the count read at release, not a read of that file
    finally:
        os.close(fd)
    again = cgroups.job(64 << 20)  # the same cgroup, reused: its count starts afresh
    try:
        assert again.path == job.path
        assert again.oom_kills() == 0
    finally:
        again.abandon()
