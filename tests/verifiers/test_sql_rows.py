"""Result comparison and the parse check of the sql verifier, on their own."""

from __future__ import annotations

import math

import pytest

from assay.verifiers.sql_rows import compare_rows, normal_rows
from assay.verifiers.sql_safety import Forbidden, ParseFailed, check_prediction, gold_ordered


def test_set_ignores_order_and_repeats_multiset_counts_them() -> None:
    gold = [(1, "a"), (2, "b"), (2, "b")]
    pred = [(2, "b"), (1, "a")]
    assert compare_rows(gold, pred, compare="set") is None
    assert compare_rows(gold, pred, compare="set", tol=0) is None  # exact, as BIRD
    assert compare_rows(gold, [(2, "b"), (1, "a"), (2, "b")], compare="multiset", tol=0) is None
    found = compare_rows(gold, pred, compare="multiset")
    assert found is not None
    assert found.reason == "expected 3 rows, got 2"


def test_the_first_differing_rows_are_named() -> None:
    found = compare_rows([(1,), (2,), (3,)], [(1,), (4,)], tol=0)
    assert found is not None
    assert (found.reason, found.expected_row, found.actual_row) == (
        "expected 3 rows, got 2",
        (2,),
        (4,),
    )
    found = compare_rows([(1,), (1,)], [(1,), (2,)], compare="multiset")
    assert found is not None
    assert (found.reason, found.expected_row, found.actual_row) == (
        "expected 2 rows, got 2 with different values",
        (1,),
        (2,),
    )
    # Floats within tolerance, in another order, duplicates counted.
    assert compare_rows([(0.1 + 0.2,), (1.0,)], [(1,), (0.3,)], compare="multiset") is None
    assert compare_rows([(0.1 + 0.2,), (0.3,)], [(0.3,)], compare="multiset") is not None


def test_order_counts_only_when_asked() -> None:
    gold = [(1,), (2,), (3,)]
    assert compare_rows(gold, [(3,), (2,), (1,)], ordered=False) is None
    found = compare_rows(gold, [(3,), (2,), (1,)], ordered=True)
    assert found is not None
    assert (found.expected_row, found.actual_row) == ((1,), (3,))


def test_nulls_nan_and_mixed_types_compare_without_errors() -> None:
    gold = [(None, 1), ("x", 2.0), (b"\x00", None), (math.nan, "s")]
    pred = [("x", 2), (math.nan, "s"), (None, 1), (b"\x00", None)]
    assert compare_rows(gold, pred) is None
    assert compare_rows([(1,)], [("1",)]) is not None  # a number is not its text
    assert compare_rows([(None,)], [(0,)]) is not None
    assert compare_rows([(1, None)], [(None, 1)], column_permutations=True) is None


def test_numbers_within_tolerance() -> None:
    assert compare_rows([(0.1 + 0.2,)], [(0.3,)], tol=1e-9) is None
    assert compare_rows([(1_000_000.0,)], [(1_000_000.5,)], tol=1e-6) is None  # relative
    assert compare_rows([(1.0,)], [(1.01,)], tol=1e-6) is not None
    assert compare_rows([(2**60,)], [(2**60 + 1,)], tol=1e-6) is not None  # integers exact


def test_column_permutations_find_the_right_order() -> None:
    gold = [(1, "a", 3.5), (2, "b", 4.5)]
    pred = [(3.5, 1, "a"), (4.5, 2, "b")]
    assert compare_rows(gold, pred) is not None
    assert compare_rows(gold, pred, column_permutations=True) is None
    # Same columns, rows paired differently: no permutation makes them equal.
    assert compare_rows(gold, [(3.5, 2, "a"), (4.5, 1, "b")], column_permutations=True) is not None


def test_wire_cells_come_back_as_values() -> None:
    rows = normal_rows([[True, {"$bytes": "00ff"}, None, [1, 2]]])
    assert rows == [(1, b"\x00\xff", None, "[1, 2]")]


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "postgres"),
        ("SELECT 1; SELECT 2", "sqlite"),
        ("SELECT * FROM (SELECT pg_read_file('/etc/passwd')) s", "postgres"),
        ("SELECT (SELECT load_extension('x'))", "sqlite"),
        ("EXPLAIN SELECT 1", "sqlite"),
        ("SELECT * FROM query('DELETE FROM t')", "duckdb"),
        ("CREATE TABLE t AS SELECT 1", "sqlite"),
    ],
)
def test_forbidden_anywhere_in_the_tree(sql: str, dialect: str) -> None:
    with pytest.raises(Forbidden):
        check_prediction(sql, dialect)


def test_parse_failures_and_order_detection() -> None:
    with pytest.raises(ParseFailed):
        check_prediction("SELECT FROM WHERE (", "sqlite")
    with pytest.raises(ParseFailed):
        check_prediction("  -- nothing\n", "sqlite")
    assert check_prediction("SELECT a FROM t ORDER BY a", "sqlite").ordered
    assert not check_prediction("SELECT a FROM (SELECT a FROM t ORDER BY a) s", "sqlite").ordered
    assert gold_ordered("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1", "sqlite")
    assert not gold_ordered("SELECT a FROM t WHERE a IN (SELECT a FROM u ORDER BY a)", "sqlite")
    assert not gold_ordered("this is not sql (", "sqlite")
