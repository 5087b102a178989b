"""Comparing a program's output with the expected output (docs/api.md, code `compare`).

The modes, precisely (both sides are treated alike):
- `exact`: the texts are equal.
- `lines`: line ends are `\\n` or `\\r\\n`; each line's trailing spaces and tabs are dropped, and
  so are the empty lines at the end; the lists of lines are equal.
- `tokens`: tokens are the runs of characters between ASCII whitespace (space, `\\t`, `\\n`,
  `\\v`, `\\f`, `\\r`, as C's `isspace`); nothing else separates (a non-ASCII space, or a
  control character such as `\\x1f`, is part of a token); the lists of tokens are equal.
- `float`: tokens as above; the lists have the same length and each pair is equal as text, or
  both are numbers whose values are within `float_tol`, absolute or relative
  (|a - b| <= max(tol, tol * max(|a|, |b|))). A number is ASCII only: an optional sign, digits
  with an optional point (or a point and digits), an optional exponent (`e`, an optional sign,
  at most 9 digits); or `inf`, `infinity` or `nan` in any ASCII case, with an optional sign.
  Values are exact decimals, so numbers too large for a double still differ (`1e999` is not
  `2e999`); `nan` equals only `nan`. A token of more than 1,000 characters is never a number.

Everything runs in time linear in the output's length: no regular expression that can
backtrack (a long run of digits had made one take seconds).
"""

from __future__ import annotations

import decimal
import math
from typing import Literal

CompareMode = Literal["exact", "lines", "tokens", "float"]

_SPACE = " \t\n\v\f\r"
_MAX_NUMBER = 1000
_SPECIAL = {"inf": "Infinity", "infinity": "Infinity", "nan": "NaN"}
# Room for every value a number token can have (exponents of 9 digits, 1,000 digits), so that
# nothing overflows; differences are rounded to 60 digits, far below any tolerance's effect.
_CONTEXT = decimal.Context(
    prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.InvalidOperation]
)


def split_tokens(text: str) -> list[str]:
    """`text` cut at runs of ASCII whitespace."""
    return text.translate(_TO_SPACE).split(" ") if text else []


_TO_SPACE = str.maketrans(dict.fromkeys("\t\n\v\f\r", " "))


def _tokens(text: str) -> list[str]:
    return [t for t in split_tokens(text) if t]


def _lines(text: str) -> list[str]:
    lines = [line.rstrip(" \t") for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def is_number(token: str) -> bool:
    """Whether `token` is a number of the grammar above (str methods only: linear, and fast)."""
    if not token or len(token) > _MAX_NUMBER or not token.isascii():
        return False
    body = token[1:] if token[0] in "+-" else token
    low = body.lower()
    if low in _SPECIAL:
        return True
    mantissa, marked, exponent = low.partition("e")
    whole, _, fraction = mantissa.partition(".")
    if not (whole or fraction) or not all(p == "" or p.isdigit() for p in (whole, fraction)):
        return False
    if marked:
        digits = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        return digits.isdigit() and len(digits) <= 9
    return True


def _exact(token: str) -> decimal.Decimal:
    body = token[1:] if token[0] in "+-" else token
    special = _SPECIAL.get(body.lower())
    if special is not None:
        return decimal.Decimal(("-" if token[0] == "-" else "") + special)
    return decimal.Decimal(token)


def _close(a: str, b: str, tol: float, step: decimal.Decimal) -> bool:
    if a == b:
        return True
    if not (is_number(a) and is_number(b)):
        return False
    fx, fy = float(a), float(b)  # the grammar is a part of float()'s
    if math.isnan(fx) or math.isnan(fy):
        return math.isnan(fx) and math.isnan(fy)
    # Most pairs are decided with doubles, whose errors are bounded: only a pair near the
    # tolerance, or beyond a double's range, needs the exact decimals.
    if math.isfinite(fx) and math.isfinite(fy):
        largest = max(abs(fx), abs(fy))
        distance, bound = abs(fx - fy), max(tol, tol * largest)
        error = 1e-15 * (largest + bound) + 1e-300
        if distance - error > bound:
            return False
        if distance + error < bound:
            return True
    x, y = _exact(a), _exact(b)
    if x.is_infinite() or y.is_infinite():
        return x == y
    limit = max(step, _CONTEXT.multiply(step, max(x.copy_abs(), y.copy_abs())))
    return _CONTEXT.subtract(x, y).copy_abs() <= limit


def outputs_match(actual: str, expected: str, mode: CompareMode, float_tol: float = 1e-6) -> bool:
    if mode == "exact":
        return actual == expected
    if mode == "lines":
        return _lines(actual) == _lines(expected)
    got, want = _tokens(actual), _tokens(expected)
    if mode == "tokens":
        return got == want
    if len(got) != len(want):
        return False
    if not math.isfinite(float_tol):  # the schema refuses it; an infinite tolerance takes all
        return all(
            g == w or (is_number(g) and is_number(w)) for g, w in zip(got, want, strict=True)
        )
    # The tolerance as written (1e-06 is 0.000001, not the double nearest to it).
    step = decimal.Decimal(repr(float_tol))
    return all(_close(g, w, float_tol, step) for g, w in zip(got, want, strict=True))
