"""Benchmark: one GRPO step's rewards (64 prompts x 16 completions, Python items) through the TRL
adapter, against calling the service one item per request as common per-sample reward
functions do.

The step: 64 problems ("read n, print f(n)", each with its own 3 I/O tests), 16 completions
each, drawn from right and wrong programs and a syntax error; completions of one prompt repeat
as a sampled group's do. Every round uses fresh problems, and each way gets its own copy
(a nonce in a comment), so that neither is answered from the other's cache.

Timed is what the trainer waits for: the call of the reward function with the step's 1,024
completions, as TRL makes it.
- adapter: `assay_reward(url)` from assay.clients.trainers.trl: one call, cut by the client
  into concurrent chunks;
- per sample: a reward function that posts each completion on its own to /v1/score, one after
  the other (what a `for completion in completions: requests.post(...)` reward function does);
- per sample, 16 threads: the same with a pool of 16 threads (a per-sample function made
  concurrent by hand).
All three against one real `assay serve` (bubblewrap sandbox, default settings), and all must
give every completion the same reward.

    .venv/bin/python bench/trl_step.py [--prompts 64] [--group 16] [--rounds 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from assay.clients.trainers.trl import assay_reward
from tests.conftest import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
RIGHT = [
    "n = int(input())\nprint(n * {k} + 1)\n",
    "import sys\nn = int(sys.stdin.read())\nprint({k} * n + 1)\n",
    "def f(n):\n    return n * {k} + 1\n\nprint(f(int(input())))\n",
]
WRONG = [
    "n = int(input())\nprint(n * {k})\n",
    "n = int(input())\nprint(n + {k} + 1)\n",
    "n = int(input())\nprint(n * {k} + 1\n",  # a syntax error
]


def make_step(prompts: int, group: int, seed: int, nonce: str) -> dict[str, list[Any]]:
    """TRL's reward-function arguments for one step: completions and the dataset columns."""
    rng = random.Random(seed)
    columns: dict[str, list[Any]] = {"prompts": [], "completions": [], "verifier": [], "spec": []}
    for p in range(prompts):
        k = rng.randint(2, 99)
        tests = [{"stdin": f"{n}\n", "expected_stdout": f"{n * k + 1}\n"} for n in (0, 7, 1234)]
        spec = json.dumps({"language": "python", "tests": tests})
        # A group: a few distinct programs, sampled with repeats.
        pool = [t.format(k=k) for t in rng.sample(RIGHT, 2) + rng.sample(WRONG, 2)]
        for _ in range(group):
            code = rng.choice(pool)
            columns["prompts"].append(f"problem {p}: read n, print n*{k}+1")
            columns["completions"].append(f"```python\n# {nonce}\n{code}```")
            columns["verifier"].append("code")
            columns["spec"].append(spec)
    return columns


def per_sample(url: str, threads: int) -> Callable[..., list[float | None]]:
    """The common reward function: one POST per completion."""
    http = httpx.Client(base_url=url, timeout=600)

    def one(args: tuple[str, str]) -> float | None:
        completion, spec = args
        item = {"verifier": "code", "completion": completion, "spec": json.loads(spec)}
        response = http.post("/v1/score", json={"items": [item]})
        response.raise_for_status()
        reward: float | None = response.json()["results"][0]["reward"]
        return reward

    def reward(
        prompts: list[str], completions: list[str], spec: list[str], **_: Any
    ) -> list[float | None]:
        pairs = list(zip(completions, spec, strict=True))
        if threads <= 1:
            return [one(p) for p in pairs]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, pairs))

    return reward


def timed(
    fn: Callable[..., list[float | None]], step: dict[str, list[Any]]
) -> tuple[float, list[float | None]]:
    t0 = time.perf_counter()
    rewards = fn(**step)
    return time.perf_counter() - t0, rewards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "trl_step.json")
    args = parser.parse_args()

    server = start_server()
    adapter = assay_reward(server.url, log=False)
    ways = {
        "adapter": adapter,
        "per_sample": per_sample(server.url, 1),
        "per_sample_16_threads": per_sample(server.url, 16),
    }
    rounds = []
    try:
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            seconds: dict[str, float] = {}
            rewards: dict[str, list[float | None]] = {}
            for name in order:
                step = make_step(args.prompts, args.group, seed=r, nonce=f"{name}-{r}")
                seconds[name], rewards[name] = timed(ways[name], step)
                print(f"round {r + 1}: {name}: {seconds[name]:.2f} s", file=sys.stderr)
            agree = rewards["adapter"] == rewards["per_sample"] == rewards["per_sample_16_threads"]
            n = args.prompts * args.group
            rounds.append(
                {
                    "completions": n,
                    "seconds": seconds,
                    "speedup_vs_per_sample": seconds["per_sample"] / seconds["adapter"],
                    "speedup_vs_per_sample_16_threads": (
                        seconds["per_sample_16_threads"] / seconds["adapter"]
                    ),
                    "mean_reward": sum(x or 0.0 for x in rewards["adapter"]) / n,
                    "rewards_agree": agree,
                }
            )
    finally:
        adapter.close()  # type: ignore[attr-defined]
        stop_server(server)

    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    sec = lambda way: statistics.median(r["seconds"][way] for r in rounds)  # noqa: E731
    report = {
        "benchmark": "trl_step",
        "cores": os.cpu_count(),
        "prompts": args.prompts,
        "group": args.group,
        "median_speedup_vs_per_sample": med("speedup_vs_per_sample"),
        "median_speedup_vs_per_sample_16_threads": med("speedup_vs_per_sample_16_threads"),
        "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    n = args.prompts * args.group
    print(
        f"| reward function ({args.prompts} x {args.group} = {n} completions) "
        "| trainer waits | vs adapter |\n| --- | --- | --- |\n"
        f"| assay TRL adapter, one call | {sec('adapter'):.2f} s | 1 |\n"
        f"| one request per completion | {sec('per_sample'):.2f} s "
        f"| {report['median_speedup_vs_per_sample']:.1f}x slower |\n"
        f"| one request per completion, 16 threads | {sec('per_sample_16_threads'):.2f} s "
        f"| {report['median_speedup_vs_per_sample_16_threads']:.1f}x slower |"
    )
    return 0 if all(r["rewards_agree"] for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
