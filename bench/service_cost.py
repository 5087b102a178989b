"""What one item costs the service process itself: CPU time and peak memory, per verifier, for
normal items and for hostile ones.

The sandboxes and warm tools (programs, SQL workers, renderers, Dafny servers, Lean REPLs) are
processes of their own, bounded by their own limits; this measures only what stays in the
`assay serve` process: parsing the request, extracting the payload, the verifiers' text checks
(Lean's and Dafny's lexers, sqlglot), reading and comparing what the tools answered (program
output, query results, renders, Dafny's and Lean's messages), building the feedback. Each of
those must be bounded whatever the item holds (issue 15: "No item may cost the service process
itself more than a bounded amount of CPU or memory").

A real server is started (the soak's: every verifier, Lean through the tests' stand-in REPL,
Dafny where installed, the result cache off). Each item is sent alone, `--repeat` times (each
copy made unique, so nothing is deduplicated), after one normal item of its verifier has warmed
the pools. Around each send, from /proc/<pid> of the server: CPU is utime + stime of the
process (all its threads, not its children: the tools are not the service), and memory is the
peak resident set (VmHWM, reset through /proc/<pid>/clear_refs before the item) less the
resident set before it.

    .venv/bin/python bench/service_cost.py [--repeat 3] [--only lean,dafny] [--json OUT.json]

Prints a table: per item, its verifier, kind (normal or hostile), status, service CPU ms per
item (median of the repeats) and peak RSS growth in MiB (max of the repeats). No figure here is
a pass mark: `tests/reliability/test_service_cost.py` runs the hostile set once and checks a
generous bound on each item.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.soak import (  # noqa: E402  (the soak's server, database and Lean stand-in)
    GCD,
    HAS_DAFNY,
    SQUARE,
    item,
    make_database,
    start_server,
    write_lean_script,
)

MIB = 1 << 20
_DEBUG_ENV = ("PYTHONTRACEMALLOC", "PYTHONDEVMODE", "PYTHONMALLOC", "PYTHONASYNCIODEBUG")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    verifier: str
    name: str
    kind: str  # "normal", "hostile", or "large" (a spec at its largest: costs more, bounded)
    make: Callable[[str], dict[str, Any]]
    """The item, from a salt that makes each copy unique."""


def _item(verifier: str, completion: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"verifier": verifier, "completion": completion, "spec": spec, **extra}


def _salted(text: str, salt: str, comment: str) -> str:
    return f"{comment} {salt}\n{text}"


# -- the items ----------------------------------------------------------------------------------

SPECS: dict[str, dict[str, Any]] = {
    "code": {"language": "python", "test_code": "assert True"},
    "sql": {"database": "soak", "gold_sql": "SELECT v FROM t WHERE v < 5"},
    "svg": {"reference_svg": SQUARE},
    "dafny": {},
    "lean": {"theorem": GCD},
}
COMMENT = {"code": "#", "sql": "--", "svg": "<!--", "dafny": "//", "lean": "--"}


def _common(verifier: str) -> list[Case]:
    """Hostile text any verifier may be sent: at and past the size limits, thousands of fences
    and tags, regex bait, control characters."""
    spec = SPECS[verifier]
    texts = {
        "max_size_1MiB": "A" * (MIB - 64),  # ASSAY_MAX_COMPLETION_CHARS's default, less the salt
        "over_size_8MiB": "B" * (8 * MIB),
        "fences_20000": "```python\nprint(1)\n```\n" * 20000,
        "open_fences_100000": "```" * 100000,
        "tags_50000": "<svg>" + "<g>" * 50000 + "</g>" * 50000 + "</svg>",
        "regex_bait": "(" * 200000 + "a" * 200000,
        "controls": "\u202e\u2066\x1b[31m\x00" * 100000,
        "lines_1M": "\n" * (MIB - 64),
    }
    cases = [
        Case(verifier, name, "hostile", lambda s, t=text: _item(verifier, f"{t}{s}", spec))
        for name, text in texts.items()
    ]
    cases.append(
        Case(
            verifier,
            "answer_tags_100000",
            "hostile",
            lambda s: _item(
                verifier,
                "<answer>" * 100000 + s + "</answer>" * 3,
                spec,
                extract={"tag": "answer"},
            ),
        )
    )
    return cases


def _code() -> list[Case]:
    spec = SPECS["code"]
    io_many = {
        "language": "python",
        "tests": [{"stdin": f"{i}\n", "expected_stdout": "x" * 1000 + "\n"} for i in range(200)],
        "partial_credit": True,
    }
    floats = {
        "language": "python",
        "tests": [{"stdin": "", "expected_stdout": "1.0 " * 200000}],
        "compare": "float",
    }
    return [
        Case("code", "normal", "normal", lambda s: item("code-test", hash(s) % 10**6)),
        # What the program prints comes back through the service: at its cap, on every test.
        Case(
            "code",
            "prints_1MiB_x200_tests",
            "hostile",
            lambda s: _item(
                "code", f"# {s}\nimport sys\nsys.stdout.write('x' * (1 << 20))", io_many
            ),
        ),
        Case(
            "code",
            "prints_past_cap",
            "hostile",
            lambda s: _item("code", f"# {s}\nwhile True:\n    print('y' * 10000)", spec),
        ),
        Case(
            "code",
            "float_tokens_200000",
            "hostile",
            lambda s: _item("code", f"# {s}\nprint('1.0000001 ' * 200000)", floats),
        ),
        Case(
            "code",
            "stderr_flood",
            "hostile",
            lambda s: _item(
                "code", f"# {s}\nimport sys\nsys.stderr.write('\\x1b' * (1 << 20))\n1/0", spec
            ),
        ),
        Case(
            "code",
            "tests_500",
            "hostile",
            lambda s: _item(
                "code",
                f"# {s}\nprint(input())",
                {"language": "python", "tests": [{"stdin": "1", "expected_stdout": "1"}] * 500},
            ),
        ),
        Case(
            "code",
            "cpp_main_bait",
            "hostile",
            lambda s: _item(
                "code",
                f"// {s}\nint f() {{ return 1; }}",
                {"language": "cpp", "test_code": "main(" * 100000},
            ),
        ),
        Case(
            "code",
            "fortran_end_bait",
            "hostile",
            lambda s: _item(
                "code", f"! {s}\n", {"language": "fortran", "test_code": "\n" * 200000 + "x"}
            ),
        ),
        *_common("code"),
    ]


def _setup(rows: int) -> dict[str, Any]:
    """A spec whose `setup_sql` builds a database of about `rows` x 110 bytes (it comes back to
    the service whole, and is kept)."""
    setup = (
        f"CREATE TABLE big(v TEXT); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
        f"FROM c WHERE x < {rows}) INSERT INTO big SELECT printf('%0100d', x) FROM c;"
    )
    return {"setup_sql": setup, "gold_sql": "SELECT 1"}


def _sql() -> list[Case]:
    spec = SPECS["sql"]
    wide = "SELECT " + ", ".join(f"'{'z' * 100}' AS c{i}" for i in range(100))
    return [
        Case("sql", "normal", "normal", lambda s: item("sql-db", hash(s) % 100)),
        Case(
            "sql",
            "nested_parens",
            "hostile",
            lambda s: _item("sql", f"-- {s}\nSELECT " + "(" * 5000 + "1" + ")" * 5000, spec),
        ),
        Case(
            "sql",
            "union_10000",
            "hostile",
            lambda s: _item("sql", f"-- {s}\nSELECT 1" + " UNION ALL SELECT 1" * 10000, spec),
        ),
        Case(
            "sql",
            "rows_at_cap",
            "hostile",
            lambda s: _item(
                "sql",
                f"-- {s}\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 99000) SELECT x, x * 2, 'abcdefgh' FROM c",
                spec,
            ),
        ),
        Case(
            "sql",
            "wide_rows",
            "hostile",
            lambda s: _item(
                "sql",
                f"-- {s}\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                f"WHERE x < 1000) SELECT * FROM c, ({wide})",
                spec,
            ),
        ),
        Case(
            "sql",
            "one_14MB_value",
            "hostile",
            lambda s: _item("sql", f"-- {s}\nSELECT hex(zeroblob(7000000))", spec),
        ),
        Case(
            "sql",
            "expected_rows_50000",
            "hostile",
            lambda s: _item(
                "sql",
                f"-- {s}\nSELECT v FROM t",
                {"database": "soak", "expected_rows": [[i, "x" * 10] for i in range(50000)]},
            ),
        ),
        Case(
            "sql",
            "setup_db_7MB",
            "hostile",
            lambda s: _item("sql", f"-- {s}\nSELECT 1", _setup(60000)),
        ),
        Case(
            "sql",
            "setup_db_20MB",
            "hostile",
            lambda s: _item("sql", f"-- {s}\nSELECT 1", _setup(200000)),
        ),
        *_common("sql"),
    ]


def _rendered(size: int, kind: str) -> Case:
    """An svg a circle away from its reference, compared at `size` px with the images back."""
    return Case(
        "svg",
        f"render_{size}_with_images",
        kind,
        lambda s: _item(
            "svg",
            SQUARE.replace("<rect", f"<!-- {s} --><circle cx='5' cy='5' r='4'/><rect"),
            {"reference_svg": SQUARE, "size": size, "return_images": True},
        ),
    )


def _svg() -> list[Case]:
    return [
        Case("svg", "normal", "normal", lambda s: item("svg", hash(s) % 10**6)),
        Case(
            "svg",
            "nested_groups_20000",
            "hostile",
            lambda s: _item(
                "svg",
                f'<svg xmlns="http://www.w3.org/2000/svg"><!-- {s} -->'
                + "<g>" * 20000
                + "</g>" * 20000
                + "</svg>",
                {"reference_svg": SQUARE, "return_images": True, "size": 1024},
            ),
        ),
        _rendered(512, "hostile"),
        _rendered(1024, "large"),
        Case(
            "svg",
            "paths_100000",
            "hostile",
            lambda s: _item(
                "svg",
                f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><!-- {s} -->'
                + '<path d="M0 0L10 10"/>' * 100000
                + "</svg>",
                {"reference_svg": SQUARE},
            ),
        ),
        Case(
            "svg",
            "entities",
            "hostile",
            lambda s: _item(
                "svg",
                '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
                '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
                f'<svg xmlns="http://www.w3.org/2000/svg"><!-- {s} --><text>&c;</text></svg>',
                {"reference_svg": SQUARE},
            ),
        ),
        *_common("svg"),
    ]


def _dafny() -> list[Case]:
    body = "method M(x: int) returns (y: int) ensures y == x { y := x; }\n"
    reference = {"reference": body}
    return [
        Case("dafny", "normal", "normal", lambda s: item("dafny", hash(s) % 10**6)),
        Case(
            "dafny",
            "braces_100000",
            "hostile",
            lambda s: _item("dafny", f"// {s}\n" + "{" * 99000, {}),
        ),
        Case(
            "dafny",
            "attributes_vs_reference",
            "hostile",
            lambda s: _item("dafny", f"// {s}\n" + "{:axiom}" * 12000, reference),
        ),
        Case(
            "dafny",
            "assumes_vs_reference",
            "hostile",
            lambda s: _item(
                "dafny",
                f"// {s}\nmethod N() {{ " + "assume true; " * 7000 + "}\n" + body,
                reference,
            ),
        ),
        Case(
            "dafny",
            "errors_5000",
            "hostile",
            lambda s: _item("dafny", f"// {s}\nmethod N() {{ " + "assert false; " * 5000 + "}", {}),
        ),
        Case(
            "dafny",
            "huge_reference",
            "hostile",
            lambda s: _item("dafny", f"// {s}\n" + body, {"reference": body * 1500}),
        ),
        *_common("dafny"),
    ]


def _lean() -> list[Case]:
    spec = SPECS["lean"]
    head = GCD + " := by\n"
    return [
        Case("lean", "normal", "normal", lambda s: {**item("lean", -1), "_salt": s}),
        Case(
            "lean",
            "attributes_47000",
            "hostile",
            lambda s: _item("lean", f"-- {s}\n" + "@[" * 47000, spec),
        ),
        Case(
            "lean",
            "theorem_repeated",
            "hostile",
            lambda s: _item("lean", f"-- {s}\n" + "theorem mathd_numbertheory_188 " * 3000, spec),
        ),
        Case(
            "lean",
            "raw_strings",
            "hostile",
            lambda s: _item("lean", f"-- {s}\n" + head + "r " * 47000, spec),
        ),
        Case(
            "lean",
            "char_literals",
            "hostile",
            lambda s: _item("lean", f"-- {s}\n" + head + " '\\a" * 23000, spec),
        ),
        Case(
            "lean",
            "comment_theorem",
            "hostile",
            lambda s: _item(
                "lean",
                f"-- {s}\n" + head + "  norm_num",
                {"theorem": "/-" * 49000 + GCD},
            ),
        ),
        Case(
            "lean",
            "long_proof",
            "hostile",
            lambda s: _item("lean", f"-- {s}\n" + head + "  norm_num\n" * 8500, spec),
        ),
        *_common("lean"),
    ]


def cases(only: set[str] | None = None) -> list[Case]:
    out = [*_code(), *_sql(), *_svg(), *(_dafny() if HAS_DAFNY else []), *_lean()]
    return [c for c in out if only is None or c.verifier in only]


# -- measuring ------------------------------------------------------------------------------------


def cpu_s(pid: int) -> tuple[float, float]:
    """The process's own CPU time (its threads; its children not counted), from /proc, two
    ways: utime + stime of the process (clock ticks, 10 ms, but counting threads that have
    ended), and the sum of its live threads' run times (nanoseconds, schedstat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = (int(fields[11]) + int(fields[12])) * TICK_S
    run_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                run_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return ticks, run_ns / 1e9


