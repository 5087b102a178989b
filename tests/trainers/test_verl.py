"""verl's reward path on the CPU: verl's own reward managers call the adapter.

verl pins its own dependencies, so its code runs in .venv-verl (scripts/setup.d/50-verl), in a
child process (tests/trainers/verl_reward_path.py) that scores a hand-built batch through a
real `assay serve`. Here: verl's reward tensor must hold what assay answers for the responses
verl decoded, the null-reward policy must reach it, and the batch form must cost one request
per chunk, not one per sample.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assay.clients.trainers import verl as adapter
from tests.conftest import Server, needs_bwrap, start_server, stop_server
from tests.trainers import tiny

ROOT = Path(__file__).resolve().parents[2]
VERL_PYTHON = ROOT / ".venv-verl" / "bin" / "python"
pytestmark = needs_bwrap
LABEL = json.dumps({"verifier": "code", "spec": tiny.SPEC, "extract": "raw"})


@pytest.fixture(scope="module")
def verl_server() -> Iterator[Server]:
    s = start_server()
    yield s
    stop_server(s)


def stream_requests(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(r'assay_requests_total\{code="200",endpoint="stream"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def assay_rewards(server: Server, completions: list[str]) -> list[float | None]:
    items = [
        {"verifier": "code", "completion": c, "spec": tiny.SPEC, "extract": "raw"}
        for c in completions
    ]
    response = httpx.post(f"{server.url}/v1/score", json={"items": items}, timeout=120)
    return [r["reward"] for r in response.json()["results"]]


@pytest.mark.slow
@pytest.mark.skipif(
    not VERL_PYTHON.exists(), reason=".venv-verl is missing: scripts/install test makes it"
)
def test_verl_reward_managers(verl_server: Server) -> None:
    before = stream_requests(verl_server)
    done = subprocess.run(
        [str(VERL_PYTHON), str(ROOT / "tests/trainers/verl_reward_path.py"), verl_server.url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    responses = out["responses"]
    expected = assay_rewards(verl_server, responses[:-1])
    assert set(expected) == {0.0, 1.0}
    # The last sample's label is broken: the null_reward from reward_kwargs (-1) reaches verl.
    for manager in ("batch", "compute_score_async", "compute_score"):
        assert out[manager] == [*expected, -1.0], manager
    # 5 items with chunk_size 4: the batch form 2 requests, the sync per-sample form 5, and the
    # async form at most 5 (gathered, it is usually 2); the check request above is not counted.
    used = stream_requests(verl_server) - before
    assert 2 + 5 + 1 <= used <= 2 + 5 + 5


def test_async_calls_of_a_moment_share_requests(verl_server: Server) -> None:
    before = stream_requests(verl_server)

    async def run() -> list[float | dict[str, float]]:
        try:
            calls = [
                adapter.compute_score_async(
                    "code", f"print({n % 2});", LABEL, {}, url=verl_server.url, chunk_size=4
                )
                for n in range(10)
            ]
            return list(await asyncio.gather(*calls))
        finally:
            await adapter.aclose()

    scores = asyncio.run(run())
    assert scores == [0.0, 1.0] * 5
    assert stream_requests(verl_server) - before == 3  # 10 items gathered, in chunks of 4


def test_dict_form_and_policies(verl_server: Server) -> None:
    try:
        got = adapter.compute_score(
            "code", "print(1);", LABEL, None, url=verl_server.url, return_dict=True
        )
        assert isinstance(got, dict)
        assert got["score"] == 1.0
        assert got["acc"] == 1.0
        assert got["unjudged"] == 0.0
        # No verifier in the label: the data_source names it; an unknown one is `unavailable`.
        no_verifier = json.dumps({"spec": tiny.SPEC, "extract": "raw"})
        assert adapter.compute_score("code", "print(1);", no_verifier, url=verl_server.url) == 1.0
        assert adapter.compute_score("gsm8k", "1", no_verifier, url=verl_server.url) == 0.0
        with pytest.raises(adapter.UnjudgedError, match="unknown verifier 'gsm8k'"):
            adapter.compute_score(
                "gsm8k", "1", no_verifier, url=verl_server.url, null_reward="raise"
            )
        with pytest.raises(ValueError, match="null_reward"):
            adapter.compute_score("code", "1", LABEL, url=verl_server.url, null_reward=None)
    finally:
        adapter.close()
