from __future__ import annotations

import pytest

from assay.verifiers.compare import CompareMode, outputs_match

CASES: list[tuple[str, str, str, CompareMode, bool]] = [
    ("exact_same", "3\n", "3\n", "exact", True),
    ("exact_newline_counts", "3", "3\n", "exact", False),
    ("lines_trailing_blanks", "a  \nb\n\n\n", "a\nb", "lines", True),
    ("lines_leading_space_counts", " a\nb", "a\nb", "lines", False),
    ("lines_crlf", "a\r\nb\r\n", "a\nb\n", "lines", True),
    ("lines_inner_empty_line_counts", "a\n\nb", "a\nb", "lines", False),
    ("tokens_whitespace", "1  2\n3\n", "1 2 3", "tokens", True),
    ("tokens_differ", "1 2", "1 3", "tokens", False),
    ("tokens_not_numeric", "1.0", "1", "tokens", False),
    ("float_within_tol", "0.3333333", "0.33333333333", "float", True),
    ("float_relative", "1000000.1", "1000000.0", "float", True),
    ("float_outside_tol", "0.3334", "0.3333", "float", False),
    ("float_words_exact", "yes 1.0000000001", "yes 1", "float", True),
    ("float_word_differs", "no 1", "yes 1", "float", False),
    ("float_count_differs", "1 2", "1", "float", False),
    ("float_nan", "nan", "nan", "float", True),
    ("float_inf_vs_number", "inf", "1e308", "float", False),
    ("float_exponent", "1.5E+3", "1500", "float", True),
    ("float_fullwidth_digit_is_no_number", "\uff13", "3", "float", False),
    ("float_underscore_is_no_number", "1_0", "10", "float", False),
    ("float_signs", "-0.0 +2", "0 2.0000000001", "float", True),
]


@pytest.mark.parametrize(
    ("actual", "expected", "mode", "same"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_outputs_match(actual: str, expected: str, mode: CompareMode, same: bool) -> None:
    assert outputs_match(actual, expected, mode, 1e-6) is same
