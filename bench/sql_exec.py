"""Benchmark: text-to-SQL execution rewards, assay's sql verifier against the plain way.

The items: `--golds` gold queries (default 100) x `--per-gold` predictions (default 50) on one
SQLite database of `--orders` orders (default 100,000; with customers, products and about 2.5
order lines per order, 370,000 rows in all). Per gold query, 10 distinct predictions (the gold
itself, equivalent rewrites, wrong ones, one that is not SQL, one whose result is empty), each
sent 5 times, as a GRPO group repeats answers.

Both ways run in the same process, one after the other, on the same items:
- assay: the Engine of `assay serve` built in-process from settings (sandboxed, warm database
  workers; gold results cached per (database, gold query); identical items judged once), the
  whole set as one batch;
- plain: as BIRD's scorer (`evaluation_ex.py`) does, per item a fresh `sqlite3.connect`, the
  prediction then the gold executed and fetched, rewarded by `set(pred) == set(gold)`; items in
  a thread pool as wide as the machine's cores (SQLite releases the GIL while it runs).

The specs ask for BIRD's comparison (`compare: set`, `order_matters: false`, `float_tol: 0`), so
both ways must give every item the same reward; the script says which items differ, if any.

    .venv/bin/python bench/sql_exec.py [--golds 100] [--per-gold 50] [--orders 100000]
                                       [--rounds 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from assay.clients.schema import ScoreItem
from assay.service.app import build_engine
from assay.service.settings import Settings

COUNTRIES = ["Brazil", "Canada", "France", "Germany", "India", "Japan", "Kenya", "Mexico"]
CATEGORIES = ["books", "garden", "kitchen", "toys", "tools", "music"]
STATUSES = ["shipped", "shipped", "shipped", "pending", "cancelled", "returned"]


def build_database(folder: Path, orders: int, seed: int = 1) -> tuple[Path, int]:
    """`<folder>/shop/shop.sqlite` and its number of rows."""
    rng = random.Random(seed)
    (folder / "shop").mkdir(mode=0o755)
    path = folder / "shop" / "shop.sqlite"
    conn = sqlite3.connect(path)
    customers = max(50, orders // 20)
    conn.executescript(
        """
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, country TEXT,
                                signup_year INTEGER);
        CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, order_year INTEGER,
                             status TEXT);
        CREATE TABLE order_items (order_id INTEGER, product_id INTEGER, quantity INTEGER);
        """
    )
    conn.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
        [
            (
                i,
                f"customer {i}",
                rng.choice([None, "north", "south", "east"]),
                rng.choice(COUNTRIES),
                rng.randint(2015, 2024),
            )
            for i in range(1, customers + 1)
        ],
    )
    conn.executemany(
        "INSERT INTO products VALUES (?, ?, ?, ?)",
        [
            (i, f"product {i}", rng.choice(CATEGORIES), round(rng.uniform(1, 200), 2))
            for i in range(1, 201)
        ],
    )
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?)",
        [
            (i, rng.randint(1, customers), rng.randint(2018, 2024), rng.choice(STATUSES))
            for i in range(1, orders + 1)
        ],
    )
    lines = [
        (o, rng.randint(1, 200), rng.randint(1, 6))
        for o in range(1, orders + 1)
        for _ in range(rng.randint(1, 4))
    ]
    conn.executemany("INSERT INTO order_items VALUES (?, ?, ?)", lines)
    conn.executescript(
        """
        CREATE INDEX orders_customer ON orders (customer_id);
        CREATE INDEX items_order ON order_items (order_id);
        CREATE INDEX customers_country ON customers (country, signup_year);
        """
    )
    conn.commit()
    conn.close()
    path.chmod(0o644)
    return path, customers + 200 + orders + len(lines)


def gold_queries(n: int, customers: int, orders: int, seed: int = 2) -> list[str]:
    rng = random.Random(seed)
    templates = [
        "SELECT status, COUNT(*) FROM orders WHERE customer_id = {c} GROUP BY status",
        "SELECT p.category, SUM(oi.quantity) FROM order_items oi JOIN products p "
        "ON p.id = oi.product_id WHERE oi.order_id BETWEEN {o} AND {o} + 300 GROUP BY p.category",
        "SELECT name, city FROM customers WHERE country = '{country}' AND signup_year = {y}",
        "SELECT o.id, o.order_year FROM orders o WHERE o.customer_id = {c} ORDER BY o.id",
        "SELECT COUNT(DISTINCT oi.product_id) FROM order_items oi JOIN orders o "
        "ON o.id = oi.order_id WHERE o.customer_id = {c}",
    ]
    golds = []
    for i in range(n):
        golds.append(
            templates[i % len(templates)].format(
                c=rng.randint(1, customers),
                o=rng.randint(1, max(1, orders - 300)),
                country=rng.choice(COUNTRIES),
                y=rng.randint(2015, 2024),
            )
        )
    return golds


def predictions(gold: str) -> list[str]:
    """Ten distinct predictions for a gold query: right, wrong, broken and empty."""
    return [
        gold,
        gold.replace("SELECT", "select").replace("FROM", "from"),
        f"SELECT * FROM ({gold}) AS sub",
        f"SELECT * FROM ({gold}) AS a UNION SELECT * FROM ({gold}) AS b",
        f"SELECT * FROM ({gold}) AS sub LIMIT 1",
        gold.replace("= ", "<> ", 1) if "= " in gold else gold + " LIMIT 0",
        gold.replace("SELECT", "SELECT nope,", 1),
        gold.replace("SELECT", "SELEC", 1),
        f"SELECT * FROM ({gold}) AS sub WHERE 1 = 0",
        f"SELECT * FROM ({gold}) AS sub LIMIT 2",
    ]


def make_items(golds: list[str], per_gold: int) -> list[dict[str, Any]]:
    items = []
    for gold in golds:
        distinct = predictions(gold)
        for k in range(per_gold):
            items.append(
                {
                    "verifier": "sql",
                    "completion": distinct[k % len(distinct)],
                    "extract": "raw",
                    "spec": {
                        "database": "shop",
                        "gold_sql": gold,
                        "compare": "set",
                        "order_matters": False,
                        "float_tol": 0,
                    },
                }
            )
    return items


def plain_reward(db: Path, pred: str, gold: str) -> float:
    """BIRD's way: a fresh connection, the prediction then the gold, rows as sets."""
    conn = sqlite3.connect(db)
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(pred)
            predicted = cursor.fetchall()
        except sqlite3.Error:
            return 0.0
        cursor.execute(gold)
        expected = cursor.fetchall()
        return 1.0 if set(predicted) == set(expected) else 0.0
    finally:
        conn.close()


