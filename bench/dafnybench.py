"""DafnyBench's ground-truth programs through the `dafny` verifier: what assay makes of them.

DafnyBench (sun-wendy/DafnyBench, MIT) holds 785 verified Dafny programs (`ground_truth/`) and
the same with their hints removed (`hints_removed/`), the task a model is given. Each ground
truth is scored as a completion with its hints-removed file as the `reference`, in-process
(the Engine with its default settings: warm servers, bwrap sandbox). A perfect verifier would
pass them all; what it does not pass says where assay (or Dafny 2.3, or DafnyBench's own files)
falls short. The data is not in this repository: fetch DafnyBench and point `--dataset` at its
`DafnyBench/dataset` folder.

    .venv/bin/python bench/dafnybench.py --dataset PATH [--limit N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

from assay.clients.schema import ScoreItem
from assay.service.app import build_engine
from assay.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def score(dataset: Path, limit: int | None) -> dict[str, Any]:
    truths = sorted((dataset / "ground_truth").glob("*.dfy"))[:limit]
    items = []
    for truth in truths:
        hinted = dataset / "hints_removed" / f"{truth.stem}_no_hints.dfy"
        spec: dict[str, Any] = {"timeout_s": 60}
        if hinted.exists():
            spec["reference"] = hinted.read_text(errors="replace")
        items.append(
            ScoreItem(
                id=truth.name,
                verifier="dafny",
                completion=truth.read_text(errors="replace"),
                extract="raw",
                spec=spec,
            )
        )
    engine = build_engine(Settings())
    started = time.perf_counter()
    try:
        results = await engine.score(items)
    finally:
        await engine.close()
    elapsed = time.perf_counter() - started
    statuses = collections.Counter(r.status for r in results)
    rewritten = [r for r in results if r.details.get("rewrites")]
    reasons: dict[str, list[str]] = collections.defaultdict(list)
    for r in results:
        if r.status != "passed":
            reasons[r.status].append(f"{r.id}: {r.feedback.splitlines()[0][:160]}")
    return {
        "programs": len(items),
        "seconds": round(elapsed, 1),
        "statuses": dict(statuses),
        "rewritten": len(rewritten),
        "rewritten_passed": sum(r.status == "passed" for r in rewritten),
        "not_passed": reasons,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="DafnyBench/dataset")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dafnybench.json")
    args = parser.parse_args()
    report = asyncio.run(score(args.dataset, args.limit))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{report['programs']} programs in {report['seconds']} s: {report['statuses']}; "
        f"{report['rewritten']} rewritten for Dafny 2.x, "
        f"{report['rewritten_passed']} of them passed",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
