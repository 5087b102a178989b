"""A real container engine for the tests: Docker where one answers, else Podman's Docker API.

On machines without Docker (these, and CI), `scripts/setup.d/50-containers` installs Podman and
imports a local Debian base image; the tests start Podman's API service on a socket of their
own and stop it at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "sandboxes" / "images"
LOCAL_BASE = "localhost/debian:bookworm"


def _answers(url: str) -> bool:
    import docker

    if url.startswith("unix://") and not os.path.exists(url.removeprefix("unix://")):
        return False
    try:
        with contextlib.closing(docker.DockerClient(base_url=url, timeout=5)) as client:
            client.ping()
    except Exception:
        return False
    return True


@contextmanager
def engine() -> Iterator[str | None]:
    """The URL of a running engine's API, or None (with nothing started) when there is none."""
    for url in filter(None, (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock")):
        if _answers(url):
            yield url
            return
    podman = shutil.which("podman")
    if podman is None or os.geteuid() != 0:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="assay-podman-")
    url = f"unix://{folder}/podman.sock"
    # Its own folder as its working directory: conmon writes a file named `oom` into its
    # working directory when a container is killed for memory (seen here: one appeared in the
    # repository's root, and went into a commit), and this folder is removed afterwards.
    service = subprocess.Popen(
        [podman, "system", "service", "--time=0", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=folder,
    )
    try:
        deadline = time.monotonic() + 30
        while not _answers(url):
            if service.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.2)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        shutil.rmtree(folder, ignore_errors=True)


def base_image(url: str) -> str:
    """The base the images build FROM here: the local one where no registry is reachable."""
    import docker

    with contextlib.closing(docker.DockerClient(base_url=url, timeout=60)) as client:
        try:
            client.images.get(LOCAL_BASE)
        except docker.errors.ImageNotFound:
            return "debian:bookworm-slim"
    return LOCAL_BASE


def build(url: str, family: str, tag: str | None = None, packages: str = "") -> str:
    """Build `sandboxes/images/<family>` (once: an existing tag is reused) and return its tag;
    `packages`: the Debian packages of a toolchain image (compose.yaml's PACKAGES)."""
    import docker

    tag = tag or f"localhost/assay-{family}:test"
    base = base_image(url)
    with contextlib.closing(docker.DockerClient(base_url=url, timeout=900)) as client:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            client.images.build(
                path=str(IMAGES / family),
                tag=tag,
                buildargs={"BASE_IMAGE": base, "PACKAGES": packages},
                rm=True,
            )
    return tag


def extra_ca() -> str:
    """This machine's own CAs (a TLS-intercepting proxy's), for pip inside image builds."""
    folder = Path("/usr/local/share/ca-certificates")
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.crt"))) if folder.is_dir() else ""


def build_tool(url: str, service: str) -> str:
    """Build compose.yaml's `service` (a `tool-*` image) with the build arguments written
    there, tagged by a digest of its Dockerfile and arguments (so a changed one is rebuilt, an
    unchanged one reused from the engine's cache); return the tag."""
    import hashlib

    import docker
    import yaml

    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service]["build"]
    context = ROOT / spec["context"]
    args = {k: str(v) for k, v in spec.get("args", {}).items() if k != "BASE_IMAGE"}
    args.pop("EXTRA_CA_CERT", None)
    digest = hashlib.sha256(
        (context / "Dockerfile").read_bytes() + repr(sorted(args.items())).encode()
    )
    tag = f"localhost/assay-{service}:{digest.hexdigest()[:12]}"
    with contextlib.closing(docker.DockerClient(base_url=url, timeout=900)) as client:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            client.images.build(
                path=str(context),
                tag=tag,
                buildargs={**args, "BASE_IMAGE": base_image(url), "EXTRA_CA_CERT": extra_ca()},
                rm=True,
            )
    return tag
