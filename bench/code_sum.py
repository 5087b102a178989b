"""Benchmark: Python "read two numbers, print their sum" items, assay against the plain way.

The items: `--items` programs (default 1,000), half correct and half wrong, of which 10% are
exact copies of earlier items (as GRPO groups produce). Each unique item has its own test
numbers, so nothing but the duplicates can be answered from a cache.

Both ways run in the same process, one after the other, on the same items:
- assay: a real `assay serve` (bubblewrap sandbox, default settings) on a loopback port, the
  whole set sent as one batch with the Python client, as a trainer sends a step's completions;
- plain: `subprocess.run([python3, "-c", code], input=stdin, timeout=...)` per item, in a
  thread pool as wide as the machine's cores, output compared token by token. That is what
  many RL repositories do; it runs the model's code with no sandbox at all.

Reported: items/s for both and their ratio, whether both gave every item the same reward, and
the service's resident memory at idle and after the run. Machines here are noisy: read the
ratio, not the absolute figures, and run `--rounds 3` when a figure matters.

    .venv/bin/python bench/code_sum.py [--items 1000] [--rounds 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from assay.clients import AssayClient

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"  # the interpreter the sandbox runs: the same for both ways

CORRECT = [
    "a, b = map(int, input().split())\nprint(a + b)\n",
    "import sys\nx, y = sys.stdin.read().split()\nprint(int(x) + int(y))\n",
    "nums = [int(t) for t in input().split()]\nprint(sum(nums))\n",
    "def main():\n    a, b = (int(v) for v in input().split())\n    print(a + b)\n\nmain()\n",
]
WRONG = [
    "a, b = map(int, input().split())\nprint(a - b)\n",
    "a, b = map(int, input().split())\nprint(a * b)\n",
    "a, b = map(int, input().split())\nprint(a + b + 1)\n",
    "a, b = input().split()\nprint(a + b)\n",
]


def make_items(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` items: 90% unique (half correct, half wrong), 10% exact copies of earlier ones."""
    rng = random.Random(seed)
    unique = n - n // 10
    items = []
    for i in range(unique):
        a, b = rng.randint(-(10**6), 10**6), rng.randint(-(10**6), 10**6)
        code = rng.choice(CORRECT if i % 2 == 0 else WRONG)
        completion = f"Here is my solution.\n```python\n{code}```\n"
        spec = {
            "language": "python",
            "tests": [{"stdin": f"{a} {b}\n", "expected_stdout": f"{a + b}\n"}],
        }
        item = {"id": f"s{seed}-{i}", "verifier": "code", "completion": completion, "spec": spec}
        items.append(item)
    for j in range(n - unique):
        twin = dict(rng.choice(items[:unique]))
        twin["id"] = f"s{seed}-dup{j}"
        items.append(twin)
    rng.shuffle(items)
    return items


# -- the plain way ---------------------------------------------------------------------------


def _code_of(completion: str) -> str:
    return completion.split("```python\n", 1)[1].rsplit("```", 1)[0]


def plain_one(item: dict[str, Any]) -> float:
    test = item["spec"]["tests"][0]
    try:
        done = subprocess.run(
            [PYTHON, "-c", _code_of(item["completion"])],
            input=test["stdin"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        return 0.0
    ok = done.returncode == 0 and done.stdout.split() == test["expected_stdout"].split()
    return 1.0 if ok else 0.0


def run_plain(items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rewards = list(pool.map(plain_one, items))
    return time.perf_counter() - started, rewards


# -- the service -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Service:
    """A real `assay serve` process on a free loopback port: default settings, but `settings`."""

    def __init__(self, settings: dict[str, str]) -> None:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
        env.update({f"ASSAY_{k.upper()}": v for k, v in settings.items()})
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "assay.clients.cli",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"assay serve exited with {self.process.returncode}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if ready.status_code != 200:
                raise RuntimeError(f"assay serve is not ready: {ready.text}")
            return
        raise RuntimeError("assay serve did not start within 60 s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def run_service(client: AssayClient, items: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = client.score(items)
    return time.perf_counter() - started, results


# -- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="fresh items each round")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "code_sum.json")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting (ASSAY_NAME), e.g. sandbox_memory_cgroups=false",
    )
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)

    service = Service(settings)
    try:
        idle_mb = rss_mb(service.process.pid)
        rounds = []
        with AssayClient(service.url, timeout=600) as client:
            for r in range(args.rounds):
                items = make_items(args.items, seed=r)
                # Alternate which goes first, so that neither always meets a warmer machine.
                if r % 2 == 0:
                    plain_s, plain_rewards = run_plain(items)
                    service_s, results = run_service(client, items)
                else:
                    service_s, results = run_service(client, items)
                    plain_s, plain_rewards = run_plain(items)
                rewards = [res.reward for res in results]
                pairs = zip(rewards, plain_rewards, strict=True)
                disagree = [items[i]["id"] for i, (a, b) in enumerate(pairs) if a != b]
                statuses: dict[str, int] = {}
                for res in results:
                    statuses[res.status] = statuses.get(res.status, 0) + 1
                rounds.append(
                    {
                        "items": len(items),
                        "service_items_per_s": len(items) / service_s,
                        "plain_items_per_s": len(items) / plain_s,
                        "ratio": plain_s / service_s,
                        "service_s": service_s,
                        "plain_s": plain_s,
                        "cached": sum(res.cached for res in results),
                        "statuses": statuses,
                        "disagreements": disagree,
                    }
                )
                print(
                    f"round {r + 1}: assay {len(items) / service_s:6.1f} items/s, "
                    f"plain {len(items) / plain_s:6.1f} items/s, ratio {plain_s / service_s:.2f}, "
                    f"{len(disagree)} disagreements",
                    file=sys.stderr,
                )
        after_mb = rss_mb(service.process.pid)
    finally:
        service.close()

    report = {
        "benchmark": "code_sum",
        "cores": os.cpu_count(),
        "plain": f"subprocess.run([{PYTHON}, '-c', code]) in a pool of {os.cpu_count()} threads",
        "settings": settings,
        "service_rss_idle_mb": round(idle_mb, 1),
        "service_rss_after_mb": round(after_mb, 1),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    print(
        "| way | items/s |\n| --- | --- |\n"
        f"| assay serve (bwrap sandbox), one batch | {med('service_items_per_s'):.1f} |\n"
        f"| plain subprocess.run, {os.cpu_count()} threads, no sandbox | "
        f"{med('plain_items_per_s'):.1f} |\n"
        f"| ratio (assay / plain) | {report['median_ratio']:.2f} |\n"
        f"| service RSS idle / after | {idle_mb:.0f} MB / {after_mb:.0f} MB |\n"
        f"| items where the rewards differ | {sum(len(r['disagreements']) for r in rounds)} |"
    )
    return 0 if all(not r["disagreements"] for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
