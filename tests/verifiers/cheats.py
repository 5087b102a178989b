"""Programs that try to pass `test_code` with a wrong answer, for tests/verifiers/test_isolated.py.

Each entry: the program (its `add` is wrong, or it never answers), the test code it faces (None:
`TESTS`), and whether the in-process mode (test code appended to the program) still lets it
through. The isolated mode (`entry_point`) must give every one of them reward 0.
"""

from __future__ import annotations

from typing import NamedTuple

TESTS = "assert add(2, 2) == 4\nassert add(-3, 10) == 7\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
HUMANEVAL_STYLE = "def check(candidate):\n    assert candidate(2, 2) == 4\n\ncheck(add)\n"


class Cheat(NamedTuple):
    program: str
    tests: str | None
    in_process_passes: bool


# The end token of the in-process mode, read from the program's own module code object.
_TOKEN_FROM_CODE = (
    "import os, re, sys\n"
    "_t = [c for c in sys._getframe().f_code.co_consts\n"
    "      if isinstance(c, str) and re.fullmatch('[0-9a-f]{32}', c)]\n"
)

CHEATS: dict[str, Cheat] = {
    "eq_always_true": Cheat(
        "class _Yes(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\ndef add(a, b):\n    return _Yes(0)\n",
        None,
        True,
    ),
    "custom_float_subclass": Cheat(
        "class _F(float):\n    def __sub__(self, other):\n        return _F(0.0)\n"
        "    def __lt__(self, other):\n        return True\n"
        "def add(a, b):\n    return _F(a - b)\n",
        "assert abs(add(1, 1) - 2) < 1e-9\n",
        True,
    ),
    "list_subclass_eq": Cheat(
        "class _L(list):\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return _L()\n",
        "assert add(2, 2) == [4]\n",
        True,
    ),
    "tracer_skips_the_asserts": Cheat(
        WRONG_ADD + "import dis, sys\n_here = sys._getframe()\n_asserts, _line = set(), None\n"
        "for _op in dis.get_instructions(_here.f_code):\n"
        "    _line = _op.starts_line or _line\n"
        "    if _op.opname == 'LOAD_ASSERTION_ERROR':\n        _asserts.add(_line)\n"
        "def _trace(frame, event, arg):\n"
        "    if frame is _here and event == 'line' and frame.f_lineno in _asserts:\n"
        "        frame.f_lineno = max(_asserts) + 1\n    return _trace\n"
        "_here.f_trace = _trace\nsys.settrace(_trace)\n",
        None,
        True,
    ),
    "token_from_its_code_object": Cheat(
        WRONG_ADD + _TOKEN_FROM_CODE + "print(_t[-1], flush=True)\nos._exit(0)\n", None, True
    ),
    "token_from_its_memory": Cheat(
        WRONG_ADD + "import os, re, sys\n_mem = open('/proc/self/mem', 'rb', 0)\n_token = None\n"
        "for _row in open('/proc/self/maps'):\n"
        "    _span, _perm = _row.split()[:2]\n"
        "    _lo, _hi = (int(x, 16) for x in _span.split('-'))\n"
        "    try:\n        _mem.seek(_lo)\n"
        "        _found = re.search(rb\"print\\('([0-9a-f]{32})'\", _mem.read(_hi - _lo))\n"
        "    except (OSError, OverflowError, ValueError):\n        continue\n"
        "    if 'r' in _perm and _found:\n        _token = _found[1].decode()\n        break\n"
        "sys.excepthook = lambda *a: (print(_token, flush=True), os._exit(0))\n",
        None,
        True,
    ),
    "excepthook_eats_the_assertion": Cheat(
        WRONG_ADD
        + _TOKEN_FROM_CODE
        + "sys.excepthook = lambda *a: (print(_t[-1], flush=True), os._exit(0))\n",
        None,
        True,
    ),
    "rebinds_a_builtin_the_tests_use": Cheat(
        WRONG_ADD + "import builtins\nbuiltins.abs = lambda x: 0\n",
        "assert abs(add(1, 1) - 2) < 1e-9\n",
        True,
    ),
    "patches_math_isclose": Cheat(
        WRONG_ADD + "import math\nmath.isclose = lambda *a, **k: True\n",
        "import math\nassert math.isclose(add(0.5, 0.25), 0.75)\n",
        True,
    ),
    "overwrites_the_check_function": Cheat(
        WRONG_ADD + "import sys\n_main = sys._getframe()\n"
        "def _trace(frame, event, arg):\n"
        "    if frame is _main and 'check' in frame.f_globals:\n"
        "        frame.f_globals['check'] = lambda candidate: None\n"
        "    return _trace\n"
        "_main.f_trace = _trace\nsys.settrace(_trace)\n",
        HUMANEVAL_STYLE,
        True,
    ),
    "early_exit": Cheat("import sys\nsys.exit(0)\n", None, False),
    "os_exit_in_the_function": Cheat("import os\ndef add(a, b):\n    os._exit(0)\n", None, False),
    "atexit_exits_0": Cheat(
        WRONG_ADD + "import atexit, os\natexit.register(lambda: os._exit(0))\n", None, False
    ),
    "signal_handler_exits_0": Cheat(
        WRONG_ADD + "import os, signal\n"
        "signal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.setitimer("
        "signal.ITIMER_REAL, 0.01)\nimport time\ntime.sleep(1)\n",
        None,
        False,
    ),
    "exit_status_forged_as_a_signal": Cheat(WRONG_ADD + "import sys\nsys.exit(152)\n", None, False),
    "kills_itself_with_a_signal": Cheat(
        WRONG_ADD + "import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)\n", None, False
    ),
    "writes_a_result_file": Cheat(
        WRONG_ADD + "import os\nfor _p in ('/work/result.json', '/tmp/result.json'):\n"
        "    try:\n        open(_p, 'w').write('{\"passed\": true}')\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
        None,
        False,
    ),
    "prints_a_pass": Cheat(
        'import os\nprint(\'test code passed\\n["passed", ""]\', flush=True)\nos._exit(0)\n',
        None,
        False,
    ),
    "writes_to_the_harness_stdout": Cheat(
        "import os\n"
        "for _fd in ('/proc/%d/fd/1' % os.getppid(), '/proc/1/fd/1', '/dev/stdout'):\n"
        "    try:\n        open(_fd, 'w').write('[\"passed\", \"\"]\\n')\n"
        "    except OSError:\n        pass\n" + WRONG_ADD,
        None,
        False,
    ),
    "reads_the_harness_memory": Cheat(
        "import os, re\n_found = []\n"
        "try:\n    _mem = open('/proc/%d/mem' % os.getppid(), 'rb', 0)\n"
        "    _maps = open('/proc/%d/maps' % os.getppid()).read().splitlines()\n"
        "except OSError:\n    _maps = []\n"
        "for _row in _maps:\n"
        "    _lo, _hi = (int(x, 16) for x in _row.split()[0].split('-'))\n"
        "    try:\n        _mem.seek(_lo)\n        _chunk = _mem.read(_hi - _lo)\n"
        "    except (OSError, ValueError, OverflowError):\n        continue\n"
        "    _found += re.findall(rb'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', _chunk)\n"
        "_answers = {(int(a), int(b)): int(c) for a, b, c in _found}\n"
        "def add(a, b):\n    return _answers.get((a, b), 0)\n",
        None,
        False,
    ),
    "kills_the_harness": Cheat(
        "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n",
        None,
        False,
    ),
    "forks_to_search_the_answers": Cheat(
        "import os, sys\ndef add(a, b):\n    for guess in range(-20, 21):\n"
        "        sys.stdout.flush()\n        pid = os.fork()\n        if pid == 0:\n"
        "            return guess\n        if os.waitpid(pid, 0)[1] == 0:\n"
        "            os._exit(0)\n    os._exit(1)\n",
        None,
        False,
    ),
    "waits_for_the_timeout": Cheat(
        "import time\ndef add(a, b):\n    time.sleep(60)\n", None, False
    ),
    "answers_from_its_stdin": Cheat(
        "import re, sys\n_src = sys.stdin.read()\n"
        "_answers = {(int(a), int(b)): int(c) for a, b, c in "
        "re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', _src)}\n"
        "def add(a, b):\n    return _answers.get((a, b), 0)\n",
        None,
        False,
    ),
    "str_subclass_eq": Cheat(
        "class _S(str):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = str.__hash__\ndef add(a, b):\n    return _S('no')\n",
        "assert add('a', 'b') == 'ab'\n",
        True,
    ),
}
