"""Comparing a program's output with the expected output (API.md, code `compare`)."""

from __future__ import annotations

import math
import re
from typing import Literal

CompareMode = Literal["exact", "lines", "tokens", "float"]


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# A number as checkers print and read them: ASCII digits, an optional point and exponent.
# Python's float() takes more ('１２', '1_000', 'infinity'), which a model could use to pass
# a wrong answer off as a number.
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|nan)", re.I
)


def _number(token: str) -> float | None:
    if not _NUMBER.fullmatch(token):
        return None
    return float(token)


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
