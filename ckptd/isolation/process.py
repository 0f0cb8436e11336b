"""One checkpoint-parsing child process and the pipe to it (used by ``ckptd.isolation.supervisor``).

The child is ``python -S -c ...`` running ``ckptd.isolation.child`` on this process's import path,
started with ``subprocess`` (never ``fork`` from the threaded daemon). Requests and answers are
JSON lines; :meth:`IsolatedProcess.read` waits for the next answer until a deadline with
``select``, so the caller decides when a file has taken too long and kills the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ckptd
from ckptd.errors import CkptdError

# A child that has not said hello within this long is broken (not the file's fault): retried.
START_TIMEOUT_SECONDS = 60.0
# Past the deadline, an answer whose first bytes are in already is read on while its next chunk
# comes within this long (a large answer fills the pipe in several writes).
ANSWER_GRACE_SECONDS = 1.0
# Idle children exit on EOF at once; this is how long the daemon's stop waits before killing.
CLOSE_GRACE_SECONDS = 1.0
# Child startup reads no checkpoint; its imports only need the package's own directory first.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from ckptd.isolation.child import main; raise SystemExit(main(sys.argv[2:]))"
)
# numpy's BLAS would reserve address space per thread; the child parses one file on one thread.
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ChildGone(CkptdError):
    """The child ended without answering (killed for the deadline, crashed, or the daemon stops)."""


def child_command() -> list[str]:
    """argv of a child: this interpreter, without site processing, on this process's import path."""
    package_parent = str(Path(ckptd.__file__).resolve().parent.parent)
    path = list(dict.fromkeys([package_parent, *(entry for entry in sys.path if entry)]))
    return [sys.executable, "-S", "-c", _BOOT, json.dumps(path)]


class IsolatedProcess:
    """One child and the pipe to it: :meth:`send` a request, :meth:`read` its answers by a deadline."""

    def __init__(self, address_space: int, *, wait: bool = True) -> None:
        self.address_space = address_space  # its RLIMIT_AS (Limits.address_space)
        self.proc = subprocess.Popen(
            [*child_command(), str(address_space)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **_CHILD_ENV},
            close_fds=True,
        )
        self._buffer = b""
        self.ended = False  # its output reached EOF: it died (or is dying)
        self.uncapped: str | None = None
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Wait for the child's hello (several children started at once start in parallel)."""
        hello = self._read(time.monotonic() + START_TIMEOUT_SECONDS)
        if hello is None or "hello" not in hello:
            self.kill()
            raise ChildGone("the isolated parser process did not start")
        self.uncapped = hello.get("uncapped")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, request: Mapping[str, Any]) -> bool:
        """Send ``request`` (its answers follow, one per path); False if the child is gone."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next answer, or None if the child has not answered by the deadline or died.

        An answer already in the pipe when the deadline has passed is taken: this process may
        have been paused (SIGSTOP, a stall) while the child answered in time, and only a child
        that has not answered has taken too long. One it is still writing (its first bytes are
        here) gets ``ANSWER_GRACE_SECONDS`` for each further chunk.
        """
        return self._read(deadline)

    def _read(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            late = remaining <= 0
            if late:
                # Past it: only what is there already, or the rest of an answer on its way.
                remaining = ANSWER_GRACE_SECONDS if self._buffer else 0.0
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                if late:
                    return None
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                # The child is gone (its pipe closes before it can be reaped: poll() may still
                # say it runs, so callers ask this flag, not poll()).
                self.ended = True
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def alive(self) -> bool:
        return not self.ended and self.proc.poll() is None

    def death(self) -> str:
        """How the child ended, for a message (``killed by SIGSEGV``, ``exit status 1``)."""
        code = self.proc.wait()
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def end_input(self) -> None:
        """Close the child's stdin: an idle child exits."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """End an idle child: close its stdin (it exits), kill it if it has not within ``grace``."""
        self.end_input()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        self.kill()
