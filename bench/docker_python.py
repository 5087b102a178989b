"""Benchmark: Python items through the docker backend, the local backend, and one container per job.

The items are code_sum.py's (read two numbers, print their sum; half right, half wrong, 10%
exact copies). In one run, on the same items:
- docker: the Engine on `DockerSandbox` (warm containers fed jobs by the runner in them);
- local: the Engine on `LocalSandbox` as `assay serve` makes it by default (bubblewrap, warm
  Python interpreters that programs are forked from, `ASSAY_WARM_PYTHON_WORKERS` = 2 x cores),
  and cold (`warm_python=0`: a sandbox start and a fresh interpreter per job, as the docker
  backend's runner starts one per job);
- per-job container: the plain way with containers, `containers.run(image, [python3, -c, code],
  remove=True)` per item with the same lock-down, in a thread pool as wide as the cores (on
  `--per-job-items` of the items, default 100, a sample whose items/s is extrapolated to all
  of them, and the output says so: it is slow).
Every way must give the same rewards. The engine is Docker where one answers, else Podman's
Docker API started for the run (as the tests do; `scripts/install test` sets Podman up).

    .venv/bin/python bench/docker_python.py [--items 1000] [--rounds 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from code_sum import make_items  # noqa: E402

from assay.clients.schema import ScoreItem  # noqa: E402
from assay.sandboxes import LocalSandbox, Sandbox  # noqa: E402
from assay.sandboxes.docker import DockerSandbox  # noqa: E402
from assay.service.engine import Engine  # noqa: E402
from tests.containers.engine import build, engine  # noqa: E402


async def through_engine(sandbox: Sandbox, items: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    cores = os.cpu_count() or 1
    box = Engine(sandbox, default_concurrency=2 * cores, cache_entries=0)
    assert await sandbox.check() is None, sandbox.unavailable_reason()
    # Warm up: as many items at once as run at once, so that every container or warm
    # interpreter the run uses has started before the clock does.
    await box.score([ScoreItem.model_validate(i) for i in items[: 2 * cores]])
    started = time.perf_counter()
    results = await box.score([ScoreItem.model_validate(i) for i in items])
    elapsed = time.perf_counter() - started
    await box.close()
    return elapsed, [r.reward for r in results]


def per_job_containers(
    url: str, image: str, items: list[dict[str, Any]]
) -> tuple[float, list[float]]:
    import docker

    client = docker.DockerClient(base_url=url, timeout=120)

    def one(item: dict[str, Any]) -> float:
        code = item["completion"].split("```python\n", 1)[1].rsplit("```", 1)[0]
        test = item["spec"]["tests"][0]
        # stdin through the command line: `containers.run` has no stdin of its own.
        program = f"import io, sys\nsys.stdin = io.StringIO({test['stdin']!r})\n{code}"
        out = client.containers.run(
            image,
            ["python3", "-c", program],
            remove=True,
            network_mode="none",
            read_only=True,
            tmpfs={"/work": "size=64m", "/tmp": "size=64m"},
            mem_limit="512m",
            pids_limit=64,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user="10001",
        )
        return 1.0 if out.decode().split() == test["expected_stdout"].split() else 0.0

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rewards = list(pool.map(one, items))
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed, rewards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument(
        "--per-job-items",
        type=int,
        default=100,
        help="items the one-container-per-job way runs (a sample of the same items; its "
        "items/s is extrapolated to all of them); 0: all",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "docker_python.json"
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rounds = []
    load_before = os.getloadavg()[0]
    with engine() as url:
        if url is None:
            print("no container engine here", file=sys.stderr)
            return 2
        image = build(url, "toolchain", tag="localhost/assay-python:bench")
        for r in range(args.rounds):
            items = make_items(args.items, seed=100 + r)
            docker_box = DockerSandbox([image], base_url=url, containers_per_image=2 * cores)
            docker_s, docker_rewards = asyncio.run(through_engine(docker_box, items))
            warm = LocalSandbox(warm_python=2 * cores)
            local_s, local_rewards = asyncio.run(through_engine(warm, items))
            cold_s, cold_rewards = asyncio.run(through_engine(LocalSandbox(warm_python=0), items))
            few = items[: args.per_job_items or len(items)]
            per_job_s, per_job_rewards = per_job_containers(url, image, few)
            disagree = sum(a != b for a, b in zip(docker_rewards, local_rewards, strict=True))
            disagree += sum(a != b for a, b in zip(docker_rewards, cold_rewards, strict=True))
            disagree += sum(a != b for a, b in zip(docker_rewards, per_job_rewards, strict=False))
            rounds.append(
                {
                    "docker_s": docker_s,
                    "local_s": local_s,
                    "local_cold_s": cold_s,
                    "per_job_s": per_job_s,
                    "per_job_items": len(few),
                    "docker_items_per_s": len(items) / docker_s,
                    "local_items_per_s": len(items) / local_s,
                    "local_cold_items_per_s": len(items) / cold_s,
                    "per_job_items_per_s": len(few) / per_job_s,
                    "disagreements": disagree,
                }
            )
            print(f"round {r + 1}: {rounds[-1]}", file=sys.stderr)
    rates = (
        "docker_items_per_s",
        "local_items_per_s",
        "local_cold_items_per_s",
        "per_job_items_per_s",
    )
    med = {k: statistics.median(r[k] for r in rounds) for k in rates}
    sampled = rounds[0]["per_job_items"] < args.items
    report = {
        "benchmark": "docker_python",
        "cores": cores,
        "items": args.items,
        "per_job_items": rounds[0]["per_job_items"],
        "per_job_extrapolated": sampled,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        **med,
        "docker_over_local": med["docker_items_per_s"] / med["local_items_per_s"],
        "docker_over_local_cold": med["docker_items_per_s"] / med["local_cold_items_per_s"],
        "docker_over_per_job": med["docker_items_per_s"] / med["per_job_items_per_s"],
        "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    n = args.items
    per_job_note = (
        f"measured on {rounds[0]['per_job_items']} of the items; the time for {n:,} is "
        "extrapolated from that rate"
        if sampled
        else "all items"
    )
    print(
        f"{n:,} Python items, {cores} cores, {args.rounds} round(s), medians; load average "
        f"{load_before:.1f} before, {report['load_average_after']:.1f} after\n"
        "| way | items/s | time for the items |\n| --- | --- | --- |\n"
        f"| docker backend (warm containers) | {med['docker_items_per_s']:.1f} | "
        f"{n / med['docker_items_per_s']:.1f} s |\n"
        f"| local backend (bwrap, warm interpreters: the default) | "
        f"{med['local_items_per_s']:.1f} | {n / med['local_items_per_s']:.1f} s |\n"
        f"| local backend (bwrap, cold: a fresh interpreter per job) | "
        f"{med['local_cold_items_per_s']:.1f} | {n / med['local_cold_items_per_s']:.1f} s |\n"
        f"| one container per job ({per_job_note}) | {med['per_job_items_per_s']:.1f} | "
        f"{n / med['per_job_items_per_s']:.1f} s{' (extrapolated)' if sampled else ''} |\n"
        f"| docker / local (warm) | {report['docker_over_local']:.2f}x | |\n"
        f"| docker / local (cold) | {report['docker_over_local_cold']:.2f}x | |\n"
        f"| docker / one container per job | {report['docker_over_per_job']:.1f}x | |\n"
        f"| items where the rewards differ | {sum(r['disagreements'] for r in rounds)} | |"
    )
    return 0 if all(r["disagreements"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
