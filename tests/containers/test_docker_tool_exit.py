"""How a tool ended, on the docker backend, on a real engine: the runner in the tool's container
waits for the tool and reports its exit status, so a tool killed from outside (the host's OOM
killer, an operator, a supervisor) is told from one that crashed on its input, as on the local
backend. A killed SQL worker does not count against the item it was running: the item is run
again on a fresh worker (tests/reliability/test_faults.py does the same on the local backend).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from assay.clients.schema import SqlSpec
from assay.sandboxes.base import Limits, ToolSpec, exit_status, killed_from_outside
from assay.sandboxes.docker import DockerSandbox
from assay.verifiers.sql import SqlVerifier
from tests.containers.engine import build_tool
from tests.verifiers.sql_data import statements
from tests.verifiers.sql_servers import make_sqlite, shared_dir

pytest.importorskip("docker")
pytestmark = pytest.mark.asyncio(loop_scope="module")

GOLD = "SELECT status, COUNT(*) FROM orders GROUP BY status"
# The gold's rows, after a second or so of counting: a kill lands mid-query.
SLOW = (
    "SELECT status, COUNT(*) FROM orders WHERE (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
    "SELECT x + 1 FROM c WHERE x < 3000000) SELECT COUNT(*) FROM c) > 0 GROUP BY status"
)


@pytest.fixture(scope="module")
def sql_image(engine_url: str) -> str:
    return build_tool(engine_url, "tool-sql")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sandbox(engine_url: str, sql_image: str) -> AsyncIterator[DockerSandbox]:
    box = DockerSandbox([], base_url=engine_url, tool_images={"sql": sql_image})
    assert await box.check() is None
    yield box
    await box.close()


def _tree(root: int) -> list[int]:
    """`root` and the processes under it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def kill_tools(sandbox: DockerSandbox, marker: bytes) -> int:
    """SIGKILL, from this host, the processes whose command line holds `marker` in the
    containers this sandbox runs (each container's main process and what runs under it);
    how many."""
    killed = 0
    for worker in list(sandbox._live):
        try:
            worker.container.reload()
            main = int(worker.container.attrs["State"]["Pid"])
        except Exception:  # the container went meanwhile
            continue
        for pid in _tree(main) if main > 0 else []:
            if marker in _cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
    return killed


MARKER = b"assay-test-echo"


def _spec(code: str) -> ToolSpec:
    """A tool in the sql image that echoes its input lines, after `code`."""
    program = f"import sys  # {MARKER.decode()}\n{code}\nfor line in sys.stdin:\n"
    program += "    print(line, end='', flush=True)\n"
    return ToolSpec(
        argv=("python3", "-c", program),
        limits=Limits(wall_s=60, memory_mb=256, processes=4),
        tool="sql",
    )


async def _echo(tool: object, text: bytes) -> bytes:
    tool.stdin.write(text)  # type: ignore[attr-defined]
    await tool.stdin.drain()  # type: ignore[attr-defined]
    async with asyncio.timeout(30):
        return await tool.stdout.readline()  # type: ignore[attr-defined, no-any-return]


async def test_a_tool_killed_from_the_host_reads_as_killed_from_outside(
    sandbox: DockerSandbox,
) -> None:
    tool = await sandbox.spawn(_spec(""))
    try:
        assert await _echo(tool, b"one\n") == b"one\n"
        assert tool.returncode is None
        assert await asyncio.to_thread(kill_tools, sandbox, MARKER) >= 1
        code = await exit_status(tool, 30)
        assert code == 128 + signal.SIGKILL, code
        assert killed_from_outside(code)
        assert not tool.oom_killed()
    finally:
        await tool.close()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("sys.stderr.write('bad input\\n'); sys.exit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", 128 + signal.SIGSEGV),
        ("sys.exit(0)", 0),
    ],
    ids=["exit_3", "own_sigsegv", "exit_0"],
)
async def test_a_tool_that_ends_itself_is_not_killed_from_outside(
    sandbox: DockerSandbox, code: str, status: int
) -> None:
    tool = await sandbox.spawn(_spec(code))
    try:
        got = await exit_status(tool, 30)
        assert got == status
        assert not killed_from_outside(got)
        if status == 3:  # its own last words stay; the runner's report is not among them
            assert tool.stderr_tail().rstrip().endswith(b"bad input"), tool.stderr_tail()
    finally:
        await tool.close()


async def test_a_killed_sql_worker_does_not_count_against_its_item(
    sandbox: DockerSandbox,
) -> None:
    data_dir = shared_dir("assay-docker-exit-")
    try:
        make_sqlite(data_dir, "shop", statements())
        verifier = SqlVerifier(data_dir=str(data_dir), workers=2)
        try:
            spec = SqlSpec(database="shop", gold_sql=GOLD, timeout_s=60)
            assert verifier.check(spec, sandbox) is None
            warm = await verifier.verify(GOLD, spec, sandbox)  # the gold cached, a worker up
            assert warm.status.value == "passed", warm.feedback
            judged = asyncio.ensure_future(verifier.verify(SLOW, spec, sandbox))
            killed = 0
            for _ in range(20):  # kill the worker under the query, once
                await asyncio.sleep(0.2)
                killed = await asyncio.to_thread(kill_tools, sandbox, b"worker.py")
                if killed or judged.done():
                    break
            assert killed > 0, "no tool was found to kill"
            verdict = await asyncio.wait_for(judged, 300)
            # Run again on a fresh worker (passed), or, killed twice, not judged: never
            # blamed on the query (`the database worker died`, runtime_error, a 0).
            if verdict.status.value == "internal_error":
                assert verdict.details.get("retryable") is True, verdict
            else:
                assert (verdict.status.value, verdict.reward) == ("passed", 1.0), verdict
            assert verifier.stats.workers_lost >= 1
            again = await verifier.verify(SLOW.replace("3000000", "3000"), spec, sandbox)
            assert again.status.value == "passed", again.feedback
        finally:
            await verifier.close()
    finally:
        shutil.rmtree(Path(data_dir), ignore_errors=True)
