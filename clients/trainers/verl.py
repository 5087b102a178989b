"""verl: `compute_score` functions for `reward.custom_reward_function`, sync, async and batched.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)` per
sample (its `naive` managers; the reward loop awaits an `async def` one), or, with the `batch`
reward manager, `compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=)`
once per batch. It wants a float, or a dict with `score` and numeric extras; it cannot take a
null, so an item assay could not judge gets `null_reward` (default 0.0), or `"raise"`.

`ground_truth` is the label: `{"verifier": ..., "spec": ..., "extract": ...}` or its JSON text;
without a verifier, `verifier=` (a reward kwarg) or else the `data_source` names it. Options come
as `reward_kwargs`: `url` (one or a list), `api_key`, `null_reward`, `verifier`,
`return_dict` (then `{"score", "acc", "unjudged", "elapsed_ms"}`), `chunk_size`,
`concurrency`, `retries`, `time_limit_s`, `gather_s` (how long the async form gathers, 0.02).

    reward.custom_reward_function.path=pkg://assay.clients.trainers.verl
    reward.custom_reward_function.name=compute_score_async     # or compute_score_batch
    +reward.custom_reward_function.reward_kwargs.url=http://assay:8000

Batched use without one HTTP call per sample: `compute_score_batch` sends a whole batch in one
call (chunked by the client); `compute_score_async` gathers the calls the reward loop makes at
the same moment into shared requests (they arrive together, one task per sample), so a step
costs a few requests, not one per sample. The plain `compute_score` makes one call per sample:
verl runs it in a thread per sample, where there is nothing to gather.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from assay.clients.client import DEFAULT_URL, AssayClient, AsyncAssayClient
from assay.clients.schema import ScoreItem, ScoreResult, item_from_label
from assay.clients.trainers.base import NullReward, UnjudgedError, check_policy, rewards

Score = float | dict[str, float]
_CLIENT_OPTIONS = ("api_key", "chunk_size", "concurrency", "retries", "time_limit_s")


def _key(url: str | Sequence[str], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    urls = (url,) if isinstance(url, str) else tuple(url)
    return (urls, *(kwargs.get(k) for k in _CLIENT_OPTIONS))


def _client_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _CLIENT_OPTIONS if kwargs.get(k) is not None}


_sync_clients: dict[tuple[Any, ...], AssayClient] = {}
_sync_lock = threading.Lock()


def _sync_client(url: str | Sequence[str], kwargs: dict[str, Any]) -> AssayClient:
    key = _key(url, kwargs)
    with _sync_lock:
        if key not in _sync_clients:
            _sync_clients[key] = AssayClient(url, **_client_options(kwargs))
        return _sync_clients[key]


def _prepare(
    data_source: Any, solution_str: str, ground_truth: Any, verifier: str | None
) -> ScoreItem | ScoreResult:
    return item_from_label(
        solution_str,
        ground_truth,
        verifier=verifier,
        default_verifier=str(data_source) if data_source is not None else None,
    )


def _shape(result: ScoreResult, reward: float | None, return_dict: bool) -> Score:
    assert reward is not None  # the policy is a number or "raise" here
    if not return_dict:
        return reward
    return {
        "score": reward,
        "acc": float(result.status == "passed"),
        "unjudged": float(result.reward is None),
        "elapsed_ms": result.elapsed_ms,
    }


def _finish(
    results: Sequence[ScoreResult], null_reward: NullReward, return_dict: bool
) -> list[Score]:
    policy = check_policy(null_reward, none_ok=False)
    return [
        _shape(r, value, return_dict)
        for r, value in zip(results, rewards(results, policy), strict=True)
    ]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    *,
    url: str | Sequence[str] = DEFAULT_URL,
    null_reward: NullReward = 0.0,
    verifier: str | None = None,
    return_dict: bool = False,
    **kwargs: Any,
) -> list[Score]:
    """For verl's `batch` reward manager: the whole batch in one client call."""
    prepared = [
        _prepare(d, s, g, verifier)
        for d, s, g in zip(data_sources, solution_strs, ground_truths, strict=True)
    ]
    sent = _sync_client(url, kwargs).score([p for p in prepared if isinstance(p, ScoreItem)])
    it = iter(sent)
    results = [next(it) if isinstance(p, ScoreItem) else p for p in prepared]
    return _finish(results, null_reward, return_dict)


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    url: str | Sequence[str] = DEFAULT_URL,
    null_reward: NullReward = 0.0,
    verifier: str | None = None,
    return_dict: bool = False,
    **kwargs: Any,
) -> Score:
    """For verl's per-sample managers: one sample, one call."""
    return compute_score_batch(
        [data_source],
        [solution_str],
        [ground_truth],
        url=url,
        null_reward=null_reward,
        verifier=verifier,
        return_dict=return_dict,
        **kwargs,
    )[0]


class _Gatherer:
    """Gathers the items asked for on one event loop in the same moment into one call."""

    def __init__(self, client: AsyncAssayClient, window_s: float) -> None:
        self.client, self.window_s = client, window_s
        self.pending: list[tuple[ScoreItem, asyncio.Future[ScoreResult]]] = []

    async def score(self, item: ScoreItem) -> ScoreResult:
        future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if len(self.pending) == 1:
            # The first item of a moment sends, `window_s` later, with every item added in the
            # meantime: the reward loop starts a task per sample at once, and each decodes its
            # response in a thread first, so they come a few milliseconds apart.
            asyncio.get_running_loop().create_task(self._send())
        return await future

    async def _send(self) -> None:
        await asyncio.sleep(self.window_s)
        batch, self.pending = self.pending, []
        try:
            results = await self.client.score([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


_gatherers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], _Gatherer]
] = weakref.WeakKeyDictionary()


async def compute_score_async(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    url: str | Sequence[str] = DEFAULT_URL,
    null_reward: NullReward = 0.0,
    verifier: str | None = None,
    return_dict: bool = False,
    **kwargs: Any,
) -> Score:
    """For verl's reward loop: per sample, but the samples of a moment share requests."""
    prepared = _prepare(data_source, solution_str, ground_truth, verifier)
    if isinstance(prepared, ScoreItem):
        loop = asyncio.get_running_loop()
        per_loop = _gatherers.setdefault(loop, {})
        key = _key(url, kwargs)
        if key not in per_loop:
            client = AsyncAssayClient(url, **_client_options(kwargs))
            per_loop[key] = _Gatherer(client, float(kwargs.get("gather_s", 0.02)))
        result = await per_loop[key].score(prepared)
    else:
        result = prepared
    return _finish([result], null_reward, return_dict)[0]


def close() -> None:
    """Close the clients this module opened (a process that ends needs no call)."""
    with _sync_lock:
        while _sync_clients:
            _sync_clients.popitem()[1].close()


async def aclose() -> None:
    """Close the async clients of the running loop."""
    for gatherer in _gatherers.pop(asyncio.get_running_loop(), {}).values():
        await gatherer.client.aclose()


__all__ = [
    "UnjudgedError",
    "aclose",
    "close",
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
]
