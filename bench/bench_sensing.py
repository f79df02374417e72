"""Sensing benchmark: per-stage time for one frame, from ROS messages to the model input.

One 1024x1024 camera frame (rgb8 + 32FC1 depth), a 128k-point LiDAR sweep (64 beams x 2000
azimuths, 2 % NaN) and 50k events from a 1280x720 sensor, encoded at model inputs 512x512 and
1024x1024. Prints a Markdown table and writes docs/benchmarks/sensing.md.

    .venv/bin/python bench/bench_sensing.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import EventArray, ImageData, PointCloud, Stamped
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.depth import encode_depth
from sam_mmseg_ros.sensors.encodings import DELIVER
from sam_mmseg_ros.sensors.events import encode_events
from sam_mmseg_ros.sensors.lidar import encode_lidar, project_points, rasterize
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, allocate_images, preprocess
from sam_mmseg_ros.sensors.rgb import encode_rgb

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "sensing.md"
SIZES = ((512, 512), (1024, 1024))
CAMERA_SIZE = 1024
STAMP_NS = 10**18
# LiDAR (x forward, y left, z up) 0.3 m above and 0.5 m behind the camera optical frame.
T_CAMERA_LIDAR = np.array([[0, -1, 0, 0.0], [0, 0, -1, -0.3], [1, 0, 0, -0.5], [0, 0, 0, 1]], float)


def make_frame(rng: np.random.Generator):
    camera = CameraModel(CAMERA_SIZE, CAMERA_SIZE, [[700, 0, 511.5], [0, 700, 511.5], [0, 0, 1]],
                         [-0.12, 0.03, 0.0005, -0.0004, 0.0], "plumb_bob", "camera")
    rgb = rng.integers(0, 256, (CAMERA_SIZE, CAMERA_SIZE, 3), dtype=np.uint8)
    _, yn = camera.pixel_rays()
    with np.errstate(divide="ignore"):
        depth = np.where(yn > 0.02, 1.5 / np.maximum(yn, 1e-6), 25.0).astype(np.float32)
    depth[rng.random(depth.shape) < 0.02] = np.nan

    beams, azimuths = 64, 2000
    elevation = np.radians(np.linspace(-25, 15, beams))[:, None]
    azimuth = np.linspace(-np.pi, np.pi, azimuths, endpoint=False)[None, :]
    ground = np.where(elevation < -0.01, 1.8 / np.maximum(np.sin(-elevation), 1e-3), np.inf)
    r = np.minimum(ground, rng.uniform(8, 70, (beams, azimuths)))
    xyz = np.stack([r * np.cos(elevation) * np.cos(azimuth), r * np.cos(elevation) * np.sin(azimuth),
                    r * np.sin(elevation) * np.ones_like(azimuth)], axis=-1).reshape(-1, 3)
    xyz[rng.random(len(xyz)) < 0.02] = np.nan
    cloud = PointCloud(xyz.astype(np.float32), rng.uniform(0, 255, len(xyz)).astype(np.float32), "lidar")

    n = 50_000
    events = EventArray(rng.integers(0, 1280, n).astype(np.uint16), rng.integers(0, 720, n).astype(np.uint16),
                        np.sort(rng.integers(STAMP_NS - 50_000_000, STAMP_NS, n)).astype(np.int64),
                        rng.choice(np.array([-1, 1], np.int8), n), 1280, 720)
    return camera, ImageData(rgb, "rgb8"), ImageData(depth, "32FC1"), cloud, events


def timeit(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, median thread CPU) in ms over `repeats` calls after a warm-up.

    On a shared machine the wall time includes waiting for a core; the thread's CPU time does
    not (it still includes slow-downs from caches and memory bandwidth shared with others)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.thread_time() - start_cpu) * 1e3)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def python_loop_projection(cloud: PointCloud, T: np.ndarray, camera: CameraModel, size):
    """Reference: the straightforward per-point loop (transform, distort, z-buffer)."""
    h, w = size
    sx, sy = w / camera.width, h / camera.height
    k1, k2, p1, p2, k3 = camera.D[:5]
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    depth = [[0.0] * w for _ in range(h)]
    intensity_image = [[0.0] * w for _ in range(h)]
    R, t = T[:3, :3].tolist(), T[:3, 3].tolist()
    for (x, y, z), intensity in zip(cloud.xyz.tolist(), cloud.intensity.tolist(), strict=True):
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            continue
        xc = R[0][0] * x + R[0][1] * y + R[0][2] * z + t[0]
        yc = R[1][0] * x + R[1][1] * y + R[1][2] * z + t[1]
        zc = R[2][0] * x + R[2][1] * y + R[2][2] * z + t[2]
        if zc <= 0.1:
            continue
        xn, yn = xc / zc, yc / zc
        r2 = xn * xn + yn * yn
        if r2 > 4.0:
            continue
        radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
        xd = xn * radial + 2 * p1 * xn * yn + p2 * (r2 + 2 * xn * xn)
        yd = yn * radial + p1 * (r2 + 2 * yn * yn) + 2 * p2 * xn * yn
        col = math.floor((fx * xd + cx + 0.5) * sx)
        row = math.floor((fy * yd + cy + 0.5) * sy)
        if 0 <= col < w and 0 <= row < h and (depth[row][col] == 0.0 or zc < depth[row][col]):
            depth[row][col] = zc
            intensity_image[row][col] = intensity
    return depth, intensity_image


def conversion_stages(camera, rgb, depth, cloud, events, repeats):
    """Message -> numpy stages, or the reason they cannot run here."""
    try:
        from sam_mmseg_ros.ros import convert
    except ImportError as error:
        return {}, f"conversion not measured: {error}"
    rgb_msg = convert.numpy_to_image(rgb.array, "rgb8", stamp_ns=STAMP_NS, frame_id="camera")
    depth_msg = convert.numpy_to_image(depth.array, "32FC1", stamp_ns=STAMP_NS, frame_id="camera")
    cloud_msg = convert.cloud_to_pointcloud2(cloud, stamp_ns=STAMP_NS, frame_id="lidar")
    events_msg = convert.events_to_pointcloud2(events, stamp_ns=int(events.t_ns.min()), frame_id="events")
    return {
        "convert: Image rgb8 1024x1024": timeit(lambda: convert.image_to_numpy(rgb_msg), repeats),
        "convert: Image 32FC1 1024x1024": timeit(lambda: convert.image_to_numpy(depth_msg), repeats),
        "convert: PointCloud2 128k points": timeit(lambda: convert.pointcloud2_to_cloud(cloud_msg), repeats),
        "convert: events PointCloud2 50k": timeit(
            lambda: convert.pointcloud2_to_events(events_msg, events.width, events.height), repeats),
    }, ""


def assembly_stage(camera, rgb, depth, cloud, events, repeats):
    try:
        from sam_mmseg_ros.sync import FrameAssembler
    except ImportError as error:
        return {}, f"assembly not measured: {error}"
    chunks = [events.select(slice(i, i + 5000)) for i in range(0, len(events), 5000)]  # 5 ms chunks

    def assemble_one():
        assembler = FrameAssembler()
        assembler.set_camera(camera)
        assembler.add("depth", Stamped(STAMP_NS - 1_000_000, depth, "camera"))
        assembler.add("lidar", Stamped(STAMP_NS - 20_000_000, cloud, "lidar"))
        for chunk in chunks:
            assembler.add("event", Stamped(int(chunk.t_ns[-1]), chunk, "events"))
        return assembler.assemble(Stamped(STAMP_NS, rgb, "camera"))

    bundle = assemble_one()
    assert bundle.present() == ("rgb", "depth", "event", "lidar"), bundle.absent
    return {"assembly: FrameAssembler (add 12 msgs + assemble)": timeit(assemble_one, repeats)}, ""


def encoder_stages(size, camera, rgb, depth, events, projected, bundle):
    config = PreprocessConfig(input_size=size)
    deliver = PreprocessConfig(input_size=size, encodings=DELIVER)
    buffer = allocate_images(size)
    slot = np.empty((3, *size), np.float32)
    return {
        "RGB encode (area resize + normalize)": lambda: encode_rgb(rgb, size, out=slot),
        "depth encode (HHA)": lambda: encode_depth(depth, camera, size, out=slot),
        "LiDAR rasterize + encode": lambda: encode_lidar(rasterize(projected, camera, size), out=slot),
        "event frame (polarity)": lambda: encode_events(events, size, 0.05, out=slot),
        "event frame, DELIVER style (carla-dvs-v1)": lambda: encode_events(events, size, 0.05, "carla-dvs-v1",
                                                                           out=slot),
        "full preprocess (4 modalities)": lambda: preprocess(bundle, config, T_CAMERA_LIDAR, out=buffer),
        "full preprocess, DELIVER encodings": lambda: preprocess(bundle, deliver, T_CAMERA_LIDAR, out=buffer),
    }


def run(repeats: int) -> str:
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    camera, rgb, depth, cloud, events = make_frame(rng)
    rows: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    notes = []

    shared, note = conversion_stages(camera, rgb, depth, cloud, events, repeats)
    notes += [note] if note else []
    more, note = assembly_stage(camera, rgb, depth, cloud, events, repeats)
    notes += [note] if note else []
    shared.update(more)
    projection = timeit(lambda: project_points(cloud, T_CAMERA_LIDAR, camera), repeats)
    projected = project_points(cloud, T_CAMERA_LIDAR, camera)

    from sam_mmseg_ros.contracts import FrameBundle

    bundle = FrameBundle(STAMP_NS, "camera", rgb, depth, events, cloud, camera)
    for size in SIZES:
        for name, fn in encoder_stages(size, camera, rgb, depth, events, projected, bundle).items():
            rows.setdefault(name, {})[size] = timeit(fn, repeats)

    reference_size = SIZES[0]
    reference = timeit(lambda: python_loop_projection(cloud, T_CAMERA_LIDAR, camera, reference_size), 2)
    vectorized = timeit(lambda: rasterize(project_points(cloud, T_CAMERA_LIDAR, camera), camera,
                                          reference_size), repeats)
    load_after = os.getloadavg()

    def cell(v):
        return f"{v[0]:.2f} ({v[1]:.2f}) | {v[2]:.2f}"

    lines = ["| stage | 512x512: wall median (min) ms | CPU median ms "
             "| 1024x1024: wall median (min) ms | CPU median ms |", "|---|---|---|---|---|"]
    for name, value in shared.items():
        lines.append(f"| {name} | {cell(value)} | {cell(value)} |")
    lines.append(f"| LiDAR projection (project_points, camera resolution) | {cell(projection)} | "
                 f"{cell(projection)} |")
    for name, by_size in rows.items():
        lines.append(f"| {name} | {cell(by_size[SIZES[0]])} | {cell(by_size[SIZES[1]])} |")
    totals = [[sum(v[i] for v in shared.values()) + rows["full preprocess (4 modalities)"][s][i]
               for i in (0, 2)] for s in SIZES]
    lines.append(f"| **total: conversion + assembly + full preprocess** | **{totals[0][0]:.2f}** | "
                 f"**{totals[0][1]:.2f}** | **{totals[1][0]:.2f}** | **{totals[1][1]:.2f}** |")
    table = "\n".join(lines)

    speedup = reference[0] / vectorized[0]
    small = SIZES[0]
    encoders = {name: by_size[small][2] for name, by_size in rows.items() if not name.startswith("full")}
    encoders["LiDAR projection"] = projection[2]
    ranked = sorted(encoders.items(), key=lambda item: -item[1])
    dominant = ", ".join(f"{name} {cpu:.2f} ms" for name, cpu in ranked[:3])

    def verdict(value: float, target: float) -> str:
        return "met" if value <= target else "MISSED"
    text = f"""# Sensing benchmark

