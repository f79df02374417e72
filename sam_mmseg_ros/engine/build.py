"""`sam-mmseg build-engine`: build (only) the TensorRT engine for an ONNX file on this machine,
as Autoware's `build_only`, so a vehicle starts with a ready engine instead of building for
minutes at launch. Shows TensorRT's build phases as progress bars; exits non-zero with the
parser's errors when the ONNX cannot be built."""

from __future__ import annotations

import argparse
import logging

from sam_mmseg_ros.engine.engine_cache import EngineCacheError, default_cache_dir, read_record

LOG = logging.getLogger(__name__)

EXIT_BUILD_FAILED = 1
EXIT_NO_TENSORRT = 2


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from sam_mmseg_ros.engine.tensorrt_backend import DEFAULT_OPTIMIZATION_LEVEL, DEFAULT_WORKSPACE_MIB

    parser.add_argument("--onnx", required=True, help="ONNX file from `sam-mmseg export` (its precision is used)")
    parser.add_argument("--engine", default=None,
                        help="engine file to write (default: in the cache, named by the cache key)")
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default: {default_cache_dir()})")
    parser.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB, help="builder workspace limit")
    parser.add_argument("--opt-level", type=int, default=DEFAULT_OPTIMIZATION_LEVEL, choices=range(6),
                        metavar="0-5", help="builder optimization level (higher: longer build, maybe faster)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from sam_mmseg_ros.engine.tensorrt_backend import EngineBuildError, TensorRTUnavailable, ensure_engine

    try:
        path = ensure_engine(args.onnx, engine_path=args.engine, cache_dir=args.cache_dir, allow_build=True,
                             force=args.force, workspace_mib=args.workspace_mib, optimization_level=args.opt_level,
                             show_progress=not args.no_progress, device_index=args.device)
    except TensorRTUnavailable as exc:
        LOG.error("cannot build a TensorRT engine here: %s", exc)
        return EXIT_NO_TENSORRT
    except (EngineBuildError, EngineCacheError, FileNotFoundError) as exc:
        LOG.error("%s", exc)
        return EXIT_BUILD_FAILED
    key = read_record(path)["key"]
    print(f"engine {path}\n  for {key['gpu_name']} (sm {'.'.join(map(str, key['compute_capability']))}), "
          f"TensorRT {key['tensorrt_version']}, {key['precision']}, onnx sha256 {key['onnx_sha256'][:16]}")
    return 0
