"""A program of a table language made ready to build and run: its file, its commands, and,
for `test_code` items, the test code put in with the token that proves it ran to its end.

The token (the spine's idea, per language): a statement printing a secret after the test code,
so that a program which exits with status 0 before its tests never prints it. Languages with
top-level statements get it appended; languages whose tests are a `main` function get it put
before the closing brace of that function (C, C++, Java, Go, Rust, C#, D, Scala), before the
closing `end program` (Fortran), or in a wrapper `main` (Haskell). The token is an HMAC of
the program under a secret of this process: unguessable to the program, and the same for the
same program, so that a GRPO group's copies share one compile.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from assay.sandboxes.languages import Language

_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class Program:
    """What the sandbox gets for one item."""

    language: Language
    source: str
    stem: str
    file: str
    build: tuple[str, ...]
    """The build command with its placeholders filled (empty for interpreted languages)."""
    token: str | None = None
    support: dict[str, str] = field(default_factory=dict)
    """Files beside the source for the build (a checker's `testlib.h`)."""

    @property
    def files(self) -> dict[str, str]:
        return {**self.support, **self.language.files, self.file: self.source}

    def run_argv(self, memory_mb: int, *, test_code: bool = False) -> tuple[str, ...]:
        template = (
            self.language.test_code_run
            if test_code and self.language.test_code_run
            else self.language.run
        )
        return self.language.argv(template, stem=self.stem, memory_mb=memory_mb)

    @property
    def reads_stdin(self) -> bool:
        """Whether test_code runs feed the program on stdin (no file holds it)."""
        return bool(self.language.test_code_run) and not self.language.compiled


class TestCodePlacementError(ValueError):
    """The test code has no place for the token (no `main` function, no `end program`)."""


def io_program(
    language: Language,
    payload: str,
    *,
    build_memory_mb: int,
    support: dict[str, str] | None = None,
) -> Program:
    stem = language.stem_of(payload)
    return Program(
        language=language,
        source=payload,
        stem=stem,
        file=language.file_name(stem),
        build=language.argv(language.build, stem=stem, memory_mb=build_memory_mb),
        support=dict(support or {}),
    )


def token_for(language: Language, payload: str, test_code: str) -> str:
    message = "\0".join((language.name, payload, test_code)).encode()
    return hmac.new(_SECRET, message, hashlib.sha256).hexdigest()[:32]


def test_code_program(
    language: Language, payload: str, test_code: str, *, build_memory_mb: int
) -> Program:
    """The program with the test code put in, and the token's print after it. Raises
    `TestCodePlacementError` if the test code has no place the language's token can go."""
    token = token_for(language, payload, test_code)
    end = language.test_code_end.replace("{token}", token)
    tests = test_code
    if end and language.test_code_at == "main":
        tests = _before_main_end(test_code, end)
    elif end and language.test_code_at == "program":
        tests = _before_end_program(test_code, end)
    elif end:
        tests = test_code + end
    source = payload.rstrip("\n") + language.test_code_join + tests
    stem = language.stem_of(source)
    build = language.test_code_build or language.build
    return Program(
        language=language,
        source=source,
        stem=stem,
        file=language.file_name(stem),
        build=language.argv(build, stem=stem, memory_mb=build_memory_mb),
        token=token if end else None,
    )


# Where a `main` function of a C-family language starts: `main(` after a type or `fn`/`func`
# or `def`, or Java's and C#'s `static void Main(`.
_MAIN = re.compile(r"\b(?:main|Main)\s*\(")


def _code_mask(text: str) -> list[bool]:
    """For each character, whether it is code (not inside a string, a char literal or a
    comment), C-family style: enough to match the braces of a test `main`."""
    mask = [True] * len(text)
    i, n = 0, len(text)
    while i < n:
        two = text[i : i + 2]
        if two == "//":
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif two == "/*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif text[i] == '"' or (text[i] == "'" and _char_literal(text, i)):
            quote, j = text[i], i + 1
            while j < n and text[j] != quote:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            i += 1
            continue
        for k in range(i, j):
            mask[k] = False
        i = j
    return mask


def _char_literal(text: str, i: int) -> bool:
    """A `'` that opens a char literal ('a', '\\n'), not a Rust lifetime or a Scala symbol."""
    return bool(re.match(r"'(?:\\.[^']*|[^'\\\n])'", text[i : i + 12]))


def _before_main_end(tests: str, end: str) -> str:
    mask = _code_mask(tests)
    starts = [m.start() for m in _MAIN.finditer(tests) if mask[m.start()]]
    # Each start's first `{` or `;` is looked for only up to the later start, whose own is the
    # answer past it: every character is read once (`main(main(main(...` was n²).
    later_start, later_opening = len(tests), -1
    for start in reversed(starts):
        opening = next(
            (i for i in range(start, later_start) if mask[i] and tests[i] in "{;"), later_opening
        )
        later_start, later_opening = start, opening
        if opening < 0 or tests[opening] != "{":
            continue  # a call or a declaration, not a definition
        depth = 0
        for i in range(opening, len(tests)):
            if not mask[i]:
                continue
            if tests[i] == "{":
                depth += 1
            elif tests[i] == "}":
                depth -= 1
                if depth == 0:
                    return _insert_before_return(tests, opening, i, end)
        break
    raise TestCodePlacementError(
        "the test code has no `main` function to run after (the language's tests are a main)"
    )


# A last `return 0;` (C, C++) ends main before the token; the token goes before it.
# (One `\s*` before the optional value, not two around it: two split a run of blanks every way,
# n² per `return`.)
_LAST_RETURN = re.compile(r"return\s*(?:(?:0|EXIT_SUCCESS)\s*)?;\s*$")


def _insert_before_return(tests: str, opening: int, closing: int, end: str) -> str:
    body = tests[opening + 1 : closing]
    last = _LAST_RETURN.search(body)
    at = opening + 1 + last.start() if last else closing
    return f"{tests[:at]}\n{end}\n{tests[at:]}"


# Blanks, not `\s`, around `end`: `\s*` at each line start ran over every later blank line,
# n² for a test code of blank lines.
_END_PROGRAM = re.compile(r"(?im)^[ \t]*end[ \t]*(?:program\b.*)?$")


def _before_end_program(tests: str, end: str) -> str:
    found = list(_END_PROGRAM.finditer(tests))
    if not found:
        raise TestCodePlacementError("the test code has no `end program` to run before")
    at = found[-1].start()
    return f"{tests[:at]}\n{end}\n{tests[at:]}"
