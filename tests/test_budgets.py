"""Per-file budgets and one-line errors for hostile-but-small checkpoints (docs/security.md, "Budgets").

Two classes of attack, each generated (``tests.hostile_gen``) rather than hand-picked:

* exponential or huge work from kilobytes: shared-memo DAGs (2^depth nodes from a few hundred
  bytes) used as dict keys, frozenset items and list items; opcode floods; nesting 100,000 deep;
* inputs that used to end in a traceback: huge ints (keys, values, shapes), bad shapes, a dtype
  with a trailing newline, lone surrogates in names.

Library calls are checked in-process (fast, many examples); the CLI (``inspect``, ``verify``,
``convert``) runs as a real subprocess under ``RLIMIT_AS`` (1 GiB) and a hard timeout, so a
regression fails fast instead of hanging or swapping CI. The old code hung (the DAG keys, past
2^30 work) or printed tracebacks on every one of these.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptd.convert.legacy import read_legacy
from ckptd.errors import BudgetExceeded, FormatError, UnsafeCheckpoint
from ckptd.formats.datajson import analyze_data_json
from ckptd.formats.npy import parse_npy_header
from ckptd.limits import HARD_MAX_DEPTH, Limits
from ckptd.pickles.budget import check_pickle, measure
from ckptd.pickles.graph import build_graph
from ckptd.pickles.ops import parse_ops
from tests import hostile_gen as gen
from tests.daemon_harness import NotifySocket

MEMORY_CAP = 1024**3  # address space of each CLI subprocess
CLI_TIMEOUT = 60.0

DAG_USES = ("dag-key", "dag-frozenset", "dag-list")
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _zip_data(kind: str, size: int) -> bytes:
    """The ``data`` member of an SB2 zip whose ``x`` entry is the hostile pickle."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(gen.sb2_zip_bytes({"x": gen.value_pickle(kind, size)}))) as z:
        return z.read("data")


# --- class 3: exponential and huge work -----------------------------------------------------------


def reported_nodes(message: str) -> float:
    """The node count a max_expanded_nodes refusal names: exact, or ``about 2^N``."""
    found = re.search(
        r"exceeds limits.max_expanded_nodes \(1000000\): (about 2\^)?(\d+) nodes", message
    )
    assert found, message
    return 2.0 ** int(found[2]) if found[1] else float(found[2])


@pytest.mark.timeout(60)
@FAST
@given(use=st.sampled_from(DAG_USES), depth=st.integers(20, 80))
def test_shared_dags_are_refused_by_expanded_size_in_linear_time(use: str, depth: int) -> None:
    blob = gen.legacy_pickle(use, depth)
    assert len(blob) < 3000  # kilobytes in, 2^depth nodes out
    with pytest.raises(BudgetExceeded) as caught:
        read_legacy(blob, source="dag.pkl")
    assert caught.value.limit == "max_expanded_nodes"
    assert reported_nodes(str(caught.value)) >= 3 * 2**depth - 1  # 2^depth leaves, and tuples
    # The same value inside a :serialized: entry (what verify and the daemon's zip path check).
    analysis = analyze_data_json(_zip_data(use, depth), source="dag.zip")
    (safety,) = [entry.safety for entry in analysis.entries if entry.key == "x"]
    assert safety.startswith("refused") and "exceeds limits.max_expanded_nodes" in safety


@pytest.mark.parametrize("use", DAG_USES)
def test_a_small_shared_value_still_converts_expanded(use: str) -> None:
    """The budget is not a ban on sharing: 2^5 leaves are fine, and JSON expands them like SB2."""
    checkpoint = read_legacy(gen.legacy_pickle(use, 5), source="small.pkl")
    value = checkpoint.data["x"]
    if use == "dag-list":
        assert str(value).count("'a'") == 2**5
    else:
        assert value.pickled.count(b"\x85") >= 1  # type: ignore[union-attr]


def test_the_expanded_size_is_exact_and_linear_to_compute() -> None:
    graph = build_graph(parse_ops(gen.value_pickle("dag-list", 60)))
    size = measure(graph.root)
    assert size.nodes == float(3 * 2**60 - 1)  # lists 2^61 - 1, 'a' leaves 2^60 (as a float)
    assert size.depth == 61


