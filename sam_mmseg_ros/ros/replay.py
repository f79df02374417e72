"""`sam-mmseg replay BAG`: publish a rosbag2 over DDS with its timing, for machines without `ros2 bag`.

Messages go out as the raw CDR bytes stored in the bag (rclpy's `Publisher.publish` accepts
serialized `bytes`), so nothing is deserialized or converted on the way. Publishers take their
types from the bag's topic list; /tf_static (and any topic recorded as transient-local) is
published latched so a node started later still gets the LiDAR extrinsic. /clock carries the bag
time while playing, for nodes run with use_sim_time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
import time
from pathlib import Path

from sam_mmseg_ros.contracts import BAG_TOPICS
from sam_mmseg_ros.data.bag_reader import BagError, BagReport, bag_topics
from sam_mmseg_ros.data.bags import TF_STATIC_TOPIC, read_raw

log = logging.getLogger(__name__)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class (ImportError when not installed).

    The same lookup as rosidl_runtime_py's get_message, which is not always installed."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except AttributeError as exc:
        raise ImportError(f"{package}.{kind} has no {name}") from exc


def _qos(topic: str, recorded: list, reliable: bool):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    latched = topic == TF_STATIC_TOPIC or any(getattr(q.durability, "name", "") == "TRANSIENT_LOCAL"
                                              for q in recorded)
    if latched:
        return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    if reliable:  # a reliable publisher serves reliable and best-effort subscribers alike
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_sensor_data


def _sleep_until(deadline: float, tick, clock_period: float | None, stop_event: threading.Event):
    """Sleep until the monotonic `deadline`, calling `tick()` every clock period meanwhile."""
    while not stop_event.is_set():
        now = time.monotonic()
        if now >= deadline:
            return
        if clock_period is None:
            stop_event.wait(deadline - now)
            continue
        tick()
        stop_event.wait(min(clock_period, deadline - now))


def input_remapping(path: str | Path, params_file: str | Path | None = None,
                    topic_map: dict[str, str] | None = None, node_name: str = "/sam_mmseg") -> dict[str, str]:
    """Bag topic -> the topic the node subscribes to for that input: the topic map
    (`topic_map.find_bag_topics`: `--topic`, the parameter file's topics.*, else the node's own
    topics) tells which bag topic is which input; the node started with the same parameter file
    listens on `NodeSettings.input_topic`, in the transport the recorded type needs. Topics that are
    already where the node listens map to themselves."""
    from sam_mmseg_ros.node_settings import NodeSettings
    from sam_mmseg_ros.topic_map import find_bag_topics

    recorded = {topic: msgtype for topic, (msgtype, _) in bag_topics(path).items()}
    settings = NodeSettings.from_file(params_file)
    found = find_bag_topics(recorded, settings, topic_map)
    for parameter, value in found.overrides.items():
        log.warning("the bag needs the node to run with %s:=%s (it has %s)", parameter, value,
                    settings.values[parameter])
    needed = NodeSettings.from_file(params_file, found.overrides)
    return {topic: needed.input_topic(kind, node_name) for kind, topic in found.topics.items()}


def replay_bag(path: str | Path, rate: float = 1.0, loop: bool = False, clock: bool = True, node=None,
               stop_event: threading.Event | None = None, topics: list[str] | None = None,
               reliable: bool = True, clock_hz: float = 100.0, discovery_wait_s: float = 5.0,
               remap: dict[str, str] | None = None) -> int:
    """Publish the bag's messages with their recorded spacing divided by `rate`; returns how many.

    `remap` (bag topic -> topic, see `input_remapping`) publishes the node's inputs where the node
    listens; by default they go out under the recorded names, as `make-bag` writes the node's own.
    Without `node` a private rclpy context and node are created (the Fast DDS large-data profile
    is put into the environment first, since it is read when the participant is created) and
    destroyed at the end. Before playing, waits up to `discovery_wait_s` for every input of the
    node in the bag to have a subscriber, so the first messages are not lost to discovery.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    stop_event = stop_event or threading.Event()
    context = None
    if node is None:
        from sam_mmseg_ros.ros.dds import private_node

        node, context = private_node("sam_mmseg_replay")
    try:
        return _play(node, Path(path), rate, loop, clock, stop_event, topics, reliable, clock_hz,
                     discovery_wait_s, remap)
    finally:
        if context is not None:
            node.destroy_node()
            context.try_shutdown()


