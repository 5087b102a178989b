"""The built wheel, installed into a fresh venv, imports and runs; the bare client stays light."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import needs_bwrap

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("assay-*.whl")
    return found


def fresh_venv(where: Path, requirement: str) -> Path:
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", requirement],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return python


def test_wheel_holds_the_four_packages(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for package in ("service", "sandboxes", "verifiers", "clients"):
        assert f"assay/{package}/__init__.py" in names
    assert "assay/sandboxes/languages.toml" in names
    assert "assay/sandboxes/warm_init.c" in names  # compiled as the service starts
    assert not any(name.startswith("tests/") for name in names)


def test_bare_client_installs_without_server_dependencies(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv", str(wheel))
    probe = (
        "import importlib.util, json, assay.clients\n"
        "from assay.clients import AssayClient\n"
        "from assay.clients.trainers.trl import assay_reward, assay_reward_async\n"
        "from assay.clients.trainers.verl import compute_score, compute_score_async\n"
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ['httpx', 'pydantic', 'fastapi', 'uvicorn', 'torch', 'trl', 'rich']}))\n"
    )
    found = json.loads(
        subprocess.run(
            [str(python), "-c", probe], check=True, capture_output=True, text=True
        ).stdout
    )
    assert found == {
        "httpx": True,
        "pydantic": True,
        "fastapi": False,
        "uvicorn": False,
        "torch": False,
        "trl": False,
        "rich": False,
    }
    serve = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "assay"), "serve"], capture_output=True, text=True
    )
    assert serve.returncode != 0
    assert "pip install 'assay[server]'" in serve.stderr


@needs_bwrap
def test_wheel_with_server_extra_scores(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv", f"assay[server] @ {wheel.as_uri()}")
    item = {
        "verifier": "code",
        "completion": "print(int(input()) * 2)",
        "spec": {"language": "python", "tests": [{"stdin": "21\n", "expected_stdout": "42"}]},
    }
    done = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "assay"), "score", "-", "-q"],
        input=json.dumps(item),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "passed"
    where = subprocess.run(
        [str(python), "-c", "import assay.service; print(assay.service.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert "site-packages" in where
