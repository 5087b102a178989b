"""The language table (`languages.toml`) as typed rows."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Language:
    name: str
    file: str
    run: tuple[str, ...]
    tools: tuple[str, ...]
    fences: tuple[str, ...]
    compile_error: tuple[re.Pattern[str], ...] = ()
    memory_error: tuple[re.Pattern[str], ...] = ()
    assertion_error: tuple[re.Pattern[str], ...] = ()
    test_code_join: str = "\n\n"
    test_code_end: str = ""
    test_code_run: tuple[str, ...] = ()
    stdin_frame: re.Pattern[str] | None = None


def _patterns(row: dict[str, object], key: str) -> tuple[re.Pattern[str], ...]:
    raw = row.get(key, [])
    assert isinstance(raw, list)
    return tuple(re.compile(str(p)) for p in raw)


def parse_languages(text: str) -> dict[str, Language]:
    table = tomllib.loads(text)
    languages = {}
    for name, row in table.items():
        languages[name] = Language(
            name=name,
            file=row["file"],
            run=tuple(row["run"]),
            tools=tuple(row.get("tools", [row["run"][0]])),
            fences=tuple(row.get("fences", [name])),
            compile_error=_patterns(row, "compile_error"),
            memory_error=_patterns(row, "memory_error"),
            assertion_error=_patterns(row, "assertion_error"),
            test_code_join=row.get("test_code_join", "\n\n"),
            test_code_end=row.get("test_code_end", ""),
            test_code_run=tuple(row.get("test_code_run", [])),
            stdin_frame=re.compile(row["stdin_frame"], re.M) if "stdin_frame" in row else None,
        )
    return languages


@cache
def languages() -> dict[str, Language]:
    """The table shipped with assay."""
    text = resources.files("assay.sandboxes").joinpath("languages.toml").read_text("utf-8")
    return parse_languages(text)