def cpu_used(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Seconds of CPU between two `cpu_s` readings: the fine one, unless the coarse one saw
    more (threads that ended between them)."""
    coarse, fine = after[0] - before[0], after[1] - before[1]
    return coarse if coarse > fine + 2 * TICK_S else fine


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """VmHWM := VmRSS (Linux's clear_refs, value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@dataclass
class Cost:
    case: Case
    status: str
    feedback: str
    cpu_ms: list[float]
    peak_mib: list[float]

    def row(self) -> dict[str, Any]:
        return {
            "verifier": self.case.verifier,
            "item": self.case.name,
            "kind": self.case.kind,
            "status": self.status,
            "cpu_ms": round(statistics.median(self.cpu_ms), 1),
            "cpu_ms_max": round(max(self.cpu_ms), 1),
            "peak_rss_growth_mib": round(max(self.peak_mib), 1),
            "feedback": self.feedback[:160],
        }


def measure(client: httpx.Client, pid: int, case: Case, repeat: int, salt: str) -> Cost:
    cpus, peaks, status, feedback = [], [], "", ""
    for r in range(repeat):
        body = case.make(f"{salt}-{case.verifier}-{case.name}-{r}")
        body.pop("_salt", None)
        body["id"] = f"{case.verifier}/{case.name}/{r}"
        content = json.dumps({"items": [body]}).encode()
        time.sleep(0.05)  # what the last item left (a pool refilling) settles first
        reset_peak(pid)
        rss = _status_kb(pid, "VmRSS:")
        before = cpu_s(pid)
        response = client.post(
            "/v1/score", content=content, headers={"content-type": "application/json"}
        )
        after = cpu_s(pid)
        peak = _status_kb(pid, "VmHWM:")
        if response.status_code != 200:
            status, feedback = f"HTTP {response.status_code}", response.text[:300]
        else:
            (result,) = response.json()["results"]
            status, feedback = result["status"], result["feedback"]
        cpus.append(1000 * cpu_used(before, after))
        peaks.append(max(0, peak - rss) / 1024)
    return Cost(case, status, feedback, cpus, peaks)


class Server:
    """The soak's server (every verifier; Lean through the stand-in), and its data."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="assay-cost-"))
        self.data_dir.chmod(0o755)  # the sandbox's uids read the database
        make_database(self.data_dir)
        lean, header = write_lean_script(self.data_dir, 10)
        # What is measured is the service, not a debugger in it: tracemalloc (which a run of
        # the tests may set to trace a warning) makes every allocation 10 to 25 times dearer.
        saved = {k: os.environ.pop(k) for k in _DEBUG_ENV if k in os.environ}
        try:
            self.process, self.url = start_server(self.data_dir, lean, header)
        finally:
            os.environ.update(saved)
        self.pid = self.process.pid

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def run(server: Server, chosen: list[Case], repeat: int) -> list[Cost]:
    out = []
    salt = str(time.time_ns())
    with httpx.Client(base_url=server.url, timeout=600) as client:
        warmed: set[str] = set()
        for case in chosen:
            if case.verifier not in warmed:  # the pools and torch up before anything counts
                warm = next(c for c in cases({case.verifier}) if c.kind == "normal")
                measure(client, server.pid, warm, 2, salt + "-warm")
                warmed.add(case.verifier)
            out.append(measure(client, server.pid, case, repeat, salt))
    return out


def table(costs: list[Cost]) -> str:
    lines = [
        f"{'verifier':8} {'item':26} {'kind':8} {'status':14} {'cpu ms':>8} {'peak MiB':>9}",
    ]
    for cost in costs:
        row = cost.row()
        lines.append(
            f"{row['verifier']:8} {row['item']:26} {row['kind']:8} {row['status']:14} "
            f"{row['cpu_ms']:8.1f} {row['peak_rss_growth_mib']:9.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="sends of each item")
    parser.add_argument("--only", help="verifiers, comma-separated (default: all)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    server = Server()
    try:
        costs = run(server, cases(only), args.repeat)
    finally:
        server.close()
    print(table(costs))
    if args.json:
        Path(args.json).write_text(json.dumps([c.row() for c in costs], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
