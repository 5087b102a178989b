"""Finding the payload in a completion (docs/api.md, "How the payload is found").

Everything here runs in time linear in the completion's length, whatever it holds: a model
writes the completion, and a backtracking regular expression on it (a fence opener followed by
thousands of spaces, an opening tag repeated thousands of times) had stalled the whole service
for seconds per item. So fences are found by a hand-written line scanner (CommonMark's fenced
code blocks, as models write them: in lists, with CRLF line ends) and tags with `str.rfind`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from assay.clients.schema import Extract, FenceExtract, TagExtract

# Info strings that label a block as what a program printed, or as plain text, not as code:
# `auto` takes such a block only when there is no other.
OUTPUT_LABELS = frozenset(
    {"text", "txt", "plaintext", "plain", "output", "out", "stdout", "stderr", "console", "log"}
)
_BLANK = " \t"
_VERSION = "0123456789.-_"


@dataclass(frozen=True, slots=True)
class Block:
    info: str
    """The info string's first word, lower-cased, without `{.…}` braces."""
    body: str


class ExtractError(ValueError):
    """No payload could be found (`format_error`)."""


def normalize(text: str) -> str:
    """Line ends as `\\n` (CRLF and lone CR too), and lone surrogates, which no file can hold,
    as U+FFFD: what the model wrote, in a form that runs."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _list_marker(line: str, at: int) -> int:
    """Where a Markdown list marker (`- `, `* `, `+ `, `12. `, `3) `) at `at` ends, else `at`."""
    end = at
    if line.startswith(("- ", "* ", "+ "), at):
        end = at + 1
    else:
        while end < len(line) and end - at < 9 and line[end].isascii() and line[end].isdigit():
            end += 1
        if end == at or not line.startswith((". ", ") "), end):
            return at
        end += 1
    while end < len(line) and line[end] in _BLANK:
        end += 1
    return end


def _opener(line: str) -> tuple[str, int, str] | None:
    """(fence, column, info) when `line` opens a fenced block: any indentation, an optional
    list marker, then three or more backticks or tildes; a backtick fence's info string may
    hold no backtick (then it is inline code)."""
    at = len(line) - len(line.lstrip(_BLANK))
    at = _list_marker(line, at)
    if not line.startswith(("```", "~~~"), at):
        return None
    char = line[at]
    end = at
    while end < len(line) and line[end] == char:
        end += 1
    info = line[end:].strip(_BLANK)
    if char == "`" and "`" in info:
        return None
    return line[at:end], at, info


def _closes(line: str, fence: str) -> bool:
    """A closing fence: only the fence's character, at least as many, and blanks."""
    stripped = line.strip(_BLANK)
    return (
        len(stripped) >= len(fence)
        and stripped.startswith(fence)
        and stripped.count(fence[0]) == len(stripped)
    )


def _dedent(line: str, column: int) -> str:
    """A body line without up to `column` leading blanks (the opener's indentation)."""
    cut = 0
    while cut < column and cut < len(line) and line[cut] in _BLANK:
        cut += 1
    return line[cut:]


def _label(info: str) -> str:
    words = info.split(None, 1)
    return words[0].lower().lstrip("{.").rstrip("}") if words else ""


def fenced_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` (normalized), in order; one left open runs to the end."""
    blocks: list[Block] = []
    lines = normalize(text).split("\n")
    last = len(lines) - 1
    fence: tuple[str, int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(lines):
        if fence is None:
            # Most lines hold no backtick or tilde and open nothing (the full check costs the
            # service a few microseconds a line: a completion's every line goes through it).
            if "`" in line or "~" in line:
                fence = _opener(line)
                body = []
        elif fence[0][0] in line and _closes(line, fence[0]):
            blocks.append(Block(_label(fence[2]), "".join(body)))
            fence = None
        else:
            body.append(_dedent(line, fence[1]) + ("\n" if number < last else ""))
    if fence is not None:
        blocks.append(Block(_label(fence[2]), "".join(body)))
    return blocks


def fits(info: str, names: Iterable[str]) -> bool:
    """Whether a block's label names one of `names`: as it is, or less a version at its end
    (`py3`, `python3.11`, `lean4`)."""
    wanted = {n.lower() for n in names}
    return info in wanted or (bool(info) and info.rstrip(_VERSION) in wanted)


def choose(blocks: list[Block], fences: Iterable[str]) -> Block | None:
    """`auto`'s choice: the last block whose label fits, else the last not labelled as output
    or plain text, else the last block."""
    names = list(fences)
    fitting = [b for b in blocks if fits(b.info, names)]
    if fitting:
        return fitting[-1]
    code = [b for b in blocks if b.info not in OUTPUT_LABELS]
    if code:
        return code[-1]
    return blocks[-1] if blocks else None


def tagged(text: str, tag: str) -> str | None:
    """The text between the last `</tag>` and the last `<tag>` before it."""
    end = text.rfind(f"</{tag}>")
    if end < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : end]


def extract(completion: str, how: Extract, fences: Iterable[str]) -> str:
    """The payload of `completion`; raises `ExtractError` when there is none."""
    text = normalize(completion)
    if how == "raw":
        payload = text
    elif how == "auto":
        block = choose(fenced_blocks(text), fences)
        payload = block.body if block is not None else text
    elif isinstance(how, FenceExtract):
        fitting = [b for b in fenced_blocks(text) if fits(b.info, [how.fence])]
        if not fitting:
            raise ExtractError(f"no ```{how.fence} fenced block in the completion")
        payload = fitting[-1].body
    elif isinstance(how, TagExtract):
        found = tagged(text, how.tag)
        if found is None:
            raise ExtractError(f"no <{how.tag}>…</{how.tag}> in the completion")
        # A fenced block in the tag (<answer>```python … ```</answer>) is the payload.
        block = choose(fenced_blocks(found), fences)
        payload = block.body if block is not None else found
    else:  # pragma: no cover - the schema admits nothing else
        raise ExtractError(f"unknown extract mode {how!r}")
    if not payload.strip():
        raise ExtractError("the extracted payload is empty")
    return payload
