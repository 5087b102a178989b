"""Compiled programs kept by the service, so that a program is compiled once.

A build's outcome is keyed by (language, source, build command, support files): either the
artefacts the runs need (a binary, class files: taken out of the sandbox as a tar archive on
the stdout of a step after the build) or the compile error. The same program in a later batch,
or a GRPO group's copies with other tests, starts from the artefacts, with no compiler. Copies
in flight at once wait for the first one's build instead of compiling beside it.

The cache is bounded by the bytes it holds (least recently used out first). Artefacts are
untrusted bytes made in the sandbox from the key's own source; they only ever go back into a
sandbox, for the same source, so a program can spoil nothing but its own cache entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

# The largest archive of artefacts taken out of a sandbox (a static Go binary is ~2 MB).
ARTIFACT_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Built:
    """A build's outcome: artefacts to run, or the compiler's error output."""

    files: Mapping[str, bytes] = field(default_factory=dict)
    executables: frozenset[str] = frozenset()
    error: bytes | None = None
    """The compiler's stderr when the build failed (a compile error is as repeatable)."""
    keep: bool = True
    """False for an outcome that may not repeat (the compiler ran out of time or memory on a
    busy machine): it answers the copies waiting for it, and is not kept."""

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.files.values()) + len(self.error or b"") + 256


def build_key(language: str, files: Mapping[str, str], build: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in (language, *build, "\0", *(f"{k}\0{v}" for k, v in sorted(files.items()))):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def collect_argv(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The step that hands the build's artefacts out: a tar archive of them on stdout. The
    shell expands the patterns; one that matches nothing is an error (the build is broken)."""
    names = " ".join(_quote_pattern(p) for p in patterns)
    return ("sh", "-c", f"exec tar -cf - --no-recursion -- {names}")


def _quote_pattern(pattern: str) -> str:
    # Patterns come from the language table, not from programs; keep the shell's `*`, `?` and
    # `[...]`, quote the rest.
    return "".join(c if c.isalnum() or c in "*?[]._-" else "\\" + c for c in pattern)


class ArtifactError(ValueError):
    """The archive a build handed out is not what a build should make."""


def read_artifacts(archive: bytes) -> Built:
    """The files of a tar archive made by `collect_argv`: plain files with plain names."""
    files: dict[str, bytes] = {}
    executables: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or "/" in name or name in ("", ".", ".."):
                    raise ArtifactError(f"unexpected entry {name!r} in the build's artefacts")
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[name] = extracted.read()
                if member.mode & 0o100:
                    executables.add(name)
    except tarfile.TarError as exc:
        raise ArtifactError(f"the build's artefacts are not a tar archive: {exc}") from exc
    if not files:
        raise ArtifactError("the build made no artefacts")
    return Built(files=files, executables=frozenset(executables))


class CompileCache:
    """Build outcomes by key, at most `max_bytes` of them (0 keeps nothing, but copies in
    flight at once still share one build)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Built] = OrderedDict()
        self._bytes = 0
        self._pending: dict[str, asyncio.Future[Built | None]] = {}
        self.builds = 0
        """Builds started (compiles) since this cache was made: what the benchmark counts."""
        self.hits = 0

    def get(self, key: str) -> Built | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return found

    async def claim(self, key: str) -> Built | None:
        """The outcome if known (now, or once a copy in flight has built it); `None`: the
        caller builds, and must `put` or `abandon` the key."""
        while True:
            found = self.get(key)
            if found is not None:
                return found
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = asyncio.get_running_loop().create_future()
                self.builds += 1
                return None
            result = await asyncio.shield(pending)
            if result is not None:
                self.hits += 1
                return result
            # The builder gave up (its item was cancelled, the sandbox failed): try again.

    def put(self, key: str, built: Built) -> None:
        self._settle(key, built)
        if built.size > self.max_bytes or not built.keep:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = built
        self._bytes += built.size
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size

    def abandon(self, key: str) -> None:
        """The build of a claimed key did not finish: let a waiting copy build it."""
        self._settle(key, None)

    def _settle(self, key: str, built: Built | None) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(built)

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes
