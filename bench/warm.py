"""Benchmark: warm execution (programs forked from warm interpreters) and multi-run jobs.

Five parts, each comparing ways in the same run (read the ratios; this machine is shared):

1. `stdin`: the 1,000 "sum" programs of `code_sum.py` (one I/O test each) through a real
   `assay serve` warm (default settings) and cold (`warm_python_workers=0`), both with the
   result cache off; the plain way (`subprocess.run([python3, "-c", code])` in a pool as wide as
   the cores, no sandbox); and the floor: one warm interpreter per core, each program run in an
   `os.fork` of it, with no isolation at all. The ways take turns, a slice of the items at a
   time (`--slices`), so that they meet the machine's same moments.
2. `io`: 200 items x 20 I/O tests, in process: one sandbox per test (the old way), one sandbox
   per item (`run_many`, cold), and warm; bubblewrap starts counted.
3. `humaneval`: the 164 canonical HumanEval solutions through `test_code`, warm and cold.
4. `latency`: one item at a time on an idle service, warm and cold: p50 and p99.
5. `cpu` (not run by default): CPU per item of every process of the warm, floor and plain
   ways, from a cgroup of the benchmark's own (needs root): less swayed by other work on the
   machine than items/s.

    .venv/bin/python bench/warm.py [--rounds 3] [--parts stdin,io,humaneval,latency,cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import code_sum

from assay.clients import AssayClient
from assay.clients.schema import CodeSpec, ScoreItem
from assay.sandboxes import LocalSandbox, ToolSpec
from assay.sandboxes.runner import WARM_IMPORTS
from assay.service.engine import Engine
from assay.verifiers import CodeVerifier
from assay.verifiers.base import Status, Verdict

ROOT = Path(__file__).resolve().parent.parent
CORES = os.cpu_count() or 1

# -- the floor: fork a warm interpreter, no isolation -------------------------------------------

FLOOR = f"""
import importlib, json, os, sys
for name in {WARM_IMPORTS!r}:
    importlib.import_module(name)
import gc
gc.freeze()
ctl_in, ctl_out = sys.stdin.buffer, sys.stdout.buffer
for line in ctl_in:
    job = json.loads(line)
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        code = 0
        try:
            exec(compile(job["code"], "main.py", "exec"), {{"__name__": "__main__"}})
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 1
        sys.stdout.flush()
        os._exit(code)
    os.close(in_r)
    os.close(out_w)
    os.write(in_w, job["stdin"].encode())
    os.close(in_w)
    chunks = []
    while chunk := os.read(out_r, 65536):
        chunks.append(chunk)
    os.close(out_r)
    _, status = os.waitpid(pid, 0)
    reply = {{"stdout": b"".join(chunks).decode(errors="replace"), "status": status}}
    ctl_out.write(json.dumps(reply).encode() + b"\\n")
    ctl_out.flush()
