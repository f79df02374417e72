"""`sam-mmseg export`: a checkpoint to a static-shape ONNX file, fp32 or fp16.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). It gives a clean
static graph: constants folded, no Shape/Gather arithmetic left from `chunk`/`view`, native
`LayerNormalization` at opset 18. The TorchScript exporter leaves shape arithmetic in the graph
that TensorRT then has to fold itself.

fp16: the fp32 graph is converted here, not by running a half model through the exporter, so
precision is written into the graph: every float op runs in fp16 except LayerNorm, softmax,
reductions, pow/sqrt/exp/log and argmax/top-k, which keep fp32 inputs through explicit Cast
nodes. A strongly typed TensorRT network (TensorRT 10 and later) builds such a graph as it
is, with no precision flags, and ONNX Runtime runs it anywhere. Inputs and outputs stay
float32 so every backend keeps the same interface.

Metadata (`sam_mmseg.*` entries, JSON values) records the class table, modality order, input
size, normalization, precision and model hash, so a node can configure itself from the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sam_mmseg_ros.contracts import ENGINE_INPUTS, IMAGENET_MEAN, IMAGENET_STD, MODALITIES
from sam_mmseg_ros.engine.base import contract_outputs
from sam_mmseg_ros.engine.exporter_output import exporter_output_at_debug

LOG = logging.getLogger(__name__)

OPSET = 18
METADATA_PREFIX = "sam_mmseg."
PRECISIONS = ("fp32", "fp16")

FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "CumSum",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos",
    "ArgMax", "ArgMin", "TopK",
})
"""Ops kept in fp32 in an fp16 graph: normalization statistics, exponentials and reductions
overflow or lose the small differences that decide a label in fp16; sin/cos of large arguments
lose their phase."""

NORMALIZATION = {
    "rgb": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "depth": "scaled to [0, 1]",
    "event": "scaled to [0, 1]",
    "lidar": "scaled to [0, 1]",
}


# --------------------------------------------------------------------------- metadata


def write_metadata(model: onnx.ModelProto, metadata: dict) -> onnx.ModelProto:
    """Replace the `sam_mmseg.*` metadata entries with `metadata` (values JSON-encoded)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key = METADATA_PREFIX + key
        entry.value = json.dumps(value, sort_keys=True)
    return model


