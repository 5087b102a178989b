"""The lean verifier, through the real sandbox, with a stand-in REPL replaying real transcripts
(no Lean can be installed here; lean_support.py says which answers are recorded and which are
constructed)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from assay.clients.schema import LeanSpec
from assay.sandboxes import LocalSandbox, ToolSpec
from assay.sandboxes.errors import SandboxError
from assay.service.app import create_app
from assay.service.settings import Settings
from assay.verifiers.base import Status
from assay.verifiers.lean import KiminaBackend, LeanVerifier, ReplBackend
from assay.verifiers.lean_repl import (
    LeanRepl,
    ReplError,
    encode_request,
    parse_command,
    parse_step,
)
from tests.conftest import needs_bwrap
from tests.verifiers.lean_support import (
    FIXTURES,
    HEADER,
    NONCE,
    STANDARD,
    STANDIN,
    Script,
    env_answer,
    error_answer,
    recorded,
    standin_backend,
    transcript,
)

GCD = "theorem mathd_numbertheory_188 : Nat.gcd 180 168 = 12"
GCD_PROOF = "theorem mathd_numbertheory_188 : Nat.gcd 180 168 = 12 := by norm_num"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder the sandbox's uid can read (pytest's own lies under a 0700 folder of root's)."""
    folder = Path(tempfile.mkdtemp(prefix="assay-lean-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def sandbox() -> AsyncIterator[LocalSandbox]:
    box = LocalSandbox()
    yield box
    await box.close()


# -- the wire protocol: transcripts replayed through the client and the sandbox -----------------

TRANSCRIPTS = sorted(
    p.name.removesuffix(".in")
    for p in FIXTURES.glob("*.in")
    if p.name.removesuffix(".in") != "invalid_line_break"  # test_requests_escape_newlines
) + ["Mathlib/H20231020", "Mathlib/H20231215", "Mathlib/H20231215_2", "Mathlib/exact"]


async def _replay(sandbox: LocalSandbox, tmp_path: Path, name: str) -> list[Any]:
    script = Script(strict_order=True)
    for request, answer in transcript(name):
        script.add(request, answer, "recorded")
    path = script.write(tmp_path)
    tool = await sandbox.spawn(
        ToolSpec(
            argv=("/usr/bin/python3", "-I", str(STANDIN), str(path)),
            ro_paths=(str(STANDIN.parent), str(tmp_path)),
        )
    )
    repl = LeanRepl(tool)
    results: list[Any] = []
    try:
        for request, answer in transcript(name):
            value = await repl.request(request, timeout_s=20)
            assert value == json.loads(answer)  # the recorded bytes, read back
            try:
                is_step = "proofState" in value and "env" not in value
                results.append(parse_step(value) if is_step else parse_command(value))
            except ReplError as exc:
                results.append(exc)
    finally:
        await repl.close()
    return results


@needs_bwrap
@pytest.mark.parametrize("name", TRANSCRIPTS)
async def test_every_transcript_replays_through_the_client(
    sandbox: LocalSandbox, tmp_path: Path, name: str
) -> None:
    results = await _replay(sandbox, tmp_path, name)
    assert len(results) == len(transcript(name))


@needs_bwrap
async def test_transcript_shapes_are_read_field_by_field(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    ok = await _replay(sandbox, tmp_path, "Mathlib/H20231020")
    assert [r["env"] for r in ok] == [0, 1, 2, 3]
    assert all("messages" not in r for r in ok)

    errors = (await _replay(sandbox, tmp_path, "incomplete"))[1]
    first = errors["messages"][0]
    assert (first["severity"], first["pos"], first["endPos"]) == (
        "error",
        {"line": 3, "column": 19},
        {"line": 3, "column": 20},
    )
    assert errors["messages"][1]["data"].startswith("unsolved goals\ncase neg")

    term = (await _replay(sandbox, tmp_path, "term_sorry"))[0]
    assert term["sorries"][0]["pos"] == {"line": 1, "column": 15}
    tactic = (await _replay(sandbox, tmp_path, "tactic_mode_sorry"))[1]
    assert tactic["proofStatus"] == "Incomplete: contains sorry"
    assert "pos" not in tactic["sorries"][0]  # a sorry of a tactic step has no position

    unknown = (await _replay(sandbox, tmp_path, "unknown_environment"))[0]
    assert isinstance(unknown, ReplError)
    assert unknown.message == "Unknown environment."
    bad_tactic = (await _replay(sandbox, tmp_path, "unknown_tactic"))[1]
    assert isinstance(bad_tactic, ReplError)
    assert bad_tactic.message.startswith("Lean error:")

    pickled = await _replay(sandbox, tmp_path, "pickle_environment")
    assert [r["env"] for r in pickled] == [0, 0, 1, 2]
    states = await _replay(sandbox, tmp_path, "pickle_proof_state_1")
    assert states[-1]["proofStatus"] == "Completed"


def test_requests_escape_newlines_the_repl_would_drop() -> None:
    # invalid_line_break: a raw newline inside a string is lost by the REPL's line reader.
    raw = (FIXTURES / "invalid_line_break.in").read_text(encoding="utf-8").split("\n\n")[0]
    assert "\n" in raw.strip()  # the transcript sends one
    (request, answer), _ = transcript("invalid_line_break")
    assert request == {"cmd": "theorem foo : 1 = 1 := bysorry"}
    assert "bysorry" in answer
    encoded = encode_request({"cmd": "theorem foo : 1 = 1 := by\nsorry 𝔽"})
    assert encoded.endswith(b"\n\n")
    assert encoded.count(b"\n") == 2
    assert json.loads(encoded) == {"cmd": "theorem foo : 1 = 1 := by\nsorry 𝔽"}
    assert "𝔽".encode() in encoded  # UTF-8, not a surrogate pair


# -- the verdict table ---------------------------------------------------------------------------


def _passing(script: Script, body: str = GCD_PROOF, proof: int = 1, env_out: int = 1) -> None:
    """A proof of mathd_numbertheory_188 that Lean accepts (recorded: H20231020's answer)."""
    script.completion(body, 2, env_answer(env_out), "recorded", repeat=True)
    script.probe_proved(env=env_out, proof=proof, target="mathd_numbertheory_188")


def _gcd_script() -> Script:
    script = Script()
    script.start()
    script.reference(GCD, "⊢ Nat.gcd 180 168 = 12")
    return script


async def _verify(
    sandbox: LocalSandbox,
    tmp_path: Path,
    script: Script,
    completion: str,
    spec: dict[str, Any],
    **options: Any,
) -> tuple[Any, ReplBackend]:
    backend = standin_backend(tmp_path, script, **options)
    verifier = LeanVerifier(backend, default_header=HEADER)
    try:
        verdict = await verifier.verify(completion, LeanSpec(**spec), sandbox)
    finally:
        await verifier.close()
    return verdict, backend


@needs_bwrap
async def test_a_proof_of_the_statement_passes(sandbox: LocalSandbox, tmp_path: Path) -> None:
    script = _gcd_script()
    _passing(script)
    verdict, backend = await _verify(sandbox, tmp_path, script, GCD_PROOF, {"theorem": GCD})
    assert verdict.status is Status.PASSED, verdict.feedback
    assert verdict.reward == 1.0
    assert verdict.details["axioms"] == STANDARD
    assert backend.pool.stats.started == 1


@needs_bwrap
async def test_errors_fail_with_positions_in_the_completion(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    # have_by_sorry: an error and a sorry in one answer; the error decides. The completion
    # brings its own imports, so the REPL's line 1 is the completion's line 2.
    body = "theorem foo (x : Int) : x = x := by\n  have h : x = 1 := by sorry"
    script = Script()
    script.start("import Mathlib")
    script.reference("theorem foo (x : Int) : x = x", "x : Int\n⊢ x = x", env=1)
    script.completion(body, 1, recorded("have_by_sorry", 0), "recorded")
    completion = "import Mathlib\n" + body
    spec = {"theorem": "theorem foo (x : Int) : x = x := by sorry", "header": ""}
    verdict, _ = await _verify(sandbox, tmp_path, script, completion, spec)
    assert verdict.status is Status.FAILED
    assert verdict.reward == 0.0
    assert "line 2, col 33: unsolved goals" in verdict.feedback
    assert verdict.details["errors"][0] == {
        "line": 2,
        "column": 33,
        "end_line": 3,
        "end_column": 28,
        "message": "unsolved goals\nx : Int\nh : x = 1\n⊢ x = x",
    }


@needs_bwrap
async def test_errors_without_a_theorem(sandbox: LocalSandbox, tmp_path: Path) -> None:
    body = "def f (x : Bool) : Nat := by\n  by_cases x\n  { apply Nat.succ }"
    script = Script()
    script.start()
    script.completion(body, 0, recorded("incomplete", 1), "recorded")
    verdict, _ = await _verify(sandbox, tmp_path, script, body, {})
    assert verdict.status is Status.FAILED
    assert verdict.feedback.splitlines()[1].startswith("line 3, col 19: unsolved goals")


@needs_bwrap
@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ("def f : Nat := sorry", "term_sorry"),
        ("def f : Nat := by sorry", "tactic_sorry"),
    ],
    ids=["term", "tactic"],
)
async def test_sorry_is_forbidden(
    sandbox: LocalSandbox, tmp_path: Path, body: str, answer: str
) -> None:
    script = Script()
    script.start()
    script.completion(body, 0, recorded(answer, 0), "recorded")
    verdict, _ = await _verify(sandbox, tmp_path, script, body, {})
    assert verdict.status is Status.FORBIDDEN
    assert verdict.reward == 0.0
    assert "sorry" in verdict.feedback


@needs_bwrap
@pytest.mark.parametrize("spelling", ["declaration uses 'sorry'", "declaration uses `sorry`"])
async def test_the_sorry_warning_in_both_spellings(
    sandbox: LocalSandbox, tmp_path: Path, spelling: str
) -> None:
    # Constructed: a warning without a `sorries` entry (Lean before 4.28 said 'sorry').
    body = "theorem t : True := by admit"
    answer = recorded("tactic_sorry", 0)
    answer = json.dumps({"messages": json.loads(answer)["messages"], "env": 1}, indent=1)
    answer = answer.replace("declaration uses `sorry`", spelling) + "\n\n"
    script = Script()
    script.start()
    script.completion(body, 0, answer, "constructed")
    verdict, _ = await _verify(sandbox, tmp_path, script, body, {})
    assert verdict.status is Status.FORBIDDEN


@needs_bwrap
async def test_sorry_passes_where_the_spec_allows_it(sandbox: LocalSandbox, tmp_path: Path) -> None:
    body = "theorem thm1 : 1 = 1 := sorry"
    script = Script()
    script.start()
    script.reference("theorem thm1 : 1 = 1", "⊢ 1 = 1")
    script.completion(body, 2, recorded("dup_sorries", 0), "recorded")
    script.probe(
        env=0,
        proof=1,
        target="thm1",
        reference=f"assay_ref_{NONCE}_0",
        decls=[("thm1", "theorem")],
        axioms=["sorryAx"],
        statement={"found": True, "kind": "theorem", "same": True},
    )
    spec = {"theorem": "theorem thm1 : 1 = 1", "allow_sorry": True}
    verdict, _ = await _verify(sandbox, tmp_path, script, body, spec)
    assert verdict.status is Status.PASSED, verdict.feedback
    verdict, _ = await _verify(sandbox, tmp_path, script, body, {"theorem": "theorem thm1 : 1 = 1"})
    assert verdict.status is Status.FORBIDDEN


@needs_bwrap
@pytest.mark.parametrize(
    ("completion", "why"),
    [
        (GCD_PROOF.replace("= 12", "= 12 ∨ True"), "not the spec's"),
        (GCD_PROOF.replace("mathd_numbertheory_188", "easier"), "other theorems (easier)"),
        ("theorem mathd_numbertheory_188 (h : False) : Nat.gcd 180 168 = 12 := h.elim", "spec's"),
    ],
    ids=["weakened", "other-name", "extra-hypothesis"],
)
async def test_a_changed_statement_is_forbidden_before_lean(
    sandbox: LocalSandbox, tmp_path: Path, completion: str, why: str
) -> None:
    verdict, backend = await _verify(sandbox, tmp_path, Script(), completion, {"theorem": GCD})
    assert verdict.status is Status.FORBIDDEN
    assert why in verdict.feedback
    assert backend.pool.stats.started == 0  # no Lean was needed


@needs_bwrap
async def test_the_same_text_meaning_something_else_is_forbidden(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    # `variable (h : False)` makes the theorem take a hypothesis though its text is the spec's:
    # the environment's type differs (constructed answers).
    body = "variable (h : False)\n" + GCD_PROOF.replace("norm_num", "exact h.elim")
    script = _gcd_script()
    script.completion(body, 2, env_answer(3), "constructed")
    script.probe(
        env=3,
        proof=1,
        target="mathd_numbertheory_188",
        reference=f"assay_ref_{NONCE}_0",
        decls=[("mathd_numbertheory_188", "theorem")],
        axioms=[],
        statement={"found": True, "kind": "theorem", "same": False},
    )
    verdict, _ = await _verify(sandbox, tmp_path, script, body, {"theorem": GCD})
    assert verdict.status is Status.FORBIDDEN
    assert "does not have the spec's statement" in verdict.feedback


CHEATS = {
    # PrimeIntellect-ai/verifiers #2177: an axiom above the pinned statement.
    "axiom-above-statement": (
        "axiom cheat : False\n" + GCD_PROOF.replace("norm_num", "exact cheat.elim"),
        {"decls": [("cheat", "axiom"), ("mathd_numbertheory_188", "theorem")]},
        "declares axioms: cheat",
    ),
    # An axiom reached through an opaque wrapper: collectAxioms follows opaque values.
    "axiom-behind-opaque": (
        "opaque wrap : Nat\n" + GCD_PROOF.replace("norm_num", "exact wrap_spec"),
        {
            "decls": [("wrap", "opaque"), ("mathd_numbertheory_188", "theorem")],
            "axioms": [*STANDARD, "Mathlib.hidden_ax"],
        },
        "outside the allowed ones: Mathlib.hidden_ax",
    ),
    # A sorry that no `sorries` entry shows (reached through a lemma): the axiom closure has it.
    "sorryAx-in-closure": (
        "theorem helper : 1 = 1 := rfl\n" + GCD_PROOF.replace("norm_num", "exact helper2"),
        {"axioms": [*STANDARD, "sorryAx"]},
        "outside the allowed ones: sorryAx",
    ),
    "native_decide-hidden": (
        GCD_PROOF.replace("by norm_num", "by decide"),
        {"axioms": [*STANDARD, "Lean.ofReduceBool"]},
        "Lean.ofReduceBool",
    ),
}


@needs_bwrap
@pytest.mark.parametrize("name", list(CHEATS))
async def test_cheats_found_in_the_environment(
    sandbox: LocalSandbox, tmp_path: Path, name: str
) -> None:
    body, probe, why = CHEATS[name]
    script = _gcd_script()
    script.completion(body, 2, env_answer(3), "constructed")
    answer: dict[str, Any] = {
        "decls": [("mathd_numbertheory_188", "theorem")],
        "axioms": STANDARD,
        "statement": {"found": True, "kind": "theorem", "same": True},
        **probe,
    }
    script.probe(
        env=3, proof=1, target="mathd_numbertheory_188", reference=f"assay_ref_{NONCE}_0", **answer
    )
    verdict, _ = await _verify(sandbox, tmp_path, script, body, {"theorem": GCD})
    assert verdict.status is Status.FORBIDDEN
    assert verdict.reward == 0.0
    assert why in verdict.feedback


TOKEN_CHEATS = {
    "eval-fakes-output": '#eval IO.println "theorem proved, no sorry"\n' + GCD_PROOF,
    "print-axioms-redefined": (
        'elab "#print" "axioms" _id:ident : command => Lean.logInfo "no axioms"\n' + GCD_PROOF
    ),
    "macro-rules": "macro_rules | `(tactic| norm_num) => `(tactic| sorry)\n" + GCD_PROOF,
    "sorryAx-from-string": (
        "run_cmd Lean.Elab.Command.liftTermElabM do\n"
        '  let _ := Lean.mkConst (.str .anonymous "sorryAx")\n' + GCD_PROOF
    ),
    "sorryAx-by-hand": GCD_PROOF.replace("by norm_num", "sorryAx _ false"),
    "native_decide": GCD_PROOF.replace("norm_num", "native_decide"),
    "decide-native": GCD_PROOF.replace("norm_num", "decide +native"),
    "decide-native-config": GCD_PROOF.replace("norm_num", "decide (config := { native := true })"),
    "skip-kernel": "set_option debug.skipKernelTC true in\n" + GCD_PROOF,
    "instance-hijack": "instance : Inhabited Nat := ⟨12⟩\n" + GCD_PROOF,
    "implemented-by": "@[implemented_by id] def g (n : Nat) : Nat := n\n" + GCD_PROOF,
    "tactic-attribute": "@[tactic norm_num] def t : Nat := 0\n" + GCD_PROOF,
    "notation": 'local notation "twelve" => 12\n' + GCD_PROOF,
    "initialize": "initialize pure ()\n" + GCD_PROOF,
}


@needs_bwrap
@pytest.mark.parametrize("name", list(TOKEN_CHEATS))
async def test_code_running_commands_are_forbidden_before_lean(
    sandbox: LocalSandbox, tmp_path: Path, name: str
) -> None:
    verdict, backend = await _verify(
        sandbox, tmp_path, Script(), TOKEN_CHEATS[name], {"theorem": GCD}
    )
    assert verdict.status is Status.FORBIDDEN, verdict.feedback
    assert "not allowed" in verdict.feedback
    assert backend.pool.stats.started == 0


def test_forbidden_words_in_comments_and_strings_are_not_commands() -> None:
    from assay.verifiers.lean_syntax import violations

    text = '-- #eval x\n/- macro /- nested -/ run_cmd -/\ntheorem t : "#eval" = "#eval" := rfl'
    assert violations(text) == []
    assert [v.group for v in violations('#eval s!"{1}"')] == ["eval"]
    assert violations("#eval 1", ["eval"]) == []


@needs_bwrap
async def test_native_decide_passes_when_its_axiom_is_allowed(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    body = GCD_PROOF.replace("norm_num", "native_decide")
    script = _gcd_script()
    script.completion(body, 2, env_answer(3), "constructed")
    script.probe(
        env=3,
        proof=1,
        target="mathd_numbertheory_188",
        reference=f"assay_ref_{NONCE}_0",
        decls=[("mathd_numbertheory_188", "theorem")],
        axioms=[*STANDARD, "Lean.ofReduceBool"],
        statement={"found": True, "kind": "theorem", "same": True},
    )
    spec = {"theorem": GCD, "axioms": [*STANDARD, "Lean.ofReduceBool"], "allow": ["native_decide"]}
    verdict, _ = await _verify(sandbox, tmp_path, script, body, spec)
    assert verdict.status is Status.PASSED, verdict.feedback


@needs_bwrap
async def test_a_given_definition_cannot_be_redefined(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    # The header holds `def f` and an axiom about it; the completion redefining `f` is an
    # error in Lean (constructed answer: the environment already holds `f`).
    header = "import Mathlib\ndef f : Nat := 1\naxiom f_eq : f = 1"
    body = "def f : Nat := 2\ntheorem t : f = 1 := f_eq"
    script = Script()
    script.start(header, known=["f", "f_eq"])
    script.reference("theorem t : f = 1", "⊢ f = 1")
    script.completion(
        body, 2, error_answer("'f' has already been declared", 3, 1, 4), "constructed"
    )
    spec = {"theorem": "theorem t : f = 1", "header": header, "axioms": ["f_eq"]}
    verdict, _ = await _verify(sandbox, tmp_path, script, body, spec)
    assert verdict.status is Status.FAILED
    assert "already been declared" in verdict.feedback


@needs_bwrap
@pytest.mark.parametrize("rejected", [[], ["mathd_numbertheory_188: (kernel) type mismatch"]])
async def test_kernel_replay(sandbox: LocalSandbox, tmp_path: Path, rejected: list[str]) -> None:
    script = Script()
    script.start(replay=True)  # the probe with its replay part
    script.reference(GCD, "⊢ Nat.gcd 180 168 = 12")
    script.completion(GCD_PROOF, 2, env_answer(1), "recorded")
    script.probe(
        env=1,
        proof=1,
        target="mathd_numbertheory_188",
        reference=f"assay_ref_{NONCE}_0",
        replay=True,
        replay_errors=rejected,
        decls=[("mathd_numbertheory_188", "theorem")],
        axioms=STANDARD,
        statement={"found": True, "kind": "theorem", "same": True},
    )
    verdict, _ = await _verify(
        sandbox, tmp_path, script, GCD_PROOF, {"theorem": GCD}, kernel_replay=True
    )
    if rejected:
        assert verdict.status is Status.FORBIDDEN
        assert "kernel rejected" in verdict.feedback
    else:
        assert verdict.status is Status.PASSED, verdict.feedback


# -- the pool: timeouts, crashes, recycling ------------------------------------------------------


@needs_bwrap
async def test_a_timeout_kills_the_repl_and_the_next_proof_gets_a_fresh_one(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    slow = GCD_PROOF.replace("norm_num", "simp")
    script = _gcd_script()
    script.completion(slow, 2, env_answer(1), "constructed", delay_s=3600)
    _passing(script)
    backend = standin_backend(tmp_path, script)
    verifier = LeanVerifier(backend, default_header=HEADER)
    try:
        spec = LeanSpec(theorem=GCD, timeout_s=1)
        verdict = await verifier.verify(slow, spec, sandbox)
        assert verdict.status is Status.TIMEOUT
        assert verdict.reward == 0.0
        verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), sandbox)
        assert verdict.status is Status.PASSED, verdict.feedback
        assert backend.pool.stats.started == 2
        assert backend.pool.stats.discarded == 1
    finally:
        await verifier.close()


@needs_bwrap
async def test_a_crashed_repl_is_replaced(sandbox: LocalSandbox, tmp_path: Path) -> None:
    crash = GCD_PROOF.replace("norm_num", "simp")
    script = _gcd_script()
    script.completion(crash, 2, "", "constructed", exit=139)
    _passing(script)
    backend = standin_backend(tmp_path, script)
    verifier = LeanVerifier(backend, default_header=HEADER)
    try:
        verdict = await verifier.verify(crash, LeanSpec(theorem=GCD), sandbox)
        assert verdict.status is Status.RUNTIME_ERROR
        assert "crashed" in verdict.feedback
        verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), sandbox)
        assert verdict.status is Status.PASSED, verdict.feedback
        assert backend.pool.stats.started == 2
    finally:
        await verifier.close()


async def _three_proofs(sandbox: LocalSandbox, backend: ReplBackend) -> None:
    verifier = LeanVerifier(backend, default_header=HEADER)
    try:
        for _ in range(3):
            verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), sandbox)
            assert verdict.status is Status.PASSED, verdict.feedback
    finally:
        await verifier.close()


