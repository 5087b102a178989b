"""The dafny verifier on real Dafny (Debian's 2.3, warm servers in the real bwrap sandbox).

The programs are written here in the style of DafnyBench's (small methods with loops,
invariants, functions and lemmas); each cheat and each weakening of a specification is a row.
One pool of warm servers serves the whole module, as it would serve a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from assay.clients.schema import DafnySpec
from assay.sandboxes import LocalSandbox
from assay.verifiers import DafnyVerifier, Status
from assay.verifiers.dafny import read_version
from tests.conftest import needs_bwrap

needs_dafny = pytest.mark.skipif(
    read_version("/usr/lib/dafny") is None,
    reason="Dafny is not installed (scripts/install does it: scripts/apt/dafny.txt)",
)
pytestmark = [needs_bwrap, needs_dafny, pytest.mark.asyncio(loop_scope="module")]

ABS = """
method Abs(x: int) returns (y: int)
  ensures y >= 0
  ensures y == x || y == -x
{
  if x < 0 { y := -x; } else { y := x; }
}
"""

SUM = """
function SumTo(a: seq<int>, n: nat): int
  requires n <= |a|
{
  if n == 0 then 0 else SumTo(a, n - 1) + a[n - 1]
}

method Sum(a: array<int>) returns (s: int)
  ensures s == SumTo(a[..], a.Length)
{
  s := 0;
  var i := 0;
  while i < a.Length
    invariant 0 <= i <= a.Length
    invariant s == SumTo(a[..], i)
  {
    s := s + a[i];
    i := i + 1;
  }
}
"""

MAX = """
method Max(a: array<int>) returns (m: int)
  requires a.Length > 0
  ensures forall k :: 0 <= k < a.Length ==> a[k] <= m
  ensures exists k :: 0 <= k < a.Length && a[k] == m
{
  m := a[0];
  var i := 1;
  while i < a.Length
    invariant 1 <= i <= a.Length
    invariant forall k :: 0 <= k < i ==> a[k] <= m
    invariant exists k :: 0 <= k < i && a[k] == m
  {
    if a[i] > m { m := a[i]; }
    i := i + 1;
  }
}
"""

TRI = """
function Tri(n: nat): nat
{
  if n == 0 then 0 else n + Tri(n - 1)
}

lemma {:induction false} TriFormula(n: nat)
  ensures 2 * Tri(n) == n * (n + 1)
{
  if n > 0 { TriFormula(n - 1); }
}
"""

GCD = """
method Gcd(a0: nat, b0: nat) returns (g: nat)
  requires a0 > 0 && b0 > 0
  ensures g > 0
{
  var a, b := a0, b0;
  while a != b
    invariant a > 0 && b > 0
    decreases a + b
  {
    if a > b { a := a - b; } else { b := b - a; }
  }
  g := a;
}
"""

# Dafny 4 syntax: a compiled `function`, a `ghost function`, a `for` loop.
DAFNY4 = """
ghost function Count(s: seq<int>): nat
{
  if |s| == 0 then 0 else (if s[0] > 0 then 1 else 0) + Count(s[1..])
}

function Double(x: int): int { 2 * x }

method CountPositive(a: array<int>) returns (n: int)
  ensures 0 <= n <= a.Length
{
  n := 0;
  for i := 0 to a.Length
    invariant 0 <= n <= i
  {
    if a[i] > 0 { n := n + 1; }
  }
  var d := Double(n);
  assert d == 2 * n;
}
"""

# A matching loop: each instance of one quantifier makes a term that triggers the other, so z3
# instantiates until its time limit (it never gives up early, as it may on nonlinear lemmas).
SLOW = """
function F{i}(x: int): int
function G{i}(x: int): int
lemma Hard{i}(x: int)
  requires forall y {{:trigger F{i}(y)}} :: F{i}(y) == G{i}(F{i}(y + 1)) + 1
  requires forall y {{:trigger G{i}(y)}} :: G{i}(y) == F{i}(y - 1) - 1
  ensures F{i}(x) > x + {i}
{{
}}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[LocalSandbox]:
    box = LocalSandbox()
    yield box
    await box.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def verifier() -> AsyncIterator[DafnyVerifier]:
    v = DafnyVerifier(servers=2)
    yield v
    await v.close()


