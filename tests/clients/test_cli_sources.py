"""`assay score` on Parquet files and `datasets` folders with a column mapping (re-scoring
stored rollouts), `--fail-on` thresholds, and reading that streams."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assay.clients.cli import remote_scorer, score_source
from assay.clients.schema import ScoreItem, ScoreResult
from assay.clients.sources import Columns, Source, open_source
from tests.conftest import Server, needs_bwrap

pytestmark = needs_bwrap
SPEC = {"language": "python", "tests": [{"stdin": "4 5\n", "expected_stdout": "9\n"}]}
RIGHT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\nprint(0)\n```"


def assay(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assay.clients.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rollouts() -> list[dict[str, Any]]:
    """Stored rollouts as a trainer keeps them: its own column names, the spec in a label."""
    label = json.dumps({"verifier": "code", "spec": SPEC})
    return [
        {"uid": "r0", "prompt": "add", "response": RIGHT, "ground_truth": label},
        {"uid": "r1", "prompt": "add", "response": WRONG, "ground_truth": label},
        {"uid": "r2", "prompt": "add", "response": RIGHT, "ground_truth": "{oops"},
        {"uid": "r3", "prompt": "add", "response": RIGHT, "ground_truth": label},
    ]


MAPPING = [
    "--column",
    "id=uid",
    "--column",
    "completion=response",
    "--column",
    "label=ground_truth",
]


def statuses(path: Path) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in map(json.loads, path.read_text().splitlines())]


def test_rescoring_stored_rollouts_from_parquet(tmp_path: Path, server: Server) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    source, out = tmp_path / "rollouts.parquet", tmp_path / "out.jsonl"
    pq.write_table(pa.Table.from_pylist(rollouts()), source, row_group_size=2)
    done = assay("score", str(source), "-o", str(out), "--url", server.url, "-q", *MAPPING)
    assert done.returncode == 1, done.stderr  # one label is broken
    assert statuses(out) == [
        ("r0", "passed"),
        ("r1", "failed"),
        ("r2", "invalid_spec"),
        ("r3", "passed"),
    ]
    broken = json.loads(out.read_text().splitlines()[2])
    assert "input row 3: bad label" in broken["feedback"]


def test_a_datasets_folder_with_splits_and_struct_specs(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    # A spec column of dicts: Arrow gives every row every key of the column (None if absent).
    rows = [
        {"id": "a", "verifier": "code", "completion": RIGHT, "spec": SPEC},
        {
            "id": "b",
            "verifier": "code",
            "completion": "def add(a, b):\n    return a - b",
            "spec": {"language": "python", "test_code": "assert add(2, 2) == 4"},
        },
    ]
    folder = tmp_path / "ds"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    ).save_to_disk(str(folder))
    out = tmp_path / "out.jsonl"
    done = assay("score", str(folder), "-o", str(out), "-q")  # the train split by default
    assert done.returncode == 0, done.stderr
    assert statuses(out) == [("a", "passed"), ("b", "failed")]  # test_code: an assert fails
    done = assay("score", str(folder), "--split", "test", "-o", str(out), "-q")
    assert statuses(out) == [("a", "passed")]
    done = assay("score", str(folder), "--split", "nope", "-q")
    assert done.returncode == 2
    assert "choose one with --split" in done.stderr


def test_fail_on_thresholds(tmp_path: Path, server: Server) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": n, "verifier": "code", "completion": c, "spec": SPEC}) + "\n"
            for n, c in enumerate([RIGHT, RIGHT, WRONG])
        )
    )
    base = ["score", str(source), "-o", str(tmp_path / "o.jsonl"), "--url", server.url, "-q"]
    assert assay(*base, "--fail-on", "internal_error>0").returncode == 0
    crossed = assay(*base, "--fail-on", "internal_error>0", "--fail-on", "pass_rate<0.9")
    assert crossed.returncode == 3
    assert "--fail-on crossed: pass_rate<0.9" in crossed.stderr
    assert assay(*base, "--fail-on", "failed_rate>=33%").returncode == 3
    assert assay(*base, "--fail-on", "mean_reward<0.5").returncode == 0
    wrong = assay(*base, "--fail-on", "happiness>1")
    assert wrong.returncode == 2
    assert "METRIC one of" in wrong.stderr


def test_results_come_while_input_is_still_being_written(server: Server) -> None:
    """Read from a pipe, results of the first lines come before the last is written."""
    line = json.dumps({"verifier": "code", "completion": RIGHT, "spec": SPEC}) + "\n"
    process = subprocess.Popen(
        [sys.executable, "-m", "assay.clients.cli", "score", "-", "-q", "--batch-size", "1"]
        + ["--url", server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        for _ in range(3):
            process.stdin.write(line)
            process.stdin.flush()
            assert json.loads(process.stdout.readline())["status"] == "passed"
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        if not process.stdin.closed:
            process.stdin.close()


async def test_memory_is_a_window_not_the_file(server: Server) -> None:
    """Rows are read only as results are written: at most a window ahead."""
    # Two batches in flight stay under the session server's pending bound (60): past it, the
    # server answers 429 and the client waits out each Retry-After (minutes in all).
    n, batch_size, concurrency = 2000, 25, 2
    window = max(4 * batch_size * concurrency, 1024)
    counts = {"read": 0, "most_ahead": 0}
    sink = io.StringIO()

    def rows() -> Iterator[ScoreItem | ScoreResult]:
        for i in range(n):
            counts["read"] += 1
            written = sink.getvalue().count("\n")
            counts["most_ahead"] = max(counts["most_ahead"], counts["read"] - written)
            # Identical items: the server's dedupe and cache keep this test quick.
            yield ScoreItem(id=i, verifier="code", completion=RIGHT, spec=SPEC)

    async with remote_scorer([server.url], None, batch_size=batch_size, retries=3) as scorer:
        tally = await score_source(
            Source(rows(), n), sink, scorer, batch_size=batch_size, concurrency=concurrency
        )
    assert tally.done == n
    assert [json.loads(x)["id"] for x in sink.getvalue().splitlines()] == list(range(n))
    assert counts["most_ahead"] <= window + batch_size


def test_column_mapping_errors_are_clear(tmp_path: Path) -> None:
    done = assay("score", str(tmp_path / "x.jsonl"), "--column", "colour=red")
    assert done.returncode == 2
    assert "FIELD=COLUMN" in done.stderr
    with pytest.raises(Exception, match="No such file"):
        open_source(str(tmp_path / "none.parquet"), Columns())