def test_shared_text_is_counted_against_max_memory() -> None:
    ops = gen.Ops()
    ops.raw(b"}").text("policy").raw(gen.POLICY + b"s").text("x")
    ops.raw(b"]").text("y" * 100_000).raw(b"a")  # ['yyy...'] then doubled 12 times
    slot = ops.put()
    for _ in range(12):
        ops.raw(b"0]")
        new = ops.put()
        ops.raw(b"(").get(slot).get(slot).raw(b"e")
        slot = new
    ops.raw(b"sccollections\nOrderedDict\n)R\x86")
    limits = Limits(max_memory=256 * 1024**2)
    with pytest.raises(
        BudgetExceeded, match=r"exceeds limits.max_memory \(268435456\): 4\d{8} bytes of text"
    ):
        read_legacy(ops.stop(), source="text.pkl", limits=limits)


@pytest.mark.timeout(60)
@FAST
@given(count=st.integers(2_000, 50_000), share=st.booleans())
def test_opcode_floods_are_refused_at_the_budget(count: int, share: bool) -> None:
    limits = Limits(max_opcodes=1_000)
    kind = "key-flood" if share else "flood"
    with pytest.raises(BudgetExceeded, match=r"exceeds limits.max_opcodes \(1000\)"):
        read_legacy(gen.legacy_pickle(kind, count), source="flood.pkl", limits=limits)


def test_a_zips_pickles_share_one_opcode_budget() -> None:
    """Ten entries of 600 opcodes each pass one by one; together they are over a 5000 budget."""
    import io
    import zipfile

    entries = {f"k{i}": gen.value_pickle("flood", 600) for i in range(10)}
    with zipfile.ZipFile(io.BytesIO(gen.sb2_zip_bytes(entries))) as archive:
        raw = archive.read("data")
    analysis = analyze_data_json(raw, source="z.zip", limits=Limits(max_opcodes=5000))
    safety = [entry.safety for entry in analysis.entries if entry.key.startswith("k")]
    assert safety[:8] == ["ok"] * 8
    assert all("exceeds limits.max_opcodes (5000)" in text for text in safety[8:])


@pytest.mark.timeout(60)
@FAST
@given(kind=st.sampled_from(["nested", "nested-tuple-key"]), depth=st.integers(101, 100_000))
def test_deep_nesting_is_refused_by_max_depth_without_recursion(kind: str, depth: int) -> None:
    with pytest.raises(BudgetExceeded, match=r"exceeds limits.max_depth \(100\): values nested"):
        read_legacy(gen.legacy_pickle(kind, depth), source="deep.pkl")
    with pytest.raises(BudgetExceeded, match="max_depth"):
        check_pickle(gen.value_pickle(kind, depth), source="deep")


# --- class 5: one line instead of a traceback -------------------------------------------------


@FAST
@given(digits=st.integers(4301, 30_000), where=st.sampled_from(["int", "int-key"]))
def test_huge_ints_are_refused_whatever_sys_int_max_str_digits_says(
    digits: int, where: str
) -> None:
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # global: the reader must not depend on it
    try:
        with pytest.raises(UnsafeCheckpoint, match=r"an integer of \d+ digits \(more than 4300"):
            read_legacy(gen.legacy_pickle(where, digits), source="int.pkl")
    finally:
        sys.set_int_max_str_digits(old)


def test_an_int_of_4300_digits_is_still_a_value() -> None:
    checkpoint = read_legacy(gen.legacy_pickle("int", 4299), source="int.pkl")
    assert checkpoint.data["x"] == 10**4299


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ([0, 10**30], "overflows numpy's index type"),
        ([0, 2**62, 4], "overflows numpy's index type"),
        ([1] * 33, "33 dimensions (numpy supports at most 32)"),
        ([2, -3], "not a tuple of non-negative ints"),
    ],
)
def test_impossible_shapes_are_one_line_format_errors(dims: list[int], message: str) -> None:
    blob = gen.legacy_with_params([("w", gen.array_ops(gen.shape_ops(dims)))])
    with pytest.raises(FormatError) as caught:
        read_legacy(blob, source="shape.pkl")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_dtype_with_a_trailing_newline_is_refused() -> None:
    blob = gen.legacy_with_params(
        [("w", gen.array_ops(gen.shape_ops([1]), descr="f4\n", payload=b"\0" * 4))]
    )
    with pytest.raises(UnsafeCheckpoint, match=r"numpy\.dtype of anything but a plain numeric"):
        read_legacy(blob, source="dtype.pkl")


