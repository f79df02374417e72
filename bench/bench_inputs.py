"""Input decoding benchmark: what real drivers publish, on one core.

- a 1920x1080 JPEG (image_transport `compressed`, quality 90) decoded, and decoded then encoded to
  the model's RGB input (ImageNet-normalized 512x512);
- 1920x1080 YUV 4:2:2 (usb_cam yuyv), NV12 and Bayer (rggb8, rggb16) converted to RGB, and the same
  raw rgb8 frame for comparison (a view, no conversion);
- EventPacket decoding in events/s: evt3 as metavision_driver sends it (sparse scenes: one ADDR_X
  word per event; busy scenes: VECT_12 / VECT_8 words), libcaer_cmp and libcaer, in packets of 20k
  events (about 1 ms at 20 Mev/s).

OpenCV runs on one thread (cv2.setNumThreads(1)); numpy is single-threaded here. Prints a Markdown
table and writes docs/benchmarks/inputs.md.

    .venv/bin/python bench/bench_inputs.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from event_packets import evt3_words, libcaer_cmp_packet, libcaer_packet, random_events  # noqa: E402

from sam_mmseg_ros.contracts import ImageData  # noqa: E402
from sam_mmseg_ros.decoders.compressed import compressed_image_to_numpy  # noqa: E402
from sam_mmseg_ros.decoders.event_packet import EventPacketDecoder  # noqa: E402
from sam_mmseg_ros.sensors.rgb import camera_to_rgb, encode_rgb  # noqa: E402

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "inputs.md"
WIDTH, HEIGHT = 1920, 1080
MODEL_INPUT = (512, 512)
PACKET_EVENTS = 20_000


def scene() -> np.ndarray:
    """A 1080p driving-like frame from the synthetic generator (sky, road, cars, texture, noise)."""
    from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence

    frame = next(iter(generate_sequence(SequenceConfig(width=WIDTH, height=HEIGHT, num_frames=1, seed=1))))
    return np.ascontiguousarray(frame.rgb)


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def yuv_layouts(rgb: np.ndarray) -> dict[str, np.ndarray]:
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # Y plane then U, V planes
    y = yuv[:HEIGHT]
    u = yuv[HEIGHT:HEIGHT + HEIGHT // 4].reshape(HEIGHT // 2, WIDTH // 2)
    v = yuv[HEIGHT + HEIGHT // 4:].reshape(HEIGHT // 2, WIDTH // 2)
    nv12 = np.concatenate([y, np.stack([u, v], -1).reshape(HEIGHT // 2, WIDTH)])
    yuyv = np.empty((HEIGHT, WIDTH, 2), np.uint8)
    yuyv[..., 0] = y
    yuyv[:, 0::2, 1] = np.repeat(u, 2, axis=0)
    yuyv[:, 1::2, 1] = np.repeat(v, 2, axis=0)
    bayer = np.zeros((HEIGHT, WIDTH), np.uint8)
    bayer[0::2, 0::2], bayer[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    bayer[1::2, 0::2], bayer[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    return {"yuv422_yuy2": yuyv, "nv12": nv12, "bayer_rggb8": bayer, "bayer_rggb16": bayer.astype(np.uint16) * 257}


def event_streams() -> dict[str, tuple[str, list, int]]:
    """name -> (encoding, packets, events)."""
    streams = {}
    for name, dense in (("evt3, sparse scene (ADDR_X words)", False), ("evt3, busy scene (vector words)", True)):
        events = random_events(400_000, 1280, 720, t0_us=0, span_us=20_000, seed=2, dense_rows=dense)
        words = evt3_words(events, vectors=True, extras=False)
        chunks = np.array_split(words, max(1, len(events["t_us"]) // PACKET_EVENTS))
        streams[name] = ("evt3", [c.tobytes() for c in chunks], len(events["t_us"]))
    events = random_events(400_000, 346, 260, t0_us=0, span_us=20_000, seed=3)
    order = np.lexsort((events["y"], events["p"], events["x"], events["t_us"]))
    events = {k: v[order] for k, v in events.items()}
    parts = [{k: v[s] for k, v in events.items()}
             for s in np.array_split(np.arange(len(events["t_us"])), len(events["t_us"]) // PACKET_EVENTS)]
    streams["libcaer_cmp"] = ("libcaer_cmp", [libcaer_cmp_packet(p, int(p["t_us"][0])).tobytes() for p in parts],
                              len(events["t_us"]))
    streams["libcaer"] = ("libcaer", [libcaer_packet(p, 0) for p in parts], len(events["t_us"]))
    return streams


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rgb = scene()
    rows = []
    jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    msg = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=jpeg)
    out = np.empty((3, *MODEL_INPUT), np.float32)
    median, best = timed(lambda: compressed_image_to_numpy(msg), args.repeats)
    rows.append(("JPEG 1920x1080 q90 decode", f"{len(jpeg) / 1024:.0f} KiB", median, best, "—"))
    median, best = timed(lambda: encode_rgb(compressed_image_to_numpy(msg), MODEL_INPUT, out=out), args.repeats)
    rows.append(("JPEG 1920x1080 decode → model RGB input 512x512", "", median, best, "≤ 8 ms"))
    raw = ImageData(rgb, "rgb8")
    median, best = timed(lambda: encode_rgb(raw, MODEL_INPUT, out=out), args.repeats)
    rows.append(("rgb8 1920x1080 → model RGB input (no decode, for comparison)", "", median, best, "—"))
    for encoding, array in yuv_layouts(rgb).items():
        image = ImageData(array, encoding)
        median, best = timed(lambda image=image: camera_to_rgb(image), args.repeats)
        rows.append((f"{encoding} 1920x1080 → RGB", "", median, best, "≤ 3 ms"))
    event_rows = []
    for name, (encoding, packets, count) in event_streams().items():
        width, height = (1280, 720) if encoding == "evt3" else (346, 260)
        messages = [SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0)), width=width,
                                    height=height, time_base=10**18, encoding=encoding, is_bigendian=False, events=p)
                    for p in packets]

        def decode_all(messages=messages):
            decoder = EventPacketDecoder()
            return sum(len(decoder.decode(m)) for m in messages)

        assert decode_all() == count, name
        median, best = timed(decode_all, max(5, args.repeats // 3))
        event_rows.append((name, count, median, best))
    load = os.getloadavg()
    lines = [
        "# Input decoding benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy "
        f"{np.__version__}, OpenCV {cv2.__version__} (libjpeg-turbo), one thread. Load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on 2 cores shared with other jobs: medians include "
        "waiting for a core, minima are closer to an idle core.",
        "",
        f"Command: `.venv/bin/python bench/bench_inputs.py --repeats {args.repeats}`",
        "",
        "| what | size | median ms | min ms | target |",
        "|---|---|---|---|---|",
        *(f"| {w} | {s} | {m:.2f} | {b:.2f} | {t} |" for w, s, m, b, t in rows),
        "",
        f"EventPacket decoding to the node's event arrays (ROS-clock times), packets of {PACKET_EVENTS // 1000}k events:",
        "",
        "| stream | events | median Mev/s | best Mev/s | target |",
        "|---|---|---|---|---|",
        *(f"| {n} | {c} | {c / m / 1e3:.1f} | {c / b / 1e3:.1f} | {'≥ 20' if 'evt3' in n else '—'} |"
          for n, c, m, b in event_rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
