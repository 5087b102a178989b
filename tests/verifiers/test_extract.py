from __future__ import annotations

import subprocess
import sys

import pytest

from assay.clients.schema import Extract, FenceExtract, TagExtract
from assay.verifiers.extract import ExtractError, extract

PY = ("python", "py")

CASES: list[tuple[str, str, Extract, str]] = [
    ("raw_text", "print(1)", "auto", "print(1)"),
    ("fits_language", "x\n```python\na\n```\n```text\nb\n```\n", "auto", "a\n"),
    ("last_fitting_block", "```py\na\n```\n```python\nb\n```\n", "auto", "b\n"),
    ("any_block_when_none_fits", "```\na\n```\n```js\nb\n```\n", "auto", "b\n"),
    ("info_string_attributes", "```python title=x.py\na\n```", "auto", "a\n"),
    ("case_insensitive_info", "```Python\na\n```", "auto", "a\n"),
    ("unclosed_final_block", "text\n```python\na = 1\n", "auto", "a = 1\n"),
    ("tilde_fence", "~~~python\na\n~~~\n", "auto", "a\n"),
    (
        "longer_fence_holds_backticks",
        "````python\n```\ninner\n```\n````",
        "auto",
        "```\ninner\n```\n",
    ),
    ("raw_keeps_fences", "```python\na\n```", "raw", "```python\na\n```"),
    ("named_fence", "```python\na\n```\n```cpp\nb\n```\n", FenceExtract(fence="python"), "a\n"),
    ("tag", "<think>x</think><answer>42</answer>", TagExtract(tag="answer"), "42"),
    ("last_tag", "<answer>1</answer> <answer>2</answer>", TagExtract(tag="answer"), "2"),
    ("multiline_tag", "<answer>\na\nb\n</answer>", TagExtract(tag="answer"), "\na\nb\n"),
    # What models write (issue 5): each of these had judged another text than the program.
    (
        "crlf_fence",
        "Here:\r\n```python\r\nx = 1\r\nprint(x)\r\n```\r\n",
        "auto",
        "x = 1\nprint(x)\n",
    ),
    ("lone_cr_lines", "```python\rprint(1)\r```\r", "auto", "print(1)\n"),
    (
        "fence_in_a_numbered_list",
        "1. Read the input:\n   ```python\n   n = int(input())\n"
        "   if n:\n       print(n)\n   ```\n",
        "auto",
        "n = int(input())\nif n:\n    print(n)\n",
    ),
    (
        "fence_in_a_nested_bullet",
        "- Plan\n    - Code:\n      ```python\n      def f():\n          return 1\n      ```",
        "auto",
        "def f():\n    return 1\n",
    ),
    ("fence_on_the_list_marker_line", "2. ```python\n   print(2)\n   ```\n", "auto", "print(2)\n"),
    (
        "answer_tag_around_a_fence",
        "<think>```python\nprint(0)\n```</think>\n<answer>\n```python\nprint(1)\n```\n</answer>",
        TagExtract(tag="answer"),
        "print(1)\n",
    ),
    (
        "py3_block_then_its_output",
        "```py3\nprint(6 * 7)\n```\nOutput:\n```\n42\n```\n",
        "auto",
        "print(6 * 7)\n",
    ),
    ("versioned_info", "```python3.11\na\n```\n```\nb\n```", "auto", "a\n"),
    ("braced_info", "```{.python}\na\n```\n```text\nb\n```", "auto", "a\n"),
    (
        "labelled_output_block_is_not_code",
        "```\nprint(1)\n```\n```text\n1\n```\n",
        "auto",
        "print(1)\n",
    ),
    (
        "inline_triple_backticks_are_not_a_fence",
        "Use ```python``` blocks.\n```python\na\n```",
        "auto",
        "a\n",
    ),
    (
        "fence_line_with_info_does_not_close",
        "```python\ns = '''\n```python\n'''\n```\n",
        "auto",
        "s = '''\n```python\n'''\n",
    ),
    ("closing_fence_with_trailing_blanks", "```python\na\n```  \t\nrest", "auto", "a\n"),
    ("nested_tags_take_the_inner", "<answer><answer>7</answer>", TagExtract(tag="answer"), "7"),
    ("named_fence_with_version", "```cpp17\nint x;\n```", FenceExtract(fence="cpp"), "int x;\n"),
    ("lone_surrogate_becomes_fffd", "print('\ud800')", "raw", "print('\ufffd')"),
]


@pytest.mark.parametrize(
    ("completion", "how", "payload"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_extract(completion: str, how: Extract, payload: str) -> None:
    assert extract(completion, how, PY) == payload


@pytest.mark.parametrize(
    ("completion", "how", "message"),
    [
        ("no fence here", FenceExtract(fence="python"), "no ```python"),
        ("```cpp\nx\n```", FenceExtract(fence="python"), "no ```python"),
        ("no tag", TagExtract(tag="answer"), "no <answer>"),
        ("   \n", "auto", "empty"),
        ("```python\n\n```", "auto", "empty"),
    ],
    ids=["no_fence", "other_fence", "no_tag", "blank", "empty_block"],
)
def test_nothing_to_extract(completion: str, how: Extract, message: str) -> None:
    with pytest.raises(ExtractError, match=message):
        extract(completion, how, PY)


# Inputs that made the old regular expressions backtrack (a fence opener and many blanks, a
# long run of opening tags): each must be handled in time linear in its length. Run in a child
# process with a generous deadline: on the old code, these take minutes to hours.
PATHOLOGICAL = {
    "fence_opener_then_blanks": "```" + " " * 1_000_000,
    "fence_openers_on_every_line": "```python\n" * 100_000,
    "list_of_openers": "1. ```\n" * 100_000,
    "opening_tags_never_closed": "<answer>" * 200_000 + "</answe",
    "opening_tags_then_one_close": "<answer>" * 200_000 + "x</answer>",
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_completions_take_linear_time(name: str) -> None:
    code = (
        "from assay.clients.schema import TagExtract\n"
        "from assay.verifiers.extract import ExtractError, extract\n"
        "from tests.verifiers.test_extract import PATHOLOGICAL\n"
        f"text = PATHOLOGICAL[{name!r}]\n"
        "for how in ('auto', TagExtract(tag='answer')):\n"
        "    try:\n        extract(text, how, ('python',))\n"
        "    except ExtractError:\n        pass\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
