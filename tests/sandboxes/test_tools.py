"""Long-lived tools (`Sandbox.spawn`) and the warm-worker pool, on the real bubblewrap."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Hashable

import pytest

from assay.sandboxes import Limits, LocalSandbox, ToolProcess, ToolSpec, WorkerPool
from tests.conftest import needs_bwrap

# A line-oriented tool: answers each line with what it computed, as a warm worker would.
ECHO = """
import os, sys
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "pid":
        print(os.getpid(), flush=True)
    elif cmd.startswith("read "):
        try:
            print(open(cmd[5:]).read().strip(), flush=True)
        except OSError as exc:
            print("denied", type(exc).__name__, flush=True)
    elif cmd.startswith("write "):
        try:
            open(cmd[6:], "w").write("x")
            print("wrote", flush=True)
        except OSError as exc:
            print("denied", type(exc).__name__, flush=True)
    elif cmd == "hog":
        blocks = []
        while True:
            blocks.append(bytearray(1 << 20))
    else:
        print("echo", cmd, flush=True)
"""

pytestmark = needs_bwrap


@pytest.fixture
async def sandbox() -> AsyncIterator[LocalSandbox]:
    box = LocalSandbox()
    yield box
    await box.close()


def _spec(**kwargs: object) -> ToolSpec:
    return ToolSpec(
        argv=("python3", "-I", "tool.py"),
        files={"tool.py": ECHO},
        limits=Limits(memory_mb=128, processes=4),
        **kwargs,  # type: ignore[arg-type]
    )


async def _ask(tool: ToolProcess, line: str) -> str:
    tool.stdin.write(line.encode() + b"\n")
    await tool.stdin.drain()
    async with asyncio.timeout(10):
        return (await tool.stdout.readline()).decode().strip()


async def test_a_tool_answers_many_requests_in_one_sandbox(sandbox: LocalSandbox) -> None:
    tool = await sandbox.spawn(_spec())
    try:
        first = await _ask(tool, "pid")
        assert await _ask(tool, "hello") == "echo hello"
        assert await _ask(tool, "pid") == first  # the same warm process
        assert int(first) < 10  # its own pid namespace
    finally:
        await tool.close()
    assert tool.returncode is not None


async def test_a_tool_sees_read_only_paths_and_writes_none(sandbox: LocalSandbox) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "data.txt")
        with open(data, "w") as f:  # noqa: ASYNC230 - a test's setup
            f.write("the data")
        os.chmod(folder, 0o755)
        os.chmod(data, 0o644)
        tool = await sandbox.spawn(_spec(ro_paths=(folder,), env={"MARK": "1"}))
        try:
            assert await _ask(tool, f"read {data}") == "the data"
            assert (await _ask(tool, f"write {data}")).startswith("denied")
            assert (await _ask(tool, "read /etc/shadow")).startswith("denied")
        finally:
            await tool.close()
        with open(data) as f:  # noqa: ASYNC230 - a test's check
            assert f.read() == "the data"


async def test_a_tool_over_its_memory_is_killed_and_says_so(sandbox: LocalSandbox) -> None:
    tool = await sandbox.spawn(_spec())
    try:
        tool.stdin.write(b"hog\n")
        await tool.stdin.drain()
        async with asyncio.timeout(20):
            assert await tool.stdout.readline() == b""  # it died
    finally:
        await tool.close()
    assert b"MemoryError" in tool.stderr_tail() or tool.oom_killed()


class _Counter:
    def __init__(self) -> None:
        self.started: list[Hashable] = []
        self.closed = 0

    async def start(self, key: Hashable) -> list[Hashable]:
        self.started.append(key)
        return [key]

    async def close(self, worker: list[Hashable]) -> None:
        self.closed += 1


async def test_the_pool_reuses_recycles_and_discards() -> None:
    counter = _Counter()
    pool: WorkerPool[list[Hashable]] = WorkerPool(counter.start, counter.close, size=2, max_uses=3)
    for _ in range(3):
        async with pool.lease("a") as worker:
            assert worker == ["a"]
    assert counter.started == ["a"]
    assert counter.closed == 1  # recycled after 3 uses
    with pytest.raises(RuntimeError):
        async with pool.lease("a"):
            raise RuntimeError("the request failed")
    assert counter.closed == 2  # a worker whose lease failed is never reused
    async with pool.lease("a"), pool.lease("b"):
        assert pool.live == 2
    async with pool.lease("c"):  # full: an idle worker of another key makes room
        assert pool.live == 2
    assert counter.started.count("c") == 1
    await pool.close()
    assert pool.live == 0


async def test_the_pool_waits_when_every_worker_is_lent() -> None:
    counter = _Counter()
    pool: WorkerPool[list[Hashable]] = WorkerPool(counter.start, counter.close, size=1)
    order: list[str] = []

    async def user(name: str) -> None:
        async with pool.lease():
            order.append(f"{name} in")
            await asyncio.sleep(0.05)
            order.append(f"{name} out")

    await asyncio.gather(user("x"), user("y"))
    assert order in (["x in", "x out", "y in", "y out"], ["y in", "y out", "x in", "x out"])
    assert len(counter.started) == 1
    await pool.close()


async def test_a_pool_of_sandboxed_tools_replaces_a_dead_one(sandbox: LocalSandbox) -> None:
    async def start(key: Hashable) -> ToolProcess:
        return await sandbox.spawn(_spec())

    async def close(tool: ToolProcess) -> None:
        await tool.close()

    pool: WorkerPool[ToolProcess] = WorkerPool(
        start, close, size=1, healthy=lambda t: t.returncode is None
    )
    async with pool.lease() as tool:
        first = tool.pid
        tool.stdin.write(b"hog\n")
        await tool.stdin.drain()
        async with asyncio.timeout(20):
            await tool.stdout.readline()
        await tool.close()  # as a user would once it died; the pool sees it unhealthy
    async with pool.lease() as tool:
        assert tool.pid != first
        assert await _ask(tool, "x") == "echo x"
    await pool.close()
