"""The served OpenAPI schema also describes each verifier's `spec`.

On the wire `spec` is a free JSON object (each verifier validates its own, so that a bad spec
fails one item, not the batch); here each verifier's spec model is added to
`components.schemas` under its class name, marked `x-assay-verifier: <name>`, so that `/docs`
shows it and tests/test_docs.py can hold docs/api.md to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


def add_spec_schemas(app: FastAPI, spec_models: Mapping[str, type[BaseModel]]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in sorted(spec_models.items()):
                spec = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for sub, sub_schema in spec.pop("$defs", {}).items():
                    components.setdefault(sub, sub_schema)
                components[model.__name__] = {**spec, "x-assay-verifier": name}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["add_spec_schemas"]