async def judge(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str, **spec: Any
) -> tuple[Status, float | None, str, dict[str, Any]]:
    parsed = DafnySpec.model_validate({"timeout_s": 30, **spec})
    assert verifier.check(parsed, sandbox) is None
    verdict = await verifier.verify(program, parsed, sandbox)
    return verdict.status, verdict.reward, verdict.feedback, verdict.details


VERIFIED = [
    pytest.param(ABS, id="abs"),
    pytest.param(SUM, id="sum"),
    pytest.param(MAX, id="max"),
    pytest.param(TRI, id="triangle-lemma"),
    pytest.param(GCD, id="gcd"),
]


@pytest.mark.parametrize("program", VERIFIED)
async def test_programs_that_verify_pass(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str
) -> None:
    status, reward, feedback, details = await judge(verifier, sandbox, program)
    assert (status, reward) == (Status.PASSED, 1.0), feedback
    assert details["verified"] >= 1
    assert details["errors"] == 0
    # The same program as its own reference keeps its specification.
    status, _, feedback, _ = await judge(verifier, sandbox, program, reference=program)
    assert status is Status.PASSED, feedback


BROKEN = [
    pytest.param(
        SUM.replace("invariant s == SumTo(a[..], i)", "invariant s == SumTo(a[..], i) + 1"),
        "loop invariant",
        id="sum-wrong-invariant",
    ),
    pytest.param(
        MAX.replace("    invariant forall k :: 0 <= k < i ==> a[k] <= m\n", ""),
        "postcondition",
        id="max-missing-invariant",
    ),
    pytest.param(GCD.replace("    decreases a + b\n", ""), "termination", id="gcd-no-decreases"),
    pytest.param(
        TRI.replace("if n > 0 { TriFormula(n - 1); }", ""), "postcondition", id="lemma-no-proof"
    ),
    pytest.param(ABS.replace("y := -x;", "y := x;"), "postcondition", id="abs-wrong-code"),
]


@pytest.mark.parametrize(("program", "says"), BROKEN)
async def test_broken_programs_fail_with_their_first_errors(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str, says: str
) -> None:
    status, reward, feedback, details = await judge(verifier, sandbox, program)
    assert (status, reward) == (Status.FAILED, 0.0), feedback
    assert says in feedback
    assert details["errors"] >= 1
    first = details["first_errors"][0]
    assert first["line"] > 0
    assert first["col"] >= 0
    assert first["message"]


COMPILE_ERRORS = [
    pytest.param(ABS.replace("returns (y: int)", "returns (y: int"), id="syntax"),
    pytest.param(ABS.replace("y := -x;", "y := -z;"), id="unresolved-name"),
    pytest.param(ABS.replace("y := -x;", "y := true;"), id="type-error"),
    pytest.param(ABS + "/* never closed", id="open-comment"),
]


@pytest.mark.parametrize("program", COMPILE_ERRORS)
async def test_programs_that_do_not_compile(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str
) -> None:
    status, reward, feedback, _ = await judge(verifier, sandbox, program)
    assert (status, reward) == (Status.COMPILE_ERROR, 0.0), feedback


