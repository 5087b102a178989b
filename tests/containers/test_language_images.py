"""Every language image of compose.yaml runs every language it claims, through the docker
backend: the language tests' table (right, wrong, compile error, crash, time-out, memory hog,
test code) on the image's own toolchain.

An image claims the languages whose Debian packages (the language table's `packages`) it is the
first of compose.yaml's images to install: the docker backend sends a job to the first image
that has its programs, and compose.yaml lists the images in `ASSAY_DOCKER_IMAGES`'s order.
The big images are not built in CI (minutes each, GBs: docs/containers.md): these tests run
where the image is already built (`docker compose build lang-jvm`, or the command in
docs/containers.md) and skip, saying so, where it is not. What always runs: every available
language of the table is claimed by one image.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import yaml

from assay.clients.schema import CodeSpec
from assay.sandboxes.docker import DockerSandbox
from assay.sandboxes.languages import languages
from assay.verifiers import CodeVerifier, Status
from tests.containers.engine import ROOT
from tests.verifiers.language_programs import PROGRAMS

pytest.importorskip("docker")


def images() -> dict[str, set[str]]:
    """compose.yaml's language images, in its order, with the Debian packages of each (the
    toolchain Dockerfile installs python3 in every one, for the runner)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    found: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        if name.startswith("lang-"):
            packages = str(service["build"]["args"].get("PACKAGES") or "")
            found[service["image"]] = {"python3", *packages.split()}
    return found


def claims() -> dict[str, str]:
    """Each available language of the table: the image that serves it."""
    table = languages()
    owner: dict[str, str] = {}
    for language, row in table.items():
        if row.unavailable is not None:
            continue
        for image, packages in images().items():
            if set(row.packages) <= packages:
                owner[language] = image
                break
    return owner


def test_every_available_language_has_an_image() -> None:
    table = languages()
    available = {name for name, row in table.items() if row.unavailable is None}
    assert set(claims()) == available
    # compose.yaml's default ASSAY_DOCKER_IMAGES lists them all, in the same order.
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    default = compose["services"]["assay"]["environment"]["ASSAY_DOCKER_IMAGES"]
    assert json.loads(default.split(":-", 1)[1].removesuffix("}")) == list(images())


def _built(url: str, image: str) -> bool:
    import docker

    with contextlib.closing(docker.DockerClient(base_url=url, timeout=60)) as client:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
    return True


SUM_TESTS = [
    {"stdin": "sum 1 2\n", "expected_stdout": "3\n"},
    {"stdin": "sum 10 -4\n", "expected_stdout": "6\n"},
]
NO_ASSERTS = {"bash", "perl", "haskell"}  # as in tests/verifiers/test_languages.py


@pytest.mark.parametrize(("language", "image"), sorted(claims().items()))
async def test_language_in_its_image(engine_url: str, language: str, image: str) -> None:
    if not _built(engine_url, image):
        pytest.skip(f"{image} is not built here (docs/containers.md: building the images)")
    # The image alone: the job cannot fall through to another image's toolchain.
    sandbox = DockerSandbox([image], base_url=engine_url, containers_per_image=2)
    try:
        assert await sandbox.check() is None
        verifier = CodeVerifier()
        programs = PROGRAMS[language]
        io = {"tests": SUM_TESTS, "time_limit_s": 10}
        cases: dict[str, tuple[str, dict[str, Any], Status]] = {
            "correct": (programs["main"], io, Status.PASSED),
            "wrong": (programs["wrong"], io, Status.FAILED),
            "compile_error": (programs["broken"], io, Status.COMPILE_ERROR),
            "crash": (
                programs["main"],
                {"tests": [{"stdin": "crash\n", "expected_stdout": ""}], "time_limit_s": 10},
                Status.RUNTIME_ERROR,
            ),
            "loop": (
                programs["main"],
                {"tests": [{"stdin": "loop\n", "expected_stdout": ""}], "time_limit_s": 2},
                Status.TIMEOUT,
            ),
            "hog": (
                programs["main"],
                {
                    "tests": [{"stdin": "hog\n", "expected_stdout": ""}],
                    "memory_mb": 200,
                    "time_limit_s": 20,
                },
                Status.MEMORY_LIMIT,
            ),
            "test_code_passes": (
                programs["add_ok"],
                {"test_code": programs["test_code"], "time_limit_s": 10},
                Status.PASSED,
            ),
            "test_code_fails": (
                programs["add_bad"],
                {"test_code": programs["test_code"], "time_limit_s": 10},
                Status.RUNTIME_ERROR if language in NO_ASSERTS else Status.FAILED,
            ),
        }

        async def judge(payload: str, spec: dict[str, Any]) -> tuple[Status, str]:
            parsed = CodeSpec.model_validate({"language": language, **spec})
            assert verifier.check(parsed, sandbox) is None
            verdict = await verifier.verify(payload, parsed, sandbox)
            return verdict.status, verdict.feedback

        got = await asyncio.gather(*(judge(p, s) for p, s, _ in cases.values()))
        seen = {name: status for name, (status, _) in zip(cases, got, strict=True)}
        expected = {name: status for name, (_, _, status) in cases.items()}
        feedback = {name: why for name, (_, why) in zip(cases, got, strict=True)}
        assert seen == expected, feedback
    finally:
        await sandbox.close()


async def test_every_language_through_compose_default_images(engine_url: str) -> None:
    """All of compose.yaml's images at once, in its order: each language's program reaches an
    image that has its toolchain (the first whose PATH has every program its commands name)
    and passes."""
    wanted = list(images())
    missing = [image for image in wanted if not _built(engine_url, image)]
    if missing:
        pytest.skip(f"not built here: {', '.join(missing)} (docs/containers.md)")
    sandbox = DockerSandbox(wanted, base_url=engine_url, containers_per_image=1)
    try:
        assert await sandbox.check() is None
        verifier = CodeVerifier()

        async def judge(language: str) -> tuple[Status, str]:
            spec = CodeSpec.model_validate(
                {"language": language, "tests": SUM_TESTS, "time_limit_s": 10}
            )
            assert verifier.check(spec, sandbox) is None
            verdict = await verifier.verify(PROGRAMS[language]["main"], spec, sandbox)
            return verdict.status, verdict.feedback

        languages_ = sorted(claims())
        got = dict(zip(languages_, await asyncio.gather(*map(judge, languages_)), strict=True))
        assert {name: status for name, (status, _) in got.items()} == dict.fromkeys(
            languages_, Status.PASSED
        ), got
    finally:
        await sandbox.close()


@pytest.mark.parametrize("language", ["fortran", "d", "haskell", "c"])
def test_a_built_program_runs_where_its_toolchain_is(language: str) -> None:
    """The run job of a built program (`./main`, named by no toolchain program) goes to the
    image of its compiler, whose runtime libraries it links (libgfortran, phobos, libgmp);
    the first image would do for its commands alone. No engine needed: the images' programs
    are given as the sandbox would list them."""
    from assay.verifiers.builds import run_job
    from assay.verifiers.compile_cache import Built
    from assay.verifiers.programs import io_program

    table = languages()[language]
    sandbox = DockerSandbox(["first", "toolchain"])
    base = {"python3", "sh", "chmod", "env"}
    sandbox._tools = {"first": base, "toolchain": base | set(table.tools)}
    program = io_program(table, PROGRAMS[language]["main"], build_memory_mb=512)
    built = Built(files={"main": b"\x7fELF"}, executables=frozenset({"main"}))
    job = run_job(program, built, [], program.run_argv(256))
    assert sandbox._image_for_many(job) == "toolchain"