`.venv/bin/python bench/bench_sensing.py` on a {os.cpu_count()}-core {platform.machine()} CPU,
Python {platform.python_version()}, numpy {np.__version__}. The machine was **shared with other
engineers' jobs** while this ran (load average {load_before[0]:.1f} before, {load_after[0]:.1f}
after, on {os.cpu_count()} cores), so wall-clock medians include waiting for a core; the
minimum and the thread CPU time are closer to the cost on an idle core. {repeats} repeats per
stage after one warm-up, single-threaded.

Inputs: 1024x1024 camera (plumb_bob distortion) with rgb8 image and 32FC1 depth, a 128k-point
LiDAR sweep (64 x 2000, 2 % NaN, {len(projected)} points land in the image), 50k events from a
1280x720 sensor in a 50 ms window. Shared stages (conversion, assembly, projection) do not depend
on the model input size and appear in both columns; "full preprocess" includes projection.
A stage timed alone reruns on inputs already in the CPU caches; "full preprocess" runs the
stages one after another, as the node does, and costs more than their sum on this machine:
it is the number to compare with the target.

{table}

Targets: all stages together <= 5 ms median, LiDAR projection <= 2 ms. At 512x512: total
{totals[0][0]:.2f} ms wall median ({verdict(totals[0][0], 5.0)}), {totals[0][1]:.2f} ms CPU
({verdict(totals[0][1], 5.0)}); projection {projection[0]:.2f} ms wall ({verdict(projection[0], 2.0)}),
{projection[2]:.2f} ms CPU ({verdict(projection[2], 2.0)}). Largest encoder stages by CPU time at
512x512: {dominant}.

Per-point Python loop (transform + distortion + z-buffer at {reference_size[0]}x{reference_size[1]}):
{reference[0]:.0f} ms median wall ({reference[2]:.0f} ms CPU); vectorized project_points +
rasterize: {vectorized[0]:.2f} ms ({vectorized[2]:.2f} ms CPU); speedup {speedup:.0f}x by wall time,
{reference[2] / vectorized[2]:.0f}x by CPU time.
{"".join(f"{chr(10)}Note: {n}" for n in notes)}
"""
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the report")
    args = parser.parse_args(argv)
    text = run(args.repeats)
    print(text)
    if not args.no_write:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text)
        print(f"written to {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