def _three_proof_script() -> Script:
    script = _gcd_script()
    script.completion(GCD_PROOF, 2, env_answer(1), "recorded", repeat=True)
    for proof in (1, 2, 3):
        script.probe_proved(env=1, proof=proof, target="mathd_numbertheory_188", repeat=True)
    return script


@needs_bwrap
async def test_the_pool_reuses_a_repl_and_its_statement(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    script = _three_proof_script()
    backend = standin_backend(tmp_path, script, max_proofs=100)
    await _three_proofs(sandbox, backend)
    assert backend.pool.stats.started == 1
    assert backend.pool.stats.leases == 3


@needs_bwrap
async def test_the_pool_recycles_after_n_proofs(sandbox: LocalSandbox, tmp_path: Path) -> None:
    backend = standin_backend(tmp_path, _three_proof_script(), max_proofs=2)
    await _three_proofs(sandbox, backend)
    assert backend.pool.stats.started == 2
    assert backend.pool.stats.recycled >= 1


@needs_bwrap
async def test_the_pool_recycles_a_repl_over_its_memory_ceiling(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    script = _three_proof_script()
    script.ballast_mb = 96
    backend = standin_backend(tmp_path, script, memory_ceiling_mb=64)
    await _three_proofs(sandbox, backend)
    assert backend.pool.stats.started == 3  # each REPL held 96 MB > 64 MB after its proof


@needs_bwrap
async def test_a_broken_probe_answer_is_the_services_failure(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    script = _gcd_script()
    script.completion(GCD_PROOF, 2, env_answer(1), "recorded")
    script.add(
        {
            "cmd": f'assay_probe_{NONCE} "mathd_numbertheory_188" "assay_ref_{NONCE}_0" "" 0 '
            f'"{NONCE}-1"',
            "env": 1,
        },
        recorded("dup_msg", 1),  # an info message, but not the probe's
        "recorded",
    )
    with pytest.raises(SandboxError, match="environment check failed"):
        await _verify(sandbox, tmp_path, script, GCD_PROOF, {"theorem": GCD})


@needs_bwrap
async def test_a_header_that_fails_is_the_specs_fault(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    header = "import Mathlib.Nope"
    script = Script()
    split_cmd = Script()
    split_cmd.start(header)
    script.add(
        split_cmd.exchanges[0]["request"],
        error_answer("unknown module prefix 'Nope'", 0),
        "constructed",
    )
    verdict, _ = await _verify(
        sandbox, tmp_path, script, "theorem t : True := trivial", {"header": header}
    )
    assert verdict.status is Status.INVALID_SPEC
    assert verdict.reward is None
    verdict, _ = await _verify(
        sandbox, tmp_path, script, header + "\ntheorem t : True := trivial", {"header": ""}
    )
    assert verdict.status is Status.FAILED
    assert "imports fail" in verdict.feedback


# -- the service: availability --------------------------------------------------------------------


async def test_the_service_says_lean_is_unavailable_here(tmp_path: Path) -> None:
    settings = Settings(lean_project_dir=str(tmp_path / "missing"), required_verifiers=["lean"])
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://assay") as client:
        described = (await client.get("/v1/verifiers")).json()
        lean = next(v for v in described["verifiers"] if v["name"] == "lean")
        assert lean["available"] is False
        assert "repl/lake not found" in lean["reason"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert any(m.startswith("lean: no Lean REPL here") for m in ready.json()["missing"])
        scored = await client.post(
            "/v1/score",
            json={
                "items": [{"verifier": "lean", "completion": GCD_PROOF, "spec": {"theorem": GCD}}]
            },
        )
        result = scored.json()["results"][0]
        assert result["status"] == "unavailable"
        assert result["reward"] is None


# -- the Kimina Lean Server backend ----------------------------------------------------------------


async def test_kimina_backend_applies_the_same_checks() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        code = body["snippets"][0]["code"]
        lines = code.split("\n")
        completion_line = next(i for i, t in enumerate(lines) if t.startswith("theorem mathd")) + 1
        probe = json.dumps(
            {
                "tag": "k1-1",
                "decls": [
                    {"name": "given", "kind": "def"},
                    {"name": "mathd_numbertheory_188", "kind": "theorem"},
                ],
                "axioms": [*STANDARD, "Lean.ofReduceBool"],
                "statement": {"found": True, "kind": "theorem", "same": True},
                "replay": [],
            }
        )
        listing_line = next(i for i, t in enumerate(lines) if '"k1-start"' in t) + 1
        listing = json.dumps(
            {
                "tag": "k1-start",
                "decls": [{"name": "given", "kind": "def"}],
                "axioms": [],
                "statement": None,
                "replay": [],
            }
        )
        response = {
            "env": 0,
            "messages": [
                {
                    "severity": "info",
                    "pos": {"line": listing_line, "column": 0},
                    "endPos": {"line": listing_line, "column": 1},
                    "data": "ASSAY-PROBE " + listing,
                },
                {
                    "severity": "warning",
                    "pos": {"line": completion_line, "column": 8},
                    "endPos": {"line": completion_line, "column": 10},
                    "data": "unused variable",
                },
                {
                    "severity": "info",
                    "pos": {"line": len(lines) - 2, "column": 0},
                    "endPos": {"line": len(lines) - 2, "column": 1},
                    "data": "ASSAY-PROBE " + probe,
                },
            ],
        }
        return httpx.Response(
            200, json={"results": [{"id": "k1-1", "time": 1.0, "response": response}]}
        )

    backend = KiminaBackend(
        "http://kimina", nonce=lambda: "k1", transport=httpx.MockTransport(answer)
    )
    verifier = LeanVerifier(backend, default_header=HEADER)
    try:
        verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), LocalSandbox())
    finally:
        await verifier.close()
    assert verdict.status is Status.FORBIDDEN
    assert "Lean.ofReduceBool" in verdict.feedback
    assert verdict.details["declarations"] == ["mathd_numbertheory_188"]  # not the header's
    code = seen[0]["snippets"][0]["code"]
    assert code.startswith("import Mathlib\nimport Lean\n")
    assert 'assay_probe_k1 "mathd_numbertheory_188" "assay_ref_k1_0"' in code


def test_spec_theorem_must_be_one_named_theorem() -> None:
    with pytest.raises(ValueError, match="theorem NAME"):
        LeanSpec(theorem="example : 1 = 1 := rfl")
    assert LeanSpec(theorem="lemma x : 1 = 1").theorem


@needs_bwrap
async def test_a_statement_failing_under_the_completions_own_imports_is_its_fault(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    # A completion importing too little must not turn its item into `invalid_spec` (a null
    # reward): the reference statement failing there is the completion's failure.
    script = Script()
    script.start("import Lean")
    name = f"assay_ref_{NONCE}_0"
    script.add(
        {"cmd": f"theorem {name} : Nat.gcd 180 168 = 12 := sorry", "env": 0},
        error_answer("unknown constant 'Nat.gcd'", 2, 1, 30),
        "constructed",
    )
    completion = "import Lean\n" + GCD_PROOF
    verdict, _ = await _verify(
        sandbox, tmp_path, script, completion, {"theorem": GCD, "header": ""}
    )
    assert verdict.status is Status.FAILED
    assert "with the completion's imports" in verdict.feedback


def test_a_spec_theorem_may_carry_a_doc_comment() -> None:
    from assay.verifiers.lean_syntax import parse_statement

    theorem = (
        "/-- The gcd of 180 and 168. -/\n-- note\ntheorem g : Nat.gcd 180 168 = 12 := by sorry"
    )
    assert LeanSpec(theorem=theorem).theorem == theorem
    statement = parse_statement(theorem)
    assert (statement.name, statement.text) == ("g", "theorem g : Nat.gcd 180 168 = 12")


@needs_bwrap
async def test_items_through_the_http_service(sandbox: LocalSandbox, tmp_path: Path) -> None:
    from assay.service.engine import Engine

    script = _gcd_script()
    _passing(script)
    backend = standin_backend(tmp_path, script)
    engine = Engine(sandbox, verifiers={"lean": LeanVerifier(backend, default_header=HEADER)})
    app = create_app(Settings(), engine=engine)
    items = [
        {
            "id": "ok",
            "verifier": "lean",
            "completion": f"```lean4\n{GCD_PROOF}\n```",
            "spec": {"theorem": GCD},
        },
        {
            "id": "eval",
            "verifier": "lean",
            "completion": TOKEN_CHEATS["eval-fakes-output"],
            "spec": {"theorem": GCD},
        },
        {"id": "bad", "verifier": "lean", "completion": GCD_PROOF, "spec": {"allow": ["nope"]}},
    ]
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://assay") as client:
            results = (await client.post("/v1/score", json={"items": items})).json()["results"]
            described = (await client.get("/v1/verifiers")).json()["verifiers"]
    finally:
        await engine.close()
    assert [(r["id"], r["status"], r["reward"]) for r in results] == [
        ("ok", "passed", 1.0),
        ("eval", "forbidden", 0.0),
        ("bad", "invalid_spec", None),
    ]
    lean = next(v for v in described if v["name"] == "lean")
    assert lean["available"] is True
    assert lean["facts"]["pool"]["started"] == 1


def _kimina(answer: dict[str, Any]) -> tuple[LeanVerifier, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"results": [{"id": "k1-1", "time": 1.0, **answer}]})

    backend = KiminaBackend(
        "http://kimina", nonce=lambda: "k1", transport=httpx.MockTransport(reply)
    )
    return LeanVerifier(backend, default_header=HEADER), seen


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"error": "Lean REPL command timed out in 60 seconds"}, Status.TIMEOUT),
        ({"response": {"message": "Lean error:\nunknown tactic"}}, Status.FAILED),
    ],
    ids=["timeout", "repl-error"],
)
async def test_kimina_errors(answer: dict[str, Any], status: Status) -> None:
    verifier, _ = _kimina(answer)
    try:
        verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), LocalSandbox())
    finally:
        await verifier.close()
    assert verdict.status is status


