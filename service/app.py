"""The HTTP edge: `create_app(settings)` builds the FastAPI app around one Engine."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from assay.clients.schema import (
    IndexedResult,
    ScoreRequest,
    ScoreResponse,
    VerifiersResponse,
)
from assay.sandboxes.local import LocalSandbox
from assay.service.engine import Engine, Observer
from assay.service.metrics import CONTENT_TYPE, Metrics
from assay.service.openapi import add_spec_schemas
from assay.service.settings import Settings
from assay.service.trainers import trainer_router

log = logging.getLogger("assay.service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """Answers 413 to a request body over `max_bytes`, declared or streamed, before parsing.

    It also reads every POST body as JSON whatever its declared type, so that a plain
    `curl -d '{...}'` (which says form-urlencoded) works instead of failing obscurely.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnected; let the app see it
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes"
        response = JSONResponse({"detail": detail}, status_code=413)
        await response(scope, receive, send)


def build_engine(settings: Settings, observer: Observer | None = None) -> Engine:
    """The Engine and sandbox that `settings` describe."""
    sandbox = LocalSandbox(
        isolation="unsandboxed" if settings.sandbox == "unsandboxed" else "bwrap",
        max_jobs=settings.sandbox_jobs,
        uid_base=settings.sandbox_uid_base,
        uid_count=settings.sandbox_uid_count,
        memory_cgroups=settings.sandbox_memory_cgroups,
    )
    return Engine(
        sandbox,
        concurrency=settings.concurrency,
        default_concurrency=settings.default_concurrency,
        cache_entries=settings.cache_entries,
        max_item_s=settings.max_item_s,
        observer=observer,
    )


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    engine = engine or build_engine(settings, observer=metrics)
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reason = await engine.sandbox.check()
        if reason:
            log.warning("sandbox not ready: %s", reason)
        yield
        state["draining"] = True
        await engine.close()

    app = FastAPI(
        title="assay",
        summary="Sandboxed verifiers for RL with verifiable rewards.",
        version="1",
        lifespan=lifespan,
    )
    app.state.engine, app.state.settings, app.state.metrics = engine, settings, metrics
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    retry = {"Retry-After": str(settings.retry_after_s)}

    def authorize(request: Request) -> None:
        if not settings.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        ok = scheme.lower() == "bearer" and any(
            hmac.compare_digest(key.strip().encode(), k.encode()) for k in settings.api_keys
        )
        if not ok:
            raise HTTPException(
                401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
            )

    def admit(body: ScoreRequest, endpoint: str) -> None:
        n = len(body.items)
        if n > settings.max_items:
            metrics.requests.labels(endpoint, "413").inc()
            raise HTTPException(413, f"{n} items; this server takes at most {settings.max_items}")
        if state["draining"]:
            metrics.requests.labels(endpoint, "503").inc()
            raise HTTPException(503, "the server is shutting down", headers=retry)
        if engine.in_flight + n > settings.max_pending_items:
            metrics.requests.labels(endpoint, "429").inc()
            raise HTTPException(
                429,
                f"{engine.in_flight} items pending; the limit is {settings.max_pending_items}",
                headers=retry,
            )
        metrics.requests.labels(endpoint, "200").inc()

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        dependencies=[Depends(authorize)],
        summary="Score a batch; results in the items' order.",
    )
    async def score(body: ScoreRequest) -> ScoreResponse:
        admit(body, "score")
        metrics.in_flight.inc(len(body.items))
        try:
            return ScoreResponse(results=await engine.score(body.items))
        finally:
            metrics.in_flight.dec(len(body.items))

    @app.post(
        "/v1/score/stream",
        dependencies=[Depends(authorize)],
        summary="Score a batch; NDJSON, one result per line as each finishes, with `index`.",
        responses={200: {"content": {"application/x-ndjson": {}}, "model": IndexedResult}},
    )
    async def score_stream(body: ScoreRequest) -> StreamingResponse:
        admit(body, "stream")

        async def lines() -> AsyncIterator[bytes]:
            metrics.in_flight.inc(len(body.items))
            try:
                async for index, result in engine.stream(body.items):
                    line = IndexedResult(index=index, **result.model_dump())
                    yield line.model_dump_json().encode() + b"\n"
            finally:
                metrics.in_flight.dec(len(body.items))

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    app.include_router(trainer_router(engine, authorize, admit))
    add_spec_schemas(app, {n: v.spec_model for n, v in engine.verifiers.items()})

    @app.get("/v1/verifiers", response_model=VerifiersResponse, dependencies=[Depends(authorize)])
    async def verifiers() -> VerifiersResponse:
        return await engine.describe()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        missing = []
        if state["draining"]:
            missing.append("the server is shutting down")
        reason = await engine.sandbox.check()
        if reason:
            missing.append(f"sandbox: {reason}")
        if missing:
            return JSONResponse({"ready": False, "missing": missing}, 503, headers=retry)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def app_from_env() -> FastAPI:
    """The factory `assay serve` hands to uvicorn: settings from `ASSAY_*` variables."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app(Settings())


__all__ = ["app_from_env", "build_engine", "create_app"]
