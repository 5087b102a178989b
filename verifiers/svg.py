"""The `svg` verifier: an SVG is rendered and its picture compared with the target's.

Image-to-SVG and text-to-SVG RL (RLRF, StarVector, SGP-Bench) reward an SVG by rendering it
and comparing. Here (docs/svg.md has the reasons for each choice):

- Everything the model wrote is parsed and rendered only inside the sandbox, by warm cairosvg
  workers (`svg_render.py`, Debian's python3 importing cairosvg from the venv, bound
  read-only) kept in a `WorkerPool`. Each render has a deadline (the spec's `time_limit_s`)
  after which its worker is killed, and each worker a memory limit: a pathological file costs
  one worker. The canvas is always `size` x `size`, whatever the SVG declares.
- The payload must be one well-formed XML document with an <svg> root (`format_error`, with
  the parser's or renderer's words, if not). Entity declarations, references to anything
  outside the document, scripts and event handlers, <foreignObject>, <image> (any, data: URLs
  included: an embedded raster of the target is the cheapest cheat), animation and, unless
  `allow_text`, text are `forbidden` (reward 0).
- A render of one plain colour (an empty SVG, a background rectangle) scores 0 (`failed`)
  unless the target is one plain colour too.
- The metrics (`svg_metrics.py`) run with torch on batches: items rendered while a batch is
  being compared join the next one. Reference renders are cached (a GRPO group shares one).
- reward = weighted mean of the metrics, minus `length_penalty` x RLRF's length term when the
  reference is SVG text; `passed` when it reaches `pass_threshold`, else `failed`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from assay.clients.schema import SvgSpec
from assay.sandboxes.base import (
    Limits,
    Sandbox,
    ToolProcess,
    ToolSpec,
    exit_status,
    killed_from_outside,
)
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.sandboxes.pool import WorkerPool
from assay.verifiers.base import Status, Verdict, clip

log = logging.getLogger(__name__)

MAX_SVG_BYTES = 1 << 20
"""Longer SVG text is not rendered (`output_limit`)."""
_WORKER_SOURCE = (Path(__file__).parent / "svg_render.py").read_text()
_START_S = 60.0  # a cold worker imports cairosvg from disk


class _WorkerGone(Exception):
    """The worker died or was killed mid-request; it must not be reused."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True, slots=True)
class Render:
    """A worker's answer: pixels (uint8 H x W x 3 tensor) or why there are none."""

    pixels: Any = None
    status: Status | None = None
    reason: str = ""
    ms: float = 0.0


class _Worker:
    """One warm renderer in the sandbox, spoken to in the protocol of `svg_render.py`."""

    def __init__(self, tool: ToolProcess) -> None:
        self.tool = tool

    @classmethod
    async def start(cls, sandbox: Sandbox, spec: ToolSpec) -> _Worker:
        # torch takes a second or two to import: not on the event loop (a no-op after once).
        await asyncio.to_thread(importlib.import_module, "torch")
        tool = await sandbox.spawn(spec)
        worker = cls(tool)
        try:
            async with asyncio.timeout(_START_S):
                line = await tool.stdout.readline()
            if not line.startswith(b'{"ready"'):
                tail = tool.stderr_tail().decode(errors="replace")[-800:]
                raise SandboxError(f"the svg renderer did not start: {tail or 'no output'}")
        except BaseException:
            await tool.close()
            raise
        return worker

    async def render(self, kind: str, data: bytes, size: int, allow_text: bool) -> Render:
        import torch

        header = {"kind": kind, "size": size, "len": len(data), "allow_text": allow_text}
        try:
            self.tool.stdin.write(json.dumps(header).encode() + b"\n" + data)
            await self.tool.stdin.drain()
            line = await self.tool.stdout.readline()
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            answer = json.loads(line)
            if not answer["ok"]:
                if answer["status"] == "memory_limit":  # the worker exits after saying so
                    raise _WorkerGone(Status.MEMORY_LIMIT, answer["reason"])
                return Render(status=Status(answer["status"]), reason=answer["reason"])
            raw = await self.tool.stdout.readexactly(int(answer["len"]))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            # An answer cut short by a death reads as bad JSON: the death is what counts.
            ended = self.tool.stdout.at_eof() or not isinstance(exc, ValueError)
            code = await exit_status(self.tool, 2.0 if ended else 0.0)
            await self.tool.close()
            if self.tool.oom_killed() or b"MemoryError" in self.tool.stderr_tail():
                raise _WorkerGone(Status.MEMORY_LIMIT, "the renderer ran out of memory") from exc
            if killed_from_outside(code):  # not by the SVG: the item is rendered again
                raise _WorkerGone(
                    Status.INTERNAL_ERROR,
                    f"the renderer was killed from outside (exit status {code}) while rendering "
                    "this, twice: not judged; send the item again",
                ) from exc
            raise _WorkerGone(
                Status.RUNTIME_ERROR, f"the renderer crashed on it (exit status {code})"
            ) from exc
        bgra = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(size, size, 4)
        return Render(pixels=bgra[..., [2, 1, 0]].contiguous(), ms=float(answer.get("ms", 0)))

    async def close(self) -> None:
        await self.tool.close()


