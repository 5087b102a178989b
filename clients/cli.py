"""The `assay` command: serve, score JSONL files, list verifiers."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from assay.clients.client import (
    AssayClient,
    AssayConnectionError,
    AssayHTTPError,
    AsyncAssayClient,
)
from assay.clients.progress import Progress
from assay.clients.schema import (
    AssayError,
    ScoreItem,
    ScoreResult,
    Status,
    VerifiersResponse,
)
from assay.clients.svg_report import SvgReport

SERVER_EXTRA = "this needs the server's dependencies: pip install 'assay[server]'"


def _need_server() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"assay: {SERVER_EXTRA} ({exc.name} is missing)") from exc


# -- reading the input ---------------------------------------------------------------------


def read_items(lines: Sequence[str]) -> list[ScoreItem | ScoreResult]:
    """Each non-blank line as an item, or as a ready result saying what is wrong with it."""
    out: list[ScoreItem | ScoreResult] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(_bad_line(number, None, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(raw, dict):
            out.append(_bad_line(number, None, "not a JSON object"))
            continue
        try:
            out.append(ScoreItem.model_validate(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
            )
            ident = raw.get("id") if isinstance(raw.get("id"), str | int) else None
            out.append(_bad_line(number, ident, problems))
    return out


def _bad_line(number: int, ident: str | int | None, problem: str) -> ScoreResult:
    return ScoreResult(
        id=ident,
        reward=None,
        status="invalid_spec",
        feedback=f"input line {number}: {problem}",
        details={"line": number},
    )


# -- scoring -------------------------------------------------------------------------------


async def _local_results(
    items: list[ScoreItem], concurrency: int | None
) -> AsyncIterator[tuple[int, ScoreResult]]:
    from assay.service.app import build_engine
    from assay.service.settings import Settings

    overrides: dict[str, Any] = {}
    if concurrency:
        overrides = {"default_concurrency": concurrency, "sandbox_jobs": concurrency}
    engine = build_engine(Settings(**overrides))
    reason = await engine.sandbox.check()
    if reason:
        print(f"assay: warning: {reason}", file=sys.stderr)
    try:
        async for pair in engine.stream(items):
            yield pair
    finally:
        await engine.close()


# HTTP answers that every further request would get too: the run stops instead of going on.
_FATAL_STATUS = {401, 403, 404, 405, 422}


def _unscored(item: ScoreItem, status: Status, feedback: str, **details: Any) -> ScoreResult:
    """The result of an item that the server never judged, made here."""
    return ScoreResult(id=item.id, reward=None, status=status, feedback=feedback, details=details)


async def _remote_results(
    items: list[ScoreItem],
    url: str,
    api_key: str | None,
    concurrency: int,
    batch_size: int,
    retries: int = 5,
) -> AsyncIterator[tuple[int, ScoreResult]]:
    """Results from a server, batch by batch, every item accounted for.

    A batch the server finds too large (413) is split in halves; a broken stream or a server
    that stops answering is retried for the items still missing; items that still get no answer
    get `internal_error` (`retryable`) results, so that the output has a line for every input.
    Only answers that every request would get (401, 404, ...) stop the run.
    """
    queue: asyncio.Queue[tuple[int, ScoreResult] | BaseException] = asyncio.Queue()
    gate = asyncio.Semaphore(concurrency)

    async with AsyncAssayClient(url, api_key=api_key, retries=retries) as client:
        # One call first: a wrong URL or API key stops the run here, with one clear message.
        await client.verifiers()

        async def send(indexes: list[int]) -> None:
            left = indexes
            problem = ""
            for attempt in range(retries + 1):
                if attempt:
                    await asyncio.sleep(min(30.0, 0.5 * 2.0**attempt))
                seen: set[int] = set()
                try:
                    async for line in client.score_stream([items[i] for i in left]):
                        index = left[line.index]
                        seen.add(index)
                        result = ScoreResult.model_validate(line.model_dump(exclude={"index"}))
                        await queue.put((index, result))
                    problem = "the server's stream ended before every result came"
                except AssayHTTPError as exc:
                    if exc.status_code in _FATAL_STATUS:
                        raise
                    if exc.status_code == 413:
                        if len(left) > 1:
                            half = len(left) // 2
                            await send(left[:half])
                            await send(left[half:])
                        else:
                            feedback = f"this item alone is larger than the server takes: {exc}"
                            await queue.put(
                                (left[0], _unscored(items[left[0]], "unavailable", feedback))
                            )
                        return
                    problem = str(exc)
                except AssayConnectionError as exc:
                    problem = str(exc)
                left = [i for i in left if i not in seen]
                if not left:
                    return
            for index in left:
                feedback = f"not scored: {url} failed after {retries + 1} tries: {problem}"
                result = _unscored(items[index], "internal_error", feedback[:2000], retryable=True)
                await queue.put((index, result))

        async def batch(start: int) -> None:
            async with gate:
                try:
                    await send(list(range(start, min(start + batch_size, len(items)))))
                except BaseException as exc:
                    await queue.put(exc)

        tasks = [asyncio.ensure_future(batch(s)) for s in range(0, len(items), batch_size)]
        try:
            for _ in range(len(items)):
                got = await queue.get()
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def score_file(
    source: TextIO,
    sink: TextIO,
    *,
    url: str | None,
    api_key: str | None,
    concurrency: int | None,
    batch_size: int,
    retries: int = 5,
    progress: Progress | None = None,
    report: SvgReport | None = None,
) -> Progress:
    """Score every line of `source` into `sink`, in order, writing each result as soon as every
    result before it is written (an interrupted run leaves a valid prefix)."""
    rows = read_items(source.read().splitlines())
    progress = progress or Progress(len(rows))
    progress.total = len(rows)
    for row in rows:
        if isinstance(row, ScoreResult):
            print(f"assay: {row.feedback}", file=sys.stderr)
    positions = [i for i, row in enumerate(rows) if isinstance(row, ScoreItem)]
    items = [row for row in rows if isinstance(row, ScoreItem)]
    if report is not None:
        items = [report.prepare(i, item) for i, item in enumerate(items)]
    done: dict[int, ScoreResult] = {
        i: row for i, row in enumerate(rows) if isinstance(row, ScoreResult)
    }
    progress.input_errors = len(done)
    for result in done.values():
        progress.update(result.status, result.reward)
    next_out = 0

    def flush() -> None:
        nonlocal next_out
        while next_out in done:
            sink.write(done.pop(next_out).model_dump_json() + "\n")
            next_out += 1
        sink.flush()

    flush()
    if url:
        results = _remote_results(items, url, api_key, concurrency or 4, batch_size, retries)
    else:
        results = _local_results(items, concurrency)
    async for index, result in results:
        if report is not None:
            result = report.take(index, items[index], result)
        done[positions[index]] = result
        progress.update(result.status, result.reward, result.cached)
        flush()
    return progress


# -- the command ---------------------------------------------------------------------------


def _cmd_score(args: argparse.Namespace) -> int:
    if not args.url:
        _need_server()
    out_path = Path(args.output) if args.output and args.output != "-" else None
    try:
        source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"assay: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        sink = open(out_path, "w", encoding="utf-8") if out_path else sys.stdout  # noqa: SIM115
    except OSError as exc:
        print(f"assay: cannot write {out_path}: {exc.strerror}", file=sys.stderr)
        source.close()
        return 2
    progress = Progress(0, enabled=not args.quiet)
    report = SvgReport(Path(args.report)) if args.report else None
    try:
        asyncio.run(
            score_file(
                source,
                sink,
                url=args.url,
                api_key=args.api_key,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                retries=args.retries,
                progress=progress,
                report=report,
            )
        )
        if report is not None:
            report.write()
    except AssayError as exc:
        print(f"\nassay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nassay: interrupted; {progress.done} results written", file=sys.stderr)
        return 130
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    print(progress.summary(), file=sys.stderr)
    failed = progress.statuses["internal_error"]
    if progress.input_errors:
        print(
            f"assay: {progress.input_errors} input lines could not be read; their results say why",
            file=sys.stderr,
        )
    if failed:
        print(
            f"assay: {failed} items got internal_error (the service failed on them); "
            "scoring them again may help",
            file=sys.stderr,
        )
    return 1 if progress.input_errors or failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    _need_server()
    import uvicorn

    uvicorn.run(
        "assay.service.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


def _cmd_verifiers(args: argparse.Namespace) -> int:
    if args.url:
        with AssayClient(args.url, api_key=args.api_key) as client:
            listing = client.describe()
    else:
        _need_server()
        from assay.service.app import build_engine
        from assay.service.settings import Settings

        engine = build_engine(Settings())

        async def describe() -> VerifiersResponse:
            await engine.sandbox.check()
            try:
                return await engine.describe()
            finally:
                await engine.close()

        listing = asyncio.run(describe())
    if args.json:
        print(listing.model_dump_json(indent=2))
        return 0
    for verifier in listing.verifiers:
        state = "available" if verifier.available else f"unavailable: {verifier.reason}"
        print(f"{verifier.name}: {state}")
        for name, lang in verifier.facts.get("languages", {}).items():
            if lang["available"]:
                mark = f"yes ({lang['version']})" if lang.get("version") else "yes"
            else:
                mark = "no: " + str(lang.get("reason") or "needs " + ", ".join(lang["tools"]))
            print(f"  {name}: {mark}")
        for engine, info in verifier.facts.get("engines", {}).items():  # sql
            names = verifier.facts.get("databases", {}).get(engine, [])
            mark = "yes" if info.get("available") else f"no ({info.get('reason', '')})"
            shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
            print(f"  {engine}: {mark}; databases: {shown or 'none'}")
    box = listing.sandbox
    if box:
        cap = (
            "yes"
            if box.get("memory_cgroup_per_job")
            else f"no ({box.get('memory_cgroup_reason', 'unknown')})"
        )
        print(f"sandbox: {box.get('backend')} ({box.get('isolation')}); per-job memory cap: {cap}")
    return 0


def _report_path(text: str) -> str:
    if Path(text).suffix.lower() not in (".html", ".htm", ".png"):
        raise argparse.ArgumentTypeError("give a .html or a .png file")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assay", description="Sandboxed verifiers and rewards for RL with verifiable rewards."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the reward service (settings: ASSAY_* variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_cmd_serve)

    score = sub.add_parser("score", help="score a JSONL file of items into a JSONL of results")
    score.add_argument("input", help="JSONL file of request items ('-' for stdin)")
    score.add_argument("-o", "--output", help="JSONL file for the results (default stdout)")
    score.add_argument("--url", help="score through this server instead of in-process")
    score.add_argument("--api-key", default=os.environ.get("ASSAY_CLIENT_API_KEY"))
    score.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="in-process: items judged at once (default 2 × cores); "
        "with --url: requests in flight (default 4)",
    )
    score.add_argument("--batch-size", type=int, default=256, help="items per request (--url)")
    score.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries of a request refused with 429/503 or not connected (--url)",
    )
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    score.add_argument(
        "--report",
        type=_report_path,
        help="also write svg items' target, render, difference and reward, for a person to "
        "look at: an HTML page (.html) or a PNG contact sheet (.png, needs assay[svg])",
    )
    score.set_defaults(func=_cmd_score)

    verifiers = sub.add_parser("verifiers", help="what this deployment can verify")
    verifiers.add_argument("--url", help="ask this server instead of looking here")
    verifiers.add_argument("--api-key", default=os.environ.get("ASSAY_CLIENT_API_KEY"))
    verifiers.add_argument("--json", action="store_true")
    verifiers.set_defaults(func=_cmd_verifiers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
