"""`sam-mmseg eval`: score segmentation on a rosbag2 (offline or --live) or a DELIVER folder."""

from __future__ import annotations

import logging
from pathlib import Path

from sam_mmseg_ros.eval.results import FULL, SUBSETS

log = logging.getLogger(__name__)


def configure_parser(parser) -> None:
    parser.description = ("Score segmentation on a rosbag2 (the node's own stages, offline and "
                          "deterministic, or --live against a running node) or a DELIVER folder.")
    parser.add_argument("source", help="rosbag2 (folder or .mcap) or DELIVER root folder")
    parser.add_argument("--out", default="eval_output", help="report folder")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped model)")
    parser.add_argument("--backend", default="torch", choices=["auto", "tensorrt", "onnxruntime", "torch"],
                        help="torch is the deterministic reference; auto picks as the node does")
    parser.add_argument("--device", default="cpu", help="torch device for the torch backend")
    parser.add_argument("--split", default="test", help="DELIVER split")
    parser.add_argument("--cases", default=None, help="DELIVER: comma list of cases (normal, motionblur, "
                        "overexposure, underexposure, lidarjitter, eventlowres), default all")
    parser.add_argument("--subsets", default="all",
                        help="comma list of modality subsets (" + ", ".join(SUBSETS) + ") or 'all'")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--params-file", default=None,
                        help="node parameters YAML (sync tolerances, event settings...), default the shipped one")
    from sam_mmseg_ros.topic_map import add_topic_arguments

    add_topic_arguments(parser)
    parser.add_argument("--live", action="store_true",
                        help="score a running node's published labels while replaying the bag over DDS")
    parser.add_argument("--rate", type=float, default=1.0, help="replay rate in --live mode")
    parser.add_argument("--namespace", default="/sam_mmseg", help="the node's namespace/name in --live mode")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def select_subsets(spec: str) -> dict[str, tuple[str, ...]]:
    if spec == "all":
        return SUBSETS
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SUBSETS]
    if unknown:
        raise SystemExit(f"unknown subsets {unknown}; choose from {list(SUBSETS)}")
    return {n: SUBSETS[n] for n in names}


def run(args) -> int:
    source = Path(args.source)
    if not source.exists():
        log.error("%s does not exist", source)
        return 2
    subsets = select_subsets(args.subsets)
    progress = not args.no_progress
    if args.live:
        from sam_mmseg_ros.ros.live_eval import evaluate_live

        result = evaluate_live(source, rate=args.rate, namespace=args.namespace, progress=progress)
    else:
        from sam_mmseg_ros.engine import create_backend
        from sam_mmseg_ros.eval.offline import evaluate_bag, evaluate_deliver
        from sam_mmseg_ros.node_settings import NodeSettings
        from sam_mmseg_ros.sensors.encodings import EncodingError

        # The node's precision, size and engine settings, so `--backend tensorrt` scores the engine
        # the node runs (the torch reference on CPU runs fp32 whatever the precision).
        node = NodeSettings.from_file(args.params_file).model.backend_options()
        options = {k: node[k] for k in ("precision", "input_size", "allow_build", "cache_dir", "workspace_mib",
                                        "use_cuda_graph")}
        backend = create_backend(args.backend, checkpoint=args.checkpoint,
                                 device=args.device if args.backend == "torch" else None, **options)
        from sam_mmseg_ros.eval.offline import NoCameraFrames
        from sam_mmseg_ros.topic_map import parse_topic_map

        try:
            if (source / "img").is_dir():
                cases = tuple(c.strip() for c in args.cases.split(",")) if args.cases else None
                result = evaluate_deliver(source, backend, split=args.split, subsets=subsets,
                                          progress=progress, max_frames=args.max_frames, cases=cases)
            else:
                result = evaluate_bag(source, backend, args.params_file, subsets=subsets, progress=progress,
                                      max_frames=args.max_frames, topic_map=parse_topic_map(args.topic))
        except EncodingError as exc:  # the model cannot run on this source's inputs: say why, no traceback
            log.error("%s", exc)
            return 2
        except NoCameraFrames as exc:
            log.error("%s", exc)
            return 1
    from sam_mmseg_ros.eval.report import write_report

    summary = write_report(result, args.out, title=f"Evaluation of {source.name}")
    log.info("mIoU %s: %s %%  ->  %s", FULL, summary["miou"].get(FULL), Path(args.out) / "report.md")
    return 0
