"""``_onnx_graph.external_tensors`` on models built here with ``onnx.helper`` (the mutation
target ``onnx-graph``, docs/mutation.md): a tensor in every place ONNX can keep one, each
named by its path when its data is in another file and never when it is in the model. No
model is compiled: test_onnx.py has the kit's compiled models and onnxruntime."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from mlops_kit.serving._onnx_graph import external_tensors  # noqa: E402

pytestmark = pytest.mark.security


def tensor(name: str, outside: bool, *, flag: bool = True, entries: bool = True) -> TensorProto:
    """A one-byte tensor, its data in the model or (``outside``) in ``.env``: the flag
    (``data_location``), the entries (``external_data``) or both."""
    made = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[1])
    if not outside:
        made.raw_data = b"\0"
        return made
    if flag:
        made.data_location = TensorProto.EXTERNAL
    if entries:
        entry = made.external_data.add()
        entry.key, entry.value = "location", ".env"
    return made


def sparse(name: str, outside: bool, *, in_indices: bool = False):
    values = tensor(name, outside and not in_indices)
    indices = tensor(name + "_i", outside and in_indices)
    indices.data_type = TensorProto.INT64
    return helper.make_sparse_tensor(values, indices, [1])


def graph(name: str, outside: bool, inner: str = "") -> onnx.GraphProto:
    """A graph with a tensor in each of its places; ``inner``: the names' prefix."""
    p = inner
    attribute_holder = helper.make_node("Custom", [], ["o"], domain="x")
    attribute_holder.attribute.extend([
        helper.make_attribute("t", tensor(p + "attr_t", outside)),
        helper.make_attribute("ts", [tensor(p + "attr_ts0", False), tensor(p + "attr_ts1", outside)]),
        helper.make_attribute("st", sparse(p + "attr_st", outside)),
        helper.make_attribute("sts", [sparse(p + "attr_sts0", False), sparse(p + "attr_sts1", outside, in_indices=True)]),
    ])
    return helper.make_graph([helper.make_node("Identity", ["a"], ["b"]), attribute_holder], name, [], [],
                             [tensor(p + "init0", False), tensor(p + "init1", outside)],
                             sparse_initializer=[sparse(p + "sparse0", outside)])


def model(outside: bool) -> bytes:
    main = graph("main", outside)
    subgraphs = helper.make_node("If", ["c"], ["d"], then_branch=graph("then", outside, "then_"),
                                 else_branch=graph("else", False, "else_"))
    loops = helper.make_node("Custom", [], ["e"], domain="x")
    loops.attribute.extend([helper.make_attribute("gs", [graph("g0", False, "g0_"), graph("g1", outside, "g1_")])])
    main.node.extend([subgraphs, loops])
    body = helper.make_node("Constant", [], ["out"], value=tensor("fn_node_t", outside))
    function = helper.make_function("x", "f", [], ["out"], [helper.make_node("Identity", ["z"], ["y"]), body],
                                    [helper.make_opsetid("", 19)])
    function.attribute_proto.extend([helper.make_attribute("default", tensor("fn_default", outside))])
    made = helper.make_model(main, functions=[function])
    info = made.training_info.add()
    info.initialization.CopyFrom(graph("init", False, "ti_init_"))
    info.algorithm.CopyFrom(graph("algo", outside, "ti_algo_"))
    return made.SerializeToString()


def places(graph_path: str, p: str, *, node: int = 1) -> list[str]:
    a = f"{graph_path}.node[{node}].attribute"
    return [f"{graph_path}.initializer[1] '{p}init1'", f"{graph_path}.sparse_initializer[0].values '{p}sparse0'",
            f"{a}[0].t '{p}attr_t'", f"{a}[1].tensors[1] '{p}attr_ts1'", f"{a}[2].sparse[0].values '{p}attr_st'",
            f"{a}[3].sparse[1].indices '{p}attr_sts1_i'"]


def test_every_place_a_tensor_can_be_in_another_file_is_named():
    expected = (places("graph", "") + places("graph.node[2].attribute[1].g", "then_")   # else_branch sorts first
                + places("graph.node[3].attribute[0].graphs[1]", "g1_")
                + places("training_info[0].algorithm", "ti_algo_")
                + ["functions[0].node[1].attribute[0].t 'fn_node_t'", "functions[0].attribute_proto[0].t 'fn_default'"])
    assert sorted(external_tensors(model(True))) == sorted(expected)


def test_a_model_holding_every_tensor_itself_has_none():
    assert external_tensors(model(False)) == []


@pytest.mark.parametrize("flag, entries", [(True, False), (False, True), (True, True)])
def test_the_flag_or_the_entries_alone_make_a_tensor_external(flag, entries):
    made = helper.make_model(helper.make_graph([], "g", [], [], [tensor("w", True, flag=flag, entries=entries)]))
    assert external_tensors(made.SerializeToString()) == ["graph.initializer[0] 'w'"]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1   # a negative int32 is written as ten bytes
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2]) + _varint(len(payload)) + payload


@pytest.mark.parametrize("location", [1, 2, -1])
def test_any_data_location_but_the_default_is_external(location):
    """Only 0 (DEFAULT) keeps the data in the file; any other value, those onnx does not define
    included (written here byte by byte: onnx refuses to set them), is refused rather than guessed at."""
    tensor_bytes = _field(8, b"w") + bytes([14 << 3]) + _varint(location)   # name, data_location
    model = _field(7, _field(5, tensor_bytes))                                # graph.initializer
    assert external_tensors(model) == ["graph.initializer[0] 'w'"]
    assert external_tensors(_field(7, _field(5, _field(8, b"w")))) == []
    # an external_data entry without the flag, even an empty one, is counted too
    assert external_tensors(_field(7, _field(5, _field(8, b"w") + _field(13, b"")))) == ["graph.initializer[0] 'w'"]


def test_a_long_or_undecodable_name_is_shortened():
    made = helper.make_model(helper.make_graph([], "g", [], [], [tensor("n" * 100, True)]))
    assert external_tensors(made.SerializeToString()) == [f"graph.initializer[0] '{'n' * 60}'"]
    raw = helper.make_model(helper.make_graph([], "g", [], [], [tensor("x", True)])).SerializeToString()
    assert external_tensors(raw.replace(b"\x42\x01x", b"\x42\x01\xff")) == ["graph.initializer[0] '\ufffd'"]


def test_subgraphs_nest_to_any_depth():
    inner = helper.make_graph([], "deep", [], [], [tensor("deepest", True)])
    for level in range(20):
        node = helper.make_node("If", ["c"], ["d"], then_branch=inner, else_branch=helper.make_graph([], "e", [], []))
        inner = helper.make_graph([node], f"g{level}", [], [])
    found = external_tensors(helper.make_model(inner).SerializeToString())
    assert found == ["graph" + ".node[0].attribute[1].g" * 20 + ".initializer[0] 'deepest'"]


@pytest.mark.parametrize("data", [b"\xff" * 64, b"\x3a\x05\x0a\x03"])
def test_bytes_that_are_no_model_are_a_value_error(data):
    with pytest.raises(ValueError, match="not an ONNX model"):
        external_tensors(data)
