"""Building stand-in REPL scripts for the lean tests: recorded transcripts, and the commands
assay sends with the answers a real Lean gives them.

Answers come from two places, and each exchange says which:
- `recorded`: bytes of the REPL's own test transcripts (tests/fixtures/lean-repl/, REPL commit
  8948401, Lean v4.33.0-rc2);
- `constructed`: answers to assay's own commands (its header with the probe, the spec's
  statement, the probe's call), or to completions no transcript holds, written here in the
  recorded format. They are what a real Lean must answer; README "to verify on a machine
  with Lean" lists them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assay.verifiers.lean import (
    PROBE_PREFIX,
    ReplBackend,
    header_command,
    probe_command,
    reference_command,
)
from assay.verifiers.lean_syntax import parse_statement, split_imports

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "lean-repl"
STANDIN = HERE / "lean_standin.py"
NONCE = "5eed"
HEADER = "import Mathlib\nopen BigOperators Real Nat Topology"


def transcript(name: str) -> list[tuple[dict[str, Any], str]]:
    """A recorded transcript: each request as the REPL reads it, with its answer's bytes."""
    text = (FIXTURES / f"{name}.in").read_text(encoding="utf-8")
    out = (FIXTURES / f"{name}.expected.out").read_text(encoding="utf-8")
    blocks = [b for b in re.split(r"\n[ \t]*\n", text) if b.strip()]
    # The REPL's getLines: line ends dropped, lines joined.
    requests = [json.loads("".join(line.rstrip() for line in b.split("\n"))) for b in blocks]
    assert out.endswith("\n\n")
    answers = [a + "\n\n" for a in out[:-2].split("\n\n")]
    assert len(requests) == len(answers), name
    return list(zip(requests, answers, strict=True))


def recorded(name: str, index: int) -> str:
    return transcript(name)[index][1]


def info_answer(data: str, env: int) -> str:
    """An answer holding one info message, in the layout of the recorded `dup_msg` answer."""
    return (
        '{"messages":\n [{"severity": "info",\n   "pos": {"line": 1, "column": 0},\n'
        '   "endPos": {"line": 1, "column": 15},\n'
        f'   "data": {json.dumps(data, ensure_ascii=False)}}}],\n "env": {env}}}\n\n'
    )


def error_answer(data: str, env: int, line: int = 1, column: int = 0) -> str:
    return (
        f'{{"messages":\n [{{"severity": "error",\n   "pos": {{"line": {line}, "column": '
        f'{column}}},\n   "endPos": {{"line": {line}, "column": {column + 5}}},\n'
        f'   "data": {json.dumps(data, ensure_ascii=False)}}}],\n "env": {env}}}\n\n'
    )


def env_answer(env: int) -> str:
    """`{"env": N}`: the recorded shape of a command with no messages (H20231020)."""
    return f'{{"env": {env}}}\n\n'


def sorry_answer(name: str, goal: str, env: int) -> str:
    """A statement proved by `sorry`: the recorded `dup_sorries` answer with another name."""
    return (
        '{"sorries":\n [{"proofState": 0,\n   "pos": {"line": 1, "column": 24},\n'
        f'   "goal": {json.dumps(goal, ensure_ascii=False)},\n'
        '   "endPos": {"line": 1, "column": 29}}],\n "messages":\n'
        ' [{"severity": "warning",\n   "pos": {"line": 1, "column": 8},\n'
        f'   "endPos": {{"line": 1, "column": {8 + len(name)}}},\n'
        '   "data": "declaration uses `sorry`"}],\n'
        f' "env": {env}}}\n\n'
    )


def probe_answer(
    tag: str,
    env: int,
    *,
    decls: Sequence[tuple[str, str]] = (),
    axioms: Sequence[str] = (),
    statement: dict[str, Any] | None = None,
    replay: Sequence[str] = (),
) -> str:
    """What assay's probe logs (constructed: the probe's output format is assay's own)."""
    value = {
        "tag": tag,
        "decls": [{"name": n, "kind": k} for n, k in decls],
        "axioms": list(axioms),
        "statement": statement,
        "replay": list(replay),
    }
    return info_answer(PROBE_PREFIX + json.dumps(value, separators=(",", ":")), env)