class _Batcher:
    """Compares (render, target) pairs in batches: pairs that arrive while a batch is being
    compared (in a thread, off the event loop) form the next one."""

    def __init__(self, max_batch: int, device: str | None) -> None:
        self.max_batch = max_batch
        self.device = device
        self._pending: list[tuple[Any, Any, asyncio.Future[dict[str, float]]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.pairs = 0

    async def compare(self, render: Any, target: Any) -> dict[str, float]:
        future: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()
        self._pending.append((render, target, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        import torch

        from assay.verifiers import svg_metrics

        on = svg_metrics.device() if self.device is None else torch.device(self.device)
        while self._pending:
            await asyncio.sleep(0)  # let the items rendered in this tick join
            by_size: dict[tuple[int, ...], list[Any]] = collections.defaultdict(list)
            for entry in self._pending[: self.max_batch]:
                by_size[tuple(entry[0].shape)].append(entry)
            del self._pending[: self.max_batch]
            for group in by_size.values():
                live = [e for e in group if not e[2].done()]
                if not live:
                    continue
                try:
                    scores = await asyncio.to_thread(
                        svg_metrics.compare, [e[0] for e in live], [e[1] for e in live], on
                    )
                except Exception as exc:
                    for e in live:
                        if not e[2].done():
                            e[2].set_exception(exc)
                    continue
                self.batches += 1
                self.pairs += len(live)
                for e, score in zip(live, scores, strict=True):
                    if not e[2].done():
                        e[2].set_result(score)


def _site_packages() -> str:
    """Where cairosvg and its dependencies are installed for the workers to import; found
    without importing anything (this runs on the event loop)."""
    for module in ("torch", "PIL", "defusedxml", "cairocffi"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"no module named {module!r}")
    spec = importlib.util.find_spec("cairosvg")
    if spec is None or spec.origin is None:
        raise ImportError("no module named 'cairosvg'")
    return str(Path(spec.origin).resolve().parent.parent)


def length_term(svg_chars: int, reference_chars: int) -> float:
    """RLRF's efficiency penalty, `((1/L_gt) * max(0, L_pred - L_gt/2))**2`, capped at 1: no
    penalty up to half the reference's length, 1 at 1.5 times it."""
    if reference_chars <= 0:
        return 0.0
    over = max(0.0, svg_chars - reference_chars / 2) / reference_chars
    return min(1.0, over * over)


def png_base64(pixels: Any) -> str:
    """A uint8 (H, W) or (H, W, 3) tensor as a base64 PNG."""
    from PIL import Image

    array = pixels.cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode()


class SvgVerifier:
    """Renders SVG in sandboxed warm cairosvg workers and compares with torch in batches."""

    name: ClassVar[str] = "svg"
    spec_model: ClassVar[type[BaseModel]] = SvgSpec

    def __init__(
        self,
        *,
        workers: int | None = None,
        memory_mb: int = 768,
        max_uses: int = 2000,
        max_batch: int = 32,
        device: str | None = None,
        reference_cache_mb: int = 256,
        site_packages: str | None = None,
    ) -> None:
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.max_uses = max_uses
        self.device = device
        self._site_packages = site_packages
        self._batcher = _Batcher(max_batch, device)
        self._pool: WorkerPool[_Worker] | None = None
        self._pool_sandbox: Sandbox | None = None
        self._references: collections.OrderedDict[tuple[str, str, int], asyncio.Future[Render]]
        self._references = collections.OrderedDict()
        self._reference_bytes = reference_cache_mb << 20
        self._missing: str | None = None
        self._looked = False

    # -- the Verifier protocol -----------------------------------------------------------------

    def fences(self, spec: SvgSpec) -> tuple[str, ...]:
        return ("svg", "xml")

    def deadline_s(self, spec: SvgSpec) -> float:
        # The reference's render, the item's, a batch's comparison, and a cold worker's start.
        return 2 * spec.time_limit_s + _START_S + 30.0

    def _renderer_missing(self) -> str | None:
        if not self._looked:
            self._looked = True
            try:
                self._site_packages = self._site_packages or _site_packages()
            except ImportError as exc:
                self._missing = f"the svg verifier needs assay[svg] installed: {exc}"
        return self._missing

    def check(self, spec: SvgSpec, sandbox: Sandbox) -> str | None:
        return self._renderer_missing() or sandbox.tool_reason("svg")

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "renderer": "cairosvg (in the sandbox, warm workers)",
            "available": self._renderer_missing() is None,
            "metrics": ["pixel", "ssim", "edge"],
            "workers": self.workers,
            "worker_memory_mb": self.memory_mb,
            "batches": self._batcher.batches,
            "pairs_compared": self._batcher.pairs,
        }
        if self._missing is None:
            facts["cairosvg"] = importlib.metadata.version("cairosvg")
            if self.device is not None or "torch" not in sys.modules:
                facts["device"] = self.device or "cuda if torch sees one, else cpu"
            else:  # torch is imported off the event loop by the first renderer's start
                from assay.verifiers import svg_metrics

                facts["device"] = str(svg_metrics.device())
        if self._pool is not None:
            facts["pool"] = self._pool.facts()
        return facts

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    # -- rendering -----------------------------------------------------------------------------

    def _tool_spec(self) -> ToolSpec:
        reason = self._renderer_missing()
        if reason is not None or self._site_packages is None:
            raise SandboxUnavailable(reason or "the svg renderer is not installed")
        return ToolSpec(
            argv=("python3", "-s", "svg_render.py"),
            files={"svg_render.py": _WORKER_SOURCE},
            limits=Limits(memory_mb=self.memory_mb, processes=1, file_mb=8),
            ro_paths=(self._site_packages,),
            env={"PYTHONPATH": self._site_packages},
            tool="svg",  # a container backend's svg image has cairosvg in its own site-packages
        )

    def _pool_for(self, sandbox: Sandbox) -> WorkerPool[_Worker]:
        if self._pool is None or self._pool_sandbox is not sandbox:
            spec = self._tool_spec()

            async def start(key: object) -> _Worker:
                return await _Worker.start(sandbox, spec)

            async def close(worker: _Worker) -> None:
                await worker.close()

            self._pool = WorkerPool(
                start,
                close,
                size=self.workers,
                max_uses=self.max_uses,
                healthy=lambda w: w.tool.returncode is None,
                name="svg",
            )
            self._pool_sandbox = sandbox
        return self._pool

    async def render(
        self, sandbox: Sandbox, kind: str, data: bytes, size: int, allow_text: bool, limit_s: float
    ) -> Render:
        """One render in a warm worker; a worker that overruns `limit_s` or dies is closed."""
        pool = self._pool_for(sandbox)
        for attempt in (1, 2):
            try:
                async with pool.lease() as worker:
                    try:
                        async with asyncio.timeout(limit_s):
                            return await worker.render(kind, data, size, allow_text)
                    except TimeoutError:
                        await worker.close()
                        raise _WorkerGone(
                            Status.TIMEOUT, f"rendering took longer than {limit_s:g} s"
                        ) from None
            except _WorkerGone as gone:
                if gone.status is Status.INTERNAL_ERROR and attempt == 1:
                    log.warning("svg: a renderer was killed mid-render; rendering again")
                    continue
                return Render(status=gone.status, reason=gone.reason)
        raise AssertionError("unreachable")

    async def _reference(self, spec: SvgSpec, sandbox: Sandbox) -> Render:
        if spec.reference_svg is not None:
            kind, data = "svg", spec.reference_svg.encode()
        else:
            assert spec.reference_png is not None
            kind, data = "png", base64.b64decode(spec.reference_png)
        key = (kind, hashlib.sha256(data).hexdigest(), spec.size)
        future = self._references.get(key)
        if future is not None:
            self._references.move_to_end(key)
            return await asyncio.shield(future)
        task = asyncio.ensure_future(
            self.render(sandbox, kind, data, spec.size, True, spec.time_limit_s)
        )
        self._references[key] = task
        # Bounded in bytes (an RGB render of `size` squared each), the oldest out first.
        while len(self._references) > 1 and self._cached_bytes() > self._reference_bytes:
            self._references.popitem(last=False)
        try:
            result = await asyncio.shield(task)
        except BaseException:
            if self._references.get(key) is task and task.done():
                del self._references[key]
            raise
        if result.status in (
            Status.TIMEOUT,
            Status.MEMORY_LIMIT,
            Status.RUNTIME_ERROR,
            Status.INTERNAL_ERROR,
        ):
            self._references.pop(key, None)  # may be the machine's load; try again next time
        return result

    def _cached_bytes(self) -> int:
        return sum(3 * size * size for (_, _, size) in self._references)

    # -- judging -------------------------------------------------------------------------------

    async def verify(self, payload: str, spec: SvgSpec, sandbox: Sandbox) -> Verdict:
        data = payload.strip().encode()
        if len(data) > MAX_SVG_BYTES:
            return Verdict(
                Status.OUTPUT_LIMIT,
                0.0,
                f"the SVG is {len(data)} bytes; at most {MAX_SVG_BYTES} are rendered",
            )
        if not data:
            return Verdict(Status.FORMAT_ERROR, 0.0, "the payload is empty, not an SVG document")
        reference, render = await asyncio.gather(
            self._reference(spec, sandbox),
            self.render(sandbox, "svg", data, spec.size, spec.allow_text, spec.time_limit_s),
        )
        if reference.pixels is None:
            which = "reference_svg" if spec.reference_svg is not None else "reference_png"
            if reference.status in (Status.FORMAT_ERROR, Status.FORBIDDEN):
                return Verdict.unjudged(Status.INVALID_SPEC, f"{which}: {reference.reason}")
            return Verdict.unjudged(
                Status.INTERNAL_ERROR,
                f"{which} could not be rendered: {reference.reason}",
                retryable=True,
            )
        if render.pixels is None:
            assert render.status is not None
            if render.status is Status.INTERNAL_ERROR:
                return Verdict.unjudged(render.status, render.reason, retryable=True)
            return Verdict(render.status, 0.0, clip(render.reason))
        scores = await self._batcher.compare(render.pixels, reference.pixels)
        return await self._verdict(payload, spec, render, reference, scores)

    async def _verdict(
        self,
        payload: str,
        spec: SvgSpec,
        render: Render,
        reference: Render,
        scores: dict[str, float],
    ) -> Verdict:
        total = sum(spec.weights.values())
        similarity = sum(w * scores[m] for m, w in spec.weights.items()) / total
        details: dict[str, Any] = {
            "pixel": round(scores["pixel"], 6),
            "ssim": round(scores["ssim"], 6),
            "edge": round(scores["edge"], 6),
            "ssim_raw": round(scores["ssim_raw"], 6),
            "weights": dict(spec.weights),
            "similarity": round(similarity, 6),
            "size": spec.size,
            "render_ms": render.ms,
        }
        flat = bool(scores["flat"])
        reference_flat = bool(scores["flat_target"])
        reward = similarity
        if spec.reference_svg is not None:
            penalty = length_term(len(payload.strip()), len(spec.reference_svg.strip()))
            details["length"] = {
                "chars": len(payload.strip()),
                "reference_chars": len(spec.reference_svg.strip()),
                "penalty": round(penalty, 6),
                "weight": spec.length_penalty,
            }
            reward -= spec.length_penalty * penalty
        if flat and not reference_flat:
            details["plain"] = True
            reward = 0.0
        reward = min(1.0, max(0.0, reward))
        if spec.return_images:
            from assay.verifiers import svg_metrics

            rendered, target, difference = await asyncio.to_thread(
                lambda: (
                    png_base64(render.pixels),
                    png_base64(reference.pixels),
                    png_base64(svg_metrics.difference(render.pixels, reference.pixels)),
                )
            )
            details["images"] = {"render": rendered, "reference": target, "diff": difference}
        shown = ", ".join(f"{m} {scores[m]:.3f}" for m in ("pixel", "ssim", "edge"))
        if details.get("plain"):
            return Verdict(
                Status.FAILED,
                0.0,
                "the render is one plain colour (empty or a background)",
                details,
            )
        status = Status.PASSED if reward >= spec.pass_threshold else Status.FAILED
        return Verdict(status, reward, f"similarity {similarity:.3f} ({shown})", details)


__all__ = ["MAX_SVG_BYTES", "Render", "SvgVerifier", "length_term", "png_base64"]
