"""The thin HTTP client, sync and async: batches in, results out, the service kept busy.

A call's items are cut into chunks sent concurrently to one or more base URLs, each chunk to the
live URL with the fewest items outstanding. Results come over `/v1/score/stream`, so a chunk
broken off midway is sent again only for the items still missing, and each item's first result
is the one kept: an item is never scored twice into the result. Connection failures, 429 and
5xx answers are retried with exponential backoff and full jitter (at least the `Retry-After` the
server asked for); a URL that cannot be reached is skipped until its backoff ends, then tried
again. A 4xx of the caller's making (401, 404, 422, ...) raises `AssayHTTPError` at once. An
item the server finds too large (413) alone gets `unavailable`; items that get no answer within
the call's `time_limit_s` or the retries get `internal_error` with `details.retryable`, so that a
caller always gets one result per item and decides with a null-reward policy what that means.

Retries are hand-written (about 40 lines) rather than `tenacity`'s: the bare client may need
only httpx and pydantic, and the retry here is per chunk and per URL (results kept across
tries, URLs marked dead), which a decorator around one call does not express.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from assay.clients.schema import (
    AssayError,
    IndexedResult,
    ScoreItem,
    ScoreResult,
    Status,
    VerifierInfo,
    VerifiersResponse,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# Answers that a later try may not get: overloaded, draining, a proxy's failures, a crash.
_RETRY_STATUS = {429, 500, 502, 503, 504}
T = TypeVar("T")


class AssayHTTPError(AssayError):
    """The service refused the request (an HTTP error that a retry would not change)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


class AssayConnectionError(AssayError):
    """No URL of the client could be reached, after retries."""


ItemLike = ScoreItem | Mapping[str, Any]


def as_item(item: ItemLike) -> ScoreItem:
    return item if isinstance(item, ScoreItem) else ScoreItem.model_validate(item)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
    return body.get("detail", body) if isinstance(body, dict) else body


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0  # an HTTP date or garbage: back off by our own schedule


def unscored(item: ScoreItem, status: Status, feedback: str, **details: Any) -> ScoreResult:
    """The result of an item that no server judged, made by the client."""
    return ScoreResult(
        id=item.id, reward=None, status=status, feedback=feedback[:2000], details=details
    )


@dataclass
class _Endpoint:
    """One base URL and what the client knows of it."""

    url: str
    http: httpx.AsyncClient
    outstanding: int = 0  # items sent and not yet answered
    failures: int = 0  # connection failures in a row
    usable_at: float = 0.0  # monotonic time before which it is skipped


class _Retry(Exception):
    """A try that made the chunk wait: why, and at least how long."""

    def __init__(self, why: str, wait_s: float = 0.0) -> None:
        super().__init__(why)
        self.wait_s = wait_s


