"""Soak: a sustained mixed load on a real `assay serve`, and what the service grew by.

A separate process (this one) sends items at a fixed rate (`--rate` items/s, one item a request,
each request on its own, so that a slow item never holds the next one back) to a server on
127.0.0.1 for `--duration` seconds (default 600). The mix cycles through every verifier this
machine has: `code` with stdin/stdout tests, `code` with `test_code`, `sql` on a SQLite
database of its own and with `setup_sql`, `svg`, `dafny` when Dafny is installed, and `lean`
(no Lean can be installed here: its REPL is the tests' stand-in, tests/verifiers/
lean_standin.py, answering recorded Lean answers, started by the service through the sandbox
as the real REPL is; what is measured is the service's side of it). Every item is unique
(the result cache is off as well), and every item is right: any status but `passed` is an error,
as is any HTTP status but 200 or an exception.

Sampled every `--sample-s` seconds from /proc: the service's resident memory, open file
descriptors, processes under it, memory cgroups under its own (`assay-PID-*`), and its
temporary directories (`assay-*-PID-*` in the temp dir). Growth is the last sample less the
first one taken after the warm-up (`--warmup-s`, when the warm pools have started).

    .venv/bin/python bench/soak.py [--duration 600] [--rate 3] [--json OUT.json]

Reported (JSON on stdout): items sent, items/s, p50/p99/max latency in ms, errors (with the
first few), and for each resource its value after warm-up, at the end, the growth and the max.
No figure here is a pass mark: `tests/reliability/test_soak.py` runs it for 30 s and checks
only that there are no errors and that nothing grew past a bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SQUARE = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10">'
    '<rect x="2" y="2" width="6" height="6" fill="#c00"/></svg>'
)
DAFNY_OK = (
    "method Abs(x: int) returns (y: int)\n  ensures y >= 0\n"
    "{\n  if x < 0 { y := -x; } else { y := x; }\n}\n"
)
HAS_DAFNY = Path("/usr/lib/dafny/DafnyServer.exe").exists()
ROOT = Path(__file__).resolve().parents[1]
GCD = "theorem mathd_numbertheory_188 : Nat.gcd 180 168 = 12"
LEAN_PROOFS = 200  # a REPL is recycled after this many (ASSAY_LEAN_MAX_PROOFS)


def lean_proof(n: int) -> str:
    return f"{GCD} := by norm_num -- {n}"


def item(kind: str, n: int) -> dict[str, Any]:
    """The `n`th item of kind `kind`: unique, and right (it should pass)."""
    if kind == "code-io":
        spec: dict[str, Any] = {
            "language": "python",
            "tests": [{"stdin": f"{n} 3\n", "expected_stdout": f"{n + 3}\n"}],
        }
        completion = "a, b = map(int, input().split())\nprint(a + b)"
    elif kind == "code-test":
        spec = {"language": "python", "test_code": f"assert f({n}) == {2 * n}"}
        completion = "def f(x):\n    return 2 * x"
    elif kind == "sql-db":
        spec = {"database": "soak", "gold_sql": f"SELECT v FROM t WHERE v < {n % 100}"}
        completion = f"SELECT v FROM t WHERE v <= {n % 100 - 1}"
    elif kind == "sql-setup":
        spec = {
            "setup_sql": f"CREATE TABLE extra(v INTEGER); INSERT INTO extra VALUES ({n});",
            "gold_sql": "SELECT v FROM extra",
        }
        completion = f"SELECT v FROM extra WHERE v = {n}"
    elif kind == "svg":
        spec = {"reference_svg": SQUARE}
        completion = SQUARE.replace("<rect", f"<!-- {n} --><rect")
    elif kind == "lean":
        spec = {"theorem": GCD}
        completion = lean_proof(n)
    else:
        spec = {}
        completion = DAFNY_OK + f"// {n}\n"
    return {
        "id": f"{kind}-{n}",
        "verifier": kind.split("-")[0],
        "completion": completion,
        "spec": spec,
    }


def kinds() -> list[str]:
    out = ["code-io", "code-test", "sql-db", "sql-setup", "svg"]
    if HAS_DAFNY:
        out.append("dafny")
    out.append("lean")
    return out


def write_lean_script(folder: Path, items: int) -> tuple[list[str], str]:
    """The stand-in REPL's answers for items `-10 .. items` (each proof: the answer Lean gave
    a proof it accepts, recorded; the probe's answer for each of a REPL's proofs), the
    command that starts it, and the header the script is for."""
    sys.path.insert(0, str(ROOT))  # the script's builder lives with the tests that use it
    from tests.verifiers.lean_support import (
        HEADER,
        STANDIN,
        Script,
        env_answer,
    )

    script = Script(any_nonce=True)
    script.start()
    script.reference(GCD, "⊢ Nat.gcd 180 168 = 12")
    for n in range(-10, items):
        script.completion(lean_proof(n), 2, env_answer(1), "recorded", repeat=True)
    for proof in range(1, LEAN_PROOFS + 1):
        script.probe_proved(env=1, proof=proof, target="mathd_numbertheory_188", repeat=True)
    path = script.write(folder)
    return ["/usr/bin/python3", "-I", str(STANDIN), str(path)], HEADER


# -- what the service holds, from /proc ---------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int) -> int:
    children, count, stack = _children(), 0, [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            count += 1
            stack.append(child)
    return count


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cgroups(pid: int) -> int:
    """Memory cgroups the service made below its own (`assay-PID-*` and their jobs)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    path = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    if path is None:
        return 0
    here = Path("/sys/fs/cgroup") / path.lstrip("/")
    count = 0
    for base in here.glob(f"assay-{pid}-*"):
        count += 1 + sum(1 for p in base.rglob("*") if p.is_dir())
    return count


