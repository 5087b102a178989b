"""Finding the payload in a completion (API.md, `extract`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from assay.clients.schema import Extract, FenceExtract, TagExtract

# An opening fence (``` or longer, or ~~~), its info string, the body, and a closing fence of
# the same kind at least as long. A block the model never closed runs to the end of the text.
_FENCE = re.compile(
    r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)"
    r"(?:^[ \t]{0,3}(?P=fence)[`~]*[ \t]*$|\Z)",
    re.DOTALL | re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Block:
    info: str
    body: str


class ExtractError(ValueError):
    """No payload could be found (`format_error`)."""


def fenced_blocks(text: str) -> list[Block]:
    blocks = []
    for match in _FENCE.finditer(text):
        words = match["info"].strip().split()
        info = words[0].lower() if words else ""
        blocks.append(Block(info=info.lstrip("{.").rstrip("}"), body=match["body"]))
    return blocks


def extract(completion: str, how: Extract, fences: Iterable[str]) -> str:
    """The payload of `completion`; raises `ExtractError` when there is none."""
    if how == "raw":
        payload = completion
    elif how == "auto":
        blocks = fenced_blocks(completion)
        wanted = {f.lower() for f in fences}
        fitting = [b for b in blocks if b.info in wanted]
        if fitting:
            payload = fitting[-1].body
        elif blocks:
            payload = blocks[-1].body
        else:
            payload = completion
    elif isinstance(how, FenceExtract):
        info = how.fence.lower()
        fitting = [b for b in fenced_blocks(completion) if b.info == info]
        if not fitting:
            raise ExtractError(f"no ```{how.fence} fenced block in the completion")
        payload = fitting[-1].body
    elif isinstance(how, TagExtract):
        tag = re.escape(how.tag)
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", completion, re.DOTALL)
        if not found:
            raise ExtractError(f"no <{how.tag}>…</{how.tag}> in the completion")
        payload = found[-1]
    else:  # pragma: no cover - the schema admits nothing else
        raise ExtractError(f"unknown extract mode {how!r}")
    if not payload.strip():
        raise ExtractError("the extracted payload is empty")
    return payload
