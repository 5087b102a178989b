"""Every language of the table on its real toolchain, in the real bwrap sandbox: a right and a
wrong solution of one I/O problem, a compile error, a runtime error, a time-out, a memory hog,
test code (MultiPL-E style) passing and failing; the compile cache; checkers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from assay.clients.schema import CodeSpec
from assay.sandboxes import LocalSandbox
from assay.sandboxes.languages import languages
from assay.verifiers import CodeVerifier, Status
from assay.verifiers.base import Verdict
from tests.conftest import needs_bwrap
from tests.verifiers.language_programs import PROGRAMS

pytestmark = needs_bwrap

SUM_TESTS = [
    {"stdin": "sum 1 2\n", "expected_stdout": "3\n"},
    {"stdin": "sum 10 -4\n", "expected_stdout": "6\n"},
]
# Test code that fails by a check of its own making rather than the language's asserts: the
# program exits non-zero with no assertion message to recognise.
NO_ASSERTS = {"bash", "perl", "haskell"}


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    # One per test: its job slots belong to the test's event loop.
    box = LocalSandbox(lock_dir=tmp_path / "uids")
    yield box
    await box.close()


async def judge(
    verifier: CodeVerifier, sandbox: LocalSandbox, language: str, payload: str, **spec: Any
) -> Verdict:
    parsed = CodeSpec.model_validate({"language": language, **spec})
    assert verifier.check(parsed, sandbox) is None
    return await verifier.verify(payload, parsed, sandbox)


def need_toolchain(verifier: CodeVerifier, sandbox: LocalSandbox, language: str) -> None:
    reason = verifier.check(CodeSpec(language=language, test_code="x"), sandbox)
    if reason is not None:
        pytest.skip(reason)  # CI installs every toolchain (scripts/apt/languages.txt)


@pytest.mark.parametrize("language", sorted(PROGRAMS))
async def test_language(sandbox: LocalSandbox, language: str) -> None:
    verifier = CodeVerifier()
    need_toolchain(verifier, sandbox, language)
    programs = PROGRAMS[language]
    io = {"tests": SUM_TESTS, "time_limit_s": 10}
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "correct": (programs["main"], io),
        "wrong": (programs["wrong"], io),
        "compile_error": (programs["broken"], io),
        "runtime_error": (
            programs["main"],
            {"tests": [{"stdin": "crash\n", "expected_stdout": ""}], "time_limit_s": 10},
        ),
        "timeout": (
            programs["main"],
            {"tests": [{"stdin": "loop\n", "expected_stdout": ""}], "time_limit_s": 2},
        ),
        "memory": (
            programs["main"],
            {
                "tests": [{"stdin": "hog\n", "expected_stdout": ""}],
                "memory_mb": 200,
                "time_limit_s": 20,
            },
        ),
        "test_code_passes": (programs["add_ok"], {"test_code": programs["test_code"]}),
        "test_code_fails": (programs["add_bad"], {"test_code": programs["test_code"]}),
    }
    verdicts = dict(
        zip(
            cases,
            await asyncio.gather(
                *(judge(verifier, sandbox, language, p, **s) for p, s in cases.values())
            ),
            strict=True,
        )
    )
    seen = {name: (v.status, v.reward) for name, v in verdicts.items()}
    why = {name: v.feedback for name, v in verdicts.items()}
    assert seen["correct"] == (Status.PASSED, 1.0), why["correct"]
    assert seen["wrong"] == (Status.FAILED, 0.0), why["wrong"]
    assert "expected: 'sum 1 2\\n'" not in why["wrong"]
    assert seen["compile_error"] == (Status.COMPILE_ERROR, 0.0), why["compile_error"]
    assert seen["runtime_error"] == (Status.RUNTIME_ERROR, 0.0), why["runtime_error"]
    assert seen["timeout"] == (Status.TIMEOUT, 0.0), why["timeout"]
    assert seen["memory"] == (Status.MEMORY_LIMIT, 0.0), why["memory"]
    assert seen["test_code_passes"] == (Status.PASSED, 1.0), why["test_code_passes"]
    failing = Status.RUNTIME_ERROR if language in NO_ASSERTS else Status.FAILED
    assert seen["test_code_fails"] == (failing, 0.0), why["test_code_fails"]
    # Peak memory is reported per test.
    assert verdicts["correct"].details["tests"][0]["memory_kb"] > 0
    if languages()[language].compiled:
        # One build for the four items of `main`, run at once: the copies waited for it.
        assert verifier.compile_cache.builds == 5
        cached = [verdicts[n].details["build"]["cached"] for n in ("correct", "runtime_error")]
        cached += [verdicts[n].details["build"]["cached"] for n in ("timeout", "memory")]
        assert sorted(cached) == [False, True, True, True]


async def test_compile_error_names_lines_of_the_program(sandbox: LocalSandbox) -> None:
    verifier = CodeVerifier()
    need_toolchain(verifier, sandbox, "cpp")
    program = "#include <cstdio>\n\nint main() {\n    return missing + 1;\n}\n"
    verdict = await judge(verifier, sandbox, "cpp", program, tests=SUM_TESTS)
    assert verdict.status is Status.COMPILE_ERROR
    assert "main.cpp:4:" in verdict.feedback
    assert "missing" in verdict.feedback


async def test_compile_cache_across_batches(sandbox: LocalSandbox) -> None:
    verifier = CodeVerifier()
    need_toolchain(verifier, sandbox, "c")
    first = await judge(verifier, sandbox, "c", PROGRAMS["c"]["main"], tests=SUM_TESTS)
    again = await judge(
        verifier, sandbox, "c", PROGRAMS["c"]["main"], tests=SUM_TESTS[:1], time_limit_s=3
    )
    broken = [
        await judge(verifier, sandbox, "c", PROGRAMS["c"]["broken"], tests=SUM_TESTS)
        for _ in range(2)
    ]
    assert (first.status, again.status) == (Status.PASSED, Status.PASSED)
    assert (first.details["build"]["cached"], again.details["build"]["cached"]) == (False, True)
    # A compile error is as repeatable as a binary: kept too, and its feedback the same.
    assert [b.details["build"]["cached"] for b in broken] == [False, True]
    assert broken[0].feedback == broken[1].feedback
    assert verifier.compile_cache.builds == 2
    facts = verifier.facts(sandbox)["compile_cache"]
    assert facts["entries"] == 2
    assert facts["hits"] == 2


async def test_test_code_early_exit_cannot_pass(sandbox: LocalSandbox) -> None:
    """The token, per language: a program exiting 0 before its tests never prints it."""
    verifier = CodeVerifier()
    cheats = {
        "cpp": "#include <cstdlib>\nint add(int a, int b) { std::exit(0); }\n",
        "java": "class Problem {\n    static int add(int a, int b) { System.exit(0); return 0; }\n",
        "go": 'package main\n\nimport "os"\n\nfunc add(a int, b int) int {\n\tos.Exit(0)\n'
        "\treturn 0\n}\n",
        "ruby": "def add(a, b)\n  exit 0\nend\n",
        "fortran": PROGRAMS["fortran"]["add_bad"].replace("add = a - b", "stop"),
        "haskell": "import System.Exit\nadd :: Int -> Int -> Int\nadd _ _ = 0\n"
        "main' :: IO ()\nmain' = exitSuccess\n",
    }
    for language, cheat in cheats.items():
        need_toolchain(verifier, sandbox, language)
        test_code = PROGRAMS[language]["test_code"]
        if language == "haskell":  # exits before the asserts, from inside the test main
            test_code = test_code.replace("  let candidate", "  main'\n  let candidate")
        verdict = await judge(verifier, sandbox, language, cheat, test_code=test_code)
        assert (verdict.status, verdict.reward) == (Status.FAILED, 0.0), (language, verdict)
        assert "before the test code ran" in verdict.feedback


async def test_unavailable_language_says_why(sandbox: LocalSandbox) -> None:
    verifier = CodeVerifier()
    reason = verifier.check(CodeSpec(language="julia", test_code="@assert 1 == 1"), sandbox)
    assert reason is not None
    assert "Debian 12 has no Julia package" in reason
    facts = verifier.facts(sandbox)["languages"]
    assert facts["julia"]["available"] is False
    assert "Julia" in facts["julia"]["reason"]


async def test_facts_show_each_language_and_its_version(sandbox: LocalSandbox) -> None:
    verifier = CodeVerifier()
    facts = verifier.facts(sandbox)["languages"]
    assert set(facts) == set(languages())
    for name, entry in facts.items():
        if entry["available"]:
            assert entry["version"], name
    if facts["cpp"]["available"]:
        assert "g++" in facts["cpp"]["version"]
    if facts["java"]["available"]:
        assert "17" in facts["java"]["version"]


# -- checkers (special judges) ----------------------------------------------------------------

# The problem: given n, print two positive integers whose sum is n. Many answers are right.
SPLIT_TESTS = [
    {"stdin": "5\n", "expected_stdout": "1 4\n"},
    {"stdin": "10\n", "expected_stdout": "1 9\n"},
]
SPLIT_OTHER = "n = int(input())\nprint(n // 2, n - n // 2)\n"  # right, but not the expected
SPLIT_WRONG = "n = int(input())\nprint(n, 0)\n"
CHECKERS = {
    "cpp": r"""#include <cstdio>
