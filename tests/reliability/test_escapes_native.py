"""The escapes table in C, C++ and bash (issue 15), on every backend here: the local sandbox
(bwrap: the program built and run as the code verifier does, one sandbox start for both) and
the docker backend on the tests' own Podman service (tests/containers/engine.py).

Each program is hostile and prints what it managed ("blocked" and the like where the sandbox
held); each must end with its status within its deadline, and the host is checked afterwards
for what the test owns: no process left of its uids, no file of theirs or its own in the
host's scratch places (local), and a later job on the same warm container that finds it as
new (docker)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assay.sandboxes import Limits, LocalSandbox, MultiJob, Run, RunResult, languages
from assay.sandboxes.base import Build, Job, Sandbox
from assay.verifiers.base import Status
from assay.verifiers.code import classify
from tests.conftest import needs_bwrap
from tests.sandboxes.test_contract import UID_BASE, UID_COUNT, _gone, _scratch_files

LANGS = languages()
LIMITS = Limits(wall_s=2.0, memory_mb=256, processes=32, file_mb=8, output_bytes=64 << 10)
BUILD = Limits(wall_s=60.0, memory_mb=1024, processes=64, file_mb=64)
SLACK_S = 5.0  # sandbox start and teardown on a loaded 2-core machine

# Markers of the host's and the service's environments, which no job may read.
_MARKERS = '"ASSAY_", "VIRTUAL_ENV", "PYTEST", "SSH_", "HOSTNAME="'


@dataclass(frozen=True)
class Native:
    name: str
    language: str  # c, cpp, bash
    code: str
    status: Status
    stdout: tuple[bytes, ...] | None = None  # what it may have printed, when it matters


C_HEAD = (
    "#define _GNU_SOURCE\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
    "#include <unistd.h>\n#include <fcntl.h>\n#include <signal.h>\n#include <errno.h>\n"
    "#include <dirent.h>\n#include <sys/types.h>\n#include <sys/socket.h>\n"
    "#include <sys/ptrace.h>\n#include <sys/mman.h>\n#include <sys/wait.h>\n"
    "#include <netinet/in.h>\n#include <arpa/inet.h>\n"
)

# Reads every /proc/N/environ it can and counts those holding a host marker.
_C_ENVIRON = (
    C_HEAD
    + "int main(void) {\n  const char *marks[] = {"
    + _MARKERS
    + "};\n  int found = 0; char path[64], buf[65536];\n"
    "  for (int pid = 1; pid < 5000; pid++) {\n"
    '    snprintf(path, sizeof path, "/proc/%d/environ", pid);\n'
    "    int fd = open(path, O_RDONLY); if (fd < 0) continue;\n"
    "    ssize_t n = read(fd, buf, sizeof buf - 1); close(fd); if (n <= 0) continue;\n"
    "    for (ssize_t i = 0; i < n; i++) if (!buf[i]) buf[i] = '\\n';\n"
    "    buf[n] = 0;\n"
    "    for (int m = 0; m < 5; m++) if (strstr(buf, marks[m])) { found++; break; }\n"
    "  }\n"
    '  int fd = open("/proc/SERVICE/environ", O_RDONLY);\n'
    '  printf("%d %s\\n", found, fd < 0 ? "blocked" : "opened");\n  return 0;\n}\n'
)

NATIVE = [
    Native(
        "c_fork_bomb",
        "c",
        C_HEAD + "int main(void) { for (;;) fork(); }\n",
        Status.TIMEOUT,
    ),
    Native(
        "c_connects_over_inet",
        "c",
        C_HEAD + "int main(void) {\n  int ok = 0;\n"
        "  struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(80);\n"
        '  const char *hosts[] = {"1.1.1.1", "127.0.0.1", "10.0.2.2"};\n'
        "  for (int i = 0; i < 3; i++) {\n"
        "    int s = socket(AF_INET, SOCK_STREAM, 0); if (s < 0) continue;\n"
        "    inet_pton(AF_INET, hosts[i], &a.sin_addr);\n"
        "    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) ok++;\n    close(s);\n  }\n"
        '  printf(ok ? "connected\\n" : "blocked\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"blocked\n",),
    ),
    Native(
        "c_raw_and_packet_sockets",
        "c",
        C_HEAD + "int main(void) {\n"
        "  int a = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);\n"
        "  int b = socket(AF_PACKET, SOCK_RAW, 0);\n"
        "  int c = socket(AF_NETLINK, SOCK_RAW, 0);\n"
        '  printf(a < 0 && b < 0 && c < 0 ? "blocked\\n" : "opened\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"blocked\n",),
    ),
    Native(
        # Any process but itself and its parent (the job's own runner, inside its sandbox).
        "c_ptraces_other_processes",
        "c",
        C_HEAD + "int main(void) {\n  int n = 0;\n"
        "  for (int pid = 1; pid < 5000; pid++) {\n"
        "    if (pid == getpid() || pid == getppid()) continue;\n"
        "    if (ptrace(PTRACE_ATTACH, pid, 0, 0) == 0) n++;\n  }\n"
        '  printf("%d\\n", n);\n  return 0;\n}\n',
        Status.PASSED,
        (b"0\n",),
    ),
    Native(
        "c_reads_proc_environ",
        "c",
        _C_ENVIRON,  # SERVICE: this test process's pid, filled in at run time
        Status.PASSED,
        (b"0 blocked\n",),
    ),
    Native(
        "c_setuid_tricks",
        "c",
        C_HEAD + "int main(void) {\n"
        "  int r = setuid(0) == 0 || setgid(0) == 0 || seteuid(0) == 0;\n"
        '  FILE *f = fopen("me", "w"); if (f) fclose(f);\n'
        '  r |= chown("me", 0, 0) == 0 && chmod("me", 04755) == 0;\n'
        '  r |= access("/etc/shadow", R_OK) == 0;\n'
        '  printf(r ? "root\\n" : "blocked\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"blocked\n",),
    ),
    Native(
        "c_links_out_of_workdir",
        "c",
        C_HEAD + "int main(void) {\n  int got = 0;\n"
        '  symlink("/etc/shadow", "s1"); symlink("/proc/1/root/etc/shadow", "s2");\n'
        '  got += open("s1", O_RDONLY) >= 0; got += open("s2", O_RDONLY) >= 0;\n'
        '  got += link("/etc/passwd", "h1") == 0; got += link("/usr/bin/env", "h2") == 0;\n'
        '  printf(got ? "escaped\\n" : "blocked\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"blocked\n",),
    ),
    Native(
        # Touches memory 16 MB at a time until refused; what it got stays under its limit.
        "c_memory_bomb",
        "c",
        C_HEAD + "int main(void) {\n  size_t got = 0;\n  for (;;) {\n"
        "    char *p = mmap(0, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,"
        " -1, 0);\n    if (p == MAP_FAILED) break;\n    memset(p, 1, 16 << 20);\n"
        "    got += 16;\n    if (got > 4096) break;\n  }\n"
        '  printf(got <= 256 ? "capped\\n" : "%zu MB\\n", got);\n  return 0;\n}\n',
        Status.PASSED,
        (b"capped\n",),
    ),
    Native(
        # Pipe buffers are kernel memory outside the address space: each pipe filled.
        "c_hoards_memory_in_pipes",
        "c",
        C_HEAD + "int main(void) {\n  int pipes = 0; char buf[65536]; memset(buf, 1, sizeof buf);\n"
        "  for (int i = 0; i < 5000; i++) {\n    int fd[2];\n    if (pipe(fd) < 0) break;\n"
        "    fcntl(fd[1], F_SETFL, O_NONBLOCK);\n    fcntl(fd[1], F_SETPIPE_SZ, 1 << 20);\n"
        "    while (write(fd[1], buf, sizeof buf) > 0) {}\n    pipes++;\n  }\n"
        '  printf(pipes < 2000 ? "capped\\n" : "%d pipes\\n", pipes);\n  return 0;\n}\n',
        Status.PASSED,
        (b"capped\n",),
    ),
    Native(
        "c_writes_where_a_later_job_looks",
        "c",
        C_HEAD + "int main(void) {\n"
        '  const char *d[] = {"/tmp/assay-planted", "/dev/shm/assay-planted",'
        ' "/var/tmp/assay-planted", "/work/../assay-planted", "/run/assay-planted",'
        ' "/dev/assay-planted"};\n'
        '  for (int i = 0; i < 6; i++) { FILE *f = fopen(d[i], "w"); if (f) fclose(f); }\n'
        '  printf("planted\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"planted\n",),
    ),
    Native(
        "c_opens_a_pty",
        "c",
        C_HEAD + "int main(void) {\n  int fd = posix_openpt(O_RDWR | O_NOCTTY);\n"
        '  if (fd < 0) { printf("blocked\\n"); return 0; }\n'
        '  grantpt(fd); unlockpt(fd); printf("pty, contained\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"blocked\n", b"pty, contained\n"),
    ),
    Native(
        "c_kills_every_process",
        "c",
        C_HEAD + 'int main(void) { kill(-1, SIGKILL); printf("alive\\n"); return 0; }\n',
        Status.PASSED,
        (b"alive\n",),
    ),
    Native(
        "c_zombie_farm",
        "c",
        C_HEAD + "int main(void) {\n  int n = 0;\n"
        "  for (int i = 0; i < 25; i++) { pid_t p = fork(); if (p == 0) _exit(0); n += p > 0; }\n"
        '  printf("left zombies\\n");\n  return 0;\n}\n',
        Status.PASSED,
        (b"left zombies\n",),
    ),
    Native(
        # fallocate past the file-size limit, in the work dir, /tmp and /dev/shm.
        "c_fills_disk_with_fallocate",
        "c",
        C_HEAD + "int main(void) {\n  signal(SIGXFSZ, SIG_IGN);\n"
        '  const char *p[] = {"big", "/tmp/big", "/dev/shm/big"}; int ok = 0;\n'
        "  for (int i = 0; i < 3; i++) {\n    int fd = open(p[i], O_CREAT | O_WRONLY, 0600);\n"
        "    if (fd < 0) continue;\n"
        '    if (fallocate(fd, 0, 0, (off_t)1 << 30) == 0) ok++; else perror("fallocate");\n'
        "  }\n  return ok ? 0 : 1;\n}\n",
        Status.OUTPUT_LIMIT,
    ),
    Native(
        "cpp_thread_bomb",
        "cpp",
        "#include <chrono>\n#include <cstdio>\n#include <system_error>\n#include <thread>\n"
        "#include <vector>\nint main() {\n  std::vector<std::thread> t; int n = 0;\n"
        "  try {\n    for (; n < 100000; n++)\n"
        "      t.emplace_back([] { std::this_thread::sleep_for(std::chrono::seconds(30)); });\n"
        "  } catch (const std::system_error &) {}\n"
        '  std::printf(n < 100000 ? "capped\\n" : "unbounded\\n");\n  std::fflush(stdout);\n'
        "  std::_Exit(0);\n}\n",
        Status.PASSED,
        (b"capped\n",),
    ),
    Native(
        "cpp_memory_bomb",
        "cpp",
        "#include <vector>\nint main() {\n  std::vector<std::vector<char>> v;\n"
        "  for (;;) v.emplace_back(64 << 20, 'x');\n}\n",
        Status.MEMORY_LIMIT,
    ),
    Native(
        "cpp_lists_host_files",
        "cpp",
        "#include <cstdio>\n#include <filesystem>\nnamespace fs = std::filesystem;\n"
        "int main() {\n  int seen = 0;\n"
        '  for (auto p : {"/root", "/home", "/work/main", "/work/wt", "/srv", "/run/podman",'
        ' "/run/user"}) {\n'
        "    std::error_code e;\n    for (auto &x : fs::directory_iterator(p, e)) { (void)x; "
        "seen++; }\n  }\n"
        '  std::printf("%d\\n", seen);\n}\n',
        Status.PASSED,
        (b"0\n",),
    ),
    Native(
        "bash_fork_bomb",
        "bash",
        ":(){ :|:& };:\nsleep 30\n",
        Status.TIMEOUT,
    ),
    Native(
        "bash_dev_tcp",
        "bash",
        "for h in 1.1.1.1 127.0.0.1; do\n"
        "  if (exec 3<>/dev/tcp/$h/80) 2>/dev/null; then echo connected; exit 0; fi\n"
        "done\necho blocked\n",
        Status.PASSED,
        (b"blocked\n",),
    ),
    Native(
        "bash_reads_proc_environ",
        "bash",
        "n=0\nfor f in /proc/[0-9]*/environ /proc/SERVICE/environ; do\n"
        "  if tr '\\0' '\\n' < $f 2>/dev/null | grep -q -e ASSAY_ -e VIRTUAL_ENV -e PYTEST"
        " -e SSH_; then n=$((n+1)); fi\ndone\necho $n\n",
        Status.PASSED,
        (b"0\n",),
    ),
    Native(
        "bash_links_out",
        "bash",
        "ln -s /etc/shadow s 2>/dev/null; ln /etc/passwd h 2>/dev/null\n"
        "if cat s >/dev/null 2>&1 || [ -e h ]; then echo escaped; else echo blocked; fi\n",
        Status.PASSED,
        (b"blocked\n",),
    ),
    Native(
        "bash_kills_every_process",
        "bash",
        "kill -9 -1 2>/dev/null\necho alive\n",
        Status.PASSED,
        (b"alive\n",),
    ),
    Native(
        "bash_fills_disk",
        "bash",
        "trap '' XFSZ\nhead -c 1000000000 /dev/zero > big\n",
        Status.OUTPUT_LIMIT,
    ),
    Native(
        "bash_writes_where_a_later_job_looks",
        "bash",
        "for d in /tmp /dev/shm /var/tmp $HOME; do : > $d/assay-planted 2>/dev/null; done\n"
        "echo planted\n",
        Status.PASSED,
        (b"planted\n",),
    ),
]

# A later job's look: the scratch places and the work dir hold nothing of an earlier job's.
LOOK = (
    "shopt -s nullglob dotglob\nleft=(/tmp/* /dev/shm/* /var/tmp/assay-* $HOME/assay-* "
    '/work/../assay-*)\necho "${#left[@]}" "${left[@]}"\n'
)


def job(case: Native) -> MultiJob:
    language = LANGS[case.language]
    code = case.code.replace("SERVICE", str(os.getpid()))
    build = Build(tuple(language.build), BUILD) if language.build else None
    return MultiJob(
        argv=tuple(language.run),
        runs=(Run(limits=LIMITS),),
        files={language.file: code},
        build=build,
    )


async def run(sandbox: Sandbox, case: Native) -> RunResult:
    steps = [step async for step in sandbox.run_many(job(case))]
    assert steps[0].kind == "build" or not LANGS[case.language].build
    for step in steps:
        if step.kind == "build":
            assert step.result.ok, step.result.stderr.decode(errors="replace")[-2000:]
    runs = [s.result for s in steps if s.kind == "run"]
    assert len(runs) == 1, steps
    return runs[0]


def check(case: Native, result: RunResult) -> None:
    status, why = classify(result, LANGS[case.language], LIMITS)
    assert status is case.status, (why, result)
    if case.stdout is not None:
        assert result.stdout in case.stdout, result
    assert result.time_s < LIMITS.wall_s + SLACK_S


async def look(sandbox: Sandbox) -> bytes:
    bash = LANGS["bash"]
    done = await sandbox.run(Job(argv=tuple(bash.run), files={bash.file: LOOK}, limits=LIMITS))
    return done.stdout


def test_the_table_is_broad() -> None:
    assert len(NATIVE) >= 20
    assert {c.language for c in NATIVE} == {"c", "cpp", "bash"}


# -- the local sandbox (bwrap) -------------------------------------------------------------------


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    box = LocalSandbox(uid_base=UID_BASE, uid_count=UID_COUNT, lock_dir=tmp_path / "uids")
    yield box
    await box.close()


@needs_bwrap
@pytest.mark.parametrize("case", NATIVE, ids=lambda c: c.name)
async def test_native_hostile_program_locally(local: LocalSandbox, case: Native) -> None:
    for tool in ("gcc", "g++", "bash"):
        if not local.has_tool(tool):
            pytest.skip(f"{tool} is not installed here")
    before = _scratch_files()
    check(case, await run(local, case))
    if os.geteuid() == 0:
        assert await _gone(UID_BASE, UID_COUNT) == []
    assert _scratch_files() - before == set()
    if local._cgroups is not None:  # empty, ready for the next job
        for job_cgroup in (p for p in local._cgroups.base.iterdir() if p.is_dir()):
            assert (job_cgroup / "cgroup.procs").read_text() == ""
    assert await look(local) == b"0\n"


# -- the docker backend (Podman) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    pytest.importorskip("docker")
    from tests.containers.engine import engine

    with engine() as url:
        if url is None:
            pytest.skip("no container engine here (scripts/install test sets up Podman)")
        yield url


@pytest.fixture(scope="module")
def native_image(engine_url: str) -> str:
    from tests.containers.engine import build
    from tests.containers.test_docker_backend import NATIVE as PACKAGES

    return build(engine_url, "toolchain", tag="localhost/assay-native:test", packages=PACKAGES)


@pytest.fixture
async def docker_box(engine_url: str, native_image: str) -> AsyncIterator[Sandbox]:
    from assay.sandboxes.docker import DockerSandbox

    sandbox = DockerSandbox(
        [native_image],
        base_url=engine_url,
        containers_per_image=1,
        container_memory_mb=320,
        container_pids=48,
    )
    assert await sandbox.check() is None
    yield sandbox
    await sandbox.close()


@pytest.mark.parametrize("case", NATIVE, ids=lambda c: c.name)
async def test_native_hostile_program_in_a_container(docker_box: Sandbox, case: Native) -> None:
    check(case, await run(docker_box, case))
    # Whatever it did, the next job on the same warm container finds it as new.
    assert await look(docker_box) == b"0\n"