async def test_kimina_header_timeout_is_the_services_failure() -> None:
    verifier, _ = _kimina({"error": "Lean REPL header command timed out in 60 seconds"})
    try:
        with pytest.raises(SandboxError, match="could not import the header"):
            await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), LocalSandbox())
    finally:
        await verifier.close()


async def test_kimina_positions_map_back_to_the_completion() -> None:
    # Kimina shifts the REPL's lines by its header's (server/routers/check.py): positions are
    # the snippet's. The snippet's completion part starts after assay's probe and statement.
    verifier, seen = _kimina({"response": {}})
    with pytest.raises(SandboxError, match="did not answer"):  # no probe answer in it
        await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), LocalSandbox())
    await verifier.close()
    code = seen[0]["snippets"][0]["code"]
    line = code.split("\n").index(GCD_PROOF) + 1
    error = {
        "severity": "error",
        "pos": {"line": line, "column": 61},
        "endPos": {"line": line, "column": 69},
        "data": "linarith failed",
    }
    verifier, _ = _kimina({"response": {"messages": [error], "sorries": None, "time": 2.5}})
    try:
        verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), LocalSandbox())
    finally:
        await verifier.close()
    assert verdict.status is Status.FAILED
    assert "line 1, col 61: linarith failed" in verdict.feedback


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        ('theorem t : "-- not a comment" = "" := by\n  #eval 1', ["eval"]),
        ("/- /- nested -/ #eval -/ theorem t : True := trivial", []),
        ("theorem t : '\"' = '\"' := rfl\n#eval 1", ["eval"]),
        ('theorem t : r#"#eval "quoted""# = "" := rfl', []),
        ('#check s!"{(by native_decide : 1 = 1)}"', ["native_decide"]),
        ("theorem h' : x' = x' := rfl -- #eval", []),
        ("open Lean in\nreduceBool", ["native_decide"]),
        ("@[simp, ext] theorem t : True := trivial", []),
        ("@[local simp] theorem t : True := trivial", []),
        ("@[aesop safe] theorem t : True := trivial", ["attributes"]),
        ("set_option maxHeartbeats 0 in\ntheorem t : True := trivial", []),
        ("set_option compiler.extract_closed false", ["options"]),
    ],
)
def test_the_token_rules(text: str, groups: list[str]) -> None:
    from assay.verifiers.lean_syntax import violations

    assert [v.group for v in violations(text)] == groups