def _surrogate_files() -> dict[str, bytes]:
    module = gen.Ops()
    module.raw(b"}").text("policy").text("a\udc80b").text("C").raw(b"\x93s")
    module.raw(b"ccollections\nOrderedDict\n)R\x86")
    key = gen.Ops()
    key.raw(b"}").text("policy").raw(gen.POLICY + b"s").text("k\ud800").raw(b"K\x01s")
    key.raw(b"ccollections\nOrderedDict\n)R\x86")
    param = gen.legacy_with_params(
        [("w\udc80", gen.array_ops(gen.shape_ops([1]), payload=b"\0" * 4))]
    )
    return {"module": module.stop(), "data key": key.stop(), "parameter": param}


@pytest.mark.parametrize("where", ["module", "data key", "parameter"])
def test_lone_surrogates_in_names_are_refused_escaped(where: str) -> None:
    with pytest.raises(UnsafeCheckpoint) as caught:
        read_legacy(_surrogate_files()[where], source="names.pkl")
    text = str(caught.value)
    text.encode("utf-8")  # printable and loggable as it is
    assert "\\ud" in text and "\n" not in text


# --- the CLI, as a subprocess with a memory cap ------------------------------------------------


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def ckptd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        preexec_fn=_cap_memory,
        env=env,
    )


def assert_one_line_failure(
    result: subprocess.CompletedProcess[str], path: Path, text: str
) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert lines, result.stdout[-2000:]
    assert all(line.startswith(f"ckptd: {path}") for line in lines), lines
    assert any(text in line for line in lines), (text, lines)


HOSTILE_LEGACY = {
    "dag-key": ("dag-key", 60, "exceeds limits.max_expanded_nodes (1000000): about 2^62"),
    "dag-frozenset": ("dag-frozenset", 60, "exceeds limits.max_expanded_nodes"),
    "dag-list": ("dag-list", 60, "exceeds limits.max_expanded_nodes"),
    "nested": ("nested", 100_000, "exceeds limits.max_depth (100)"),
    "nested-key": ("nested-tuple-key", 100_000, "exceeds limits.max_depth (100)"),
    "flood": ("flood", 2_000_000, "exceeds limits.max_opcodes (1000000)"),
    "int-key": ("int-key", 5000, "digits (more than 4300; Python will not print it)"),
    "int": ("int", 5000, "digits (more than 4300; Python will not print it)"),
}


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", sorted(HOSTILE_LEGACY))
def test_cli_refuses_hostile_legacy_files_in_one_line(tmp_path: Path, name: str) -> None:
    kind, size, text = HOSTILE_LEGACY[name]
    path = gen.write(tmp_path / f"rl_model_{name}.pkl", gen.legacy_pickle(kind, size))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for command in ("verify", "convert"):
        assert_one_line_failure(ckptd(command, path), path, text)
    inspected = ckptd("inspect", path, "--json")
    assert inspected.returncode == 1 and "Traceback" not in inspected.stderr
    assert '"verdict": "refused"' in inspected.stdout and text in inspected.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no zip, nothing moved


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("name", "params", "text"),
    [
        ("zero-huge", [0, 10**30], "overflows numpy's index type"),
        ("33-dims", [1] * 33, "33 dimensions (numpy supports at most 32)"),
        ("huge-int", [0, 10**5000], "digits (more than 4300"),
    ],
)
def test_cli_reports_impossible_shapes_in_one_line(
    tmp_path: Path, name: str, params: list[int], text: str
) -> None:
    blob = gen.legacy_with_params([("w", gen.array_ops(gen.shape_ops(params)))])
    path = gen.write(tmp_path / f"{name}.pkl", blob)
    for command in ("verify", "convert"):
        assert_one_line_failure(ckptd(command, path), path, text)
    result = ckptd("inspect", path)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert text in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("where", ["module", "data key", "parameter"])
