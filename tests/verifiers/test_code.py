"""The code verifier on real programs in the real bwrap sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import CodeSpec
from assay.sandboxes import LocalSandbox
from assay.verifiers import CodeVerifier, Status
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

DATA = json.loads((Path(__file__).parent / "data" / "humaneval_style.json").read_text())
SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
SUM_TESTS = [
    {"stdin": "1 2\n", "expected_stdout": "3\n"},
    {"stdin": "10 -4\n", "expected_stdout": "6\n"},
    {"stdin": "0 0\n", "expected_stdout": "0\n"},
]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> LocalSandbox:
    return LocalSandbox(lock_dir=tmp_path_factory.mktemp("uids"))


async def judge(
    sandbox: LocalSandbox, payload: str, **spec: Any
) -> tuple[Status, float | None, str, dict[str, Any]]:
    verifier = CodeVerifier()
    parsed = CodeSpec.model_validate({"language": "python", **spec})
    assert verifier.check(parsed, sandbox) is None
    verdict = await verifier.verify(payload, parsed, sandbox)
    return verdict.status, verdict.reward, verdict.feedback, verdict.details


# -- HumanEval-style problems: test_code appended, exit 0 passes ------------------------------

_EXPECTED = {
    "wrong_answer": Status.FAILED,
    "stdout_only": Status.FAILED,
    "runtime_error": Status.RUNTIME_ERROR,
    "syntax_error": Status.COMPILE_ERROR,
    "timeout": Status.TIMEOUT,
}
HUMANEVAL = [
    pytest.param(p["correct"], p["test_code"], Status.PASSED, 1.0, id=f"{p['name']}-correct")
    for p in DATA
] + [
    pytest.param(
        bad["code"],
        p["test_code"],
        _EXPECTED[bad["kind"]],
        0.0,
        id=f"{p['name']}-{bad['kind']}-{i}",
    )
    for p in DATA
    for i, bad in enumerate(p["incorrect"])
]


@pytest.mark.parametrize(("solution", "test_code", "status", "reward"), HUMANEVAL)
async def test_humaneval_style(
    sandbox: LocalSandbox, solution: str, test_code: str, status: Status, reward: float
) -> None:
    got, got_reward, feedback, _ = await judge(
        sandbox, solution, test_code=test_code, time_limit_s=2
    )
    assert (got, got_reward) == (status, reward), feedback
    if status is Status.FAILED:
        assert "AssertionError" in feedback


IO = [p for p in DATA if "io_tests" in p]


@pytest.mark.parametrize("problem", IO, ids=[p["name"] for p in IO])
async def test_io_problems(sandbox: LocalSandbox, problem: dict[str, Any]) -> None:
    good = await judge(sandbox, problem["io_correct"], tests=problem["io_tests"])
    assert good[:2] == (Status.PASSED, 1.0), good[2]
    bad = await judge(
        sandbox, problem["io_incorrect"], tests=problem["io_tests"], partial_credit=True
    )
    assert bad[0] is Status.FAILED
    assert bad[1] is not None
    assert 0 < bad[1] < 1
    assert bad[3]["tests"][0]["passed"]


# -- I/O tests: every field of the spec ------------------------------------------------------

SPEC_CASES: list[Any] = [
    pytest.param(SUM, {"tests": SUM_TESTS}, Status.PASSED, 1.0, "3/3 tests passed", id="passes"),
    pytest.param(
        "print(3)\n",
        {"tests": SUM_TESTS},
        Status.FAILED,
        0.0,
        "expected: '6\\n'\nactual: '3\\n'",
        id="wrong_answer_feedback",
    ),
    pytest.param(
        "print(3)\n",
        {"tests": SUM_TESTS, "partial_credit": True},
        Status.FAILED,
        1 / 3,
        "1/3 tests passed",
        id="partial_credit",
    ),
    pytest.param(
        "print(3)\n",
        {"tests": SUM_TESTS, "stop_on_fail": False},
        Status.FAILED,
        0.0,
        "1/3 tests passed",
        id="no_stop_no_credit",
    ),
    pytest.param(
        "print(3)\n",
        {"tests": SUM_TESTS, "partial_credit": True, "stop_on_fail": True},
        Status.FAILED,
        1 / 3,
        "1/3 tests passed",
        id="partial_credit_stop",
    ),
    pytest.param(
        "print('3 ')\n\n",
        {"tests": [{"expected_stdout": "3"}], "compare": "exact"},
        Status.FAILED,
        0.0,
        "wrong answer",
        id="exact_strict",
    ),
    pytest.param(
        "print('3')",
        {"tests": [{"expected_stdout": "3\n"}], "compare": "exact"},
        Status.PASSED,
        1.0,
        "",
        id="exact_ok",
    ),
    pytest.param(
        "print('a  ')\nprint()\n",
        {"tests": [{"expected_stdout": "a"}], "compare": "lines"},
        Status.PASSED,
        1.0,
        "",
        id="lines_ok",
    ),
    pytest.param(
        "print(1/3)",
        {"tests": [{"expected_stdout": "0.333333"}], "compare": "float", "float_tol": 1e-5},
        Status.PASSED,
        1.0,
        "",
        id="float_tol_ok",
    ),
    pytest.param(
        "print(1/3)",
        {"tests": [{"expected_stdout": "0.333"}], "compare": "float"},
        Status.FAILED,
        0.0,
        "",
        id="float_tol_strict",
    ),
    pytest.param(
        "import time\ntime.sleep(5)\n",
        {"tests": SUM_TESTS, "time_limit_s": 0.5},
        Status.TIMEOUT,
        0.0,
        "time limit exceeded (0.5 s)",
        id="time_limit",
    ),
    pytest.param(
        "x = bytearray(300 * 1024 * 1024)\nprint(3)",
        {"tests": SUM_TESTS[:1], "memory_mb": 128},
        Status.MEMORY_LIMIT,
        0.0,
        "memory limit exceeded (128 MB)",
        id="memory_limit",
    ),
    pytest.param(
        "x = bytearray(30 * 1024 * 1024)\nprint(3)",
        {"tests": SUM_TESTS[:1], "memory_mb": 256},
        Status.PASSED,
        1.0,
        "",
        id="memory_within_limit",
    ),
    pytest.param(
        "print(1 // 0)",
        {"tests": SUM_TESTS},
        Status.RUNTIME_ERROR,
        0.0,
        "ZeroDivisionError: integer division or modulo by zero",
        id="runtime_error",
    ),
    pytest.param(
        "import sys\nsys.exit(3)",
        {"tests": SUM_TESTS},
        Status.RUNTIME_ERROR,
        0.0,
        "exit status 3",
        id="exit_status",
    ),
    pytest.param(
        "def f(:\n",
        {"tests": SUM_TESTS, "partial_credit": True},
        Status.COMPILE_ERROR,
        0.0,
        "SyntaxError",
        id="syntax_error_stops",
    ),
    pytest.param(
        "while True: print('y' * 10000)",
        {"tests": SUM_TESTS},
        Status.OUTPUT_LIMIT,
        0.0,
        "output limit",
        id="output_flood",
    ),
    pytest.param(
        "import sys\nprint(sys.stdin.read().count('x'))",
        {"tests": [{"stdin": "x" * 200_000, "expected_stdout": "200000"}]},
        Status.PASSED,
        1.0,
        "",
        id="large_stdin",
    ),
    pytest.param(
        "print(input()[::-1])",
        {"tests": [{"stdin": "héllo wörld\n", "expected_stdout": "dlröw olléh"}]},
        Status.PASSED,
        1.0,
        "",
        id="unicode",
    ),
]


@pytest.mark.parametrize(("payload", "spec", "status", "reward", "feedback"), SPEC_CASES)
async def test_spec_fields(
    sandbox: LocalSandbox,
    payload: str,
    spec: dict[str, Any],
    status: Status,
    reward: float,
    feedback: str,
) -> None:
    got, got_reward, got_feedback, details = await judge(sandbox, payload, **spec)
    assert got is status, got_feedback
    assert got_reward == pytest.approx(reward)
    assert feedback in got_feedback
    assert len(got_feedback) <= 2048
    assert details["total"] == len(spec["tests"])


async def test_stop_on_fail_runs_no_more_tests(sandbox: LocalSandbox) -> None:
    _, _, _, details = await judge(sandbox, "print(3)", tests=SUM_TESTS)
    assert len(details["tests"]) == 2
    _, _, _, details = await judge(sandbox, "print(3)", tests=SUM_TESTS, stop_on_fail=False)
    assert [t["passed"] for t in details["tests"]] == [True, False, False]


async def test_long_outputs_are_truncated_in_feedback(sandbox: LocalSandbox) -> None:
    _, _, feedback, _ = await judge(
        sandbox, "print('z' * 100000)", tests=[{"expected_stdout": "y" * 100000}]
    )
    assert len(feedback) <= 2048
    assert "zzz…" in feedback
    assert "yyy…" in feedback


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CodeSpec.model_validate({"language": "python"})
    with pytest.raises(ValueError, match="exactly one"):
        CodeSpec.model_validate({"language": "python", "tests": SUM_TESTS, "test_code": "x"})
    with pytest.raises(ValueError, match="greater than 0"):
        CodeSpec.model_validate({"language": "python", "tests": SUM_TESTS, "time_limit_s": 0})
    with pytest.raises(ValueError, match="Extra inputs"):
        CodeSpec.model_validate({"language": "python", "tests": SUM_TESTS, "tset": 1})


def test_unknown_language_is_unavailable(tmp_path: Path) -> None:
    spec = CodeSpec.model_validate({"language": "cobol", "tests": SUM_TESTS})
    reason = CodeVerifier().check(spec, LocalSandbox(lock_dir=tmp_path))
    assert reason is not None
    assert "'cobol' is not in" in reason


EARLY_EXITS = [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "exit()",
    "raise SystemExit",
    "def add(a, b):\n    raise SystemExit(0)",
]


@pytest.mark.parametrize(
    "cheat", EARLY_EXITS, ids=["sys_exit", "os_exit", "exit", "raise", "in_fn"]
)
async def test_exiting_before_the_tests_does_not_pass(sandbox: LocalSandbox, cheat: str) -> None:
    status, reward, feedback, _ = await judge(
        sandbox, cheat, test_code="assert add(2, 2) == 4\nassert add(1, 0) == 1\n"
    )
    assert (status, reward) == (Status.FAILED, 0.0)
    assert "before the test code ran" in feedback


async def test_test_code_output_does_not_confuse_the_end_check(sandbox: LocalSandbox) -> None:
    status, reward, _, _ = await judge(
        sandbox,
        "def add(a, b):\n    print('adding', a, b)\n    return a + b",
        test_code="assert add(2, 2) == 4\nprint('done')\n",
    )
    assert (status, reward) == (Status.PASSED, 1.0)


# -- test_code cheats: a wrong `add` that tries to pass anyway ----------------------------------

WRONG_ADD = "def add(a, b):\n    return a - b\n"
FIND_TOKEN = (
    "import os, re\n"
    "def _token():\n"
    "    for path in ('/work/main.py', 'main.py', '/proc/self/fd/0'):\n"
    "        try:\n"
    "            return re.findall(r\"print\\('([0-9a-f]{32})'\", open(path).read())[-1]\n"
    "        except (OSError, IndexError):\n"
    "            pass\n"
    "    return 'no-token'\n"
)
TEST_CHEATS = {
    "reads_its_source_for_the_token": WRONG_ADD
    + FIND_TOKEN
    + "print(_token(), flush=True)\nos._exit(0)\n",
    "atexit_prints_the_token": WRONG_ADD
    + FIND_TOKEN
    + "import atexit\natexit.register(lambda: (print(_token(), flush=True), os._exit(0)))\n",
    "excepthook_prints_the_token": WRONG_ADD
    + FIND_TOKEN
    + "import sys\nsys.excepthook = lambda *a: (print(_token(), flush=True), os._exit(0))\n",
    "reruns_itself_without_asserts": WRONG_ADD
    + "import os, sys\nif not sys.flags.optimize:\n"
    + "    for path in ('/work/main.py', 'main.py'):\n"
    + "        if os.path.exists(path):\n"
    + "            os.execv('/usr/bin/python3', ['python3', '-O', '-I', '-B', path])\n",
    "forks_to_search_the_answers": (
        "import os, sys\ndef add(a, b):\n    for guess in range(-20, 21):\n"
        "        sys.stdout.flush()\n        pid = os.fork()\n        if pid == 0:\n"
        "            return guess\n        if os.waitpid(pid, 0)[1] == 0:\n"
        "            os._exit(0)\n    os._exit(1)\n"
    ),
    "answers_from_its_own_test_code": (
        "import ast\n_answers = {}\n"
        "for path in ('/work/main.py', 'main.py'):\n"
        "    try:\n        tree = ast.parse(open(path).read())\n    except OSError:\n"
        "        continue\n"
        "    for node in ast.walk(tree):\n"
        "        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):\n"
        "            call = node.test.left\n"
        "            args = tuple(ast.literal_eval(a) for a in call.args)\n"
        "            _answers[args] = ast.literal_eval(node.test.comparators[0])\n"
        "def add(a, b):\n    return _answers.get((a, b), 0)\n"
    ),
}


@pytest.mark.parametrize("cheat", list(TEST_CHEATS.values()), ids=list(TEST_CHEATS))
async def test_test_code_cheats_do_not_pass(sandbox: LocalSandbox, cheat: str) -> None:
    status, reward, feedback, _ = await judge(
        sandbox, cheat, test_code="assert add(2, 2) == 4\nassert add(-3, 10) == 7\n"
    )
    assert reward == 0.0, (status, feedback)


# What the in-process harness cannot stop (the module docstring of verifiers/code.py says so);
# the isolated mode (`entry_point`) closes them (the test after this one).
# Strict: the day one of these stops passing, this list must be brought up to date.
IN_PROCESS_HOLES = {
    "eq_always_true": (
        "class _Yes(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\ndef add(a, b):\n    return _Yes(0)\n"
    ),
    "skips_the_asserts_with_a_tracer": WRONG_ADD
    + "import dis, sys\n_here = sys._getframe()\n_asserts, _line = set(), None\n"
    + "for _op in dis.get_instructions(_here.f_code):\n"
    + "    _line = _op.starts_line or _line\n"
    + "    if _op.opname == 'LOAD_ASSERTION_ERROR':\n        _asserts.add(_line)\n"
    + "def _trace(frame, event, arg):\n"
    + "    if frame is _here and event == 'line' and frame.f_lineno in _asserts:\n"
    + "        frame.f_lineno = max(_asserts) + 1\n    return _trace\n"
    + "_here.f_trace = _trace\nsys.settrace(_trace)\n",
    "token_from_its_own_memory": WRONG_ADD
    + "import os, re, sys\n_mem = open('/proc/self/mem', 'rb', 0)\n_token = None\n"
    + "for _row in open('/proc/self/maps'):\n"
    + "    _span, _perm = _row.split()[:2]\n"
    + "    _lo, _hi = (int(x, 16) for x in _span.split('-'))\n"
    + "    try:\n        _mem.seek(_lo)\n"
    + "        _found = re.search(rb\"print\\('([0-9a-f]{32})'\", _mem.read(_hi - _lo))\n"
    + "    except (OSError, OverflowError, ValueError):\n        continue\n"
    + "    if 'r' in _perm and _found:\n        _token = _found[1].decode()\n        break\n"
    + "sys.excepthook = lambda *a: (print(_token, flush=True), os._exit(0))\n",
    "token_from_its_code_object": WRONG_ADD
    + "import os, re, sys\n"
    + "_t = [c for c in sys._getframe().f_code.co_consts\n"
    + "      if isinstance(c, str) and re.fullmatch('[0-9a-f]{32}', c)]\n"
    + "print(_t[-1], flush=True)\nos._exit(0)\n",
}


@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="test_code runs in the program's own process"
)
@pytest.mark.parametrize("cheat", list(IN_PROCESS_HOLES.values()), ids=list(IN_PROCESS_HOLES))
async def test_in_process_holes_remain(sandbox: LocalSandbox, cheat: str) -> None:
    status, reward, feedback, _ = await judge(sandbox, cheat, test_code="assert add(2, 2) == 4\n")
    assert reward == 0.0, (status, feedback)


@pytest.mark.parametrize("cheat", list(IN_PROCESS_HOLES.values()), ids=list(IN_PROCESS_HOLES))
async def test_in_process_holes_are_closed_in_the_isolated_mode(
    sandbox: LocalSandbox, cheat: str
) -> None:
    """The same four with `entry_point`: the test code runs in a harness process of its own
    (tests/verifiers/test_isolated.py has the full table of cheats)."""
    status, reward, feedback, details = await judge(
        sandbox, cheat, test_code="assert add(2, 2) == 4\n", entry_point="add"
    )
    assert reward == 0.0, (status, feedback)
    assert details["mode"] == "isolated"


async def test_test_code_failures_show_the_failing_line(sandbox: LocalSandbox) -> None:
    _, _, feedback, _ = await judge(
        sandbox, WRONG_ADD, test_code="assert add(1, 1) == 0\nassert add(2, 2) == 4\n"
    )
    assert 'File "<stdin>", line 5, in <module>\n    assert add(2, 2) == 4' in feedback


async def test_control_characters_in_feedback_are_escaped(sandbox: LocalSandbox) -> None:
    program = (
        "import sys\nsys.stderr.write('\\x1b[2J\\x1b[31mfake\\x00 result\\tok\\n')\nsys.exit(3)\n"
    )
    status, _, feedback, _ = await judge(sandbox, program, tests=SUM_TESTS)
    assert status is Status.RUNTIME_ERROR
    assert "\\x1b[2J\\x1b[31mfake\\x00 result\tok" in feedback
    assert "\x1b" not in feedback
    assert "\x00" not in feedback
