"""A realistic shop database for the sql verifier's tests, the same on SQLite, DuckDB and
PostgreSQL: customers, products, orders and their lines, with NULLs, floats and repeats."""

from __future__ import annotations

import random

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, country TEXT NOT NULL,
    signup_year INTEGER NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
    price DOUBLE PRECISION NOT NULL,
    discontinued INTEGER NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
    order_year INTEGER NOT NULL, status TEXT NOT NULL, note TEXT
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL, unit_price DOUBLE PRECISION NOT NULL
);
"""

_CITIES = {
    "France": ["Paris", "Lyon", "Marseille", None],
    "Germany": ["Berlin", "Munich", "Hamburg"],
    "Japan": ["Tokyo", "Osaka", None],
    "Brazil": ["São Paulo", "Rio de Janeiro"],
    "Canada": ["Toronto", "Montréal", "Vancouver"],
}
_FIRST = ["Ana", "Bruno", "Chloé", "Daniel", "Emi", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
_LAST = ["Martin", "Schmidt", "Sato", "Silva", "Tremblay", "Dubois", "Weber", "Suzuki"]
_CATEGORIES = {
    "books": ["Atlas", "Cookbook", "Novel", "Guide", "Poems"],
    "garden": ["Rake", "Hose", "Seeds", "Pots"],
    "kitchen": ["Kettle", "Pan", "Knife", "Grater", "Scale"],
    "toys": ["Kite", "Puzzle", "Blocks"],
}


def _quote(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def statements(customers: int = 60, orders: int = 400, seed: int = 7) -> list[str]:
    """The DDL and INSERTs, one statement each, valid on all three engines."""
    rng = random.Random(seed)
    out = [s.strip() for s in SCHEMA.split(";") if s.strip()]
    rows: dict[str, list[tuple[object, ...]]] = {
        "customers": [],
        "products": [],
        "orders": [],
        "order_items": [],
    }
    for cid in range(1, customers + 1):
        country = rng.choice(sorted(_CITIES))
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        rows["customers"].append(
            (cid, name, rng.choice(_CITIES[country]), country, rng.randint(2015, 2024))
        )
    pid = 0
    prices: dict[int, float] = {}
    for category in sorted(_CATEGORIES):
        for base in _CATEGORIES[category]:
            for size in ("S", "L"):
                pid += 1
                price = round(rng.uniform(2, 120), 2)
                prices[pid] = price
                rows["products"].append(
                    (pid, f"{base} {size}", category, price, int(rng.random() < 0.15))
                )
    statuses = ["shipped", "shipped", "shipped", "pending", "cancelled"]
    for oid in range(1, orders + 1):
        note = rng.choice([None, None, None, "gift", "urgent", "it's fragile"])
        rows["orders"].append(
            (oid, rng.randint(1, customers), rng.randint(2019, 2024), rng.choice(statuses), note)
        )
        for product in rng.sample(sorted(prices), rng.randint(1, 4)):
            quantity = rng.randint(1, 5)
            # Some lines sold at a discount: prices that are not the list price.
            unit = prices[product] if rng.random() < 0.8 else round(prices[product] * 0.9, 2)
            rows["order_items"].append((oid, product, quantity, unit))
    for table, values in rows.items():
        for start in range(0, len(values), 200):
            chunk = values[start : start + 200]
            body = ", ".join("(" + ", ".join(_quote(v) for v in row) + ")" for row in chunk)
            out.append(f"INSERT INTO {table} VALUES {body}")
    return out


def script(**kwargs: int) -> str:
    return ";\n".join(statements(**kwargs)) + ";\n"
