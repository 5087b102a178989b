"""The database worker of the `sql` verifier: runs inside the sandbox (`Sandbox.spawn`).

It is a standalone script run by Debian's `/usr/bin/python3 -I`: it imports nothing of assay,
only the standard library and, for DuckDB and PostgreSQL, `duckdb` and `psycopg` from the
site-packages directories named on its command line (bound read-only into the sandbox).

    python3 -I sql_worker.py ENGINE TARGET SITE_PACKAGES...

One worker serves one database (ENGINE: sqlite, duckdb or postgres; TARGET: a file path or a
libpq DSN reaching the server over its Unix socket). It reads one JSON request per line on stdin
and answers one JSON line on stdout:

    {"op": "query", "role": "gold"|"pred", "sql": ..., "timeout_s": ..., "max_rows": ...,
     "max_bytes": ...}
    -> {"ok": true, "columns": [...], "rows": [[...], ...]}
    -> {"ok": false, "kind": "error"|"timeout"|"rows"|"size"|"memory", "error": "..."}

    {"op": "build", "setup_sql": ..., "timeout_s": ...}   (ENGINE sqlite or duckdb; TARGET the
    path of a new file in the worker's own /tmp)
    -> {"ok": true, "size": N} then one line: the file, base64

Each role has its own connection, opened on first use and kept: the gold query never shares a
connection with a predicted one. Every connection is locked down by the engine itself, beyond
the parse check the service did (see `_sqlite`, `_duckdb`, `_postgres`).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import os
import site
import sys
import threading
import time
import uuid
from typing import Any

ENGINE = sys.argv[1]
TARGET = sys.argv[2]
for _path in sys.argv[3:]:
    sys.path.append(_path)
# After those (the service's venv, bound in), the interpreter's own site-packages: where a tool
# image (the docker backend's) installs DuckDB and psycopg. `-S` leaves them out of sys.path.
sys.path.extend(p for p in site.getsitepackages() if p not in sys.path)

MEMORY_MB = int(os.environ.get("ASSAY_SQL_MEMORY_MB", "512"))
VALUE_BYTES = int(os.environ.get("ASSAY_SQL_VALUE_BYTES", str(16 << 20)))


class Timeout(Exception):
    pass


class Unreachable(Exception):
    """The database could not be opened or connected to: the server's problem, not the item's."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class TooMany(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- values -------------------------------------------------------------------------------------


