"""A real TRL GRPOTrainer run on the CPU, rewards from a real assay server through the adapter.

The model and tokenizer are made here (tests/trainers/tiny.py); every completion the random
model writes is a valid one-line Python program, so rewards vary. After each logging step the
completions and per-completion rewards TRL holds are taken and scored again straight over
HTTP: TRL's rewards, and its logged means, must equal what assay answers for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from assay.clients.trainers.trl import assay_reward, assay_reward_async
from tests.conftest import Server, needs_bwrap, start_server, stop_server
from tests.trainers import tiny

pytest.importorskip("trl")
pytestmark = [
    needs_bwrap,
    # transformers' and TRL's own deprecation notices about their own arguments
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def trl_server() -> Iterator[Server]:
    s = start_server()
    yield s
    stop_server(s)


def assay_scores(server: Server, completions: list[str]) -> list[float | None]:
    """What assay answers for these completions, asked directly, not through the adapter."""
    items = [
        {"verifier": "code", "completion": c, "spec": tiny.SPEC, "extract": "raw"}
        for c in completions
    ]
    response = httpx.post(f"{server.url}/v1/score", json={"items": items}, timeout=120)
    response.raise_for_status()
    return [r["reward"] for r in response.json()["results"]]


def run_grpo(tmp_path: Path, reward: Any, steps: int = 2) -> tuple[Any, list[dict[str, Any]]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = tiny.tokenizer()
    snapshots: list[dict[str, Any]] = []

    class Snapshot(TrainerCallback):  # type: ignore[misc]
        trainer: Any = None

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = self.trainer._logs
            if logs["completion"] and "loss" in (kwargs.get("logs") or {}):
                snapshots.append(
                    {
                        "step": state.global_step,
                        "completions": list(logs["completion"]),
                        "rewards": list(logs["rewards"]["assay"]),
                        "statuses": list(logs["extra"]["assay_status"]),
                    }
                )

    snapshot = Snapshot()
    config = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        temperature=1.5,
        seed=7,
    )
    trainer = GRPOTrainer(
        model=tiny.model(len(tok)),
        processing_class=tok,
        reward_funcs=[reward],
        args=config,
        train_dataset=Dataset.from_list(tiny.rows(16)),
        callbacks=[snapshot],
    )
    snapshot.trainer = trainer
    trainer.train()
    return trainer, snapshots


@pytest.mark.slow
@pytest.mark.parametrize("form", ["sync", "async"])
def test_grpo_rewards_are_assays(tmp_path: Path, trl_server: Server, form: str) -> None:
    make = assay_reward if form == "sync" else assay_reward_async
    reward = make(trl_server.url, chunk_size=3)
    try:
        trainer, snapshots = run_grpo(tmp_path, reward)
    finally:
        reward.close()  # type: ignore[attr-defined]
    history = [h for h in trainer.state.log_history if "rewards/assay/mean" in h]
    assert len(history) == len(snapshots) == 2
    seen_rewards: set[float] = set()
    for logged, snap in zip(history, snapshots, strict=True):
        assert len(snap["completions"]) == 8
        expected = assay_scores(trl_server, snap["completions"])
        assert snap["rewards"] == expected
        assert math.isclose(logged["rewards/assay/mean"], sum(expected) / len(expected))  # type: ignore[arg-type]
        # The adapter's own facts, logged through TRL's log_metric and log_extra.
        passed = sum(s == "passed" for s in snap["statuses"]) / len(snap["statuses"])
        assert math.isclose(logged["assay/pass_rate"], passed)
        assert logged["assay/unjudged_rate"] == 0.0
        seen_rewards.update(expected)  # type: ignore[arg-type]
    assert seen_rewards == {0.0, 1.0} or seen_rewards <= {0.0, 1.0}
