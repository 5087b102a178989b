"""The service's settings, read from `ASSAY_*` environment variables (and nowhere else)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator
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
    sandbox: Literal["local", "docker", "unsandboxed"] = Field(
        default="local",
        description="`local`: bubblewrap. `docker`: warm language containers through the Docker "
        "Engine API (`docker_*` settings). `unsandboxed`: run untrusted code bare (an explicit "
        "operator's choice for machines without bubblewrap; never a fallback).",
    )
    docker_host: str | None = Field(
        default=None,
        description="The engine's API (`unix:///var/run/docker.sock`); default: DOCKER_HOST.",
    )
    docker_images: list[str] = Field(
        default_factory=lambda: ["assay/python"],
        description="Language images; a job goes to the first whose PATH has its program.",
    )
    docker_containers_per_image: int = Field(
        default_factory=_cores, ge=1, description="Warm containers per image, at most."
    )
    docker_max_uses: int = Field(default=500, ge=1, description="Jobs per container.")
    docker_memory_mb: int = Field(default=1024, ge=64, description="Memory per container.")
    docker_pids: int = Field(default=128, ge=8, description="Processes per container.")
    docker_cpus: float = Field(default=1.0, gt=0, description="CPUs per container.")
    docker_tool_images: dict[str, str] = Field(
        default_factory=lambda: {"sql": "assay/sql", "svg": "assay/svg", "dafny": "assay/dafny"},
        description="The image of each verifier's warm tool (sql workers, svg renderers, Dafny "
        "servers); a tool with none is unavailable on the docker backend.",
    )
    docker_host_paths: bool | None = Field(
        default=None,
        description="Whether this service's paths are the engine machine's (a tool's data is "
        "then bound from there); default: when the service is not in one of the engine's "
        "containers. Data on a volume or bind of the service's own container is mounted from "
        "it either way.",
    )
    docker_copy_mb: int = Field(
        default=256,
        ge=0,
        description="A tool's data that can be neither mounted nor bound is copied into its "
        "container, up to this much.",
    )
    sandbox_jobs: int = Field(
        default_factory=lambda: 2 * _cores(), ge=1, description="Sandbox jobs running at once."
    )
    sandbox_memory_cgroups: bool = Field(
        default=True,
        description="A memory cgroup per job where this process may make them (root, or a "
        "delegated cgroup): caps all of a job's processes and tmpfs files together.",
    )
    warm_python_workers: int = Field(
        default_factory=lambda: 2 * _cores(),
        ge=0,
        description="Warm Python interpreters (each in a long-lived sandbox) that Python "
        "programs are forked from; 0 runs every program in a fresh sandbox and interpreter.",
    )
    warm_python_max_uses: int = Field(
        default=1000,
        ge=1,
        description="Items a warm Python interpreter serves before it is replaced by a fresh one "
        "(a fresh one costs about 45 ms of CPU: bubblewrap, the interpreter and its imports).",
    )
    sandbox_uid_base: int = Field(
        default=61000, ge=1000, description="The first host uid of the sandbox uid pool (root)."
    )
    sandbox_uid_count: int = Field(
        default=1000,
        ge=1,
        description="Host uids in the pool, where the service runs as root: one a running job "
        "or tool, five a warm Python worker (its own and four its programs take in turn).",
    )
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
    compile_cache_mb: int = Field(
        default=256,
        ge=0,
        description="Compiled programs kept (binaries, class files, compile errors), in MB: a "
        "program seen before is not compiled again.",
    )
    build_time_s: float = Field(default=60.0, gt=0, description="Wall-clock limit of a compile.")
    build_memory_mb: int = Field(default=2048, ge=256, description="Memory limit of a compile.")
    max_items: int = Field(default=10_000, ge=1, description="Items per request (else 413).")
    max_body_bytes: int = Field(default=64 << 20, ge=1024, description="Body size (else 413).")
    max_pending_items: int = Field(
        default=100_000,
        ge=1,
        description="Items accepted but not finished, over all requests (else 429).",
    )
    max_item_s: float = Field(default=600.0, gt=0, description="Deadline cap for one item.")
    max_completion_chars: int = Field(
        default=1 << 20,
        ge=1,
        description="A longer completion is `format_error` before it is read: what one item "
        "may cost the service's own CPU and memory grows with it (bench/service_cost.py).",
    )
    stream_gather_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="`/v1/score/stream` sends a line group at most this often: results that "
        "finish in between wait for the next (never a batch's last). Each read costs a client "
        "about as much as a small item's own result; 0 sends each as it comes. A request's "
        "`?gather_ms=` overrides it.",
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After on 429 and 503.")
    drain_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM: new batches get 503 at once, batches in flight have this long "
        "to finish; items still unjudged then get `internal_error` (retryable) and every "
        "answer and stream ends before the process exits.",
    )

    required_verifiers: list[str] = Field(
        default_factory=list,
        description="Verifiers this deployment must be able to run: /readyz answers 503 with "
        'the reason while one of them is unavailable (e.g. `["lean"]`).',
    )
    # Lean (verifiers/lean.py; the image sandboxes/images/lean builds these paths)
    lean_backend: Literal["repl", "kimina"] = Field(
        default="repl",
        description="`repl`: warm REPLs in the sandbox. `kimina`: an existing Kimina Lean "
        "Server at `lean_kimina_url` runs the Lean; assay's checks run on top.",
    )
    lean_repl_command: list[str] = Field(
        default_factory=lambda: ["lake", "env", "/opt/lean/repl/.lake/build/bin/repl"],
        description="The REPL's command, run in `lean_project_dir` inside the sandbox.",
    )
    lean_project_dir: str = Field(
        default="/opt/lean/project", description="The Lake project with Mathlib built ('' none)."
    )
    lean_paths: list[str] = Field(
        default_factory=lambda: ["/opt/lean"],
        description="Host paths the REPL sees, read-only (toolchain, REPL, Mathlib).",
    )
    lean_env: dict[str, str] = Field(
        default_factory=lambda: {"PATH": "/opt/lean/toolchain/bin:/usr/local/bin:/usr/bin:/bin"},
        description="Environment variables of the REPL's command.",
    )
    lean_header: str = Field(
        default=(
            "import Mathlib\nimport Aesop\nset_option maxHeartbeats 400000\n"
            "open BigOperators Real Nat Topology Rat"
        ),
        description="The header put before a completion without imports when its spec has none.",
    )
    lean_pool_size: int = Field(
        default_factory=lambda: max(1, min(_cores(), _memory_gb() // 12)),
        ge=1,
        description="REPLs alive at once (over all headers); each may hold `lean_memory_mb`.",
    )
    lean_memory_mb: int = Field(
        default=12288,
        ge=256,
        description="Address space of each REPL (an `import Mathlib` needs about 9 GB).",
    )
    lean_memory_ceiling_mb: int = Field(
        default=10240, ge=64, description="A REPL whose resident memory passes this is recycled."
    )
    lean_max_proofs: int = Field(default=200, ge=1, description="A REPL is recycled after this.")
    lean_start_timeout_s: float = Field(default=600.0, gt=0, description="Header import time.")
    lean_check_timeout_s: float = Field(
        default=60.0, gt=0, description="Each of assay's own commands (statement, probe)."
    )
    lean_kernel_replay: bool = Field(
        default=False,
        description="Send every new theorem and definition to the kernel again (lean4checker-"
        "style) before passing a proof.",
    )
    lean_kimina_url: str | None = Field(default=None, description="The Kimina Lean Server.")
    lean_kimina_api_key: str | None = None

    dafny_home: str = Field(
        default="/usr/lib/dafny",
        description="The Dafny installation: 2.x (DafnyServer.exe, run by `dafny_runtime`) or "
        "4.x (its `dafny` program); its version is read from DafnyPipeline.dll.",
    )
    dafny_runtime: str = Field(default="/usr/bin/cli", description="Mono, for Dafny 2.x.")
    dafny_version: str | None = Field(
        default=None,
        description="Dafny's version when `dafny_home` is not on this machine but in the "
        "docker backend's dafny image (compose.yaml: Debian's 2.3.0); default: read it there.",
    )
    dafny_servers: int = Field(
        default_factory=_cores,
        ge=1,
        description="Warm Dafny 2.x servers (each verifies one program at a time).",
    )
    dafny_server_uses: int = Field(
        default=200,
        ge=1,
        description="Programs a Dafny server verifies before it is replaced (its memory grows).",
    )
    dafny_server: bool = Field(
        default=True, description="Keep Dafny 2.x warm in servers; false: one process a program."
    )
    dafny_memory_mb: int = Field(
        default=2048, ge=256, description="Memory of a Dafny server or run, z3 included."
    )

    sql_data_dir: str | None = Field(
        default=None,
        description="SQLite databases by name: `<dir>/<db_id>/<db_id>.sqlite` (BIRD, Spider).",
    )
    sql_duckdb: dict[str, str] = Field(
        default_factory=dict, description="DuckDB databases by name: JSON map name -> file."
    )
    sql_postgres: dict[str, str] = Field(
        default_factory=dict,
        description="PostgreSQL databases by name: JSON map name -> libpq DSN reaching the "
        "server over its Unix socket (host=/dir), as a role that may only read.",
    )
    sql_postgres_url: str | None = Field(
        default=None,
        description="A PostgreSQL server (libpq DSN or URL over its Unix socket, host=/dir, as "
        "a role that may only read) whose every database is known by its own name.",
    )
    sql_empty_gold: Literal["score", "zero"] = Field(
        default="score",
        description="Default of the sql spec's `empty_gold`: whether an empty result matching "
        "an empty gold result earns the reward.",
    )
    sql_workers: int = Field(
        default_factory=lambda: 2 * _cores(), ge=1, description="Warm sandboxed DB workers."
    )
    sql_worker_memory_mb: int = Field(default=1024, ge=128, description="Memory of a DB worker.")
    sql_max_rows: int = Field(default=100_000, ge=1, description="Rows a query may return.")

    svg_workers: int = Field(
        default_factory=_cores, ge=1, description="Warm sandboxed SVG renderers (svg verifier)."
    )
    svg_worker_memory_mb: int = Field(
        default=768, ge=128, description="Memory limit of each SVG renderer."
    )
    svg_device: str | None = Field(
        default=None,
        description="torch device for the svg verifier's image metrics; default: cuda if there "
        "is one, else cpu.",
    )

    @model_validator(mode="after")
    def _kimina_has_a_url(self) -> Settings:
        if self.lean_backend == "kimina" and not self.lean_kimina_url:
            raise ValueError("ASSAY_LEAN_BACKEND=kimina needs ASSAY_LEAN_KIMINA_URL")
        return self


def _memory_gb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30))
    except (ValueError, OSError, AttributeError):
        return 12
