"""`test_code` with `entry_point`: the test code in a harness process apart from the program,
in the real bwrap sandbox. The cheat table (tests/verifiers/cheats.py) runs in both modes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import CodeSpec
from assay.sandboxes import LocalSandbox
from assay.sandboxes.languages import languages
from assay.verifiers import CodeVerifier, Status
from tests.conftest import needs_bwrap
from tests.verifiers.cheats import CHEATS, TESTS

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> LocalSandbox:
    return LocalSandbox(lock_dir=tmp_path_factory.mktemp("uids"))


async def judge(
    sandbox: LocalSandbox, payload: str, **spec: Any
) -> tuple[Status, float | None, str, dict[str, Any]]:
    verifier = CodeVerifier()
    parsed = CodeSpec.model_validate({"language": "python", "time_limit_s": 3, **spec})
    assert verifier.check(parsed, sandbox) is None
    verdict = await verifier.verify(payload, parsed, sandbox)
    return verdict.status, verdict.reward, verdict.feedback, verdict.details


def test_the_table_is_large_enough() -> None:
    assert len(CHEATS) >= 20
    assert sum(c.in_process_passes for c in CHEATS.values()) >= 8


@pytest.mark.parametrize("name", list(CHEATS))
async def test_cheats_score_0_isolated(sandbox: LocalSandbox, name: str) -> None:
    cheat = CHEATS[name]
    tests = cheat.tests or TESTS
    status, reward, feedback, details = await judge(
        sandbox, cheat.program, test_code=tests, entry_point="add"
    )
    assert reward == 0.0, (status, feedback)
    assert details["mode"] == "isolated"
    # The table's record of the in-process mode stays true.
    status, reward, feedback, details = await judge(sandbox, cheat.program, test_code=tests)
    assert reward == (1.0 if cheat.in_process_passes else 0.0), (status, feedback)
    assert details["mode"] == "in_process"


ADD = "def add(a, b):\n    return a + b\n"


async def test_correct_program_passes(sandbox: LocalSandbox) -> None:
    status, reward, feedback, details = await judge(
        sandbox, ADD, test_code=TESTS, entry_point="add"
    )
    assert (status, reward) == (Status.PASSED, 1.0), feedback
    assert details["mode"] == "isolated"


async def test_feedback_shows_the_failing_line_not_what_the_program_names(
    sandbox: LocalSandbox,
) -> None:
    # The program writes a traceback naming the hidden test's line; only the harness's own
    # traceback of the test code counts.
    fake = (
        "import sys\n"
        "sys.stderr.write('Traceback (most recent call last):\\n'\n"
        "                 '  File \"<test>\", line 3, in <module>\\nAssertionError\\n')\n"
        "print('  File \"<test>\", line 3')\n"
        "def add(a, b):\n    return a - b\n"
    )
    tests = "assert add(0, 0) == 0\nassert add(2, 2) == 4\nassert add(5, 5) == 10  # SECRET\n"
    status, reward, feedback, _ = await judge(sandbox, fake, test_code=tests, entry_point="add")
    assert (status, reward) == (Status.FAILED, 0.0)
    assert 'File "<test>", line 2\n    assert add(2, 2) == 4' in feedback
    assert "SECRET" not in feedback
    assert "line 3" not in feedback


ECHO = "def echo(*args, **kwargs):\n    return args[0] if not kwargs else kwargs\n"
ROUND_TRIP = """
values = [None, True, False, 0, -1, 2**200, -(3**90), 1.5, -0.0, float('inf'), '', 'héllo\\x00',
          b'', b'\\x00\\xff', [], [1, [2, [3]]], (), (1, 'a', (None,)), {}, {1: 'a', (1, 2): [3]},
          set(), {1, 2, 'x'}, frozenset({(1, 2)}), {'k': {frozenset(): b'v'}}]
for v in values:
    got = echo(v)
    assert got == v and type(got) is type(v), (v, got)
