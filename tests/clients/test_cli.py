"""`assay score` and `assay verifiers` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, needs_bwrap

pytestmark = needs_bwrap

SPEC = {"language": "python", "tests": [{"stdin": "4 5\n", "expected_stdout": "9\n"}]}
GOOD = "a, b = map(int, input().split())\nprint(a + b)"


def assay(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assay.clients.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_input(path: Path) -> list[str]:
    lines = [
        json.dumps({"id": "good", "verifier": "code", "completion": GOOD, "spec": SPEC}),
        json.dumps({"id": "wrong", "verifier": "code", "completion": "print(1)", "spec": SPEC}),
        "",
        json.dumps({"id": "dup", "verifier": "code", "completion": GOOD, "spec": SPEC}),
        "{this is not json",
        json.dumps({"id": "incomplete", "verifier": "code", "spec": SPEC}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": 9, "verifier": "code", "completion": "1/0", "spec": SPEC}),
    ]
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.mark.parametrize("mode", ["in_process", "through_server"])
def test_score_file(tmp_path: Path, server: Server, mode: str) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source)
    url = ["--url", server.url, "--batch-size", "2"] if mode == "through_server" else []
    done = assay("score", str(source), "-o", str(out), *url)
    assert done.returncode == 1, done.stderr  # some input lines were unreadable
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in results] == [
        ("good", "passed"),
        ("wrong", "failed"),
        ("dup", "passed"),
        (None, "invalid_spec"),
        ("incomplete", "invalid_spec"),
        (None, "invalid_spec"),
        (9, "runtime_error"),
    ]
    assert "input line 5: not valid JSON" in results[3]["feedback"]
    assert "input line 6: completion: Field required" in results[4]["feedback"]
    assert "input line 7: not a JSON object" in results[5]["feedback"]
    assert results[3]["reward"] is None
    assert "input line 5" in done.stderr
    assert "7 items in" in done.stderr
    assert "passed 2" in done.stderr
    assert "invalid_spec 3" in done.stderr


def test_score_clean_file_exits_zero_and_reads_stdin(tmp_path: Path) -> None:
    line = json.dumps({"id": "a", "verifier": "code", "completion": GOOD, "spec": SPEC})
    done = assay("score", "-", "-q", stdin=line + "\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "passed"
    assert "scoring" not in done.stderr  # -q: no progress bar


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)
    done = assay(
        "score",
        str(source),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--url",
        "http://127.0.0.1:9",
        "--retries",
        "1",
    )
    assert done.returncode == 2
    assert "127.0.0.1:9" in done.stderr


def test_verifiers_listing(server: Server) -> None:
    here = assay("verifiers")
    assert here.returncode == 0
    assert "code: available" in here.stdout
    assert "python: yes" in here.stdout
    remote = assay("verifiers", "--url", server.url, "--json")
    assert json.loads(remote.stdout)[0]["name"] == "code"
