"""Offline evaluation: a rosbag2 through the node's own stages, or a DELIVER folder through the model.

A bag is evaluated by the node's own stages in bag order: `ingest.OfflineNode` runs what the
node's callbacks do (decode → health → assemble) and what its worker does (encode → infer →
postprocess), configured from the node's parameter file, so the labels are the ones the node
publishes for the same bag (`eval --live` checks exactly that). Each modality subset runs the
same assembled frame with the other modalities removed, as when those sensors fail on the
vehicle. Everything is deterministic: the clock is the bag's record time.

A model with the depth task is also scored on the bag's ground-truth depth (AbsRel, RMSE, delta1
per subset and condition), and on the pixels where the depth image had no value: how well the
model fills the sensor's holes (subsets without the depth sensor show the same pixels predicted
without it, for comparison).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import (
    CONDITION_TOPIC,
    GROUND_TRUTH_DEPTH_TOPIC,
    GROUND_TRUTH_TOPIC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODALITIES,
    FrameBundle,
    InputError,
)
from sam_mmseg_ros.data.bag_reader import BagReport
from sam_mmseg_ros.decoders.common import stamp_to_ns
from sam_mmseg_ros.decoders.image import image_to_numpy
from sam_mmseg_ros.eval.results import FULL, MOSAIC_FRAMES, SUBSETS, EvalResult, backend_info, mosaic_tile
from sam_mmseg_ros.ingest import model_source
from sam_mmseg_ros.sensors.depth import DEPTH_ENCODINGS, depth_to_metres, resize_depth_nearest
from sam_mmseg_ros.sensors.encodings import DELIVER_FILES_PROVIDE, check_encodings, resolve

log = logging.getLogger(__name__)


class NoCameraFrames(ValueError):
    """The bag has no camera frames the node could use; the message lists the topics it has."""


def count_messages(path: str | Path, topic: str) -> int:
    from sam_mmseg_ros.data.bag_reader import message_counts

    return message_counts(path)[topic]


def _ground_truth(msg, path, stamp_ns: int, damage: BagReport, topic: str = GROUND_TRUTH_TOPIC) -> np.ndarray | None:
    """The labels (uint8) or depth (float32 metres) of a ground-truth message, or None (recorded in
    `damage`) when they cannot be decoded: one bad message costs one frame's score, not the run."""
    try:
        return np.array(image_to_numpy(msg).array, np.float32 if topic == GROUND_TRUTH_DEPTH_TOPIC else np.uint8)
    except InputError as exc:
        damage.add(str(path), f"record time {stamp_ns}", topic, "undecodable ground truth", str(exc))
        return None


def read_ground_truth(path: str | Path) -> tuple[dict[int, np.ndarray], dict[int, str], dict[int, np.ndarray]]:
    """Ground-truth labels by camera stamp, conditions by record time and ground-truth depth by
    camera stamp (empty for a bag without it), read from the bag."""
    from sam_mmseg_ros.data.bags import read_bag

    truth, condition, depth, damage = {}, {}, {}, BagReport()
    for topic, stamp_ns, _msgtype, msg in read_bag(path, [GROUND_TRUTH_TOPIC, CONDITION_TOPIC, GROUND_TRUTH_DEPTH_TOPIC],
                                                   damage):
        if topic == CONDITION_TOPIC:
            condition[stamp_ns] = str(msg.data)
        elif (image := _ground_truth(msg, path, stamp_ns, damage, topic)) is not None:
            (depth if topic == GROUND_TRUTH_DEPTH_TOPIC else truth)[stamp_to_ns(msg.header.stamp)] = image
    return truth, condition, depth


def depth_sensor_holes(bundle: FrameBundle, shape: tuple[int, int]) -> np.ndarray | None:
    """Where the frame's depth image has no value, at camera resolution `shape`; None when the
    frame has no metric depth image (depth absent, or an encoded one such as DELIVER's HHA)."""
    if bundle.depth is None or bundle.depth.encoding not in DEPTH_ENCODINGS:
        return None
    metres = depth_to_metres(bundle.depth)
    if metres.shape != tuple(shape):
        metres = resize_depth_nearest(metres, shape)
    return ~np.isfinite(metres)


