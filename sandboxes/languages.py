"""The language table (`languages.toml`) as typed rows."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from typing import Any, Literal

TestCodeAt = Literal["end", "main", "program"]
_AT: tuple[TestCodeAt, ...] = ("end", "main", "program")


class LanguageTableError(ValueError):
    """A row of the language table is malformed."""


@dataclass(frozen=True, slots=True)
class Language:
    name: str
    file: str
    run: tuple[str, ...]
    tools: tuple[str, ...]
    fences: tuple[str, ...]
    build: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    stem: tuple[re.Pattern[str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    ro_paths: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    version: tuple[str, ...] = ()
    unavailable: str | None = None
    address_space_mb: int = 0
    spawns: bool = False
    compile_error: tuple[re.Pattern[str], ...] = ()
    memory_error: tuple[re.Pattern[str], ...] = ()
    assertion_error: tuple[re.Pattern[str], ...] = ()
    test_code_join: str = "\n\n"
    test_code_end: str = ""
    test_code_at: TestCodeAt = "end"
    test_code_build: tuple[str, ...] = ()
    test_code_run: tuple[str, ...] = ()
    stdin_frame: re.Pattern[str] | None = None

    @property
    def compiled(self) -> bool:
        return bool(self.build)

    def stem_of(self, source: str) -> str:
        """The name `{stem}` stands for in this program's file name and commands."""
        for pattern in self.stem:
            found = pattern.search(source)
            if found:
                return found[1]
        return "main"

    def file_name(self, stem: str) -> str:
        return self.file.replace("{stem}", stem)

    def argv(self, template: tuple[str, ...], *, stem: str, memory_mb: int) -> tuple[str, ...]:
        """A command of the table with its placeholders filled, and `env` put in front."""
        filled = [_fill(arg, stem=stem, memory_mb=memory_mb) for arg in template]
        if not self.env:
            return tuple(filled)
        env = [f"{k}={_fill(v, stem=stem, memory_mb=memory_mb)}" for k, v in self.env.items()]
        return ("env", *env, *filled)


def _fill(arg: str, *, stem: str, memory_mb: int) -> str:
    # Plain replacement, not str.format: commands hold braces of their own (awk, shell).
    return arg.replace("{stem}", stem).replace("{memory_mb}", str(memory_mb))


def _strings(row: dict[str, Any], key: str, name: str) -> tuple[str, ...]:
    raw = row.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise LanguageTableError(f"{name}.{key} must be a list of strings")
    return tuple(raw)


def _patterns(row: dict[str, Any], key: str, name: str) -> tuple[re.Pattern[str], ...]:
    try:
        return tuple(re.compile(p) for p in _strings(row, key, name))
    except re.error as exc:
        raise LanguageTableError(f"{name}.{key}: {exc}") from exc


_KNOWN = frozenset(f.name for f in fields(Language)) - {"name"}


def parse_languages(text: str) -> dict[str, Language]:
    table = tomllib.loads(text)
    languages = {}
    for name, row in table.items():
        if not isinstance(row, dict):
            raise LanguageTableError(f"{name} must be a table")
        unknown = set(row) - _KNOWN
        if unknown:
            raise LanguageTableError(f"{name}: unknown fields {sorted(unknown)}")
        if "file" not in row or "run" not in row:
            raise LanguageTableError(f"{name} needs `file` and `run`")
        run = _strings(row, "run", name)
        at = row.get("test_code_at", "end")
        if at not in _AT:
            raise LanguageTableError(f"{name}.test_code_at must be one of {_AT}")
        env, files = row.get("env", {}), row.get("files", {})
        for key, value in (("env", env), ("files", files)):
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise LanguageTableError(f"{name}.{key} must be a table of strings")
        languages[name] = Language(
            name=name,
            file=str(row["file"]),
            run=run,
            tools=_strings(row, "tools", name) or run[:1],
            fences=_strings(row, "fences", name) or (name,),
            build=_strings(row, "build", name),
            artifacts=_strings(row, "artifacts", name),
            stem=_patterns(row, "stem", name),
            env=dict(env),
            files=dict(files),
            ro_paths=_strings(row, "ro_paths", name),
            packages=_strings(row, "packages", name),
            version=_strings(row, "version", name),
            unavailable=row.get("unavailable"),
            address_space_mb=int(row.get("address_space_mb", 0)),
            spawns=bool(row.get("spawns", False)),
            compile_error=_patterns(row, "compile_error", name),
            memory_error=_patterns(row, "memory_error", name),
            assertion_error=_patterns(row, "assertion_error", name),
            test_code_join=row.get("test_code_join", "\n\n"),
            test_code_end=row.get("test_code_end", ""),
            test_code_at=at,
            test_code_build=_strings(row, "test_code_build", name),
            test_code_run=_strings(row, "test_code_run", name),
            stdin_frame=re.compile(row["stdin_frame"], re.M) if "stdin_frame" in row else None,
        )
    return languages


@cache
def languages() -> dict[str, Language]:
    """The table shipped with assay."""
    text = resources.files("assay.sandboxes").joinpath("languages.toml").read_text("utf-8")
    return parse_languages(text)


_versions: dict[tuple[str, ...], str | None] = {}
_versions_lock = threading.Lock()


def toolchain_versions(table: Iterable[Language], path: str) -> dict[str, str | None]:
    """Each language's toolchain version, as its `version` command prints it (first line),
    `None` where it has none or the command fails. Runs the commands (trusted programs of the
    toolchains, on this machine, with `path` as PATH) once per process, in parallel; blocking:
    call it off the event loop."""
    rows = list(table)
    with _versions_lock:
        todo = list(
            {
                row.version: row for row in rows if row.version and row.version not in _versions
            }.values()
        )
        if todo:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for row, found in zip(todo, pool.map(lambda r: _probe(r, path), todo), strict=True):
                    _versions[row.version] = found
        return {row.name: _versions.get(row.version) for row in rows}


def _probe(language: Language, path: str) -> str | None:
    if language.unavailable or shutil.which(language.version[0], path=path) is None:
        return None
    with tempfile.TemporaryDirectory(prefix="assay-version-") as home:
        try:
            done = subprocess.run(
                language.version,
                cwd=home,
                env={"PATH": path, "HOME": home, "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    lines = [line.strip() for line in done.stdout.decode(errors="replace").splitlines()]
    first = next((line for line in lines if line), None)
    return first[:200] if first and done.returncode == 0 else None