"""


def run_floor(items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    workers = [
        subprocess.Popen(
            [code_sum.PYTHON, "-I", "-c", FLOOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(CORES)
    ]
    free = list(workers)

    def one(item: dict[str, Any]) -> float:
        worker = free.pop()
        try:
            test = item["spec"]["tests"][0]
            code = code_sum._code_of(item["completion"])
            assert worker.stdin is not None
            assert worker.stdout is not None
            worker.stdin.write(json.dumps({"code": code, "stdin": test["stdin"]}).encode() + b"\n")
            worker.stdin.flush()
            reply = json.loads(worker.stdout.readline())
        finally:
            free.append(worker)
        ok = reply["status"] == 0 and reply["stdout"].split() == test["expected_stdout"].split()
        return 1.0 if ok else 0.0

    time.sleep(0.5)  # the interpreters' start is not what is measured
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CORES) as pool:
        rewards = list(pool.map(one, items))
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.kill()
        worker.wait()
    return elapsed, rewards


def part_stdin(rounds: int, n: int, slices: int) -> dict[str, Any]:
    """Each round's items are cut into `slices` slices, and every way runs each slice in turn
    (the order rotating): the ways meet the same moments of this machine, whose speed drifts by
    a fifth within a minute, and each way's items/s is its items over its time summed."""
    warm = code_sum.Service({"cache_entries": "0"})
    cold = code_sum.Service({"cache_entries": "0", "warm_python_workers": "0"})
    out: list[dict[str, Any]] = []
    try:
        with AssayClient(warm.url, timeout=600) as wc, AssayClient(cold.url, timeout=600) as cc:
            wc.score(code_sum.make_items(2 * CORES, seed=999))  # start the warm workers
            for r in range(rounds):
                items = code_sum.make_items(n, seed=r)
                ways = {
                    "warm": lambda it: code_sum.run_service(wc, it),
                    "cold": lambda it: code_sum.run_service(cc, it),
                    "plain": code_sum.run_plain,
                    "floor": run_floor,
                }
                got: dict[str, Any] = {w: {"seconds": 0.0, "rewards": []} for w in ways}
                size = -(-n // slices)
                for k, start in enumerate(range(0, n, size)):
                    part = items[start : start + size]
                    names = list(ways)
                    for way in names[k % len(names) :] + names[: k % len(names)]:
                        seconds, results = ways[way](part)
                        got[way]["seconds"] += seconds
                        got[way]["rewards"] += [getattr(x, "reward", x) for x in results]
                for way in got:
                    got[way]["items_per_s"] = n / got[way]["seconds"]
                agree = all(got[w]["rewards"] == got["floor"]["rewards"] for w in got)
                row = {w: round(got[w]["items_per_s"], 1) for w in got}
                row["agree"] = agree
                out.append(row)
                print(f"stdin round {r + 1}: {row}", file=sys.stderr)
    finally:
        warm.close()
        cold.close()
    med = {w: statistics.median(r[w] for r in out) for w in ("warm", "cold", "plain", "floor")}
    return {
        "rounds": out,
        "median_items_per_s": med,
        "warm_over_plain": round(med["warm"] / med["plain"], 2),
        "warm_over_floor": round(med["warm"] / med["floor"], 2),
        "warm_over_cold": round(med["warm"] / med["cold"], 2),
    }


# -- multi-run jobs -----------------------------------------------------------------------------


class Counting(LocalSandbox):
    """Counts the bubblewrap sandboxes started (jobs, runners, warm workers)."""

    starts = 0

    async def _run_checked(self, job: Any) -> Any:
        Counting.starts += 1
        return await super()._run_checked(job)

    async def _start(self, spec: ToolSpec, runner_mode: str | None = None) -> Any:
        Counting.starts += 1
        return await super()._start(spec, runner_mode)


class PerTest(CodeVerifier):
    """The code verifier as it was: one sandbox run per I/O test."""

    async def _run_io_tests(self, payload: str, spec: CodeSpec, *a: Any) -> Any:  # type: ignore[override]
        from assay.sandboxes import Job

        language, limits, sandbox = a
        assert spec.tests is not None
        passed = 0
        for test in spec.tests:
            job = Job(language.run, {language.file: payload}, test.stdin.encode(), limits)
            run = await sandbox.run(job)
            passed += (
                run.exit_code == 0 and run.stdout.decode().split() == test.expected_stdout.split()
            )
        # A verdict, as the verifier's own method returns (its `verify` reads it).
        if passed == len(spec.tests):
            return Verdict(Status.PASSED, 1.0)
        return Verdict(Status.FAILED, 0.0)


async def _io_once(way: str, items: int, tests: int) -> dict[str, Any]:
    sandbox = Counting(warm_python=2 * CORES if way == "warm" else 0)
    verifier = PerTest() if way == "per_test" else CodeVerifier()
    await sandbox.check()
    specs = []
    for i in range(items):
        pairs = [(i + t, 2 * t) for t in range(tests)]
        specs.append(
            CodeSpec.model_validate(
                {
                    "language": "python",
                    "tests": [
                        {"stdin": f"{a} {b}\n", "expected_stdout": f"{a + b}\n"} for a, b in pairs
                    ],
                }
            )
        )
    code = code_sum.CORRECT[0]
    gate = asyncio.Semaphore(2 * CORES)

    async def one(spec: CodeSpec) -> Any:
        async with gate:
            return await verifier.verify(code, spec, sandbox)

    Counting.starts = 0
    started = time.perf_counter()
    verdicts = await asyncio.gather(*(one(s) for s in specs))
    seconds = time.perf_counter() - started
    starts = Counting.starts
    await sandbox.close()
    ok = all(v.reward == 1.0 for v in verdicts)
    return {"items_per_s": round(items / seconds, 2), "sandbox_starts": starts, "all_passed": ok}


def part_io(rounds: int, items: int, tests: int) -> dict[str, Any]:
    out = []
    for r in range(rounds):
        row = {w: asyncio.run(_io_once(w, items, tests)) for w in ("per_test", "run_many", "warm")}
        out.append(row)
        print(f"io round {r + 1}: {row}", file=sys.stderr)
    med = {
        w: statistics.median(r[w]["items_per_s"] for r in out)
        for w in ("per_test", "run_many", "warm")
    }
    return {"items": items, "tests": tests, "rounds": out, "median_items_per_s": med}


# -- HumanEval and latency ------------------------------------------------------------------------


def part_humaneval(rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.verifiers.test_humaneval import humaneval

    problems = humaneval()
    items = [
        ScoreItem(
            id=p["task_id"],
            verifier="code",
            completion=p["prompt"] + p["canonical_solution"],
            extract="raw",
            spec={
                "language": "python",
                "test_code": f"{p['test']}\n\ncheck({p['entry_point']})\n",
            },
        )
        for p in problems
    ]

    async def once(warm: bool) -> tuple[float, int]:
        sandbox = LocalSandbox(warm_python=2 * CORES if warm else 0)
        engine = Engine(sandbox, cache_entries=0)
        await sandbox.check()
        started = time.perf_counter()
        results = await engine.score(items)
        seconds = time.perf_counter() - started
        await sandbox.close()
        return len(items) / seconds, sum(r.status == "passed" for r in results)

    out = []
    for r in range(rounds):
        (w, wp), (c, cp) = asyncio.run(once(True)), asyncio.run(once(False))
        out.append({"warm": round(w, 1), "cold": round(c, 1), "passed": [wp, cp]})
        print(f"humaneval round {r + 1}: {out[-1]}", file=sys.stderr)
    med = {w: statistics.median(r[w] for r in out) for w in ("warm", "cold")}
    return {"problems": len(items), "rounds": out, "median_items_per_s": med}


def part_latency(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for way, settings in (("warm", {}), ("cold", {"warm_python_workers": "0"})):
        service = code_sum.Service({"cache_entries": "0", **settings})
        try:
            with AssayClient(service.url, timeout=60) as client:
                client.score(code_sum.make_items(4, seed=1234))
                times = []
                for item in code_sum.make_items(n, seed=77):
                    started = time.perf_counter()
                    client.score([item])
                    times.append((time.perf_counter() - started) * 1000)
        finally:
            service.close()
        times.sort()
        out[way] = {
            "p50_ms": round(times[len(times) // 2], 1),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
        }
        print(f"latency {way}: {out[way]}", file=sys.stderr)
    return out


# -- CPU per item ---------------------------------------------------------------------------------


class CpuCgroup:
    """A cgroup holding this process and everything it starts, for their CPU time together
    (cgroup v1's cpuacct or v2; needs root). Its usage takes in processes that have exited,
    which `getrusage` misses when nobody waits for them (killed sandboxes)."""

    def __init__(self) -> None:
        v1 = Path("/sys/fs/cgroup/cpuacct")
        if v1.is_dir():
            self.path, self.back = v1 / f"assay-bench-{os.getpid()}", v1
        else:
            here = Path("/proc/self/cgroup").read_text().split("::", 1)[-1].strip()
            self.back = Path("/sys/fs/cgroup") / here.lstrip("/")
            self.path = Path("/sys/fs/cgroup") / f"assay-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def used_s(self) -> float:
        if (self.path / "cpuacct.usage").exists():
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def close(self) -> None:
        (self.back / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # a process of the last way still leaving
                time.sleep(0.1)


def part_cpu(n: int) -> dict[str, Any]:
    """CPU milliseconds per item, every process of each way counted (the service, its
    sandboxes, the client; the floor's and plain's drivers and children), warm against the
    floor and plain, 1,000 stdin programs each."""
    try:
        group = CpuCgroup()
    except OSError as exc:
        print(f"cpu: no cgroup of its own here ({exc}); skipped", file=sys.stderr)
        return {"skipped": str(exc)}
    out: dict[str, Any] = {}
    try:
        warm = code_sum.Service({"cache_entries": "0"})
        try:
            with AssayClient(warm.url, timeout=600) as client:
                client.score(code_sum.make_items(2 * CORES, seed=999))
                items = code_sum.make_items(n, seed=5)
                ways = {
                    "warm": lambda: code_sum.run_service(client, items),
                    "floor": lambda: run_floor(items),
                    "plain": lambda: code_sum.run_plain(items),
                }
                for way, run in ways.items():
                    before = group.used_s()
                    seconds, _ = run()
                    used = group.used_s() - before
                    out[way] = {
                        "cpu_ms_per_item": round(used / n * 1000, 2),
                        "items_per_s": round(n / seconds, 1),
                    }
                    print(f"cpu {way}: {out[way]}", file=sys.stderr)
        finally:
            warm.close()
    finally:
        group.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=1000, help="stdin part")
    parser.add_argument(
        "--slices", type=int, default=5, help="stdin part: slices each way runs in turn"
    )
    parser.add_argument("--io-items", type=int, default=200)
    parser.add_argument("--io-tests", type=int, default=20)
    parser.add_argument("--latency-items", type=int, default=200)
    parser.add_argument("--parts", default="stdin,io,humaneval,latency")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "warm.json")
    args = parser.parse_args()
    parts = args.parts.split(",")
    report: dict[str, Any] = {"benchmark": "warm", "cores": CORES}
    if "stdin" in parts:
        report["stdin"] = part_stdin(args.rounds, args.items, args.slices)
    if "io" in parts:
        report["io"] = part_io(args.rounds, args.io_items, args.io_tests)
    if "humaneval" in parts:
        report["humaneval"] = part_humaneval(args.rounds)
    if "latency" in parts:
        report["latency"] = part_latency(args.latency_items)
    if "cpu" in parts:
        report["cpu"] = part_cpu(args.items)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in report.items() if k != "stdin"}
            | (
                {"stdin": {k: v for k, v in report["stdin"].items() if k != "rounds"}}
                if "stdin" in report
                else {}
            ),
            indent=1,
        )
    )
    return 0 if all(r["agree"] for r in report.get("stdin", {}).get("rounds", [])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