def evaluate_bag(path: str | Path, backend, params_file: str | Path | None = None, overrides: dict | None = None,
                 subsets: dict[str, tuple[str, ...]] = SUBSETS, progress: bool = True,
                 max_frames: int | None = None, keep_labels: bool = False,
                 topic_map: dict[str, str] | None = None) -> EvalResult:
    """One pass over the bag: every camera frame is assembled and encoded once, as the node does,
    then inferred once per modality subset with the removed modalities masked out. Health,
    latency and the timeline come from the full set.

    `topic_map` (kind -> topic) and the parameter file's `topics.*` say which bag topic is which
    input (`topic_map.find_bag_topics`); the recorded types set the transports. Topics whose type
    cannot be read are skipped with one warning; a bag without camera frames raises NoCameraFrames."""
    from tqdm import tqdm

    from sam_mmseg_ros.data.bag_reader import bag_topics
    from sam_mmseg_ros.data.bags import bag_image_encodings, bag_typestore, read_bag
    from sam_mmseg_ros.ingest import OfflineNode
    from sam_mmseg_ros.node_settings import NodeSettings
    from sam_mmseg_ros.topic_map import describe_missing_camera, find_bag_topics

    subsets = {FULL: MODALITIES, **subsets}  # health and latency come from the full set
    # Ready images the bag declares (make-bag --deliver) must be in the model's encodings; raw
    # inputs are checked against what the node computes when OfflineNode is built.
    check_encodings(resolve(backend.metadata.get("encodings"), model_source(backend)),
                    {m: (name,) for m, name in bag_image_encodings(path).items()}, model_source(backend),
                    f"bag {path}")
    recorded = {topic: msgtype for topic, (msgtype, _) in bag_topics(path).items()}
    settings = NodeSettings.from_file(params_file, overrides)
    found = find_bag_topics(recorded, settings, topic_map)
    store, unreadable = bag_typestore(path)
    notes = list(found.notes)
    if unreadable:
        skipped = ", ".join(f"{t} ({m})" for t, m in sorted(unreadable.items()))
        log.warning("skipping topics whose message types cannot be read (no definition in the bag): %s", skipped)
        notes.append(f"skipped (type unknown): {skipped}")
    if "rgb" not in found.topics or found.topics["rgb"] in unreadable:
        raise NoCameraFrames(describe_missing_camera(recorded, settings, topic_map or {}))
    inputs = bag_inputs(path, found, store)
    node = OfflineNode(backend, NodeSettings.from_file(params_file, {**found.parameters, **inputs, **(overrides or {})}))
    kinds = {topic: kind for kind, topic in found.topics.items() if topic not in unreadable}
    result = EvalResult(source=str(path), mode="offline", model=backend_info(backend),
                        labels={} if keep_labels else None)
    result.notes.extend(notes)
    result.camera_frames = count_messages(path, found.topics["rgb"])
    if result.camera_frames == 0:
        raise NoCameraFrames(describe_missing_camera(recorded, settings, topic_map or {}))
    result.latency_note = ("offline, per stage, measured in this process (no DDS); "
                           "'assemble' = decode the camera image + assemble the frame")
    ready = [f"{name} {value}" for name, value in inputs.items() if value == "image"]
    if ready:
        result.notes.append("the bag carries ready images (" + ", ".join(ready) + "): run as a node with "
                            + " ".join(f"-p {name}:=image" for name, value in inputs.items() if value == "image"))
    total = result.camera_frames if max_frames is None else min(max_frames, result.camera_frames)
    mosaic_every = max(1, total // MOSAIC_FRAMES)
    truth: dict[int, np.ndarray] = {}
    truth_depth: dict[int, np.ndarray] = {}
    condition: dict[int, str] = {}
    pending: dict[int, tuple] = {}
    bar = tqdm(total=total, desc=f"eval {len(subsets)} subsets", unit="frame", disable=not progress)
    damage = BagReport()  # damaged messages are skipped, counted and listed in the report's notes
    for topic, stamp_ns, _msgtype, msg in read_bag(path, [*kinds, GROUND_TRUTH_TOPIC, GROUND_TRUTH_DEPTH_TOPIC,
                                                          CONDITION_TOPIC], damage, store=store):
        if topic == GROUND_TRUTH_TOPIC:
            if (labels := _ground_truth(msg, path, stamp_ns, damage, topic)) is not None:
                truth[stamp_to_ns(msg.header.stamp)] = labels
        elif topic == GROUND_TRUTH_DEPTH_TOPIC:
            if (depth := _ground_truth(msg, path, stamp_ns, damage, topic)) is not None:
                truth_depth[stamp_to_ns(msg.header.stamp)] = depth
        elif topic == CONDITION_TOPIC:
            condition[stamp_ns] = str(msg.data)
        elif topic in kinds:
            t0 = time.perf_counter()
            bundle = node.feed(kinds[topic], msg, now_ns=stamp_ns)
            if bundle is None:
                continue
            assemble_ms = (time.perf_counter() - t0) * 1e3
            full = node.segment(bundle, stamp_ns)
            outputs = {name: (full.labels, full.depth) if name == FULL else node.pipeline.outputs_with_only(keep)
                       for name, keep in subsets.items()}
            result.timings_ms["assemble"].append(assemble_ms)
            for stage, ms in full.timings_ms.items():
                result.timings_ms[stage].append(ms)
            result.record_health(bundle.stamp_ns, {m: (h.state, h.router_weight) for m, h in full.health.items()})
            holes = depth_sensor_holes(bundle, full.labels.shape) if full.depth is not None else None
            pending[bundle.stamp_ns] = (outputs, full.rgb, holes)
        for stamp in [s for s in pending if s in truth]:
            outputs, rgb, holes = pending.pop(stamp)
            gt, gt_depth = truth.pop(stamp), truth_depth.pop(stamp, None)
            cond = condition.get(stamp, "unknown")
            for name, (pred, depth) in outputs.items():
                result.add(name, cond, pred, gt)
                if depth is not None and gt_depth is not None:
                    result.add_depth(name, cond, depth, gt_depth, holes)
            if keep_labels:
                result.labels[stamp] = outputs[FULL][0]
            if result.frames % mosaic_every == 0 and len(result.mosaic) < MOSAIC_FRAMES and rgb is not None:
                result.mosaic.append(mosaic_tile(rgb, outputs[FULL][0], gt))
                result.mosaic_titles.append(f"{cond}, frame {result.frames}")
            result.frames += 1
            bar.update(1)
        if max_frames is not None and result.frames >= max_frames:
            break
    bar.close()
    if pending:
        result.notes.append(f"{len(pending)} camera frames had no ground truth and were not scored")
    for kind, reason in node.feeder.problems.current.items():
        result.notes.append(f"{kind} input problem (last seen): {reason}")
    if damage:
        result.notes.append(f"damaged bag: {damage.total_skipped} messages skipped")
        result.notes += damage.notes()
    return result


def bag_inputs(path: str | Path, found=None, store=None) -> dict[str, str]:
    """The node's depth_input, event_input and lidar_input for a bag, from what it records (on the
    topics `found` maps, default the node's own): a PointCloud2, EventPacket or Image on the event
    and LiDAR topics, metric depth (32FC1/16UC1) or a ready image on the depth topic (its first
    message). Topics the bag lacks keep the defaults."""
    from sam_mmseg_ros.data.bag_reader import bag_topics
    from sam_mmseg_ros.data.bags import read_bag
    from sam_mmseg_ros.node_settings import NodeSettings
    from sam_mmseg_ros.sensors.image_input import IMAGE_INPUT_ENCODINGS
    from sam_mmseg_ros.topic_map import find_bag_topics

    recorded = {topic: msgtype for topic, (msgtype, _) in bag_topics(path).items()}
    found = found or find_bag_topics(recorded, NodeSettings.from_values({}))
    inputs = {name: value for name, value in found.parameters.items() if name.endswith("_input")}
    depth = found.topics.get("depth")
    if depth is not None and recorded[depth] == "sensor_msgs/msg/Image":
        for _topic, _t, _type, msg in read_bag(path, [depth], store=store):
            inputs["depth_input"] = "image" if str(msg.encoding) in IMAGE_INPUT_ENCODINGS else "depth"
            break
    return inputs


def evaluate_deliver(root: str | Path, backend, split: str = "test", subsets: dict[str, tuple[str, ...]] = SUBSETS,
                     progress: bool = True, max_frames: int | None = None,
                     cases: tuple[str, ...] | None = None) -> EvalResult:
    """A DELIVER folder, encoded by the node's own `sensors.preprocess` in the model's encodings
    (DeliverDataset; a model whose encodings DELIVER's files cannot give is refused), then the
    node's model stage; scored per condition and per sensor-failure case. A depth model is scored
    on DELIVER's metric depth too, when the folder has it (at the model's resolution)."""
    from tqdm import tqdm

    from sam_mmseg_ros.data.deliver import DeliverDataset

    size = tuple(int(v) for v in backend.input_shape[-2:])
    encodings = resolve(backend.metadata.get("encodings"), model_source(backend))
    check_encodings(encodings, DELIVER_FILES_PROVIDE, model_source(backend), "a DELIVER folder")
    with_depth = "depth" in getattr(backend, "output_names", ()) and (Path(root) / "depth").is_dir()
    dataset = DeliverDataset(root, split=split, size=size, cases=cases, encodings=encodings, depth_target=with_depth)
    result = EvalResult(source=str(root), mode="DELIVER", model=backend_info(backend))
    result.latency_note = "model only (DELIVER frames are read from files)"
    count = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    mosaic_every = max(1, count // MOSAIC_FRAMES)
    subsets = {FULL: MODALITIES, **subsets}
    unknown_frames = 0
    for i in tqdm(range(count), desc=f"eval DELIVER {split}", unit="frame", disable=not progress):
        sample = dataset[i]
        images = np.asarray(sample["images"], np.float32)[None]
        present = np.asarray(sample["modality_mask"], np.float32).reshape(1, -1)
        gt = np.asarray(sample["label"]).astype(np.uint8)
        for name, keep in subsets.items():
            mask = present * np.array([[1.0 if m in keep else 0.0 for m in MODALITIES]], np.float32)
            t0 = time.perf_counter()
            out = backend.infer(np.ascontiguousarray(images * mask[:, :, None, None, None]), mask)
            pred = np.asarray(out["labels"])[0].astype(np.uint8)
            if name == FULL:
                result.timings_ms["infer"].append((time.perf_counter() - t0) * 1e3)
                if i % mosaic_every == 0 and len(result.mosaic) < MOSAIC_FRAMES:
                    result.mosaic.append(mosaic_tile(_denormalize(images[0, 0]), pred, gt))
                    result.mosaic_titles.append(f"{sample['condition']}, frame {i}")
            result.add(name, sample["condition"], pred, gt, sample["case"])
            if with_depth:
                result.add_depth(name, sample["condition"], out["depth"][0], sample["depth"].numpy())
        unknown_frames += bool(sample["unknown_labels"])
    result.frames = result.camera_frames = count
    if unknown_frames:
        per_id = ", ".join(f"{i}: {n}" for i, n in sorted(dataset.unknown_labels.items()))
        result.notes.append(f"{unknown_frames} frames have raw label ids above 25, which are not DELIVER classes, "
                            f"scored as ignore (pixels per id: {per_id})")
    return result


def _denormalize(chw: np.ndarray) -> np.ndarray:
    """ImageNet-normalized [3, H, W] back to uint8 [H, W, 3] for the mosaic."""
    rgb = chw.transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
