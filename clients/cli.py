"""The `assay` command: serve, score files of items (JSONL, Parquet, `datasets`), list verifiers."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from assay.clients.client import AssayClient, AsyncAssayClient
from assay.clients.progress import Display, Tally, Threshold
from assay.clients.schema import AssayError, ScoreItem, ScoreResult, VerifiersResponse
from assay.clients.sources import Columns, Source, open_source
from assay.clients.svg_report import SvgReport

SERVER_EXTRA = "this needs the server's dependencies: pip install 'assay[server]'"


def _need_server() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"assay: {SERVER_EXTRA} ({exc.name} is missing)") from exc


# -- scoring ---------------------------------------------------------------------------------

Scorer = Callable[[list[ScoreItem]], AsyncIterator[tuple[int, ScoreResult]]]


@asynccontextmanager
async def local_scorer(concurrency: int | None) -> AsyncIterator[Scorer]:
    """Items judged in this process, by the Engine `assay serve` would use."""
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
        yield engine.stream
    finally:
        await engine.close()


@asynccontextmanager
async def remote_scorer(
    urls: list[str], api_key: str | None, batch_size: int, retries: int
) -> AsyncIterator[Scorer]:
    """Items judged by servers, through the client (413 split, retries, dead URLs skipped)."""
    async with AsyncAssayClient(
        urls, api_key=api_key, retries=retries, chunk_size=batch_size, concurrency=1
    ) as client:
        # One call first: a wrong URL or API key stops the run here, with one clear message.
        await client.verifiers()
        yield client.stream


async def score_source(
    source: Source,
    sink: TextIO,
    scorer: Scorer,
    *,
    batch_size: int,
    concurrency: int,
    tally: Tally | None = None,
    display: Display | None = None,
    report: SvgReport | None = None,
) -> Tally:
    """Score every row of `source` into `sink`, in order, writing each result as soon as every
    result before it is written (an interrupted run leaves a valid prefix).

    Rows are read a batch at a time (in a thread), `concurrency` batches are scored at once,
    and at most a window of rows is held between reading and writing: memory stays flat
    whatever the input's size.
    """
    tally = tally or Tally()
    display = display or Display(None, enabled=False)
    window = max(4 * batch_size * concurrency, 1024)
    done: dict[int, tuple[str, ScoreResult, bool]] = {}
    written = read = 0
    room = asyncio.Condition()
    gate = asyncio.Semaphore(concurrency)
    failures: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()

    async def flush() -> None:
        nonlocal written
        before = written
        while written in done:
            verifier, result, bad = done.pop(written)
            sink.write(result.model_dump_json() + "\n")
            tally.add(verifier, result, input_error=bad)
            display.advance()
            written += 1
        if written != before:
            sink.flush()
            async with room:
                room.notify_all()

    async def run(items: list[ScoreItem], positions: list[int]) -> None:
        try:
            async for index, result in scorer(items):
                if report is not None:
                    result = report.take(positions[index], items[index], result)
                done[positions[index]] = (items[index].verifier, result, False)
                await flush()
        except BaseException as exc:
            failures.append(exc)
        finally:
            gate.release()

    def has_room() -> bool:  # rows read and not yet written stay under the window
        return read - written < window or bool(failures)

    def take() -> list[ScoreItem | ScoreResult]:
        return list(itertools.islice(source.rows, batch_size))

    try:
        while not failures:
            async with room:
                await room.wait_for(has_room)
            await gate.acquire()
            rows = await asyncio.to_thread(take)
            if not rows:
                gate.release()
                break
            items, positions = [], []
            for row in rows:
                if isinstance(row, ScoreResult):
                    print(f"assay: {row.feedback}", file=sys.stderr)
                    done[read] = ("(unreadable)", row, True)
                else:
                    items.append(report.prepare(read, row) if report is not None else row)
                    positions.append(read)
                read += 1
            if items:
                task = asyncio.ensure_future(run(items, positions))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                gate.release()
            await flush()
        await asyncio.gather(*tasks)
        if failures:
            raise failures[0]
        await flush()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tally


# -- the command ---------------------------------------------------------------------------


def _cmd_score(args: argparse.Namespace) -> int:
    if not args.url:
        _need_server()
    try:
        thresholds = [Threshold.parse(t) for t in args.fail_on]
        columns = Columns.parse(args.column, args.verifier)
        source = open_source(args.input, columns, args.split)
    except AssayError as exc:
        print(f"assay: {exc}", file=sys.stderr)
        return 2
    out_path = Path(args.output) if args.output and args.output != "-" else None
    try:
        sink = open(out_path, "w", encoding="utf-8") if out_path else sys.stdout  # noqa: SIM115
    except OSError as exc:
        print(f"assay: cannot write {out_path}: {exc.strerror}", file=sys.stderr)
        source.close()
        return 2
    tally = Tally()
    display = Display(source.total, enabled=not args.quiet)
    report = SvgReport(Path(args.report)) if args.report else None

    async def main() -> None:
        scorer = (
            remote_scorer(args.url, args.api_key, args.batch_size, args.retries)
            if args.url
            else local_scorer(args.concurrency)
        )
        async with scorer as score:
            await score_source(
                source,
                sink,
                score,
                batch_size=args.batch_size,
                concurrency=args.concurrency or 4,
                tally=tally,
                display=display,
                report=report,
            )

    try:
        asyncio.run(main())
    except AssayError as exc:
        display.close()
        print(f"\nassay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        display.close()
        print(f"\nassay: interrupted; {tally.done} results written", file=sys.stderr)
        return 130
    finally:
        display.close()
        source.close()
        if sink is not sys.stdout:
            sink.close()
    if report is not None:
        report.write()
    display.summary(tally)
    crossed = [t.text for t in thresholds if t.crossed(tally.metrics())]
    failed = tally.statuses["internal_error"]
    if tally.input_errors:
        print(
            f"assay: {tally.input_errors} input rows could not be read; their results say why",
            file=sys.stderr,
        )
    if failed:
        print(
            f"assay: {failed} items got internal_error (the service failed on them); "
            "scoring them again may help",
            file=sys.stderr,
        )
    if crossed:
        print(f"assay: --fail-on crossed: {', '.join(crossed)}", file=sys.stderr)
        return 3
    return 1 if tally.input_errors or failed else 0


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

    score = sub.add_parser(
        "score",
        help="score a file of items (JSONL, Parquet, a datasets folder) into JSONL results",
        description="Score every row of INPUT; results come out one per line in the same order. "
        "Rows are items (API.md) unless --column maps other column names, e.g. stored "
        "rollouts: --column completion=response --column label=ground_truth.",
    )
    score.add_argument(
        "input", help="JSONL file ('-' for stdin), .parquet file, or a datasets save_to_disk folder"
    )
    score.add_argument("-o", "--output", help="JSONL file for the results (default stdout)")
    score.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="take an item field (id, verifier, completion, spec, extract, label) from this "
        "column; a label column holds {verifier, spec, extract} as one JSON object",
    )
    score.add_argument("--verifier", help="the verifier of every row")
    score.add_argument("--split", help="the split of a datasets folder with several")
    score.add_argument(
        "--url",
        action="append",
        help="score through this server instead of in-process (repeat for several: the work "
        "is shared among them)",
    )
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
    score.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC<N",
        help="exit 3 when the run crosses this threshold: a status (count) or <status>_rate, "
        "pass_rate, unjudged, unjudged_rate, mean_reward, input_errors; e.g. "
        "'internal_error>0', 'pass_rate<0.5', 'unjudged_rate>1%%'",
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
