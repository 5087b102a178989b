"""The isolated test harness: runs inside the sandbox, with the sandbox's `python3` and the
standard library only (the verifier ships this file into the job's work dir; it imports
nothing of assay).

Two processes, both started from this file:
- `harness` (the job's program): makes itself non-dumpable first, so that a process of the
  same uid can neither ptrace it nor read its memory or `/proc/<pid>/fd`; reads its request on
  stdin (the program, the test code, the entry points, a nonce, the no-fork seccomp filter);
  starts the `program` process; runs the test code with one stand-in function per entry point,
  each forwarding its calls across a pipe; prints its verdict on its own stdout, prefixed with
  the nonce. The program's process holds none of these: it is a fresh interpreter (exec), its
  stdin, stdout and stderr are /dev/null, and it gets the two pipe ends and nothing else.
- `program`: loads a no-fork seccomp filter before the interpreter starts (in the harness's
  `preexec_fn`), runs the program's source as `__main__`, then answers calls: plain data in,
  plain data out, exceptions as their type name and message.

Only plain data crosses, in a tagged JSON of our own (json alone cannot tell a tuple from a
list or carry ints beyond 64 bits exactly, bytes, sets or NaN): None, bool, str as themselves;
int, float, bytes, tuple, dict, set, frozenset tagged; list as a list. The harness decodes
into fresh objects of exactly those types, so nothing with methods of the program's making
reaches the test code. Frames: 4-byte big-endian length, then the JSON.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import traceback
from typing import Any, NoReturn

_LEN = struct.Struct(">I")
_MAX_FRAME = 256 << 20
_MAX_DEPTH = 100
_MESSAGE = 500  # characters of a program's exception message kept
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 4, 22, 38
SECCOMP_MODE_FILTER = 2


class NotPlain(Exception):
    """A value that may not cross: not one of the plain types, or nested too deeply."""


# -- the codec ----------------------------------------------------------------------------------


def encode(value: Any, depth: int = 0) -> Any:
    """Plain data as tagged JSON values; `NotPlain` for anything else (subclasses included)."""
    if depth > _MAX_DEPTH:
        raise NotPlain(f"a value nested more than {_MAX_DEPTH} deep")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"i": format(value, "x")}  # hex: no digit limit, exact
    if kind is float:
        return {"f": value.hex()}
    if kind is bytes:
        return {"b": base64.b64encode(value).decode()}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        tag = "s" if kind is set else "z"
        return {tag: [encode(v, depth + 1) for v in value]}
    raise NotPlain(f"an object of type {kind.__name__}")


def decode(raw: Any, depth: int = 0) -> Any:
    """The inverse of `encode`, building fresh plain objects; `NotPlain` for anything else."""
    if depth > _MAX_DEPTH:
        raise NotPlain(f"a value nested more than {_MAX_DEPTH} deep")
    if raw is None or type(raw) is bool or type(raw) is str:
        return raw
    if type(raw) is list:
        return [decode(v, depth + 1) for v in raw]
    if type(raw) is not dict or len(raw) != 1:
        raise NotPlain("a malformed value")
    ((tag, body),) = raw.items()
    try:
        if tag == "i" and type(body) is str:
            return int(body, 16)
        if tag == "f" and type(body) is str:
            return float.fromhex(body)
        if tag == "b" and type(body) is str:
            return base64.b64decode(body, validate=True)
        if type(body) is list:
            items = [decode(v, depth + 1) for v in body]
            if tag == "t":
                return tuple(items)
            if tag == "s":
                return set(items)
            if tag == "z":
                return frozenset(items)
            if tag == "d" and all(type(p) is list and len(p) == 2 for p in items):
                return {k: v for k, v in items}
    except NotPlain:
        raise
    except (ValueError, TypeError) as exc:  # unhashable keys, bad hex or base64
        raise NotPlain(f"a malformed value ({type(exc).__name__})") from None
    raise NotPlain("a malformed value")


# -- framing --------------------------------------------------------------------------------------


def send(fd: int, message: Any) -> None:
    data = json.dumps(message, ensure_ascii=False, allow_nan=False).encode()
    data = _LEN.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    """The next message; None at end of input or on a malformed frame."""
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > _MAX_FRAME:
        return None
    body = _read_exact(fd, size)
    if body is None:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


# -- the program's process ------------------------------------------------------------------------


def _describe(exc: BaseException) -> list[str]:
    try:
        message = str(exc)[:_MESSAGE]
    except BaseException:
        message = "(its message could not be made)"
    return [type(exc).__name__, message]


def serve_program(calls: int, replies: int) -> None:
    """Load the program, then answer calls until the harness closes the pipe."""
    request = receive(calls)
    if not isinstance(request, dict):
        os._exit(1)
    main = type(sys)("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    try:
        code = compile(str(request["program"]), "<program>", "exec", dont_inherit=True)
        exec(code, main.__dict__)
    except SystemExit as exc:
        send(replies, {"load": ["SystemExit", str(exc.code)[:_MESSAGE], None]})
        os._exit(0)
    except BaseException as exc:
        line = exc.lineno if isinstance(exc, SyntaxError) else None
        send(replies, {"load": [*_describe(exc), line]})
        os._exit(0)
    functions = {}
    for name in request["entry_points"]:
        found = main.__dict__.get(name)
        if not callable(found):
            send(replies, {"missing": name})
            os._exit(0)
        functions[name] = found
    send(replies, {"ready": True})
    while (call := receive(calls)) is not None:
        try:
            args = decode(call["args"])
            kwargs = decode(call["kwargs"])
            result = functions[call["name"]](*args, **kwargs)
        except SystemExit:  # as the program would: it ends, mid-call
            os._exit(0)
        except BaseException as exc:
            send(replies, {"raise": _describe(exc)})
            continue
        try:
            reply = {"ok": encode(result)}
        except NotPlain as exc:
            reply = {"bad": str(exc)}
        except BaseException as exc:  # a __len__ or items() of the program's that raised
            reply = {"bad": f"a value that could not be read ({_describe(exc)[0]})"}
        send(replies, reply)
    os._exit(0)


# -- the harness ----------------------------------------------------------------------------------


class ProgramGone(BaseException):
    """The program's process ended or broke the protocol; no test may catch this."""


