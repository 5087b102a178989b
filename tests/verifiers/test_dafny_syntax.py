"""The dafny verifier's own reading of Dafny: tokens, declarations, rewrites, Dafny's output."""

from __future__ import annotations

import pytest

from assay.clients.schema import DafnySpec
from assay.verifiers import Status
from assay.verifiers import dafny_syntax as syntax
from assay.verifiers.dafny import parse_output


def test_the_for_loop_rewrite_keeps_the_bounds_invariant() -> None:
    source = "method M() { for i := 0 to 10 invariant true { print i; } }"
    rewritten, done = syntax.to_dafny2(source)
    assert done == ["for loop → while loop"]
    assert "while i < 10 invariant 0 <= i <= 10" in rewritten
    down, _ = syntax.to_dafny2("method M(n: nat) { for i := n downto 0 { print i; } }")
    assert "while i > 0 invariant 0 <= i <= n" in down
    assert "i := i - 1;" in down
    # A bound the body could change is left alone (Dafny says it cannot read the loop).
    same, done = syntax.to_dafny2("method M(a: seq<int>) { for i := 0 to f(a) { } }")
    assert "for i" in same
    assert "for loop → while loop" not in done


def test_cli_output_is_read_as_the_server_output_is() -> None:
    # Dafny 2.3's command line (the benchmark's plain way; Dafny 4's `dafny verify` alike).
    passed = parse_output("\nDafny program verifier finished with 3 verified, 0 errors\n")
    assert (passed.status, passed.verified) == (Status.PASSED, 3)
    failed = parse_output(
        "program.dfy(4,2): Error BP5003: A postcondition might not hold on this return path.\n"
        "program.dfy(2,10): Related location: This is the postcondition that might not hold.\n"
        "Execution trace:\n    (0,0): anon0\n\n"
        "Dafny program verifier finished with 1 verified, 1 error\n"
    )
    assert failed.status is Status.FAILED
    assert failed.errors[0]["line"] == 4
    assert failed.errors[0]["related"][0]["line"] == 2
    nothing = parse_output("\nDafny program verifier finished with 0 verified, 0 errors\n")
    assert nothing.status is Status.FAILED  # `{:verify false}` everywhere: 0 errors, no pass
    timeouts = parse_output("Dafny program verifier finished with 1 verified, 0 errors, 1 time out")
    assert timeouts.status is Status.TIMEOUT
    syntax_error = parse_output(
        "program.dfy(1,18): Error: closeparen expected\n1 parse errors detected in program.dfy\n"
    )
    assert syntax_error.status is Status.COMPILE_ERROR


def test_forbid_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown construct"):
        DafnySpec(forbid=["assume", "sorry"])
    assert DafnySpec(forbid=["{:fuel}", "{:*}", "decreases *"]).forbid[0] == "{:fuel}"


def test_tokens_leave_out_comments_and_keep_strings_whole() -> None:
    source = (
        "/* a /* nested */ comment */ var x' := 'a'; // assume\n"
        'var s := "say \\"assume\\""; var v := @"verbatim ""{:axiom}""";\n'
        "var c := '\\''; var r := 0..n;"
    )
    tokens = syntax.tokenize(source)
    texts = [t.text for t in tokens]
    assert "assume" not in texts
    assert "x'" in texts  # an identifier with a prime
    assert "'a'" in texts and "'\\''" in texts  # noqa: PT018 - two characters
    assert '"say \\"assume\\""' in texts
    assert '@"verbatim ""{:axiom}"""' in texts
    assert texts[-4:] == ["0", "..", "n", ";"]
    assert tokens[0].line == 1
    assert next(t for t in tokens if t.text == "var" and t.line == 2).col == 1
    with pytest.raises(syntax.DafnySyntaxError):
        syntax.tokenize("method M() { /* never closed }")


PROGRAM = """
module Shapes {
  class Counter {
    var count: nat
    constructor ()
      ensures count == 0
    {
      count := 0;
    }
    method Inc()
      modifies this
      ensures count == old(count) + 1
    {
      count := count + 1;
    }
    function Get(): nat
      reads this
    {
      count
    }
  }
  method Empty() returns (s: set<int>)
    ensures s == {}
  {
    s := {};
  }
  method Card(s: seq<int>) returns (n: nat)
    requires |s| > 0
    ensures n == |s|
  {
    n := |s|;
  }
}
"""


def test_declarations_with_their_clauses_and_bodies() -> None:
    decls = {d.key: d for d in syntax.walk(syntax.parse(PROGRAM))}
    inc = decls[("Shapes", "Counter", "method", "Inc")]
    assert [(kw, syntax.text(toks)) for kw, toks in inc.clauses] == [
        ("modifies", "this"),
        ("ensures", "count == old ( count ) + 1"),
    ]
    assert inc.body is not None
    assert decls[("Shapes", "Counter", "function", "Get")].clause_texts("reads") == ["this"]
    # A set display in an ensures clause is not the body; `|s|` before the body is an operand.
    assert decls[("Shapes", "method", "Empty")].clause_texts("ensures") == ["s == { }"]
    card = decls[("Shapes", "method", "Card")]
    assert card.clause_texts("requires") == ["| s | > 0"]
    assert syntax.text(card.body or []) == "{ n := | s | ; }"
    assert ("Shapes", "Counter", "var", "count") in decls
    assert ("Shapes", "Counter", "constructor", "constructor") in decls


