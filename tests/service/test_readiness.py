"""Readiness and refusal when the sandbox cannot run, through the ASGI app."""

from __future__ import annotations

from pathlib import Path

import httpx

from assay.sandboxes import LocalSandbox
from assay.service import Engine, Settings, create_app


async def test_missing_bwrap_is_not_ready_and_refuses_code(tmp_path: Path) -> None:
    engine = Engine(LocalSandbox(bwrap=None, lock_dir=tmp_path))
    app = create_app(Settings(), engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://assay") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["retry-after"].isdigit()
        assert "bubblewrap" in ready.json()["missing"][0]
        assert (await client.get("/healthz")).status_code == 200
        body = {
            "items": [
                {
                    "verifier": "code",
                    "completion": "print(1)",
                    "spec": {"language": "python", "test_code": "pass"},
                }
            ]
        }
        (result,) = (await client.post("/v1/score", json=body)).json()["results"]
        assert result["status"] == "unavailable"
        assert result["reward"] is None
        listed = (await client.get("/v1/verifiers")).json()["verifiers"][0]
        assert listed["available"] is False
        assert "bubblewrap" in listed["reason"]
