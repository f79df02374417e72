"""`sam-mmseg build-engine`: build (only) the TensorRT engine on this machine, as Autoware's
`build_only`, so a vehicle starts with a ready engine instead of building for minutes at launch;
with `--verify`, also check it there (engine/verify.py).

    sam-mmseg build-engine --verify [--params-file vehicle.yaml]

What to build comes from the node's parameters (`--params-file`, default the shipped one), so the
engine is the one the node will look up: its checkpoint or onnx_path, input_size, precision
(fp16 by default), engine_cache_dir, engine_workspace_mib, use_cuda_graph; the options below
override them. An fp32 ONNX file is converted for fp16. Shows TensorRT's build phases as progress
bars; exits non-zero with the parser's errors when the ONNX cannot be built, and with
EXIT_VERIFY_FAILED when the engine's labels do not agree with the fp32 model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sam_mmseg_ros.contracts import BadFileError
from sam_mmseg_ros.engine.engine_cache import EngineCacheError, default_cache_dir, read_record

LOG = logging.getLogger(__name__)

EXIT_BUILD_FAILED = 1
EXIT_NO_TENSORRT = 2
EXIT_VERIFY_FAILED = 3


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from sam_mmseg_ros.engine.tensorrt_backend import DEFAULT_OPTIMIZATION_LEVEL

    parser.add_argument("--params-file", default=None,
                        help="the node's parameters YAML (default: the shipped config/sam_mmseg.yaml)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--onnx", default=None, help="ONNX file from `sam-mmseg export` (node: onnx_path)")
    source.add_argument("--checkpoint", default=None,
                        help="model to export (node: checkpoint; default: the shipped model)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="model input size for the export (node: input_size; [0, 0]: the model's own)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default=None,
                        help="engine precision (node: precision, fp16 by default)")
    parser.add_argument("--engine", default=None,
                        help="engine file to write (node: engine_path; default: in the cache, named by the key)")
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache folder (node: engine_cache_dir; default: {default_cache_dir()})")
    parser.add_argument("--workspace-mib", type=int, default=None,
                        help="builder workspace limit (node: engine_workspace_mib; default: 1/8 of the GPU "
                             "memory, at most 2048)")
    parser.add_argument("--opt-level", type=int, default=DEFAULT_OPTIMIZATION_LEVEL, choices=range(6),
                        metavar="0-5", help="builder optimization level (higher: longer build, maybe faster)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    verify = parser.add_argument_group("verification (--verify)")
    verify.add_argument("--verify", action="store_true",
                        help="run the engine against the fp32 torch model on synthetic frames and write a report")
    verify.add_argument("--frames", type=int, default=10, help="synthetic frames compared")
    verify.add_argument("--camera-size", type=int, nargs=2, metavar=("H", "W"), default=(480, 640),
                        help="synthetic camera resolution")
    verify.add_argument("--latency-runs", type=int, default=100, help="pipeline runs timed")
    verify.add_argument("--cuda-graph", action="store_true", default=None,
                        help="verify with CUDA-graph replay (node: use_cuda_graph)")
    verify.add_argument("--report", default=None,
                        help="report to write (Markdown, JSON next to it; default: next to the engine)")


def run(args: argparse.Namespace) -> int:
    from sam_mmseg_ros.engine.tensorrt_backend import EngineBuildError, TensorRTUnavailable, ensure_engine

    _fill_from_node_parameters(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    try:
        onnx_path = _onnx_for(args, cache_dir)
        path = ensure_engine(onnx_path, engine_path=args.engine, cache_dir=cache_dir, allow_build=True,
                             force=args.force, workspace_mib=args.workspace_mib, optimization_level=args.opt_level,
                             show_progress=not args.no_progress, device_index=args.device)
    except TensorRTUnavailable as exc:
        LOG.error("cannot build a TensorRT engine here: %s", exc)
        return EXIT_NO_TENSORRT
    except BadFileError:
        raise  # a file the user named is unusable: the command line says which (cli.EXIT_BAD_FILE)
    except (EngineBuildError, EngineCacheError, FileNotFoundError, ValueError) as exc:
        LOG.error("%s", exc)
        return EXIT_BUILD_FAILED
    key = read_record(path)["key"]
    print(f"engine {path}\n  for {key['gpu_name']} (sm {'.'.join(map(str, key['compute_capability']))}, "
          f"{key.get('sm_count')} SMs, {key.get('total_memory_gib')} GiB), TensorRT {key['tensorrt_version']}, "
          f"{key['precision']}, onnx sha256 {key['onnx_sha256'][:16]}")
    return verify_engine(path, onnx_path, args) if args.verify else 0


def _fill_from_node_parameters(args: argparse.Namespace) -> None:
    """Options not given on the command line take the node's values."""
    from sam_mmseg_ros.node_settings import NodeSettings

    node = NodeSettings.from_file(args.params_file).model
    if args.onnx is None and args.checkpoint is None:
        args.onnx, args.checkpoint = node.onnx_path, node.checkpoint
    if args.input_size is None or not all(args.input_size):
        args.input_size = node.input_size if args.input_size is None else None
    for name, value in (("precision", node.precision), ("engine", node.engine_path),
                        ("cache_dir", node.engine_cache_dir), ("workspace_mib", node.engine_workspace_mib),
                        ("cuda_graph", node.use_cuda_graph)):
        if getattr(args, name) is None:
            setattr(args, name, value)


