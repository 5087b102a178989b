"""Comparing a program's output with the expected output (API.md, code `compare`)."""

from __future__ import annotations

import math
from typing import Literal

CompareMode = Literal["exact", "lines", "tokens", "float"]


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value


def _close(a: str, b: str, tol: float) -> bool:
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return False
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def outputs_match(actual: str, expected: str, mode: CompareMode, float_tol: float = 1e-6) -> bool:
    if mode == "exact":
        return actual == expected
    if mode == "lines":
        return _lines(actual) == _lines(expected)
    got, want = actual.split(), expected.split()
    if mode == "tokens":
        return got == want
    return len(got) == len(want) and all(
        _close(g, w, float_tol) for g, w in zip(got, want, strict=True)
    )