def run_plain(db: Path, items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        rewards = list(
            pool.map(
                lambda item: plain_reward(db, item["completion"], item["spec"]["gold_sql"]), items
            )
        )
    return time.perf_counter() - started, rewards


async def run_assay(data_dir: Path, items: list[dict[str, Any]]) -> tuple[float, list[Any], Any]:
    engine = build_engine(Settings(sql_data_dir=str(data_dir)))
    try:
        started = time.perf_counter()
        results = await engine.score([ScoreItem.model_validate(i) for i in items])
        elapsed = time.perf_counter() - started
        facts = engine.verifiers["sql"].facts(engine.sandbox)
    finally:
        await engine.close()
    return elapsed, results, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golds", type=int, default=100)
    parser.add_argument("--per-gold", type=int, default=50)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="assay-bench-sql-"))
    folder.chmod(0o755)
    try:
        db, rows = build_database(folder, args.orders)
        customers = max(50, args.orders // 20)
        rounds = []
        for number in range(args.rounds):
            golds = gold_queries(args.golds, customers, args.orders, seed=100 + number)
            items = make_items(golds, args.per_gold)
            assay_s, results, facts = asyncio.run(run_assay(folder, items))
            plain_s, plain = run_plain(db, items)
            statuses: dict[str, int] = {}
            for r in results:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            differ = [
                i
                for i, (r, p) in enumerate(zip(results, plain, strict=True))
                if (r.reward or 0.0) != p
            ]
            rounds.append(
                {
                    "items": len(items),
                    "assay_items_per_s": round(len(items) / assay_s, 1),
                    "plain_items_per_s": round(len(items) / plain_s, 1),
                    "ratio": round(plain_s / assay_s, 2),
                    "statuses": statuses,
                    "cached": sum(r.cached for r in results),
                    "gold_runs": facts["gold_cache"]["runs"],
                    "workers_started": facts["pool"]["started"],
                    "disagreements": differ[:20],
                }
            )
            print(json.dumps(rounds[-1]))
        report = {
            "database_rows": rows,
            "golds": args.golds,
            "per_gold": args.per_gold,
            "cores": os.cpu_count(),
            "rounds": rounds,
        }
        median = statistics.median
        print(
            f"\n{rows:,} rows; {rounds[0]['items']:,} items a round, {len(rounds)} round(s), "
            f"medians\n"
            f"| assay sql (gold cache, dedupe, warm sandboxed workers) | "
            f"{median(r['assay_items_per_s'] for r in rounds):,.0f} items/s |\n"
            f"| plain (fresh connection per item, both queries, BIRD) | "
            f"{median(r['plain_items_per_s'] for r in rounds):,.0f} items/s |\n"
            f"| ratio (assay / plain) | {median(r['ratio'] for r in rounds):.2f} |\n"
            f"| items whose rewards differ | {sum(len(r['disagreements']) for r in rounds)} |"
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