def _temp_dirs(pid: int) -> int:
    return sum(1 for p in Path(tempfile.gettempdir()).glob(f"assay-*-{pid}-*"))


def sample(pid: int) -> dict[str, float]:
    return {
        "rss_mb": round(_rss_mb(pid), 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "processes": _descendants(pid),
        "cgroups": _cgroups(pid),
        "temp_dirs": _temp_dirs(pid),
    }


# -- the server ---------------------------------------------------------------------------------


def start_server(
    data_dir: Path, lean: list[str], lean_header: str
) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env.update(
        ASSAY_CACHE_ENTRIES="0",
        ASSAY_SQL_DATA_DIR=str(data_dir),
        ASSAY_SQL_WORKERS="2",
        ASSAY_SVG_WORKERS="1",
        ASSAY_SVG_DEVICE="cpu",
        ASSAY_DAFNY_SERVERS="1",
        ASSAY_LEAN_REPL_COMMAND=json.dumps(lean),
        ASSAY_LEAN_PROJECT_DIR="",
        ASSAY_LEAN_HEADER=lean_header,
        ASSAY_LEAN_PATHS=json.dumps([str(Path(lean[2]).parent), str(Path(lean[3]).parent)]),
        ASSAY_LEAN_POOL_SIZE="1",
        ASSAY_LEAN_MEMORY_MB="512",
        ASSAY_LEAN_MAX_PROOFS=str(LEAN_PROOFS),
        ASSAY_LEAN_START_TIMEOUT_S="60",
    )
    argv = [sys.executable, "-m", "assay.clients.cli", "serve", "--port", str(port)]
    process = subprocess.Popen([*argv, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("assay serve did not start")


def make_database(data_dir: Path) -> None:
    """`<data_dir>/soak/soak.sqlite` (the layout of BIRD and Spider), readable by job uids."""
    folder = data_dir / "soak"
    folder.mkdir(mode=0o755)
    db = sqlite3.connect(folder / "soak.sqlite")
    with db:
        db.execute("CREATE TABLE t(v INTEGER)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    db.close()
    (folder / "soak.sqlite").chmod(0o644)


# -- the load -----------------------------------------------------------------------------------


async def load(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    mix = kinds()
    latencies: list[float] = []
    errors: list[str] = []
    samples: list[tuple[float, dict[str, float]]] = []
    pending: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        # Prime: one item of each kind, before the clock starts, so that the warm pools and
        # the svg metrics (torch) are up; growth is counted from after `--warmup-s` more.
        primed = await client.post(
            "/v1/score", json={"items": [item(k, -1 - i) for i, k in enumerate(mix)]}
        )
        statuses = [r["status"] for r in primed.json()["results"]]
        if statuses != ["passed"] * len(mix):
            errors.append(f"priming: {statuses}")

        async def one(body: dict[str, Any]) -> None:
            t0 = time.monotonic()
            try:
                response = await client.post("/v1/score", json={"items": [body]})
                if response.status_code != 200:
                    errors.append(f"{body['id']}: HTTP {response.status_code}")
                    return
                result = response.json()["results"][0]
                if result["status"] != "passed":
                    errors.append(f"{body['id']}: {result['status']}: {result['feedback'][:200]}")
                latencies.append(time.monotonic() - t0)
            except Exception as exc:  # counted, never raised: the load goes on
                errors.append(f"{body['id']}: {type(exc).__name__}: {exc}")

        start = time.monotonic()
        next_sample = start
        sent = 0
        while (now := time.monotonic()) < start + args.duration:
            if now >= next_sample:
                samples.append((now - start, sample(pid)))
                next_sample += args.sample_s
            due = int((now - start) * args.rate) + 1
            while sent < due:
                task = asyncio.ensure_future(one(item(mix[sent % len(mix)], sent)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(min(1 / args.rate, 0.2))
        if pending:
            await asyncio.wait(pending, timeout=300)
        elapsed = time.monotonic() - start
        samples.append((elapsed, sample(pid)))

    after_warmup = next((s for t, s in samples if t >= args.warmup_s), samples[-1])
    last = samples[-1][1]
    resources = {
        name: {
            "after_warmup": after_warmup[name],
            "end": last[name],
            "growth": round(last[name] - after_warmup[name], 1),
            "max": max(s[name] for _, s in samples),
        }
        for name in last
    }
    ordered = sorted(latencies)
    return {
        "duration_s": round(elapsed, 1),
        "rate": args.rate,
        "mix": mix,
        "sent": sent,
        "answered": len(latencies),
        "items_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {
            "p50": round(1000 * statistics.median(ordered), 1) if ordered else None,
            "p99": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else None,
            "max": round(1000 * ordered[-1], 1) if ordered else None,
        },
        "errors": len(errors),
        "first_errors": errors[:10],
        "resources": resources,
        "samples": [{"t": round(t, 1), **s} for t, s in samples],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=3.0, help="items a second")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="growth is counted after")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="assay-soak-"))
    data_dir.chmod(0o755)  # the sandbox's uids read the database
    make_database(data_dir)
    lean, header = write_lean_script(data_dir, int(args.duration * args.rate) + 100)
    process, url = start_server(data_dir, lean, header)
    try:
        report = asyncio.run(load(url, process.pid, args))
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
