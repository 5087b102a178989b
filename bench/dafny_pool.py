"""Benchmark: Dafny programs through assay's warm server pool, against one `dafny` per program.

The items: `--items` DafnyBench-style programs (default 200: small methods with loops and
invariants, recursive functions, lemmas), about two thirds that verify and a third broken (a
wrong invariant, a missing decreases, a lemma without its proof), each unique item with its
own constants and names so that nothing but exact copies can be answered from a cache; 10%
are exact copies of earlier items (as GRPO groups produce).

Both ways run in the same process, one after the other, on the same items:
- assay: a real `assay serve` (bubblewrap sandbox, default settings: as many warm
  `DafnyServer.exe` processes as cores) on a loopback port, the whole set sent as one batch;
- plain: `dafny /compile:0 /nologo /timeLimit:N file.dfy` per item (Debian's Dafny 2.3, the
  same as the pool's), in a thread pool as wide as the machine's cores, with no sandbox; pass
  is DafnyBench's (`eval/utils.py`): "verified, 0 errors" in the output, and exit status 0.

Reported: items/s for both and their ratio, and whether both gave every item the same
reward. Read the ratio, not the absolute figures: machines here are shared.

    .venv/bin/python bench/dafny_pool.py [--items 200] [--rounds 1] [--json OUT.json]
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

from code_sum import Service, rss_mb  # the same `assay serve` harness

from assay.clients import AssayClient

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 30

# {n}: a name suffix; {k}: a constant. Each pair: (verifies, broken).
TEMPLATES = [
    (
        """method Abs{n}(x: int) returns (y: int)
  ensures y >= 0 && (y == x || y == -x)
  ensures y + {k} > {k} - 1
{{
  if x < 0 {{ y := -x; }} else {{ y := x; }}
}}
""",
        """method Abs{n}(x: int) returns (y: int)
  ensures y >= 0 && (y == x || y == -x)
  ensures y + {k} > {k} - 1
{{
  if x < {k} {{ y := -x; }} else {{ y := x; }}
}}
""",
    ),
    (
        """function SumTo{n}(a: seq<int>, n: nat): int
  requires n <= |a|
{{
  if n == 0 then 0 else SumTo{n}(a, n - 1) + a[n - 1] * {k}
}}

method Sum{n}(a: array<int>) returns (s: int)
  ensures s == SumTo{n}(a[..], a.Length)
{{
  s := 0;
  var i := 0;
  while i < a.Length
    invariant 0 <= i <= a.Length
    invariant s == SumTo{n}(a[..], i)
  {{
    s := s + a[i] * {k};
    i := i + 1;
  }}
}}
""",
        """function SumTo{n}(a: seq<int>, n: nat): int
  requires n <= |a|
{{
  if n == 0 then 0 else SumTo{n}(a, n - 1) + a[n - 1] * {k}
}}

method Sum{n}(a: array<int>) returns (s: int)
  ensures s == SumTo{n}(a[..], a.Length)
{{
  s := 0;
  var i := 0;
  while i < a.Length
    invariant 0 <= i <= a.Length
    invariant s == SumTo{n}(a[..], i) + {k}
  {{
    s := s + a[i] * {k};
    i := i + 1;
  }}
}}
""",
    ),
    (
        """method Max{n}(a: array<int>) returns (m: int)
  requires a.Length > 0
  ensures forall j :: 0 <= j < a.Length ==> a[j] <= m + {k}
  ensures exists j :: 0 <= j < a.Length && a[j] == m
{{
  m := a[0];
  var i := 1;
  while i < a.Length
    invariant 1 <= i <= a.Length
    invariant forall j :: 0 <= j < i ==> a[j] <= m
    invariant exists j :: 0 <= j < i && a[j] == m
  {{
    if a[i] > m {{ m := a[i]; }}
    i := i + 1;
  }}
}}
""",
        """method Max{n}(a: array<int>) returns (m: int)
  requires a.Length > 0
  ensures forall j :: 0 <= j < a.Length ==> a[j] <= m + {k}
  ensures exists j :: 0 <= j < a.Length && a[j] == m
{{
  m := a[0];
  var i := 1;
  while i < a.Length
    invariant 1 <= i <= a.Length
    invariant exists j :: 0 <= j < i && a[j] == m
  {{
    if a[i] > m {{ m := a[i]; }}
    i := i + 1;
  }}
}}
""",
    ),
    (
        """method Gcd{n}(a0: nat, b0: nat) returns (g: nat)
  requires a0 > {k} && b0 > {k}
  ensures g > 0
{{
  var a, b := a0, b0;
  while a != b
    invariant a > 0 && b > 0
    decreases a + b
  {{
    if a > b {{ a := a - b; }} else {{ b := b - a; }}
  }}
  g := a;
}}
""",
        """method Gcd{n}(a0: nat, b0: nat) returns (g: nat)
  requires a0 > {k} && b0 > {k}
  ensures g > 0
{{
  var a, b := a0, b0;
  while a != b
    invariant a > 0 && b > 0
  {{
    if a > b {{ a := a - b; }} else {{ b := b - a; }}
  }}
  g := a;
}}
""",
    ),
    (
        """function Tri{n}(n: nat): nat
{{
  if n == 0 then 0 else n + Tri{n}(n - 1)
}}