class AsyncAssayClient:
    """Scores items through one or more assay servers, for asyncio code.

    `url` is a base URL or a list of them (replicas). `chunk_size` items go in one request and
    `concurrency` requests are in flight at once per call. `time_limit_s` bounds a whole
    `score()` call (None: no bound; each call may pass its own); `request_timeout` is httpx's,
    per read.
    `retries` counts tries of a chunk that brought no result, beyond the first; `backoff_s` is
    the first backoff, doubled each time up to `max_backoff_s`.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        api_key: str | None = None,
        time_limit_s: float | None = None,
        request_timeout: float = 600.0,
        retries: int = 5,
        chunk_size: int = 256,
        concurrency: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None:  # the name `request_timeout` had in 0.1.0
            request_timeout = timeout
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("give at least one base URL")
        if chunk_size < 1 or concurrency < 1 or retries < 0:
            raise ValueError("chunk_size and concurrency must be at least 1, retries at least 0")
        self.time_limit_s, self.retries = time_limit_s, retries
        self.chunk_size, self.concurrency = chunk_size, concurrency
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        limits = httpx.Limits(max_connections=max(concurrency, 10))
        self._endpoints = [
            _Endpoint(
                u.rstrip("/"),
                httpx.AsyncClient(
                    base_url=u,
                    headers=_headers(api_key),
                    timeout=httpx.Timeout(request_timeout, connect=min(10.0, request_timeout)),
                    limits=limits,
                    transport=transport,
                ),
            )
            for u in urls
        ]

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self._endpoints]

    # -- choosing a URL and waiting ----------------------------------------------------------

    def _backoff(self, attempt: int, at_least: float = 0.0) -> float:
        # Full jitter (AWS's "exponential backoff and jitter"): clients that failed together do
        # not come back together.
        cap = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        return max(at_least, random.uniform(0.0, cap)) if cap > 0 else at_least

    async def _pick(self) -> _Endpoint:
        """The usable URL with the fewest items outstanding; waits when all are backing off."""
        now = time.monotonic()
        usable = [e for e in self._endpoints if e.usable_at <= now]
        if usable:
            return min(usable, key=lambda e: (e.outstanding, e.failures))
        soonest = min(self._endpoints, key=lambda e: e.usable_at)
        await asyncio.sleep(soonest.usable_at - now)
        return soonest

    def _failed(self, endpoint: _Endpoint, wait_s: float = 0.0) -> None:
        endpoint.failures += 1
        delay = self._backoff(endpoint.failures, wait_s)
        endpoint.usable_at = max(endpoint.usable_at, time.monotonic() + delay)

    # -- one chunk -----------------------------------------------------------------------------

    async def _post_stream(
        self, endpoint: _Endpoint, rows: list[dict[str, Any]], positions: list[int]
    ) -> AsyncGenerator[tuple[int, ScoreResult], None]:
        """One request: each result as it comes, with the caller's index of its item."""
        async with endpoint.http.stream(
            "POST", "/v1/score/stream", json={"items": rows}
        ) as response:
            if response.status_code in _RETRY_STATUS:
                await response.aread()
                raise _Retry(
                    f"{endpoint.url}: HTTP {response.status_code}: {_detail(response)}",
                    _retry_after(response),
                )
            if not response.is_success:
                await response.aread()
                raise AssayHTTPError(response.status_code, _detail(response))
            endpoint.failures = 0
            async for line in response.aiter_lines():
                if line.strip():
                    got = IndexedResult.model_validate_json(line)
                    result = ScoreResult.model_validate(got.model_dump(exclude={"index"}))
                    yield positions[got.index], result

    async def _chunk(
        self,
        items: Sequence[ScoreItem],
        rows: list[dict[str, Any]],
        positions: list[int],
        done: set[int],
        out: asyncio.Queue[tuple[int, ScoreResult] | Exception],
    ) -> None:
        """Score the items at `positions` until each has a result, putting each once in `out`."""
        left, attempt, problem = positions, 0, ""
        while left:
            endpoint = await self._pick()  # waits while every URL is backing off
            sent = len(left)
            endpoint.outstanding += sent
            progressed, wait, too_large = False, 0.0, None
            try:
                # aclosing: a cancelled chunk closes its response now, not when collected.
                async with aclosing(
                    self._post_stream(endpoint, [rows[i] for i in left], left)
                ) as lines:
                    async for index, result in lines:
                        if index not in done:  # a result for an item answered before: dropped
                            done.add(index)
                            progressed = True
                            await out.put((index, result))
                problem = f"{endpoint.url}: the stream ended before every result came"
            except _Retry as exc:
                problem, wait = str(exc), exc.wait_s
            except AssayHTTPError as exc:
                if exc.status_code != 413:
                    raise
                too_large = exc
            except httpx.TransportError as exc:
                problem = f"{endpoint.url}: {type(exc).__name__}: {exc}"
            finally:
                endpoint.outstanding -= sent
            left = [i for i in left if i not in done]
            if too_large is not None:  # split in halves, down to the one item that is too large
                if len(left) == 1:
                    done.add(left[0])
                    feedback = f"this item alone is larger than the server takes: {too_large}"
                    await out.put((left[0], unscored(items[left[0]], "unavailable", feedback)))
                    return
                half = len(left) // 2
                await self._chunk(items, rows, left[:half], done, out)
                await self._chunk(items, rows, left[half:], done, out)
                return
            if progressed:
                attempt = 0
            elif left:
                self._failed(endpoint, wait)
                attempt += 1
            if attempt > self.retries:
                break
        for i in left:
            done.add(i)
            feedback = f"not scored after {self.retries + 1} tries: {problem}"
            await out.put((i, unscored(items[i], "internal_error", feedback, retryable=True)))

    # -- the calls -----------------------------------------------------------------------------

    async def stream(
        self, items: Iterable[ItemLike], *, time_limit_s: float | None = None
    ) -> AsyncIterator[tuple[int, ScoreResult]]:
        """`(index, result)` for every item, in the order the results come.

        Items still without a result when `time_limit_s` (default: the client's) runs out get an
        `internal_error` result (`retryable`), so every index comes exactly once.
        """
        batch = [as_item(i) for i in items]
        rows = [i.model_dump(mode="json", exclude_none=True) for i in batch]
        done: set[int] = set()
        out: asyncio.Queue[tuple[int, ScoreResult] | Exception] = asyncio.Queue()
        gate = asyncio.Semaphore(self.concurrency)

        async def chunk(start: int) -> None:
            async with gate:
                try:
                    positions = list(range(start, min(start + self.chunk_size, len(batch))))
                    await self._chunk(batch, rows, positions, done, out)
                except Exception as exc:  # a refused request: raised to the caller, below
                    await out.put(exc)

        tasks = [asyncio.ensure_future(chunk(s)) for s in range(0, len(batch), self.chunk_size)]
        limit = self.time_limit_s if time_limit_s is None else time_limit_s
        deadline = None if limit is None else time.monotonic() + limit
        given: set[int] = set()
        try:
            while len(given) < len(batch):
                left_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    got = await asyncio.wait_for(out.get(), left_s)
                except TimeoutError:
                    break
                if isinstance(got, Exception):
                    raise got
                given.add(got[0])
                yield got
        finally:
            if len(given) < len(batch):  # out of time, or the caller stopped: stop the chunks
                for task in tasks:
                    task.cancel()
            # Else each chunk is ending with its stream: let it, so its connection is reused.
            await asyncio.gather(*tasks, return_exceptions=True)
        while not out.empty():  # results that came while the tasks were being cancelled
            got = out.get_nowait()
            if not isinstance(got, Exception) and got[0] not in given:
                given.add(got[0])
                yield got
        for index in range(len(batch)):
            if index not in given:
                feedback = f"no result within the call's time limit of {limit} s"
                yield index, unscored(batch[index], "internal_error", feedback, retryable=True)

    async def score(
        self, items: Iterable[ItemLike], *, time_limit_s: float | None = None
    ) -> list[ScoreResult]:
        """One result per item, in the items' order."""
        results: dict[int, ScoreResult] = {}
        async for index, result in self.stream(items, time_limit_s=time_limit_s):
            results[index] = result
        return [results[i] for i in range(len(results))]

    async def score_stream(
        self, items: Iterable[ItemLike], *, time_limit_s: float | None = None
    ) -> AsyncIterator[IndexedResult]:
        """Results as they come, each with its item's `index`."""
        async for index, result in self.stream(items, time_limit_s=time_limit_s):
            yield IndexedResult(index=index, **result.model_dump())

    async def _get(self, path: str) -> httpx.Response:
        """A GET from the first URL that answers, with the same retries as a chunk."""
        problem = ""
        for _ in range(self.retries + 1):
            endpoint = await self._pick()
            try:
                response = await endpoint.http.get(path)
            except httpx.TransportError as exc:
                problem = f"{endpoint.url}: {exc}"
                self._failed(endpoint)
                continue
            if response.status_code in _RETRY_STATUS:
                problem = f"{endpoint.url}: HTTP {response.status_code}"
                self._failed(endpoint, _retry_after(response))
                continue
            if not response.is_success:
                raise AssayHTTPError(response.status_code, _detail(response))
            endpoint.failures = 0
            return response
        raise AssayConnectionError(f"after {self.retries + 1} tries: {problem}")

    async def describe(self) -> VerifiersResponse:
        """`GET /v1/verifiers` whole: the verifiers and how the deployment sandboxes jobs."""
        return VerifiersResponse.model_validate_json((await self._get("/v1/verifiers")).content)

    async def verifiers(self) -> list[VerifierInfo]:
        return (await self.describe()).verifiers

    async def aclose(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.http.aclose()

    async def __aenter__(self) -> AsyncAssayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AssayClient:
    """The blocking client: `AsyncAssayClient`'s calls, run on an event loop of its own.

    The loop lives in a daemon thread, so that a synchronous caller (a trainer's reward
    function) still gets concurrent chunks and several URLs; the arguments are the same.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="assay-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncAssayClient:
            return AsyncAssayClient(url, **options)

        self._async = self._run(make())

    @property
    def urls(self) -> list[str]:
        return self._async.urls

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def score(
        self, items: Iterable[ItemLike], *, time_limit_s: float | None = None
    ) -> list[ScoreResult]:
        """One result per item, in the items' order."""
        return self._run(self._async.score(list(items), time_limit_s=time_limit_s))

    def score_stream(
        self, items: Iterable[ItemLike], *, time_limit_s: float | None = None
    ) -> Iterator[IndexedResult]:
        """Results as they come, each with its item's `index`."""
        lines: queue.Queue[IndexedResult | BaseException | None] = queue.Queue()
        batch = list(items)

        async def pump() -> None:
            try:
                async for line in self._async.score_stream(batch, time_limit_s=time_limit_s):
                    lines.put(line)
            except BaseException as exc:
                lines.put(exc)
                raise
            lines.put(None)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (got := lines.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            future.cancel()

    def describe(self) -> VerifiersResponse:
        """`GET /v1/verifiers` whole: the verifiers and how the deployment sandboxes jobs."""
        return self._run(self._async.describe())

    def verifiers(self) -> list[VerifierInfo]:
        return self.describe().verifiers

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> AssayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
