"""`sam-mmseg demo`: the whole product in one command, on this machine, in about two minutes.

1. generate a short synthetic drive (sun, night, fog) as a rosbag2 with ground truth;
2. start the sam_mmseg node as its own process (console script, shipped parameters and Fast DDS
   profile, a random ROS_DOMAIN_ID so nothing else on the network hears it);
3. replay the bag to it over DDS and score what it publishes (`ros.live_eval`);
4. evaluate the same bag offline with the node's own stages (`eval.offline.evaluate_bag`), per
   modality subset, and check that the node and the offline run give the same labels;
5. write demo_output/: overlay mosaic, health timeline, confusion matrix, per-class IoU,
   report.md and metrics.json; stop the node cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sam_mmseg_ros.data.bags import parse_size

log = logging.getLogger("sam_mmseg_ros.demo")

CONDITIONS = ("sun", "night", "fog")
NODE_SCRIPT = Path(sys.executable).parent / "sam_mmseg_node"
NAMESPACE = "/sam_mmseg"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Generate a short synthetic bag, run the sam_mmseg node on it over DDS, evaluate "
                          "it live and offline, and write a report with figures.")
    parser.add_argument("--output", default="demo_output", help="report folder (replaced)")
    parser.add_argument("--frames", type=int, default=48, help="camera frames in total, split over the conditions")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="replay speed (the bag is 10 Hz; below 1 so a 2-core CPU keeps up without drops)")
    parser.add_argument("--size", type=parse_size, default=(256, 256),
                        help="camera size WxH (the shipped model was trained on square images)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated conditions")
    parser.add_argument("--checkpoint", default=None, help="model weights (default: the shipped model)")
    parser.add_argument("--keep-bag", action="store_true", help="keep the bag as OUTPUT/demo_bag")
    parser.add_argument("--seed", type=int, default=7)


def _step(number: int, text: str) -> None:
    log.info("[%d/5] %s", number, text)


def lidar_outage(frames: int) -> range:
    """The frames during which the demo's LiDAR sends nothing: the middle third of the drive."""
    return range(frames // 3, max(frames // 3 + 1, 2 * frames // 3))


def generate_bag(path: Path, frames: int, size: tuple[int, int], conditions: tuple[str, ...], seed: int):
    """`frames` camera frames split over `conditions`, one continuous 10 Hz timeline, with a LiDAR
    outage (`lidar_outage`): the same street and vehicle (seed) under every condition, so the
    conditions compare like with like. Returns the rig's T_camera_lidar (the node gets it as a
    parameter, the same as on /tf_static)."""
    from tqdm import tqdm

    from sam_mmseg_ros.data.bags import write_bag
    from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence

    width, height = size
    period_ns = 100_000_000
    per_condition = [frames // len(conditions) + (i < frames % len(conditions)) for i in range(len(conditions))]
    extrinsic = []

    def all_frames():
        start = SequenceConfig.start_ns
        for condition, count in zip(conditions, per_condition, strict=True):
            config = SequenceConfig(width=width, height=height, num_frames=count, condition=condition,
                                    seed=seed, rig_seed=seed, start_ns=start)
            for frame in generate_sequence(config):
                extrinsic.append(frame.T_camera_lidar)
                yield frame
            start += count * period_ns

    write_bag(tqdm(all_frames(), total=frames, desc="synthetic bag", unit="frame"), path,
                   leave_out=dict.fromkeys(lidar_outage(frames), ("lidar",)))
    return extrinsic[0]


def node_parameters(args, extrinsic) -> dict:
    """What the demo sets on top of the shipped parameter file, for the node and the offline run
    alike: the CPU reference backend (so both run the same arithmetic), the rig's event sensor
    size and LiDAR extrinsic."""
    params = {"backend": "torch", "device": "cpu", "precision": "fp32",
              "event_sensor_size": [int(v) for v in args.size],
              "T_camera_lidar.matrix": [float(v) for v in extrinsic.ravel()]}
    if args.checkpoint:
        params["checkpoint"] = str(Path(args.checkpoint).resolve())
    return params


def _ros_value(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    return str(value)


def start_node(params: dict, env: dict, log_file) -> subprocess.Popen:
    """The node through its console script with the shipped parameter file and `params` on top."""
    from sam_mmseg_ros.resources import config_file
    from sam_mmseg_ros.settings import PARAMS_NAME

    command = [str(NODE_SCRIPT), "--ros-args", "--params-file", str(config_file(PARAMS_NAME))]
    for name, value in params.items():
        command += ["-p", f"{name}:={_ros_value(value)}"]
    return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """SIGINT (rclpy shuts down cleanly), SIGKILL only when it does not exit in time."""
    if proc.poll() is not None:
        return f"had already exited with code {proc.returncode}"
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=timeout_s)
        return "shut down cleanly (SIGINT, exit code 0)" if code == 0 else f"exited with code {code} after SIGINT"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"did not stop within {timeout_s:.0f} s of SIGINT and was killed"


def demo_section(live, offline, agreement: dict, node_exit: str, elapsed_s: float, args) -> str:
    from sam_mmseg_ros.eval.results import FULL, percentiles

    live_miou = live.summary()["miou"].get(FULL)
    offline_miou = offline.summary()["miou"].get(FULL)
    outage = lidar_outage(args.frames)
    e2e = percentiles(live.timings_ms.get("end_to_end", []))
    infer = percentiles(offline.timings_ms.get("infer", []))
    rows = [
        "## What the demo did",
        "",
        f"A {len(args.conditions)}-condition synthetic drive ({', '.join(args.conditions)}; {args.frames} camera "
        f"frames at {args.size[0]}x{args.size[1]}, 10 Hz, with depth, events, LiDAR and ground truth) was "
        f"replayed at x{args.rate:g} over DDS into the `sam_mmseg` node running as its own process. The LiDAR "
        f"is silent for frames {outage.start}-{outage.stop - 1} (a staged outage): the node keeps publishing, "
        "flags the LiDAR in its health output and the router gives it no weight (health_timeline.png). "
        "The figures and tables below are what the node published; `offline/report.md` has the offline "
        "evaluation of the same bag with the node's own stages, for every modality subset.",
        "",
        "| | value |",
        "|---|---|",
        f"| mIoU, live (node's published labels) | {_fmt(live_miou)} % |",
        f"| mIoU, offline (same stages, same bag) | {_fmt(offline_miou)} % |",
        f"| live vs offline: pixels with the same label | {100 * agreement['pixel_agreement']:.3f} % "
        f"({agreement['identical_frames']} of {agreement['frames_compared']} frames identical) |",
        f"| camera frames without output (dropped by the node) | {live.dropped_frames} of {live.camera_frames} |",
        f"| end-to-end latency p50 / p95 (camera in -> labels out, DDS) | {_ms(e2e, 'p50')} / {_ms(e2e, 'p95')} ms |",
        f"| model inference p50 / p95 (offline, this CPU) | {_ms(infer, 'p50')} / {_ms(infer, 'p95')} ms |",
        f"| node shutdown | {node_exit} |",
        f"| demo wall time | {elapsed_s:.0f} s |",
    ]
    offline_summary = offline.summary()
    rows += ["", "Offline, with modalities removed (the model's robustness to sensor failure):", "",
             "| subset | " + " | ".join(offline_summary["miou"]) + " |", "|---|" + "---|" * len(offline_summary["miou"]),
             "| mIoU (%) | " + " | ".join(_fmt(v) for v in offline_summary["miou"].values()) + " |"]
    rows += ["", _gain_table(offline_summary)]
    if not live.model.get("trained"):
        rows[:0] = ["> **The model is untrained.** No trained checkpoint was found (the package ships "
                    "`sam_mmseg_ros/assets/synthetic_tiny.pt` once it is trained), so the node runs a randomly "
                    "initialised tiny model: its labels are noise and the mIoU is near zero. Everything else "
                    "(synchronization, health, DDS, latency, live/offline agreement) is real.", ""]
    return "\n".join(rows)


def _gain_table(summary: dict) -> str:
    """What the other sensors add to the camera per condition (the same street in every condition)."""
    from sam_mmseg_ros.eval.results import FULL

    per = summary["miou_per_condition"]
    if "RGB" not in per or FULL not in per:
        return ""
    conditions = list(per[FULL])
    gain = [None if per[FULL][c] is None or per["RGB"].get(c) is None else per[FULL][c] - per["RGB"][c]
            for c in conditions]
    lines = ["What depth, events and LiDAR add to the camera, per condition (offline, mIoU %; the same street "
             "in every condition):", "", "| | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions),
             "| RGB | " + " | ".join(_fmt(per["RGB"][c]) for c in conditions) + " |",
             f"| {FULL} | " + " | ".join(_fmt(per[FULL][c]) for c in conditions) + " |",
             "| gain (points) | " + " | ".join("n/a" if g is None else f"{g:+.1f}" for g in gain) + " |"]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ms(p: dict, key: str) -> str:
    return f"{p[key]:.0f}" if p else "n/a"


def run(args) -> int:
    started = time.monotonic()
    args.conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    if args.frames < len(args.conditions):
        log.error("--frames must be at least the number of conditions (%d)", len(args.conditions))
        return 2
    if not NODE_SCRIPT.exists():
        log.error("%s not found: install the package (pip install -e .) into this Python", NODE_SCRIPT)
        return 2
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="sam_mmseg_demo_"))
    try:
        return _run(args, out, out / "demo_bag" if args.keep_bag else work / "demo_bag", started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args, out: Path, bag: Path, started: float) -> int:
    import torch

    from sam_mmseg_ros.engine import create_backend
    from sam_mmseg_ros.eval.offline import evaluate_bag
    from sam_mmseg_ros.eval.report import write_report
    from sam_mmseg_ros.eval.results import label_agreement
    from sam_mmseg_ros.ros.dds import dds_environment
    from sam_mmseg_ros.ros.live_eval import evaluate_live, quiet_domain_id

    _step(1, f"generating a synthetic bag: {args.frames} frames, {', '.join(args.conditions)}, "
             f"{args.size[0]}x{args.size[1]}")
    extrinsic = generate_bag(bag, args.frames, args.size, args.conditions, args.seed)
    params = node_parameters(args, extrinsic)

    # One thread in both processes: the same float arithmetic (so the same labels), and the node
    # and this process each keep one of the two cores.
    os.environ.update(dds_environment())
    domain = quiet_domain_id(random.sample(range(1, 233), 5))
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0")
    torch.set_num_threads(1)

    _step(2, f"starting the node ({NODE_SCRIPT.name}, ROS_DOMAIN_ID={domain}, log: {out / 'node.log'})")
    with open(out / "node.log", "w") as node_log:
        node = start_node(params, env, node_log)
        try:
            _step(3, f"waiting for the node, then replaying the bag at x{args.rate:g} over DDS")
            live = evaluate_live(bag, rate=args.rate, namespace=NAMESPACE, keep_labels=True,
                                 timeout_s=60.0 + 2.0 * args.frames / args.rate)
        except (TimeoutError, RuntimeError) as exc:
            log.error("live evaluation failed: %s (see %s)", exc, out / "node.log")
            return 1
        finally:
            node_exit = stop_node(node)
    log.info("node %s; %d of %d frames scored live", node_exit, live.frames, live.camera_frames)

    _step(4, "evaluating the same bag offline with the node's stages, per modality subset")
    backend = create_backend("torch", checkpoint=params.get("checkpoint"), device="cpu", precision="fp32")
    offline = evaluate_bag(bag, backend, overrides=params, keep_labels=True)
    agreement = label_agreement(live, offline)
    live.source = offline.source = str(bag) if args.keep_bag else "synthetic demo bag (deleted; --keep-bag keeps it)"
    live.model["checkpoint"] = offline.model.get("checkpoint")

    _step(5, f"writing {out}/")
    offline_summary = write_report(offline, out / "offline", title="Offline evaluation of the demo bag",
                                   with_figures=False)
    elapsed = time.monotonic() - started
    section = demo_section(live, offline, agreement, node_exit, elapsed, args)
    live_summary = write_report(live, out, title="sam_mmseg demo", extra_sections=[section])
    metrics = {"live": live_summary, "offline": offline_summary, "live_vs_offline": agreement,
               "node_shutdown": node_exit, "wall_time_s": round(elapsed, 1),
               "settings": {"frames": args.frames, "rate": args.rate, "size": list(args.size),
                            "conditions": list(args.conditions), "node_parameters": params}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("done in %.0f s: mIoU live %s %%, offline %s %%, live/offline pixel agreement %.3f %%, "
             "%d frames dropped -> %s", elapsed, live_summary["miou"].get("RGB-D-E-L"),
             offline_summary["miou"].get("RGB-D-E-L"), 100 * agreement["pixel_agreement"],
             live.dropped_frames, out / "report.md")
    return 0
