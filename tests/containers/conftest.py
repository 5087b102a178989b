"""The container engine the docker-backend tests talk to: one Podman API service a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.containers.engine import engine


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    with engine() as url:
        if url is None:
            pytest.skip("no container engine here (scripts/install test sets up Podman)")
        yield url
