"""The thin HTTP client, sync and async: batches in, results out, retries where they are safe."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import httpx

from assay.clients.schema import (
    AssayError,
    IndexedResult,
    ScoreItem,
    ScoreResponse,
    ScoreResult,
    VerifierInfo,
    VerifiersResponse,
)

DEFAULT_URL = "http://127.0.0.1:8000"
_RETRY_STATUS = {429, 502, 503, 504}


class AssayHTTPError(AssayError):
    """The service answered with an HTTP error (the envelope was refused)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


class AssayConnectionError(AssayError):
    """The service could not be reached, after retries."""


ItemLike = ScoreItem | Mapping[str, Any]


def _body(items: Iterable[ItemLike]) -> dict[str, Any]:
    rows = [
        i.model_dump(mode="json", exclude_none=True)
        if isinstance(i, ScoreItem)
        else ScoreItem.model_validate(i).model_dump(mode="json", exclude_none=True)
        for i in items
    ]
    return {"items": rows}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (json.JSONDecodeError, AttributeError):
        detail = response.text
    raise AssayHTTPError(response.status_code, detail)


def _wait_s(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        after = response.headers.get("retry-after", "")
        if after.isdigit():
            return float(after)
    return min(30.0, 0.5 * 2.0**attempt)


class AssayClient:
    """Blocking client. `retries` covers 429/503 answers and failed connections."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 3600.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.Client(
            base_url=url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise AssayConnectionError(f"{self._http.base_url}: {exc}") from exc
                time.sleep(_wait_s(None, attempt))
                continue
            if response.status_code in _RETRY_STATUS and attempt < self.retries:
                time.sleep(_wait_s(response, attempt))
                continue
            _raise_for(response)
            return response
        raise AssertionError("unreachable")

    def score(self, items: Iterable[ItemLike]) -> list[ScoreResult]:
        """Results in the items' order."""
        response = self._request("POST", "/v1/score", json=_body(items))
        return ScoreResponse.model_validate_json(response.content).results

    def score_stream(self, items: Iterable[ItemLike]) -> Iterator[IndexedResult]:
        """Results as the service finishes them, each with its item's `index`.

        A refused or unconnected request is retried like `score`; once results flow, a broken
        stream raises `AssayConnectionError` (the results already yielded stand).
        """
        body = _body(items)
        for attempt in range(self.retries + 1):
            try:
                with self._http.stream("POST", "/v1/score/stream", json=body) as response:
                    if response.status_code in _RETRY_STATUS and attempt < self.retries:
                        time.sleep(_wait_s(response, attempt))
                        continue
                    if not response.is_success:
                        response.read()
                        _raise_for(response)
                    for line in response.iter_lines():
                        if line.strip():
                            yield IndexedResult.model_validate_json(line)
                    return
            except httpx.ConnectError as exc:  # nothing was sent yet: safe to retry
                if attempt == self.retries:
                    raise AssayConnectionError(f"{self._http.base_url}: {exc}") from exc
                time.sleep(_wait_s(None, attempt))
            except httpx.TransportError as exc:
                raise AssayConnectionError(f"{self._http.base_url}: stream broken: {exc}") from exc

    def verifiers(self) -> list[VerifierInfo]:
        """What the deployment can verify."""
        return self.describe().verifiers

    def describe(self) -> VerifiersResponse:
        """`GET /v1/verifiers` whole: the verifiers and how the deployment sandboxes jobs."""
        response = self._request("GET", "/v1/verifiers")
        return VerifiersResponse.model_validate_json(response.content)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AssayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAssayClient:
    """The same as `AssayClient`, for asyncio code."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 3600.0,
        retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise AssayConnectionError(f"{self._http.base_url}: {exc}") from exc
                await asyncio.sleep(_wait_s(None, attempt))
                continue
            if response.status_code in _RETRY_STATUS and attempt < self.retries:
                await asyncio.sleep(_wait_s(response, attempt))
                continue
            _raise_for(response)
            return response
        raise AssertionError("unreachable")

    async def score(self, items: Iterable[ItemLike]) -> list[ScoreResult]:
        response = await self._request("POST", "/v1/score", json=_body(items))
        return ScoreResponse.model_validate_json(response.content).results

    async def score_stream(self, items: Iterable[ItemLike]) -> AsyncIterator[IndexedResult]:
        """Results as the service finishes them; retries and errors as `AssayClient`'s."""
        body = _body(items)
        for attempt in range(self.retries + 1):
            try:
                async with self._http.stream("POST", "/v1/score/stream", json=body) as response:
                    if response.status_code in _RETRY_STATUS and attempt < self.retries:
                        await asyncio.sleep(_wait_s(response, attempt))
                        continue
                    if not response.is_success:
                        await response.aread()
                        _raise_for(response)
                    async for line in response.aiter_lines():
                        if line.strip():
                            yield IndexedResult.model_validate_json(line)
                    return
            except httpx.ConnectError as exc:  # nothing was sent yet: safe to retry
                if attempt == self.retries:
                    raise AssayConnectionError(f"{self._http.base_url}: {exc}") from exc
                await asyncio.sleep(_wait_s(None, attempt))
            except httpx.TransportError as exc:
                raise AssayConnectionError(f"{self._http.base_url}: stream broken: {exc}") from exc

    async def verifiers(self) -> list[VerifierInfo]:
        return (await self.describe()).verifiers

    async def describe(self) -> VerifiersResponse:
        response = await self._request("GET", "/v1/verifiers")
        return VerifiersResponse.model_validate_json(response.content)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAssayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
