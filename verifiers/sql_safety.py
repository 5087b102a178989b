"""The parse-level checks of the `sql` verifier, with sqlglot: one read-only statement.

The whole tree is walked, not just its root: `WITH x AS (DELETE ... RETURNING *) SELECT ...`
has a SELECT at its root (DOMAINS.md). This check is the first of two fences; every engine is
also locked down in the worker (sql_worker.py), so what slips past the parser still cannot
write, attach, read files or load code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# Statement kinds that change something or reach outside the database, wherever they sit.
_FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = (
    exp.DML,  # INSERT (via DDL below), UPDATE, DELETE, MERGE, COPY
    exp.DDL,  # CREATE, INSERT
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Command,  # what sqlglot does not model: VACUUM, EXPLAIN, CALL, LISTEN ...
    exp.Attach,
    exp.Detach,
    exp.Pragma,
    exp.Set,
    exp.Use,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Into,  # SELECT ... INTO new_table
    exp.Lock,  # FOR UPDATE / FOR SHARE
    exp.Grant,
    exp.Install,
    exp.Export,
    exp.LoadData,
    exp.Kill,
    exp.Cache,
    exp.Uncache,
    exp.Refresh,
    exp.Analyze,
    exp.Declare,
    exp.Execute,
)

# Functions that read files, load code, run SQL given as a string (past this check), change
# settings, or hold locks beyond the statement. The engines refuse most of them on their own
# (read-only role, enable_external_access=false, the SQLite authorizer); these are named so
# that a prediction using them is `forbidden`, not a runtime error.
_FORBIDDEN_FUNCTIONS = frozenset(
    {
        # SQLite
        "load_extension",
        "fts3_tokenizer",
        "readfile",
        "writefile",
        "edit",
        # DuckDB
        "read_csv",
        "read_csv_auto",
        "read_parquet",
        "parquet_scan",
        "parquet_metadata",
        "parquet_schema",
        "read_json",
        "read_json_auto",
        "read_json_objects",
        "read_ndjson",
        "read_ndjson_auto",
        "read_ndjson_objects",
        "read_text",
        "read_blob",
        "read_xlsx",
        "glob",
        "sniff_csv",
        "query",
        "query_table",
        "getenv",
        "sqlite_scan",
        "sqlite_attach",
        "postgres_scan",
        "delta_scan",
        "iceberg_scan",
        # PostgreSQL
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "lo_import",
        "lo_export",
        "lo_get",
        "lo_put",
        "lo_from_bytea",
        "lo_create",
        "lo_unlink",
        "set_config",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "dblink",
        "dblink_exec",
        "dblink_connect",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_notify",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_logical_emit_message",
        "pg_switch_wal",
        "pg_create_restore_point",
        "nextval",
        "setval",
    }
)


class ParseFailed(Exception):
    """sqlglot could not read the query in the dialect."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A query that passed: the text to run on the engine, and whether its outermost SELECT
    orders its rows."""

    sql: str
    ordered: bool


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    return node.sql_name().lower()


def _one_statement(sql: str, dialect: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        raise ParseFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    except RecursionError as exc:
        raise ParseFailed("the query is nested too deeply to parse") from exc
    if not statements:
        raise ParseFailed("no SQL statement found")
    if len(statements) > 1:
        raise Forbidden(f"exactly one statement is allowed; found {len(statements)}")
    return statements[0]


class Forbidden(Exception):
    """The query may not run: not one read-only statement."""


def why_forbidden(tree: exp.Expr) -> str | None:
    """`None` when `tree` is one read-only query; else what is wrong with it."""
    if not isinstance(tree, (exp.Query, exp.Values)) or isinstance(tree, exp.DDL):
        return f"only a read-only query (SELECT, or WITH … SELECT) may run, not {tree.key.upper()}"
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            return f"the query contains {node.key.upper()}, which is not read-only"
        if isinstance(node, exp.Func) and _function_name(node) in _FORBIDDEN_FUNCTIONS:
            return f"the function {_function_name(node)}() is not allowed"
    return None


def ordered(tree: exp.Expr) -> bool:
    """Whether the outermost query orders its rows (ORDER BY on the root SELECT or UNION)."""
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    return tree.args.get("order") is not None


def check_prediction(sql: str, dialect: str, transpile_from: str | None = None) -> Checked:
    """Parse a predicted query and make sure it is one read-only statement; transpile it from
    `transpile_from` to `dialect` when asked. Raises `ParseFailed` or `Forbidden`."""
    tree = _one_statement(sql, transpile_from or dialect)
    reason = why_forbidden(tree)
    if reason is not None:
        raise Forbidden(reason)
    if transpile_from is not None and transpile_from != dialect:
        try:
            sql = tree.sql(dialect=dialect)
        except SqlglotError as exc:
            raise ParseFailed(f"cannot transpile from {transpile_from}: {exc}") from exc
        tree = _one_statement(sql, dialect)  # the text that runs is checked too
        reason = why_forbidden(tree)
        if reason is not None:
            raise Forbidden(reason)
    return Checked(sql=sql, ordered=ordered(tree))


@functools.lru_cache(maxsize=4096)  # a gold query is asked about once per prediction
def gold_ordered(sql: str, dialect: str) -> bool:
    """Whether a gold query's outermost SELECT has ORDER BY; False when sqlglot cannot read it
    (the gold query is trusted and runs anyway)."""
    try:
        return ordered(_one_statement(sql, dialect))
    except (ParseFailed, Forbidden):
        return False