def test_spec_changes_inside_classes_and_modules() -> None:
    reference = syntax.parse(PROGRAM)
    same = syntax.parse(PROGRAM.replace("count := count + 1;", "count := 1 + count;"))
    assert syntax.spec_changes(reference, same) == []
    weaker = syntax.parse(
        PROGRAM.replace("modifies this\n", "modifies this\n requires count > 5\n")
    )
    (change,) = syntax.spec_changes(reference, weaker)
    assert "Shapes.Counter.Inc" in change
    assert "requires count > 5" in change
    field = syntax.parse(PROGRAM.replace("var count: nat", "var count: int"))
    assert any("var Shapes.Counter.count" in c for c in syntax.spec_changes(reference, field))


BODILESS = [
    pytest.param("method M() { var r := 0; while r < 10 invariant r == 42 r := 7; }", 1, id="loop"),
    pytest.param("method M() { var r := 0; while r < 10 invariant r == 42 }", 1, id="loop-last"),
    pytest.param(
        "lemma L(x: int) ensures x > 1 { forall y | y == x ensures y > 1; }", 1, id="forall"
    ),
    pytest.param(
        "method M(s: seq<int>) { var i := 0; while i < |s| invariant i <= |s| { i := i + 1; } }",
        0,
        id="loop-with-body",
    ),
    pytest.param(
        "method M(x: int) { var i := 0; while x in {1, 2} && i < 3 { i := i + 1; } }",
        0,
        id="set-in-guard",
    ),
    pytest.param("method M() { while * { break; } }", 0, id="while-star"),
    pytest.param(
        "method M(y0: int) { var y := y0; while decreases if y < 0 then -y else y "
        "{ case y < 0 => y := y + 1; case y > 0 => y := y - 1; } }",
        0,
        id="guarded-alternatives",
    ),
    pytest.param(
        "method M(a: array<int>) modifies a { forall i | 0 <= i < a.Length { a[i] := 0; } }",
        0,
        id="forall-with-body",
    ),
    pytest.param("lemma L() ensures forall x: int :: x == x { }", 0, id="forall-expression"),
]


@pytest.mark.parametrize(("source", "count"), BODILESS)
def test_statements_without_bodies(source: str, count: int) -> None:
    found = [f for f in syntax.findings(source) if f.construct == "bodiless"]
    assert len(found) == count


TRIVIAL = [
    ("true", True),
    ("(true)", True),
    ("r == r", True),
    ("a[i] <= a[i]", True),
    ("x > 0 ==> true", True),
    ("false ==> r == 3", True),
    ("r > 0 || true", True),
    ("true && r == r", True),
    ("r == x", False),
    ("r >= 0 && true", False),
    ("forall i :: 0 <= i < |a| ==> a[i] == a[i]", False),
    ("r == x ==> r == x", True),
]


@pytest.mark.parametrize(("clause", "expected"), TRIVIAL)
def test_trivial_ensures(clause: str, expected: bool) -> None:
    assert syntax.trivial(syntax.tokenize(clause)) is expected


FOUND = [
    ("@Axiom lemma L() ensures false", "{:axiom}"),
    ("@Verify(false) method M() ensures false { }", "{:verify false}"),
    ("method M() { var x :- expect F(); }", "expect"),
    ("method M() { ghost var {:assumption} b: bool; }", "{:*}"),
    ("method {:synthesize} M() returns (o: object) ensures fresh(o)", "{:*}"),
    ("lemma {:ignore} L() ensures false { }", "{:*}"),
    ("method M() { assert {:only} true; }", "{:only}"),
    ('method {:error "[SUCCESS]"} M() { }', "{:*}"),
]


@pytest.mark.parametrize(("source", "construct"), FOUND)
def test_catalogue_entries_found_on_tokens(source: str, construct: str) -> None:
    assert construct in [f.construct for f in syntax.findings(source)]


def test_sound_attributes_are_not_findings() -> None:
    source = (
        "@IsolateAssertions method {:timeLimit 10} {:fuel F, 2} M() { assert {:subsumption 0} "
        "{:focus} true; assert {:split_here} true; }\n"
        'method N() { var s := @"verbatim"; }'
    )
    assert syntax.findings(source) == []


# Forms met in DafnyBench's ground truths (bench/dafnybench.py).
_FUNCTION = """
function Sum(s: seq<int>): int
  decreases |s|
{
  if |s| == 0 then 0 else s[0] + Sum(s[1..])
}
"""
UNCHANGED = [
    pytest.param(
        _FUNCTION,
        _FUNCTION.replace("if |s| == 0", "assert |s| >= 0; SumLemma(s); if |s| == 0"),
        id="hints-in-a-function-body",
    ),
    pytest.param(
        _FUNCTION,
        _FUNCTION.replace("then 0 else", "then 0 else calc { 1; == 1; } assert true by { } "),
        id="calc-and-assert-by-in-a-function-body",
    ),
    pytest.param(
        "method M(a: array<int>) returns (r: int) ensures r >= 0; { r := 0; }",
        "method M(a: array<int>) returns (r: int) ensures r >= 0; { r := 1; }",
        id="dafny2-semicolon-after-a-clause",
    ),
    pytest.param(
        "lemma L(b: nat) ensures var s := set n: nat | n < b :: n; |s| == b { }",
        "lemma L(b: nat) ensures var s := set n: nat | n < b :: n; |s| == b { L2(b); }",
        id="let-in-a-clause",
    ),
    pytest.param(
        "function F(n: nat): nat { n } by method { return n; }",
        "function F(n: nat): nat { n } by method { var m := n; return m; }",
        id="by-method-is-an-implementation",
    ),
]


@pytest.mark.parametrize(("reference", "completion"), UNCHANGED)
def test_what_is_not_the_specification(reference: str, completion: str) -> None:
    assert syntax.spec_changes(syntax.parse(reference), syntax.parse(completion)) == []


def test_a_heap_label_is_not_an_attribute() -> None:
    source = "method M(a: array<int>) modifies a { label L: a[0] := 1; assert old@L(a[0]) == 0; }"
    assert syntax.findings(source) == []