def _play(node, path, rate, loop, clock, stop_event, topics, reliable, clock_hz, discovery_wait_s, remap) -> int:
    remap = remap or {}
    publishers, skipped = {}, []
    for topic, (msgtype, recorded) in bag_topics(path).items():
        if topics and topic not in topics:
            continue
        try:
            cls = message_class(msgtype)
        except ImportError:
            skipped.append(f"{topic} ({msgtype})")
            continue
        publishers[topic] = node.create_publisher(cls, remap.get(topic, topic), _qos(topic, recorded, reliable))
    if skipped:
        log.warning("skipping topics whose message types are not installed: %s", ", ".join(skipped))
    if not publishers:
        raise ValueError(f"nothing to replay from {path} (topics: {topics or 'all'})")
    for source, target in remap.items():
        if source in publishers and source != target:
            log.info("publishing %s on %s", source, target)

    tick = None
    clock_period = None
    if clock:
        from builtin_interfaces.msg import Time
        from rclpy.qos import QoSProfile
        from rosgraph_msgs.msg import Clock

        clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        clock_period = 1.0 / clock_hz
    # Wait for the node's inputs to be matched, not for topics nobody may listen to (ground truth).
    inputs = set(remap) if remap else set(BAG_TOPICS.values())
    awaited = [p for t, p in publishers.items() if t in inputs] or list(publishers.values())
    deadline = time.monotonic() + discovery_wait_s
    while time.monotonic() < deadline and not stop_event.is_set():
        if all(p.get_subscription_count() for p in awaited):
            break
        time.sleep(0.02)
    else:
        if discovery_wait_s > 0:
            log.info("playing although not every input topic has a subscriber after %.1f s", discovery_wait_s)

    count = 0
    damage = BagReport()  # damaged messages are skipped (never published), logged once, counted
    while not stop_event.is_set():
        wall_start = bag_start = None
        for topic, stamp, _, raw in read_raw(path, list(publishers), report=damage, check_cdr=True):
            if bag_start is None:
                wall_start, bag_start = time.monotonic(), stamp
            if clock:
                def tick(wall_start=wall_start, bag_start=bag_start):
                    bag_now = bag_start + int((time.monotonic() - wall_start) * rate * 1e9)
                    clock_pub.publish(Clock(clock=Time(sec=bag_now // 10**9, nanosec=bag_now % 10**9)))

            _sleep_until(wall_start + (stamp - bag_start) / rate / 1e9, tick, clock_period, stop_event)
            if stop_event.is_set():
                break
            publishers[topic].publish(raw)
            count += 1
        if not loop or bag_start is None:
            break
    if damage:
        log.warning("%s is damaged: %d messages were not published (%s)", path, damage.total_skipped,
                    "; ".join(damage.notes()))
    return count


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Publish a rosbag2 (mcap or sqlite3) over DDS with its original timing, "
                          "latched /tf_static and /clock; no `ros2 bag` needed.")
    parser.add_argument("bag", help="rosbag2 directory")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    parser.add_argument("--clock", action=argparse.BooleanOptionalAction, default=True,
                        help="publish /clock (bag time) while playing")
    parser.add_argument("--clock-hz", type=float, default=100.0)
    parser.add_argument("--start-paused", action="store_true", help="wait for Enter before playing")
    parser.add_argument("--topics", nargs="+", help="only these topics")
    parser.add_argument("--best-effort", action="store_true",
                        help="sensor-data QoS (best effort) instead of reliable publishers")
    parser.add_argument("--discovery-wait", type=float, default=5.0,
                        help="seconds to wait for subscribers before playing")
    from sam_mmseg_ros.topic_map import add_topic_arguments

    add_topic_arguments(parser)
    parser.add_argument("--params-file", default=None,
                        help="the node's parameter file: its topics.* and transports say where the node listens")
    parser.add_argument("--node", default="/sam_mmseg", help="the node's name (with namespace) for ~/input topics")


def run(args) -> int:
    if args.start_paused:
        input("press Enter to start playing ")
    from sam_mmseg_ros.topic_map import parse_topic_map

    stop = threading.Event()
    try:
        remap = input_remapping(args.bag, args.params_file, parse_topic_map(args.topic), args.node)
        count = replay_bag(args.bag, rate=args.rate, loop=args.loop, clock=args.clock, stop_event=stop,
                           topics=args.topics, reliable=not args.best_effort, clock_hz=args.clock_hz,
                           discovery_wait_s=args.discovery_wait, remap=remap)
    except KeyboardInterrupt:
        stop.set()
        log.info("stopped")
        return 0
    except (FileNotFoundError, BagError) as exc:  # no bag there, or nothing readable: say so, no traceback
        log.error("cannot replay: %s", exc)
        return 1
    log.info("published %d messages from %s", count, args.bag)
    return 0