async def test_a_dafny4_program_is_rewritten_for_dafny2(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    status, reward, feedback, details = await judge(verifier, sandbox, DAFNY4)
    assert (status, reward) == (Status.PASSED, 1.0), feedback
    assert "for loop → while loop" in details["rewrites"]
    assert "ghost function → function" in details["rewrites"]
    # The rewrite proves the same: a wrong invariant is still wrong.
    broken = DAFNY4.replace("invariant 0 <= n <= i", "invariant 0 <= n < i")
    status, _, feedback, details = await judge(verifier, sandbox, broken)
    assert status is Status.FAILED, feedback
    assert details["rewrites"]


CHEATS = [
    pytest.param(
        "lemma L(x: int) ensures x > 100 { assume x > 100; }", "assume", id="assume-statement"
    ),
    pytest.param(
        "function F(x: int): int ensures F(x) > x { assume false; x }",
        "assume",
        id="assume-in-expression",
    ),
    pytest.param("lemma {:axiom} L() ensures false", "{:axiom}", id="axiom-attribute"),
    pytest.param(
        "method {:verify false} M() returns (r: int) ensures r == 1 { r := 2; }",
        "{:verify false}",
        id="verify-false",
    ),
    pytest.param(
        "method {:verify 0} M() returns (r: int) ensures r == 1 { r := 2; }",
        "{:verify false}",
        id="verify-zero",
    ),
    pytest.param("method {:extern} M() ensures false", "{:extern}", id="extern"),
    pytest.param("lemma L() ensures false", "bodiless", id="bodiless-lemma"),
    pytest.param("method M() returns (r: int) ensures r == 1", "bodiless", id="bodiless-method"),
    pytest.param("predicate P(x: int) ensures P(x) ==> x > 0", "bodiless", id="bodiless-predicate"),
    pytest.param(
        "method M() ensures false decreases * { while true decreases * { } }",
        "decreases *",
        id="decreases-star",
    ),
    pytest.param(
        'module {:options "/noCheating:0"} M { lemma L() ensures false { assume false; } }',
        "{:options}",
        id="options",
    ),
    pytest.param(
        "method {:inline 1} R(n: nat) returns (r: int) ensures r == 7 "
        "{ if n == 0 { r := 7; } else { r := R(n - 1); r := r + 1; } }",
        "{:*}",
        id="boogie-inline",
    ),
    pytest.param(
        "method {:selective_checking} M() ensures false { }", "{:*}", id="selective-checking"
    ),
    pytest.param(
        "method {:only} M() returns (r: int) ensures r == 1 { r := 1; }", "{:only}", id="only"
    ),
    pytest.param(
        "method M(x: int) returns (r: int) ensures r > x { expect x > 0; r := x; }",
        "expect",
        id="expect",
    ),
    pytest.param(
        'include "/etc/passwd"\nmethod M() returns (r: int) ensures r == 1 { r := 1; }',
        "include",
        id="include",
    ),
    pytest.param(
        "function {:autoReq} F(s: seq<int>): int ensures F(s) == s[0] { s[0] }",
        "{:autoReq}",
        id="auto-req",
    ),
]


@pytest.mark.parametrize(("program", "construct"), CHEATS)
async def test_every_way_around_the_prover_is_forbidden(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str, construct: str
) -> None:
    status, reward, feedback, details = await judge(verifier, sandbox, program)
    assert (status, reward) == (Status.FORBIDDEN, 0.0), feedback
    assert construct in [f["construct"] for f in details["forbidden"]]


BODILESS_STATEMENTS = [
    pytest.param(
        "method M() returns (r: int) ensures r == 42\n"
        "{ r := 42; while r < 100 invariant r == 42 r := 7; }",
        id="loop-without-body",
    ),
    pytest.param(
        "lemma L(x: int) ensures x > 100 { forall y | y == x ensures y > 100; }",
        id="forall-without-body",
    ),
]


@pytest.mark.parametrize("program", BODILESS_STATEMENTS)
async def test_statements_that_assume_their_claims_are_forbidden(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str
) -> None:
    # These Dafny itself finds (and warns of, or refuses under /noCheating:1).
    status, _, feedback, _ = await judge(verifier, sandbox, program)
    assert status is Status.FORBIDDEN, feedback
    assert "body" in feedback


async def test_cheats_in_comments_and_strings_are_only_text(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    program = (
        "// assume false; {:axiom} {:verify false}\n/* nested /* assume */ {:extern} */\n"
        'method M() returns (s: string) ensures s == "assume false; {:axiom}"\n'
        '{ s := "assume false; {:axiom}"; }\n'
    )
    status, _, feedback, _ = await judge(verifier, sandbox, program)
    assert status is Status.PASSED, feedback


async def test_allowing_a_construct_lets_it_through_to_dafny(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    program = "lemma L(x: int) ensures x > 100 { assume x > 100; }"
    forbid = [c for c in DafnySpec().forbid if c != "assume"]
    status, reward, feedback, _ = await judge(verifier, sandbox, program, forbid=forbid)
    assert (status, reward) == (Status.PASSED, 1.0), feedback


async def test_sound_attributes_are_allowed(verifier: DafnyVerifier, sandbox: LocalSandbox) -> None:
    program = ABS.replace("method Abs", "method {:timeLimit 20} {:vcs_split_on_every_assert} Abs")
    status, _, feedback, _ = await judge(verifier, sandbox, program)
    assert status is Status.PASSED, feedback


# -- the reference's specification ---------------------------------------------------------


_HINTS_REMOVED = SUM.replace("    invariant s == SumTo(a[..], i)\n", "")
WEAKENED = [
    pytest.param(
        SUM.replace("  ensures s == SumTo(a[..], a.Length)\n", ""), "removed", id="ensures-removed"
    ),
    pytest.param(
        SUM.replace("ensures s == SumTo(a[..], a.Length)", "ensures s == s"),
        "removed or changed",
        id="ensures-weakened",
    ),
    pytest.param(
        SUM.replace("ensures s ==", "requires a.Length == 0\n  ensures s =="),
        "added",
        id="requires-added",
    ),
    pytest.param(
        SUM.replace("ensures s ==", "modifies a\n  ensures s =="), "added", id="modifies-added"
    ),
    pytest.param(
        SUM.replace("  requires n <= |a|\n", ""), "removed", id="function-requires-removed"
    ),
    pytest.param(
        SUM.replace("SumTo(a, n - 1) + a[n - 1]", "0"), "body changed", id="function-body-changed"
    ),
    pytest.param(
        SUM.replace("method Sum(a: array<int>)", "method Sum(a: array<nat>)"),
        "signature changed",
        id="signature-changed",
    ),
    pytest.param(
        SUM.replace("method Sum", "method Total").replace("Sum(", "Total("),
        "removed",
        id="method-renamed",
    ),
]


@pytest.mark.parametrize(("completion", "says"), WEAKENED)
async def test_a_changed_specification_is_forbidden(
    verifier: DafnyVerifier, sandbox: LocalSandbox, completion: str, says: str
) -> None:
    status, reward, feedback, details = await judge(
        verifier, sandbox, completion, reference=_HINTS_REMOVED
    )
    assert (status, reward) == (Status.FORBIDDEN, 0.0), feedback
    assert says in feedback
    assert details["spec_changes"]


async def test_hints_lemmas_and_stronger_ensures_may_be_added(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    completion = SUM.replace(
        "    s := s + a[i];", "    assert a[..i + 1][..i] == a[..i];\n    s := s + a[i];"
    ).replace(
        "  ensures s == SumTo(a[..], a.Length)\n",
        "  ensures s == SumTo(a[..], a.Length)\n  ensures a.Length == 0 ==> s == 0\n",
    )
    completion += "\nlemma SumToZero(a: seq<int>) ensures SumTo(a, 0) == 0 { }\n"
    status, reward, feedback, _ = await judge(
        verifier, sandbox, completion, reference=_HINTS_REMOVED
    )
    assert (status, reward) == (Status.PASSED, 1.0), feedback
    # Whitespace and comments are not the specification.
    spaced = "\n// the reference, reformatted\n" + _HINTS_REMOVED.replace(
        "ensures s == SumTo(a[..], a.Length)", "ensures   s == SumTo( a[..],\n   a.Length )"
    )
    status, _, feedback, _ = await judge(verifier, sandbox, SUM, reference=spaced)
    assert status is Status.PASSED, feedback


async def test_the_reference_may_keep_its_own_assumptions(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    forbid = [c for c in DafnySpec().forbid if c != "bodiless"]
    reference = "lemma {:axiom} Given(x: int) ensures x * x >= 0\n" + ABS
    status, _, feedback, _ = await judge(
        verifier, sandbox, reference, reference=reference, forbid=forbid
    )
    assert status is Status.PASSED, feedback
    extra = reference + "lemma {:axiom} Mine() ensures false\n"
    status, _, feedback, _ = await judge(
        verifier, sandbox, extra, reference=reference, forbid=forbid
    )
    assert status is Status.FORBIDDEN, feedback


TRIVIAL = [
    pytest.param("method M(x: int) returns (r: int) { r := x; }", "no method", id="no-ensures"),
    pytest.param(
        "method M(x: int) returns (r: int) ensures true { r := x; }", "ensures true", id="true"
    ),
    pytest.param(
        "method M(x: int) returns (r: int) ensures r == r { r := x; }", "r == r", id="r-equals-r"
    ),
    pytest.param(
        "method M(x: int) returns (r: int) ensures x > 0 ==> true { r := x; }",
        "==> true",
        id="implies-true",
    ),
]


@pytest.mark.parametrize(("program", "says"), TRIVIAL)
async def test_a_specification_that_proves_nothing_is_no_pass(
    verifier: DafnyVerifier, sandbox: LocalSandbox, program: str, says: str
) -> None:
    status, reward, feedback, details = await judge(verifier, sandbox, program)
    assert (status, reward) == (Status.FAILED, 0.0), feedback
    assert says in details["trivial_spec"]
    assert details["errors"] == 0  # Dafny found nothing wrong; it proves nothing all the same


# -- time, and the pool ---------------------------------------------------------------------


async def test_a_proof_that_runs_out_of_time(sandbox: LocalSandbox) -> None:
    verifier = DafnyVerifier(servers=1)
    try:
        status, _, feedback, _ = await judge(verifier, sandbox, ABS)
        assert status is Status.PASSED, feedback
        status, reward, feedback, _ = await judge(verifier, sandbox, SLOW.format(i=7), timeout_s=3)
        assert (status, reward) == (Status.TIMEOUT, 0.0), feedback
        assert verifier._pool is not None
        discarded = verifier._pool.stats.discarded
        # Five procedures of 2 s each overrun the 3 s for the whole program: the server is
        # killed mid-answer and replaced, and the next program is judged by a fresh one.
        slow = "".join(SLOW.format(i=i) for i in range(5))
        status, _, feedback, _ = await judge(verifier, sandbox, slow, timeout_s=3)
        assert status is Status.TIMEOUT, feedback
        assert verifier._pool.stats.discarded == discarded + 1
        status, _, feedback, _ = await judge(verifier, sandbox, ABS)
        assert status is Status.PASSED, feedback
        assert verifier._pool.stats.started == discarded + 2
    finally:
        await verifier.close()


async def test_servers_are_recycled_and_never_answer_from_a_cache(sandbox: LocalSandbox) -> None:
    verifier = DafnyVerifier(servers=1, server_uses=3)
    try:
        broken = ABS.replace("y := -x;", "y := x;")
        # The same name, verified then broken then fixed on one server: each answer is new.
        results = [(await judge(verifier, sandbox, p))[0] for p in (ABS, broken, ABS, broken)]
        assert results == [Status.PASSED, Status.FAILED, Status.PASSED, Status.FAILED]
        assert verifier._pool is not None
        assert verifier._pool.stats.recycled == 1
        assert verifier._pool.stats.started == 2
        facts = verifier.facts(sandbox)
        assert facts["version"].startswith("2.3")
        assert facts["pool"]["size"] == 1
    finally:
        await verifier.close()


async def test_many_programs_at_once_through_a_small_pool(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    programs = [ABS, SUM, MAX, GCD.replace("    decreases a + b\n", "")] * 2
    results = await asyncio.gather(*(judge(verifier, sandbox, p) for p in programs))
    statuses = [r[0] for r in results]
    expected = [Status.PASSED, Status.PASSED, Status.PASSED, Status.FAILED] * 2
    assert statuses == expected


async def test_the_service_scores_dafny_and_reports_its_version() -> None:
    from assay.clients.schema import ScoreItem
    from assay.service.app import build_engine
    from assay.service.settings import Settings

    engine = build_engine(Settings(dafny_servers=1))
    try:
        items = [
            ScoreItem(verifier="dafny", completion=f"```dafny\n{ABS}```"),
            ScoreItem(verifier="dafny", completion=f"```dafny\n{ABS}```"),  # a copy: run once
            ScoreItem(verifier="dafny", completion="lemma L() ensures false"),
            ScoreItem(verifier="dafny", completion=ABS, spec={"forbid": ["sorry"]}),
        ]
        results = await engine.score(items)
        assert [r.status for r in results] == ["passed", "passed", "forbidden", "invalid_spec"]
        described = await engine.describe()
        (dafny,) = [v for v in described.verifiers if v.name == "dafny"]
        assert dafny.available
        assert dafny.facts["version"].startswith("2.3.")
        assert dafny.facts["pool"]["leases"] == 1
    finally:
        await engine.close()


async def test_one_dafny_process_per_program_gives_the_same_verdicts(sandbox: LocalSandbox) -> None:
    verifier = DafnyVerifier(use_server=False)
    assert verifier.facts(sandbox)["mode"] == "one process per program"
    cases = [
        (ABS, Status.PASSED),
        (GCD.replace("    decreases a + b\n", ""), Status.FAILED),
        (ABS.replace("y := -x;", "y := -z;"), Status.COMPILE_ERROR),
        (DAFNY4, Status.PASSED),
    ]
    for program, expected in cases:
        status, _, feedback, _ = await judge(verifier, sandbox, program)
        assert status is expected, feedback


async def test_a_body_less_lemma_of_the_reference_is_a_given_fact(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    # DafnyBench's way: a lemma stated without a body in the task is a fact to use.
    given = "lemma Given(x: int) ensures x * x >= 0\n"
    user = "method Square(x: int) returns (y: int) ensures y >= 0 { Given(x); y := x * x; }\n"
    reference = given + user.replace("Given(x); y := x * x;", "")
    status, _, feedback, _ = await judge(verifier, sandbox, given + user, reference=reference)
    assert status is Status.PASSED, feedback
    own = given + user + "lemma Mine() ensures false\n"
    status, _, feedback, _ = await judge(verifier, sandbox, own, reference=reference)
    assert status is Status.FORBIDDEN, feedback


async def test_a_traits_abstract_method_is_proved_by_its_class(
    verifier: DafnyVerifier, sandbox: LocalSandbox
) -> None:
    program = """
trait Shape {
  method Area() returns (a: int)
    ensures a >= 0
}
class Square extends Shape {
  var side: int
  constructor (s: int) { side := s; }
  method Area() returns (a: int)
    ensures a >= 0
  {
    a := side * side;
  }
}
"""
    status, _, feedback, _ = await judge(verifier, sandbox, program)
    assert status is Status.PASSED, feedback
    wrong = program.replace("a := side * side;", "a := side;")
    status, _, feedback, _ = await judge(verifier, sandbox, wrong)
    assert status is Status.FAILED, feedback