def cell(value: Any) -> Any:
    """A result cell as JSON: numbers, strings and NULL as they are; bytes tagged; the rest
    (dates, decimals, UUIDs, lists) in a plain form that compares the same on every engine."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else str(value)
    if isinstance(value, (datetime.timedelta, uuid.UUID)):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


PLAIN = frozenset({int, float, str, type(None)})


def fetch(cursor: Any, max_rows: int, max_bytes: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    size = 0
    while True:
        batch = cursor.fetchmany(1000)
        if not batch:
            return rows
        for row in batch:
            plain = all(type(v) in PLAIN for v in row)
            converted = list(row) if plain else [cell(v) for v in row]
            rows.append(converted)
            size += sum(len(v) if isinstance(v, str) else 8 for v in converted)
            if len(rows) > max_rows:
                raise TooMany("rows", f"the query returned more than {max_rows} rows")
            if size > max_bytes:
                raise TooMany("size", f"the query's result is larger than {max_bytes} bytes")


# -- SQLite -------------------------------------------------------------------------------------


def _sqlite_connect(path: str, deadline: list[float]) -> Any:
    import sqlite3
    import urllib.parse

    # Read-only and immutable (the file is bound read-only: no locks, no journal to look for).
    uri = f"file:{urllib.parse.quote(path)}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    # A heap cap: a huge sort or string fails with "out of memory" inside SQLite, before the
    # sandbox's address-space limit would kill the worker.
    conn.execute(f"PRAGMA hard_heap_limit = {MEMORY_MB * 1024 * 1024 * 6 // 10}")
    conn.execute("PRAGMA temp_store = FILE")  # sorts spill to the sandbox's sized /tmp
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 1 << 20)
    allowed = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33}
    denied_functions = {"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"}

    def authorize(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action not in allowed:  # 33: SQLITE_RECURSIVE
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in denied_functions:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorize)
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline[0] else 0, 2000)
    return conn


def _sqlite_run(conn: Any, sql: str, max_rows: int, max_bytes: int, deadline: list[float]) -> Any:
    import sqlite3

    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return columns, fetch(cursor, max_rows, max_bytes)
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc) and time.monotonic() > deadline[0]:
            raise Timeout() from exc
        raise
    finally:
        cursor.close()  # an abandoned statement must not stay open into the next query


def _sqlite_build(path: str, setup_sql: str, deadline: list[float]) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline[0] else 0, 2000)
    try:
        conn.executescript(setup_sql)
    finally:
        conn.close()


# -- DuckDB -------------------------------------------------------------------------------------


def _duckdb_config() -> dict[str, Any]:
    return {
        # No files, URLs or extensions beyond the database itself; settings frozen, so that
        # no query can undo this.
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "memory_limit": f"{MEMORY_MB * 4 // 10}MB",
        "max_temp_directory_size": "64MB",
        "temp_directory": "/tmp/duckdb-spill",
        "threads": 1,
        "lock_configuration": True,
    }


def _duckdb_connect(path: str) -> Any:
    import duckdb

    return duckdb.connect(path, read_only=True, config=_duckdb_config())


def _with_interrupt(conn: Any, timeout_s: float, run: Any) -> Any:
    """Runs `run()`, interrupting the connection from a timer at the deadline."""
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        conn.interrupt()

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    try:
        return run()
    except Exception as exc:
        if fired.is_set():
            raise Timeout() from exc
        raise
    finally:
        timer.cancel()


def _duckdb_run(conn: Any, sql: str, max_rows: int, max_bytes: int, timeout_s: float) -> Any:
    # A connection of its own per query (`cursor()`: same database, same locked settings):
    # temporary tables, macros and variables a query made go with it, so none can shadow a
    # table for the next query.
    cursor = conn.cursor()

    def run() -> Any:
        cursor.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        return columns, fetch(cursor, max_rows, max_bytes)

    try:
        return _with_interrupt(cursor, timeout_s, run)
    finally:
        cursor.close()


def _duckdb_build(path: str, setup_sql: str, timeout_s: float) -> None:
    import duckdb

    config = _duckdb_config()
    del config["lock_configuration"]
    conn = duckdb.connect(path, config=config)
    try:
        _with_interrupt(conn, timeout_s, lambda: conn.execute(setup_sql))
        conn.execute("CHECKPOINT")
    finally:
        conn.close()


# -- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_connect(dsn: str) -> Any:
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    # The operator's role must only read: one that may read or write server files, or run
    # programs, would let a query past the parse check reach the server's machine.
    powers = conn.execute(
        "SELECT rolsuper, pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'),"
        " pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'),"
        " pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if powers is None or any(powers):
        conn.close()
        raise PermissionError(
            "the configured PostgreSQL role is a superuser or may use server files or programs;"
            " give a role that may only read (docs/sql.md)"
        )
    # Session defaults; each query also runs in its own READ ONLY transaction, rolled back.
    # The role the operator configures should itself be able only to read (docs/sql.md).
    work_mem = max(4, MEMORY_MB // 16)
    for statement in (
        "SET default_transaction_read_only = on",
        f"SET work_mem = '{work_mem}MB'",
        "SET idle_in_transaction_session_timeout = '60s'",
        "SET lock_timeout = '5s'",
    ):
        conn.execute(statement)
    return conn


def _postgres_run(conn: Any, sql: str, max_rows: int, max_bytes: int, timeout_s: float) -> Any:
    import psycopg

    timeout_ms = max(1, int(timeout_s * 1000))
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
            # A server-side cursor: rows come in batches, so a huge result is refused at
            # max_rows instead of being buffered whole by libpq in the worker's memory.
            with conn.cursor(name="assay_query") as cursor:
                cursor.execute(sql)
                columns = [d.name for d in cursor.description or ()]
                rows = fetch(cursor, max_rows, max_bytes)
            raise _Rollback((columns, rows))
    except _Rollback as done:
        return done.value
    except psycopg.errors.QueryCanceled as exc:
        raise Timeout() from exc


class _Rollback(Exception):
    """Leaves the transaction by rolling it back, whatever the query did, with its result."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value


