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