def test_cli_refuses_lone_surrogates_in_one_line(tmp_path: Path, where: str) -> None:
    path = gen.write(tmp_path / "names.pkl", _surrogate_files()[where])
    assert_one_line_failure(ckptd("verify", path), path, "\\ud")
    assert_one_line_failure(ckptd("convert", path), path, "refused: ")


@pytest.mark.slow
@pytest.mark.timeout(300)
@SLOW
@given(
    kind=st.sampled_from([*DAG_USES, "nested", "nested-tuple-key", "int-key", "key-flood"]),
    size=st.integers(20, 80),
)
def test_cli_verify_refuses_hostile_serialized_entries(
    tmp_path_factory: pytest.TempPathFactory, kind: str, size: int
) -> None:
    size = {
        "nested": 100_000,
        "nested-tuple-key": 100_000,
        "int-key": 5000,
        "key-flood": 200_000,
    }.get(kind, size)
    path = gen.write(
        tmp_path_factory.mktemp("zip") / "model.zip",
        gen.sb2_zip_bytes({"x": gen.value_pickle(kind, size)}),
    )
    result = ckptd("verify", path)
    assert_one_line_failure(result, path, "data['x']: refused: ")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_takes_the_budgets_from_the_config(tmp_path: Path) -> None:
    path = gen.write(tmp_path / "model.pkl", gen.legacy_pickle("dag-list", 8))
    assert ckptd("verify", path).returncode == 0  # 2^9 nodes: within the defaults
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        f"version: 1\nroots: [{{path: {tmp_path}}}]\nlimits: {{max_expanded_nodes: 100}}\n"
    )
    assert_one_line_failure(
        ckptd("verify", "-c", config, path), path, "exceeds limits.max_expanded_nodes (100)"
    )
    assert_one_line_failure(
        ckptd("convert", "-c", config, path), path, "exceeds limits.max_expanded_nodes (100)"
    )
    config.write_text(f"version: 1\nroots: [{{path: {tmp_path}}}]\nlimits: {{max_depth: 500}}\n")
    bad = ckptd("inspect", "-c", config, path)
    assert bad.returncode == 2 and "limits.max_depth" in bad.stderr