def test_statements_compare_as_tokens() -> None:
    from assay.verifiers.lean_syntax import same_tokens

    assert same_tokens("theorem x : 0<x", "theorem  x :\n  0 < x -- a comment")
    assert not same_tokens("theorem x : f ab", "theorem x : f a b")
    assert not same_tokens('theorem x : "a".length = 1', 'theorem x : "ab".length = 1')


@needs_bwrap
async def test_tactics_and_file_mode_answers_are_read(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    tactics = (await _replay(sandbox, tmp_path, "all_tactics"))[0]["tactics"]
    assert [t["tactic"] for t in tactics] == ["have t := 37", "exact t"]
    assert tactics[0]["usedConstants"] == ["instOfNatNat", "Nat", "OfNat.ofNat"]
    infos = (await _replay(sandbox, tmp_path, "file_env"))[2]["messages"]
    assert [m["severity"] for m in infos] == ["info", "info"]


@needs_bwrap
@pytest.mark.parametrize(
    ("exchange", "status"),
    [
        ({"answer": "this is not JSON\n\n"}, Status.RUNTIME_ERROR),
        ({"answer": "", "allocate_mb": 2048}, Status.MEMORY_LIMIT),
    ],
    ids=["garbage", "out-of-memory"],
)
async def test_a_broken_answer_to_the_completion_is_judged_and_the_repl_replaced(
    sandbox: LocalSandbox, tmp_path: Path, exchange: dict[str, Any], status: Status
) -> None:
    bad = GCD_PROOF.replace("norm_num", "simp")
    script = _gcd_script()
    extra = {k: v for k, v in exchange.items() if k != "answer"}
    script.completion(bad, 2, exchange["answer"], "constructed", **extra)
    _passing(script)
    backend = standin_backend(tmp_path, script, memory_mb=256)
    verifier = LeanVerifier(backend, default_header=HEADER)
    try:
        verdict = await verifier.verify(bad, LeanSpec(theorem=GCD), sandbox)
        assert verdict.status is status, verdict.feedback
        assert verdict.reward == 0.0
        verdict = await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), sandbox)
        assert verdict.status is Status.PASSED, verdict.feedback
        assert backend.pool.stats.started == 2
    finally:
        await verifier.close()


