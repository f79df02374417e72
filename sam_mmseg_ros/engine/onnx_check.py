"""ONNX files from outside, checked before ONNX Runtime or TensorRT parses them.

An ONNX file is a program with data: its external-data entries name files that the runtime
opens and reads, and its input and output shapes size the buffers the engine allocates. So a
file is used only when
- it parses and passes ONNX's checker (`onnx.checker.check_model` on the path, which also sees
  external data);
- every external-data location is a relative path to a regular file inside the model's own
  folder (no `../../etc/passwd`, no absolute path, no symlink out), and each tensor's declared
  bytes lie inside that file and match the tensor's shape;
- its inputs and outputs follow the engine contract of DESIGN.md §3: names, dtypes, static
  shapes, M within the modality count and sides within MAX_INPUT_SIDE.
Current onnx and onnxruntime releases refuse escaping locations themselves; this check does not
depend on which release, or which TensorRT parser, a vehicle has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto

from sam_mmseg_ros.contracts import ENGINE_INPUTS, ENGINE_OUTPUTS, MODALITIES, BadFileError

MAX_INPUT_SIDE = 4096
"""Largest input height or width accepted: four times the official models' 1024."""

_FLOAT, _INT32 = TensorProto.FLOAT, TensorProto.INT32


class OnnxFileError(BadFileError):
    """An ONNX file that must not be given to a runtime; the message says why."""


def _contract_spec(m: int, h: int, w: int) -> tuple[dict[str, tuple[int, list[int]]], dict[str, tuple[int, list[int]]]]:
    """(required, optional) tensors of the engine contract for M modalities at HxW: name ->
    (ONNX element type, shape). Inputs and the first outputs are required, in ENGINE_* order."""
    required = {
        "images": (_FLOAT, [1, m, 3, h, w]),
        "modality_mask": (_FLOAT, [1, m]),
        "labels": (_INT32, [1, h, w]),
        "confidence": (_FLOAT, [1, h, w]),
        "router_weights": (_FLOAT, [1, m]),
    }
    optional = {"depth": (_FLOAT, [1, h, w]), "domain": (_INT32, [1]), "domain_confidence": (_FLOAT, [1])}
    return required, optional


def _signature(value_info: onnx.ValueInfoProto) -> tuple[int, list]:
    tensor = value_info.type.tensor_type
    return tensor.elem_type, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                              for d in tensor.shape.dim]


def contract_problems(graph: onnx.GraphProto) -> tuple[tuple[int, int, int] | None, list[str]]:
    """((M, H, W), []) for a graph that follows the engine contract, else (None or the sizes
    read from `images`, the problems found)."""
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: _signature(v) for v in graph.input if v.name not in initializers}
    outputs = {v.name: _signature(v) for v in graph.output}
    if list(inputs) != list(ENGINE_INPUTS) or list(outputs)[: len(ENGINE_OUTPUTS)] != list(ENGINE_OUTPUTS):
        return None, [f"it does not have the engine inputs {ENGINE_INPUTS} and outputs {ENGINE_OUTPUTS} "
                      f"(has inputs {list(inputs)[:8]}, outputs {list(outputs)[:8]}); export it with "
                      "`sam-mmseg export`"]
    _, shape = inputs["images"]
    if len(shape) != 5 or not all(isinstance(d, int) and d > 0 for d in shape):
        return None, [f"input 'images' has shape {shape[:8]}, expected static [1, M, 3, H, W]"]
    m, h, w = shape[1], shape[3], shape[4]
    problems = []
    if not 1 <= m <= len(MODALITIES):
        problems.append(f"'images' has {m} modality slots, the contract has at most {len(MODALITIES)}")
    if max(h, w) > MAX_INPUT_SIDE:
        problems.append(f"'images' is {h}x{w}, larger than {MAX_INPUT_SIDE} on a side")
    required, optional = _contract_spec(m, h, w)
    for name, signature in {**inputs, **outputs}.items():
        expected = required.get(name, optional.get(name))
        if expected is None:
            problems.append(f"output {name!r:.60} is not part of the contract")
        elif signature != expected:
            problems.append(f"{name!r} is {_describe(signature)}, expected {_describe(expected)}")
    return (m, h, w), problems


def _describe(signature: tuple[int, list]) -> str:
    elem_type, shape = signature
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        dtype = f"element type {elem_type}"
    return f"{dtype} {shape[:8]}"


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph holds: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes) -> Iterator[TensorProto]:
    for attribute in attributes:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse_tensors = list(attribute.sparse_tensors)
        if attribute.HasField("sparse_tensor"):
            sparse_tensors.append(attribute.sparse_tensor)
        for sparse in sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attribute.HasField("g"):
            yield from _tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _tensors(graph)


def _external_problems(model: onnx.ModelProto, folder: Path) -> list[str]:
    """Problems of the external-data entries: locations confined to `folder`, bytes in bounds."""
    root = folder.resolve()
    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node.attribute))
    problems = []
    for tensor in tensors:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        name = f"tensor {tensor.name!r:.60}"
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location:
            problems.append(f"{name} is external but names no file")
            continue
        if os.path.isabs(location):
            problems.append(f"{name} reads the absolute path {location!r:.120}; external data must lie in "
                            "the model's folder")
            continue
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            problems.append(f"{name} reads {location!r:.120}, which resolves to {target}, outside the model's "
                            f"folder {root}")
            continue
        if not target.is_file():
            problems.append(f"{name} reads {location!r:.120}, which is not a regular file")
            continue
        problems += _bounds_problems(tensor, name, info, target)
    return problems


def _bounds_problems(tensor: TensorProto, name: str, info: dict[str, str], target: Path) -> list[str]:
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{name} has unreadable external-data fields: {exc}"]
    size = target.stat().st_size
    expected = math.prod(tensor.dims) * itemsize
    available = size - offset
    if offset < 0 or (length is not None and length < 0) or available < (length if length is not None else 0):
        return [f"{name} declares bytes [{offset}, +{length}) of {target.name}, which has {size} bytes"]
    if expected != (length if length is not None else available):
        return [f"{name} needs {expected} bytes for shape {list(tensor.dims)[:8]}, the file entry holds "
                f"{length if length is not None else available}"]
    return []


def check_onnx_file(path: str | os.PathLike) -> tuple[int, int, int]:
    """Check an ONNX file before any runtime opens it (see the module docstring); returns the
    contract's (M, H, W). Raises FileNotFoundError, or OnnxFileError naming the file and every
    problem found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's parser of outside bytes raises several kinds
        raise OnnxFileError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {str(exc)[:300]}") from None
    problems = _external_problems(model, path.parent)
    if problems:
        raise OnnxFileError(f"{path} is refused: " + "; ".join(problems[:5]))
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise OnnxFileError(f"{path} fails the ONNX checker: {str(exc)[:500]}") from None
    sizes, problems = contract_problems(model.graph)
    if problems:
        raise OnnxFileError(f"{path} does not follow the engine contract: " + "; ".join(problems[:8]))
    return sizes
