"""The invariants every fuzzed input must keep, shared by the hypothesis tests and the atheris target.

For any bytes at all, in a file of a run directory:
- identification, ``inspect``, ``convert`` and ``verify`` either succeed or raise a ``CkptdError``
  (a one-line message naming the file): never another exception, never a hang (the callers bound
  time and memory);
- a successful conversion writes a zip that passes the full ``verify`` (every pickle ckptd emits
  passes the same allowlist as every pickle it reads), and the input is left byte-for-byte as it was;
- a failed conversion leaves no output behind.
"""

from __future__ import annotations

import hashlib
import json
import resource
import select
import struct
import subprocess
import sys
import traceback
from pathlib import Path

from ckptd.convert.conversion import convert_file
from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.formats.verify import verify_zip
from ckptd.ops.inspection import inspect_path


class InvariantBroken(AssertionError):
    """A fuzzed input broke one of the module's invariants."""


def check_bytes(data: bytes, workdir: Path, name: str = "rl_model_1000_steps.pkl") -> str:
    """Run every entry point on ``data`` written to ``workdir/name``; return what happened."""
    source = workdir / name
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    output = workdir / "out.zip"
    output.unlink(missing_ok=True)
    try:
        identification = identify(source)
    except CkptdError:
        identification = None
    inspect_path(source)  # reports problems in its result; must never raise
    outcome = "unidentified"
    if identification is not None and identification.format is Format.SB2_ZIP:
        report = verify_zip(source)
        outcome = "zip ok" if report.ok else "zip damaged"
    try:
        convert_file(source, output=output)
    except CkptdError as err:
        if "\n" in str(err):
            raise InvariantBroken(f"a multi-line error: {str(err)!r}") from err
        if (
            output.exists()
            and identification is not None
            and identification.format is not Format.SB2_ZIP
        ):
            raise InvariantBroken(f"a failed conversion left {output.name} behind") from err
        outcome = f"refused: {type(err).__name__}"
    else:
        if output.exists():
            report = verify_zip(output)
            if not report.ok:
                raise InvariantBroken(f"ckptd wrote a zip that fails verify: {report.problems}")
            outcome = "converted"
    if hashlib.sha256(source.read_bytes()).hexdigest() != digest:
        raise InvariantBroken("the input changed")
    return outcome


# --- a worker process that bounds each input in time and memory ---------------------------------

_HEADER = struct.Struct("<I")


class CheckWorker:
    """Runs ``check_bytes`` in a child process, one input at a time, with a deadline and RLIMIT_AS.

    A hang or a memory blow-up in the code under test must fail the one input that caused it (and
    name it), not hang the whole test run; the child is replaced after such an input.
    """

    def __init__(self, workdir: Path, *, seconds: float = 15.0, memory: int = 1536 << 20) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.memory = memory
        self._child: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CheckWorker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            for pipe in (self._child.stdin, self._child.stdout):
                if pipe is not None:
                    pipe.close()
            self._child = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzz_checks", str(self.workdir), str(self.memory)],
                cwd=Path(__file__).resolve().parent.parent,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._child

    def check(self, data: bytes, name: str = "rl_model_1000_steps.pkl") -> str:
        try:
            return self._check(data, name)
        except InvariantBroken as err:
            saved = (
                self.workdir / f"failing-{hashlib.sha256(data).hexdigest()[:16]}{Path(name).suffix}"
            )
            saved.write_bytes(data)
            raise InvariantBroken(f"{err} (input saved as {saved})") from None

    def _check(self, data: bytes, name: str) -> str:
        child = self._start()
        assert child.stdin is not None and child.stdout is not None
        encoded = name.encode()
        child.stdin.write(_HEADER.pack(len(encoded)) + encoded + _HEADER.pack(len(data)) + data)
        child.stdin.flush()
        ready, _, _ = select.select([child.stdout], [], [], self.seconds)
        if not ready:
            self.close()
            raise InvariantBroken(
                f"no answer within {self.seconds:.0f} s (a hang) for {data[:80]!r}"
            )
        header = child.stdout.read(_HEADER.size)
        if len(header) < _HEADER.size:
            code = child.wait()
            self.close()
            raise InvariantBroken(f"the checker died (exit {code}: memory?) on {data[:80]!r}")
        answer = json.loads(child.stdout.read(_HEADER.unpack(header)[0]))
        if answer["ok"]:
            return str(answer["outcome"])
        raise InvariantBroken(answer["error"])


def _serve(workdir: Path, memory: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while header := stdin.read(_HEADER.size):
        name = stdin.read(_HEADER.unpack(header)[0]).decode()
        data = stdin.read(_HEADER.unpack(stdin.read(_HEADER.size))[0])
        try:
            answer = {"ok": True, "outcome": check_bytes(data, workdir, name)}
        except BaseException:  # report everything, including MemoryError, to the parent
            answer = {"ok": False, "error": traceback.format_exc(limit=12)}
        encoded = json.dumps(answer).encode()
        stdout.write(_HEADER.pack(len(encoded)) + encoded)
        stdout.flush()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]))