STANDARD = ["propext", "Classical.choice", "Quot.sound"]


@dataclass
class Script:
    """The exchanges of one stand-in REPL (or of several, started one after another)."""

    exchanges: list[dict[str, Any]] = field(default_factory=list)
    ballast_mb: int = 0
    strict_order: bool = False
    any_nonce: bool = False
    """Answer a service that draws its own nonce per REPL (the stand-in swaps it for NONCE)."""

    def add(self, request: dict[str, Any], answer: str, source: str, **extra: Any) -> None:
        assert source in ("recorded", "constructed")
        self.exchanges.append({"request": request, "answer": answer, "source": source, **extra})

    def start(
        self,
        header: str = HEADER,
        *,
        known: Sequence[str] = (),
        replay: bool = False,
    ) -> None:
        """The header command (answered `{"env": 0}`, as H20231020 records a header) and the
        probe's first call, which lists the header's own declarations (env 1)."""
        split = split_imports(header)
        command = header_command(split.imports, split.body, NONCE, replay)
        self.add({"cmd": command}, recorded("Mathlib/H20231020", 0), "recorded", repeat=True)
        tag = f"{NONCE}-start"
        listing = probe_command(NONCE, "", "", [], False, tag)
        self.add(
            {"cmd": listing, "env": 0},
            probe_answer(tag, 1, decls=[(n, "def") for n in known]),
            "constructed",
            repeat=True,
        )

    def reference(self, theorem: str, goal: str, *, index: int = 0, env: int = 2) -> str:
        statement = parse_statement(theorem)
        name = f"assay_ref_{NONCE}_{index}"
        self.add(
            {"cmd": reference_command(statement, name), "env": 0},
            sorry_answer(name, goal, env),
            "constructed",
            repeat=True,
        )
        return name

    def completion(self, body: str, env: int, answer: str, source: str, **extra: Any) -> None:
        self.add({"cmd": body, "env": env}, answer, source, **extra)

    def probe(
        self,
        *,
        env: int,
        proof: int,
        target: str = "",
        reference: str = "",
        known: Sequence[str] = (),
        replay: bool = False,
        replay_errors: Sequence[str] = (),
        **answer: Any,
    ) -> None:
        tag = f"{NONCE}-{proof}"
        command = probe_command(NONCE, target, reference, known, replay, tag)
        reply = probe_answer(tag, env + 10, replay=replay_errors, **answer)
        self.add({"cmd": command, "env": env}, reply, "constructed")

    def probe_proved(self, *, env: int, proof: int, target: str, repeat: bool = False) -> None:
        """The probe of a proof that proves `target` as the reference states it, on the
        standard axioms alone (what a right proof's check finds)."""
        self.probe(
            env=env,
            proof=proof,
            target=target,
            reference=f"assay_ref_{NONCE}_0",
            decls=[(target, "theorem")],
            axioms=STANDARD,
            statement={"found": True, "kind": "theorem", "same": True},
        )
        if repeat:
            self.exchanges[-1]["repeat"] = True

    def write(self, folder: Path) -> Path:
        os.chmod(folder, 0o755)
        path = folder / "script.json"
        body = {
            "exchanges": self.exchanges,
            "ballast_mb": self.ballast_mb,
            "strict_order": self.strict_order,
            **({"nonce": NONCE} if self.any_nonce else {}),
        }
        path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        os.chmod(path, 0o644)
        return path


def standin_backend(folder: Path, script: Script, **options: Any) -> ReplBackend:
    """A REPL backend whose REPL is the stand-in, started through the sandbox like Lean."""
    path = script.write(folder)
    settings: dict[str, Any] = {
        "command": ("/usr/bin/python3", "-I", str(STANDIN), str(path)),
        "project_dir": None,
        "ro_paths": (str(HERE), str(folder)),
        "env": {},
        "pool_size": 1,
        "memory_mb": 512,
        "memory_ceiling_mb": 4096,
        "max_proofs": 100,
        "start_timeout_s": 30,
        "check_timeout_s": 30,
        "kernel_replay": False,
        "nonce": lambda: NONCE,
    }
    settings.update(options)
    return ReplBackend(**settings)
