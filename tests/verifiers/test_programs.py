"""Where the token goes in each language's test code, and the language table's parser."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from assay.sandboxes.languages import LanguageTableError, languages, parse_languages
from assay.verifiers import programs
from assay.verifiers.compile_cache import Built, CompileCache, read_artifacts
from tests.conftest import needs_bwrap

TABLE = languages()


def program(language: str, payload: str, tests: str) -> tuple[str, str]:
    made = programs.test_code_program(TABLE[language], payload, tests, build_memory_mb=1024)
    assert made.token is not None
    return made.source, made.token


def test_token_goes_before_the_end_of_main_not_into_strings_or_comments() -> None:
    tests = (
        "int main() {\n"
        '    const char *s = "}"; // } a brace in a comment\n'
        "    char c = '}';\n"
        "    assert(add(1, 2) == 3);\n"
        "    return 0;\n"
        "}\n"
    )
    source, token = program("cpp", "int add(int a, int b) { return a + b; }", tests)
    body = source[source.index("int main()") :]
    # After the last assert, before `return 0;` (which would end main first).
    assert body.index("assert(add") < body.index(token) < body.index("return 0;")


def test_token_in_javas_main_not_after_the_class() -> None:
    payload = "class Problem {\n    static int add(int a, int b) { return a + b; }\n"
    tests = (
        "    public static void main(String[] args) {\n        assert(add(1, 2) == 3);\n    }\n}\n"
    )
    source, token = program("java", payload, tests)
    assert source.index("assert(add") < source.index(token)
    assert source[source.index(token) :].count("}") == 2  # main's and the class's
    made = programs.test_code_program(TABLE["java"], payload, tests, build_memory_mb=1024)
    assert (made.stem, made.file) == ("Problem", "Problem.java")


def test_token_before_fortrans_end_program_and_in_haskells_wrapper() -> None:
    tests = "program test\n  if (add(1, 2) /= 3) error stop 1\nend program test\n"
    source, token = program("fortran", "module m\nend module m\n", tests)
    assert source.index("error stop") < source.index(token) < source.index("end program test")
    haskell = programs.test_code_program(
        TABLE["haskell"], "add a b = a + b", "main = print (add 1 2)", build_memory_mb=1024
    )
    assert "assayMain = main >> putStrLn" in haskell.source
    assert "-main-is" in haskell.build


def test_test_code_without_main_is_a_spec_error() -> None:
    with pytest.raises(programs.TestCodePlacementError, match="main"):
        program("cpp", "int add(int a, int b);", "static_assert(true);\n")


def test_token_is_secret_but_the_same_for_the_same_program() -> None:
    language = TABLE["python"]
    assert programs.token_for(language, "x = 1", "assert x") == programs.token_for(
        language, "x = 1", "assert x"
    )
    assert programs.token_for(language, "x = 1", "assert x") != programs.token_for(
        language, "x = 2", "assert x"
    )


def test_table_rows_are_checked() -> None:
    with pytest.raises(LanguageTableError, match="needs `file` and `run`"):
        parse_languages('[x]\nfile = "a"\n')
    with pytest.raises(LanguageTableError, match="unknown fields"):
        parse_languages('[x]\nfile = "a"\nrun = ["a"]\ncompiler = ["cc"]\n')
    with pytest.raises(LanguageTableError, match="test_code_at"):
        parse_languages('[x]\nfile = "a"\nrun = ["a"]\ntest_code_at = "middle"\n')
    row = parse_languages('[x]\nfile = "{stem}.k"\nrun = ["k", "-m{memory_mb}", "{stem}"]\n')["x"]
    assert row.argv(row.run, stem="Main", memory_mb=64) == ("k", "-m64", "Main")
    assert row.tools == ("k",)


def test_every_row_of_the_shipped_table() -> None:
    assert len(TABLE) >= 22
    for name, row in TABLE.items():
        assert row.fences, name
        assert row.unavailable or row.packages, f"{name}: which Debian packages?"
        assert row.version, name
        if row.compiled:
            assert row.artifacts, f"{name}: what does the build leave for the runs?"


def test_artifacts_must_be_plain_files() -> None:
    import io
    import tarfile

    def tar(*members: tarfile.TarInfo) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            for member in members:
                archive.addfile(member, io.BytesIO(b"x" * member.size))
        return out.getvalue()

    good = tarfile.TarInfo("main")
    good.size, good.mode = 1, 0o755
    assert read_artifacts(tar(good)).executables == frozenset({"main"})
    escaping = tarfile.TarInfo("../main")
    escaping.size = 1
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for bad in (escaping, link):
        with pytest.raises(ValueError, match="unexpected entry"):
            read_artifacts(tar(bad))


async def test_compile_cache_is_bounded_and_shares_builds_in_flight() -> None:
    cache = CompileCache(max_bytes=1000)
    assert await cache.claim("a") is None  # this caller builds "a"
    waiting = [cache.claim("a") for _ in range(3)]
    cache.put("a", Built(files={"main": b"x" * 300}))
    assert all(found is not None for found in [await w for w in waiting])
    assert cache.builds == 1
    assert await cache.claim("b") is None
    cache.put("b", Built(files={"main": b"y" * 600}))
    assert cache.get("a") is None  # pushed out: the cache holds at most 1,000 bytes
    assert cache.get("b") is not None
    assert await cache.claim("c") is None
    cache.abandon("c")  # a build that failed to finish: the next copy builds
    assert await cache.claim("c") is None
    assert cache.builds == 4
    # A compiler stopped by a limit may do better on a quieter machine: not kept.
    cache.put("c", Built(error=b"the compiler ran out of time", keep=False))
    assert cache.get("c") is None


@needs_bwrap
def test_assay_verifiers_lists_languages_with_versions() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "assay.clients.cli", "verifiers", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listing = json.loads(done.stdout)
    (code,) = [v for v in listing["verifiers"] if v["name"] == "code"]
    found = code["facts"]["languages"]
    assert set(found) == set(TABLE)
    assert found["julia"]["available"] is False
    assert found["python"]["version"].startswith("Python 3")
    text = subprocess.run(
        [sys.executable, "-m", "assay.clients.cli", "verifiers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "  python: yes (Python 3" in text
    assert "  julia: no: julia: Debian 12 has no Julia package" in text
