"""`assay score` and `assay verifiers` as a user runs them: real processes, real files."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, needs_bwrap, start_server, stop_server

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
    # The closing table: a row per verifier (and the unreadable rows), a column per status.
    assert re.search(r"code\W+4\W+2\W+1\W+1\W+0\W+0\.500", done.stderr), done.stderr
    assert re.search(r"\(unreadable\)\W+3\W+0\W+0\W+0\W+3\W+-", done.stderr), done.stderr


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
    assert "per-job memory cap: " in here.stdout
    remote = assay("verifiers", "--url", server.url, "--json")
    listing = json.loads(remote.stdout)
    assert listing["verifiers"][0]["name"] == "code"
    assert listing["sandbox"]["backend"] == "local"
    assert listing["sandbox"]["isolation"] == "bwrap"


def test_batches_too_large_for_the_server_are_split(tmp_path: Path, server: Server) -> None:
    # The session server takes bodies up to 200,000 bytes: six 60 KB items are refused as one
    # batch and must be sent in smaller ones; a 250 KB item cannot be sent at all.
    padding = "#" * 60_000
    rows = [
        {"id": n, "verifier": "code", "completion": f"{GOOD}\n{padding}", "spec": SPEC}
        for n in range(6)
    ]
    rows.insert(3, {"id": "huge", "verifier": "code", "completion": "#" * 250_000, "spec": SPEC})
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = assay("score", str(source), "-o", str(out), "--url", server.url, "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in results] == [
        (0, "passed"),
        (1, "passed"),
        (2, "passed"),
        ("huge", "unavailable"),
        (3, "passed"),
        (4, "passed"),
        (5, "passed"),
    ]
    assert "larger than the server takes" in results[3]["feedback"]


async def test_a_server_that_dies_mid_run_loses_no_line(tmp_path: Path) -> None:
    from assay.clients.cli import remote_scorer, score_source
    from assay.clients.progress import Tally
    from assay.clients.schema import ScoreResult
    from assay.clients.sources import Columns, open_source

    victim = start_server()

    class KillOnFirstResult(Tally):
        def add(self, verifier: str, result: ScoreResult, *, input_error: bool = False) -> None:
            super().add(verifier, result, input_error=input_error)
            if self.done == 1:
                stop_server(victim)

    source_path = tmp_path / "in.jsonl"
    source_path.write_text(
        "".join(
            json.dumps({"id": n, "verifier": "code", "completion": GOOD, "spec": SPEC}) + "\n"
            for n in range(3)
        )
    )
    sink = io.StringIO()
    try:
        async with (
            remote_scorer([victim.url], None, batch_size=1, retries=0) as scorer,
        ):
            with open_source(str(source_path), Columns()) as source:
                tally = await score_source(
                    source,
                    sink,
                    scorer,
                    batch_size=1,
                    concurrency=1,
                    tally=KillOnFirstResult(),
                )
    finally:
        stop_server(victim)
    results = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(r["id"], r["status"]) for r in results] == [
        (0, "passed"),
        (1, "internal_error"),
        (2, "internal_error"),
    ]
    assert results[1]["reward"] is None
    assert results[1]["details"] == {"retryable": True}
    assert "not scored" in results[1]["feedback"]
    assert tally.statuses["internal_error"] == 2


def test_wrong_api_key_stops_the_run(tmp_path: Path, keyed_server: Server) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source)
    done = assay("score", str(source), "-o", str(out), "--url", keyed_server.url, "--api-key", "x")
    assert done.returncode == 2
    assert "HTTP 401" in done.stderr


def test_missing_input_file_is_a_clear_error(tmp_path: Path) -> None:
    done = assay("score", str(tmp_path / "nowhere.jsonl"))
    assert done.returncode == 2
    assert "cannot read" in done.stderr
    assert "No such file" in done.stderr
    assert "Traceback" not in done.stderr
