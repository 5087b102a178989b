"""Faults in the warm tools: each kind of long-lived tool process (warm Python interpreter, SQL
database worker, SVG renderer, Dafny server, Lean REPL: the stand-in replaying recorded
answers, tests/verifiers/lean_support.py) killed with SIGKILL while a batch runs on it. Every
item is right and still gets a right result: judged right (run again on a fresh tool when its
tool was killed under it), or `internal_error` with `retryable: true` (killed again); never a
wrong reward. The next batch is judged right by the replacements the pools start."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import ScoreItem, ScoreResult
from assay.sandboxes.local import LocalSandbox
from assay.service.engine import Engine
from assay.verifiers import CodeVerifier, DafnyVerifier, LeanVerifier, SqlVerifier, SvgVerifier
from tests.conftest import needs_bwrap
from tests.verifiers.lean_support import (
    HEADER,
    Script,
    env_answer,
    standin_backend,
)
from tests.verifiers.sql_data import statements
from tests.verifiers.sql_servers import make_sqlite, shared_dir

pytestmark = needs_bwrap

DAFNY = Path("/usr/lib/dafny/DafnyServer.exe").exists()

SQUARE = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect x="2" y="2" width="6" height="6" fill="#c00"/></svg>'  # noqa: E501
GOLD = "SELECT status, COUNT(*) FROM orders GROUP BY status"
SLOW_GOLD = (
    "SELECT status, COUNT(*) FROM orders WHERE (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
    "SELECT x + 1 FROM c WHERE x < 2000000) SELECT COUNT(*) FROM c) > 0 GROUP BY status"
)
GCD = "theorem mathd_numbertheory_188 : Nat.gcd 180 168 = 12"
DAFNY_OK = "method Abs(x: int) returns (y: int)\n  ensures y >= 0\n{\n  if x < 0 { y := -x; } else { y := x; }\n}\n"  # noqa: E501


def descendants(root: int) -> list[int]:
    """The processes under `root` (this test's own), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tools(marker: str) -> int:
    """SIGKILL every process of ours whose command line holds `marker`; how many."""
    killed = 0
    for pid in descendants(os.getpid()):
        if marker in cmdline(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    folder = shared_dir("assay-faults-")
    make_sqlite(folder, "shop", statements())
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def items(kind: str, n: int, salt: str) -> list[ScoreItem]:
    out = []
    for i in range(n):
        tag = f"{salt}{i}"
        if kind == "code":
            spec: dict[str, Any] = {"language": "python", "test_code": "assert f(2) == 4"}
            completion = f"import time\ntime.sleep(0.3)\ndef f(x):\n    return x * 2  # {tag}"
        elif kind == "sql":
            spec = {"database": "shop", "gold_sql": GOLD}
            # The same rows as the gold, after 0.4 s or so of counting: a kill lands mid-query.
            completion = f"{SLOW_GOLD} -- {tag}"
        elif kind == "svg":
            spec = {"reference_svg": SQUARE}
            completion = SQUARE.replace("<rect", f"<!-- {tag} --><rect")
        elif kind == "lean":
            spec = {"theorem": GCD}
            completion = lean_proof(tag)
        else:
            spec = {}
            completion = DAFNY_OK + f"// {tag}\n"
        out.append(ScoreItem(id=tag, verifier=kind, completion=completion, spec=spec))
    return out


def lean_proof(tag: str) -> str:
    return f"{GCD} := by norm_num -- {tag}"


def lean_script(tags: list[str]) -> Script:
    """The stand-in REPL's answers: the header, the statement, each proof (Lean's recorded
    answer to a proof it accepts, after 0.3 s) and the probe's for the REPL's first 40 proofs."""
    script = Script()
    script.start()
    script.reference(GCD, "⊢ Nat.gcd 180 168 = 12")
    for tag in tags:
        script.completion(lean_proof(tag), 2, env_answer(1), "recorded", repeat=True, delay_s=0.3)
    for proof in range(1, 41):
        script.probe_proved(env=1, proof=proof, target="mathd_numbertheory_188", repeat=True)
    return script


@pytest.fixture(scope="module")
def lean_dir() -> Iterator[Path]:
    """A folder the sandbox's uid can read (pytest's own lies under a 0700 folder of root's)."""
    folder = Path(tempfile.mkdtemp(prefix="assay-faults-lean-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


N = 12  # items in the batch under fire


def engine_for(data_dir: Path, lean_dir: Path) -> Engine:
    sandbox = LocalSandbox(warm_python=2)
    tags = ["warm0", *(f"a{i}" for i in range(N)), *(f"b{i}" for i in range(4))]
    backend = standin_backend(lean_dir, lean_script(tags), pool_size=2)
    verifiers = {
        "code": CodeVerifier(),
        "sql": SqlVerifier(data_dir=str(data_dir), workers=2),
        "svg": SvgVerifier(workers=1, device="cpu"),
        "dafny": DafnyVerifier(servers=1),
        "lean": LeanVerifier(backend, default_header=HEADER),
    }
    return Engine(sandbox, verifiers=verifiers, default_concurrency=4, cache_entries=0)


# What each tool's command line holds, to kill only that tool.
MARKERS = {
    "code": "-I -B",  # the warm interpreter (`python3 -I -B`, runner.py's warm mode)
    "sql": "worker.py",
    "svg": "svg_render.py",
    "dafny": "DafnyServer.exe",
    "lean": "lean_standin.py",
}


@pytest.mark.parametrize("kind", ["code", "sql", "svg", "dafny", "lean"])
def test_a_tool_killed_mid_batch(kind: str, data_dir: Path, lean_dir: Path) -> None:
    if kind == "dafny" and not DAFNY:
        pytest.skip("Dafny is not installed (scripts/apt)")

    async def main() -> tuple[list[ScoreResult], int, list[ScoreResult]]:
        engine = engine_for(data_dir, lean_dir)
        try:
            # Warm the pool first, so that there is a tool to kill.
            warm = await engine.score(items(kind, 1, "warm"))
            assert warm[0].status == "passed", warm[0]
            batch = asyncio.ensure_future(engine.score(items(kind, N, "a")))
            killed = 0
            for _ in range(6):
                await asyncio.sleep(0.4)
                killed += await asyncio.to_thread(kill_tools, MARKERS[kind])
                if batch.done():
                    break
            first = await asyncio.wait_for(batch, 300)
            # The event loop learns of a death when the child watcher reaps the process; a
            # worker killed in the last milliseconds before a lease is not yet known dead.
            await asyncio.sleep(1.0)
            after = await asyncio.wait_for(engine.score(items(kind, 4, "b")), 300)
            return first, killed, after
        finally:
            await engine.close()

    first, killed, after = asyncio.run(main())
    gc.collect()
    assert killed > 0, f"no {kind} tool process was found to kill"
    assert len(first) == N
    # Every item is right: a result is right, or says that the item was not judged (its tool
    # killed under it twice); a kill never turns into a wrong reward.
    for result in first:
        if result.status == "internal_error":
            assert result.details.get("retryable") is True, result
            assert result.reward is None
        else:
            assert (result.status, result.reward) == ("passed", 1.0), result
    judged = sum(r.status == "passed" for r in first)
    print(f"{kind}: {killed} processes killed; {judged}/{N} judged right, the rest unjudged")
    # The pool replaced what was killed: the next batch is judged as if nothing happened.
    assert [r.status for r in after] == ["passed"] * 4, after