# -- the loop -----------------------------------------------------------------------------------


def main() -> None:
    connections: dict[str, Any] = {}
    deadline = [0.0]

    def connection(role: str) -> Any:
        if role not in connections:
            if ENGINE == "sqlite":
                connections[role] = _sqlite_connect(TARGET, deadline)
            elif ENGINE == "duckdb":
                connections[role] = _duckdb_connect(TARGET)
            else:
                connections[role] = _postgres_connect(TARGET)
        return connections[role]

    out = sys.stdout
    # UTF-8 whatever the locale; a lone surrogate (not valid UTF-8) is escaped, not fatal.
    out.reconfigure(encoding="utf-8", errors="backslashreplace")  # type: ignore[union-attr]
    for line in sys.stdin:
        request = json.loads(line)
        timeout_s = float(request.get("timeout_s", 10))
        deadline[0] = time.monotonic() + timeout_s
        answer: dict[str, Any]
        blob: bytes | None = None
        try:
            if request["op"] == "build":
                if ENGINE == "sqlite":
                    _sqlite_build(TARGET, request["setup_sql"], deadline)
                else:
                    _duckdb_build(TARGET, request["setup_sql"], timeout_s)
                size, cap = os.path.getsize(TARGET), int(request.get("max_bytes", 1 << 62))
                if size > cap:  # the service reads it whole, as a line: it stays small
                    raise TooMany("size", f"the database it built is {size} bytes; at most {cap}")
                with open(TARGET, "rb") as f:
                    blob = f.read()
                answer = {"ok": True, "size": len(blob)}
            else:
                try:
                    conn = connection(request["role"])
                except Exception as exc:
                    raise Unreachable(f"{type(exc).__name__}: {_first_line(exc)}") from exc
                sql, rows_cap, bytes_cap = request["sql"], request["max_rows"], request["max_bytes"]
                if ENGINE == "sqlite":
                    columns, rows = _sqlite_run(conn, sql, rows_cap, bytes_cap, deadline)
                elif ENGINE == "duckdb":
                    columns, rows = _duckdb_run(conn, sql, rows_cap, bytes_cap, timeout_s)
                else:
                    columns, rows = _postgres_run(conn, sql, rows_cap, bytes_cap, timeout_s)
                answer = {"ok": True, "columns": columns, "rows": rows}
        except Unreachable as exc:
            answer = {"ok": False, "kind": "connect", "error": str(exc)}
        except Timeout:
            answer = {"ok": False, "kind": "timeout", "error": f"ran past {timeout_s:g} s"}
        except TooMany as exc:
            answer = {"ok": False, "kind": exc.kind, "error": str(exc)}
        except MemoryError:
            answer = {"ok": False, "kind": "memory", "error": "out of memory"}
        except Exception as exc:
            message = _first_line(exc)
            kind = "memory" if "out of memory" in message.lower() else "error"
            answer = {"ok": False, "kind": kind, "error": f"{type(exc).__name__}: {message}"}
        try:
            # UTF-8 as it is: \uXXXX escapes would make text up to 6 times longer on the pipe.
            text = json.dumps(answer, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            text = json.dumps({"ok": False, "kind": "error", "error": f"unencodable: {exc}"})
        out.write(text + "\n")
        if blob is not None:
            out.write(base64.b64encode(blob).decode() + "\n")
        out.flush()


if __name__ == "__main__":
    main()
