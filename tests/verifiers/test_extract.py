from __future__ import annotations

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
