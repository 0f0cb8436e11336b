"""The symbolic stack machine and the allowlist policy on hand-made and genuine streams."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from ckptd.errors import FormatError, UnsafeCheckpoint
from ckptd.pickles.allowlist import lookup
from ckptd.pickles.graph import build_graph
from ckptd.pickles.graph_check import check_graph, check_pickle_bytes
from ckptd.pickles.nodes import Call, Const, DictNode, Global, ListNode, TupleNode, reachable
from ckptd.pickles.ops import parse_ops


def graph_of(blob: bytes, **limits: int):  # type: ignore[no-untyped-def]
    return build_graph(parse_ops(blob), source="g.pkl", **limits)


def test_memo_is_modelled_by_value_like_the_c_vm() -> None:
    # PUT 5 then MEMOIZE: the C VM stores at memo_len (1 filled slot), not at 6.
    blob = b"\x80\x04\x8c\x01aq\x05\x8c\x01b\x94\x86h\x05h\x01\x86\x86."
    root = graph_of(blob).root
    assert isinstance(root, TupleNode)
    first, second = root.items
    assert isinstance(first, TupleNode) and isinstance(second, TupleNode)
    assert second.items[0] is first.items[0] and second.items[1] is first.items[1]
    assert [item.value for item in first.items if isinstance(item, Const)] == ["a", "b"]
    assert pickle.loads(blob) == (("a", "b"), ("a", "b"))


def test_shared_references_and_cycles_are_identity() -> None:
    shared = [1]
    outer: list[object] = [shared, shared]
    outer.append(outer)
    root = graph_of(pickle.dumps(outer, protocol=4)).root
    assert isinstance(root, ListNode)
    assert root.items[0] is root.items[1]
    assert root.items[2] is root
    assert len(list(reachable(root))) == 3


def test_pop_right_after_mark_discards_the_mark() -> None:
    assert isinstance(graph_of(b"\x80\x04(0N.").root, Const)


def test_cloudpickle_state_setter_is_attached_to_its_function() -> None:
    scale = 3
    graph = graph_of(cloudpickle.dumps(lambda x: x * scale, protocol=5))
    root = graph.root
    assert isinstance(root, Call) and root.func_is("cloudpickle.cloudpickle", "_make_function")
    assert len(root.state_calls) == 1
    assert root.state_calls[0].func_is("cloudpickle.cloudpickle", "_function_setstate")
    report = check_graph(graph)
    assert report.carries_code
    assert "cloudpickle.cloudpickle._function_setstate" in report.globals


def test_discarding_an_ordinary_call_is_refused() -> None:
    blob = b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R0N."
    with pytest.raises(UnsafeCheckpoint, match="discarded with POP") as info:
        graph_of(blob)
    assert info.value.opcode == "POP"
    assert info.value.offset == blob.index(b"0N.")


def test_unreachable_nodes_are_still_checked() -> None:
    # {'k': posix.system('x')} is built, then the dict is popped: the call is still judged.
    blob = b"\x80\x04}\x8c\x01k\x8c\x05posix\x8c\x06system\x93\x8c\x01x\x85Rs0N."
    graph = graph_of(blob)
    assert isinstance(graph.root, Const)
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system is not on the allowlist"):
        check_graph(graph)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x80\x04\x8c\x01a\x8c\x01bb.", "BUILD on a Const"),
        (b"\x80\x04\x8c\x01a]\x94\x8c\x01k\x8c\x01vs.", "SETITEM on a List"),
        (
            b"\x80\x04}\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R\x8c\x01vs.",
            r"Call used as a dict key",
        ),
        (b"\x80\x04}]Ns.", "a ListNode used as a dict key"),
        (b"\x80\x04\x8f(]\x90.", "a ListNode used as a dict key or set item"),
        (b"\x80\x04(]\x91.", "a ListNode used as a dict key or set item"),
        (b"\x80\x04(\x91(N\x90.", r"ADDITEMS on a SetNode \(only sets\)"),
        (b"\x80\x04U\x02os.", "SHORT_BINSTRING is never written by a Python 3 pickler"),
    ],
)
def test_structural_refusals(blob: bytes, message: str) -> None:
    with pytest.raises(UnsafeCheckpoint, match=message):
        graph_of(blob)


def test_limits() -> None:
    with pytest.raises(UnsafeCheckpoint, match="MARK nesting deeper than 10"):
        graph_of(b"\x80\x04" + b"(" * 11 + b"N" + b"t" * 11 + b".", max_marks=10)
    with pytest.raises(UnsafeCheckpoint, match="memo index 10 beyond the limit of 10"):
        graph_of(b"\x80\x04Nq\x0a.", max_memo=10)
    with pytest.raises(FormatError, match="odd number of items for SETITEMS"):
        graph_of(b"\x80\x04}(Nu.")


def test_protocol_2_names_are_mapped_before_they_are_judged() -> None:
    graph = graph_of(b"\x80\x02c__builtin__\nbytes\n)R.")
    root = graph.root
    assert isinstance(root, Call) and isinstance(root.func, Global)
    assert (root.func.module, root.func.name) == ("builtins", "bytes")
    assert check_graph(graph).globals == ("builtins.bytes",)
    # The same spelling under protocol 4 is not mapped by the VM, so it is not allowed.
    with pytest.raises(UnsafeCheckpoint, match=r"__builtin__\.bytes"):
        check_pickle_bytes(b"\x80\x04c__builtin__\nbytes\n)R.", source="p4")


def test_allowlist_lookup_is_exact() -> None:
    assert lookup("collections", "OrderedDict") is not None
    assert lookup("collections", "OrderedDict.fromkeys") is None
    assert lookup("gym.spaces.box", "Box") is not None
    assert lookup("gym.spaces.box", "np") is None
    assert lookup("stable_baselines.common.policies", "MlpPolicy") is not None
    assert lookup("stable_baselines_evil", "x") is None
    assert lookup("numpy", "load") is None
    assert lookup("tensorflow.python.ops.math_ops", "tanh") is not None
    assert lookup("tensorflow.python.ops.io_ops", "write_file") is None


def test_class_state_hooks_are_refused() -> None:
    """A by-value class may not define __init_subclass__ as a plain function either."""

    class Base:
        pass

    blob = cloudpickle.dumps(Base, protocol=4)
    graph = graph_of(blob)
    root = graph.root
    assert isinstance(root, Call) and root.state_calls
    state = root.state_calls[0].args.items[1]
    assert isinstance(state, TupleNode) and isinstance(state.items[0], DictNode)
    check_graph(graph)  # the plain class passes
    state.items[0].items.append((Const("__init_subclass__", 0), Const(None, 0)))
    with pytest.raises(UnsafeCheckpoint, match="class state defines __init_subclass__"):
        check_graph(graph)
