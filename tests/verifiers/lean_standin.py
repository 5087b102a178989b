"""A stand-in for the Lean REPL, for machines without Lean: it answers recorded requests with
their recorded answers, byte for byte.

Run as `python3 -I lean_standin.py SCRIPT.json` (Debian's python3, inside the sandbox like the
real REPL). It reads requests the way the REPL does (REPL/Main.lean `getLines`: lines up to a
blank one, each with its line end dropped, joined; a query starting with `#` or `--` is
skipped; end of input ends the session) and looks the request up in the script:

    {"strict_order": bool,      # answer the exchanges in order, each once (a transcript)
     "nonce": str,              # the nonce the script's requests were written with; the live
                                # one (a real service draws its own per REPL) is learnt from
                                # the header's probe and swapped for it both ways
     "ballast_mb": int,         # memory to hold while it runs (the memory-ceiling tests)
     "exchanges": [{"request": {...},   # matched as parsed JSON, key order ignored
                    "answer": "...",    # written exactly, its framing blank line included
                    "repeat": bool,     # may answer more than once
                    "delay_s": float,   # wait before answering (a proof that never ends)
                    "allocate_mb": int, # allocate this much before answering
                    "exit": int}]}      # exit with this status instead of answering (a crash)

A request the script does not hold is a test failure: the stand-in says so on stderr and exits
with status 3, as a REPL that died would.
"""

from __future__ import annotations

import json
import re
import sys
import time

# The probe's elaborator in assay's header command names the REPL's nonce (verifiers/lean.py).
_NONCE = re.compile(r"assayProbe_([0-9A-Za-z]+)")


def _key(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _read_query() -> str:
    parts = []
    while True:
        line = sys.stdin.readline()
        if not line.strip():
            return "".join(parts) + line
        parts.append(line.rstrip())


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        script = json.load(file)
    ballast = bytearray(script.get("ballast_mb", 0) << 20)
    for i in range(0, len(ballast), 4096):  # touched, so that it is resident
        ballast[i] = 1
    exchanges = script["exchanges"]
    used = [False] * len(exchanges)
    strict = script.get("strict_order", False)
    by_key: dict[str, list[int]] = {}
    for k, exchange in enumerate(exchanges):
        by_key.setdefault(_key(exchange["request"]), []).append(k)
    out = sys.stdout.buffer
    written = script.get("nonce")
    live = None
    while True:
        query = _read_query()
        if query == "":
            return
        if query.startswith(("#", "--")):
            continue
        if written is not None and live is None and (m := _NONCE.search(query)):
            live = m.group(1)
        if live is not None:
            query = query.replace(live, written)
        try:
            key = _key(json.loads(query))
        except ValueError:
            key = query.strip()
        found = None
        if strict:
            k = used.index(False) if False in used else -1
            if k >= 0 and k in by_key.get(key, ()):
                found = k
        else:
            for k in by_key.get(key, ()):
                if not used[k] or exchanges[k].get("repeat"):
                    found = k
                    break
        if found is None:
            sys.stderr.write(f"stand-in: no recorded answer for {query.strip()[:2000]}\n")
            sys.exit(3)
        used[found] = True
        exchange = exchanges[found]
        if exchange.get("delay_s"):
            time.sleep(exchange["delay_s"])
        if exchange.get("allocate_mb"):  # a proof that eats memory until a limit stops it
            hog = [bytearray(1 << 20) for _ in range(exchange["allocate_mb"])]
            del hog
        if "exit" in exchange:
            sys.stderr.write("stand-in: exiting as recorded\n")
            sys.exit(exchange["exit"])
        answer = exchange["answer"]
        if live is not None:
            answer = answer.replace(written, live)
        out.write(answer.encode("utf-8"))
        out.flush()


if __name__ == "__main__":
    main()