class NotPlainData(BaseException):
    """The program returned something other than plain data; no test may catch this."""


class ProgramError(Exception):
    """An exception of the program's whose type is not a builtin exception."""


_TEST_FILE = "<test>"


def _exception(name: str, message: str) -> Exception:
    """The program's exception for the test code: a builtin one by that name, with the
    message, or a `ProgramError` naming it."""
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    exc: Exception | None = None
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not NotPlain:
        try:
            exc = cls(message)
        except Exception:
            exc = None
    if exc is None:
        exc = ProgramError(f"{name}: {message}")
    exc.__dict__["_assay_from_program"] = True
    return exc


class Harness:
    def __init__(self, request: dict[str, Any], source_file: str) -> None:
        self.request = request
        calls_r, self.calls = os.pipe()
        self.replies, replies_w = os.pipe()
        self.broken: str | None = None
        filter_bytes = base64.b64decode(request.get("seccomp", ""))

        def before_exec() -> None:
            if filter_bytes:
                _load_seccomp(filter_bytes)

        self.child = subprocess.Popen(
            [sys.executable, "-I", "-B", source_file, "program", str(calls_r), str(replies_w)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(calls_r, replies_w),
            preexec_fn=before_exec,
            cwd="/tmp" if os.path.isdir("/tmp") else None,
        )
        os.close(calls_r)
        os.close(replies_w)

    def start(self) -> tuple[str, str] | None:
        """Load the program; on failure its status and why."""
        with contextlib.suppress(OSError):
            send(self.calls, {"program": self.request["program"], "entry_points": self.names})
        reply = receive(self.replies)
        if isinstance(reply, dict) and reply.get("ready") is True:
            return None
        if isinstance(reply, dict) and isinstance(reply.get("load"), list):
            name, message, line = (list(reply["load"]) + [None, None, None])[:3]
            where = f" (line {line})" if type(line) is int else ""
            status = "compile_error" if name in _SYNTAX else "runtime_error"
            if name == "SystemExit":
                return "failed", "the program exited before its functions were called"
            return status, f"the program failed to load{where}: {name}: {message}"
        if isinstance(reply, dict) and isinstance(reply.get("missing"), str):
            return "failed", f"the program defines no function named {reply['missing']!r}"
        return "failed", "the program exited before its functions were called"

    @property
    def names(self) -> list[str]:
        return list(self.request["entry_points"])

    def stand_in(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.broken is not None:
            raise ProgramGone(self.broken)
        try:
            message = {"name": name, "args": encode(list(args)), "kwargs": encode(kwargs)}
        except NotPlain as exc:
            raise TypeError(f"the test passed {exc} to {name}: only plain data crosses") from None
        try:
            send(self.calls, message)
        except OSError:
            self._break(f"the program's process ended before a call to {name}")
        reply = receive(self.replies)
        if not isinstance(reply, dict) or len(reply) != 1:
            self._break(f"the program's process ended during a call to {name}")
        ((kind, body),) = reply.items()
        if kind == "ok":
            try:
                return decode(body)
            except NotPlain as exc:
                self._not_plain(f"{name} returned {exc}, not plain data")
            except RecursionError:
                self._not_plain(f"{name} returned a value nested too deeply, not plain data")
        if kind == "bad" and type(body) is str:
            self._not_plain(f"{name} returned {body[:200]}, not plain data")
        if kind == "raise" and type(body) is list and len(body) == 2:
            type_name, text = (str(x)[:_MESSAGE] for x in body)
            raise _exception(type_name, text)
        self._break(f"the program broke the protocol during a call to {name}")

    def _not_plain(self, why: str) -> NoReturn:
        # Kept, as for a broken protocol: a test that catches everything does not pass.
        self.broken = why
        raise NotPlainData(why)

    def _break(self, why: str) -> NoReturn:
        self.broken = why
        raise ProgramGone(why)

    def close(self) -> None:
        for fd in (self.calls, self.replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            self.child.kill()
            self.child.wait()
        except OSError:
            pass


_SYNTAX = ("SyntaxError", "IndentationError", "TabError")


def _load_seccomp(program: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(126)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        os._exit(126)


def _where(exc: BaseException, test_code: str) -> str:
    """The test code's own line where `exc` passed last, from this process's traceback."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == _TEST_FILE:
            line = frame.lineno
    if line is None:
        return ""
    lines = test_code.splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return f'\n  File "{_TEST_FILE}", line {line}\n    {text[:300]}'


def run_tests(harness: Harness, test_code: str) -> tuple[str, str]:
    """Run the test code against the stand-ins: the status and why."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name in harness.names:
        namespace[name] = harness.stand_in(name)
    try:
        exec(compile(test_code, _TEST_FILE, "exec", dont_inherit=True), namespace)
    except AssertionError as exc:
        if exc.__dict__.get("_assay_from_program"):
            return "failed", f"the program raised AssertionError: {exc}{_where(exc, test_code)}"
        message = f": {str(exc)[:300]}" if str(exc) else ""
        return "failed", f"a test assertion failed\nAssertionError{message}{_where(exc, test_code)}"
    except (ProgramGone, NotPlainData) as exc:
        return "failed", f"{exc}{_where(exc, test_code)}"
    except SystemExit as exc:
        if exc.code in (None, 0):
            return "passed", ""
        return "failed", f"the test code exited with status {exc.code!r}"
    except BaseException as exc:
        origin = "the program raised" if exc.__dict__.get("_assay_from_program") else "error:"
        name, message = _describe(exc)
        return "runtime_error", f"{origin} {name}: {message}{_where(exc, test_code)}"
    if harness.broken is not None:  # a test caught what it should not have
        return "failed", harness.broken
    return "passed", ""


def harness_main(source_file: str) -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    raw = b"".join(iter(lambda: os.read(0, 1 << 20), b""))
    request = json.loads(raw)
    nonce = str(request["nonce"])
    harness = Harness(request, source_file)
    try:
        failure = harness.start()
        verdict = failure or run_tests(harness, str(request["test_code"]))
    finally:
        harness.close()
    sys.stdout.flush()
    os.write(1, f"\n{nonce} {json.dumps(list(verdict))}\n".encode())
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["program"]:
        serve_program(int(sys.argv[2]), int(sys.argv[3]))
    else:
        harness_main(os.path.abspath(__file__))
