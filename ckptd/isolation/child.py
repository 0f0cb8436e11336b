"""The process that parses checkpoints for the daemon: identify, verify, convert; one file at a time.

Started by ``ckptd.isolation.supervisor`` (never by hand): it caps its own address space at
``Limits.address_space`` (RLIMIT_AS: ``limits.max_memory`` plus headroom), asks the kernel to kill
it when its parent goes and to pick it first when the unit runs out of memory, says hello, then
answers one JSON line per request on stdin with one JSON line on stdout per path it names, until
stdin closes. A request carries paths (never the files' bytes) and the file's ``Limits``; each
answer is the library's typed result or the error it raised (``ckptd.isolation.codec``) and the
log lines it wrote. A file that hangs or eats memory takes only this process with it: the parent
kills it and starts another (docs/security.md, Isolation).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

# Loaded before the address-space cap, as when the converter imported it with its modules (it
# now imports it where it uses it): numpy's own mappings stay outside every file's budget.
import numpy  # noqa: F401

from ckptd.convert.conversion import convert_file
from ckptd.formats import Format
from ckptd.formats.onepass import identify_and_verify
from ckptd.formats.verify import verify_zip
from ckptd.isolation.codec import decode, decode_error, encode, encode_error
from ckptd.limits import Limits
from ckptd.ops.scrub_check import verify_structure

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Collect(logging.Handler):
    """Keeps this request's log records, to be sent back and logged by the daemon."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append([record.levelno, record.name, record.getMessage()])


def _die_with_parent() -> None:
    # Our own SIGKILL when the daemon (the thread that started us) ends, even by kill -9.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # stdin's EOF ends us once the current file is done


def _first_to_go_when_out_of_memory() -> None:
    # Under the unit's MemoryMax the kernel kills the process with the highest score: this one,
    # not the daemon. Raising one's own score needs no privilege.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def _cap_memory(address_space: int) -> str | None:
    """Set RLIMIT_AS's soft limit; None when set, else why not (the unit's seccomp filter may
    forbid it). The hard limit stays, so each file can get its own soft cap (``_file_cap``): this
    process never runs code from a file, so nothing but ckptd moves the soft limit."""
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_within(address_space, hard), hard))
    except (OSError, ValueError) as err:
        return str(err)
    return None


def _within(limit: int, hard: int) -> int:
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)


def _file_cap(address_space: int, path: str) -> int:
    """The cap while ``path`` is parsed: ``address_space`` plus the file's size, because reading a
    legacy pickle maps an anonymous sparse buffer as large as the file (ckptd.convert.legacy_stream:
    its untouched pages cost no memory, but RLIMIT_AS counts them); without this a genuine 2 GB
    checkpoint would be refused for memory it never uses."""
    try:
        size = os.lstat(path).st_size
    except OSError:
        size = 0  # the operation says what is wrong with it
    cap = address_space + size
    with contextlib.suppress(OSError, ValueError):
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (_within(cap, hard), hard))
    return cap


def _operations(ask: Callable[[str], None]) -> dict[str, Callable[..., Any]]:

    def examine(path: Path, limits: Any) -> dict[str, Any]:
        # identify, and for a zip its verification too: what the daemon asks of every new file,
        # in one pass over it (ckptd.formats.onepass).
        # The file's (size, mtime_ns) as examined lets the daemon tell a prefetched answer from
        # a stale one.
        st = os.stat(path, follow_symlinks=False)
        identification, report = identify_and_verify(path, limits=decode(Limits, limits))
        return {
            "identification": encode(identification),
            "report": encode(report),
            "stat": [st.st_size, st.st_mtime_ns],
        }

    def verify(path: Path, limits: Any) -> Any:
        return encode(verify_zip(path, limits=decode(Limits, limits)))

    def convert(path: Path, **kwargs: Any) -> Any:
        for key in ("output", "archive_path", "archive_base"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        if "limits" in kwargs:
            kwargs["limits"] = decode(Limits, kwargs["limits"])
        if kwargs.pop("fence", False):
            # The daemon checks its run's lease before each rename and move (a cluster).
            kwargs["fence"] = lambda: ask(str(path))
        return encode(convert_file(path, **kwargs))

    def structure(path: Path, fmt: str, limits: Any) -> list[str]:
        # The scheduled scrub's re-verification of a recorded file.
        return list(verify_structure(path, Format(fmt), decode(Limits, limits)))

    return {"examine": examine, "verify": verify, "convert": convert, "structure": structure}


def _answer(
    operation: Callable[..., Any], path: str, kwargs: Mapping[str, Any], cap: int
) -> dict[str, Any]:
    try:
        return {"ok": operation(Path(path), **kwargs)}
    except MemoryError:
        return {"memory": cap}
    except OSError as err:
        if err.errno == errno.ENOMEM:  # an mmap or a read buffer over RLIMIT_AS
            return {"memory": cap}
        return {"error": encode_error(err)}
    except Exception as err:  # every error is the file's answer; the parent decides what it means
        return {"error": encode_error(err)}


def _send(out: BinaryIO, message: Mapping[str, Any]) -> None:
    # "at": when it was sent, on the machine's monotonic clock (the daemon's too): the daemon
    # times the file by its child's answers, not by when it got round to reading them.
    stamped = {**message, "at": time.monotonic()}
    out.write(json.dumps(stamped, separators=(",", ":")).encode() + b"\n")
    out.flush()


def main(argv: list[str]) -> int:
    # The daemon decides when we stop: systemd's SIGTERM to the whole unit, or ^C in a terminal,
    # must not end a conversion the daemon would then misread as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _first_to_go_when_out_of_memory()
    address_space = int(argv[0])
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    requests = sys.stdin.buffer

    def ask(path: str) -> None:
        # A question to the daemon in the middle of an answer; its reply is the next line in.
        _send(out, {"fence": path})
        line = requests.readline()
        reply = json.loads(line) if line else {"fence": {"type": "FencedError", "text": "no reply"}}
        if reply.get("fence") is not None:
            raise decode_error(reply["fence"])

    operations = _operations(ask)
    uncapped = _cap_memory(address_space)
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    # The answers get the pipe to themselves: anything else printed goes to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _send(out, {"hello": os.getpid(), "uncapped": uncapped})
    for line in requests:
        request = json.loads(line)
        operation = operations[request["op"]]
        # One answer line per path, each sent as soon as it is ready: the daemon times each file.
        for path in request["paths"]:
            collect.records = []
            cap = _file_cap(address_space, path) if uncapped is None else 0
            answer = _answer(operation, path, request.get("kwargs", {}), cap)
            answer["logs"] = collect.records
            try:
                _send(out, answer)
            except BrokenPipeError:
                return 0  # the daemon is gone (killed); PR_SET_PDEATHSIG is on its way
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
