"""The Engine: from a batch of items to results, each item isolated from the others.

Per item: find the verifier, validate the spec, extract the payload, and key the item by
(verifier, payload, spec). Identical keys in a batch run once; a bounded cache answers repeats
across batches. Each verifier has its own concurrency limit and each item a deadline. Whatever
goes wrong with one item becomes that item's status; the batch always completes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from assay.clients.schema import ScoreItem, ScoreResult, VerifierInfo, VerifiersResponse
from assay.sandboxes.base import Sandbox
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.verifiers import VERIFIERS, ExtractError, Status, Verdict, Verifier, extract
from assay.verifiers.base import clip

log = logging.getLogger(__name__)

# Verdicts that could differ on a rerun (load-dependent time-outs, the service's own failures)
# are not cached.
_UNCACHEABLE = {Status.TIMEOUT, Status.UNAVAILABLE, Status.INTERNAL_ERROR}


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An item made ready to run: its verifier, payload, spec and key; or its early verdict."""

    verifier: Verifier | None = None
    payload: str = ""
    spec: Any = None
    key: str = ""
    early: Verdict | None = None


def _error_text(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class Observer:
    """Hooks for metrics; the default does nothing."""

    def item_done(self, verifier: str, status: str, seconds: float, cached: bool) -> None:
        return None


class Engine:
    def __init__(
        self,
        sandbox: Sandbox,
        *,
        verifiers: Mapping[str, Verifier] | None = None,
        concurrency: Mapping[str, int] | None = None,
        default_concurrency: int = 4,
        cache_entries: int = 100_000,
        max_item_s: float = 600.0,
        observer: Observer | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.verifiers: dict[str, Verifier] = (
            dict(verifiers) if verifiers is not None else {n: v() for n, v in VERIFIERS.items()}
        )
        limits = dict(concurrency or {})
        self._limits = {
            name: asyncio.Semaphore(limits.get(name, default_concurrency))
            for name in self.verifiers
        }
        self.cache: Any = _cache(cache_entries)
        self.max_item_s = max_item_s
        self.observer = observer or Observer()
        self.in_flight = 0

    # -- one item -----------------------------------------------------------------------------

    def _prepare(self, item: ScoreItem) -> _Prepared:
        verifier = self.verifiers.get(item.verifier)
        if verifier is None:
            known = ", ".join(sorted(self.verifiers)) or "none"
            return _Prepared(
                early=Verdict.unjudged(
                    Status.UNAVAILABLE,
                    f"unknown verifier {item.verifier!r}; this deployment has: {known}",
                )
            )
        try:
            spec = verifier.spec_model.model_validate(item.spec)
        except ValidationError as exc:
            return _Prepared(
                verifier=verifier,
                early=Verdict.unjudged(Status.INVALID_SPEC, f"invalid spec: {_error_text(exc)}"),
            )
        reason = verifier.check(spec, self.sandbox)
        if reason is not None:
            return _Prepared(verifier=verifier, early=Verdict.unjudged(Status.UNAVAILABLE, reason))
        try:
            payload = extract(item.completion, item.extract, verifier.fences(spec))
        except ExtractError as exc:
            return _Prepared(verifier=verifier, early=Verdict(Status.FORMAT_ERROR, 0.0, str(exc)))
        blob = json.dumps(
            [item.verifier, payload, spec.model_dump(mode="json")], sort_keys=True
        ).encode()
        key = hashlib.sha256(blob).hexdigest()
        return _Prepared(verifier=verifier, payload=payload, spec=spec, key=key)

    async def _judge(self, prepared: _Prepared) -> Verdict:
        verifier = prepared.verifier
        assert verifier is not None
        deadline = min(verifier.deadline_s(prepared.spec), self.max_item_s)
        try:
            async with self._limits[verifier.name], asyncio.timeout(deadline):
                return await verifier.verify(prepared.payload, prepared.spec, self.sandbox)
        except TimeoutError:
            return Verdict(Status.TIMEOUT, 0.0, f"the item's deadline of {deadline:g} s passed")
        except SandboxUnavailable as exc:
            return Verdict.unjudged(Status.UNAVAILABLE, str(exc))
        except SandboxError as exc:
            log.warning("sandbox failed on an item: %s", exc)
            return Verdict.unjudged(
                Status.INTERNAL_ERROR, f"sandbox failed: {exc}", retryable=exc.retryable
            )
        except Exception as exc:  # one item never fails the batch
            log.exception("internal error while judging an item")
            return Verdict.unjudged(
                Status.INTERNAL_ERROR,
                f"internal error: {type(exc).__name__}: {exc}",
                retryable=True,
            )

    # -- a batch ------------------------------------------------------------------------------

    async def stream(self, items: Sequence[ScoreItem]) -> AsyncIterator[tuple[int, ScoreResult]]:
        """Results as they finish, each with its item's index."""
        self.in_flight += len(items)
        started = time.monotonic()
        running: dict[str, asyncio.Task[Verdict]] = {}
        queue: asyncio.Queue[tuple[int, ScoreResult]] = asyncio.Queue()

        async def one(index: int, item: ScoreItem) -> None:
            t0 = time.monotonic()
            cached = False
            try:
                prepared = self._prepare(item)
                if prepared.early is not None:
                    verdict = prepared.early
                else:
                    hit = self.cache.get(prepared.key)
                    if hit is not None:
                        verdict, cached = hit, True
                    elif prepared.key in running:
                        verdict, cached = await asyncio.shield(running[prepared.key]), True
                    else:
                        task = asyncio.ensure_future(self._judge(prepared))
                        running[prepared.key] = task
                        verdict = await asyncio.shield(task)
                        if verdict.status not in _UNCACHEABLE:
                            self.cache.put(prepared.key, verdict)
            except Exception as exc:  # a bug in preparing; still only this item's problem
                log.exception("internal error while preparing an item")
                verdict = Verdict.unjudged(
                    Status.INTERNAL_ERROR,
                    f"internal error: {type(exc).__name__}: {exc}",
                    retryable=False,
                )
            elapsed = time.monotonic() - t0
            label = item.verifier if item.verifier in self.verifiers else "unknown"
            self.observer.item_done(label, verdict.status.value, elapsed, cached)
            result = ScoreResult(
                id=item.id,
                reward=verdict.reward,
                status=verdict.status.value,
                feedback=clip(verdict.feedback),
                details=verdict.details,
                elapsed_ms=round(elapsed * 1000, 1),
                cached=cached,
            )
            await queue.put((index, result))

        tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
        try:
            for _ in tasks:
                yield await queue.get()
        finally:
            for task in [*tasks, *running.values()]:
                task.cancel()
            await asyncio.gather(*tasks, *running.values(), return_exceptions=True)
            self.in_flight -= len(items)
            log.debug("batch of %d in %.3f s", len(items), time.monotonic() - started)

    async def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """Results in the items' order."""
        results: list[ScoreResult | None] = [None] * len(items)
        async for index, result in self.stream(items):
            results[index] = result
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    async def describe(self) -> VerifiersResponse:
        """`GET /v1/verifiers`: each verifier, and how the sandbox isolates jobs."""
        reason = self.sandbox.unavailable_reason()
        verifiers = [
            VerifierInfo(
                name=name,
                available=reason is None,
                reason=reason,
                # In a thread: facts may probe toolchains (the code verifier's versions).
                facts=await asyncio.to_thread(verifier.facts, self.sandbox),
            )
            for name, verifier in sorted(self.verifiers.items())
        ]
        return VerifiersResponse(verifiers=verifiers, sandbox=self.sandbox.facts())

    async def close(self) -> None:
        await self.sandbox.close()


def _cache(entries: int) -> Any:
    from assay.service.cache import ResultCache

    return ResultCache[Verdict](entries)
