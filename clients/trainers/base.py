"""What every trainer adapter shares: the spec carried in a label, the null-reward policy,
and the facts about a batch worth logging.

A label (TRL's dataset columns, verl's `ground_truth`, OpenRLHF's `labels`, slime's `label`)
carries the item's verifier and spec: a JSON object, or its text,
`{"verifier": "code", "spec": {...}, "extract": "auto"}`.

The null-reward policy says what a trainer gets for an item assay could not judge
(`invalid_spec`, `unavailable`, `internal_error`: reward null): `"raise"` (stop, with every
such item's feedback), a number (e.g. 0.0), or `None` where the trainer accepts it (TRL leaves
None out of its sums).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from assay.clients.schema import AssayError, ScoreItem, ScoreResult

NullReward = float | Literal["raise"] | None


class UnjudgedError(AssayError):
    """Raised under `null_reward="raise"`: some items got no reward."""

    def __init__(self, results: Sequence[ScoreResult]) -> None:
        shown = "; ".join(f"{r.status}: {r.feedback}" for r in results[:5])
        more = f" (and {len(results) - 5} more)" if len(results) > 5 else ""
        super().__init__(f"{len(results)} items could not be judged: {shown}{more}")
        self.results = list(results)


def check_policy(null_reward: NullReward, *, none_ok: bool) -> NullReward:
    """The policy, refused at once when the trainer cannot take it."""
    if null_reward == "raise" or (null_reward is None and none_ok):
        return null_reward
    if isinstance(null_reward, int | float) and not isinstance(null_reward, bool):
        if not math.isfinite(null_reward):
            raise ValueError(f"null_reward must be finite, not {null_reward}")
        return float(null_reward)
    allowed = '"raise", a number' + (" or None" if none_ok else "")
    raise ValueError(f"null_reward must be {allowed}, not {null_reward!r}")


def reward_of(result: ScoreResult, null_reward: NullReward) -> float | None:
    """The reward a trainer gets for one result under the policy ("raise" is checked by
    `rewards`, over the whole batch)."""
    if result.reward is not None:
        return result.reward
    return None if null_reward == "raise" else null_reward


def rewards(results: Sequence[ScoreResult], null_reward: NullReward) -> list[float | None]:
    """The rewards of a batch; under `"raise"`, `UnjudgedError` if any item was not judged."""
    if null_reward == "raise":
        unjudged = [r for r in results if r.reward is None]
        if unjudged:
            raise UnjudgedError(unjudged)
    return [reward_of(r, null_reward) for r in results]


def completion_text(completion: Any) -> str:
    """The model's text: a string, or the last message's content in a conversational batch
    (`[{"role": "assistant", "content": ...}]`, content a string or a list of text parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):
            return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    raise TypeError(f"a completion is a string or a list of messages, not {completion!r:.80}")


def batch_facts(results: Sequence[ScoreResult]) -> dict[str, float]:
    """Scalars worth logging per batch: pass rate, mean reward of judged items, unjudged
    fraction, mean latency, and the fraction of each status."""
    n = len(results) or 1
    judged = [r.reward for r in results if r.reward is not None]
    facts = {
        "pass_rate": sum(r.status == "passed" for r in results) / n,
        "unjudged_rate": (len(results) - len(judged)) / n,
        "mean_latency_ms": sum(r.elapsed_ms for r in results) / n,
        "cached_rate": sum(r.cached for r in results) / n,
    }
    if judged:
        facts["mean_reward"] = sum(judged) / len(judged)
    for status, count in Counter(r.status for r in results).items():
        facts[f"status/{status}"] = count / n
    return facts


def score_all(
    prepared: Sequence[ScoreItem | ScoreResult], results: Sequence[ScoreResult]
) -> list[ScoreResult]:
    """Merge the results of the items sent (in order) back among the ready results."""
    it = iter(results)
    return [next(it) if isinstance(p, ScoreItem) else p for p in prepared]