def _onnx_for(args: argparse.Namespace, cache_dir: Path) -> Path:
    """The ONNX file at the requested precision: the one given (an fp32 file converted once to
    fp16), else the checkpoint's cached export."""
    from sam_mmseg_ros.engine.export import cached_export, cached_fp16, read_metadata
    from sam_mmseg_ros.engine.onnx_check import check_onnx_file

    if args.onnx is None:
        return cached_export(args.checkpoint, cache_dir, precision=args.precision, input_size=args.input_size)
    if args.input_size is not None:
        raise ValueError("--input-size applies to an export; an ONNX file has its own size")
    given = Path(args.onnx)
    check_onnx_file(given)  # before reading it, let alone converting it
    have = read_metadata(given).get("precision", "fp32")
    if have == args.precision:
        return given
    if have == "fp32":
        return cached_fp16(given, cache_dir)
    raise ValueError(f"{given} is an {have} export; for an {args.precision} engine export the checkpoint "
                     f"with --precision {args.precision}")


def verify_engine(engine_path: Path, onnx_path: Path, args: argparse.Namespace) -> int:
    """Load the engine, compare it with the fp32 torch model it was exported from, write the report."""
    from sam_mmseg_ros.engine import tensorrt_backend
    from sam_mmseg_ros.engine.export import read_metadata
    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.engine.verify import synthetic_frames, verify_backend

    metadata = read_metadata(onnx_path)
    checkpoint = args.checkpoint or metadata.get("checkpoint")
    reference = TorchBackend.from_checkpoint(checkpoint, _reference_device(), "fp32",
                                             input_size=tuple(metadata["input_size"]))
    if reference.metadata["model_hash"] != metadata.get("model_hash"):
        LOG.error("the reference model (%s) is not the one %s was exported from; pass its --checkpoint",
                  checkpoint or "the default model", onnx_path)
        return EXIT_VERIFY_FAILED
    backend = tensorrt_backend.TensorRTBackend(engine_path, use_cuda_graph=args.cuda_graph, device_index=args.device)
    try:
        report = verify_backend(backend, reference, synthetic_frames(args.frames, tuple(args.camera_size)),
                                latency_runs=args.latency_runs)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    markdown = Path(args.report) if args.report else engine_path.with_name(engine_path.name + ".report.md")
    md_path, json_path = report.write(markdown)
    print(report.to_markdown())
    print(f"report: {md_path} (and {json_path.name})")
    return 0 if report.passed else EXIT_VERIFY_FAILED


def _reference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
