"""Real databases for the sql verifier's tests: SQLite and DuckDB files, and a PostgreSQL server
started with initdb/pg_ctl in a temporary folder (as `nobody` when run as root: initdb refuses
root)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUPERUSER_PASSWORD = "assay-test-super"
READER_PASSWORD = "assay-test-reader"


def shared_dir(prefix: str) -> Path:
    """A fresh folder the sandbox's uids may read (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


def make_sqlite(data_dir: Path, name: str, statements: Sequence[str]) -> Path:
    """`<data_dir>/<name>/<name>.sqlite`, as BIRD and Spider ship their databases."""
    folder = data_dir / name
    folder.mkdir(mode=0o755)
    path = folder / f"{name}.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    path.chmod(0o644)
    return path


def make_duckdb(folder: Path, name: str, statements: Sequence[str]) -> Path:
    import duckdb

    path = folder / f"{name}.duckdb"
    conn = duckdb.connect(str(path))
    for statement in statements:
        conn.execute(statement)
    conn.execute("CHECKPOINT")
    conn.close()
    path.chmod(0o644)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@dataclass(frozen=True)
class Postgres:
    sockets: str
    bin: Path

    def dsn(self, database: str, user: str = "postgres", password: str = SUPERUSER_PASSWORD) -> str:
        return f"host={self.sockets} dbname={database} user={user} password={password}"

    def reader_dsn(self, database: str) -> str:
        return self.dsn(database, "assay_reader", READER_PASSWORD)

    def create(self, database: str, statements: Sequence[str]) -> str:
        """A database holding `statements`, readable by the read-only role; its reader DSN."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO assay_reader')
            conn.execute("GRANT USAGE ON SCHEMA public TO assay_reader")
            conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO assay_reader")
        return self.reader_dsn(database)

    def fingerprint(self, database: str) -> str:
        """A digest of every table's rows, and of the list of tables: changes if anything does."""
        import psycopg

        with psycopg.connect(self.dsn(database)) as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname NOT IN "
                    "('pg_catalog', 'information_schema') ORDER BY 1"
                )
            ]
            h = hashlib.sha256(repr(tables).encode())
            for table in tables:
                rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()
                h.update(repr(rows).encode())
            return h.hexdigest()


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL server on a Unix socket only, password authentication, a read-only role."""
    import psycopg

    binaries = postgres_bin()
    assert binaries is not None, "PostgreSQL is not installed (scripts/install test does it)"
    base = shared_dir("assay-pg-")
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir(mode=0o755)
    owner = "nobody" if os.geteuid() == 0 else None
    pwfile = base / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (base, sockets, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    run = {"check": True, "capture_output": True, "cwd": base}
    subprocess.run(
        _as_owner(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=scram-sha-256",
                "--auth-host=reject",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            owner,
        ),
        **run,  # type: ignore[call-overload]
    )
    options = f"-c listen_addresses='' -c unix_socket_directories='{sockets}' -c fsync=off"
    log = base / "log"
    start = [str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w"]
    subprocess.run(_as_owner([*start, "start"], owner), **run)  # type: ignore[call-overload]
    try:
        server = Postgres(str(sockets), binaries)
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE assay_reader LOGIN PASSWORD '{READER_PASSWORD}'")
        yield server
    finally:
        stop = [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(_as_owner(stop, owner), capture_output=True, cwd=base)
        shutil.rmtree(base, ignore_errors=True)
