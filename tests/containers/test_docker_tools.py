"""The verifiers' warm tools on the docker backend, on a real engine: sql workers (SQLite, DuckDB,
PostgreSQL over its socket), svg renderers and Dafny servers, each in a locked-down container
of its tool's image (compose.yaml's `tool-*`, built with the arguments written there), scoring
the same items as on the local backend; and what a hostile query can reach there."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from assay.clients.schema import DafnySpec, LeanSpec, SqlSpec, SvgSpec
from assay.sandboxes.base import Limits, ToolSpec
from assay.sandboxes.docker import DockerSandbox
from assay.sandboxes.errors import SandboxUnavailable
from assay.verifiers.base import Status
from assay.verifiers.sql import SqlVerifier, Target
from tests.containers.engine import build_tool
from tests.verifiers.sql_data import statements
from tests.verifiers.sql_servers import (
    Postgres,
    digest,
    make_duckdb,
    make_sqlite,
    postgres_bin,
    postgres_server,
    shared_dir,
)
from tests.verifiers.test_sql import CASES, ENGINE_LOCKS, _cancelled_count

pytest.importorskip("docker")
pytestmark = pytest.mark.asyncio(loop_scope="module")

SHOP = statements()


@pytest.fixture(scope="module")
def sql_image(engine_url: str) -> str:
    return build_tool(engine_url, "tool-sql")


class Shop:
    def __init__(self, data_dir: Path, duck: Path, server: Postgres | None) -> None:
        self.data_dir, self.duck, self.server = data_dir, duck, server
        self.sqlite = data_dir / "shop" / "shop.sqlite"

    def fingerprints(self) -> dict[str, str]:
        found = {"sqlite": digest(self.sqlite), "duckdb": digest(self.duck)}
        if self.server is not None:
            found["postgres"] = self.server.fingerprint("shop")
        return found


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    data_dir = shared_dir("assay-docker-sql-")
    make_sqlite(data_dir, "shop", SHOP)
    duck_dir = shared_dir("assay-docker-duck-")
    duck = make_duckdb(duck_dir, "shop", SHOP)
    try:
        if postgres_bin() is None:
            yield Shop(data_dir, duck, None)
            return
        with postgres_server() as server:
            server.create("shop", SHOP)
            yield Shop(data_dir, duck, server)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(duck_dir, ignore_errors=True)


async def _sql_judge(
    engine_url: str, sql_image: str, shop: Shop, **options: Any
) -> tuple[SqlVerifier, DockerSandbox]:
    sandbox = DockerSandbox([], base_url=engine_url, tool_images={"sql": sql_image}, **options)
    assert await sandbox.check() is None
    assert sandbox.tool_reason("sql") is None
    verifier = SqlVerifier(
        data_dir=shop.data_dir,
        duckdb={"shop": str(shop.duck)},
        # The whole server, every database by its name, over the socket it listens on.
        postgres_url=(
            f"host={shop.server.sockets} user=assay_reader password=assay-test-reader"
            if shop.server is not None
            else None
        ),
        workers=3,
        worker_memory_mb=512,
        max_rows=5000,
    )
    return verifier, sandbox


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sql_judge(
    engine_url: str, sql_image: str, shop: Shop
) -> AsyncIterator[tuple[SqlVerifier, DockerSandbox]]:
    """Data bound from this machine (the service runs on the engine's machine)."""
    verifier, sandbox = await _sql_judge(engine_url, sql_image, shop)
    yield verifier, sandbox
    await verifier.close()
    await sandbox.close()


async def _score(
    judge: tuple[SqlVerifier, DockerSandbox], completion: str, **spec: Any
) -> tuple[str, float | None, str]:
    verifier, sandbox = judge
    parsed = SqlSpec(**spec)
    reason = verifier.check(parsed, sandbox)
    assert reason is None, reason
    verdict = await verifier.verify(completion, parsed, sandbox)
    return verdict.status.value, verdict.reward, verdict.feedback


def _skip_missing(engine: str, shop: Shop) -> None:
    if engine == "postgres" and shop.server is None:
        pytest.skip("PostgreSQL is not installed (scripts/install test installs it)")


@pytest.mark.parametrize("engine", ["sqlite", "duckdb", "postgres"])
async def test_sql_cases_through_tool_containers(
    sql_judge: tuple[SqlVerifier, DockerSandbox], shop: Shop, engine: str
) -> None:
    """The local backend's table of cases, each engine's worker in a container of assay/sql."""
    _skip_missing(engine, shop)
    got, want, said = {}, {}, {}
    for name, predicted, spec, status, reward in CASES:
        if "expected_rows" in spec:  # as the local backend's test fills it in
            spec = {"expected_rows": [["cancelled", _cancelled_count()]]}
        result = await _score(sql_judge, predicted, database="shop", dialect=engine, **spec)
        got[name], said[name] = result[:2], result[2]
        want[name] = (status, reward)
    assert got == want, {name: said[name] for name in got if got[name] != want[name]}


@pytest.mark.parametrize(
    ("engine", "attack"), [f[1:] for f in ENGINE_LOCKS], ids=[f[0] for f in ENGINE_LOCKS]
)
async def test_each_engine_refuses_writes_in_its_container(
    sql_judge: tuple[SqlVerifier, DockerSandbox], shop: Shop, engine: str, attack: str
) -> None:
    """Past the parse check, on the engine itself: writes, files, extensions all fail, and the
    database is as it was."""
    _skip_missing(engine, shop)
    verifier, sandbox = sql_judge
    before = shop.fingerprints()
    target = verifier.registry.find("shop", engine)
    assert isinstance(target, Target)
    outcome = await verifier.run_query(target, "pred", attack, 5, sandbox)
    assert not outcome.ok
    assert outcome.kind == "error", outcome.error
    assert shop.fingerprints() == before


async def test_setup_sql_databases_are_built_and_queried_in_containers(
    sql_judge: tuple[SqlVerifier, DockerSandbox],
) -> None:
    setup = "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2), (3);"
    for dialect in ("sqlite", "duckdb"):
        status, reward, feedback = await _score(
            sql_judge,
            "SELECT SUM(a) FROM t",
            setup_sql=setup,
            dialect=dialect,
            gold_sql="SELECT 6",
        )
        assert (status, reward) == ("passed", 1.0), (dialect, feedback)


async def test_a_postgres_database_unknown_to_the_server_is_unavailable(
    sql_judge: tuple[SqlVerifier, DockerSandbox], shop: Shop
) -> None:
    _skip_missing("postgres", shop)
    verifier, sandbox = sql_judge
    parsed = SqlSpec(database="nosuch", dialect="postgres", gold_sql="SELECT 1")
    assert verifier.check(parsed, sandbox) is None  # any name may be on the server
    verdict = await verifier.verify("SELECT 1", parsed, sandbox)
    assert verdict.status is Status.UNAVAILABLE
    assert "nosuch" in verdict.feedback


async def test_copied_data_scores_the_same_and_stays_unchanged(
    engine_url: str, sql_image: str, shop: Shop
) -> None:
    """A service whose paths are not the engine's (host_paths=False, not in a container of its
    own): each worker's database is copied into its container, read-only there."""
    verifier, sandbox = await _sql_judge(engine_url, sql_image, shop, host_paths=False)
    try:
        before = shop.fingerprints()
        for engine in ("sqlite", "duckdb"):
            status, reward, feedback = await _score(
                (verifier, sandbox),
                "SELECT COUNT(*) FROM orders",
                database="shop",
                dialect=engine,
                gold_sql="SELECT COUNT(o.id) FROM orders o",
            )
            assert (status, reward) == ("passed", 1.0), (engine, feedback)
        attacks = [a for a in ENGINE_LOCKS if a[1] in ("sqlite", "duckdb")]
        for name, engine, attack in attacks:
            target = verifier.registry.find("shop", engine)
            assert isinstance(target, Target)
            outcome = await verifier.run_query(target, "pred", attack, 5, sandbox)
            assert outcome.kind == "error", (name, outcome.error)
        # The copy too: a later query on the same warm worker finds the data as it was.
        status, reward, _ = await _score(
            (verifier, sandbox),
            "SELECT COUNT(*) FROM orders",
            database="shop",
            dialect="sqlite",
            gold_sql="SELECT COUNT(o.id) FROM orders o",
        )
        assert (status, reward) == ("passed", 1.0)
        assert shop.fingerprints() == before
    finally:
        await verifier.close()
        await sandbox.close()


PROBE = r"""
import json, os, socket, sys
print(json.dumps({"ready": True}), flush=True)
found = {"uid": os.getuid()}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    found["network"] = "reached"
except OSError as exc:
    found["network"] = type(exc).__name__
for path in ("/etc/probe", "/work/probe", sys.argv[1] + "/probe"):
    try:
        open(path, "w").write("x")
        found[path] = "written"
    except OSError as exc:
        found[path] = type(exc).__name__
try:
    open(sys.argv[2], "ab").write(b"x")
    found["data"] = "written"
except OSError as exc:
    found["data"] = type(exc).__name__
found["status"] = {
    k: v.split()[0]
    for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
    if k in ("CapEff", "NoNewPrivs", "Seccomp")
}
print(json.dumps(found), flush=True)
"""


@pytest.mark.parametrize("host_paths", [True, False], ids=["bound", "copied"])
async def test_a_tool_container_is_locked_down_and_goes_with_its_tool(
    engine_url: str, sql_image: str, shop: Shop, host_paths: bool
) -> None:
    """What code in a tool's container could do: no network, nothing written outside its
    tmpfs, its data read-only, no capabilities, no new privileges, a seccomp filter, a uid
    that is not root; and the container is removed with the tool."""
    import json

    sandbox = DockerSandbox([], base_url=engine_url, tool_images={"sql": sql_image})
    sandbox.host_paths = host_paths
    assert await sandbox.check() is None
    folder = str(shop.sqlite.parent)
    spec = ToolSpec(
        argv=("python3", "probe.py", folder, str(shop.sqlite)),
        files={"probe.py": PROBE},
        limits=Limits(memory_mb=256, processes=8, file_mb=8),
        tool="sql",
        data=(folder,),
    )
    before = shop.fingerprints()
    try:
        tool = await sandbox.spawn(spec)
        assert await tool.stdout.readline() == b'{"ready": true}\n'
        line = await tool.stdout.readline()
        assert line, tool.stderr_tail()
        found = json.loads(line)
        assert found["uid"] != 0
        assert found["network"] != "reached"
        assert found["/etc/probe"] != "written"
        assert found["/work/probe"] == "written"  # its own tmpfs
        if host_paths:
            assert found[folder + "/probe"] != "written"
        # else: the copy's folder is a tmpfs of that container's own, its files read-only
        assert found["data"] != "written"
        assert found["status"] == {"CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
        (container,) = list(sandbox._live)
        config = container.container.attrs["HostConfig"]
        assert config["ReadonlyRootfs"] is True
        assert config["NetworkMode"] == "none"
        assert config["Memory"] > 0
        assert config["PidsLimit"] > 0
        name = container.container.name
        await tool.close()
        import docker

        client = docker.DockerClient(base_url=engine_url)
        try:
            with pytest.raises(docker.errors.NotFound):
                client.containers.get(name)
        finally:
            client.close()
        assert shop.fingerprints() == before
    finally:
        await sandbox.close()


async def test_a_tool_without_an_image_is_unavailable_and_says_why(
    engine_url: str, sql_image: str
) -> None:
    sandbox = DockerSandbox(
        [], base_url=engine_url, tool_images={"sql": sql_image, "svg": "localhost/assay-none:0"}
    )
    try:
        assert await sandbox.check() is None
        svg_reason = sandbox.tool_reason("svg")
        assert svg_reason is not None
        assert "not built" in svg_reason
        lean_reason = sandbox.tool_reason("lean")
        assert lean_reason is not None
        assert "elan" in lean_reason
        with pytest.raises(SandboxUnavailable):
            await sandbox.spawn(ToolSpec(argv=("true",), tool="svg"))
        # The lean verifier says so, rather than that its REPL is missing here.
        from assay.verifiers.lean import LeanVerifier, ReplBackend

        lean = LeanVerifier(
            ReplBackend(
                command=("repl",),
                project_dir=None,
                ro_paths=(),
                env={},
                pool_size=1,
                memory_mb=1024,
                memory_ceiling_mb=2048,
                max_proofs=10,
                start_timeout_s=10,
                check_timeout_s=10,
                kernel_replay=False,
            )
        )
        reason = lean.check(LeanSpec(), sandbox)
        assert reason == lean_reason
    finally:
        await sandbox.close()


# -- svg -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svg_image(engine_url: str) -> str:
    return build_tool(engine_url, "tool-svg")


async def test_svg_items_through_renderer_containers(engine_url: str, svg_image: str) -> None:
    pytest.importorskip("torch")
    from assay.verifiers.svg import SvgVerifier
    from tests.verifiers.test_svg import ATTACKS, BLANK, ICONS, MISSING

    sandbox = DockerSandbox([], base_url=engine_url, tool_images={"svg": svg_image})
    verifier = SvgVerifier(workers=1)
    try:
        assert await sandbox.check() is None
        icon = ICONS["star"]
        spec = SvgSpec(reference_svg=icon, time_limit_s=5)
        assert verifier.check(spec, sandbox) is None
        same = await verifier.verify(icon, spec, sandbox)
        assert (same.status, same.reward is not None and same.reward >= 0.99) == (
            Status.PASSED,
            True,
        ), same
        part, replacement = MISSING["star"]
        worse = await verifier.verify(icon.replace(part, replacement), spec, sandbox)
        assert worse.reward is not None
        assert 0.0 < worse.reward <= same.reward - 0.05  # type: ignore[operator]
        blank = await verifier.verify(BLANK, spec, sandbox)
        assert (blank.status, blank.reward) == (Status.FAILED, 0.0)
        script = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        forbidden = await verifier.verify(script, spec, sandbox)
        assert forbidden.status is Status.FORBIDDEN
        # A render that runs out of time or memory costs its container; the next one renders.
        for name in ("use_bomb", "huge_pattern"):
            payload, status = ATTACKS[name]
            verdict = await verifier.verify(payload, spec, sandbox)
            assert verdict.status is status, (name, verdict)
            after = await verifier.verify(icon, spec, sandbox)
            assert after.status is Status.PASSED
    finally:
        await verifier.close()
        await sandbox.close()


# -- dafny -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dafny_image(engine_url: str) -> str:
    return build_tool(engine_url, "tool-dafny")


async def test_dafny_items_through_server_containers(engine_url: str, dafny_image: str) -> None:
    from assay.verifiers.dafny import DafnyVerifier
    from tests.verifiers.test_dafny import ABS

    sandbox = DockerSandbox([], base_url=engine_url, tool_images={"dafny": dafny_image})
    # Dafny is in the image, not on the service's machine: its version is given (compose.yaml).
    verifier = DafnyVerifier("/usr/lib/dafny", version="2.3.0", servers=1)
    try:
        assert await sandbox.check() is None
        spec = DafnySpec(timeout_s=60)
        assert verifier.check(spec, sandbox) is None
        cases = {
            "verifies": (ABS, Status.PASSED),
            "wrong": (ABS.replace("y := -x;", "y := x;"), Status.FAILED),
            "syntax": (ABS.replace("returns (y: int)", "returns (y: int"), Status.COMPILE_ERROR),
        }
        for name, (program, status) in cases.items():
            verdict = await verifier.verify(program, spec, sandbox)
            assert verdict.status is status, (name, verdict.feedback)
    finally:
        await verifier.close()
        await sandbox.close()
