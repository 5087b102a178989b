"""Benchmark: what assay's Lean checks cost per proof, against the plain way, on a warm REPL.

No Lean runs here, so the REPL is the tests' stand-in (tests/verifiers/lean_standin.py), which
answers recorded requests with recorded bytes at once: what is measured is assay's own cost
(reading the tokens, the statement check, the extra REPL round trip of its probe, parsing), not
Lean's. With a real Lean the probe's own elaboration adds to assay's side (not measured here),
and both sides pay Lean's time for the proof itself.

Both ways run the same `--proofs` distinct completions (all proofs of the recorded
`mathd_numbertheory_188`, which the stand-in answers as H20231020 records: no message) in the
same process, one after the other, each on one warm REPL started through the real sandbox:
- assay: `LeanVerifier.verify` (token checks, statement text, the completion, the probe);
- plain: what Kimina Lean Server's clients and DeepSeek-Prover do: send the completion to a
  warm REPL on the header's env, valid when no error and no sorry (one round trip).

    .venv/bin/python bench/lean_overhead.py [--proofs 300] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assay.clients.schema import LeanSpec  # noqa: E402
from assay.sandboxes import LocalSandbox, ToolSpec  # noqa: E402
from assay.verifiers.base import Status  # noqa: E402
from assay.verifiers.lean import LeanVerifier  # noqa: E402
from assay.verifiers.lean_repl import LeanRepl  # noqa: E402
from tests.verifiers.lean_support import (  # noqa: E402
    HEADER,
    STANDIN,
    Script,
    env_answer,
    standin_backend,
)

GCD = "theorem mathd_numbertheory_188 : Nat.gcd 180 168 = 12"


def completions(n: int) -> list[str]:
    return [f"{GCD} := by\n  -- attempt {i}\n  norm_num" for i in range(n)]


def script_for(bodies: list[str]) -> Script:
    script = Script()
    script.start()
    script.reference(GCD, "⊢ Nat.gcd 180 168 = 12")
    for k, body in enumerate(bodies, start=1):
        # assay sends it on the reference's env (2), the plain way on the header's (0)
        script.completion(body, 2, env_answer(3), "recorded", repeat=True)
        script.completion(body, 0, env_answer(3), "recorded", repeat=True)
        script.probe_proved(env=3, proof=k, target="mathd_numbertheory_188")
    return script


async def run(n: int, folder: Path) -> dict[str, Any]:
    bodies = completions(n)
    sandbox = LocalSandbox()
    try:
        script = script_for(bodies)
        backend = standin_backend(folder, script, max_proofs=n + 1)
        verifier = LeanVerifier(backend, default_header=HEADER)
        spec = LeanSpec(theorem=GCD)
        t0 = time.perf_counter()
        first = await verifier.verify(bodies[0], spec, sandbox)
        start_s = time.perf_counter() - t0
        assay_times, assay_passed = [], int(first.status is Status.PASSED)
        for body in bodies[1:]:
            t = time.perf_counter()
            verdict = await verifier.verify(body, spec, sandbox)
            assay_times.append(time.perf_counter() - t)
            assay_passed += verdict.status is Status.PASSED
        await verifier.close()

        # The plain way, on a REPL of the same stand-in and sandbox, the header imported.
        path = script.write(folder)
        tool = await sandbox.spawn(
            ToolSpec(
                argv=("/usr/bin/python3", "-I", str(STANDIN), str(path)),
                ro_paths=(str(STANDIN.parent), str(folder)),
            )
        )
        repl = LeanRepl(tool)
        header = script.exchanges[0]["request"]["cmd"]
        await repl.command(header, None, 30)
        plain_times, plain_passed = [], 0
        for body in bodies:
            t = time.perf_counter()
            answer = await repl.command(body, 0, 30)
            errors = [m for m in answer.get("messages") or [] if m["severity"] == "error"]
            plain_passed += not errors and not answer.get("sorries")
            plain_times.append(time.perf_counter() - t)
        await repl.close()
    finally:
        await sandbox.close()
    assay_ms = statistics.median(assay_times) * 1000
    plain_ms = statistics.median(plain_times) * 1000
    return {
        "proofs": n,
        "repl_start_and_first_proof_ms": round(start_s * 1000, 1),
        "assay_ms_per_proof": round(assay_ms, 2),
        "plain_ms_per_proof": round(plain_ms, 2),
        "ratio": round(assay_ms / plain_ms, 2),
        "assay_passed": assay_passed,
        "plain_passed": plain_passed,
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proofs", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="assay-bench-lean-"))
    folder.chmod(0o755)  # the sandbox's uid reads the script from it
    try:
        report = asyncio.run(run(args.proofs, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("| | ms per proof (median) |")
    print("| --- | --- |")
    print(f"| assay (checks + probe) | {report['assay_ms_per_proof']} |")
    print(f"| plain (one round trip) | {report['plain_ms_per_proof']} |")
    print(f"| ratio (assay / plain) | {report['ratio']} |")
    start = report["repl_start_and_first_proof_ms"]
    print(f"REPL start through the sandbox + first proof: {start} ms")
    print(
        f"passed: assay {report['assay_passed']}, plain {report['plain_passed']} of {args.proofs}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
