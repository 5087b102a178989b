"""The Engine: from a batch of items to results, each item isolated from the others.

Per item: find the verifier, validate the spec, extract the payload, and key the item by
(verifier, payload, spec). Identical keys in a batch run once; a bounded cache answers repeats
across batches. Each verifier has its own concurrency limit and each item a deadline. Whatever
goes wrong with one item becomes that item's status; the batch always completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from assay.clients.schema import ScoreItem, ScoreResult, VerifierInfo, VerifiersResponse
from assay.sandboxes.base import Sandbox
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.service.fair import FairLimiter
from assay.verifiers import VERIFIERS, ExtractError, Status, Verdict, Verifier, extract
from assay.verifiers.base import clip, escape_controls

log = logging.getLogger(__name__)

# Verdicts that could differ on a rerun (load-dependent time-outs, the service's own failures)
# are not cached.
_UNCACHEABLE = {Status.TIMEOUT, Status.UNAVAILABLE, Status.INTERNAL_ERROR}


# Items whose completion or spec is larger than this are prepared (extraction, hashing) in a
# worker thread, off the event loop; smaller ones cost less than the hand-over.
_PREPARE_INLINE = 64 << 10


@dataclass(slots=True)
class _Run:
    """One key's judging, shared by every item in flight with that key, in any request."""

    task: asyncio.Task[Verdict]
    waiters: int = 0


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
        cache_bytes: int = 256 << 20,
        max_item_s: float = 600.0,
        max_completion_chars: int = 1 << 20,
        observer: Observer | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.verifiers: dict[str, Verifier] = (
            dict(verifiers) if verifiers is not None else {n: v() for n, v in VERIFIERS.items()}
        )
        limits = dict(concurrency or {})
        # Fair between batches: a slot that frees goes to the next batch in turn, so one
        # client's giant batch does not hold another's small one back (service/fair.py).
        self._limits = {
            name: FairLimiter(limits.get(name, default_concurrency)) for name in self.verifiers
        }
        self.cache: Any = _cache(cache_entries, cache_bytes)
        # Every key being judged now, over all requests: a re-sent item (a client's retry after
        # a read timeout) joins the run in flight instead of starting another.
        self._running: dict[str, _Run] = {}
        self.max_item_s = max_item_s
        self.max_completion_chars = max_completion_chars
        self.observer = observer or Observer()
        self.in_flight = 0
        # Set by `abort`: the items still waiting then get an `internal_error` result saying
        # this (retryable), so that every stream ends with a line per item.
        self._abort_reason: str | None = None
        self._waiting: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- one item -----------------------------------------------------------------------------

    def _prepare(self, item: ScoreItem) -> _Prepared:
        if isinstance(item.id, str) and _lone_surrogate(item.id) is not None:
            # It cannot be echoed as UTF-8 JSON, and as an escape most JSON parsers (pydantic's,
            # orjson, serde) refuse it: the item is not judged, and says why.
            return _Prepared(
                early=Verdict.unjudged(
                    Status.INVALID_SPEC,
                    "id: a lone surrogate (U+D800 to U+DFFF), which UTF-8 JSON cannot carry; "
                    "it is echoed with U+FFFD in its place",
                )
            )
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
        dumped = spec.model_dump(mode="json")
        where = _lone_surrogate(dumped)
        if where is not None:
            return _Prepared(
                verifier=verifier,
                early=Verdict.unjudged(
                    Status.INVALID_SPEC,
                    f"invalid spec: {where or 'spec'}: a lone surrogate (U+D800 to U+DFFF), "
                    "which no UTF-8 text can hold",
                ),
            )
        if len(item.completion) > self.max_completion_chars:
            # Before anything reads it: extraction, hashing and the verifiers' checks are
            # linear at best, and this bounds what one item costs the service itself.
            return _Prepared(
                verifier=verifier,
                early=Verdict(
                    Status.FORMAT_ERROR,
                    0.0,
                    f"the completion is {len(item.completion)} characters long; this service "
                    f"reads at most {self.max_completion_chars} (ASSAY_MAX_COMPLETION_CHARS)",
                ),
            )
        try:
            payload = extract(item.completion, item.extract, verifier.fences(spec))
        except ExtractError as exc:
            return _Prepared(verifier=verifier, early=Verdict(Status.FORMAT_ERROR, 0.0, str(exc)))
        blob = json.dumps([item.verifier, payload, dumped], sort_keys=True).encode()
        key = hashlib.sha256(blob).hexdigest()
        return _Prepared(verifier=verifier, payload=payload, spec=spec, key=key)

    async def _prepare_off_loop(self, item: ScoreItem) -> _Prepared:
        """`_prepare`, in a worker thread when the item is large: extraction and hashing are
        linear, but a megabyte's worth still costs the event loop milliseconds."""
        if len(item.completion) + _rough_size(item.spec) <= _PREPARE_INLINE:
            return self._prepare(item)
        return await asyncio.to_thread(self._prepare, item)

    async def _shared(self, prepared: _Prepared, owner: object) -> tuple[Verdict, bool]:
        """The verdict of the item's key, from the run in flight for it (any request's) or a
        new one; and whether it joined another item's run. The run is cancelled once the last
        item waiting for it has gone (its client disconnected)."""
        run = self._running.get(prepared.key)
        joined = run is not None
        if run is None:
            run = _Run(asyncio.ensure_future(self._judge_and_keep(prepared, owner)))
            self._running[prepared.key] = run
            started = run
            run.task.add_done_callback(lambda _: self._forget(prepared.key, started))
        run.waiters += 1
        try:
            return await asyncio.shield(run.task), joined
        finally:
            run.waiters -= 1
            if run.waiters == 0 and not run.task.done():
                run.task.cancel()
                self._forget(prepared.key, run)

    def _forget(self, key: str, run: _Run) -> None:
        if self._running.get(key) is run:
            del self._running[key]

    async def _judge_and_keep(self, prepared: _Prepared, owner: object) -> Verdict:
        verdict = await self._judge(prepared, owner)
        if verdict.status not in _UNCACHEABLE and verdict.cacheable:
            self.cache.put(prepared.key, verdict, _verdict_size(verdict))
        return verdict

    async def _judge(self, prepared: _Prepared, owner: object = None) -> Verdict:
        verifier = prepared.verifier
        assert verifier is not None
        deadline = min(verifier.deadline_s(prepared.spec), self.max_item_s)
        try:
            async with self._limits[verifier.name].slot(owner), asyncio.timeout(deadline):
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
        async with contextlib.aclosing(self.stream_ready(items)) as ready:
            async for results in ready:
                for pair in results:
                    yield pair

    async def stream_ready(
        self, items: Sequence[ScoreItem], gather_s: float = 0.0
    ) -> AsyncGenerator[list[tuple[int, ScoreResult]], None]:
        """Results as they finish, each with its item's index: all that are ready at once,
        together (a stream sends them in one write: one system call and one wake-up of the
        client for many results).

        `gather_s`: a group is sent at most this often; the results that finish in between wait
        for the next (never the batch's last). Reading a stream costs a client about a tenth of
        a millisecond a read, whatever it reads: with items of a few milliseconds each, that was
        a tenth of all the CPU a code item cost on one machine, and 20 ms between groups took
        three fifths of it off (docs/warm.md)."""
        self.in_flight += len(items)
        if self.in_flight:
            self._idle.clear()
        started = time.monotonic()
        queue: asyncio.Queue[tuple[int, ScoreResult]] = asyncio.Queue()
        owner = object()  # this batch, for the fair share of each verifier's slots

        async def one(index: int, item: ScoreItem) -> None:
            t0 = time.monotonic()
            cached = False
            try:
                prepared = await self._prepare_off_loop(item)
                if prepared.early is not None:
                    verdict = prepared.early
                else:
                    hit = self.cache.get(prepared.key)
                    if hit is not None:
                        verdict, cached = hit, True
                    else:
                        verdict, cached = await self._shared(prepared, owner)
            except asyncio.CancelledError:
                if self._abort_reason is None:
                    raise  # the client went away: no result is wanted
                verdict = Verdict.unjudged(
                    Status.INTERNAL_ERROR, self._abort_reason, retryable=True
                )
            except Exception as exc:  # a bug in preparing; still only this item's problem
                log.exception("internal error while preparing an item")
                verdict = Verdict.unjudged(
                    Status.INTERNAL_ERROR,
                    f"internal error: {type(exc).__name__}: {exc}",
                    retryable=False,
                )
            elapsed = time.monotonic() - t0
            label = item.verifier if item.verifier in self.verifiers else "unknown"
            try:
                self.observer.item_done(label, verdict.status.value, elapsed, cached)
                result = ScoreResult(
                    id=_echo(item.id),
                    reward=verdict.reward,
                    status=verdict.status.value,
                    feedback=clip(escape_controls(verdict.feedback)),
                    details=verdict.details,
                    elapsed_ms=round(elapsed * 1000, 1),
                    cached=cached,
                )
            except Exception as exc:  # every item gets a result, or the batch would wait forever
                log.exception("internal error while making an item's result")
                result = ScoreResult(
                    id=_echo(item.id),
                    reward=None,
                    status=Status.INTERNAL_ERROR.value,
                    feedback=clip(f"internal error: {type(exc).__name__}"),
                    details={"retryable": False},
                    elapsed_ms=round(elapsed * 1000, 1),
                )
            await queue.put((index, result))

        tasks: list[asyncio.Task[None]] = []

        def start(first: int, end: int) -> None:
            for index in range(first, end):
                task = asyncio.ensure_future(one(index, items[index]))
                tasks.append(task)
                self._waiting.add(task)
                task.add_done_callback(self._waiting.discard)
                if self._abort_reason is not None:
                    task.cancel()

        async def start_all() -> None:
            # The items start in groups of 1, 2, 4, ..., the loop turning between two: the
            # first reach a sandbox while the rest are still being prepared (extracted, hashed,
            # given a task), not after all of them are (a batch of 200 code items waited about
            # 9 ms for its first run, the cores idle meanwhile).
            begun, size = 0, 1
            while begun < len(items):
                start(begun, min(begun + size, len(items)))
                begun, size = begun + size, size * 2
                if begun < len(items):
                    await asyncio.sleep(0)

        starter = asyncio.ensure_future(start_all())
        try:
            left = len(items)
            loop = asyncio.get_running_loop()
            sent = -gather_s
            while left:
                ready = [await queue.get()]
                gather = sent + gather_s - loop.time()
                if gather > 0 and len(ready) < left:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(gather):
                            while len(ready) < left:
                                ready.append(await queue.get())
                while len(ready) < left and not queue.empty():
                    ready.append(queue.get_nowait())
                left -= len(ready)
                sent = loop.time()
                yield ready
        finally:
            # Each item stops waiting; a run that no other request waits for is cancelled.
            starter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(starter, *tasks, return_exceptions=True)
            self.in_flight -= len(items)
            if not self.in_flight:
                self._idle.set()
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
        sandbox_reason = self.sandbox.unavailable_reason()
        verifiers = []
        for name, verifier in sorted(self.verifiers.items()):
            # A verifier that knows whether it can run here (its own tools, a remote server)
            # says so itself, apart from any spec; the others depend on the sandbox.
            own = getattr(verifier, "unavailable_reason", None)
            reason = own(self.sandbox) if own is not None else sandbox_reason
            verifiers.append(
                VerifierInfo(
                    name=name,
                    available=reason is None,
                    reason=reason,
                    # In a thread: facts may probe toolchains (the code verifier's versions).
                    facts=await asyncio.to_thread(verifier.facts, self.sandbox),
                )
            )
        return VerifiersResponse(verifiers=verifiers, sandbox=self.sandbox.facts())

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits up to `timeout_s` for every batch to finish; whether they did."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def abort(self, reason: str) -> None:
        """Stops judging: every item still waiting (and any sent later) gets an
        `internal_error` result with `reason` and `details.retryable: true` at once, so that
        each batch's answer or stream ends cleanly. The service's drain calls it when its
        deadline passes."""
        self._abort_reason = reason
        for task in list(self._waiting):
            task.cancel()

    async def close(self) -> None:
        for verifier in self.verifiers.values():
            close = getattr(verifier, "close", None)
            if close is not None:  # warm tools (Lean REPLs) a verifier keeps
                await close()
        await self.sandbox.close()


