"""Which topic of a recording is which input of the node, and in which transport.

Other people's bags name topics after their drivers (`/camera/image_raw/compressed`,
`/event_camera/events`), not after the node's inputs. The topic map says which is which: the
node's `topics.*` parameters (so one parameter file serves the node, `eval` and `replay`), then
`--topic KIND=TOPIC` on the command line, else the node's own input topics as `make-bag` writes
them. Like image_transport, a camera or depth topic is its base name; the transport's topic
(`<base>/compressed`, `<base>/compressedDepth`) is taken when the bag has that one instead, and the
recorded message type then sets the transport (and `event_input`) the node has to run with.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from sam_mmseg_ros.contracts import BAG_TOPICS
from sam_mmseg_ros.node_settings import INPUT_KINDS, TRANSPORT_SUFFIX, NodeSettings

# Recorded message type -> the parameter value the node needs to subscribe to it, per kind.
_TRANSPORTS = {
    "rgb": ("rgb_transport", {"sensor_msgs/msg/Image": "raw", "sensor_msgs/msg/CompressedImage": "compressed"}),
    "depth": ("depth_transport", {"sensor_msgs/msg/Image": "raw",
                                  "sensor_msgs/msg/CompressedImage": "compressedDepth"}),
    "event": ("event_input", {"sensor_msgs/msg/PointCloud2": "cloud", "sensor_msgs/msg/Image": "image",
                              "event_camera_msgs/msg/EventPacket": "packet"}),
    "lidar": ("lidar_input", {"sensor_msgs/msg/PointCloud2": "cloud", "sensor_msgs/msg/Image": "image"}),
}


@dataclass
class BagTopics:
    """The node's inputs found in one bag."""

    topics: dict[str, str] = field(default_factory=dict)  # kind -> bag topic
    parameters: dict[str, str] = field(default_factory=dict)  # what the recorded types need
    overrides: dict[str, str] = field(default_factory=dict)  # those that differ from the settings
    notes: list[str] = field(default_factory=list)


def topic_item(text: str) -> tuple[str, str]:
    """'rgb=/camera/image_raw' -> ('rgb', '/camera/image_raw'), for argparse `type=`."""
    kind, sep, topic = text.partition("=")
    if not sep or kind not in INPUT_KINDS or not topic.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected KIND=/topic with KIND one of {', '.join(INPUT_KINDS)}, "
                                         f"got '{text}'")
    return kind, topic


def parse_topic_map(items: list[tuple[str, str]] | None) -> dict[str, str]:
    """The `--topic` arguments as {kind: topic} (a later one for the same kind wins)."""
    return dict(items or ())


def add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", action="append", metavar="KIND=TOPIC", type=topic_item,
                        help=f"which bag topic is which input ({', '.join(INPUT_KINDS)}); camera and depth "
                             "topics by their base name, their /compressed or /compressedDepth topic is found. "
                             "Default: the topics.* parameters of --params-file, else the node's own topics")


def find_bag_topics(recorded: dict[str, str], settings: NodeSettings,
                    topic_map: dict[str, str] | None = None) -> BagTopics:
    """Map the node's inputs onto a bag's topics (`recorded`: topic -> msgtype)."""
    found = BagTopics()
    for kind in INPUT_KINDS:
        base = (topic_map or {}).get(kind) or settings.topics.get(kind) or BAG_TOPICS[kind]
        preferred = TRANSPORT_SUFFIX[settings.transport(kind)]
        candidates = [base + preferred, base, *(base + s for s in TRANSPORT_SUFFIX.values() if s)]
        topic = next((t for t in dict.fromkeys(candidates) if t in recorded), None)
        if topic is None:
            continue
        found.topics[kind] = topic
        if kind in _TRANSPORTS:
            parameter, by_type = _TRANSPORTS[kind]
            value = by_type.get(recorded[topic])
            if value is None:
                found.notes.append(f"{topic} holds {recorded[topic]}, which the node cannot take as {kind}")
                del found.topics[kind]
                continue
            found.parameters[parameter] = value
            if value != settings.values.get(parameter):
                found.overrides[parameter] = value
                found.notes.append(f"{kind}: {topic} is {recorded[topic]}, so {parameter}={value}")
    return found


def describe_missing_camera(recorded: dict[str, str], settings: NodeSettings, topic_map: dict[str, str]) -> str:
    base = topic_map.get("rgb") or settings.topics.get("rgb") or BAG_TOPICS["rgb"]
    seen = ", ".join(f"{t} ({m})" for t, m in sorted(recorded.items())) or "none"
    return (f"no camera frames: the camera topic {base} (or {base}/compressed) is not in the bag; map it with "
            f"--topic rgb=TOPIC or the topics.rgb parameter. Topics in the bag: {seen}")