# --- the daemon: every hostile file gets its one-line entry, and the daemon keeps serving ---------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_daemon_records_hostile_files_in_one_line_and_keeps_serving(
    tmp_path: Path, notify_socket: NotifySocket, legacy_bytes: bytes
) -> None:
    from ckptd.manifest.store import load_manifest
    from tests.daemon_harness import DaemonProcess, daemon_config, write_config
    from tests.helpers import wait_until

    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    genuine = legacy_bytes
    hostile = {
        "rl_model_2_steps.pkl": gen.legacy_pickle("dag-key", 60),
        "rl_model_3_steps.pkl": gen.legacy_pickle("int-key", 5000),
        "rl_model_4_steps.pkl": gen.legacy_with_params(
            [("w", gen.array_ops(gen.shape_ops([0, 10**30])))]
        ),
        "rl_model_5_steps.pkl": _surrogate_files()["parameter"],
        "rl_model_6_steps.zip": gen.sb2_zip_bytes({"x": gen.value_pickle("dag-list", 60)}),
        "rl_model_7_steps.pkl": gen.legacy_pickle("nested", 100_000),
        "rl_model_8_steps.pkl": gen.legacy_pickle("flood", 1_200_000),
    }
    expected = {
        "rl_model_2_steps.pkl": ("refused", "exceeds limits.max_expanded_nodes (1000000)"),
        "rl_model_3_steps.pkl": ("refused", "digits (more than 4300"),
        "rl_model_4_steps.pkl": ("broken", "overflows numpy's index type"),
        "rl_model_5_steps.pkl": ("refused", "'w\\udc80' is not valid text"),
        # A zip whose :serialized: entry the allowlist refuses is as unsafe as a pickle: refused.
        "rl_model_6_steps.zip": ("refused", "exceeds limits.max_expanded_nodes (1000000)"),
        "rl_model_7_steps.pkl": ("refused", "exceeds limits.max_depth (100)"),
        "rl_model_8_steps.pkl": ("refused", "exceeds limits.max_opcodes (1000000)"),
    }
    (run / "rl_model_1_steps.pkl").write_bytes(genuine)
    for name, data in hostile.items():
        (run / name).write_bytes(data)
    config = write_config(
        tmp_path / "ckptd.yaml",
        daemon_config(root, stable_for="1s", keep_last=100, schedule={"manifest": "1m"}),
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready(timeout=60)

        def states() -> dict[str, tuple[str, str]]:
            path = run / "ckptd-manifest.json"
            if not path.exists():
                return {}
            return {
                entry.path: (entry.state, entry.refusal or entry.error or "")
                for entry in load_manifest(path).checkpoints
            }

        wait_until(
            lambda: (
                all(name in states() for name in expected)
                and states().get("rl_model_1_steps.zip", ("",))[0] == "kept"
            ),
            90,
            "every file recorded",
        )
        found = states()
        for name, (state, text) in expected.items():
            assert found[name][0] == state, (name, found[name])
            assert text in found[name][1] and "\n" not in found[name][1], (name, found[name])
        jailed = run / ".ckptd" / "quarantine"
        refused = sorted(name for name, (state, _) in expected.items() if state == "refused")
        assert sorted(p.name for p in jailed.iterdir() if not p.name.endswith(".json")) == refused
        assert not any((run / name).exists() for name in refused)
        # Still serving: a checkpoint written now is converted.
        (run / "rl_model_9_steps.pkl").write_bytes(genuine)
        wait_until(
            lambda: states().get("rl_model_9_steps.zip", ("",))[0] == "kept", 60, "a later file"
        )
        log = daemon.log_text()
        assert "Traceback" not in log and "worker failed" not in log, log[-3000:]
        assert daemon.stop(timeout=10) == 0
    finally:
        daemon.kill()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("(0, " + "9" * 5000 + ")", "npy header holds a number of 5000 digits"),
        ("(" + ", ".join(["1"] * 33) + ")", "array of 33 dimensions (numpy supports at most 32)"),
        (f"(0, {10**30})", "npy header holds a number of 31 digits"),
        (f"(0, {2**62}, 4)", "overflows numpy's index type"),
    ],
)
def test_npy_headers_with_impossible_shapes_are_one_line_errors(shape: str, message: str) -> None:
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }"
    body = text.encode("latin1") + b"\n"
    header = b"\x93NUMPY\x02\x00" + len(body).to_bytes(4, "little") + body
    with pytest.raises(FormatError) as caught:
        parse_npy_header(header, source="w.npy")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["nested", "nested-tuple-key"])
def test_values_at_the_hard_depth_cap_convert_without_hitting_the_recursion_limit(
    kind: str,
) -> None:
    """The walkers (JSON, rendering, re-emitting) recurse: at max_depth's ceiling they still fit
    in Python's recursion limit, with pytest's own frames below them."""
    limits = Limits(max_depth=HARD_MAX_DEPTH)
    checkpoint = read_legacy(
        gen.legacy_pickle(kind, HARD_MAX_DEPTH - 10), source="deep.pkl", limits=limits
    )
    value = checkpoint.data["x"]
    if kind == "nested":
        depth = 0
        while isinstance(value, list) and value:
            value, depth = value[0], depth + 1
        assert depth == HARD_MAX_DEPTH - 11  # the innermost list is empty
    else:
        assert value.type_name == "<class 'dict'>"  # type: ignore[union-attr]
        (key,) = value.extras  # type: ignore[union-attr]
        assert key == "(" * (HARD_MAX_DEPTH - 9) + ")" + ",)" * (HARD_MAX_DEPTH - 10)
        reread = build_graph(parse_ops(value.pickled)).root  # type: ignore[union-attr]
        assert measure(reread, limits).depth == HARD_MAX_DEPTH - 9  # dict -> 191 tuples: 191 edges


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_json_bomb_in_data_is_refused_before_parsing(tmp_path: Path) -> None:
    """9 MiB of "[]," would parse into over 200 MiB of lists (deflated below the 1000:1 ratio
    check, that is a few hundred kilobytes; stored here to keep the test simple)."""
    import zipfile

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("data", '{"x": [' + "[]," * (3 * 1024**2) + "[]]}")
        archive.writestr("parameters", b"")
        archive.writestr("parameter_list", "[]")
    result = ckptd("verify", path)
    assert_one_line_failure(
        result, path, "data: 9437195 bytes exceeds limits.max_memory (268435456) / 32"
    )
