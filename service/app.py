"""The HTTP edge: `create_app(settings)` builds the FastAPI app around one Engine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import math
import signal
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from assay.clients.schema import (
    IndexedResult,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    VerifiersResponse,
)
from assay.sandboxes.base import Sandbox
from assay.sandboxes.local import LocalSandbox
from assay.service.engine import Engine, Observer
from assay.service.metrics import CONTENT_TYPE, Metrics
from assay.service.openapi import add_spec_schemas
from assay.service.settings import Settings
from assay.service.trainers import trainer_router
from assay.verifiers import (
    VERIFIERS,
    CodeVerifier,
    DafnyVerifier,
    SqlVerifier,
    SvgVerifier,
    Verifier,
)
from assay.verifiers.builds import BuildSettings
from assay.verifiers.compile_cache import CompileCache
from assay.verifiers.lean import KiminaBackend, LeanVerifier, ReplBackend

log = logging.getLogger("assay.service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def json_bytes(value: Any) -> bytes:
    """`value` as JSON, always: UTF-8 where the text allows; a string holding a lone surrogate
    (a client may send one in an `id`, as the escape `\\ud800`) comes back escaped the same way
    (all of that document in ASCII), and a non-finite number (an overflowing `1e999` in a 422's
    echo of the input) as its name in a string."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode()
    except UnicodeEncodeError:
        return json_bytes_ascii(value)
    except ValueError:
        return json_bytes_ascii(_finite(value))


def json_bytes_ascii(value: Any) -> bytes:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json_bytes(content)


_ECHO = 1000  # the largest input a 422 shows back


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range for a double")
    return value


