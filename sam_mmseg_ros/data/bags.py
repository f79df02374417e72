"""rosbag2 files of synthetic or DELIVER sequences, written with `rosbags` and read with
`data.bag_reader`, which survives damaged bags (no ROS needed).

Messages are standard types (sensor_msgs Image, CameraInfo, PointCloud2; tf2_msgs TFMessage) in
CDR, so `ros2 bag play`, `sam-mmseg replay` and the node read them like a real recording. Numpy
arrays go straight into the rosbags message dataclasses; nothing is copied per pixel or point.

Event streams are PointCloud2 messages with x, y (uint16), polarity (int8, +-1) and t (uint32
nanoseconds after the header stamp), the layout `decoders.pointcloud.pointcloud2_to_events` reads. The
LiDAR extrinsic is one /tf_static message whose recorded QoS is transient-local, so players latch
it for late subscribers.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import (
    BAG_TOPICS,
    CAMERA_RECORD_DELAY_NS,
    CONDITION_TOPIC,
    GROUND_TRUTH_DEPTH_TOPIC,
    GROUND_TRUTH_TOPIC,
    EventArray,
    PointCloud,
)
from sam_mmseg_ros.data.bag_reader import (
    BagError,
    BagReport,
    RawMessage,
    bag_definitions,
    bag_topics,
    iter_messages,
)
from sam_mmseg_ros.sensors.camera import CameraModel

log = logging.getLogger(__name__)

TF_STATIC_TOPIC = "/tf_static"
IMAGE_ENCODINGS_KEY = "sam_mmseg.encodings"
STORAGES = ("mcap", "sqlite3")
_POINTFIELD = {np.dtype(np.int8): 1, np.dtype(np.uint8): 2, np.dtype(np.int16): 3, np.dtype(np.uint16): 4,
               np.dtype(np.int32): 5, np.dtype(np.uint32): 6, np.dtype(np.float32): 7, np.dtype(np.float64): 8}


@functools.cache
def typestore():
    """The rosbags type store of the newest ROS 2 distribution it knows (kilted when present);
    one per process, since it compiles a (de)serializer per message type on first use."""
    from rosbags.typesys import Stores, get_typestore

    names = [s for s in Stores if s.name.startswith("ROS2_")]
    store = Stores.ROS2_KILTED if "ROS2_KILTED" in Stores.__members__ else names[-1]
    return get_typestore(store)


class _Messages:
    """Builds rosbags message objects from numpy data."""

    def __init__(self):
        self.ts = typestore()
        self.t = self.ts.types

    def header(self, stamp_ns: int, frame_id: str):
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return self.t["std_msgs/msg/Header"](self.t["builtin_interfaces/msg/Time"](sec, nsec), frame_id)

    def image(self, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
        array = np.ascontiguousarray(array)
        height, width = array.shape[:2]
        data = array.view(np.uint8).reshape(-1)
        return self.t["sensor_msgs/msg/Image"](self.header(stamp_ns, frame_id), height, width, encoding,
                                                int(array.dtype.byteorder == ">"), data.size // height, data)

    def camera_info(self, camera: CameraModel, stamp_ns: int):
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](0, 0, 0, 0, False)
        P = np.hstack([camera.K, np.zeros((3, 1))])
        return self.t["sensor_msgs/msg/CameraInfo"](
            self.header(stamp_ns, camera.frame_id), camera.height, camera.width, camera.distortion_model,
            camera.D.astype(np.float64), camera.K.ravel().astype(np.float64), np.eye(3).ravel(),
            P.ravel(), 0, 0, roi)

    def pointcloud2(self, points: np.ndarray, stamp_ns: int, frame_id: str):
        """A structured array -> unorganized PointCloud2 (field offsets from the dtype)."""
        fields = [self.t["sensor_msgs/msg/PointField"](name, points.dtype.fields[name][1],
                                                       _POINTFIELD[points.dtype.fields[name][0]], 1)
                  for name in points.dtype.names]
        data = points.view(np.uint8).reshape(-1) if points.size else np.zeros(0, np.uint8)
        step = points.dtype.itemsize
        return self.t["sensor_msgs/msg/PointCloud2"](self.header(stamp_ns, frame_id), 1, len(points), fields,
                                                      False, step, step * len(points), data, True)

    def lidar(self, cloud: PointCloud, stamp_ns: int):
        dtype = np.dtype([("x", np.float32), ("y", np.float32), ("z", np.float32), ("intensity", np.float32)])
        points = np.empty(len(cloud), dtype)
        xyz = np.asarray(cloud.xyz, np.float32)
        points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        points["intensity"] = 0.0 if cloud.intensity is None else cloud.intensity
        return self.pointcloud2(points, stamp_ns, cloud.frame_id)

    def events(self, events: EventArray, window_start_ns: int, frame_id: str):
        """Events of (window_start, ...] with t as uint32 offsets from the header stamp."""
        dtype = np.dtype({"names": ["x", "y", "polarity", "t"], "formats": [np.uint16, np.uint16, np.int8, np.uint32],
                          "offsets": [0, 2, 4, 8], "itemsize": 12})
        offsets = np.asarray(events.t_ns, np.int64) - window_start_ns
        if len(events) and (offsets.min() < 0 or offsets.max() >= 2**32):
            raise ValueError(f"event times span [{offsets.min()}, {offsets.max()}] ns after the window start; "
                             "a message holds offsets in [0, 2^32) ns (about 4.3 s)")
        points = np.zeros(len(events), dtype)
        points["x"], points["y"] = events.x, events.y
        points["polarity"] = np.where(events.polarity > 0, 1, -1)
        points["t"] = offsets
        return self.pointcloud2(points, window_start_ns, frame_id)

    def tf_static(self, T_parent_child: np.ndarray, parent: str, child: str, stamp_ns: int):
        t = self.t
        q = _quaternion(np.asarray(T_parent_child)[:3, :3])
        tx, ty, tz = (float(v) for v in np.asarray(T_parent_child)[:3, 3])
        transform = t["geometry_msgs/msg/Transform"](t["geometry_msgs/msg/Vector3"](tx, ty, tz),
                                                      t["geometry_msgs/msg/Quaternion"](*q))
        stamped = t["geometry_msgs/msg/TransformStamped"](self.header(stamp_ns, parent), child, transform)
        return t["tf2_msgs/msg/TFMessage"]([stamped])


def _quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation matrix -> (x, y, z, w), numerically stable branch by largest diagonal term."""
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = ((R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s)
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        v = np.zeros(3)
        v[i] = 0.25 * s
        v[j] = (R[j, i] + R[i, j]) / s
        v[k] = (R[k, i] + R[i, k]) / s
        q = (*v, (R[k, j] - R[j, k]) / s)
    q = np.asarray(q, np.float64)
    return tuple(float(v) for v in q / np.linalg.norm(q))


def _latched_qos():
    """QoS recorded for /tf_static: reliable, transient-local, keep-last 1 (as tf2's static broadcaster)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


def ground_truth_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth as the ground-truth topic carries it: float32 metres, NaN where unknown (0 in
    the generator and the DELIVER reader)."""
    depth = np.asarray(depth_m, np.float32)
    return np.where(depth > 0, depth, np.float32(np.nan)).astype(np.float32)


def frame_messages(frame, builder: _Messages, topics: dict[str, str], previous_stamp_ns: int | None):
    """(topic, msgtype, message) of one frame: a SyntheticFrame, or a DELIVER dict with `stamp_ns`.
    Ground-truth depth comes before the labels: a reader scoring a frame when its labels arrive
    has its depth too."""
    if isinstance(frame, dict):
        return _deliver_messages(frame, builder, topics)
    stamp, cam = frame.stamp_ns, frame.camera
    window_start = previous_stamp_ns if previous_stamp_ns is not None else (
        int(frame.events.t_ns.min()) - 1 if len(frame.events) else stamp)
    return [
        (topics["camera_info"], "sensor_msgs/msg/CameraInfo", builder.camera_info(cam, stamp)),
        (topics["rgb"], "sensor_msgs/msg/Image", builder.image(frame.rgb, "rgb8", stamp, cam.frame_id)),
        (topics["depth"], "sensor_msgs/msg/Image", builder.image(frame.depth, "32FC1", stamp, cam.frame_id)),
        (topics["event"], "sensor_msgs/msg/PointCloud2", builder.events(frame.events, window_start, cam.frame_id)),
        (topics["lidar"], "sensor_msgs/msg/PointCloud2", builder.lidar(frame.lidar, stamp)),
        (GROUND_TRUTH_DEPTH_TOPIC, "sensor_msgs/msg/Image",
         builder.image(ground_truth_depth(frame.ground_truth_depth()), "32FC1", stamp, cam.frame_id)),
        (GROUND_TRUTH_TOPIC, "sensor_msgs/msg/Image", builder.image(frame.labels, "mono8", stamp, cam.frame_id)),
    ]


def _deliver_messages(frame: dict, builder: _Messages, topics: dict[str, str]):
    """DELIVER stores every modality as an image aligned with the RGB camera, so each topic carries
    the image a DELIVER frame gives its slot (`data.deliver.deliver_images`, the images training
    reads): metric depth as 32FC1 (or the hha/ images as rgb8), the event and LiDAR renderings as
    Images; there are no raw clouds. A node replaying it needs event_input and lidar_input 'image'
    (and depth_input 'image' for hha/); `sam-mmseg eval` sets them from the bag. The metric depth
    is also published as the depth ground truth (not with hha/)."""
    from sam_mmseg_ros.data.deliver import deliver_images

    stamp = frame["stamp_ns"]
    camera: CameraModel = frame["camera"]
    fid = camera.frame_id
    messages = [(topics["camera_info"], "sensor_msgs/msg/CameraInfo", builder.camera_info(camera, stamp))]
    for modality, image in deliver_images(frame).items():
        messages.append((topics[modality], "sensor_msgs/msg/Image", builder.image(image.array, image.encoding, stamp,
                                                                                  fid)))
    if "depth" in frame:  # metric depth from depth/: also the depth task's ground truth, before the labels
        messages.append((GROUND_TRUTH_DEPTH_TOPIC, "sensor_msgs/msg/Image",
                         builder.image(ground_truth_depth(frame["depth"]), "32FC1", stamp, fid)))
    messages.append((GROUND_TRUTH_TOPIC, "sensor_msgs/msg/Image", builder.image(frame["label"], "mono8", stamp, fid)))
    return messages


def condition_label(condition: str, case: str) -> str:
    """What CONDITION_TOPIC carries: the condition, then '/' and the sensor-failure case if any."""
    return condition if case == "normal" else f"{condition}/{case}"


def write_bag(frames: Iterable, path: str | Path, storage: str = "mcap",
              topics: dict[str, str] = BAG_TOPICS,
              leave_out: Mapping[int, Collection[str]] | None = None,
              image_encodings: Mapping[str, str] | None = None) -> int:
    """Write frames (SyntheticFrame, or DELIVER dicts with stamp_ns, camera and condition) to a new
    rosbag2 directory; returns the number of messages.

    Each frame's condition goes on CONDITION_TOPIC; its camera image and ground truth (labels and
    metric depth) are recorded
    CAMERA_RECORD_DELAY_NS after the other sensors (see contracts). A SyntheticFrame also puts its
    LiDAR extrinsic on /tf_static once (camera_optical_frame -> lidar). `leave_out` maps a frame
    index to the sensors ("depth", "event", "lidar") that send nothing for it: a staged outage.
    `image_encodings` declares, in the bag's metadata (custom_data `sam_mmseg.encodings`), the
    encoding of each modality it carries as ready images (`bag_image_encodings` reads it back).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got '{storage}'")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    builder = _Messages()
    connections: dict[str, object] = {}
    count = 0
    previous: int | None = None
    delayed = {topics["rgb"], GROUND_TRUTH_DEPTH_TOPIC, GROUND_TRUTH_TOPIC}
    with Writer(Path(path), version=9, storage_plugin=plugin) as writer:
        if image_encodings:
            writer.set_custom_data(IMAGE_ENCODINGS_KEY, json.dumps(dict(image_encodings), sort_keys=True))

        def write(topic: str, msgtype: str, msg, stamp: int, qos=()):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=builder.ts,
                                                           offered_qos_profiles=qos)
            writer.write(connections[topic], stamp, builder.ts.serialize_cdr(msg, msgtype))

        for index, frame in enumerate(frames):
            is_synthetic = not isinstance(frame, dict)
            stamp = frame.stamp_ns if is_synthetic else frame["stamp_ns"]
            condition = frame.condition if is_synthetic else condition_label(frame["condition"], frame["case"])
            if is_synthetic and TF_STATIC_TOPIC not in connections:
                tf = builder.tf_static(frame.T_camera_lidar, frame.camera.frame_id, frame.lidar.frame_id, stamp)
                write(TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", tf, stamp, [_latched_qos()])
                count += 1
            silent = {topics[m] for m in (leave_out or {}).get(index, ())}
            messages = frame_messages(frame, builder, topics, previous)
            messages.append((CONDITION_TOPIC, "std_msgs/msg/String", builder.t["std_msgs/msg/String"](condition)))
            for topic, msgtype, msg in sorted(messages, key=lambda m: m[0] in delayed):
                if topic in silent:
                    continue
                write(topic, msgtype, msg, stamp + (CAMERA_RECORD_DELAY_NS if topic in delayed else 0))
                count += 1
            previous = stamp
    return count


def bag_image_encodings(path: str | Path) -> dict[str, str]:
    """What `write_bag(image_encodings=...)` declared: modality -> encoding of its ready images
    (empty when the bag declares nothing, e.g. one recorded on a car)."""
    import yaml

    metadata = Path(path) / "metadata.yaml"  # rosbag2's own file; a bare .mcap declares nothing
    try:
        info = yaml.safe_load(metadata.read_text()) if metadata.is_file() else {}
        custom = (info or {}).get("rosbag2_bagfile_information", {}).get("custom_data") or {}
        declared = json.loads(custom.get(IMAGE_ENCODINGS_KEY, "{}"))
    except (OSError, yaml.YAMLError, json.JSONDecodeError, AttributeError, TypeError):  # a damaged file
        declared = None
    if not isinstance(declared, dict):
        raise BagError(f"{metadata}: unreadable, so the {IMAGE_ENCODINGS_KEY} the bag declares are unknown")
    return {str(k): str(v) for k, v in declared.items()}


def read_raw(path: str | Path, topics: Sequence[str] | None = None, report: BagReport | None = None,
             check_cdr: bool = False) -> Iterator[tuple[str, int, str, bytes]]:
    """(topic, record time ns, msgtype, CDR bytes) in time order; mcap or sqlite3 alike.

    Damaged parts are skipped and recorded in `report` (see data.bag_reader); `check_cdr` also
    skips messages whose CDR does not deserialize, which a player must not publish."""
    report = report if report is not None else BagReport()
    ts = typestore() if check_cdr else None
    for message in iter_messages(path, topics, report):
        if ts is None or _deserialize(ts, message, report) is not None:
            yield message.topic, message.log_time, message.msgtype, message.data


def register_msg_types(store, definitions: Mapping[str, str]) -> None:
    """Add message types to a rosbags type store from .msg texts ({msgtype: text}), e.g.
    event_camera_msgs/msg/EventPacket for bags that are written with it."""
    from rosbags.typesys import get_types_from_msg

    types = {}
    for msgtype, text in definitions.items():
        types.update(get_types_from_msg(text, msgtype))
    store.register({k: v for k, v in types.items() if k not in store.types})


def bag_typestore(path: str | Path):
    """(type store, {topic: msgtype} of topics it cannot read): the standard types plus the custom
    ones (EventPacket, ...) whose definitions the bag embeds (`bag_reader.bag_definitions`)."""
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    store = typestore()
    for msgtype, (fmt, text) in bag_definitions(path).items():
        if msgtype in store.types:
            continue
        try:
            if fmt == "ros2msg":
                types = get_types_from_msg(text, msgtype)
            else:
                types = {}
                for part in text.split("=" * 80 + "\n"):
                    idl = part.split("\n", 1)[1] if part.startswith("IDL: ") else part
                    types.update(get_types_from_idl(idl) if idl.strip() else {})
            store.register({k: v for k, v in types.items() if k not in store.types})
        except Exception as exc:  # noqa: BLE001 - a definition rosbags cannot parse leaves the type unknown
            log.debug("cannot register %s: %s", msgtype, exc)
    unknown = {topic: msgtype for topic, (msgtype, _) in bag_topics(path).items() if msgtype not in store.types}
    return store, unknown


def read_bag(path: str | Path, topics: Sequence[str] | None = None, report: BagReport | None = None, *,
             store=None) -> Iterator[tuple[str, int, str, object]]:
    """(topic, record time ns, msgtype, deserialized rosbags message) in time order; damaged
    messages are skipped and recorded in `report`. `store` reads custom types (`bag_typestore`);
    the default knows the standard ones."""
    report = report if report is not None else BagReport()
    ts = store or typestore()
    for message in iter_messages(path, topics, report):
        msg = _deserialize(ts, message, report)
        if msg is not None:
            yield message.topic, message.log_time, message.msgtype, msg


def _deserialize(ts, message: RawMessage, report: BagReport):
    """The rosbags message, or None (recorded in `report`) when its CDR is cut, absurd or of a
    type the type store does not know."""
    try:
        return ts.deserialize_cdr(message.data, message.msgtype)
    except KeyError:
        report.add(message.file, message.where, message.topic, "unknown message type",
                   f"{message.msgtype} is not in the rosbags type store")
    except Exception as exc:  # noqa: BLE001 - rosbags' CDR parser of outside bytes raises several kinds
        report.add(message.file, message.where, message.topic, "undecodable message",
                   f"{type(exc).__name__}: {str(exc)[:160]}")
    return None


# ------------------------------------------------------------------------------- sam-mmseg make-bag


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480), for argparse `type=`."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got '{text}'") from None
    return w, h


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from sam_mmseg_ros.data.synthetic import CONDITIONS, FAILURES

    parser.description = (
        "Write a rosbag2 of synthetic driving scenes (RGB, camera info, 32FC1 depth, events as "
        "PointCloud2, LiDAR PointCloud2, ground-truth labels, LiDAR extrinsic on /tf_static), or "
        "convert a DELIVER folder (--deliver). DELIVER holds only images: its metric depth is published as "
        "32FC1, its event and LiDAR renderings as Images on those topics (no raw clouds or /tf_static); "
        "`sam-mmseg eval` recognises them, a live node needs event_input:=image lidar_input:=image.")
    parser.add_argument("out", help="output bag directory (must not exist)")
    parser.add_argument("--frames", type=int, default=20, help="frames per condition (synthetic), or at most "
                        "this many frames in total (DELIVER; 0 = all)")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="synthetic image size WxH")
    parser.add_argument("--event-size", type=parse_size, default=None, help="event sensor WxH (default: --size)")
    parser.add_argument("--conditions", type=_names, default=None,
                        help=f"comma-separated ({','.join(CONDITIONS)}); synthetic: one sequence each, "
                             "default sun; DELIVER: which conditions to take, default all")
    parser.add_argument("--failures", type=_names, default=(), help=f"comma-separated ({','.join(FAILURES)})")
    parser.add_argument("--lidar-beams", type=int, choices=(32, 64), default=32)
    parser.add_argument("--depth-holes", action="store_true",
                        help="synthetic: the depth camera loses far pixels and patches (data/depth_holes.py); "
                             "the ground-truth depth keeps them")
    parser.add_argument("--seed", type=int, default=0,
                        help="synthetic: the vehicle (camera mount, lens), and the street of the first condition")
    parser.add_argument("--paired", action="store_true",
                        help="synthetic: the same street (--seed) under every condition, for like-with-like "
                             "comparisons; default: street seed+i for the i-th condition")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--storage", choices=STORAGES, default="mcap")
    parser.add_argument("--deliver", metavar="DIR", help="convert this DELIVER folder instead of generating")
    parser.add_argument("--split", default="val", help="DELIVER split")
    parser.add_argument("--cases", type=_names, default=None,
                        help="DELIVER cases to take (normal, motionblur, overexposure, underexposure, lidarjitter, "
                             "eventlowres), default all")
    parser.add_argument("--deliver-hha", action="store_true",
                        help="publish DELIVER's hha/ images (rgb8, ready HHA: a node needs depth_input: image) "
                             "instead of metric depth from depth/ (32FC1)")


def _synthetic_frames(args) -> tuple[Iterator, int]:
    from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence

    width, height = args.size
    event_w, event_h = args.event_size or args.size
    period_ns = int(round(1e9 / args.fps))

    conditions = args.conditions or ("sun",)
    # Built (and so validated) before the bag is created; the sequences follow each other in time.
    # One vehicle (rig_seed) records the whole bag: one camera mount, one LiDAR extrinsic on /tf_static.
    configs = [SequenceConfig(width=width, height=height, fps=args.fps, num_frames=args.frames,
                              condition=condition, failures=args.failures, lidar_beams=args.lidar_beams,
                              event_width=event_w, event_height=event_h,
                              seed=args.seed if args.paired else args.seed + i, rig_seed=args.seed,
                              start_ns=SequenceConfig.start_ns + i * args.frames * period_ns)
               for i, condition in enumerate(conditions)]
    frames = (frame for config in configs for frame in generate_sequence(config))
    if args.depth_holes:
        frames = (_with_depth_holes(frame, np.random.default_rng([args.seed, k])) for k, frame in enumerate(frames))
    return frames, args.frames * len(configs)


def _with_depth_holes(frame, rng: np.random.Generator):
    """The frame as a depth camera with holes records it; its exact depth becomes the ground truth."""
    from dataclasses import replace

    from sam_mmseg_ros.data.depth_holes import depth_hole_mask

    truth = frame.ground_truth_depth()
    return replace(frame, depth=np.where(depth_hole_mask(truth, rng), np.float32(0.0), frame.depth), depth_true=truth)


def _deliver_frames(args) -> tuple[Iterator, int]:
    from sam_mmseg_ros.data.deliver import deliver_camera, find_deliver_frames, read_deliver_frame
    from sam_mmseg_ros.data.synthetic import SequenceConfig

    found = find_deliver_frames(args.deliver, args.split, args.conditions, args.cases)
    total = min(len(found), args.frames) if args.frames else len(found)
    keys = ("rgb", "hha" if args.deliver_hha else "depth", "event", "lidar", "label")
    period_ns = int(round(1e9 / args.fps))

    def frames():
        unknown: dict[int, int] = {}
        for k, where in enumerate(found[:total]):
            frame = read_deliver_frame(where, keys)
            for raw_id, pixels in frame["unknown_labels"].items():
                unknown[raw_id] = unknown.get(raw_id, 0) + pixels
            h, w = frame["rgb"].shape[:2]
            frame["camera"] = deliver_camera(w, h)
            frame["stamp_ns"] = SequenceConfig.start_ns + k * period_ns
            yield frame
        if unknown:
            log.warning("raw label ids above 25 (pixels per id) %s are not DELIVER classes: written as ignore (255)",
                        dict(sorted(unknown.items())))

    return frames(), total


def run(args) -> int:
    from tqdm import tqdm

    if Path(args.out).exists():
        log.error("%s exists; choose a new bag directory", args.out)
        return 1
    try:
        frames, total = _deliver_frames(args) if args.deliver else _synthetic_frames(args)
        # DELIVER's event and LiDAR renderings (and hha/) are ready images: the bag says which encoding.
        declared = ({"event": "carla-dvs-v1", "lidar": "deliver-lidar-v1",
                     **({"depth": "deliver-hha-v1"} if args.deliver_hha else {})} if args.deliver else None)
        count = write_bag(tqdm(frames, total=total, unit="frame", desc="make-bag"), args.out, args.storage,
                          image_encodings=declared)
    except (ValueError, FileNotFoundError) as exc:  # bad condition/failure names, not a DELIVER folder
        log.error("make-bag: %s", exc)
        return 2
    log.info("wrote %d messages to %s (%s)", count, args.out, args.storage)
    return 0
