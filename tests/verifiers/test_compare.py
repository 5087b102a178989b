from __future__ import annotations

import subprocess
import sys

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
    # The definitions in docs/api.md, to the letter (issue 5).
    ("tokens_unit_separator_is_no_space", "1\x1f2", "1 2", "tokens", False),
    ("tokens_nbsp_is_no_space", "1\u00a02", "1 2", "tokens", False),
    ("tokens_ideographic_space_is_no_space", "1\u30002", "1 2", "tokens", False),
    ("tokens_ascii_whitespace_all_separates", "1\t2\v3\f4\r\n5", "1 2 3 4 5", "tokens", True),
    ("tokens_leading_and_trailing_space", "  1 2 \n\n", "1 2", "tokens", True),
    ("tokens_empty_output", "", "1", "tokens", False),
    ("tokens_both_blank", " \n", "", "tokens", True),
    ("lines_trailing_nbsp_counts", "a\u00a0\nb", "a\nb", "lines", False),
    ("lines_trailing_tab_dropped", "a\t\nb", "a\nb", "lines", True),
    ("float_overflowing_numbers_differ", "1e999", "2e999", "float", False),
    ("float_overflowing_numbers_close", "1.0000000001e999", "1e999", "float", True),
    ("float_underflowing_numbers", "1e-999", "0", "float", True),
    ("float_dotless_i_inf_is_a_word", "\u0131nf", "inf", "float", False),
    ("float_infinity_spelled_out", "-Infinity", "-inf", "float", True),
    ("float_inf_signs_differ", "inf", "-inf", "float", False),
    ("float_nan_is_not_a_number_value", "nan", "0", "float", False),
    ("float_long_digit_run_is_compared", "1" * 999, "1" * 998 + "2", "float", True),
    ("float_too_long_is_a_word", "1" * 1001, "1" * 1000 + "2", "float", False),
    ("float_exponent_of_ten_digits_is_a_word", "1e0000000001", "10", "float", False),
    ("float_arabic_digits_are_words", "\u0661", "1", "float", False),
    ("float_hex_is_a_word", "0x10", "16", "float", False),
    ("float_point_alone_is_a_word", ".", "0", "float", False),
    ("float_trailing_point", "3.", "3", "float", True),
    ("float_tolerance_as_written", "1.000001", "1", "float", True),
    ("float_just_outside_tolerance", "1.0000011", "1", "float", False),
]


@pytest.mark.parametrize(
    ("actual", "expected", "mode", "same"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_outputs_match(actual: str, expected: str, mode: CompareMode, same: bool) -> None:
    assert outputs_match(actual, expected, mode, 1e-6) is same


def test_zero_tolerance_compares_exact_values() -> None:
    # As doubles both are 0.1; as the decimals the program printed they differ.
    assert not outputs_match("0.10000000000000001", "0.1", "float", 0.0)
    assert outputs_match("0.10", "0.1", "float", 0.0)
    assert outputs_match("1.1", "1.0", "float", 0.1)  # |a - b| = tol exactly: equal


@pytest.mark.parametrize(
    "output",
    [
        "1" * 1_000_000 + "x",  # a long run of digits made the old number pattern quadratic
        "1" * 500_000 + "e" + "1" * 500_000 + "x",
        " ".join(["9" * 999 + "."] * 1000),
        " ".join(["\u0131nf"] * 100_000),
    ],
    ids=["digits_then_letter", "digits_e_digits", "long_numbers", "dotless_inf"],
)
def test_hostile_outputs_are_compared_in_linear_time(output: str) -> None:
    """In a child process with a generous deadline: the old pattern took minutes on the first."""
    code = (
        "import sys\nfrom assay.verifiers.compare import outputs_match\n"
        "text = sys.stdin.read()\n"
        "ones = ' '.join('1' for _ in text.split(' '))  # as many tokens, so each is compared\n"
        "for mode in ('tokens', 'float', 'lines'):\n"
        "    outputs_match(text, ones, mode)\n    outputs_match(ones, text, mode)\n"
    )
    subprocess.run([sys.executable, "-c", code], input=output.encode(), check=True, timeout=60)
