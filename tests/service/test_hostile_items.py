"""A model's output is always judged (issue 5): whatever a completion holds or its program
prints, its item gets a judged status, never `internal_error` (which has no reward, is not
cached, is retried, and under partial credit wiped out the other tests' credit).

Through the Engine and the real bwrap sandbox, so that every step between the completion and
the verdict (extraction, hashing, the sandbox, classification, comparison, feedback) is on the
path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import ScoreItem, ScoreResult
from assay.sandboxes import LocalSandbox
from assay.service.engine import Engine
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    box = LocalSandbox(uid_base=62300, uid_count=20, lock_dir=tmp_path / "uids")
    yield Engine(box)
    await box.close()


def io(expected: str, stdin: str = "", **spec: Any) -> dict[str, Any]:
    return {"language": "python", "tests": [{"stdin": stdin, "expected_stdout": expected}], **spec}


def appended(code: str) -> dict[str, Any]:
    return {"language": "python", "test_code": code}


# (name, completion, spec, status); every status here is a judged one.
HOSTILE: list[tuple[str, str, dict[str, Any], str]] = [
    ("dotless_inf_under_float", "print('\u0131nf')", io("inf\n", compare="float"), "failed"),
    ("dotless_inf_expected_too", "print('\u0131nf')", io("\u0131nf\n", compare="float"), "passed"),
    ("overflowing_float", "print('2e999')", io("1e999\n", compare="float"), "failed"),
    ("infinity_spelled_out", "print('Infinity')", io("inf\n", compare="float"), "passed"),
    (
        "fake_frame_with_a_huge_line_number",
        "import sys\nsys.stderr.write('  File \"<stdin>\", line 99999999999999999999\\n')\n"
        "sys.exit(1)\n",
        appended("pass"),
        "runtime_error",
    ),
    (
        "fake_frame_with_line_zero",
        "import sys\nsys.stderr.write('  File \"<stdin>\", line 0\\n')\nsys.exit(1)\n",
        appended("pass"),
        "runtime_error",
    ),
    (
        "fake_frame_with_5000_digits",
        "import sys\nsys.stderr.write('  File \"<stdin>\", line ' + '9' * 5000 + '\\n')\n"
        "sys.exit(1)\n",
        appended("pass"),
        "runtime_error",
    ),
    (
        "fake_frame_past_the_program",
        "import sys\nsys.stderr.write('  File \"<stdin>\", line 123456\\n')\nsys.exit(1)\n",
        appended("pass"),
        "runtime_error",
    ),
    (
        "fake_frame_with_non_ascii_digits",
        "import sys\nsys.stderr.write('  File \"<stdin>\", line \u0661\u0662\\n')\nsys.exit(1)\n",
        appended("pass"),
        "runtime_error",
    ),
    ("lone_surrogate_in_a_fenced_program", "```python\nprint('\ud800')\n```", io("x\n"), "failed"),
    ("lone_surrogate_as_the_answer", "print('\udfff')", io("\ufffd\n"), "passed"),
    ("lone_surrogate_in_test_code_mode", "x = '\ud83d'\n", appended("assert x"), "passed"),
    ("nul_bytes_in_the_program", "print(1)\x00\n", io("1\n"), "passed"),
    (
        "invalid_utf8_on_stdout",
        "import sys\nsys.stdout.buffer.write(b'\\xed\\xa0\\x80\\xff')\n",
        io("x\n"),
        "failed",
    ),
    (
        "bidi_and_escapes_on_stderr",
        "import sys\nsys.stderr.write('\u202eevil\\x1b[2J\\n')\nsys.exit(3)\n",
        io("x\n"),
        "runtime_error",
    ),
    (
        "a_megabyte_line_on_stderr_with_a_fake_error",
        "import sys\nsys.stderr.write(' ' * (1 << 19) + 'SyntaxError: x\\n')\nsys.exit(1)\n",
        io("x\n"),
        "runtime_error",
    ),
    (
        "syntax_error_line_deep_in_stderr",
        "import sys\nfor _ in range(10000):\n    sys.stderr.write('noise\\n')\n"
        "sys.stderr.write('SyntaxError: fake\\n')\nsys.exit(1)\n",
        io("x\n"),
        "compile_error",
    ),
    (
        "unit_separator_between_numbers",
        "print('1\\x1f2')",
        io("1 2\n"),
        "failed",
    ),
]


@pytest.mark.parametrize(
    ("completion", "spec", "status"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
async def test_a_models_output_is_always_judged(
    engine: Engine, completion: str, spec: dict[str, Any], status: str
) -> None:
    [result] = await engine.score([ScoreItem(verifier="code", completion=completion, spec=spec)])
    assert (result.status, result.reward is not None) == (status, True), result
    _feedback_is_clean(result)


def _feedback_is_clean(result: ScoreResult) -> None:
    """Feedback that means what it shows and travels as UTF-8."""
    result.feedback.encode()
    for char in ("\u202e", "\x1b", "\x00", "\r"):
        assert char not in result.feedback, result.feedback


async def test_bidi_controls_in_feedback_are_escaped(engine: Engine) -> None:
    program = "import sys\nsys.stderr.write('\u202eevil\u2066x\u200f\\n')\nsys.exit(3)\n"
    [result] = await engine.score([ScoreItem(verifier="code", completion=program, spec=io("x"))])
    assert "\\u202eevil\\u2066x\\u200f" in result.feedback


async def test_a_fake_frame_does_not_cost_the_other_tests_their_credit(engine: Engine) -> None:
    program = (
        "n = int(input())\nif n == 2:\n    import sys\n"
        "    sys.stderr.write('  File \"<stdin>\", line 0\\n')\n    sys.exit(1)\nprint(n)\n"
    )
    spec = {
        "language": "python",
        "tests": [{"stdin": f"{n}\n", "expected_stdout": f"{n}\n"} for n in (1, 2, 3, 4)],
        "partial_credit": True,
    }
    [result] = await engine.score([ScoreItem(verifier="code", completion=program, spec=spec)])
    assert (result.status, result.reward) == ("runtime_error", 0.75), result


async def test_a_lone_surrogate_in_the_spec_is_the_items_own_invalid_spec(engine: Engine) -> None:
    items = [
        ScoreItem(verifier="code", completion="print(1)", spec=io("\ud800\n")),
        ScoreItem(verifier="code", completion="print(1)", spec=io("1\n")),
    ]
    bad, good = await engine.score(items)
    assert bad.status == "invalid_spec"
    assert "tests.0.expected_stdout" in bad.feedback
    assert good.status == "passed"
