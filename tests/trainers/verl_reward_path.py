"""Runs in .venv-verl (scripts/setup.d/50-verl): verl's own reward code on a hand-built batch.

    .venv-verl/bin/python tests/trainers/verl_reward_path.py URL

verl loads the adapter as a user configures it (`get_custom_reward_fn` with
`path=pkg://assay.clients.trainers.verl` and `reward_kwargs`), and its reward managers call it:
the `batch` manager (`compute_score_batch`), and the reward loop's `naive` manager with
`compute_score_async` and with `compute_score`. Prints, as JSON, per manager the response
strings and the rewards verl put in its reward tensor.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.workers.reward_manager import BatchRewardManager

# By its folder: verl's wheel itself installs a top-level package called `tests`.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny

RESPONSES = [
    "print(1);",
    "print(2);",
    "x=1; print(x);",
    "1/0;",
    "pass; print(1); pass;",
    "print(1);",  # its label below is broken: null_reward
]


def batch(tok: Any) -> tuple[DataProto, list[str]]:
    prompt_len, response_len = 4, 6
    prompts, responses, masks = [], [], []
    for text in RESPONSES:
        prompt = tok("x=1; pass;", add_special_tokens=False)["input_ids"]
        response = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt_pad = [tok.pad_token_id] * (prompt_len - len(prompt))
        response_pad = [tok.pad_token_id] * (response_len - len(response))
        prompts.append(prompt_pad + prompt)
        responses.append(response + response_pad)
        masks.append(
            [0] * len(prompt_pad) + [1] * (len(prompt) + len(response)) + [0] * len(response_pad)
        )
    label = json.dumps({"verifier": "code", "spec": tiny.SPEC, "extract": "raw"})
    ground_truths = [label] * (len(RESPONSES) - 1) + ['{"spec": "broken"']
    prompt_t, response_t = torch.tensor(prompts), torch.tensor(responses)
    data = DataProto.from_single_dict(
        {
            "prompts": prompt_t,
            "responses": response_t,
            "input_ids": torch.cat([prompt_t, response_t], dim=1),
            "attention_mask": torch.tensor(masks),
            "data_source": np.array(["code"] * len(RESPONSES), dtype=object),
            "reward_model": np.array([{"ground_truth": g} for g in ground_truths], dtype=object),
            "extra_info": np.array([{"index": i} for i in range(len(RESPONSES))], dtype=object),
        }
    )
    decoded = [tok.decode(r, skip_special_tokens=True) for r in response_t]
    return data, decoded


def config(url: str, name: str) -> Any:
    return OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://assay.clients.trainers.verl",
                    "name": name,
                    "reward_kwargs": {"url": url, "null_reward": -1.0, "chunk_size": 4},
                }
            }
        }
    )


def tensor_rewards(reward_tensor: torch.Tensor, data: DataProto) -> list[float]:
    prompt_len = data.batch["prompts"].shape[-1]
    lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=-1)
    return [float(reward_tensor[i, int(n) - 1]) for i, n in enumerate(lengths)]


def main(url: str) -> None:
    tok = tiny.tokenizer()
    data, decoded = batch(tok)
    out: dict[str, Any] = {"responses": decoded}

    cfg = config(url, "compute_score_batch")
    manager = BatchRewardManager(tok, num_examine=0, compute_score=get_custom_reward_fn(cfg))
    got = manager(data, return_dict=True)
    out["batch"] = tensor_rewards(got["reward_tensor"], data)

    for name in ("compute_score_async", "compute_score"):
        cfg = config(url, name)
        naive = get_reward_manager_cls("naive")(cfg, tok, compute_score=get_custom_reward_fn(cfg))

        async def run(manager: Any = naive) -> list[dict[str, Any]]:
            singles = [manager.run_single(data[i : i + 1]) for i in range(len(data))]
            return list(await asyncio.gather(*singles))

        answers = naive.loop.run_until_complete(run())
        scores = [a["reward_score"] for a in answers]
        rm_scores = naive.assemble_rm_scores(data, scores)
        out[name] = tensor_rewards(rm_scores, data)

    from assay.clients.trainers import verl as adapter

    naive.loop.run_until_complete(adapter.aclose())
    adapter.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