#include <fstream>
int main(int argc, char** argv) {
    std::ifstream in(argv[1]), out(argv[2]), ans(argv[3]);
    long n, a, b;
    in >> n;
    if (!(out >> a >> b)) { std::fprintf(stderr, "wrong answer: two numbers wanted\n"); return 1; }
    if (a < 1 || b < 1 || a + b != n) {
        std::fprintf(stderr, "wrong answer: %ld + %ld is not %ld\n", a, b, n);
        return 1;
    }
    return 0;
}
""",
    "python": """import sys
n = int(open(sys.argv[1]).read())
words = open(sys.argv[2]).read().split()
if len(words) != 2 or not all(w.isdigit() for w in words):
    sys.exit("wrong answer: two numbers wanted")
a, b = map(int, words)
if a < 1 or b < 1 or a + b != n:
    sys.exit(f"wrong answer: {a} + {b} is not {n}")
""",
}


@pytest.mark.parametrize("checker_language", sorted(CHECKERS))
async def test_checker_accepts_any_valid_answer(
    sandbox: LocalSandbox, checker_language: str
) -> None:
    verifier = CodeVerifier()
    need_toolchain(verifier, sandbox, checker_language)
    checker = {"language": checker_language, "source": CHECKERS[checker_language]}
    plain = await judge(verifier, sandbox, "python", SPLIT_OTHER, tests=SPLIT_TESTS)
    assert plain.status is Status.FAILED  # the tokens compare wants exactly "1 4"
    other, wrong, partial = await asyncio.gather(
        judge(verifier, sandbox, "python", SPLIT_OTHER, tests=SPLIT_TESTS, checker=checker),
        judge(verifier, sandbox, "python", SPLIT_WRONG, tests=SPLIT_TESTS, checker=checker),
        judge(
            verifier,
            sandbox,
            "python",
            "n = int(input())\nprint(1, n - 1 if n < 8 else n)\n",
            tests=SPLIT_TESTS,
            checker=checker,
            partial_credit=True,
        ),
    )
    assert (other.status, other.reward) == (Status.PASSED, 1.0), other.feedback
    assert (wrong.status, wrong.reward) == (Status.FAILED, 0.0), wrong.feedback
    assert "5 + 0 is not 5" in wrong.feedback
    assert (partial.status, partial.reward) == (Status.FAILED, 0.5), partial.feedback
    assert [t["passed"] for t in partial.details["tests"]] == [True, False]


async def test_checker_built_once(sandbox: LocalSandbox) -> None:
    verifier = CodeVerifier()
    need_toolchain(verifier, sandbox, "cpp")
    checker = {"language": "cpp", "source": CHECKERS["cpp"]}
    for _ in range(3):
        verdict = await judge(
            verifier, sandbox, "python", SPLIT_OTHER, tests=SPLIT_TESTS, checker=checker
        )
        assert verdict.status is Status.PASSED
    assert verifier.compile_cache.builds == 1


@pytest.mark.parametrize(
    ("source", "says"),
    [
        pytest.param("int main( {", "does not compile", id="does_not_compile"),
        pytest.param(
            "#include <cstdlib>\nint main() { std::abort(); }\n", "killed by SIGABRT", id="crash"
        ),
        pytest.param(
            "int main() { volatile int i = 0; for (;;) i++; }\n", "ran out of time", id="timeout"
        ),
        pytest.param("int main() { return 3; }\n", "exit status 3", id="testlib_fail"),
    ],
)
async def test_broken_checker_is_invalid_spec(
    sandbox: LocalSandbox, source: str, says: str
) -> None:
    verifier = CodeVerifier()
    need_toolchain(verifier, sandbox, "cpp")
    checker = {"language": "cpp", "source": source, "time_limit_s": 1}
    verdict = await judge(
        verifier, sandbox, "python", SPLIT_OTHER, tests=SPLIT_TESTS, checker=checker
    )
    assert (verdict.status, verdict.reward) == (Status.INVALID_SPEC, None)
    assert says in verdict.feedback


def test_checker_goes_with_io_tests_only() -> None:
    with pytest.raises(ValueError, match="checker"):
        CodeSpec.model_validate(
            {"language": "python", "test_code": "x", "checker": {"language": "cpp", "source": "x"}}
        )
    with pytest.raises(ValueError, match="plain file name"):
        CodeSpec.model_validate(
            {
                "language": "python",
                "tests": SUM_TESTS,
                "checker": {"language": "cpp", "source": "x", "files": {"../x.h": ""}},
            }
        )