def _cache(entries: int, max_bytes: int) -> Any:
    from assay.service.cache import ResultCache

    return ResultCache[Verdict](entries, max_bytes)


def _echo(ident: str | int | None) -> str | int | None:
    """The item's id as it can be written back: lone surrogates as U+FFFD."""
    if isinstance(ident, str) and _lone_surrogate(ident) is not None:
        return ident.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return ident


def _any_lone_surrogate(value: Any) -> bool:
    """Whether a JSON value holds a lone surrogate anywhere: the C encoder writes the whole of
    it, keys too, in one call, and UTF-8 refuses the surrogate. A walk, where the encoder runs
    out of depth."""
    try:
        json.dumps(value, ensure_ascii=False, check_circular=False).encode()
    except UnicodeEncodeError:
        return True
    except (RecursionError, TypeError, ValueError):
        return _walk_for_lone_surrogate(value)
    return False


def _walk_for_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        top = stack.pop()
        if isinstance(top, str):
            if not top.isascii():
                try:
                    top.encode()
                except UnicodeEncodeError:
                    return True
        elif isinstance(top, dict):
            stack.extend(top)
            stack.extend(top.values())
        elif isinstance(top, list):
            stack.extend(top)
    return False


def _rough_size(value: Any) -> int:
    """About how many characters a JSON value's strings hold, without serialising it. A loop,
    not recursion: a client's spec may nest as deep as the JSON parser allows."""
    size, stack = 0, [value]
    while stack:
        top = stack.pop()
        if isinstance(top, str):
            size += len(top)
        elif isinstance(top, dict):
            size += sum(len(str(k)) for k in top)
            stack.extend(top.values())
        elif isinstance(top, list):
            stack.extend(top)
        else:
            size += 8
    return size


def _verdict_size(verdict: Verdict) -> int:
    """What a cached verdict costs in memory, roughly: its text, its details as JSON, and the
    Python objects around them."""
    details = json.dumps(verdict.details, default=str)
    return 2 * (len(verdict.feedback) + len(details)) + 512


def _lone_surrogate(value: Any) -> str | None:
    """Where in a JSON value a string holds a lone surrogate (a path like `spec.tests.0.stdin`),
    if anywhere. A loop, not recursion, as `_rough_size`; the paths are built only for a value
    that has one (building them for every item cost the service a tenth of a millisecond)."""
    if isinstance(value, str) and value.isascii():  # an id, mostly: no walk, no encoding
        return None
    if not _any_lone_surrogate(value):
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, top = stack.pop()
        if isinstance(top, str):
            try:
                top.encode()
            except UnicodeEncodeError:
                return where
        elif isinstance(top, dict):
            stack.extend((f"{where}.{k}".lstrip("."), v) for k, v in top.items())
            stack.extend((where, k) for k in top)
        elif isinstance(top, list):
            stack.extend((f"{where}.{n}".lstrip("."), v) for n, v in enumerate(top))
    return None
