"""A progress bar on stderr with no dependencies; plain periodic lines when not on a terminal."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO


class Progress:
    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = self._last = time.monotonic()
        self.statuses: Counter[str] = Counter()
        self.rewards: list[float] = []
        self.cached = 0
        self.input_errors = 0

    def update(self, status: str, reward: float | None, cached: bool = False) -> None:
        self.done += 1
        self.statuses[status] += 1
        self.cached += cached
        if reward is not None:
            self.rewards.append(reward)
        now = time.monotonic()
        if self.enabled and (
            self.done == self.total or now - self._last >= (0.1 if self.tty else 5)
        ):
            self._last = now
            self._draw(now)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def _draw(self, now: float) -> None:
        fraction = self.done / self.total if self.total else 1.0
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        text = f"{self.done}/{self.total} {fraction:4.0%} {rate:6.1f} items/s ETA {eta:4.0f}s"
        if self.tty:
            width = 30
            bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
            self.stream.write(f"\rscoring [{bar}] {text}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"scoring {text}\n")
        self.stream.flush()

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        judged = len(self.rewards)
        mean = sum(self.rewards) / judged if judged else float("nan")
        statuses = ", ".join(f"{k} {v}" for k, v in self.statuses.most_common())
        return (
            f"{self.done} items in {elapsed:.1f} s ({self.rate:.1f} items/s); "
            f"{judged} judged, mean reward {mean:.3f}, "
            f"{sum(r == 1.0 for r in self.rewards)} with reward 1; "
            f"{self.cached} cached\nstatuses: {statuses or 'none'}"
        )
