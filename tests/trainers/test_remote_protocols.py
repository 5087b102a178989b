"""OpenRLHF's and slime's reward requests, sent the way those trainers send them, to a real
`assay serve`, and their answers read the way those trainers read them.

The request shapes follow OpenRLHF (openrlhf/utils/remote_rm_utils.py: `requests.post(url,
json={"query", "prompts", "labels"}, headers={"Content-Type": "application/json"},
timeout=180)`, reading `rewards` into `torch.tensor`; the single-turn rollout executor: one
sample per aiohttp POST, reading `rewards`, then `scores` (defaulting to rewards) and
`extra_logs`) and slime (slime/rollout/rm_hub: one aiohttp POST per sample with `prompt`,
`response`, `label`, `raise_for_status()`, the reward being `await resp.json()`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from assay.service.trainers import response_of
from tests.conftest import Server, needs_bwrap, start_server, stop_server

aiohttp = pytest.importorskip("aiohttp")
requests = pytest.importorskip("requests")
pytestmark = needs_bwrap

SPEC = {"language": "python", "tests": [{"stdin": "2 3\n", "expected_stdout": "5\n"}]}
LABEL = json.dumps({"verifier": "code", "spec": SPEC})
RIGHT = "Sum them.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\nprint(0)\n```"
PROMPT = "<|im_start|>user\nAdd two numbers.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    s = start_server(api_keys='["k1"]')
    yield s
    stop_server(s)


def post_like_openrlhf(url: str, data: dict[str, Any]) -> Any:
    response = requests.post(
        url=url, json=data, headers={"Content-Type": "application/json"}, timeout=180
    )
    response.raise_for_status()
    return response.json()


async def post_like_aiohttp_trainer(url: str, payload: dict[str, Any]) -> Any:
    connector = aiohttp.TCPConnector(force_close=True, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.post(url, json=payload) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


def test_openrlhf_batch(server: Server) -> None:
    torch = pytest.importorskip("torch")
    queries = [PROMPT + RIGHT + "<|im_end|>", PROMPT + WRONG + "<|im_end|>", PROMPT + RIGHT]
    labels = [LABEL, LABEL, "{not json"]
    answer = post_like_openrlhf(
        f"{server.url}/v1/trainers/openrlhf",
        {"query": queries, "prompts": [PROMPT] * 3, "labels": labels},
    )
    assert torch.tensor(answer["rewards"]).tolist() == [1.0, 0.0, 0.0]  # null_reward 0 default
    assert answer["scores"] == answer["rewards"]
    assert answer["extra_logs"]["assay_passed"] == [1.0, 0.0, 0.0]
    assert answer["extra_logs"]["assay_unjudged"] == [0.0, 0.0, 1.0]
    assert len(answer["extra_logs"]["assay_elapsed_ms"]) == 3


def test_openrlhf_one_sample_per_call_and_null_policy(server: Server) -> None:
    url = f"{server.url}/v1/trainers/openrlhf"

    async def one(query: str, label: Any, **params: str) -> dict[str, Any]:
        query_string = "&".join(f"{k}={v}" for k, v in params.items())
        info: dict[str, Any] = await post_like_aiohttp_trainer(
            f"{url}?{query_string}" if query_string else url,
            {"query": [query], "prompts": [PROMPT], "labels": [label]},
        )
        # As OpenRLHF reads it: rewards, then scores defaulting to rewards, then extra_logs.
        return {
            "reward": info.get("rewards"),
            "scores": info.get("scores", info.get("rewards")),
            "extra_logs": info.get("extra_logs", {}),
        }

    async def run() -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                one(PROMPT + RIGHT + "<|im_end|>", LABEL),
                one(PROMPT + WRONG, json.loads(LABEL)),  # a label that is an object, not text
                one(PROMPT + RIGHT, '{"spec": {}}', null_reward="-1"),
            )
        )

    got = asyncio.run(run())
    assert [g["reward"] for g in got] == [[1.0], [0.0], [-1.0]]
    assert got[2]["extra_logs"]["assay_unjudged"] == [1.0]

    with pytest.raises(requests.HTTPError) as err:
        post_like_openrlhf(
            f"{url}?null_reward=raise",
            {"query": [PROMPT + RIGHT], "prompts": [PROMPT], "labels": ['{"spec": {}}']},
        )
    assert err.value.response.status_code == 500
    assert "no verifier" in err.value.response.text


def test_slime_one_post_per_sample(server: Server) -> None:
    url = f"{server.url}/v1/trainers/slime"
    samples = [
        {"prompt": "Add two numbers.", "response": RIGHT, "label": LABEL},
        {"prompt": [{"role": "user", "content": "Add."}], "response": WRONG, "label": LABEL},
        {"prompt": "Add.", "response": RIGHT, "label": {"verifier": "code", "spec": {}}},
    ]

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(post_like_aiohttp_trainer(url, s) for s in samples)))

    rewards = asyncio.run(run())
    assert rewards == [1.0, 0.0, 0.0]  # the third spec is invalid: null_reward 0
    assert all(isinstance(r, float) for r in rewards)


def test_api_key_in_the_url(keyed: Server) -> None:
    body = {"query": [PROMPT + RIGHT], "prompts": [PROMPT], "labels": [LABEL]}
    url = f"{keyed.url}/v1/trainers/openrlhf"
    with pytest.raises(requests.HTTPError):
        post_like_openrlhf(url, body)
    with pytest.raises(requests.HTTPError):
        post_like_openrlhf(url + "?api_key=nope", body)
    assert post_like_openrlhf(url + "?api_key=k1", body)["rewards"] == [1.0]
    slime = {"prompt": "p", "response": RIGHT, "label": LABEL}
    assert (
        asyncio.run(post_like_aiohttp_trainer(f"{keyed.url}/v1/trainers/slime?api_key=k1", slime))
        == 1.0
    )


@pytest.mark.parametrize(
    ("query", "prompt", "expected"),
    [
        ("PQ answer<|im_end|>", "PQ ", "answer"),
        ("<s> PQ answer</s>", "PQ ", "answer"),  # a BOS the prompt lacks
        ("answer <|eot_id|>\n", None, "answer"),
        ("no prompt here", "elsewhere", "no prompt here"),
    ],
)
def test_response_of_a_query(query: str, prompt: str | None, expected: str) -> None:
    assert response_of(query, prompt) == expected
