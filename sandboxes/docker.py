"""The docker sandbox: jobs run in warm, locked-down, long-lived language containers.

Containers are started through the Docker Engine API (the `docker` SDK; Podman's compatible
API serves the same calls) from the configured images, with no network, a read-only root,
tmpfs work dir, /tmp and /dev/shm, memory, pids and CPU limits, every capability dropped,
no-new-privileges, and a non-root user. Each one's main process is the trusted runner
(`container_runner.py`, fed to the image's python3), which takes one job at a time over the
attach stream: a job costs a round trip on a pipe, not a container start.

A job goes to the first image whose PATH has its program (each image's programs are listed
once, when the sandbox starts). The runner applies the job's limits from outside the job
(rlimits, deadline, output caps, process-group kill), then kills whatever the job left, wipes
the writable mounts and SysV IPC, and says whether the container is clean; a container that
is not, that timed out, crashed, or broke the protocol, is removed and replaced, never given
another job. Containers are also recycled after `max_uses` jobs. So a job never runs in a
container that an earlier job could have changed.

What differs from the local backend: a job's memory is capped by the container's cgroup
(`container_memory_mb`, one job at a time per container) and by RLIMIT_AS per process; the
process limit is the container's pids limit; and a job shares its uid with the runner, which
it can neither trace nor read (the runner is not dumpable) nor kill (it is the container's
pid 1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import AsyncGenerator, Hashable, Sequence
from dataclasses import asdict
from importlib import resources
from typing import Any

from assay.sandboxes import seccomp
from assay.sandboxes.base import Job, MultiJob, RunResult, StepResult, ToolProcess, ToolSpec
from assay.sandboxes.errors import SandboxError, SandboxUnavailable
from assay.sandboxes.pool import WorkerPool

log = logging.getLogger(__name__)

_RUNNER = resources.files("assay.sandboxes").joinpath("container_runner.py").read_text("utf-8")
_LIST_TOOLS = (
    "import os\n"
    "names = set()\n"
    "for d in os.environ.get('PATH', '').split(':'):\n"
    "    try:\n"
    "        names.update(n for n in os.listdir(d) if os.access(os.path.join(d, n), os.X_OK))\n"
    "    except OSError:\n"
    "        pass\n"
    "print(' '.join(sorted(names)))\n"
)
_LABEL = "io.assay.sandbox"
_LINE_LIMIT = 1 << 27
_PING_S = 2.0  # how often `check` asks an engine that answered whether it still does


class _Attached:
    """The container's stdin and demultiplexed stdout over the attach socket (no tty: the
    engine frames each chunk with an 8-byte header: stream, 3 zero bytes, big-endian size)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handles: list[Any]
    ) -> None:
        self._reader, self.writer, self._handles = reader, writer, handles
        self.stdout = asyncio.StreamReader(limit=_LINE_LIMIT)
        self.stderr = bytearray()
        self._pump = asyncio.ensure_future(self._demux())

    async def _demux(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(8)
                kind, size = header[0], struct.unpack(">I", header[4:])[0]
                body = await self._reader.readexactly(size)
                if kind == 2:
                    self.stderr += body
                    del self.stderr[: -(1 << 16)]
                else:
                    self.stdout.feed_data(body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.stdout.feed_eof()

    def close(self) -> None:
        self._pump.cancel()
        self.writer.close()
        for handle in self._handles:  # the SDK's wrappers of the same connection
            with contextlib.suppress(OSError):
                handle.close()


class _Container:
    """One warm container and the runner in it."""

    def __init__(self, container: Any, attached: _Attached, image: str) -> None:
        self.container, self.attached, self.image = container, attached, image
        self.clean = True

    async def run(self, job: Job, *, keep: str | None = None) -> RunResult:
        request = {
            "op": "run",
            "argv": list(job.argv),
            "files": {
                name: base64.b64encode(data.encode() if isinstance(data, str) else data).decode()
                for name, data in job.files.items()
            },
            "stdin": base64.b64encode(job.stdin).decode(),
            "limits": asdict(job.limits),
            "keep": keep,
            # The local backend's syscall policy, loaded by the runner into the job.
            "seccomp": base64.b64encode(
                seccomp.program(processes=job.limits.processes > 1) or b""
            ).decode(),
        }
        started = time.monotonic()
        self.attached.writer.write(json.dumps(request).encode() + b"\n")
        await self.attached.writer.drain()
        # The runner keeps the deadline; this one only catches a runner that stopped answering.
        async with asyncio.timeout(job.limits.wall_s + 30):
            line = await self.attached.stdout.readline()
        if not line:
            self.clean = False
            raise SandboxError(f"the {self.image} container ended during a job")
        answer = json.loads(line)
        self.clean = bool(answer.get("clean"))
        if "error" in answer:
            raise SandboxError(f"the container runner failed: {answer['error']}")
        if not self.clean:
            log.info("docker: container of %s not clean (%s); replaced", self.image, answer["why"])
        return RunResult(
            exit_code=answer["exit_code"],
            signal=answer["signal"],
            stdout=base64.b64decode(answer["stdout"]),
            stderr=base64.b64decode(answer["stderr"]),
            time_s=answer.get("time_s", time.monotonic() - started),
            timed_out=answer["timed_out"],
            output_exceeded=answer["output_exceeded"],
            file_exceeded=answer["file_exceeded"],
            oom_killed=answer["oom_killed"],
            cpu_time_s=answer.get("cpu_time_s"),
            memory_kb=answer.get("memory_kb"),
        )

    async def wipe(self) -> None:
        """End an item: whatever its steps left goes; a container that stays unclean goes."""
        self.attached.writer.write(b'{"op": "wipe"}\n')
        await self.attached.writer.drain()
        async with asyncio.timeout(30):
            line = await self.attached.stdout.readline()
        self.clean = bool(line) and bool(json.loads(line).get("clean"))


class _ContainerTool:
    """A tool that is its container's main process (`Sandbox.spawn` on the docker backend)."""

    def __init__(self, sandbox: DockerSandbox, container: _Container) -> None:
        self._sandbox, self._container = sandbox, container
        self.pid = 1
        self.stdin = container.attached.writer
        self.stdout = container.attached.stdout
        self._closed = False

    @property
    def returncode(self) -> int | None:
        return 0 if self.stdout.at_eof() else None

    def stderr_tail(self) -> bytes:
        return bytes(self._container.attached.stderr)

    def oom_killed(self) -> bool:
        try:
            self._container.container.reload()
        except Exception:
            return False
        return bool(self._container.container.attrs.get("State", {}).get("OOMKilled"))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._sandbox._remove(self._container)


class DockerSandbox:
    """Runs jobs in warm containers of `images` through the Docker Engine API at `base_url`."""

    name = "docker"

    def __init__(
        self,
        images: Sequence[str],
        *,
        base_url: str | None = None,
        containers_per_image: int = 2,
        max_uses: int = 500,
        container_memory_mb: int = 1024,
        container_pids: int = 128,
        cpus: float = 1.0,
        user: str = "10001",
        tmpfs_mb: int = 128,
    ) -> None:
        self.images = list(images)
        self.base_url = base_url
        self.container_memory_mb, self.container_pids = container_memory_mb, container_pids
        self.cpus, self.user, self.tmpfs_mb = cpus, user, tmpfs_mb
        self._client: Any = None
        self._tools: dict[str, set[str]] = {}
        self._reason: str | None | bool = False  # False: not checked yet
        self._checked = 0.0  # when the engine was last asked
        self._lost = False  # it answered once, then went away
        self._checking = asyncio.Lock()
        self._pool: WorkerPool[_Container] = WorkerPool(
            self._start,
            self._remove,
            size=max(1, containers_per_image * max(1, len(self.images))),
            max_uses=max_uses,
            # An idle container whose attach stream ended (its engine went away) is not lent.
            healthy=lambda c: c.clean and not c.attached.stdout.at_eof(),
            name="docker",
        )
        self._live: set[_Container] = set()

    # -- engine --------------------------------------------------------------------------

    def _connect(self) -> None:
        import docker  # the docker extra; imported here so the rest of assay runs without it

        try:
            client = (
                docker.DockerClient(base_url=self.base_url, timeout=60)
                if self.base_url
                else docker.from_env(timeout=60)
            )
            client.ping()
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"no container engine answers: {exc}") from exc
        except Exception:
            raise
        self._client = client
        # A runner exits only when its service went away without removing it: garbage. So
        # are this service's own containers that its pool no longer holds (their attach
        # streams were lost with an engine that went away and came back).
        # Best effort, by id from the engine's list (containers come and go meanwhile).
        live = {worker.container.id for worker in self._live}
        stale: set[str] = set()
        with contextlib.suppress(docker.errors.DockerException):
            for found in client.api.containers(
                all=True, filters={"label": _LABEL, "status": "exited"}
            ):
                stale.add(found["Id"])
            for found in client.api.containers(
                all=True, filters={"label": f"{_LABEL}={os.getpid()}"}
            ):
                if found["Id"] not in live:
                    stale.add(found["Id"])
        for ident in stale:
            with contextlib.suppress(docker.errors.DockerException):
                client.api.remove_container(ident, force=True)
        for image in self.images:
            try:
                out = client.containers.run(
                    image, ["python3", "-c", _LIST_TOOLS], remove=True, network_mode="none"
                )
            except docker.errors.ImageNotFound as exc:
                raise SandboxUnavailable(f"image {image} is not built: {exc}") from exc
            except docker.errors.DockerException as exc:
                raise SandboxUnavailable(f"image {image} does not start: {exc}") from exc
            self._tools[image] = set(out.decode().split())

    def unavailable_reason(self) -> str | None:
        return self._reason if isinstance(self._reason, str) else None

    async def check(self) -> str | None:
        async with self._checking:
            now = time.monotonic()
            if self._reason is None and now - self._checked > _PING_S:
                # The engine may have gone away since (tests/containers/test_engine_outage.py):
                # asked again at most every few seconds; then reconnected to when it answers.
                self._checked = now
                try:
                    await asyncio.to_thread(self._client.ping)
                except Exception as exc:  # the SDK's errors and requests' connection errors
                    self._reason, self._lost = f"the container engine went away: {exc}", True
                    log.warning("docker: %s", self._reason)
            elif self._reason is False or (self._lost and now - self._checked > _PING_S):
                self._checked = now
                try:
                    await asyncio.to_thread(self._connect)
                    self._reason = None
                    if self._lost:
                        log.warning("docker: the container engine answers again")
                    self._lost = False
                except SandboxUnavailable as exc:
                    self._reason = str(exc)
                except ImportError:
                    self._reason = "the docker SDK is not installed (pip install 'assay[docker]')"
            return self._reason if isinstance(self._reason, str) else None

    def has_tool(self, tool: str) -> bool:
        return any(tool in tools for tools in self._tools.values())

    def facts(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "isolation": "container",
            "images": {image: image in self._tools for image in self.images},
            "container_memory_mb": self.container_memory_mb,
            "container_pids": self.container_pids,
            "uid_per_job": False,
            "memory_cgroup_per_job": True,
            "pool": self._pool.facts(),
        }

    # -- containers ----------------------------------------------------------------------

    def _create(self, image: str, command: list[str]) -> Any:
        """Create (not start) a runner container. Through the low-level API: a detached
        `containers.run` leaves `StdinOnce` off, and then Docker keeps the runner's stdin open
        after the service's attach connection goes, so a killed service's runners would live
        on; with it on, the runner reads EOF and ends (Podman closes it either way)."""
        api = self._client.api
        tmpfs = f"size={self.tmpfs_mb}m,mode=1777"
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            # /var/tmp: sized, and the same on every engine (Podman mounts an unsized one).
            tmpfs={"/work": tmpfs, "/tmp": tmpfs, "/dev/shm": tmpfs, "/var/tmp": tmpfs},
            mem_limit=f"{self.container_memory_mb}m",
            memswap_limit=f"{self.container_memory_mb}m",
            pids_limit=self.container_pids,
            nano_cpus=int(self.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ipc_mode="private",
            # The runner ends when its stdin closes, so a container outlives no service.
            auto_remove=True,
        )
        created = api.create_container(
            image,
            command,
            stdin_open=True,
            detach=False,  # sets StdinOnce (and attaches stdout/stderr): see above
            user=self.user,
            working_dir="/work",
            labels={_LABEL: str(os.getpid())},
            host_config=host_config,
        )
        return self._client.containers.get(created["Id"])

    async def _attach(self, container: Any) -> _Attached:
        def socket() -> tuple[Any, Any]:
            sock = container.attach_socket(
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            raw = sock._sock  # the upgraded connection under the SDK's file wrapper
            raw.setblocking(False)
            return sock, raw

        sock, raw = await asyncio.to_thread(socket)
        reader, writer = await asyncio.open_connection(sock=raw, limit=_LINE_LIMIT)
        return _Attached(reader, writer, [sock, raw])

    async def _start(self, key: Hashable) -> _Container:
        image = str(key)
        created = await asyncio.to_thread(self._create, image, ["python3", "-u", "-c", _RUNNER])
        # Attached before it starts: no moment when a runner runs with nobody on its stdin
        # (a service killed then would have left it running for good).
        try:
            attached = await self._attach(created)
            try:
                await asyncio.to_thread(created.start)
            except BaseException:
                attached.close()
                raise
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(created.remove, force=True)
            raise
        worker = _Container(created, attached, image)
        self._live.add(worker)
        return worker

    async def _remove(self, worker: _Container) -> None:
        self._live.discard(worker)
        worker.attached.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(worker.container.remove, force=True)

    def _image_for(self, *argvs: tuple[str, ...]) -> str:
        """The first image that has every program the argvs name: their first words, and the
        other words that are programs of some image (the compiler behind `sh -c "$@"`)."""
        known = set().union(*self._tools.values())
        needed = {argv[0] for argv in argvs if argv and "/" not in argv[0]}
        needed |= {word for argv in argvs for word in argv[1:] if word in known}
        for image in self.images:
            if needed <= self._tools.get(image, set()):
                return image
        missing = sorted(needed - known) or sorted(needed)
        raise SandboxUnavailable(f"no configured image has all of {', '.join(missing)}")

    def _image_for_many(self, job: MultiJob) -> str:
        """The image for all the steps of `job`, and for the toolchain a built program came
        from (`job.tools`). The image's own toolchain paths stand for `ro_paths` (a package's
        data, as /var/lib/ghc)."""
        argvs = [job.argv, *(run.argv for run in job.runs if run.argv)]
        argvs += [job.build.argv] if job.build else []
        argvs += [(tool,) for tool in job.tools]
        return self._image_for(*argvs)

    # -- the Sandbox protocol ------------------------------------------------------------

    async def run(self, job: Job) -> RunResult:
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        image = self._image_for(job.argv)
        async with self._pool.lease(image) as worker:
            return await worker.run(job)

    async def run_many(self, job: MultiJob) -> AsyncGenerator[StepResult, None]:
        """The build and the runs of one item in one warm container, one step at a time; the
        build's files stay for the runs, what each run adds goes with it."""
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        image = self._image_for_many(job)
        async with self._pool.lease(image) as worker:
            files = job.files
            stop = wiped = False
            try:
                if job.build is not None:
                    build = Job(argv=job.build.argv, files=files, limits=job.build.limits)
                    result = await worker.run(build, keep="after")
                    files = {}
                    try:
                        yield StepResult("build", 0, result)
                    except GeneratorExit:
                        stop = True
                    stop = stop or not result.ok
                for index, run in enumerate(job.runs):
                    if stop:
                        break
                    step = Job(
                        argv=run.argv or job.argv, files=files, stdin=run.stdin, limits=run.limits
                    )
                    # The last run ends the item: the runner empties everything after it,
                    # as a wipe would, and the item costs one round trip less.
                    last = index == len(job.runs) - 1
                    result = await worker.run(step, keep=None if last else "before")
                    wiped = last
                    files = {}
                    try:
                        yield StepResult("run", index, result)
                    except GeneratorExit:  # the caller stopped: the container stays good
                        stop = True
            finally:
                if worker.clean and not wiped:
                    await asyncio.shield(worker.wipe())

    async def spawn(self, spec: ToolSpec) -> ToolProcess:
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        if spec.ro_paths:
            raise SandboxUnavailable(
                "the docker backend binds no host paths into a tool "
                f"({', '.join(spec.ro_paths)}): its image must hold what it reads"
            )
        worker = await self._start(self._image_for(spec.argv))
        request = {
            "op": "exec",
            "argv": list(spec.argv),
            "files": {
                n: base64.b64encode(d.encode() if isinstance(d, str) else d).decode()
                for n, d in spec.files.items()
            },
            "env": dict(spec.env),
        }
        try:
            worker.attached.writer.write(json.dumps(request).encode() + b"\n")
            async with asyncio.timeout(30):
                ready = await worker.attached.stdout.readline()
            if not ready:
                raise SandboxError(f"the tool {spec.argv[0]} did not start")
        except BaseException:
            await self._remove(worker)
            raise
        return _ContainerTool(self, worker)

    async def close(self) -> None:
        await self._pool.close()
        for worker in list(self._live):
            await self._remove(worker)
        if self._client is not None:
            self._client.close()


__all__ = ["DockerSandbox"]
