"""What an ONNX file holds, read before onnxruntime sees it: tensors that point outside the file.

A ``TensorProto`` may keep its data in another file (``data_location: EXTERNAL`` and an
``external_data`` location). onnxruntime resolves such a location against the process's
current directory when the session is created from bytes, as the server does: a crafted
``model.onnx`` whose initializer names ``.env`` was served that file's bytes as probabilities
(issue 20). The kit's own models never have external data, so any is refused.

The file is parsed with protobuf (a dependency of onnxruntime; the ``onnx`` package is not in
the lean image) against the few messages of ``onnx.proto`` on the way to a tensor: every
other field is left unparsed. Every place a tensor can be is walked: a graph's initializers
and sparse initializers, the tensors, sparse tensors and subgraphs (``If``, ``Loop``, ``Scan``
bodies) in node attributes, at any depth, in the model's functions (their nodes and attribute
defaults) and its training graphs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator

#: The messages of onnx.proto (proto2) that lead to a tensor, with only those fields:
#: message -> [(field, number, type or message, repeated)]
_SCHEMA: dict[str, list[tuple[str, int, str, bool]]] = {
    "ModelProto": [("graph", 7, "GraphProto", False), ("training_info", 20, "TrainingInfoProto", True),
                   ("functions", 25, "FunctionProto", True)],
    "GraphProto": [("node", 1, "NodeProto", True), ("initializer", 5, "TensorProto", True),
                   ("sparse_initializer", 15, "SparseTensorProto", True)],
    "NodeProto": [("attribute", 5, "AttributeProto", True)],
    "AttributeProto": [("t", 5, "TensorProto", False), ("g", 6, "GraphProto", False),
                       ("tensors", 10, "TensorProto", True), ("graphs", 11, "GraphProto", True),
                       ("sparse_tensor", 22, "SparseTensorProto", False),
                       ("sparse_tensors", 23, "SparseTensorProto", True)],
    "TensorProto": [("name", 8, "bytes", False), ("external_data", 13, "bytes", True),
                    ("data_location", 14, "int32", False)],
    "SparseTensorProto": [("values", 1, "TensorProto", False), ("indices", 2, "TensorProto", False)],
    "TrainingInfoProto": [("initialization", 1, "GraphProto", False), ("algorithm", 2, "GraphProto", False)],
    "FunctionProto": [("node", 7, "NodeProto", True), ("attribute_proto", 11, "AttributeProto", True)],
}
_PACKAGE = "mlops_kit_onnx_subset"


@lru_cache(maxsize=1)
def _model_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    scalar = {"bytes": field.TYPE_BYTES, "int32": field.TYPE_INT32}
    file = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2")
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, repeated in fields:
            entry = message.field.add(name=field_name, number=number,
                                      label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)
            if kind in scalar:
                entry.type = scalar[kind]
            else:
                entry.type, entry.type_name = field.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


def external_tensors(model: bytes) -> list[str]:
    """Where each tensor that keeps its data outside the file is (``graph.initializer[3] 'w'``);
    empty for a self-contained model. ValueError when the bytes are no ONNX model."""
    from google.protobuf.message import DecodeError

    parsed = _model_class()()
    try:
        parsed.ParseFromString(model)
    except (DecodeError, RecursionError) as exc:
        raise ValueError(f"not an ONNX model ({exc})") from None
    found = []
    for where, tensor in _tensors(parsed):
        if tensor.data_location != 0 or len(tensor.external_data):
            found.append(f"{where} {tensor.name.decode('utf-8', 'replace')[:60]!r}")
    return found


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto of the model with its path (iteratively: subgraphs nest)."""
    stack: list[tuple[str, Any]] = [("graph", model.graph)]
    stack += [(f"training_info[{i}].{part}", getattr(info, part)) for i, info in enumerate(model.training_info)
              for part in ("initialization", "algorithm")]
    attributes: list[tuple[str, Any]] = []
    for i, function in enumerate(model.functions):
        attributes += [(f"functions[{i}].attribute_proto[{j}]", a) for j, a in enumerate(function.attribute_proto)]
        stack += [(f"functions[{i}]", _NodesOnly(function.node))]
    while stack or attributes:
        if attributes:
            where, attribute = attributes.pop()
            if attribute.HasField("t"):
                yield f"{where}.t", attribute.t
            yield from ((f"{where}.tensors[{k}]", t) for k, t in enumerate(attribute.tensors))
            sparse = ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []) + list(
                attribute.sparse_tensors)
            for k, s in enumerate(sparse):
                yield f"{where}.sparse[{k}].values", s.values
                yield f"{where}.sparse[{k}].indices", s.indices
            if attribute.HasField("g"):
                stack.append((f"{where}.g", attribute.g))
            stack += [(f"{where}.graphs[{k}]", g) for k, g in enumerate(attribute.graphs)]
            continue
        where, graph = stack.pop()
        if not isinstance(graph, _NodesOnly):
            yield from ((f"{where}.initializer[{k}]", t) for k, t in enumerate(graph.initializer))
            for k, s in enumerate(graph.sparse_initializer):
                yield f"{where}.sparse_initializer[{k}].values", s.values
                yield f"{where}.sparse_initializer[{k}].indices", s.indices
        for k, node in enumerate(graph.node):
            attributes += [(f"{where}.node[{k}].attribute[{j}]", a) for j, a in enumerate(node.attribute)]


class _NodesOnly:
    """A function's nodes, walked as a graph without initializers."""

    def __init__(self, node: Any):
        self.node = node
