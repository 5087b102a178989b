"""A bounded LRU map for results that the same item would get again.

Bounded in entries and in bytes: a 100-test partial-credit verdict holds a detail per test,
and at the default entry count such verdicts alone would take gigabytes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ResultCache(Generic[V]):
    def __init__(self, max_entries: int, max_bytes: int = 256 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, value: V, size: int = 0) -> None:
        """Keep `value`, which costs about `size` bytes; one larger than the whole budget is
        not kept."""
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)