assert repr(echo(-0.0)) == '-0.0'
got = echo(float('nan'))
assert got != got
assert echo(1, a=[1], b=(2,)) == {'a': [1], 'b': (2,)}
assert type(echo(True)) is bool and type(echo(1)) is int
"""


async def test_plain_data_crosses_exactly(sandbox: LocalSandbox) -> None:
    status, reward, feedback, _ = await judge(
        sandbox, ECHO, test_code=ROUND_TRIP, entry_point="echo"
    )
    assert (status, reward) == (Status.PASSED, 1.0), feedback


@pytest.mark.parametrize(
    ("returned", "named"),
    [
        ("object()", "object"),
        ("lambda: 0", "function"),
        ("range(3)", "range"),
        ("[1, {2: bytearray(b'x')}]", "bytearray"),
        ("_deep()", "nested more than"),
    ],
)
async def test_non_plain_data_is_a_failed_test(
    sandbox: LocalSandbox, returned: str, named: str
) -> None:
    program = (
        "def _deep():\n    v = []\n    for _ in range(500):\n        v = [v]\n    return v\n"
        f"def f():\n    return {returned}\n"
    )
    status, reward, feedback, _ = await judge(
        sandbox,
        program,
        test_code="try:\n    f()\nexcept BaseException:\n    pass\n",
        entry_point="f",
    )
    assert (status, reward) == (Status.FAILED, 0.0), feedback
    assert named in feedback
    assert "not plain data" in feedback


async def test_program_exceptions_reach_the_tests(sandbox: LocalSandbox) -> None:
    program = (
        "class Mine(Exception):\n    pass\n"
        "def div(a, b):\n    return a // b\n"
        "def mine():\n    raise Mine('custom')\n"
    )
    tests = (
        "try:\n    div(1, 0)\nexcept ZeroDivisionError as e:\n    assert 'zero' in str(e)\n"
        "else:\n    assert False\n"
        "try:\n    mine()\nexcept Exception as e:\n    assert str(e) == 'Mine: custom', str(e)\n"
        "assert div(7, 2) == 3\n"
    )
    status, reward, feedback, _ = await judge(
        sandbox, program, test_code=tests, entry_point=["div", "mine"]
    )
    assert (status, reward) == (Status.PASSED, 1.0), feedback
    status, _, feedback, _ = await judge(
        sandbox, program, test_code="assert div(1, 0) == 0\n", entry_point=["div"]
    )
    assert status is Status.RUNTIME_ERROR
    assert "the program raised ZeroDivisionError: integer division or modulo by zero" in feedback
    assert 'File "<test>", line 1' in feedback


async def test_a_swallowed_death_still_fails(sandbox: LocalSandbox) -> None:
    program = "import os\ndef f(x):\n    if x < 0:\n        os._exit(0)\n    return x\n"
    tests = "try:\n    f(-1)\nexcept BaseException:\n    pass\nassert True\n"
    status, reward, feedback, _ = await judge(sandbox, program, test_code=tests, entry_point="f")
    assert (status, reward) == (Status.FAILED, 0.0), feedback
    assert "ended during a call to f" in feedback


@pytest.mark.parametrize(
    ("program", "status", "feedback"),
    [
        ("def sub(a, b):\n    return a - b\n", Status.FAILED, "no function named 'add'"),
        ("add = 3\n", Status.FAILED, "no function named 'add'"),
        ("def add(:\n", Status.COMPILE_ERROR, "SyntaxError"),
        ("1 / 0\n", Status.RUNTIME_ERROR, "ZeroDivisionError"),
        ("x = bytearray(400 << 20)\n", Status.RUNTIME_ERROR, "MemoryError"),
    ],
)
async def test_programs_that_do_not_load(
    sandbox: LocalSandbox, program: str, status: Status, feedback: str
) -> None:
    got, reward, got_feedback, _ = await judge(
        sandbox, program, test_code=TESTS, entry_point="add", memory_mb=256
    )
    assert (got, reward) == (status, 0.0), got_feedback
    assert feedback in got_feedback


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="goes with `test_code`"):
        CodeSpec.model_validate(
            {"language": "python", "tests": [{"expected_stdout": "1"}], "entry_point": "f"}
        )
    with pytest.raises(ValueError, match="pattern"):
        CodeSpec.model_validate({"language": "python", "test_code": "x", "entry_point": "a b"})
    with pytest.raises(ValueError, match="at least 1"):
        CodeSpec.model_validate({"language": "python", "test_code": "x", "entry_point": []})
    spec = CodeSpec.model_validate(
        {"language": "python", "test_code": "x", "entry_point": ["f", "g"]}
    )
    assert spec.entry_point == ["f", "g"]


def test_other_languages_are_unavailable(tmp_path: Path) -> None:
    python = languages()["python"]
    verifier = CodeVerifier({"python": python, "other": replace(python, name="other")})
    spec = CodeSpec.model_validate({"language": "other", "test_code": "x", "entry_point": "f"})
    reason = verifier.check(spec, LocalSandbox(lock_dir=tmp_path))
    assert reason is not None
    assert "python only" in reason


PROBE = """
import ctypes, os
def probe():
    parent, denied = os.getppid(), []
    for path in ('/proc/%d/mem' % parent, '/proc/%d/fd/1' % parent, '/proc/%d/environ' % parent):
        try:
            open(path, 'rb').close()
        except OSError:
            denied.append(path)
    try:
        os.listdir('/proc/%d/fd' % parent)
    except OSError:
        denied.append('fd')
    libc = ctypes.CDLL(None, use_errno=True)
    attached = libc.ptrace(16, parent, 0, 0) == 0  # PTRACE_ATTACH
    try:
        os.fork()
        forked = True
    except OSError:
        forked = False
    return len(denied), attached, forked
"""


async def test_the_program_cannot_reach_the_harness(sandbox: LocalSandbox) -> None:
    status, reward, feedback, _ = await judge(
        sandbox,
        PROBE,
        test_code="assert probe() == (4, False, False), probe()\n",
        entry_point="probe",
    )
    assert (status, reward) == (Status.PASSED, 1.0), feedback


async def test_exit_status_152_is_not_a_signal(sandbox: LocalSandbox) -> None:
    # bwrap folds a signal N into exit status 128+N; the runner reports the wait status.
    status, reward, feedback, _ = await judge(
        sandbox, "import sys\nsys.exit(152)\n", test_code=TESTS
    )
    assert (status, reward) == (Status.RUNTIME_ERROR, 0.0)
    assert "exit status 152" in feedback


async def test_cold_sandbox_runs_the_harness_too(tmp_path: Path) -> None:
    """Without warm interpreters the harness starts as a plain `python3` of its own."""
    cold = LocalSandbox(lock_dir=tmp_path, warm_python=0)
    try:
        status, reward, feedback, _ = await judge(cold, ADD, test_code=TESTS, entry_point="add")
        assert (status, reward) == (Status.PASSED, 1.0), feedback
        cheat = CHEATS["eq_always_true"]
        status, reward, feedback, _ = await judge(
            cold,
            PROBE + cheat.program,
            test_code=TESTS + "assert probe()[0] == 4\n",
            entry_point=["add", "probe"],
        )
        assert (status, reward) == (Status.FAILED, 0.0), feedback
        assert "not plain data" in feedback
    finally:
        await cold.close()