def strict_json(body: bytes) -> Any:
    """JSON as RFC 8259 has it: no NaN, Infinity or -Infinity (Python's json takes them), and no
    number that overflows a double; either is a 422 with the reason, not a 500 later on."""
    try:
        return json.loads(body, parse_constant=_not_json, parse_float=_finite_number)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # also: not UTF-8, a 5,000-digit integer
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise json.JSONDecodeError(reason, "", 0) from None


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are read by `strict_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


class ApiKeys:
    """Answers 401 to a `/v1/*` request without a configured key before anything reads its
    body: an unauthenticated 30 MB body had been read and parsed first (the service grew from
    54 MB to 877 MB for a 401)."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            if not header and scope["path"].startswith("/v1/trainers/"):
                # OpenRLHF and slime send no headers: their key may come in the URL.
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                header = f"Bearer {query.get('api_key', [''])[0]}".encode("latin-1")
            scheme, _, key = header.partition(b" ")
            # Every key is compared, whatever matched: the time says nothing of which did.
            matches = [hmac.compare_digest(key.strip(), k) for k in self.keys]
            if scheme.lower() != b"bearer" or not any(matches):
                response = SafeJSONResponse(
                    {"detail": "missing or wrong API key"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Releasing(StreamingResponse):
    """A stream that gives back its admission's reservation when it ends, even if its body
    never started (the client gone before it did)."""

    def __init__(
        self, content: AsyncIterator[bytes], release: Callable[[], None], media_type: str
    ) -> None:
        super().__init__(content, media_type=media_type)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _disconnected(request: Request) -> None:
    """Returns when the client of `request` (whose body was read) has gone away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


def build_sandbox(settings: Settings) -> Sandbox:
    """The sandbox backend that `settings` name."""
    if settings.sandbox == "docker":
        from assay.sandboxes.docker import DockerSandbox

        return DockerSandbox(
            settings.docker_images,
            base_url=settings.docker_host,
            containers_per_image=settings.docker_containers_per_image,
            max_uses=settings.docker_max_uses,
            container_memory_mb=settings.docker_memory_mb,
            container_pids=settings.docker_pids,
            cpus=settings.docker_cpus,
            tool_images=settings.docker_tool_images,
            host_paths=settings.docker_host_paths,
            copy_mb=settings.docker_copy_mb,
        )
    return LocalSandbox(
        isolation="unsandboxed" if settings.sandbox == "unsandboxed" else "bwrap",
        max_jobs=settings.sandbox_jobs,
        uid_base=settings.sandbox_uid_base,
        uid_count=settings.sandbox_uid_count,
        memory_cgroups=settings.sandbox_memory_cgroups,
        warm_python=settings.warm_python_workers,
        warm_max_uses=settings.warm_python_max_uses,
    )


def build_engine(settings: Settings, observer: Observer | None = None) -> Engine:
    """The Engine, its verifiers and sandbox that `settings` describe."""
    sandbox = build_sandbox(settings)
    verifiers: dict[str, Verifier] = {name: v() for name, v in VERIFIERS.items()}
    verifiers["code"] = CodeVerifier(
        compile_cache=CompileCache(settings.compile_cache_mb << 20),
        build=BuildSettings(time_s=settings.build_time_s, memory_mb=settings.build_memory_mb),
    )
    verifiers["lean"] = lean_verifier(settings)
    verifiers["dafny"] = DafnyVerifier(
        settings.dafny_home,
        runtime=settings.dafny_runtime,
        version=settings.dafny_version,
        servers=settings.dafny_servers,
        server_uses=settings.dafny_server_uses,
        memory_mb=settings.dafny_memory_mb,
        use_server=settings.dafny_server,
    )
    verifiers["sql"] = SqlVerifier(
        data_dir=settings.sql_data_dir,
        duckdb=settings.sql_duckdb,
        postgres=settings.sql_postgres,
        postgres_url=settings.sql_postgres_url,
        empty_gold=settings.sql_empty_gold,
        workers=settings.sql_workers,
        worker_memory_mb=settings.sql_worker_memory_mb,
        max_rows=settings.sql_max_rows,
    )
    verifiers["svg"] = SvgVerifier(
        workers=settings.svg_workers,
        memory_mb=settings.svg_worker_memory_mb,
        device=settings.svg_device,
    )
    concurrency = {
        # A Lean item holds a REPL while it runs: more at once than REPLs would only queue.
        "lean": settings.lean_pool_size,
        # svg items mostly wait for a renderer and for their batch's comparison: many at once
        # keep the renderers busy and the batches full.
        "svg": 32 * settings.svg_workers,
        **settings.concurrency,
    }
    return Engine(
        sandbox,
        verifiers=verifiers,
        concurrency=concurrency,
        default_concurrency=settings.default_concurrency,
        cache_entries=settings.cache_entries,
        cache_bytes=settings.cache_bytes,
        max_item_s=settings.max_item_s,
        max_completion_chars=settings.max_completion_chars,
        observer=observer,
    )


def lean_verifier(settings: Settings) -> LeanVerifier:
    """The `lean` verifier that the `lean_*` settings describe."""
    backend: ReplBackend | KiminaBackend
    if settings.lean_backend == "kimina":
        assert settings.lean_kimina_url is not None  # the settings' validator says so
        backend = KiminaBackend(
            settings.lean_kimina_url,
            api_key=settings.lean_kimina_api_key,
            check_timeout_s=settings.lean_check_timeout_s,
            kernel_replay=settings.lean_kernel_replay,
        )
    else:
        backend = ReplBackend(
            command=settings.lean_repl_command,
            project_dir=settings.lean_project_dir,
            ro_paths=settings.lean_paths,
            env=settings.lean_env,
            pool_size=settings.lean_pool_size,
            memory_mb=settings.lean_memory_mb,
            memory_ceiling_mb=settings.lean_memory_ceiling_mb,
            max_proofs=settings.lean_max_proofs,
            start_timeout_s=settings.lean_start_timeout_s,
            check_timeout_s=settings.lean_check_timeout_s,
            kernel_replay=settings.lean_kernel_replay,
        )
    return LeanVerifier(backend, default_header=settings.lean_header)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    engine = engine or build_engine(settings, observer=metrics)
    state = {"draining": False}
    # Items of streams admitted whose bodies have not started yet (the Engine counts a batch
    # from its stream's first step, which comes after the response is returned): counted
    # against the bound as well, or concurrent streams would all pass it.
    reserved = [0]

    drain_tasks: set[asyncio.Task[None]] = set()

    async def drain(exit_now: Callable[[], None]) -> None:
        """Lets the batches in flight finish for up to `drain_s`, then ends the rest with a
        retryable `internal_error` each, waits for their answers to go out, and exits."""
        log.warning(
            "SIGTERM: draining batches of %d items (up to %g s)", engine.in_flight, settings.drain_s
        )
        if not await engine.wait_idle(settings.drain_s):
            log.warning(
                "drain deadline passed: batches of %d items still open; their unjudged items end",
                engine.in_flight,
            )
            engine.abort(
                f"the server shut down before judging this item (drain of {settings.drain_s:g} s "
                "passed); send it again"
            )
            await engine.wait_idle(5.0)  # the answers and streams' last lines go out
        exit_now()

    def take_sigterm() -> None:
        """Puts a drain in front of uvicorn's own SIGTERM handling: uvicorn would close the
        listening socket at once (a new client gets a refused connection, not a 503 with
        Retry-After) and wait for the answers in flight with no deadline."""
        if threading.current_thread() is not threading.main_thread():
            return  # not under `assay serve` (a test's in-process client)
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        loop = asyncio.get_running_loop()

        def exit_now() -> None:
            previous(signal.SIGTERM, None)

        def on_sigterm(signum: int, frame: Any) -> None:
            if state["draining"]:  # a second SIGTERM: exit without waiting
                exit_now()
                return
            state["draining"] = True

            def start() -> None:
                task = asyncio.ensure_future(drain(exit_now))
                drain_tasks.add(task)

            loop.call_soon_threadsafe(start)

        signal.signal(signal.SIGTERM, on_sigterm)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reason = await engine.sandbox.check()
        if reason:
            log.warning("sandbox not ready: %s", reason)
        take_sigterm()
        yield
        state["draining"] = True
        await engine.close()

    app = FastAPI(
        title="assay",
        summary="Sandboxed verifiers for RL with verifiable rewards.",
        version="1",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    app.router.route_class = StrictJSONRoute
    app.state.engine, app.state.settings, app.state.metrics = engine, settings, metrics
    # The last added is the outermost: the key is checked before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeys, keys=settings.api_keys)
    retry = {"Retry-After": str(settings.retry_after_s)}

    @app.exception_handler(RequestValidationError)
    async def invalid_envelope(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own answer, less the echo of large inputs (a 60 MB completion of the wrong
        # type came back whole).
        errors = [
            {k: v for k, v in e.items() if k != "input" or len(repr(v)) <= _ECHO}
            for e in exc.errors()
        ]
        return SafeJSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    def admit(body: ScoreRequest, endpoint: str) -> None:
        n = len(body.items)
        if n > settings.max_items:
            metrics.requests.labels(endpoint, "413").inc()
            raise HTTPException(413, f"{n} items; this server takes at most {settings.max_items}")
        if state["draining"]:
            metrics.requests.labels(endpoint, "503").inc()
            raise HTTPException(503, "the server is shutting down", headers=retry)
        pending = engine.in_flight + reserved[0]
        if pending + n > settings.max_pending_items:
            metrics.requests.labels(endpoint, "429").inc()
            raise HTTPException(
                429,
                f"{pending} items pending; the limit is {settings.max_pending_items}",
                headers=retry,
            )
        metrics.requests.labels(endpoint, "200").inc()

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        summary="Score a batch; results in the items' order.",
    )
    async def score(body: ScoreRequest, request: Request) -> Response:
        admit(body, "score")
        scored = await score_while_connected(body.items, request)
        if scored is None:  # the client went away: its items' work stopped
            return Response(status_code=499)
        results = ScoreResponse(results=scored).model_dump(mode="json")
        return Response(json_bytes(results), media_type="application/json")

    async def score_while_connected(
        items: Sequence[ScoreItem], request: Request
    ) -> list[ScoreResult] | None:
        """The items' results; `None` once the client of `request` has gone away, whose
        items' work is then cancelled (tests/service/test_attack.py)."""
        metrics.in_flight.inc(len(items))
        work = asyncio.ensure_future(engine.score(items))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return None
            return work.result()
        finally:
            gone.cancel()
            work.cancel()
            metrics.in_flight.dec(len(items))

    @app.post(
        "/v1/score/stream",
        summary="Score a batch; NDJSON, one result per line as each finishes, with `index`.",
        responses={200: {"content": {"application/x-ndjson": {}}, "model": IndexedResult}},
    )
    async def score_stream(
        body: ScoreRequest,
        gather_ms: float | None = Query(
            default=None,
            ge=0,
            le=1000,
            description="Results that finish within this many ms of the last line group sent "
            "wait to go in the next (never the batch's last); 0: each line as soon as its "
            "result is ready. Default: `ASSAY_STREAM_GATHER_MS` (20).",
        ),
    ) -> StreamingResponse:
        admit(body, "stream")
        gather_s = (settings.stream_gather_ms if gather_ms is None else gather_ms) / 1000
        n = len(body.items)
        reserved[0] += n
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                reserved[0] -= n

        async def lines() -> AsyncIterator[bytes]:
            metrics.in_flight.inc(n)
            try:
                # The Engine counts the items from the stream's first step, before it first
                # waits: no other request is admitted between the two.
                release()
                async with contextlib.aclosing(engine.stream_ready(body.items, gather_s)) as stream:
                    async for ready in stream:
                        # An `IndexedResult` per line, from the results the engine made.
                        yield b"".join(
                            json_bytes(result.model_dump(mode="json") | {"index": index}) + b"\n"
                            for index, result in ready
                        )
            finally:
                metrics.in_flight.dec(n)

        return _Releasing(lines(), release, media_type="application/x-ndjson")

    app.include_router(trainer_router(admit, score_while_connected, StrictJSONRoute))
    add_spec_schemas(app, {n: v.spec_model for n, v in engine.verifiers.items()})

    @app.get("/v1/verifiers", response_model=VerifiersResponse)
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
        if settings.required_verifiers:
            described = {v.name: v for v in (await engine.describe()).verifiers}
            for name in settings.required_verifiers:
                info = described.get(name)
                if info is None:
                    missing.append(f"{name}: no such verifier")
                elif not info.available:
                    missing.append(f"{name}: {info.reason}")
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
    app = create_app(Settings())
    # What is loaded now (the web framework, the models, the verifiers) lives as long as the
    # process: out of the collector's sight, a full collection does not walk it again (a
    # tenth of the service's CPU per item was the collector, before).
    gc.collect()
    gc.freeze()
    return app


__all__ = ["app_from_env", "build_engine", "build_sandbox", "create_app"]