def test_the_replay_part_of_the_probe_is_sent_only_when_on() -> None:
    from assay.verifiers.lean import probe_source

    assert "addDecl" not in probe_source("n0")
    assert "addDecl" in probe_source("n0", replay=True)
    assert "assay_probe_n0" in probe_source("n0")


@needs_bwrap
async def test_a_completion_without_the_theorem_fails(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    verdict, backend = await _verify(sandbox, tmp_path, Script(), "  norm_num", {"theorem": GCD})
    assert verdict.status is Status.FAILED
    assert "does not state `theorem mathd_numbertheory_188`" in verdict.feedback
    assert backend.pool.stats.started == 0


@needs_bwrap
async def test_a_probe_that_does_not_compile_is_assays_failure(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    # Constructed: an error inside the probe's lines of the header command (a Lean whose API
    # differs from the one the probe was written for) is not the spec's fault.
    from assay.verifiers.lean import probe_lines

    first, _ = probe_lines(("import Mathlib",))
    script = Script()
    script.start()
    script.exchanges[0]["answer"] = error_answer(
        "unknown constant 'Lean.collectAxioms'", 0, first + 20, 4
    )
    with pytest.raises(SandboxError, match="probe does not compile"):
        await _verify(sandbox, tmp_path, script, GCD_PROOF, {"theorem": GCD})


def test_probe_lines_span_the_probe() -> None:
    from assay.verifiers.lean import header_command, probe_lines

    text = header_command(("import Mathlib",), "open Nat", "n")
    first, last = probe_lines(("import Mathlib",))
    lines = text.split("\n")
    assert lines[first - 1].startswith("open Lean Elab Command in")
    assert lines[last - 1].startswith("  logInfo")
    assert lines[last + 1] == "open Nat"


async def test_kimina_probe_errors_are_assays_failure() -> None:
    from assay.verifiers.lean import probe_lines

    first, _ = probe_lines(("import Mathlib",))
    error = {
        "severity": "error",
        "pos": {"line": first + 3, "column": 2},
        "endPos": {"line": first + 3, "column": 9},
        "data": "unknown identifier 'toKernelEnv'",
    }
    verifier, _ = _kimina({"response": {"messages": [error], "env": 0}})
    try:
        with pytest.raises(SandboxError, match="probe does not compile"):
            await verifier.verify(GCD_PROOF, LeanSpec(theorem=GCD), LocalSandbox())
    finally:
        await verifier.close()


@pytest.mark.parametrize("name", [*TRANSCRIPTS, "invalid_line_break"])
def test_the_stand_in_answers_are_the_recorded_bytes(name: str) -> None:
    recorded_bytes = (FIXTURES / f"{name}.expected.out").read_bytes()
    answers = "".join(answer for _, answer in transcript(name))
    assert answers.encode("utf-8") == recorded_bytes


@needs_bwrap
async def test_commands_and_tactic_steps_through_the_client(
    sandbox: LocalSandbox, tmp_path: Path
) -> None:
    # The README transcript: a sorry's proof state, then two tactic steps.
    script = Script(strict_order=True)
    for request, answer in transcript("readme"):
        script.add(request, answer, "recorded")
    path = script.write(tmp_path)
    tool = await sandbox.spawn(
        ToolSpec(
            argv=("/usr/bin/python3", "-I", str(STANDIN), str(path)),
            ro_paths=(str(STANDIN.parent), str(tmp_path)),
        )
    )
    repl = LeanRepl(tool)
    try:
        answer = await repl.command("def f (x : Unit) : Nat := by sorry", None, 20)
        state = answer["sorries"][0]["proofState"]
        step = await repl.tactic("apply Int.natAbs", state, 20)
        assert step["goals"] == ["x : Unit\n⊢ Int"]
        done = await repl.tactic("exact -37", step["proofState"], 20)
        assert done["proofStatus"] == "Completed"
    finally:
        await repl.close()
    assert not repl.alive


def test_the_text_checks_stay_linear_and_see_the_same_tokens() -> None:
    """What the service reads of a Lean text, it reads once (tests/reliability/
    test_service_cost.py measures the CPU): nested attribute lists are refused, not each read
    to the end; char and raw-string literals are matched where they stand."""
    from pydantic import ValidationError

    from assay.clients.schema import LeanSpec
    from assay.verifiers.lean import statement_text_matches
    from assay.verifiers.lean_syntax import parse_statement, tokens, violations

    found = violations("@[simp, @[implemented_by f] x] theorem t : True := trivial")
    assert [(v.group, v.what) for v in found] == [
        ("attributes", "@[@[]"),
        ("unsafe", "implemented_by"),
    ]
    assert len(violations("@[" * 20000)) == 19999  # each nested one refused, in linear time
    literals = [t.text for t in tokens("x := 'a' + '\\n' + r#\"q\"# + c", literals=True)]
    assert literals == ["x", ":", "=", "'a'", "+", "'\\n'", "+", 'r#"q"#', "+", "c"]
    statement = parse_statement("theorem t : 1 = 1")
    repeated = "theorem t " * 5000 + "theorem t : 1 = 1 := rfl"
    assert statement_text_matches(repeated, statement) is not None  # past the candidates read
    assert statement_text_matches("theorem t : 1 = 1 := rfl", statement) is None
    # An unclosed comment in the spec's statement runs to its end (linear), and is refused.
    with pytest.raises(ValidationError, match="must be one"):
        LeanSpec(theorem="/-" * 40000 + "theorem t : 1 = 1")
