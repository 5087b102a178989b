"""The Engine over the real bwrap sandbox: dedupe, cache, limits, deadlines, isolation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from assay.clients.schema import ScoreItem, SpecModel
from assay.sandboxes import Job, LocalSandbox, MultiJob, RunResult, Sandbox, StepResult
from assay.service.engine import Engine
from assay.verifiers import CodeVerifier, Status, Verdict
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

SUM_SPEC = {"language": "python", "tests": [{"stdin": "1 2\n", "expected_stdout": "3\n"}]}


class CountingSandbox:
    """The real sandbox, counting the jobs (one-run or multi-run) it runs and how many ran at
    once."""

    def __init__(self, inner: LocalSandbox) -> None:
        self.inner, self.name = inner, inner.name
        self.runs = self.running = self.most_at_once = 0

    async def run(self, job: Job) -> RunResult:
        self.runs += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            return await self.inner.run(job)
        finally:
            self.running -= 1

    async def run_many(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        self.runs += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            async with contextlib.aclosing(self.inner.run_many(job)) as steps:
                async for step in steps:
                    yield step
        finally:
            self.running -= 1

    def unavailable_reason(self) -> str | None:
        return self.inner.unavailable_reason()

    def has_tool(self, tool: str) -> bool:
        return self.inner.has_tool(tool)

    def tool_reason(self, tool: str) -> str | None:
        return self.inner.tool_reason(tool)

    def facts(self) -> dict[str, Any]:
        return self.inner.facts()

    async def check(self) -> str | None:
        return await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()


class EmptySpec(SpecModel):
    pass


class ExplodingVerifier:
    """Raises inside verify: the engine must turn that into this item's internal_error."""

    name: ClassVar[str] = "explodes"
    spec_model: ClassVar[type[BaseModel]] = EmptySpec

    def fences(self, spec: Any) -> tuple[str, ...]:
        return ()

    def deadline_s(self, spec: Any) -> float:
        return 5.0

    def check(self, spec: Any, sandbox: Sandbox) -> str | None:
        return None

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        return {}

    async def verify(self, payload: str, spec: Any, sandbox: Sandbox) -> Verdict:
        raise RuntimeError(f"boom on {payload}")


@pytest.fixture
def sandbox(tmp_path: Path) -> CountingSandbox:
    return CountingSandbox(LocalSandbox(lock_dir=tmp_path))


def make_engine(sandbox: CountingSandbox, **kwargs: Any) -> Engine:
    verifiers = {"code": CodeVerifier(), "explodes": ExplodingVerifier()}
    return Engine(sandbox, verifiers=verifiers, **kwargs)  # type: ignore[arg-type]


def code_item(completion: str, id: str | None = None, **spec: Any) -> ScoreItem:
    return ScoreItem(id=id, verifier="code", completion=completion, spec={**SUM_SPEC, **spec})


async def test_identical_items_run_once_and_repeats_hit_the_cache(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox)
    right = "```python\nprint(3)\n```"
    items = [
        code_item(right, "a"),
        code_item("print(4)", "b"),
        code_item(right, "c"),
        # the same payload in other words is the same key
        code_item("I think:\n```python\nprint(3)\n```\ndone", "d"),
    ]
    results = await engine.score(items)
    assert [r.id for r in results] == ["a", "b", "c", "d"]
    assert [r.status for r in results] == ["passed", "failed", "passed", "passed"]
    assert sum(r.cached for r in results) == 2
    assert sandbox.runs == 2
    again = await engine.score([code_item("print(4)", "e")])
    assert again[0].cached
    assert again[0].status == "failed"
    assert again[0].id == "e"
    assert sandbox.runs == 2


async def test_different_specs_are_different_keys(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox)
    results = await engine.score([code_item("print(3)"), code_item("print(3)", time_limit_s=2)])
    assert not any(r.cached for r in results)
    assert sandbox.runs == 2


async def test_cache_is_bounded(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox, cache_entries=1)
    await engine.score([code_item("print(3)")])
    await engine.score([code_item("print(4)")])
    third = await engine.score([code_item("print(3)")])
    assert not third[0].cached
    assert sandbox.runs == 3


async def test_timeouts_are_not_cached(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox)
    slow = code_item("import time\ntime.sleep(9)", time_limit_s=0.3)
    first, second = await engine.score([slow]), await engine.score([slow])
    assert first[0].status == second[0].status == "timeout"
    assert not second[0].cached


async def test_one_exploding_item_fails_alone(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox)
    items = [
        code_item("print(3)"),
        ScoreItem(verifier="explodes", completion="x"),
        code_item("print(5)"),
    ]
    results = await engine.score(items)
    assert [r.status for r in results] == ["passed", "internal_error", "failed"]
    assert results[1].reward is None
    assert results[1].details == {"retryable": True}
    assert "RuntimeError: boom on x" in results[1].feedback


