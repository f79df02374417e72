"""Small ONNX graphs that follow the engine contract (DESIGN.md §3), for tests that need a valid
file without exporting a model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def contract_model(m: int = 4, h: int = 8, w: int = 8) -> onnx.ModelProto:
    """images [1, M, 3, H, W], modality_mask [1, M] -> labels (int32), confidence, router_weights,
    with one initializer (`scale`, [H, W]) to place in external data."""
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, m, 3, h, w]),
              helper.make_tensor_value_info("modality_mask", TensorProto.FLOAT, [1, m])]
    outputs = [helper.make_tensor_value_info("labels", TensorProto.INT32, [1, h, w]),
               helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [1, h, w]),
               helper.make_tensor_value_info("router_weights", TensorProto.FLOAT, [1, m])]
    initializers = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                    numpy_helper.from_array(np.linspace(0.5, 1.5, h * w, dtype=np.float32).reshape(h, w), "scale")]
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["confidence"]),
        helper.make_node("Greater", ["confidence", "half"], ["above"]),
        helper.make_node("Cast", ["above"], ["labels"], to=TensorProto.INT32),
        helper.make_node("Softmax", ["modality_mask"], ["router_weights"], axis=1),
    ]
    initializers.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    graph = helper.make_graph(nodes, "contract", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def contract_inputs(seed: int, mask: list[float], size: int, m: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Seeded normal images [1, m, 3, size, size] with absent slots zeroed (the contract) and their
    modality_mask [1, m]."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 1.0, (1, m, 3, size, size)).astype(np.float32)
    modality_mask = np.array([mask], np.float32)
    images[:, modality_mask[0] == 0] = 0.0
    return images, modality_mask
