"""The sql verifier behind a real `assay serve`: databases from settings, listed by
/v1/verifiers and `assay verifiers`; a batch of right, wrong and hostile queries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, needs_bwrap, start_server, stop_server
from tests.verifiers.sql_data import statements
from tests.verifiers.sql_servers import digest, make_duckdb, make_sqlite, shared_dir

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Server, Path, Path, Path]]:
    data_dir = shared_dir("assay-sql-http-")
    sqlite = make_sqlite(data_dir, "shop", statements())
    duck = make_duckdb(data_dir, "warehouse", statements())
    settings = {
        "sql_data_dir": str(data_dir),
        "sql_duckdb": json.dumps({"warehouse": str(duck)}),
        "sql_workers": "2",
    }
    server = start_server(**settings)
    try:
        yield server, data_dir, sqlite, duck
    finally:
        stop_server(server)
        shutil.rmtree(data_dir, ignore_errors=True)


def _item(completion: str, **spec: object) -> dict[str, object]:
    return {"verifier": "sql", "completion": completion, "spec": spec}


def test_a_batch_of_right_wrong_and_hostile_queries(
    served: tuple[Server, Path, Path, Path],
) -> None:
    server, _, sqlite, duck = served
    before = digest(sqlite), digest(duck)
    gold = "SELECT status, COUNT(*) FROM orders GROUP BY status"
    items = [
        _item(f"```sql\n{gold}\n```", database="shop", gold_sql=gold),
        _item("SELECT status, COUNT(*) FROM orders GROUP BY 1", database="shop", gold_sql=gold),
        _item("SELECT status, COUNT(*) FROM orders", database="shop", gold_sql=gold),
        _item("DELETE FROM orders", database="shop", gold_sql=gold),
        _item("ATTACH DATABASE '/tmp/x.db' AS x", database="shop", gold_sql=gold),
        _item(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT COUNT(*) FROM c",
            database="shop",
            gold_sql=gold,
            timeout_s=2,
        ),
        _item(gold, database="warehouse", gold_sql=gold),
        _item("SELECT * FROM read_csv('/etc/passwd')", database="warehouse", gold_sql=gold),
        _item("SELECT 1", database="nowhere", gold_sql="SELECT 1"),
        _item("SELECT 1", gold_sql="SELECT 1"),
    ]
    response = httpx.post(f"{server.url}/v1/score", json={"items": items}, timeout=120)
    assert response.status_code == 200
    got = [(r["status"], r["reward"]) for r in response.json()["results"]]
    assert got == [
        ("passed", 1.0),
        ("passed", 1.0),
        ("failed", 0.0),
        ("forbidden", 0.0),
        ("forbidden", 0.0),
        ("timeout", 0.0),
        ("passed", 1.0),
        ("forbidden", 0.0),
        ("unavailable", None),
        ("invalid_spec", None),
    ]
    assert (digest(sqlite), digest(duck)) == before
    # Still answering, with warm workers.
    again = httpx.post(f"{server.url}/v1/score", json={"items": items[1:2]}, timeout=60)
    assert again.json()["results"][0]["status"] == "passed"


def test_the_databases_are_listed(served: tuple[Server, Path, Path, Path]) -> None:
    server, data_dir, _, duck = served
    listing = httpx.get(f"{server.url}/v1/verifiers", timeout=30).json()
    sql = next(v for v in listing["verifiers"] if v["name"] == "sql")
    assert sql["available"] is True
    assert sql["facts"]["databases"]["sqlite"] == ["shop"]
    assert sql["facts"]["databases"]["duckdb"] == ["warehouse"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["ASSAY_SQL_DATA_DIR"] = str(data_dir)
    env["ASSAY_SQL_DUCKDB"] = json.dumps({"warehouse": str(duck)})
    out = subprocess.run(
        [sys.executable, "-m", "assay.clients.cli", "verifiers"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sqlite: yes; databases: shop" in out
    assert "duckdb: yes; databases: warehouse" in out
