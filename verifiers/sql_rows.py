"""Comparing query results (rows of JSON cells) the way text-to-SQL benchmarks do.

- `set` (BIRD `evaluation_ex.py`): rows compared as sets; duplicates and order ignored.
- `multiset`: duplicates count, order ignored.
- ordered (Spider test-suite `exec_eval.py`, when the gold's outermost SELECT has ORDER BY):
  row lists compared in order (under `set`, repeated rows are dropped first).
- column permutations (Spider test-suite): the predicted columns may come in any order.
- numbers compare within `float_tol` (absolute or relative), integers and floats alike; NULLs,
  strings, numbers and bytes of one column compare without errors (a total order by type).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Row = tuple[Any, ...]

_PERMUTATION_TRIES = 5000  # Spider's search is bounded too; beyond it, no match is claimed


def _normal(value: Any) -> Any:
    """A cell as the comparison sees it: bool as int; bytes back from their JSON tag."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return bytes.fromhex(value["$bytes"])
    if isinstance(value, (list, dict)):
        return repr(value)
    return value


_PLAIN = frozenset({int, float, str, type(None)})


def normal_rows(rows: Sequence[Sequence[Any]]) -> list[Row]:
    return [
        tuple(row) if all(type(v) in _PLAIN for v in row) else tuple(_normal(v) for v in row)
        for row in rows
    ]


def _key(value: Any) -> tuple[int, Any]:
    """A total order over mixed types: NULL < NaN < numbers < text < bytes."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return (1, 0)
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, bytes):
        return (4, value)
    return (5, repr(value))


def row_key(row: Row) -> tuple[tuple[int, Any], ...]:
    return tuple(_key(v) for v in row)


def cells_equal(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return fa == fb or math.isclose(fa, fb, rel_tol=tol, abs_tol=tol)
    return type(a) is type(b) and a == b


def rows_equal(a: Row, b: Row, tol: float) -> bool:
    return len(a) == len(b) and all(cells_equal(x, y, tol) for x, y in zip(a, b, strict=True))


def _unique(rows: list[Row], tol: float) -> list[Row]:
    """Rows sorted, without repeats (exact, or within tolerance of the row before)."""
    if tol == 0:
        return sorted({row_key(row): row for row in rows}.values(), key=row_key)
    out: list[Row] = []
    for row in sorted(rows, key=row_key):
        if not out or not rows_equal(out[-1], row, tol):
            out.append(row)
    return out


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Why two results differ: a sentence, and the first differing row of each side."""

    reason: str
    expected_row: Row | None = None
    actual_row: Row | None = None


def _prepared(rows: list[Row], compare: str, ordered: bool, tol: float) -> list[Row]:
    if compare == "set":
        if ordered:
            return _ordered_unique(rows, tol)
        return _unique(rows, tol)
    return rows if ordered else sorted(rows, key=row_key)


def _ordered_unique(rows: list[Row], tol: float = 0.0) -> list[Row]:
    """Rows in their order, each first occurrence only (repeats compared exactly)."""
    return list(dict.fromkeys(rows))


def _has_float(rows: list[Row]) -> bool:
    return any(type(v) is float for row in rows for v in row)


def _exactly_same(gold: list[Row], pred: list[Row], compare: str, ordered: bool) -> bool:
    """Equality without tolerance, by hashing: linear, whatever the size (1 equals 1.0)."""
    if ordered:
        if compare == "set":
            return _ordered_unique(gold) == _ordered_unique(pred)
        return gold == pred
    if compare == "set":
        return set(gold) == set(pred)
    return len(gold) == len(pred) and Counter(gold) == Counter(pred)


def _same(gold: list[Row], pred: list[Row], compare: str, ordered: bool, tol: float) -> bool:
    if _exactly_same(gold, pred, compare, ordered):
        return True
    if tol == 0 or not (_has_float(gold) or _has_float(pred)):
        return False  # without floats, tolerance changes nothing
    a, b = _prepared(gold, compare, ordered, tol), _prepared(pred, compare, ordered, tol)
    return len(a) == len(b) and all(rows_equal(x, y, tol) for x, y in zip(a, b, strict=True))


def _first_difference(gold: list[Row], pred: list[Row], tol: float) -> Mismatch | None:
    for g, p in itertools.zip_longest(gold, pred):
        if g is None or p is None or not rows_equal(g, p, tol):
            return Mismatch(_counts(len(gold), len(pred)), g, p)
    return None


def _counts(expected: int, got: int) -> str:
    if expected != got:
        return f"expected {expected} rows, got {got}"
    return f"expected {expected} rows, got {got} with different values"


def _unordered_difference(gold: list[Row], pred: list[Row], compare: str) -> Mismatch:
    """The first row (in each side's own order) that one side has and the other lacks."""
    if compare == "set":
        a, b = set(gold), set(pred)
        sizes = len(a), len(b)
        missing = next((row for row in gold if row not in b), None)
        extra = next((row for row in pred if row not in a), None)
    else:
        ca, cb = Counter(gold), Counter(pred)
        sizes = len(gold), len(pred)
        less, more = ca - cb, cb - ca
        missing = next((row for row in gold if row in less), None)
        extra = next((row for row in pred if row in more), None)
    return Mismatch(_counts(*sizes), missing, extra)


def _column(rows: list[Row], i: int) -> list[Any]:
    return sorted((row[i] for row in rows), key=_key)


def _permutations(gold: list[Row], pred: list[Row], width: int, tol: float) -> list[list[int]]:
    """For each gold column, the predicted columns holding the same multiset of values."""
    columns = [_column(pred, j) for j in range(width)]
    candidates = []
    for i in range(width):
        column = _column(gold, i)
        fits = [
            j
            for j in range(width)
            if all(cells_equal(a, b, tol) for a, b in zip(column, columns[j], strict=True))
        ]
        candidates.append(fits)
    return candidates


def compare_rows(
    gold: list[Row],
    pred: list[Row],
    *,
    compare: str = "set",
    ordered: bool = False,
    tol: float = 1e-6,
    column_permutations: bool = False,
) -> Mismatch | None:
    """`None` when the predicted rows match the gold rows; else the first difference."""
    gold_width = len(gold[0]) if gold else None
    pred_width = len(pred[0]) if pred else None
    if gold_width is not None and pred_width is not None and gold_width != pred_width:
        return Mismatch(
            f"expected {gold_width} columns, got {pred_width}", gold[0] if gold else None, pred[0]
        )
    if _same(gold, pred, compare, ordered, tol):
        return None
    if column_permutations and gold and pred and len(gold) == len(pred) and gold_width:
        candidates = _permutations(gold, pred, gold_width, tol)
        tries = 0
        for order in itertools.product(*candidates):
            if len(set(order)) != gold_width:
                continue
            tries += 1
            if tries > _PERMUTATION_TRIES:
                break
            permuted = [tuple(row[j] for j in order) for row in pred]
            if _same(gold, permuted, compare, ordered, tol):
                return None
    if not ordered and (tol == 0 or not (_has_float(gold) or _has_float(pred))):
        return _unordered_difference(gold, pred, compare)
    a, b = _prepared(gold, compare, ordered, tol), _prepared(pred, compare, ordered, tol)
    found = _first_difference(a, b, tol)
    if found is None:  # equal once prepared; only the raw counts differ (set semantics)
        return Mismatch(_counts(len(gold), len(pred)))
    return found
