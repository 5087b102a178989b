"""The HTTP service and the Engine behind it."""

from __future__ import annotations

from assay.service.app import app_from_env, create_app
from assay.service.engine import Engine
from assay.service.settings import Settings

__all__ = ["Engine", "Settings", "app_from_env", "create_app"]