def decode_metadata(props: dict[str, str]) -> dict:
    """`sam_mmseg.*` entries of a key/value map (onnx or onnxruntime) back to Python values."""
    return {k[len(METADATA_PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(METADATA_PREFIX)}


def read_metadata(path: str | os.PathLike) -> dict:
    """The `sam_mmseg.*` metadata of an ONNX file (weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props})


# --------------------------------------------------------------------------- graph inspection


def largest_intermediates(model: onnx.ModelProto, count: int = 5) -> list[tuple[str, str, int]]:
    """(tensor, producing op type, bytes) of the `count` largest tensors computed inside the
    graph, from ONNX shape inference: what an engine must hold at once at least, whatever
    it fuses. Weights and graph inputs are not counted."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    producer = {out: node.op_type for node in inferred.graph.node for out in node.output}
    sizes = []
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if info.name not in producer or None in dims:
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        sizes.append((info.name, producer[info.name], int(np.prod(dims, dtype=np.int64)) * itemsize))
    return sorted(sizes, key=lambda entry: -entry[2])[:count]


# --------------------------------------------------------------------------- fp16 conversion


def _float_type_groups(node: onnx.NodeProto, opset: int) -> tuple[dict[str, list[tuple[str, int]]], set[str]]:
    """Map each type constraint of `node` that admits fp16 to its (tensor name, is_output) members.

    Inputs that are typed by a fixed type (Resize `scales` is always float32) or by a
    constraint without fp16 are left out, so they are never cast.
    """
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    fp16_capable = {c.type_param_str for c in schema.type_constraints if "tensor(float16)" in c.allowed_type_strs}
    groups: dict[str, list[tuple[str, int]]] = {}
    output_groups: set[str] = set()
    for names, formals, is_output in ((node.input, schema.inputs, 0), (node.output, schema.outputs, 1)):
        for i, name in enumerate(names):
            if not name or not formals:
                continue
            formal = formals[min(i, len(formals) - 1)]
            if formal.type_str in fp16_capable:
                groups.setdefault(formal.type_str, []).append((name, is_output))
                if is_output:
                    output_groups.add(formal.type_str)
    return groups, output_groups


def convert_to_fp16(model: onnx.ModelProto, fp32_ops: frozenset[str] = FP32_OPS) -> onnx.ModelProto:
    """An fp16 copy of an fp32 graph with fp32 islands for `fp32_ops` and float32 I/O.

    Per node and per type constraint: ops in `fp32_ops` get float32 inputs; other ops whose
    float output is tied to their inputs' type compute in fp16; ops whose float output is not
    tied to an input (Cast, ConstantOfShape) keep producing float32. Wherever a tensor's type
    differs from what its consumer wants, a Cast is inserted (initializers are converted once
    instead). Shape inference in strict mode checks the result.
    """
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if any(a.type == onnx.AttributeProto.GRAPH or a.graphs for n in graph.node for a in n.attribute):
        raise ValueError("fp16 conversion does not handle control-flow subgraphs (If/Loop/Scan)")

    elem_type: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        elem_type[vi.name] = vi.type.tensor_type.elem_type
    initializers = {init.name: init for init in graph.initializer}
    for name, init in initializers.items():
        elem_type[name] = init.data_type

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    converted: dict[tuple[str, int], str] = {}
    new_initializers: list[onnx.TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []

    def as_type(name: str, target: int) -> str:
        """Name of `name` converted to `target` (an fp16 initializer copy or a Cast output)."""
        if (name, target) in converted:
            return converted[(name, target)]
        suffix = "fp16" if target == TensorProto.FLOAT16 else "fp32"
        new_name = f"{name}__{suffix}"
        if name in initializers:
            array = numpy_helper.to_array(initializers[name])
            new_initializers.append(numpy_helper.from_array(
                array.astype(np.float16 if target == TensorProto.FLOAT16 else np.float32), new_name))
        else:
            new_nodes.append(helper.make_node("Cast", [name], [new_name], to=target, name=f"{new_name}__cast"))
        elem_type[new_name] = target
        converted[(name, target)] = new_name
        return new_name

    for node in graph.node:
        groups, output_groups = _float_type_groups(node, opset)
        rename: dict[str, str] = {}
        for type_str, members in groups.items():
            inputs = [name for name, is_out in members if not is_out and elem_type.get(name) in floats]
            outputs = [name for name, is_out in members if is_out and elem_type.get(name) in floats]
            if not inputs:
                continue  # float produced from nothing float (Cast, ConstantOfShape): stays as it is
            if node.op_type in fp32_ops:
                want = TensorProto.FLOAT
            elif type_str in output_groups:
                want = TensorProto.FLOAT16
            else:  # compares/shape queries: fp16 only if everything arriving is already fp16
                arriving = {elem_type[n] for n in inputs}
                want = TensorProto.FLOAT16 if arriving == {TensorProto.FLOAT16} else TensorProto.FLOAT
            for name in inputs:
                if elem_type[name] != want:
                    rename[name] = as_type(name, want)
            for name in outputs:
                elem_type[name] = want
        if rename:
            node.input[:] = [rename.get(n, n) for n in node.input]
        new_nodes.append(node)

    # Graph outputs keep float32: cast back where the producer now makes fp16.
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT and elem_type.get(out.name) == TensorProto.FLOAT16:
            internal = f"{out.name}__fp16"
            for node in new_nodes:
                node.input[:] = [internal if n == out.name else n for n in node.input]
                node.output[:] = [internal if n == out.name else n for n in node.output]
            new_nodes.append(helper.make_node("Cast", [internal], [out.name], to=TensorProto.FLOAT,
                                              name=f"{out.name}__cast"))

    used = {n for node in new_nodes for n in node.input}
    all_inits = [i for i in graph.initializer if i.name in used] + [i for i in new_initializers if i.name in used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(all_inits)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


# --------------------------------------------------------------------------- export


def export_model(model, output: str | os.PathLike, *, input_size: tuple[int, int], metadata: dict,
                 precision: str = "fp32", opset: int = OPSET) -> Path:
    """Export a MoE-LoRA SAM to `output` (static [1, M, 3, H, W], H, W = `input_size`), with the
    contract outputs of its tasks (`depth` too for a depth model).

    `metadata` is the backend metadata (classes, modalities, trained, model_hash...) to embed.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if opset < 17:
        raise ValueError("opset must be >= 17 (native LayerNormalization)")
    num_modalities = len(metadata.get("modalities", MODALITIES))
    height, width = (int(v) for v in input_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, num_modalities, 3, height, width, generator=generator)
    modality_mask = torch.ones(1, num_modalities)
    model = model.eval().float().cpu()
    outputs = contract_outputs(model.output_names)
    with torch.no_grad(), exporter_output_at_debug():
        model.prepare_export((height, width))
        program = torch.onnx.export(
            model, (images, modality_mask), None, dynamo=True, optimize=True, opset_version=opset,
            input_names=list(ENGINE_INPUTS), output_names=list(outputs), external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    _check_io(proto, num_modalities, height, width, outputs)
    full_metadata = {
        **metadata,
        "input_size": [height, width],
        "modalities": list(metadata.get("modalities", MODALITIES)),
        "normalization": NORMALIZATION,
        "precision": "fp32",
        "opset": opset,
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
    }
    return save_onnx(proto, output, metadata=full_metadata, precision=precision)


def convert_file_to_fp16(source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """fp16 variant of an exported fp32 file, metadata carried over (no second export)."""
    metadata = read_metadata(source)
    if metadata.get("precision") != "fp32":
        raise ValueError(f"{source} is not an fp32 export (precision {metadata.get('precision')!r})")
    return save_onnx(onnx.load(str(source)), output, metadata=metadata, precision="fp16")


def save_onnx(proto: onnx.ModelProto, output: str | os.PathLike, *, metadata: dict, precision: str) -> Path:
    """Convert an fp32 graph to `precision`, embed `metadata`, run the full ONNX checker and
    write the file atomically (a half-written model must never be picked up from a cache)."""
    if precision == "fp16":
        proto = convert_to_fp16(proto)
    metadata = {**metadata, "precision": precision}
    write_metadata(proto, metadata)
    proto.producer_name = "sam_mmseg_ros"
    onnx.checker.check_model(proto, full_check=True)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, output)
    LOG.info("wrote %s (%s, input %s, opset %s, %.1f MB)", output, precision, metadata.get("input_size"),
             metadata.get("opset"), output.stat().st_size / 1e6)
    return output


def _check_io(proto: onnx.ModelProto, num_modalities: int, height: int, width: int,
              outputs: tuple[str, ...]) -> None:
    """The exported graph must match the engine contract exactly (names, dtypes, static shapes)."""
    from sam_mmseg_ros.engine.onnx_check import contract_problems

    sizes, problems = contract_problems(proto.graph)
    if sizes != (num_modalities, height, width):
        problems.append(f"sizes (M, H, W) are {sizes}, expected {(num_modalities, height, width)}")
    if [o.name for o in proto.graph.output] != list(outputs):
        problems.append(f"outputs are {[o.name for o in proto.graph.output]}, expected {list(outputs)}")
    if problems:
        raise RuntimeError("exported graph does not match the engine contract: " + "; ".join(problems))


def export_checkpoint(checkpoint: str | os.PathLike | None, output: str | os.PathLike, *, precision: str = "fp32",
                      input_size: tuple[int, int] | None = None, opset: int = OPSET,
                      tasks: tuple[str, ...] | None = None) -> Path:
    """Load a checkpoint (None: the shipped default, else a random untrained tiny model) and
    export it with its metadata; `tasks` keeps only those of the model's tasks (None: all)."""
    from sam_mmseg_ros.engine.torch_backend import TorchBackend

    backend = TorchBackend.from_checkpoint(checkpoint, "cpu", tasks=tasks)
    size = tuple(input_size) if input_size else tuple(backend.metadata["input_size"])
    metadata = {**backend.metadata, "input_size": list(size)}
    return export_model(backend.model, output, input_size=size, metadata=metadata, precision=precision, opset=opset)


def cached_export(checkpoint: str | os.PathLike | None, cache_dir: str | os.PathLike, *, precision: str,
                  input_size: tuple[int, int] | None = None, tasks: tuple[str, ...] | None = None) -> Path:
    """Export once per (checkpoint content, precision, size, tasks kept) into `<cache_dir>/onnx/`
    and reuse it.

    The key is the checkpoint file's sha256 (for no checkpoint, the default model's hash), so a
    checkpoint replaced in place is noticed. fp16 is derived from the cached fp32 export.
    """
    from sam_mmseg_ros.engine.engine_cache import file_sha256
    from sam_mmseg_ros.model.checkpoint import default_checkpoint_path

    source = checkpoint if checkpoint is not None else default_checkpoint_path()
    if source is not None:
        identity = file_sha256(source)
    else:  # no shipped model: the seeded untrained one, identified by its weights
        from sam_mmseg_ros.engine.torch_backend import TorchBackend

        identity = TorchBackend.from_checkpoint(None, "cpu").metadata["model_hash"]
    size = "x".join(str(int(v)) for v in input_size) if input_size else "native"
    kept = "" if tasks is None else "-" + "+".join(tasks)
    path = Path(cache_dir) / "onnx" / f"model-{identity[:16]}-{precision}-{size}{kept}.onnx"
    if _reusable(path):
        return path
    if precision == "fp16":
        fp32 = cached_export(checkpoint, cache_dir, precision="fp32", input_size=input_size, tasks=tasks)
        return convert_file_to_fp16(fp32, path)
    LOG.info("exporting %s to ONNX (%s), once for this checkpoint", checkpoint or "the default model", precision)
    return export_checkpoint(checkpoint, path, precision=precision, input_size=input_size, tasks=tasks)


def cached_fp16(fp32_path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The fp16 variant of an fp32 ONNX file, converted once into `<cache_dir>/onnx/` (keyed by the
    file's sha256) and reused."""
    from sam_mmseg_ros.engine.engine_cache import file_sha256

    fp32_path = Path(fp32_path)
    path = Path(cache_dir) / "onnx" / f"{fp32_path.stem}-{file_sha256(fp32_path)[:16]}-fp16.onnx"
    if _reusable(path):
        return path
    LOG.info("converting %s to fp16, once for this file", fp32_path)
    return convert_file_to_fp16(fp32_path, path)


def _reusable(path: Path) -> bool:
    """A cached ONNX file that exists and passes the checker (else it is written again)."""
    if not path.is_file():
        return False
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError) as exc:
        LOG.warning("cached ONNX %s is unusable (%s); writing it again", path, exc)
        return False
    LOG.info("using cached ONNX %s", path)
    return True


# --------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="model checkpoint (default: the shipped model, else a random untrained tiny model)")
    parser.add_argument("--output", "-o", required=True, help="ONNX file to write")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp16 keeps LayerNorm/softmax/reductions in fp32 inside the graph")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="static input size (default: the model's)")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (>= 17)")


def run(args: argparse.Namespace) -> int:
    path = export_checkpoint(args.checkpoint, args.output, precision=args.precision,
                             input_size=args.input_size, opset=args.opset)
    meta = read_metadata(path)
    print(f"wrote {path}: {meta['precision']}, input {meta['input_size']}, modalities {meta['modalities']}, "
          f"{len(meta.get('classes', []))} classes, model {str(meta.get('model_hash', '?'))[:12]}"
          f"{'' if meta.get('trained', True) else ' (UNTRAINED)'}")
    return 0
