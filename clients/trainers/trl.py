"""TRL: a reward function for `GRPOTrainer(reward_funcs=[...])`, sync or `async def`.

TRL calls a reward function with keyword arguments: `prompts`, `completions` (strings, or
message lists in conversational datasets), `completion_ids`, `trainer_state`, `log_extra`,
`log_metric` (TRL >= 0.24) and every other dataset column as a list, one entry per completion.
It wants one `float | None` per completion back (None is left out of TRL's sums); it has no
time-out of its own and an exception stops training.

The item for completion i is made from the dataset: the verifier from `verifier=` or the
`verifier` column, the spec from the `spec` column (a JSON object or its text), or both from a
`label` column (`{"verifier": ..., "spec": ...}`). The whole batch goes to assay in one call
(the client cuts it into concurrent chunks). Per batch, the pass rate, the unjudged fraction,
the mean latency and each status's share go to `log_metric` as `<name>/...`, and each item's
status to `log_extra` as the `<name>_status` column of TRL's completions table.

    from assay.clients.trainers.trl import assay_reward
    trainer = GRPOTrainer(model, reward_funcs=[assay_reward("http://assay:8000")], ...)

The functions carry a `close()` for the connections they opened (the async one also an
`aclose()` for its running loop's; a process that ends needs no call).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from assay.clients.client import AssayClient, AsyncAssayClient
from assay.clients.schema import ScoreItem, ScoreResult, item_from_label
from assay.clients.trainers.base import (
    NullReward,
    batch_facts,
    check_policy,
    completion_text,
    rewards,
    score_all,
)

RewardFunc = Callable[..., list[float | None]]
AsyncRewardFunc = Callable[..., Awaitable[list[float | None]]]


class _Columns:
    """Which dataset columns carry the verifier, the spec, the extraction and the label."""

    def __init__(self, verifier: str | None, columns: dict[str, str]) -> None:
        self.verifier, self.columns = verifier, columns

    def items(
        self, completions: Sequence[Any], kwargs: dict[str, Any]
    ) -> list[ScoreItem | ScoreResult]:
        def column(role: str) -> Sequence[Any]:
            values = kwargs.get(self.columns[role])
            return values if values is not None else [None] * len(completions)

        verifiers = (
            column("verifier") if self.verifier is None else [self.verifier] * len(completions)
        )
        return [
            item_from_label(
                completion_text(c),
                label,
                verifier=v,
                spec=spec,
                extract=extract,
            )
            for c, v, spec, extract, label in zip(
                completions,
                verifiers,
                column("spec"),
                column("extract"),
                column("label"),
                strict=True,
            )
        ]


def _log(name: str, results: list[ScoreResult], kwargs: dict[str, Any]) -> None:
    log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
    if callable(log_metric):
        for key, value in batch_facts(results).items():
            log_metric(f"{name}/{key}", value)
    if callable(log_extra):
        log_extra(f"{name}_status", [r.status for r in results])


def _options(
    verifier: str | None,
    verifier_column: str,
    spec_column: str,
    extract_column: str,
    label_column: str,
) -> _Columns:
    return _Columns(
        verifier,
        {
            "verifier": verifier_column,
            "spec": spec_column,
            "extract": extract_column,
            "label": label_column,
        },
    )


def assay_reward(
    url: str | Sequence[str] = "http://127.0.0.1:8000",
    *,
    null_reward: NullReward = None,
    verifier: str | None = None,
    verifier_column: str = "verifier",
    spec_column: str = "spec",
    extract_column: str = "extract",
    label_column: str = "label",
    name: str = "assay",
    log: bool = True,
    **client_options: Any,
) -> RewardFunc:
    """A synchronous TRL reward function scoring through the assay server(s) at `url`.

    `null_reward`: what an item assay could not judge gets: None (default; TRL leaves it out),
    a number, or "raise". `client_options` go to `AssayClient` (api_key, chunk_size,
    concurrency, retries, time_limit_s, ...).
    """
    policy = check_policy(null_reward, none_ok=True)
    columns = _options(verifier, verifier_column, spec_column, extract_column, label_column)
    client: list[AssayClient] = []  # made at the first call, in the process that calls

    def reward(
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        **kwargs: Any,
    ) -> list[float | None]:
        prepared = columns.items(completions, kwargs)
        if not client:
            client.append(AssayClient(url, **client_options))
        sent = client[0].score([p for p in prepared if isinstance(p, ScoreItem)])
        results = score_all(prepared, sent)
        if log:
            _log(name, results, kwargs)
        return rewards(results, policy)

    def close() -> None:
        while client:
            client.pop().close()

    reward.__name__ = reward.__qualname__ = name
    reward.close = close  # type: ignore[attr-defined]
    return reward


def assay_reward_async(
    url: str | Sequence[str] = "http://127.0.0.1:8000",
    *,
    null_reward: NullReward = None,
    verifier: str | None = None,
    verifier_column: str = "verifier",
    spec_column: str = "spec",
    extract_column: str = "extract",
    label_column: str = "label",
    name: str = "assay",
    log: bool = True,
    **client_options: Any,
) -> AsyncRewardFunc:
    """`assay_reward` as an `async def`: TRL runs async reward functions together on its own
    event loop, so several of them (or other async rewards) wait at the same time."""
    policy = check_policy(null_reward, none_ok=True)
    columns = _options(verifier, verifier_column, spec_column, extract_column, label_column)
    # httpx's async client belongs to the loop it first ran on: one per loop.
    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncAssayClient] = (
        weakref.WeakKeyDictionary()
    )

    async def reward(
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        **kwargs: Any,
    ) -> list[float | None]:
        prepared = columns.items(completions, kwargs)
        loop = asyncio.get_running_loop()
        if loop not in clients:
            clients[loop] = AsyncAssayClient(url, **client_options)
        sent = await clients[loop].score([p for p in prepared if isinstance(p, ScoreItem)])
        results = score_all(prepared, sent)
        if log:
            _log(name, results, kwargs)
        return rewards(results, policy)

    def close() -> None:
        """Close the clients; from outside their loops (TRL's loop runs in a thread of its own)."""
        for loop, c in list(clients.items()):
            if loop.is_closed():
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(c.aclose(), loop).result(timeout=30)
            else:
                loop.run_until_complete(c.aclose())
        clients.clear()

    async def aclose() -> None:
        """Close the client of the running loop, from inside it."""
        c = clients.pop(asyncio.get_running_loop(), None)
        if c is not None:
            await c.aclose()

    reward.__name__ = reward.__qualname__ = name
    reward.close = close  # type: ignore[attr-defined]
    reward.aclose = aclose  # type: ignore[attr-defined]
    return reward


__all__ = ["assay_reward", "assay_reward_async"]
