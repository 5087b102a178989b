"""docs/api.md, the wire contract shipped with the repository, against the OpenAPI schema a
real server serves: its endpoints, the request and result fields, the statuses, and every
field of each served verifier's spec model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server

API = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()


def section(title: str, level: str = "##") -> str:
    found = re.search(
        rf"^{level} {re.escape(title)}\n(.*?)(?=^#{{2,{len(level)}}} |\Z)", API, re.M | re.S
    )
    assert found, f"docs/api.md has no section {level} {title}"
    return found.group(1)


@pytest.fixture(scope="module")
def openapi(server: Server) -> dict[str, Any]:
    schema: dict[str, Any] = httpx.get(f"{server.url}/openapi.json").json()
    return schema


def test_endpoints_are_the_served_ones(openapi: dict[str, Any]) -> None:
    documented = set(re.findall(r"^\| `(GET|POST) (/[^` ]*)`", section("Endpoints"), re.M))
    served = {
        (method.upper(), path)
        for path, operations in openapi["paths"].items()
        for method in operations
    }
    # /docs is FastAPI's UI page, which is not part of the schema it serves.
    assert documented - {("GET", "/docs")} == served


def fields(schema: dict[str, Any], name: str) -> set[str]:
    return set(schema["components"]["schemas"][name]["properties"])


def test_request_and_result_fields(openapi: dict[str, Any]) -> None:
    request = set(re.findall(r"^- `(\w+)`:", section("Request"), re.M))
    assert request == fields(openapi, "ScoreItem")
    example = re.search(r"```json\n(.*?)```", section("Result"), re.S)
    assert example
    inner = {"tests", "passed", "time_ms", "cpu_ms"}  # keys of the example's `details`
    result_keys = set(re.findall(r'"(\w+)":', example.group(1))) - inner
    assert result_keys == fields(openapi, "ScoreResult")
    statuses = set(re.findall(r"^\s*\| `(\w+)` \|", section("Result"), re.M))
    served = openapi["components"]["schemas"]["ScoreResult"]["properties"]["status"]["enum"]
    assert statuses == set(served)


def test_every_served_spec_field_is_documented(openapi: dict[str, Any]) -> None:
    specs = {
        schema["x-assay-verifier"]: schema
        for schema in openapi["components"]["schemas"].values()
        if "x-assay-verifier" in schema
    }
    assert "code" in specs
    for verifier, schema in specs.items():
        table = section(verifier, "###")
        rows = re.findall(r"^\| ((?:`\w+`(?:, | or )?)+) \|", table, re.M)
        names = {n for row in rows for n in re.findall(r"`(\w+)`", row)}
        missing = set(schema["properties"]) - names
        assert not missing, f"docs/api.md, spec of {verifier}: {sorted(missing)} undocumented"


def test_trainer_protocols_are_documented(openapi: dict[str, Any]) -> None:
    text = section("Trainer labels and protocols")
    for name in ("OpenRLHFRequest", "SlimeRequest"):
        for field in fields(openapi, name):
            assert f'"{field}"' in text, f"{name}.{field}"
    for field in fields(openapi, "OpenRLHFResponse"):
        assert f'"{field}"' in text


def test_readme_points_at_the_contract_in_the_repository() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "docs/api.md" in readme
    assert "../shared" not in readme
