"""The service's settings, read from `ASSAY_*` environment variables (and nowhere else)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cores() -> int:
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ASSAY_", env_nested_delimiter="__", extra="forbid"
    )

    api_keys: list[str] = Field(
        default_factory=list,
        description="When non-empty, every /v1/* call needs `Authorization: Bearer <key>`.",
    )
    sandbox: Literal["local", "unsandboxed"] = Field(
        default="local",
        description="`local`: bubblewrap. `unsandboxed`: run untrusted code bare (an explicit "
        "operator's choice for machines without bubblewrap; never a fallback).",
    )
    sandbox_jobs: int = Field(
        default_factory=lambda: 2 * _cores(), ge=1, description="Sandbox jobs running at once."
    )
    sandbox_memory_cgroups: bool = Field(
        default=True,
        description="A memory cgroup per job where this process may make them (root, or a "
        "delegated cgroup): caps all of a job's processes and tmpfs files together.",
    )
    sandbox_uid_base: int = Field(default=61000, ge=1000)
    sandbox_uid_count: int = Field(default=1000, ge=1)
    concurrency: dict[str, int] = Field(
        default_factory=dict, description="Items judged at once, per verifier name."
    )
    default_concurrency: int = Field(
        default_factory=lambda: 2 * _cores(),
        ge=1,
        description="Items judged at once for a verifier not named in `concurrency`.",
    )
    cache_entries: int = Field(default=100_000, ge=0, description="Result cache size.")
    cache_bytes: int = Field(
        default=256 << 20,
        ge=0,
        description="Result cache size in bytes (of its verdicts' text and details, roughly).",
    )
    max_items: int = Field(default=10_000, ge=1, description="Items per request (else 413).")
    max_body_bytes: int = Field(default=64 << 20, ge=1024, description="Body size (else 413).")
    max_pending_items: int = Field(
        default=100_000,
        ge=1,
        description="Items accepted but not finished, over all requests (else 429).",
    )
    max_item_s: float = Field(default=600.0, gt=0, description="Deadline cap for one item.")
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After on 429 and 503.")
