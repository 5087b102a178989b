"""`assay score`'s progress bar and closing summary, drawn by `rich`, and the tallies behind
them (per verifier and status) that `--fail-on` thresholds are checked against.

Without rich (a bare `pip install assay`), there is no bar and the summary is plain lines.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO, get_args

from assay.clients.schema import UNJUDGED, AssayError, ScoreResult, Status


@dataclass
class Tally:
    """What a run produced, per verifier and status."""

    statuses: Counter[str] = field(default_factory=Counter)
    by_verifier: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    reward_sums: Counter[str] = field(default_factory=Counter)
    judged: Counter[str] = field(default_factory=Counter)
    cached: int = 0
    input_errors: int = 0
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, verifier: str, result: ScoreResult, *, input_error: bool = False) -> None:
        self.done += 1
        self.statuses[result.status] += 1
        self.by_verifier[verifier][result.status] += 1
        self.cached += result.cached
        self.input_errors += input_error
        if result.reward is not None:
            self.reward_sums[verifier] += result.reward  # type: ignore[assignment]
            self.judged[verifier] += 1

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def metrics(self) -> dict[str, float]:
        """What `--fail-on` can name: each status (a count) and `<status>_rate` (a fraction),
        `pass_rate`, `unjudged`, `unjudged_rate`, `mean_reward`, `input_errors`, `items`."""
        n = self.done or 1
        judged = sum(self.judged.values())
        out: dict[str, float] = {
            "items": float(self.done),
            "input_errors": float(self.input_errors),
            "unjudged": float(sum(self.statuses[s] for s in UNJUDGED)),
            "pass_rate": self.statuses["passed"] / n,
            "mean_reward": sum(self.reward_sums.values()) / judged if judged else 0.0,
        }
        out["unjudged_rate"] = out["unjudged"] / n
        for status in _STATUSES:
            out[status] = float(self.statuses[status])
            out[f"{status}_rate"] = self.statuses[status] / n
        return out


_STATUSES: tuple[str, ...] = get_args(Status)
_THRESHOLD = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>|==)\s*([0-9.eE+-]+%?)\s*$")


@dataclass(frozen=True)
class Threshold:
    """`--fail-on METRIC OP NUMBER`: `internal_error>0`, `pass_rate<0.5`, `unjudged_rate>=1%`."""

    text: str
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        found = _THRESHOLD.match(text)
        names = set(Tally().metrics())
        if not found or found.group(1) not in names:
            raise AssayError(
                f"--fail-on {text!r}: give METRIC<N, >N, <=N, >=N or ==N with METRIC one of "
                + ", ".join(sorted(names))
            )
        number = found.group(3)
        value = float(number[:-1]) / 100 if number.endswith("%") else float(number)
        return cls(text.strip(), found.group(1), found.group(2), value)

    def crossed(self, metrics: dict[str, float]) -> bool:
        got = metrics[self.metric]
        return {
            "<": got < self.value,
            ">": got > self.value,
            "<=": got <= self.value,
            ">=": got >= self.value,
            "==": got == self.value,
        }[self.op]


class Display:
    """The live bar while scoring (rich, on stderr) and the closing summary."""

    def __init__(self, total: int | None, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return
        self._bar = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._bar.add_task("scoring", total=total)
        self._bar.start()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def summary(self, tally: Tally) -> None:
        rate = tally.done / tally.elapsed_s if tally.elapsed_s > 0 else 0.0
        head = (
            f"{tally.done} items in {tally.elapsed_s:.1f} s ({rate:.1f} items/s); "
            f"{tally.cached} cached"
        )
        statuses = [s for s in _STATUSES if tally.statuses[s]]
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            print(head, file=self.stream)
            for verifier, counts in sorted(tally.by_verifier.items()):
                parts = ", ".join(f"{s} {counts[s]}" for s in statuses if counts[s])
                print(f"{verifier}: {parts}", file=self.stream)
            return
        table = Table(title=head, title_justify="left")
        table.add_column("verifier")
        table.add_column("items", justify="right")
        for status in statuses:
            table.add_column(status, justify="right")
        table.add_column("mean reward", justify="right")
        rows = sorted(tally.by_verifier.items())
        if len(rows) > 1:
            total: Counter[str] = sum((c for _, c in rows), Counter())
            rows.append(("all", total))
        for verifier, counts in rows:
            if verifier == "all":
                judged, reward = sum(tally.judged.values()), sum(tally.reward_sums.values())
            else:
                judged, reward = tally.judged[verifier], tally.reward_sums[verifier]
            table.add_row(
                verifier,
                str(sum(counts.values())),
                *(str(counts[s]) for s in statuses),
                f"{reward / judged:.3f}" if judged else "-",
            )
        Console(file=self.stream, width=max(100, 14 * (len(statuses) + 3))).print(table)


__all__ = ["Display", "Tally", "Threshold"]
