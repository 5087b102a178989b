"""The `sql` verifier: execution accuracy of a predicted query against a gold query's result.

What is checked (API.md, sql spec; DOMAINS.md, SQL):
- The prediction is parsed by sqlglot in its dialect (transpiled when `transpile_from` says it
  was written for another) and must be exactly one read-only statement, the whole parse tree
  walked (`sql_safety.py`): else `forbidden`; unreadable SQL is `compile_error`.
- It runs in a sandboxed database worker (`sql_worker.py`, kept warm in a `WorkerPool` per
  database) on a connection of its own, never the gold's, locked down by the engine itself:
  SQLite read-only and immutable with an authorizer that allows only reading, no ATTACH, capped
  value sizes, a progress-handler deadline; DuckDB read-only without external access, its
  configuration locked, memory and threads capped, interrupted at the deadline; PostgreSQL in a
  READ ONLY transaction that is rolled back, with a statement timeout and capped work memory.
  The worker's memory is bounded by the sandbox: a runaway query costs one worker.
- Its rows are compared with the gold query's (run once per database and gold query, then
  cached) or with `expected_rows` (`sql_rows.py`): BIRD's `set` or a `multiset`, in order only
  when the gold's outermost SELECT has ORDER BY (Spider), optionally up to column order
  (Spider's test suite), numbers within `float_tol`.
- With `databases` (a Spider-style test suite) it must match on every one.

Reward: 1.0 for a match, else 0.0. An empty gold result is flagged in `details`; with
`empty_gold: "zero"` (or that server default) an empty match earns 0, since on tiny databases
an empty result matches many wrong queries (SQL-R1 issue 28).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from assay.clients.schema import SqlSpec
from assay.sandboxes.base import (
    Limits,
    Sandbox,
    ToolProcess,
    ToolSpec,
    exit_status,
    killed_from_outside,
)
from assay.sandboxes.errors import SandboxError
from assay.sandboxes.pool import WorkerPool
from assay.verifiers.base import Status, Verdict, clip
from assay.verifiers.sql_rows import Mismatch, Row, compare_rows, normal_rows
from assay.verifiers.sql_safety import Forbidden, ParseFailed, check_prediction, gold_ordered

log = logging.getLogger(__name__)

ENGINES = ("sqlite", "duckdb", "postgres")
PYTHON = "/usr/bin/python3"  # Debian's: the same 3.11 ABI as the venv whose packages it imports
_WORKER_SOURCE = Path(__file__).with_name("sql_worker.py")
_DB_ID = re.compile(r"^[\w.-]{1,200}$")
FIXTURE_BYTES = 8 << 20
"""The largest database a `setup_sql` may build: it comes back to the service whole, as one
line of base64, and is kept (per distinct setup) in the service's temp dir."""
MAX_CHARS = 100_000
"""The longest predicted query judged: sqlglot parses it in the service (3 to 4 ms of CPU per
1,000 characters of hostile text, bench/service_cost.py); BIRD's and Spider's gold queries
are under 2,000."""
_GRACE_S = 5.0  # past a query's own deadline, before its worker is given up for stuck
_SHOWN = 200  # characters of a row shown in feedback
_MODULES = {"duckdb": ("duckdb",), "postgres": ("psycopg", "psycopg_binary")}


@dataclass(frozen=True, slots=True)
class Target:
    """One database a query can run on."""

    name: str
    engine: str
    location: str  # a file, or a libpq DSN over a Unix socket
    ro_paths: tuple[str, ...]  # what the worker reads: the file's folder, the socket's


class Outcome:
    """What running one query gave: columns and rows, or an error of a kind."""

    __slots__ = ("columns", "error", "kind", "rows")

    def __init__(
        self,
        rows: list[Row] | None = None,
        columns: list[str] | None = None,
        kind: str = "",
        error: str = "",
    ) -> None:
        self.rows, self.columns, self.kind, self.error = rows, columns or [], kind, error

    @property
    def ok(self) -> bool:
        return self.rows is not None


class _Stuck(Exception):
    """A worker did not answer within the query's deadline (plus grace)."""


class _Died(Exception):
    """A worker's process ended mid-request."""


