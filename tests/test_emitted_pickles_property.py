"""Property: whatever ckptd accepts, it writes only pickles that import allowlisted names.

For any input the converter accepts (genuine checkpoints of random stand-in objects, and
checkpoints whose policy global has a random, often hostile, module and name), the zip passes the
full ``verify``, and every ``:serialized:`` pickle in it, loaded by a REAL unpickler in a separate
process with an audit hook on ``pickle.find_class``, asks only for globals the allowlist accepts.
Inputs the converter refuses satisfy the property trivially; a payload that would create a marker
file must never do so, in ckptd or in the loading process.
"""

from __future__ import annotations

import _compat_pickle
import base64
import json
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ckptd.convert.conversion import convert_file
from ckptd.errors import CkptdError
from ckptd.formats.verify import verify_zip
from ckptd.pickles import allowlist, call_shapes
from ckptd.pickles.allowlist import lookup
from tests.daemon_harness import REPO
from tests.sb2_fixtures import Box, Discrete, MlpPolicy, constfn, dumps, stand_ins, tanh
from tests.test_hostile_names import FAMILIES, checkpoint

pytestmark = pytest.mark.timeout(300)

# The loading process: stand-in gym / stable_baselines / tensorflow modules, an audit hook that
# records every global the unpickler looks up and every module the load itself imports (not the
# modules those import in turn: numpy.random pulls in hashlib), then one base64 pickle per line in,
# one JSON out.
_LOADER = """
import base64, json, pickle, sys
sys.path.insert(0, sys.argv[1])
from tests.sb2_fixtures import stand_ins
found = []
imported = []
def hook(event, args):
    if event == "pickle.find_class":
        found.append([str(args[0]), str(args[1])])
    elif event == "import" and direct():
        imported.append(str(args[0]))
def direct():
    # Nested imports run inside another module's body (a "<module>" frame other than ours).
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_code.co_filename != "<string>":
            return False
        frame = frame.f_back
    return True
sys.addaudithook(hook)
with stand_ins():
    for line in sys.stdin:
        found.clear()
        imported.clear()
        try:
            pickle.loads(base64.b64decode(line))
            error = None
        except Exception as err:  # an SB2-era helper missing on this stack, for example
            error = type(err).__name__
        print(json.dumps({"found": found, "imported": imported, "error": error}), flush=True)
"""


class Loader:
    """One long-lived real unpickler with an audit hook (a process per example would be slow)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOADER, str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def load(self, blob: bytes) -> tuple[list[tuple[str, str]], list[str]]:
        """(globals looked up, modules imported) while a real unpickler loads ``blob``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(base64.b64encode(blob).decode() + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return [(module, name) for module, name in reply["found"]], reply["imported"]

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def loader() -> Iterator[Loader]:
    process = Loader()
    yield process
    process.close()


# Top-level packages a load may import: those of allowlisted globals, the packages cloudpickle's
# subimport may name, and the codec ``_codecs.encode(..., 'latin1')`` looks up.
IMPORTABLE = {module.split(".")[0] for module, _ in allowlist._EXACT} | {
    *call_shapes.SUBIMPORT_PACKAGES,
    "builtins",
    "encodings",
}


def python3_name(module: str, name: str) -> tuple[str, str]:
    """The name find_class resolves (protocol 2 streams use Python 2 spellings; the event has those)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# --- inputs ------------------------------------------------------------------------------------

_OBJECTS = ["policy", "box", "discrete", "float32", "constfn", "partial", "tanh", "array"]


def _realize(token: Any) -> Any:
    """Build the stand-in object a token names (inside ``stand_ins()``)."""
    if isinstance(token, tuple) and token and token[0] == "obj":
        kind, size = token[1], token[2]
        return {
            "policy": lambda: MlpPolicy,
            "box": lambda: Box(-1.0, 1.0, (size,)),
            "discrete": lambda: Discrete(size),
            "float32": lambda: np.float32(size / 3),
            "constfn": lambda: constfn(size / 7),
            "partial": lambda: partial(tanh, size),
            "tanh": lambda: tanh,
            "array": lambda: np.arange(size, dtype=np.float32),
        }[kind]()
    if isinstance(token, list):
        return [_realize(item) for item in token]
    if isinstance(token, tuple):
        return tuple(_realize(item) for item in token[1:])
    if isinstance(token, dict):
        return {key: _realize(value) for key, value in token.items()}
    return token


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.tuples(st.just("obj"), st.sampled_from(_OBJECTS), st.integers(1, 4)),
)
_value = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(st.just("tuple"), inner, inner),
        st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=3),
    ),
    max_leaves=6,
)
genuine = st.builds(
    lambda data, protocol: ("genuine", data, protocol),
    st.dictionaries(st.text(min_size=1, max_size=8), _value, min_size=1, max_size=4),
    st.sampled_from([2, 4, 5]),
)

_ANY_TEXT = st.text(max_size=12)
_FAMILY = st.sampled_from(FAMILIES)
names = st.builds(
    lambda family, before, after, where, inject, opcode: (
        "name",
        family,
        before,
        after,
        where,
        inject,
        opcode,
    ),
    _FAMILY,
    _ANY_TEXT,
    _ANY_TEXT,
    st.sampled_from(["module", "name"]),
    st.booleans(),
    st.sampled_from(["STACK_GLOBAL", "GLOBAL"]),
)


def _source_bytes(example: tuple[Any, ...], marker: Path) -> bytes:
    if example[0] == "genuine":
        _, data, protocol = example
        with stand_ins():
            params = OrderedDict(w=np.arange(3, dtype=np.float32))
            return dumps((_realize(data), params), protocol)
    _, (module, name), before, after, where, inject, opcode = example
    if where == "module":
        module = before + module + after
    else:
        name = before + name + after
    if opcode == "GLOBAL" and ("\n" in module or "\n" in name):
        opcode = "STACK_GLOBAL"  # a text line cannot hold a newline; STACK_GLOBAL can
    return checkpoint(module, name, opcode, marker if inject else None)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(example=st.one_of(genuine, names))
def test_accepted_input_gives_output_that_verifies_and_imports_only_allowlisted_names(
    example: tuple[Any, ...], loader: Loader, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("prop")
    marker = directory / "pwned"
    source = directory / "rl_model_1_steps.pkl"
    source.write_bytes(_source_bytes(example, marker))
    try:
        outcome = convert_file(source, original="archive")
    except CkptdError:
        event("refused")
        assert not list(directory.glob("*.zip"))
        assert not marker.exists()
        return
    event(f"accepted {example[0]}")
    report = verify_zip(outcome.output)
    assert report.ok, report.problems
    import zipfile

    with zipfile.ZipFile(outcome.output) as archive:
        data = json.loads(archive.read("data"))
    for key, value in data.items():
        if isinstance(value, dict) and ":serialized:" in value:
            blob = base64.b64decode(value[":serialized:"])
            event("serialized entry loaded")
            found, imported = loader.load(blob)
            for module, name in found:
                assert lookup(*python3_name(module, name)) is not None, (key, module, name)
            for module in imported:
                assert module.split(".")[0] in IMPORTABLE, (key, module)
    assert not marker.exists()


def test_the_loader_sees_what_a_pickle_looks_up_and_imports(loader: Loader) -> None:
    """The audit hook is not blind: a pickle naming an unimported module shows up in both lists."""
    found, imported = loader.load(b"\x80\x02ccolorsys\nrgb_to_hsv\n.")
    assert found == [("colorsys", "rgb_to_hsv")]
    assert "colorsys" in imported
