"""The TRL reward functions called as TRL calls them (keyword arguments, dataset columns as
lists), against a real server: conversational completions, label columns, null policies,
and the facts they log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from assay.clients.trainers.base import UnjudgedError
from assay.clients.trainers.trl import assay_reward, assay_reward_async
from tests.conftest import Server, needs_bwrap

pytestmark = needs_bwrap
SPEC = {"language": "python", "tests": [{"stdin": "", "expected_stdout": "1\n"}]}
RIGHT, WRONG = "```python\nprint(1)\n```", "```python\nprint(2)\n```"


def call(reward: Any, **columns: Any) -> tuple[list[float | None], dict[str, Any]]:
    logged: dict[str, Any] = {}
    kwargs = {
        "prompts": ["p"] * len(columns["completions"]),
        "completion_ids": [[1, 2]] * len(columns["completions"]),
        "trainer_state": None,
        "log_metric": lambda name, value: logged.__setitem__(name, value),
        "log_extra": lambda column, values: logged.__setitem__(column, values),
        **columns,
    }
    if not asyncio.iscoroutinefunction(reward):
        return reward(**kwargs), logged

    async def in_one_loop() -> list[float | None]:
        try:
            rewards: list[float | None] = await reward(**kwargs)
            return rewards
        finally:
            await reward.aclose()

    return asyncio.run(in_one_loop()), logged


@pytest.mark.parametrize("make", [assay_reward, assay_reward_async])
def test_columns_conversations_and_logging(server: Server, make: Any) -> None:
    reward = make(server.url)
    try:
        rewards, logged = call(
            reward,
            completions=[
                [{"role": "assistant", "content": RIGHT}],
                [{"role": "assistant", "content": [{"type": "text", "text": WRONG}]}],
                RIGHT,
            ],
            verifier=["code"] * 3,
            spec=[json.dumps(SPEC), SPEC, {**SPEC, "language": None}],  # text, dict, Arrow struct
        )
    finally:
        reward.close()
    # The third spec's None (as an Arrow struct gives) means "default", i.e. absent: invalid.
    assert rewards == [1.0, 0.0, None]
    assert logged["assay_status"] == ["passed", "failed", "invalid_spec"]
    assert logged["assay/pass_rate"] == pytest.approx(1 / 3)
    assert logged["assay/unjudged_rate"] == pytest.approx(1 / 3)
    assert logged["assay/status/failed"] == pytest.approx(1 / 3)
    assert reward.__name__ == "assay"


def test_label_column_and_policies(server: Server) -> None:
    label = json.dumps({"verifier": "code", "spec": SPEC})
    columns = {"completions": [RIGHT, WRONG, RIGHT], "label": [label, label, "{broken"]}
    for policy, expected in [(0.0, [1.0, 0.0, 0.0]), (-1, [1.0, 0.0, -1.0])]:
        reward = assay_reward(server.url, null_reward=policy, name="code_reward")
        try:
            assert call(reward, **columns)[0] == expected
        finally:
            reward.close()  # type: ignore[attr-defined]
    reward = assay_reward(server.url, null_reward="raise")
    try:
        with pytest.raises(UnjudgedError, match="bad label"):
            call(reward, **columns)
    finally:
        reward.close()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="null_reward"):
        assay_reward(server.url, null_reward=float("nan"))


def test_fixed_verifier_and_renamed_columns(server: Server) -> None:
    reward = assay_reward(server.url, verifier="code", spec_column="tests_spec", log=False)
    try:
        rewards, logged = call(reward, completions=[RIGHT, WRONG], tests_spec=[SPEC, SPEC])
    finally:
        reward.close()  # type: ignore[attr-defined]
    assert rewards == [1.0, 0.0]
    assert logged == {}