class _Garbled(Exception):
    """A worker's answer could not be read."""


class _Lost(Exception):
    """A worker given up on (stuck or dead), with what the query is taken to have given."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class _Worker:
    """A sandboxed `sql_worker.py` serving one database over its stdin/stdout."""

    def __init__(self, tool: ToolProcess) -> None:
        self.tool = tool

    async def ask(self, request: dict[str, Any], wait_s: float) -> dict[str, Any]:
        try:
            self.tool.stdin.write(json.dumps(request).encode() + b"\n")
            await self.tool.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise _Died() from None
        try:
            async with asyncio.timeout(wait_s):
                line = await self.tool.stdout.readline()
        except TimeoutError:
            raise _Stuck() from None
        except ValueError:  # a line over the pipe's limit: the worker is given up
            raise _Garbled("the result is too large to pass back") from None
        if not line:
            raise _Died()
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            raise _Garbled("the database worker answered something that is not JSON") from None
        return answer

    async def read_line(self, wait_s: float) -> bytes:
        async with asyncio.timeout(wait_s):
            return await self.tool.stdout.readline()


def _site_dirs(engine: str) -> tuple[str, ...]:
    """Site-packages folders holding the engine's pip packages (bound into the sandbox)."""
    found: set[str] = set()
    for module in _MODULES.get(engine, ()):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            found.add(str(Path(spec.origin).resolve().parent.parent))
    return tuple(sorted(found))


def _socket_dir(dsn: str) -> str | None:
    """The Unix-socket folder a libpq DSN connects through; `None` if it is not one."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        host = conninfo_to_dict(dsn).get("host")
    except Exception:  # psycopg raises its own ProgrammingError for a malformed DSN
        return None
    if not isinstance(host, str) or not host.startswith("/"):
        return None
    return host


def _with_dbname(url: str, name: str) -> str:
    """The server's DSN (or URL) with `dbname` set to `name`, as a DSN."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts: dict[str, Any] = {**conninfo_to_dict(url), "dbname": name}
        return make_conninfo("", **parts)
    except Exception:  # a malformed setting: said by _socket_dir's check of the same text
        return url


