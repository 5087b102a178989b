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
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncGenerator, Hashable, Mapping, Sequence
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
    "        found = [n for n in os.listdir(d) if os.access(os.path.join(d, n), os.X_OK)]\n"
    "    except OSError:\n"
    "        continue\n"
    "    names.update(found)\n"
    "    names.update(os.path.join(d, n) for n in found)\n"
    "print(' '.join(sorted(names)))\n"
)
_LABEL = "io.assay.sandbox"
_PROGRAMS: dict[str, set[str]] = {}
"""The programs on each image's PATH (names and full paths), by image id: listed once."""
TOOL_IMAGES = {"sql": "assay/sql", "svg": "assay/svg", "dafny": "assay/dafny"}
"""The images of the tools (`ToolSpec.tool`) that the verifiers spawn, by default."""
_NO_IMAGE = {
    "lean": (
        "the docker backend has no Lean image: Lean's toolchain is a vendor download (elan, "
        "Mathlib's cache from GitHub) that the machines assay is built and tested on cannot "
        "reach. Run the image sandboxes/images/lean instead (assay with Lean inside, on the "
        "local sandbox), or ASSAY_LEAN_BACKEND=kimina"
    ),
}
_GRACE_MB = 64  # a tool container's memory beyond its tool's: the runner waiting beside it
_LINE_LIMIT = 1 << 27
_TOOL_EXIT = b"assay-runner: tool exit "  # container_runner.TOOL_EXIT
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
        """The tool's exit status from its runner's report (`container_runner.TOOL_EXIT`),
        once its container's stream has ended, as the local backend's bwrap gives it: a tool
        killed by signal N is 128 + N (SIGKILL from outside: 137; its own SIGSEGV: 139). With
        no report, the runner itself was stopped, which nothing inside the container can do
        (it is the container's pid 1): the engine or someone on the host, so -SIGKILL, the
        sandbox's own process killed (`killed_from_outside`)."""
        if not self.stdout.at_eof():
            return None
        report = self._report()
        code = report.get("exit_code") if report is not None else None
        if not isinstance(code, int):
            return -signal.SIGKILL
        return 128 - code if code < 0 else code

    def _report(self) -> dict[str, Any] | None:
        """The runner's exit report: its last stderr line, written after the tool and all it
        started were gone (so nothing the tool wrote can come after it and stand for it)."""
        tail = bytes(self._container.attached.stderr).rstrip(b"\n")
        last = tail.rsplit(b"\n", 1)[-1]
        if not last.startswith(_TOOL_EXIT):
            return None
        try:
            report = json.loads(last[len(_TOOL_EXIT) :])
        except ValueError:
            return None
        return report if isinstance(report, dict) else None

    def stderr_tail(self) -> bytes:
        tail = bytes(self._container.attached.stderr)
        if self.stdout.at_eof() and self._report() is not None:
            tail = tail.rstrip(b"\n").rsplit(b"\n", 1)[0]  # the tool's own, not the report
        return tail

    def oom_killed(self) -> bool:
        report = self._report() if self.stdout.at_eof() else None
        if report is not None:
            return bool(report.get("oom_killed"))
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
        tool_images: Mapping[str, str] | None = None,
        host_paths: bool | None = None,
        copy_mb: int = 256,
    ) -> None:
        self.images = list(images)
        self.tool_images = dict(TOOL_IMAGES if tool_images is None else tool_images)
        # Whether a path of this service is the same path on the engine's machine (a tool's
        # data is then bound from there): by default, when this service is not in one of the
        # engine's containers.
        self.host_paths = host_paths
        self.copy_mb = copy_mb
        self._tool_programs: dict[str, set[str]] = {}
        self._tool_missing: dict[str, str] = {}
        self._own_mounts: list[dict[str, Any]] = []
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
                self._tools[image] = _programs(client, image)
            except docker.errors.ImageNotFound as exc:
                raise SandboxUnavailable(f"image {image} is not built: {exc}") from exc
            except docker.errors.DockerException as exc:
                raise SandboxUnavailable(f"image {image} does not start: {exc}") from exc
        for tool, image in self.tool_images.items():
            try:
                self._tool_programs[image] = _programs(client, image)
            except docker.errors.ImageNotFound:
                self._tool_missing[tool] = (
                    f"the {tool} tool's image {image} is not built (docs/containers.md)"
                )
                continue
            except docker.errors.DockerException as exc:
                self._tool_missing[tool] = f"the {tool} tool's image {image} does not start: {exc}"
        own = self._find_own_container(client)
        if own is not None:
            self._own_mounts = [m for m in own.attrs.get("Mounts") or [] if m.get("Destination")]
        if self.host_paths is None:
            self.host_paths = own is None

    @staticmethod
    def _find_own_container(client: Any) -> Any:
        """The container of this engine that this service runs in, if it runs in one: Docker
        and Podman name a container's host after its id. (Marker files such as /.dockerenv
        say nothing of which engine, and are left in images made from containers.)"""
        import docker

        name = socket.gethostname()
        if not re.fullmatch(r"[0-9a-f]{12,64}", name):
            return None
        try:
            me = client.containers.get(name)
        except docker.errors.DockerException:
            return None
        return me if str(me.id).startswith(name) else None

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
        return any(tool in tools for tools in self._tools.values()) or any(
            tool in programs for programs in self._tool_programs.values()
        )

    def tool_reason(self, tool: str) -> str | None:
        reason = self.unavailable_reason()
        if reason is not None:
            return reason
        if tool not in self.tool_images:
            return _NO_IMAGE.get(
                tool,
                f"the docker backend has no image for the {tool} tool (ASSAY_DOCKER_TOOL_IMAGES)",
            )
        return self._tool_missing.get(tool)

    def facts(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "isolation": "container",
            "images": {image: image in self._tools for image in self.images},
            "tool_images": {
                tool: {"image": image, "built": image in self._tool_programs}
                for tool, image in self.tool_images.items()
            },
            "container_memory_mb": self.container_memory_mb,
            "container_pids": self.container_pids,
            "uid_per_job": False,
            "memory_cgroup_per_job": True,
            "pool": self._pool.facts(),
        }

    # -- containers ----------------------------------------------------------------------

    def _create(
        self,
        image: str,
        command: list[str],
        *,
        memory_mb: int | None = None,
        pids: int | None = None,
        tmpfs: Mapping[str, str] | None = None,
        mounts: Sequence[Any] = (),
    ) -> Any:
        """Create (not start) a runner container. Through the low-level API: a detached
        `containers.run` leaves `StdinOnce` off, and then Docker keeps the runner's stdin open
        after the service's attach connection goes, so a killed service's runners would live
        on; with it on, the runner reads EOF and ends (Podman closes it either way)."""
        api = self._client.api
        memory = memory_mb or self.container_memory_mb
        sized = f"size={self.tmpfs_mb}m,mode=1777"
        folders = dict(tmpfs or {"/work": sized, "/tmp": sized, "/dev/shm": sized})
        # /var/tmp: sized, and the same on every engine (Podman mounts an unsized one).
        folders.setdefault("/var/tmp", sized)
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs=folders,
            mounts=list(mounts),
            mem_limit=f"{memory}m",
            memswap_limit=f"{memory}m",
            pids_limit=pids or self.container_pids,
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

    async def _start(self, key: Hashable, **options: Any) -> _Container:
        image = str(key)
        created = await asyncio.to_thread(
            self._create, image, ["python3", "-u", "-c", _RUNNER], **options
        )
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
        """A tool in a container of its own, started for it and removed with it: the image
        named for `spec.tool` (which carries the tool's software: `ro_paths` are not needed),
        its files written into the work dir by the runner, its `data` mounted or copied in
        read-only (`_place_data`), the job's rlimits and seccomp filter put on it."""
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        if spec.tool:
            why = self.tool_reason(spec.tool)
            if why is not None:
                raise SandboxUnavailable(why)
            image = self.tool_images[spec.tool]
        elif spec.ro_paths:
            raise SandboxUnavailable(
                "the docker backend binds no host software into a tool "
                f"({', '.join(spec.ro_paths)}): name its image (ToolSpec.tool)"
            )
        else:
            image = self._image_for(spec.argv)
        mounts, places, copies = await asyncio.to_thread(self._place_data, spec.data)
        limits = spec.limits
        copied_mb = sum(len(data) for data in copies.values()) >> 20
        work = 2 * limits.file_mb
        sizes = {"/work": work, "/tmp": work, "/dev/shm": limits.file_mb}
        for folder, mb in places.items():  # copies onto a tmpfs of their own, or the tool's
            sizes[folder] = sizes.get(folder, 0) + mb
        tmpfs = {folder: f"size={mb}m,mode=1777" for folder, mb in sizes.items()}
        worker = await self._start(
            image,
            memory_mb=limits.memory_mb + 5 * limits.file_mb + copied_mb + _GRACE_MB,
            pids=max(self.container_pids, limits.processes + 16),
            tmpfs=tmpfs,
            mounts=mounts,
        )
        request = {
            "op": "exec",
            "argv": list(spec.argv),
            "files": {
                n: base64.b64encode(d.encode() if isinstance(d, str) else d).decode()
                for n, d in spec.files.items()
            },
            "data": {path: base64.b64encode(data).decode() for path, data in copies.items()},
            "env": dict(spec.env),
            "limits": asdict(limits),
            "seccomp": base64.b64encode(
                seccomp.program(processes=limits.processes > 1) or b""
            ).decode(),
        }
        del copies
        try:
            worker.attached.writer.write(json.dumps(request).encode() + b"\n")
            del request
            async with asyncio.timeout(60):
                ready = await worker.attached.stdout.readline()
            if not ready:
                tail = bytes(worker.attached.stderr).decode(errors="replace").strip()[-500:]
                raise SandboxError(f"the tool {spec.argv[0]} did not start: {tail or 'no output'}")
        except BaseException:
            await self._remove(worker)
            raise
        return _ContainerTool(self, worker)

    def _place_data(
        self, paths: Sequence[str]
    ) -> tuple[list[Any], dict[str, int], dict[str, bytes]]:
        """How each of a tool's data paths reaches its container, read-only and at the same
        place: (1) from the mount of this service's own container that holds it (the same
        named volume, or the same host folder), as compose gives the service its databases;
        (2) when this service runs on the engine's machine (`host_paths`), bound from there;
        (3) else copied (regular files, `copy_mb` in all) onto a tmpfs at its folder, written
        read-only (0444) by the runner before the tool starts. Returns the mounts, the tmpfs
        folders (with their MB) and the copies."""
        from docker.types import Mount

        mounts: dict[str, Any] = {}
        places: dict[str, int] = {}
        copies: dict[str, bytes] = {}
        for path in paths:
            real = os.path.realpath(path)
            own = self._own_mount_of(real)
            if own is not None:
                target = own["Destination"]
                if own.get("Type") == "volume" and own.get("Name"):
                    mounts[target] = Mount(target, own["Name"], type="volume", read_only=True)
                else:
                    source = own["Source"].rstrip("/") + real[len(target.rstrip("/")) :]
                    mounts[real] = Mount(real, source, type="bind", read_only=True)
                continue
            if self.host_paths:
                mounts[real] = Mount(real, real, type="bind", read_only=True)
                continue
            folder = real if os.path.isdir(real) else os.path.dirname(real)
            names = (
                [os.path.join(real, n) for n in sorted(os.listdir(real))]
                if os.path.isdir(real)
                else [real]
            )
            size = 0
            for name in names:
                if not os.path.isfile(name):
                    continue
                size += os.path.getsize(name)
                if size + sum(len(d) for d in copies.values()) > self.copy_mb << 20:
                    raise SandboxUnavailable(
                        f"{path} is larger than the {self.copy_mb} MB a tool's data may be "
                        "copied in: put it on a volume the service mounts (docs/containers.md)"
                    )
                with open(name, "rb") as f:
                    copies[name] = f.read()
            places[folder] = places.get(folder, 0) + (size >> 20) + 1
        return list(mounts.values()), places, copies

    def _own_mount_of(self, path: str) -> dict[str, Any] | None:
        """The mount of this service's container that holds `path` (the deepest), if any."""
        best: dict[str, Any] | None = None
        for mount in self._own_mounts:
            target = str(mount["Destination"]).rstrip("/") or "/"
            holds = path == target or path.startswith(target.rstrip("/") + "/")
            if holds and (best is None or len(target) > len(str(best["Destination"]))):
                best = mount
        return best

    async def close(self) -> None:
        await self._pool.close()
        for worker in list(self._live):
            await self._remove(worker)
        if self._client is not None:
            self._client.close()


def _programs(client: Any, image: str) -> set[str]:
    """The programs on `image`'s PATH: one short container the first time an image is seen
    (raises the SDK's ImageNotFound for one that is not built)."""
    found = client.images.get(image)
    programs = _PROGRAMS.get(found.id)
    if programs is None:
        out = client.containers.run(
            found.id, ["python3", "-c", _LIST_TOOLS], remove=True, network_mode="none"
        )
        programs = _PROGRAMS[found.id] = set(out.decode().split())
    return programs


__all__ = ["TOOL_IMAGES", "DockerSandbox"]
