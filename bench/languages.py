"""Benchmark: compile once, run many. Compiled-language batches, assay against the plain way.

Per language (C++, Java, Go by default): `--programs` distinct programs (default 100; each is
"read n numbers, print their sum" with its own constant folded in, so no two share a compile),
each an item with `--tests` I/O tests (default 10). In one run:
- assay: a real `assay serve` (bubblewrap sandbox, default settings but the result cache off,
  so that a batch sent again is run again) gets the batch, then the same batch again. The
  compiles are counted from the service's own figures (`GET /v1/verifiers`, the code
  verifier's `compile_cache.builds`): they must be one per program, then none.
- plain: what a harness without a build step does: for each test, compile the program in a
  temporary directory and run it on the test's input (`subprocess.run`, no sandbox), in a
  thread pool as wide as the cores; `--plain-programs` of them (default 10: compiling per test
  is slow; items/s is a rate, so a sample measures it).

Reported per language: items/s of assay's first batch (compiles and runs), of the batch sent
again (runs only), and of the plain way, with the ratios; compiles counted; whether every item
got the same reward both ways.

    .venv/bin/python bench/languages.py [--programs 100] [--tests 10] [--languages cpp,java,go]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The real `assay serve` of the other benchmark.
from code_sum import Service

from assay.clients import AssayClient

ROOT = Path(__file__).resolve().parent.parent

SOURCES = {
    "cpp": """#include <iostream>
int main() {{
    long n, x, s = 0;
    std::cin >> n;
    for (long i = 0; i < n; i++) {{ std::cin >> x; s += x; }}
    std::cout << s + {k} - {k} << "\\n";
}}
""",
    "java": """import java.util.*;
public class Main {{
    public static void main(String[] args) {{
        Scanner in = new Scanner(System.in);
        long n = in.nextLong(), s = 0;
        for (long i = 0; i < n; i++) s += in.nextLong();
        System.out.println(s + {k}L - {k}L);
    }}
}}
""",
    "go": """package main

import "fmt"

func main() {{
\tvar n, x, s int64
\tfmt.Scan(&n)
\tfor i := int64(0); i < n; i++ {{
\t\tfmt.Scan(&x)
\t\ts += x
\t}}
\tfmt.Println(s + {k} - {k})
}}
""",
}
# The plain way: build in `dir`, then the command that runs the result.
PLAIN = {
    "cpp": (["g++", "-std=gnu++17", "-O2", "-pipe", "-o", "main", "main.cpp"], ["./main"]),
    "java": (["javac", "-encoding", "UTF-8", "Main.java"], ["java", "-cp", ".", "Main"]),
    "go": (["go", "build", "-o", "main", "main.go"], ["./main"]),
}
FILES = {"cpp": "main.cpp", "java": "Main.java", "go": "main.go"}


def make_items(language: str, programs: int, tests: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = []
    for p in range(programs):
        source = SOURCES[language].format(k=1000 + p)
        cases = []
        for _ in range(tests):
            numbers = [rng.randint(-1000, 1000) for _ in range(rng.randint(1, 20))]
            stdin = f"{len(numbers)}\n{' '.join(map(str, numbers))}\n"
            cases.append({"stdin": stdin, "expected_stdout": f"{sum(numbers)}\n"})
        items.append(
            {
                "id": f"{language}-{p}",
                "verifier": "code",
                "completion": f"```{language}\n{source}```\n",
                "spec": {"language": language, "tests": cases, "time_limit_s": 10},
            }
        )
    return items


def plain_one(language: str, item: dict[str, Any]) -> float:
    """Per test: compile, then run; 1.0 if every test's output matches."""
    source = item["completion"].split("\n", 1)[1].rsplit("```", 1)[0]
    build, run = PLAIN[language]
    env = {**os.environ, "GOCACHE": tempfile.gettempdir() + "/assay-bench-gocache"}
    for test in item["spec"]["tests"]:
        with tempfile.TemporaryDirectory(prefix="assay-bench-") as work:
            Path(work, FILES[language]).write_text(source)
            built = subprocess.run(build, cwd=work, capture_output=True, env=env, check=False)
            if built.returncode != 0:
                return 0.0
            done = subprocess.run(
                run, cwd=work, input=test["stdin"], capture_output=True, text=True, timeout=10
            )
            if done.returncode != 0 or done.stdout.split() != test["expected_stdout"].split():
                return 0.0
    return 1.0


def run_plain(language: str, items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rewards = list(pool.map(lambda item: plain_one(language, item), items))
    return time.perf_counter() - started, rewards


def compiles(client: AssayClient) -> int:
    listing = client.describe()
    (code,) = [v for v in listing.verifiers if v.name == "code"]
    return int(code.facts["compile_cache"]["builds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--plain-programs", type=int, default=10)
    parser.add_argument("--languages", default="cpp,java,go")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "languages.json")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "benchmark": "languages",
        "cores": os.cpu_count(),
        "programs": args.programs,
        "tests": args.tests,
        "languages": {},
    }
    ok = True
    service = Service({"cache_entries": "0"})
    try:
        with AssayClient(service.url, timeout=3600) as client:
            for language in args.languages.split(","):
                items = make_items(language, args.programs, args.tests, seed=7)
                before = compiles(client)
                started = time.perf_counter()
                first = client.score(items)
                first_s = time.perf_counter() - started
                middle = compiles(client)
                started = time.perf_counter()
                again = client.score(items)
                again_s = time.perf_counter() - started
                after = compiles(client)
                sample = items[: args.plain_programs]
                plain_s, plain_rewards = run_plain(language, sample)
                rewards = [r.reward for r in first]
                disagree = [
                    items[i]["id"]
                    for i, (a, b) in enumerate(zip(rewards, plain_rewards, strict=False))
                    if a != b
                ]
                disagree += [
                    items[i]["id"]
                    for i, (a, b) in enumerate(zip(rewards, [r.reward for r in again], strict=True))
                    if a != b
                ]
                row = {
                    "compiles_first_batch": middle - before,
                    "compiles_batch_again": after - middle,
                    "assay_first_items_per_s": len(items) / first_s,
                    "assay_again_items_per_s": len(items) / again_s,
                    "plain_items_per_s": len(sample) / plain_s,
                    "passed": sum(r.status == "passed" for r in first),
                    "disagreements": disagree,
                }
                row["ratio_first"] = row["assay_first_items_per_s"] / row["plain_items_per_s"]
                row["ratio_again"] = row["assay_again_items_per_s"] / row["plain_items_per_s"]
                report["languages"][language] = row
                ok = ok and not disagree and row["compiles_first_batch"] == len(items)
                ok = ok and row["compiles_batch_again"] == 0
                print(f"{language}: {json.dumps(row)}", file=sys.stderr)
    finally:
        service.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"| language ({args.programs} programs x {args.tests} tests) | compiles, batch / again "
        "| assay items/s, batch / again | plain items/s (compile + run per test) "
        "| ratio, batch / again |\n| --- | --- | --- | --- | --- |"
    )
    for language, row in report["languages"].items():
        print(
            f"| {language} | {row['compiles_first_batch']} / {row['compiles_batch_again']} "
            f"| {row['assay_first_items_per_s']:.1f} / {row['assay_again_items_per_s']:.1f} "
            f"| {row['plain_items_per_s']:.2f} "
            f"| {row['ratio_first']:.1f}x / {row['ratio_again']:.1f}x |"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