def _without_password(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts: dict[str, Any] = dict(conninfo_to_dict(url))
    except Exception:
        return "(unreadable)"
    parts.pop("password", None)
    return make_conninfo("", **parts)


class Registry:
    """The databases this server knows by name: `<data_dir>/<db_id>/<db_id>.sqlite` (as BIRD
    and Spider ship them), configured DuckDB files and PostgreSQL DSNs, and every database of
    the PostgreSQL server `postgres_url` by its own name."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        duckdb: Mapping[str, str] | None = None,
        postgres: Mapping[str, str] | None = None,
        postgres_url: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.duckdb = {k: str(Path(v).resolve()) for k, v in (duckdb or {}).items()}
        self.postgres = dict(postgres or {})
        self.postgres_url = postgres_url or None

    def _sqlite_file(self, name: str) -> Path | None:
        if self.data_dir is None or not _DB_ID.match(name) or name in (".", ".."):
            return None
        for suffix in (".sqlite", ".db", ".sqlite3"):
            path = self.data_dir / name / f"{name}{suffix}"
            if path.is_file():
                return path.resolve()
        return None

    def engines_of(self, name: str) -> list[str]:
        found = []
        if self._sqlite_file(name) is not None:
            found.append("sqlite")
        if name in self.duckdb:
            found.append("duckdb")
        if name in self.postgres or (self.postgres_url and not found and _DB_ID.match(name)):
            found.append("postgres")  # on the server: when no file of that name exists
        return found

    def find(self, name: str, engine: str) -> Target | str:
        """The database, or why it cannot be used."""
        if engine == "sqlite":
            path = self._sqlite_file(name)
            if path is None:
                return f"no SQLite database {name!r} on this server ({self._where()})"
            return Target(name, "sqlite", str(path), (str(path.parent),))
        if engine == "duckdb":
            if name not in self.duckdb:
                return f"no DuckDB database {name!r} on this server"
            location = self.duckdb[name]
            return Target(name, "duckdb", location, (str(Path(location).parent),))
        if name in self.postgres:
            dsn = self.postgres[name]
        elif self.postgres_url is not None and _DB_ID.match(name):
            dsn = _with_dbname(self.postgres_url, name)
        else:
            return f"no PostgreSQL database {name!r} on this server"
        sockets = _socket_dir(dsn)
        if sockets is None:
            return f"PostgreSQL database {name!r} must be reached over a Unix socket (host=/dir)"
        return Target(name, "postgres", dsn, (sockets,))

    def _where(self) -> str:
        return f"data dir {self.data_dir}" if self.data_dir else "no data dir configured"

    def names(self, limit: int = 500) -> dict[str, Any]:
        sqlite_names: list[str] = []
        if self.data_dir is not None and self.data_dir.is_dir():
            for entry in sorted(os.listdir(self.data_dir)):
                if self._sqlite_file(entry) is not None:
                    sqlite_names.append(entry)
        out: dict[str, Any] = {
            "sqlite": sqlite_names[:limit],
            "duckdb": sorted(self.duckdb)[:limit],
            "postgres": sorted(self.postgres)[:limit],
        }
        if self.postgres_url is not None:
            out["postgres_server"] = _without_password(self.postgres_url)
        if len(sqlite_names) > limit:
            out["sqlite_total"] = len(sqlite_names)
        return out


@dataclass(slots=True)
class SqlStats:
    gold_runs: int = 0
    gold_hits: int = 0
    queries: int = 0
    fixtures_built: int = 0
    workers_lost: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class SqlVerifier:
    """Judges predicted SQL by executing it against a database, next to a gold query."""

    name: ClassVar[str] = "sql"
    spec_model: ClassVar[type[BaseModel]] = SqlSpec

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        duckdb: Mapping[str, str] | None = None,
        postgres: Mapping[str, str] | None = None,
        postgres_url: str | None = None,
        empty_gold: str = "score",
        workers: int = 4,
        worker_memory_mb: int = 1024,
        max_rows: int = 100_000,
        max_result_bytes: int = 16 << 20,
        gold_cache_entries: int = 10_000,
        fixture_entries: int = 256,
        python: str = PYTHON,
    ) -> None:
        self.registry = Registry(data_dir, duckdb, postgres, postgres_url)
        self.empty_gold = empty_gold
        self.workers, self.worker_memory_mb = workers, worker_memory_mb
        self.max_rows, self.max_result_bytes = max_rows, max_result_bytes
        self.python = python
        self.stats = SqlStats()
        self._gold: OrderedDict[Hashable, Outcome] = OrderedDict()
        self._gold_entries = gold_cache_entries
        self._gold_running: dict[Hashable, asyncio.Future[Outcome]] = {}
        self._fixtures: OrderedDict[str, Target] = OrderedDict()
        self._fixture_entries = fixture_entries
        self._building: dict[str, asyncio.Future[Target | str]] = {}
        self._fixture_dir: str | None = None
        self._pool: WorkerPool[_Worker] | None = None
        self._source = _WORKER_SOURCE.read_text()
        self._sites = {engine: _site_dirs(engine) for engine in ENGINES}

    # -- the Verifier protocol ----------------------------------------------------------------

    def fences(self, spec: SqlSpec) -> tuple[str, ...]:
        return ("sql", "sqlite", "postgresql", "postgres", "duckdb")

    def deadline_s(self, spec: SqlSpec) -> float:
        per_db = 2 * (spec.timeout_s + _GRACE_S) + 30.0  # gold and prediction, worker starts
        return max(1, len(spec.targets)) * per_db + 30.0

    def _engine(self, spec: SqlSpec) -> str | None:
        """The spec's engine, or `None` when its database names several and it says none."""
        if spec.dialect is not None:
            return spec.dialect
        if spec.setup_sql is not None:
            return "sqlite"
        found = self.registry.engines_of(spec.targets[0])
        if len(found) == 1:
            return found[0]
        if not found:
            return "sqlite"  # for the message: no such database
        return None

    def _engine_reason(self, engine: str) -> str | None:
        if not os.access(self.python, os.X_OK):
            return f"{self.python} is missing: the database workers run with it"
        if engine != "sqlite" and not self._sites[engine]:
            modules = " and ".join(_MODULES[engine])
            return (
                f"{engine}: the Python package {modules} is not installed (pip install assay[sql])"
            )
        return None

    def check(self, spec: SqlSpec, sandbox: Sandbox) -> str | None:
        engine = self._engine(spec)
        if engine is None:
            found = ", ".join(self.registry.engines_of(spec.targets[0]))
            return f"database {spec.targets[0]!r} exists for several engines ({found}): set dialect"
        reason = self._engine_reason(engine)
        if reason is not None:
            return reason
        for name in spec.targets:
            target = self.registry.find(name, engine)
            if isinstance(target, str):
                return target
        return sandbox.tool_reason("sql")

    def facts(self, sandbox: Sandbox) -> dict[str, Any]:
        engines: dict[str, Any] = {}
        for engine in ENGINES:
            reason = self._engine_reason(engine)
            engines[engine] = {
                "available": reason is None,
                **({"reason": reason} if reason else {}),
            }
        engines["sqlite"]["version"] = sqlite3.sqlite_version
        return {
            "engines": engines,
            "databases": self.registry.names(),
            "empty_gold": self.empty_gold,
            "max_rows": self.max_rows,
            "worker_memory_mb": self.worker_memory_mb,
            "gold_cache": {
                "entries": len(self._gold),
                "runs": self.stats.gold_runs,
                "hits": self.stats.gold_hits,
            },
            "pool": self._pool.facts() if self._pool is not None else {"size": self.workers},
        }

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._fixture_dir is not None:
            shutil.rmtree(self._fixture_dir, ignore_errors=True)

    # -- workers ------------------------------------------------------------------------------

    def _tool_spec(self, engine: str, location: str, data: tuple[str, ...]) -> ToolSpec:
        return ToolSpec(
            argv=(self.python, "-I", "-S", "worker.py", engine, location, *self._sites[engine]),
            files={"worker.py": self._source},
            # Threads: DuckDB's own and the interrupt timer. The sandbox's /tmp (2 x file_mb)
            # is where sorts spill.
            limits=Limits(memory_mb=self.worker_memory_mb, processes=32, file_mb=64),
            # The packages: bound from this machine's venv; a tool image has its own.
            ro_paths=self._sites[engine],
            tool="sql",
            data=data,
            env={
                "ASSAY_SQL_MEMORY_MB": str(self.worker_memory_mb),
                "ASSAY_SQL_VALUE_BYTES": str(min(self.max_result_bytes, 64 << 20)),
            },
        )

    def _workers(self, sandbox: Sandbox) -> WorkerPool[_Worker]:
        if self._pool is None:

            async def start(key: Hashable) -> _Worker:
                assert isinstance(key, tuple)
                engine, location, ro_paths = key
                tool = await sandbox.spawn(self._tool_spec(engine, location, ro_paths))
                return _Worker(tool)

            async def close(worker: _Worker) -> None:
                await worker.tool.close()

            self._pool = WorkerPool(
                start,
                close,
                size=self.workers,
                max_uses=5000,
                healthy=lambda w: w.tool.returncode is None,
                name="sql",
            )
        return self._pool

    async def run_query(
        self, target: Target, role: str, sql: str, timeout_s: float, sandbox: Sandbox
    ) -> Outcome:
        """Run one query on `target` in a warm worker, on the `role`'s own connection."""
        request = {
            "op": "query",
            "role": role,
            "sql": sql,
            "timeout_s": timeout_s,
            "max_rows": self.max_rows,
            "max_bytes": self.max_result_bytes,
        }
        self.stats.queries += 1
        outcome = await self._query_once(target, request, timeout_s, sandbox)
        if outcome.kind == "killed":
            # Killed from outside, not by the query (tests/reliability/test_faults.py): once
            # more on a fresh worker; killed again, the item says it was not judged.
            log.warning("sql: a database worker was killed mid-query; running it again")
            outcome = await self._query_once(target, request, timeout_s, sandbox)
        return outcome

    async def _query_once(
        self, target: Target, request: dict[str, Any], timeout_s: float, sandbox: Sandbox
    ) -> Outcome:
        pool = self._workers(sandbox)
        key = (target.engine, target.location, target.ro_paths)
        try:
            # A worker that fails a request leaves the lease by an exception: the pool closes
            # it (killing a runaway query with it) and starts a fresh one for the next.
            async with pool.lease(key) as worker:
                try:
                    answer = await worker.ask(request, timeout_s + _GRACE_S)
                except _Stuck:
                    error = f"the query ran past {timeout_s:g} s"
                    raise _Lost(Outcome(kind="timeout", error=error)) from None
                except _Died:
                    raise _Lost(await self._death(worker)) from None
                except _Garbled as exc:
                    raise _Lost(Outcome(kind="size", error=str(exc))) from None
        except _Lost as lost:
            self.stats.workers_lost += 1
            return lost.outcome
        if answer.get("ok"):
            return Outcome(normal_rows(answer["rows"]), answer["columns"])
        return Outcome(kind=answer.get("kind", "error"), error=answer.get("error", ""))

    async def _death(self, worker: _Worker) -> Outcome:
        code = await exit_status(worker.tool)  # let it finish dying, so that its last words
        await asyncio.sleep(0.05)  # are read
        tail = worker.tool.stderr_tail().decode(errors="replace").strip()
        if worker.tool.oom_killed() or "MemoryError" in tail or "out of memory" in tail.lower():
            return Outcome(kind="memory", error=f"out of memory ({self.worker_memory_mb} MB)")
        if killed_from_outside(code):
            return Outcome(
                kind="killed",
                error=f"the database worker was killed from outside (exit status {code}) "
                "while running the query, twice: not judged; send the item again",
            )
        last = tail.splitlines()[-1] if tail else "no message"
        return Outcome(kind="error", error=f"the database worker died: {last[:300]}")

    # -- gold results, cached -----------------------------------------------------------------

    async def gold(self, target: Target, sql: str, timeout_s: float, sandbox: Sandbox) -> Outcome:
        """The gold query's result on `target`: run once, shared by concurrent askers, cached.

        The run is a task of its own, not any asker's: an asker cancelled (its item's deadline)
        leaves it running for the others, and its result still reaches the cache."""
        key = (target.engine, target.location, sql)
        hit = self._gold.get(key)
        if hit is not None:
            self._gold.move_to_end(key)
            self.stats.gold_hits += 1
            return hit
        task = self._gold_running.get(key)
        if task is None:
            self.stats.gold_runs += 1
            task = asyncio.ensure_future(self._run_gold(key, target, sql, timeout_s, sandbox))
            task.add_done_callback(_retrieved)
            self._gold_running[key] = task
        else:
            self.stats.gold_hits += 1
        return await asyncio.shield(task)

    async def _run_gold(
        self, key: Hashable, target: Target, sql: str, timeout_s: float, sandbox: Sandbox
    ) -> Outcome:
        try:
            outcome = await self.run_query(target, "gold", sql, timeout_s, sandbox)
        finally:
            del self._gold_running[key]
        if outcome.kind not in ("timeout", "connect", "killed"):  # passing failures are not kept
            self._gold[key] = outcome
            while len(self._gold) > self._gold_entries:
                self._gold.popitem(last=False)
        return outcome

    # -- setup_sql fixtures -------------------------------------------------------------------

    async def fixture(self, engine: str, setup_sql: str, sandbox: Sandbox) -> Target | str:
        """A database built from `setup_sql` in a sandboxed worker, once per distinct setup,
        kept read-only on the host for the workers that query it. Or why it could not be."""
        digest = hashlib.sha256(f"{engine}\0{setup_sql}".encode()).hexdigest()[:32]
        found = self._fixtures.get(digest)
        if found is not None:
            self._fixtures.move_to_end(digest)
            return found
        task = self._building.get(digest)
        if task is None:  # a task of its own, as for gold queries
            task = asyncio.ensure_future(self._build_fixture(engine, setup_sql, digest, sandbox))
            task.add_done_callback(_retrieved)
            self._building[digest] = task
        return await asyncio.shield(task)

    async def _build_fixture(
        self, engine: str, setup_sql: str, digest: str, sandbox: Sandbox
    ) -> Target | str:
        try:
            result = await self._build(engine, setup_sql, digest, sandbox)
        finally:
            del self._building[digest]
        if isinstance(result, Target):
            self._fixtures[digest] = result
            while len(self._fixtures) > self._fixture_entries:
                _, old = self._fixtures.popitem(last=False)
                await asyncio.to_thread(Path(old.location).unlink, missing_ok=True)
        return result

    async def _build(
        self, engine: str, setup_sql: str, digest: str, sandbox: Sandbox
    ) -> Target | str:
        suffix = ".duckdb" if engine == "duckdb" else ".sqlite"
        inside = f"/tmp/fixture{suffix}"
        spec = self._tool_spec(engine, inside, ())
        tool = await sandbox.spawn(spec)
        worker = _Worker(tool)
        try:
            request = {
                "op": "build",
                "setup_sql": setup_sql,
                "timeout_s": 60,
                "max_bytes": FIXTURE_BYTES,
            }
            try:
                answer = await worker.ask(request, 60 + _GRACE_S)
            except _Stuck:
                return "setup_sql ran past 60 s"
            except _Died:
                died = await self._death(worker)
                if died.kind == "killed":  # the worker's fault, not the spec's: not judged
                    raise SandboxError(
                        "the database worker building setup_sql was killed from outside"
                    ) from None
                return f"setup_sql failed: {died.error}"
            except _Garbled as exc:
                return f"setup_sql failed: {exc}"
            if not answer.get("ok"):
                return f"setup_sql failed: {answer.get('error', '')}"
            try:
                line = await worker.read_line(60)
                blob = await asyncio.to_thread(base64.b64decode, line)
                del line
            except ValueError:
                return (
                    f"setup_sql built a database too large to keep ({FIXTURE_BYTES} bytes at most)"
                )
        finally:
            await tool.close()
        if self._fixture_dir is None:
            self._fixture_dir = tempfile.mkdtemp(prefix="assay-sql-fixtures-")
            os.chmod(self._fixture_dir, 0o755)  # the workers' uids read it
        path = Path(self._fixture_dir) / f"{digest}{suffix}"
        await asyncio.to_thread(_write_read_only, path, blob)
        self.stats.fixtures_built += 1
        return Target(f"setup_sql:{digest[:12]}", engine, str(path), (str(path),))

    # -- judging ------------------------------------------------------------------------------

    async def verify(self, payload: str, spec: SqlSpec, sandbox: Sandbox) -> Verdict:
        engine = self._engine(spec)
        assert engine is not None  # check() said so
        if len(payload) > MAX_CHARS:
            return Verdict(
                Status.FORMAT_ERROR,
                0.0,
                f"the query is {len(payload)} characters long; at most {MAX_CHARS} are judged",
            )
        try:
            checked = await asyncio.to_thread(
                check_prediction, payload, engine, spec.transpile_from
            )
        except ParseFailed as exc:
            dialect = spec.transpile_from or engine
            return Verdict(Status.COMPILE_ERROR, 0.0, clip(f"not valid {dialect} SQL: {exc}"))
        except Forbidden as exc:
            return Verdict(Status.FORBIDDEN, 0.0, clip(str(exc)))
        targets: list[Target] = []
        if spec.setup_sql is not None:
            built = await self.fixture(engine, spec.setup_sql, sandbox)
            if isinstance(built, str):
                return Verdict.unjudged(Status.INVALID_SPEC, built)
            targets.append(built)
        for name in spec.targets:
            found = self.registry.find(name, engine)
            if isinstance(found, str):
                return Verdict.unjudged(Status.UNAVAILABLE, found)
            targets.append(found)
        order = spec.order_matters
        if order is None:
            order = spec.gold_sql is not None and await asyncio.to_thread(
                gold_ordered, spec.gold_sql, engine
            )
        per_db: list[dict[str, Any]] = []
        details: dict[str, Any] = {"order_matters": order, "databases": per_db}
        if spec.transpile_from is not None:
            details["transpiled"] = checked.sql
        empty_gold = False
        for target in targets:
            if spec.gold_sql is not None:
                gold = await self.gold(target, spec.gold_sql, spec.timeout_s, sandbox)
                if gold.kind == "connect":
                    return _unreachable(target, gold)
                if gold.kind == "killed":
                    return _killed(target, gold, "gold")
                if not gold.ok:
                    return Verdict.unjudged(
                        Status.INVALID_SPEC,
                        f"the gold query failed on {target.name}: {gold.error}",
                        databases=per_db,
                    )
                gold_rows = gold.rows or []
            else:
                gold_rows = normal_rows(spec.expected_rows or [])
            pred = await self.run_query(target, "pred", checked.sql, spec.timeout_s, sandbox)
            entry: dict[str, Any] = {"database": target.name, "gold_rows": len(gold_rows)}
            per_db.append(entry)
            empty_gold = empty_gold or not gold_rows
            if pred.kind == "connect":
                return _unreachable(target, pred)
            if pred.kind == "killed":
                return _killed(target, pred, "predicted")
            if not pred.ok:
                entry["error"] = pred.kind
                status, why = _failure(pred)
                where = f" on {target.name}" if len(targets) > 1 else ""
                return Verdict(status, 0.0, clip(f"{why}{where}"), details)
            pred_rows = pred.rows or []
            entry["pred_rows"] = len(pred_rows)
            mismatch = await _compare(gold_rows, pred_rows, spec, order)
            entry["match"] = mismatch is None
            if mismatch is not None:
                where = f"on {target.name}: " if len(targets) > 1 else ""
                return Verdict(Status.FAILED, 0.0, clip(where + _explain(mismatch)), details)
        details["empty_gold"] = empty_gold
        if empty_gold and (spec.empty_gold or self.empty_gold) == "zero":
            why = "the result matches, but the gold result is empty and this spec scores that 0"
            return Verdict(Status.FAILED, 0.0, why, details)
        n = len(targets)
        return Verdict(
            Status.PASSED,
            1.0,
            "results match" + (f" on all {n} databases" if n > 1 else ""),
            details,
        )


def _unreachable(target: Target, outcome: Outcome) -> Verdict:
    return Verdict.unjudged(Status.UNAVAILABLE, f"cannot open {target.name}: {outcome.error}")


def _killed(target: Target, outcome: Outcome, role: str) -> Verdict:
    return Verdict.unjudged(
        Status.INTERNAL_ERROR, f"the {role} query on {target.name}: {outcome.error}", retryable=True
    )


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Marks a shared task's exception as seen: its askers may all have been cancelled."""
    if not task.cancelled():
        task.exception()


def _write_read_only(path: Path, blob: bytes) -> None:
    temporary = path.with_suffix(".part")
    temporary.write_bytes(blob)
    os.chmod(temporary, 0o444)
    os.replace(temporary, path)


def _failure(outcome: Outcome) -> tuple[Status, str]:
    if outcome.kind == "timeout":
        return Status.TIMEOUT, outcome.error
    if outcome.kind in ("rows", "size"):
        return Status.OUTPUT_LIMIT, outcome.error
    if outcome.kind == "memory":
        return Status.MEMORY_LIMIT, outcome.error
    return Status.RUNTIME_ERROR, outcome.error


async def _compare(gold: list[Row], pred: list[Row], spec: SqlSpec, order: bool) -> Mismatch | None:
    def run() -> Mismatch | None:
        return compare_rows(
            gold,
            pred,
            compare=spec.compare,
            ordered=order,
            tol=spec.float_tol,
            column_permutations=spec.column_permutations,
        )

    if len(gold) + len(pred) > 2000:  # off the event loop when it is more than a moment
        return await asyncio.to_thread(run)
    return run()


def _show(row: Row | None) -> str:
    if row is None:
        return "nothing"
    text = repr(row)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _explain(mismatch: Mismatch) -> str:
    if mismatch.expected_row is None and mismatch.actual_row is None:
        return mismatch.reason
    return (
        f"{mismatch.reason}; first differing row: expected {_show(mismatch.expected_row)}, "
        f"got {_show(mismatch.actual_row)}"
    )


__all__ = ["Outcome", "Registry", "SqlVerifier", "Target"]
