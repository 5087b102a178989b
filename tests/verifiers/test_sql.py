"""The sql verifier on real databases: one shop database on SQLite, DuckDB and PostgreSQL (a
real server), real sandboxed workers, the same cases on each engine, and the attacks."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from assay.clients.schema import SqlSpec
from assay.sandboxes import LocalSandbox
from assay.verifiers.sql import SqlVerifier, Target
from tests.conftest import needs_bwrap
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

pytestmark = [needs_bwrap, pytest.mark.asyncio(loop_scope="module")]

ENGINES = ["sqlite", "duckdb", "postgres"]
SHOP = statements()


@dataclass
class Databases:
    data_dir: Path
    sqlite: Path
    duckdb: Path
    postgres: Postgres | None
    postgres_dsn: str | None

    def fingerprints(self) -> dict[str, str]:
        found = {"sqlite": digest(self.sqlite), "duckdb": digest(self.duckdb)}
        if self.postgres is not None:
            found["postgres"] = self.postgres.fingerprint("shop")
        return found


@pytest.fixture(scope="module")
def databases() -> Iterator[Databases]:
    data_dir = shared_dir("assay-sql-test-")
    sqlite = make_sqlite(data_dir, "shop", SHOP)
    # A second database of the same schema and other data: a Spider-style test suite.
    make_sqlite(data_dir, "shop_b", statements(customers=25, orders=90, seed=11))
    duck_dir = shared_dir("assay-duck-test-")
    duck = make_duckdb(duck_dir, "shop", SHOP)
    try:
        if postgres_bin() is None:
            yield Databases(data_dir, sqlite, duck, None, None)
            return
        with postgres_server() as server:
            dsn = server.create("shop", SHOP)
            yield Databases(data_dir, sqlite, duck, server, dsn)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(duck_dir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def judge(databases: Databases) -> AsyncIterator[tuple[SqlVerifier, LocalSandbox]]:
    sandbox = LocalSandbox()
    verifier = SqlVerifier(
        data_dir=databases.data_dir,
        duckdb={"shop": str(databases.duckdb)},
        postgres={"shop": databases.postgres_dsn} if databases.postgres_dsn else {},
        workers=3,
        worker_memory_mb=1024,
        max_rows=5000,
    )
    yield verifier, sandbox
    await verifier.close()
    await sandbox.close()


def _skip_missing(engine: str, databases: Databases) -> None:
    if engine == "postgres" and databases.postgres is None:
        pytest.skip("PostgreSQL is not installed (scripts/install test installs it)")


async def _score(
    judge: tuple[SqlVerifier, LocalSandbox], completion: str, **spec: Any
) -> tuple[str, float | None, str, dict[str, Any]]:
    verifier, sandbox = judge
    if "setup_sql" not in spec:
        spec.setdefault("dialect", "sqlite")  # "shop" is on every engine: say which
    parsed = SqlSpec(**spec)
    reason = verifier.check(parsed, sandbox)
    assert reason is None, reason
    verdict = await verifier.verify(completion, parsed, sandbox)
    return verdict.status.value, verdict.reward, verdict.feedback, verdict.details


BY_COUNTRY = (
    "SELECT c.country, COUNT(*) FROM customers c JOIN orders o ON o.customer_id = c.id "
    "GROUP BY c.country"
)

# (id, predicted, spec, status, reward): the same on every engine.
CASES: list[tuple[str, str, dict[str, Any], str, float]] = [
    (
        "join-group-by-same-result-other-text",
        "SELECT customers.country, count(orders.id) FROM orders JOIN customers "
        "ON customers.id = orders.customer_id GROUP BY customers.country "
        "ORDER BY customers.country DESC",
        {"gold_sql": BY_COUNTRY},
        "passed",
        1.0,
    ),
    (
        "join-group-by-missing-filter",
        BY_COUNTRY,
        {
            "gold_sql": "SELECT c.country, COUNT(*) FROM customers c JOIN orders o "
            "ON o.customer_id = c.id WHERE o.status = 'shipped' GROUP BY c.country"
        },
        "failed",
        0.0,
    ),
    (
        "order-by-limit-right",
        "SELECT name, price FROM products ORDER BY price DESC LIMIT 5",
        {"gold_sql": "SELECT p.name, p.price FROM products AS p ORDER BY p.price DESC LIMIT 5"},
        "passed",
        1.0,
    ),
    (
        "order-by-limit-wrong-direction",
        "SELECT name, price FROM products ORDER BY price ASC LIMIT 5",
        {"gold_sql": "SELECT name, price FROM products ORDER BY price DESC LIMIT 5"},
        "failed",
        0.0,
    ),
    (
        "order-matters-when-gold-orders",
        "SELECT name FROM products ORDER BY price ASC, id",
        {"gold_sql": "SELECT name FROM products ORDER BY price DESC, id"},
        "failed",
        0.0,
    ),
    (
        "order-ignored-when-gold-does-not-order",
        "SELECT name FROM products ORDER BY name DESC",
        {"gold_sql": "SELECT name FROM products"},
        "passed",
        1.0,
    ),
    (
        "non-ascii-text",
        "SELECT city FROM customers WHERE city LIKE 'S_o Paulo' OR city LIKE 'Montr_al' "
        "OR city IN ('Tokyo', 'Toronto', 'Osaka')",
        {
            "gold_sql": "SELECT city FROM customers "
            "WHERE city IN ('São Paulo', 'Montréal', 'Tokyo', 'Toronto', 'Osaka')"
        },
        "passed",
        1.0,
    ),
    (
        "nulls-kept",
        "SELECT city FROM customers WHERE country = 'Japan'",
        {"gold_sql": "SELECT city FROM customers WHERE country = 'Japan'", "compare": "multiset"},
        "passed",
        1.0,
    ),
    (
        "nulls-replaced-differ",
        "SELECT COALESCE(city, '') FROM customers WHERE country = 'Japan'",
        {"gold_sql": "SELECT city FROM customers WHERE country = 'Japan'"},
        "failed",
        0.0,
    ),
    (
        "floats-within-tolerance",
        "SELECT SUM(unit_price * quantity) FROM order_items",
        {"gold_sql": "SELECT SUM(quantity * unit_price) FROM order_items"},
        "passed",
        1.0,
    ),
    (
        "average-two-ways",
        "SELECT SUM(price) / COUNT(*) FROM products",
        {"gold_sql": "SELECT AVG(price) FROM products"},
        "passed",
        1.0,
    ),
    (
        "float-off-by-a-cent",
        "SELECT SUM(price) + 0.01 FROM products",
        {"gold_sql": "SELECT SUM(price) FROM products"},
        "failed",
        0.0,
    ),
    (
        "duplicates-ignored-by-set",
        "SELECT DISTINCT country FROM customers",
        {"gold_sql": "SELECT country FROM customers"},
        "passed",
        1.0,
    ),
    (
        "duplicates-count-in-multiset",
        "SELECT DISTINCT country FROM customers",
        {"gold_sql": "SELECT country FROM customers", "compare": "multiset"},
        "failed",
        0.0,
    ),
    (
        "empty-result-matches-empty-gold",
        "SELECT id FROM orders WHERE 1 = 0",
        {"gold_sql": "SELECT id FROM orders WHERE order_year = 1990"},
        "passed",
        1.0,
    ),
    (
        "empty-gold-scored-zero-on-request",
        "SELECT id FROM orders WHERE 1 = 0",
        {"gold_sql": "SELECT id FROM orders WHERE order_year = 1990", "empty_gold": "zero"},
        "failed",
        0.0,
    ),
    (
        "wrong-columns",
        "SELECT name FROM products",
        {"gold_sql": "SELECT name, price FROM products"},
        "failed",
        0.0,
    ),
    (
        "column-order-matters-by-default",
        "SELECT price, name FROM products",
        {"gold_sql": "SELECT name, price FROM products"},
        "failed",
        0.0,
    ),
    (
        "column-permutations-allowed",
        "SELECT price, name FROM products",
        {"gold_sql": "SELECT name, price FROM products", "column_permutations": True},
        "passed",
        1.0,
    ),
    (
        "expected-rows-instead-of-gold",
        "SELECT status, COUNT(*) FROM orders WHERE status = 'cancelled' GROUP BY status",
        {"expected_rows": [["cancelled", None]]},  # the count is filled in by the test
        "passed",
        1.0,
    ),
    (
        "engine-error",
        "SELECT nope FROM orders",
        {"gold_sql": "SELECT id FROM orders"},
        "runtime_error",
        0.0,
    ),
    ("not-sql", "SELEC name FRM products", {"gold_sql": "SELECT 1"}, "compile_error", 0.0),
    (
        "too-many-rows",
        "SELECT a.order_id FROM order_items a, order_items b",
        {"gold_sql": "SELECT 1"},
        "output_limit",
        0.0,
    ),
]


def _cancelled_count() -> int:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    for statement in SHOP:
        conn.execute(statement)
    (count,) = conn.execute("SELECT COUNT(*) FROM orders WHERE status = 'cancelled'").fetchone()
    return int(count)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("completion", "spec", "status", "reward"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_cases_on_every_engine(
    judge: tuple[SqlVerifier, LocalSandbox],
    databases: Databases,
    engine: str,
    completion: str,
    spec: dict[str, Any],
    status: str,
    reward: float,
) -> None:
    _skip_missing(engine, databases)
    if "expected_rows" in spec:
        spec = {"expected_rows": [["cancelled", _cancelled_count()]]}
    got = await _score(judge, completion, database="shop", dialect=engine, **spec)
    assert (got[0], got[1]) == (status, reward), got[2]
    if status == "failed" and "empty_gold" not in spec:
        assert "expected" in got[2]
    if "1990" in str(spec):
        assert got[3]["empty_gold"] is True


async def test_feedback_names_the_counts_and_the_first_differing_row(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    status, _, feedback, details = await _score(
        judge,
        "SELECT id FROM orders WHERE id <= 3",
        database="shop",
        gold_sql="SELECT id FROM orders WHERE id <= 4 ORDER BY id",
    )
    assert status == "failed"
    assert feedback.startswith(
        "expected 4 rows, got 3; first differing row: expected (4,), got nothing"
    )
    assert details["order_matters"] is True


async def test_a_group_of_predictions_runs_the_gold_once(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    verifier, sandbox = judge
    gold = "SELECT category, ROUND(AVG(price), 2) FROM products GROUP BY category -- group"
    spec = SqlSpec(database="shop", gold_sql=gold, dialect="sqlite")
    runs = verifier.stats.gold_runs
    predictions = [
        "SELECT category, ROUND(AVG(price), 2) FROM products GROUP BY category",
        "SELECT category, ROUND(SUM(price) / COUNT(*), 2) FROM products GROUP BY category",
        "SELECT category, MAX(price) FROM products GROUP BY category",
        "SELECT category FROM products",
    ] * 4
    verdicts = await asyncio.gather(*(verifier.verify(p, spec, sandbox) for p in predictions))
    assert [v.reward for v in verdicts] == [1.0, 1.0, 0.0, 0.0] * 4
    assert verifier.stats.gold_runs == runs + 1


async def test_the_server_default_for_empty_gold_results(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases
) -> None:
    _, sandbox = judge
    strict = SqlVerifier(data_dir=databases.data_dir, empty_gold="zero", workers=1)
    empty = {"gold_sql": "SELECT id FROM orders WHERE order_year = 1990", "database": "shop"}
    try:
        by_default = await strict.verify(
            "SELECT id FROM orders WHERE 1 = 0", SqlSpec(**empty), sandbox
        )
        asked = await strict.verify(
            "SELECT id FROM orders WHERE 1 = 0", SqlSpec(**empty, empty_gold="score"), sandbox
        )
    finally:
        await strict.close()
    assert (by_default.status.value, by_default.reward) == ("failed", 0.0)
    assert by_default.details["empty_gold"] is True
    assert (asked.status.value, asked.reward) == ("passed", 1.0)


async def test_a_cancelled_asker_leaves_the_gold_run_to_the_others(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    verifier, sandbox = judge
    target = verifier.registry.find("shop", "sqlite")
    assert isinstance(target, Target)
    sql = (  # about a second of work
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        "SELECT COUNT(*) FROM c"
    )
    first = asyncio.ensure_future(verifier.gold(target, sql, 10, sandbox))
    second = asyncio.ensure_future(verifier.gold(target, sql, 10, sandbox))
    await asyncio.sleep(0.01)
    first.cancel()
    outcome = await second
    assert outcome.ok
    assert first.cancelled()
    hits = verifier.stats.gold_hits
    assert (await verifier.gold(target, sql, 10, sandbox)).rows == outcome.rows
    assert verifier.stats.gold_hits == hits + 1  # from the cache


async def test_a_test_suite_must_match_on_every_database(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    gold = "SELECT country, COUNT(*) FROM customers GROUP BY country"
    # Right on both databases.
    status, reward, _, details = await _score(
        judge,
        "SELECT country, COUNT(id) FROM customers GROUP BY 1",
        databases=["shop", "shop_b"],
        gold_sql=gold,
    )
    assert (status, reward) == ("passed", 1.0)
    assert [d["database"] for d in details["databases"]] == ["shop", "shop_b"]
    # A query that hard-codes what holds on the first database only.
    verifier, sandbox = judge
    rows = (await verifier.gold(verifier.registry.find("shop", "sqlite"), gold, 10, sandbox)).rows  # type: ignore[arg-type]
    assert rows is not None
    hard_coded = " UNION ALL ".join(f"SELECT '{c}', {n}" for c, n in rows)
    status, reward, feedback, _ = await _score(
        judge, hard_coded, databases=["shop", "shop_b"], gold_sql=gold
    )
    single = await _score(judge, hard_coded, database="shop", gold_sql=gold)
    assert single[:2] == ("passed", 1.0)
    assert (status, reward) == ("failed", 0.0)
    assert "on shop_b" in feedback


async def test_setup_sql_fixtures_are_built_once_per_setup(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    verifier, _ = judge
    setup = (
        "CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, NULL), (2, NULL);"
    )
    built = verifier.stats.fixtures_built
    for dialect in ("sqlite", "duckdb"):
        for pred, reward in [("SELECT a, b FROM t", 1.0), ("SELECT a FROM t", 0.0)] * 3:
            status, got, _, _ = await _score(
                judge, pred, setup_sql=setup, gold_sql="SELECT a, b FROM t", dialect=dialect
            )
            assert got == reward
    assert verifier.stats.fixtures_built == built + 2
    status, reward, feedback, _ = await _score(
        judge, "SELECT 1", setup_sql="CREATE TABLE (", gold_sql="SELECT 1"
    )
    assert (status, reward) == ("invalid_spec", None)
    assert "setup_sql failed" in feedback


async def test_transpiled_from_another_dialect(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases
) -> None:
    # A prediction written for PostgreSQL (ILIKE, ::casts) run on the SQLite database.
    status, reward, _, details = await _score(
        judge,
        "SELECT COUNT(*)::INT FROM customers WHERE name ILIKE 'ana%'",
        database="shop",
        dialect="sqlite",
        transpile_from="postgres",
        gold_sql="SELECT COUNT(*) FROM customers WHERE name LIKE 'Ana%'",
    )
    assert (status, reward) == ("passed", 1.0)
    assert "ILIKE" not in details["transpiled"]


# -- attacks ------------------------------------------------------------------------------------

FORBIDDEN: list[tuple[str, str, str]] = [
    ("delete", "sqlite", "DELETE FROM orders"),
    ("drop", "sqlite", "DROP TABLE orders"),
    ("insert", "duckdb", "INSERT INTO orders VALUES (9999, 1, 2020, 'x', NULL)"),
    ("update", "postgres", "UPDATE products SET price = 0"),
    ("second-statement", "sqlite", "SELECT 1; DELETE FROM orders"),
    ("cte-delete", "postgres", "WITH x AS (DELETE FROM orders RETURNING *) SELECT COUNT(*) FROM x"),
    ("attach", "sqlite", "ATTACH DATABASE '/tmp/evil.db' AS evil"),
    ("pragma", "sqlite", "PRAGMA writable_schema = ON"),
    ("vacuum-into", "sqlite", "VACUUM INTO '/tmp/copy.db'"),
    ("load-extension", "sqlite", "SELECT load_extension('/tmp/evil.so')"),
    ("select-into", "postgres", "SELECT * INTO stolen FROM orders"),
    ("copy", "postgres", "COPY orders TO '/tmp/orders.csv'"),
    ("set", "postgres", "SET default_transaction_read_only = off"),
    ("set-config", "postgres", "SELECT set_config('default_transaction_read_only', 'off', false)"),
    ("read-file", "postgres", "SELECT pg_read_file('/etc/passwd')"),
    ("read-csv", "duckdb", "SELECT * FROM read_csv('/etc/passwd')"),
    ("install", "duckdb", "INSTALL httpfs"),
    ("for-update", "postgres", "SELECT * FROM orders FOR UPDATE"),
]


@pytest.mark.parametrize(
    ("engine", "attack"), [f[1:] for f in FORBIDDEN], ids=[f[0] for f in FORBIDDEN]
)
async def test_writes_and_escapes_are_forbidden(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases, engine: str, attack: str
) -> None:
    _skip_missing(engine, databases)
    before = databases.fingerprints()
    status, reward, _, _ = await _score(
        judge, attack, database="shop", dialect=engine, gold_sql="SELECT 1"
    )
    assert (status, reward) == ("forbidden", 0.0)
    assert databases.fingerprints() == before


# Run on the engine directly, past the parse check: each engine's own lock holds.
ENGINE_LOCKS: list[tuple[str, str, str]] = [
    ("sqlite-delete", "sqlite", "DELETE FROM orders"),
    ("sqlite-attach", "sqlite", "ATTACH DATABASE '/tmp/evil.db' AS evil"),
    ("sqlite-pragma", "sqlite", "PRAGMA writable_schema = ON"),
    ("sqlite-vacuum-into", "sqlite", "VACUUM INTO '/tmp/copy.db'"),
    ("sqlite-load-extension", "sqlite", "SELECT load_extension('/tmp/evil.so')"),
    ("sqlite-create", "sqlite", "CREATE TABLE evil (a)"),
    ("duckdb-delete", "duckdb", "DELETE FROM orders"),
    ("duckdb-read-csv", "duckdb", "SELECT * FROM read_csv('/etc/passwd')"),
    ("duckdb-set", "duckdb", "SET enable_external_access = true"),
    ("duckdb-attach", "duckdb", "ATTACH '/tmp/evil.duckdb' AS evil"),
    ("duckdb-copy", "duckdb", "COPY orders TO '/tmp/orders.csv'"),
    ("duckdb-install", "duckdb", "INSTALL httpfs"),
    ("postgres-delete", "postgres", "DELETE FROM orders"),
    ("postgres-read-file", "postgres", "SELECT pg_read_file('/etc/passwd')"),
    ("postgres-copy", "postgres", "COPY orders TO '/tmp/orders.csv'"),
    ("postgres-create", "postgres", "CREATE TABLE evil (a int)"),
    ("postgres-cte-delete", "postgres", "WITH x AS (DELETE FROM orders RETURNING *) SELECT 1"),
]


@pytest.mark.parametrize(
    ("engine", "attack"), [f[1:] for f in ENGINE_LOCKS], ids=[f[0] for f in ENGINE_LOCKS]
)
async def test_each_engine_refuses_writes_by_itself(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases, engine: str, attack: str
) -> None:
    _skip_missing(engine, databases)
    verifier, sandbox = judge
    before = databases.fingerprints()
    target = verifier.registry.find("shop", engine)
    assert isinstance(target, Target)
    outcome = await verifier.run_query(target, "pred", attack, 5, sandbox)
    assert not outcome.ok
    assert outcome.kind == "error", outcome.error
    assert databases.fingerprints() == before


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_temporary_table_cannot_shadow_a_table_for_the_next_query(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases, engine: str
) -> None:
    _skip_missing(engine, databases)
    verifier, sandbox = judge
    target = verifier.registry.find("shop", engine)
    assert isinstance(target, Target)
    count = "SELECT COUNT(*) FROM orders"
    real = await verifier.run_query(target, "pred", count, 5, sandbox)
    assert real.ok
    for attack in (
        "CREATE TEMP TABLE orders AS SELECT 42 AS id",
        "CREATE TEMPORARY VIEW orders AS SELECT 42 AS id",
    ):
        await verifier.run_query(target, "pred", attack, 5, sandbox)  # refused, or contained
        after = await verifier.run_query(target, "pred", count, 5, sandbox)
        assert after.rows == real.rows, attack


async def test_settings_changed_by_a_query_do_not_reach_the_next(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases
) -> None:
    _skip_missing("postgres", databases)
    verifier, sandbox = judge
    target = verifier.registry.find("shop", "postgres")
    assert isinstance(target, Target)
    changed = await verifier.run_query(
        target,
        "pred",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        5,
        sandbox,
    )
    assert changed.rows == [("off",)]
    after = await verifier.run_query(
        target, "pred", "SELECT current_setting('default_transaction_read_only')", 5, sandbox
    )
    assert after.rows == [("on",)]


async def test_a_postgres_role_that_may_do_more_than_read_is_refused(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases
) -> None:
    _skip_missing("postgres", databases)
    assert databases.postgres is not None
    _, sandbox = judge
    verifier = SqlVerifier(postgres={"shop": databases.postgres.dsn("shop")}, workers=1)
    try:
        verdict = await verifier.verify(
            "SELECT 1", SqlSpec(database="shop", gold_sql="SELECT 1"), sandbox
        )
    finally:
        await verifier.close()
    assert verdict.status.value == "unavailable"
    assert "superuser" in verdict.feedback


async def test_a_database_that_cannot_be_reached_makes_items_unavailable(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    _, sandbox = judge
    nothing_there = shared_dir("assay-no-pg-")
    verifier = SqlVerifier(
        postgres={"gone": f"host={nothing_there} dbname=gone user=x password=y"}, workers=1
    )
    try:
        spec = SqlSpec(database="gone", gold_sql="SELECT 1")
        assert verifier.check(spec, sandbox) is None
        verdict = await verifier.verify("SELECT 1", spec, sandbox)
    finally:
        await verifier.close()
        shutil.rmtree(nothing_there, ignore_errors=True)
    assert verdict.status.value == "unavailable"
    assert "cannot open gone" in verdict.feedback


RUNAWAY: list[tuple[str, str, str]] = [
    (
        "sqlite-endless-recursion",
        "sqlite",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
    ),
    (
        "sqlite-huge-sort",
        "sqlite",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
        "SELECT x FROM c ORDER BY random() LIMIT 1",
    ),
    ("sqlite-huge-value", "sqlite", "SELECT length(randomblob(1000000000))"),
    (
        "duckdb-billion-rows-sorted",
        "duckdb",
        "SELECT x FROM range(1000000000) t(x) ORDER BY random() LIMIT 1",
    ),
    (
        "duckdb-huge-string",
        "duckdb",
        "SELECT length(string_agg(repeat('x', 1000), '')) FROM range(100000000)",
    ),
    (
        "postgres-endless-recursion",
        "postgres",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
    ),
    ("postgres-sleep", "postgres", "SELECT pg_sleep(60)"),
]


@pytest.mark.parametrize(
    ("engine", "attack"), [r[1:] for r in RUNAWAY], ids=[r[0] for r in RUNAWAY]
)
async def test_runaway_queries_cost_one_worker_and_the_next_query_is_answered(
    judge: tuple[SqlVerifier, LocalSandbox], databases: Databases, engine: str, attack: str
) -> None:
    _skip_missing(engine, databases)
    before = databases.fingerprints()
    status, reward, feedback, _ = await _score(
        judge, attack, database="shop", dialect=engine, gold_sql="SELECT 1", timeout_s=3
    )
    assert reward == 0.0
    assert status in ("timeout", "memory_limit", "runtime_error", "output_limit"), feedback
    after = await _score(
        judge,
        "SELECT COUNT(*) FROM orders",
        database="shop",
        dialect=engine,
        gold_sql="SELECT COUNT(id) FROM orders",
    )
    assert after[:2] == ("passed", 1.0)
    assert databases.fingerprints() == before


async def test_unknown_databases_and_ambiguous_names_are_explained(
    judge: tuple[SqlVerifier, LocalSandbox],
) -> None:
    verifier, sandbox = judge
    missing = verifier.check(SqlSpec(database="nowhere", gold_sql="SELECT 1"), sandbox)
    assert missing is not None
    assert "nowhere" in missing
    both = verifier.check(SqlSpec(database="shop", gold_sql="SELECT 1"), sandbox)
    assert both is not None
    assert "set dialect" in both
    traversal = verifier.check(
        SqlSpec(database="..", gold_sql="SELECT 1", dialect="sqlite"), sandbox
    )
    assert traversal is not None


async def test_the_spec_wants_one_reference_and_one_database() -> None:
    with pytest.raises(ValueError, match="gold_sql"):
        SqlSpec(database="shop")
    with pytest.raises(ValueError, match="database"):
        SqlSpec(gold_sql="SELECT 1")
    with pytest.raises(ValueError, match="database"):
        SqlSpec(gold_sql="SELECT 1", database="a", setup_sql="CREATE TABLE t (a)")
    with pytest.raises(ValueError, match="setup_sql"):
        SqlSpec(gold_sql="SELECT 1", setup_sql="CREATE TABLE t (a)", dialect="postgres")