async def test_bad_items_get_their_own_status(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox)
    items = [
        ScoreItem(verifier="nope", completion="x"),
        ScoreItem(verifier="code", completion="x", spec={"language": "python"}),
        ScoreItem(verifier="code", completion="x", spec={**SUM_SPEC, "language": "cobol"}),
        ScoreItem(verifier="code", completion="x", spec=SUM_SPEC, extract={"fence": "python"}),
        code_item("print(3)"),
    ]
    results = await engine.score(items)
    assert [(r.status, r.reward) for r in results] == [
        ("unavailable", None),
        ("invalid_spec", None),
        ("unavailable", None),
        ("format_error", 0.0),
        ("passed", 1.0),
    ]
    assert "unknown verifier 'nope'" in results[0].feedback
    assert "exactly one of `tests` and `test_code`" in results[1].feedback
    assert sandbox.runs == 1


async def test_item_deadline_kills_the_run(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox, max_item_s=0.5)
    results = await engine.score([code_item("import time\ntime.sleep(30)", time_limit_s=20)])
    assert results[0].status == "timeout"
    assert "deadline of 0.5 s" in results[0].feedback
    assert results[0].elapsed_ms < 10_000


async def test_a_completion_past_the_cap_is_not_read(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox, max_completion_chars=100)
    at_cap = "print(3)" + " " * 92
    items = [
        code_item(at_cap),
        code_item(at_cap + " "),
        ScoreItem(verifier="nope", completion="x" * 101),
    ]
    results = await engine.score(items)
    assert [(r.status, r.reward) for r in results] == [
        ("passed", 1.0),
        ("format_error", 0.0),
        ("unavailable", None),
    ]
    assert "101 characters long" in results[1].feedback
    assert "ASSAY_MAX_COMPLETION_CHARS" in results[1].feedback
    assert sandbox.runs == 1


async def test_concurrency_limit_per_verifier(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox, concurrency={"code": 2})
    items = [code_item(f"import time\ntime.sleep(0.3)\nprint({i})") for i in range(6)]
    await engine.score(items)
    assert sandbox.most_at_once == 2


async def test_results_keep_order_and_stream_by_completion(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox)
    items = [
        code_item("import time\ntime.sleep(1)\nprint(3)", "slow"),
        code_item("print(3)", "fast"),
    ]
    ordered = await engine.score(items)
    assert [r.id for r in ordered] == ["slow", "fast"]
    streamed = [
        (i, r.id)
        async for i, r in engine.stream(
            [
                code_item("import time\ntime.sleep(1)\nprint(2)", "slow2"),
                code_item("print(2)", "fast2"),
            ]
        )
    ]
    assert streamed == [(1, "fast2"), (0, "slow2")]


async def test_results_ready_together_come_together(sandbox: CountingSandbox) -> None:
    """Items that finish while the reader is busy come in one group (one write of a stream):
    every item once, none lost or repeated, and fewer groups than items."""
    engine = make_engine(sandbox)
    items = [ScoreItem(id=i, verifier="nope", completion="x", spec={}) for i in range(30)]
    items.append(code_item("print(3)", "ran"))
    groups = []
    async with contextlib.aclosing(engine.stream_ready(items)) as ready:
        async for group in ready:
            groups.append(group)
            await asyncio.sleep(0.05)  # a slow reader: the rest finish meanwhile
    indexes = sorted(i for group in groups for i, _ in group)
    assert indexes == list(range(len(items)))
    assert 1 < len(groups) < len(items)
    assert max(len(g) for g in groups) > 1
    assert all(r.id == i for group in groups for i, r in group if i < 30)


async def test_a_gathering_stream_sends_what_finishes_between_groups_together(
    sandbox: CountingSandbox,
) -> None:
    """With `gather_s`, the first result goes at once, those that finish within the window
    after it wait for the next group, and the batch's last is never held for the window: a
    minute's window, and the four items, 0.3 s apart, are all in by the time the last ends."""
    engine = make_engine(sandbox, cache_entries=0)
    items = [code_item(f"import time\ntime.sleep({0.3 * i})\nprint(3)", str(i)) for i in range(4)]
    groups: dict[float, list[list[int]]] = {}
    for gather_s in (0.0, 60.0):
        groups[gather_s] = []
        async with (
            asyncio.timeout(30),
            contextlib.aclosing(engine.stream_ready(items, gather_s)) as ready,
        ):
            async for group in ready:
                groups[gather_s].append([i for i, _ in group])
    assert groups[0.0] == [[0], [1], [2], [3]]
    assert groups[60.0][0] == [0]
    assert groups[60.0][1:] == [[1, 2, 3]]


async def test_abandoned_stream_cancels_its_work(sandbox: CountingSandbox) -> None:
    engine = make_engine(sandbox, concurrency={"code": 1})
    stream = engine.stream(
        [code_item(f"import time\ntime.sleep(0.2)\nprint({i})") for i in range(20)]
    )
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.5)
    assert sandbox.runs < 5
    assert engine.in_flight == 0


def test_wire_and_internal_statuses_agree() -> None:
    from typing import get_args

    from assay.clients.schema import Status as WireStatus

    assert set(get_args(WireStatus)) == {s.value for s in Status}


async def test_without_bwrap_code_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    engine = Engine(LocalSandbox(bwrap=None, lock_dir=tmp_path))
    (result,) = await engine.score([code_item("print(3)")])
    assert result.status == "unavailable"
    assert result.reward is None
    assert "bubblewrap (bwrap) is not installed" in result.feedback
    assert "ASSAY_SANDBOX=unsandboxed" in result.feedback
