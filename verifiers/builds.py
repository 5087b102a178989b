"""Compile once, run many: a program's build, cached, and the one sandbox start for its runs.

A compiled program is built in a sandbox start of its own, with the compiler's limits (more
memory and time than a test gets), and its artefacts are handed out and kept in the compile
cache. Its runs then go in one sandbox start, with the tests' limits: the memory cgroup of
that start is sized by the tests, not by the compiler. A later copy of the program, in this
batch or another, goes straight to the runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from assay.sandboxes.base import Build, Limits, MultiJob, Run, RunResult, Sandbox
from assay.sandboxes.errors import SandboxError
from assay.verifiers.compile_cache import (
    ARTIFACT_BYTES,
    ArtifactError,
    Built,
    CompileCache,
    build_key,
    collect_argv,
    read_artifacts,
)
from assay.verifiers.programs import Program


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """The compiler's limits (a build is not a test: javac, scalac and ghc need far more)."""

    time_s: float = 60.0
    memory_mb: int = 2048
    file_mb: int = 256


def build_limits(program: Program, settings: BuildSettings) -> Limits:
    extra = program.language.address_space_mb
    return Limits(
        wall_s=settings.time_s,
        cpu_s=settings.time_s * 2,  # parallel compilers (go build) use more than one core
        memory_mb=settings.memory_mb,
        address_space_mb=settings.memory_mb + extra if extra else None,
        processes=128,
        file_mb=settings.file_mb,
        output_bytes=1 << 20,
    )


def _collect_limits(settings: BuildSettings) -> Limits:
    return Limits(wall_s=30.0, memory_mb=256, file_mb=settings.file_mb, output_bytes=ARTIFACT_BYTES)


class BuildFailed(SandboxError):
    """The sandbox did not hand the build's outcome back (the build itself may be fine)."""


async def build(
    sandbox: Sandbox, cache: CompileCache, program: Program, settings: BuildSettings
) -> tuple[Built, bool]:
    """The program's build outcome, and whether it came from the cache (or a copy in flight).
    Raises `SandboxError` when the sandbox fails; nothing is cached then."""
    key = build_key(program.language.name, program.files, program.build)
    found = await cache.claim(key)
    if found is not None:
        return found, True
    try:
        built = await _build(sandbox, program, settings)
    except BaseException:
        cache.abandon(key)
        raise
    cache.put(key, built)
    return built, False


async def _build(sandbox: Sandbox, program: Program, settings: BuildSettings) -> Built:
    # The source goes once the compiler is done, so that no run (a test_code run: the source
    # holds the tests and the token) can read it.
    argv = ("sh", "-c", '"$@" && exec rm -f -- "$0"', program.file, *program.build)
    job = MultiJob(
        argv=collect_argv(program.language.artifacts or ("*",)),
        runs=(Run(limits=_collect_limits(settings)),),
        files=program.files,
        build=Build(argv=argv, limits=build_limits(program, settings)),
        ro_paths=program.language.ro_paths,
    )
    compiled: RunResult | None = None
    archive: RunResult | None = None
    async with contextlib.aclosing(sandbox.run_many(job)) as steps:
        async for step in steps:
            if step.kind == "build":
                compiled = step.result
            else:
                archive = step.result
    if compiled is None:
        raise BuildFailed("the sandbox reported no build step")
    if not compiled.ok:
        limited = compiled.timed_out or compiled.oom_killed
        return Built(error=_compile_error(compiled), keep=not limited)
    if archive is None or not archive.ok:
        why = archive.stderr.decode(errors="replace")[-500:] if archive else "no report"
        raise BuildFailed(f"the build's artefacts could not be handed out: {why}")
    try:
        return read_artifacts(archive.stdout)
    except ArtifactError as exc:
        raise BuildFailed(str(exc)) from exc


def _compile_error(result: RunResult) -> bytes:
    """What the compiler said, or which limit stopped it."""
    if result.timed_out:
        return b"the compiler ran out of time\n" + result.stderr
    if result.oom_killed:
        return b"the compiler ran out of memory\n" + result.stderr
    if result.output_exceeded:
        return b"the compiler printed more than the limit\n" + result.stderr[:4096]
    return result.stderr + result.stdout[:4096]


def run_job(
    program: Program,
    built: Built | None,
    runs: Sequence[Run],
    argv: tuple[str, ...],
    *,
    extra_files: Mapping[str, bytes] | None = None,
) -> MultiJob:
    """The one sandbox start for a program's runs: from its artefacts if it was built, else
    from its source; `extra_files` beside them (a checker's test files)."""
    ro_paths = program.language.ro_paths
    tools = program.language.tools  # a built `./main` runs where its runtime libraries are
    if built is None:
        files: dict[str, str | bytes] = {**program.files, **(extra_files or {})}
        return MultiJob(argv=argv, runs=tuple(runs), files=files, ro_paths=ro_paths, tools=tools)
    # Files come into the sandbox without their modes: a first step makes binaries runnable.
    step = None
    if built.executables:
        names = sorted(built.executables)
        step = Build(argv=("chmod", "+x", "--", *names), limits=Limits(wall_s=10.0, memory_mb=64))
    files = {**built.files, **(extra_files or {})}
    return MultiJob(
        argv=argv, runs=tuple(runs), files=files, build=step, ro_paths=ro_paths, tools=tools
    )