lemma {{:induction false}} TriFormula{n}(n: nat)
  ensures 2 * Tri{n}(n) == n * (n + 1)
  ensures Tri{n}(n) + {k} >= {k}
{{
  if n > 0 {{ TriFormula{n}(n - 1); }}
}}
""",
        """function Tri{n}(n: nat): nat
{{
  if n == 0 then 0 else n + Tri{n}(n - 1)
}}

lemma {{:induction false}} TriFormula{n}(n: nat)
  ensures 2 * Tri{n}(n) == n * (n + 1)
  ensures Tri{n}(n) + {k} >= {k}
{{
}}
""",
    ),
]


def make_items(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` items: 90% unique (two thirds verify), 10% exact copies of earlier ones."""
    rng = random.Random(seed)
    unique = n - n // 10
    items: list[dict[str, Any]] = []
    for i in range(unique):
        good, bad = TEMPLATES[i % len(TEMPLATES)]
        template = bad if rng.random() < 1 / 3 else good
        program = template.format(n=f"_{seed}_{i}", k=rng.randrange(1, 1000))
        items.append(
            {
                "id": f"d{i}",
                "verifier": "dafny",
                "completion": f"Here is the verified program:\n```dafny\n{program}```\n",
                "spec": {"timeout_s": TIME_LIMIT_S},
            }
        )
    for i in range(n - unique):
        copy = dict(rng.choice(items[:unique]))
        copy["id"] = f"c{i}"
        items.append(copy)
    rng.shuffle(items)
    return items


def _program_of(completion: str) -> str:
    return completion.split("```dafny\n", 1)[1].rsplit("```", 1)[0]


def plain_one(item: dict[str, Any]) -> float:
    with tempfile.TemporaryDirectory(prefix="dafny-bench-") as folder:
        path = Path(folder, "program.dfy")
        path.write_text(_program_of(item["completion"]))
        try:
            done = subprocess.run(
                ["dafny", "/compile:0", "/nologo", f"/timeLimit:{TIME_LIMIT_S}", str(path)],
                capture_output=True,
                text=True,
                timeout=TIME_LIMIT_S * 2,
            )
        except subprocess.TimeoutExpired:
            return 0.0
    ok = done.returncode == 0 and " verified, 0 errors" in done.stdout
    return 1.0 if ok else 0.0


def run_plain(items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rewards = list(pool.map(plain_one, items))
    return time.perf_counter() - started, rewards


def run_service(client: AssayClient, items: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = client.score(items)
    return time.perf_counter() - started, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="fresh items each round")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dafny_pool.json")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="ASSAY_NAME=VALUE"
    )
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)

    service = Service(settings)
    try:
        rounds = []
        with AssayClient(service.url, timeout=1800) as client:
            facts = next(v.facts for v in client.verifiers() if v.name == "dafny")
            for r in range(args.rounds):
                items = make_items(args.items, seed=r)
                if r % 2 == 0:  # alternate which goes first
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
                    f"round {r + 1}: assay {len(items) / service_s:5.2f} items/s, "
                    f"plain {len(items) / plain_s:5.2f} items/s, ratio {plain_s / service_s:.2f}"
                    f", {len(disagree)} disagreements",
                    file=sys.stderr,
                )
            facts = next(v.facts for v in client.verifiers() if v.name == "dafny")
        after_mb = rss_mb(service.process.pid)
    finally:
        service.close()

    report = {
        "benchmark": "dafny_pool",
        "cores": os.cpu_count(),
        "plain": f"dafny /compile:0 per program in a pool of {os.cpu_count()} threads",
        "settings": settings,
        "dafny": facts,
        "service_rss_after_mb": round(after_mb, 1),
        "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    ratios = sorted(r["ratio"] for r in rounds)
    print("| | items/s |\n| --- | --- |")
    print(f"| assay serve, warm Dafny servers | {rounds[-1]['service_items_per_s']:.2f} |")
    print(f"| one `dafny` per program | {rounds[-1]['plain_items_per_s']:.2f} |")
    print(f"| ratio (assay / plain), median of {len(rounds)} | {ratios[len(ratios) // 2]:.2f} |")
    return 0 if all(not r["disagreements"] for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
