"""A rosbag2 as a vehicle's own drivers record it: the camera through image_transport's compressed
transport, depth through compressedDepth, events as event_camera_msgs/EventPacket (evt3, as
metavision_driver publishes), a LiDAR cloud, each on the driver's own topic name, plus a vendor
topic whose type the bag does not define. Ground truth goes on the package's ground-truth topic so
the bag can be scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from event_packets import evt3_words

from sam_mmseg_ros.contracts import CAMERA_RECORD_DELAY_NS, GROUND_TRUTH_TOPIC

EVENT_PACKET = "event_camera_msgs/msg/EventPacket"
EVENT_PACKET_MSG = """std_msgs/Header header
uint32 height
uint32 width
uint64 seq
uint64 time_base
string encoding
bool is_bigendian
uint8[] events
"""
TOPICS = {"rgb": "/camera/image_raw", "camera_info": "/camera/camera_info", "depth": "/camera/depth/image_raw",
          "event": "/event_camera/events", "lidar": "/ouster/points"}
VENDOR_TOPIC, VENDOR_TYPE = "/vendor/status", "vendor_msgs/msg/Status"
TOPIC_ARGS = [f"--topic={kind}={topic}" for kind, topic in TOPICS.items()]


def event_packet(builder, events, stamp_ns: int, sensor_origin_ns: int, frame_id: str):
    """One evt3 EventPacket of `events` (sorted by time), sensor time counted from `sensor_origin_ns`,
    its header stamped with the ROS time of its first event, as metavision_driver stamps it."""
    t_us = (np.asarray(events.t_ns, np.int64) - sensor_origin_ns) // 1000
    order = np.lexsort((events.x, events.polarity > 0, events.y, t_us))
    packed = {"t_us": t_us[order], "y": np.asarray(events.y)[order], "p": (events.polarity[order] > 0).astype(int),
              "x": np.asarray(events.x)[order]}
    keys = np.stack([packed[k] for k in ("t_us", "y", "p", "x")], 1)
    keep = np.ones(len(keys), bool)
    keep[1:] = np.any(keys[1:] != keys[:-1], axis=1)  # one event per pixel and microsecond
    packed = {k: v[keep] for k, v in packed.items()}
    words = evt3_words(packed) if len(keep) else np.zeros(0, np.uint16)
    first_ns = sensor_origin_ns + int(packed["t_us"][0]) * 1000 if len(keep) else stamp_ns
    return builder.t[EVENT_PACKET](builder.header(first_ns, frame_id), events.height, events.width, 0, 0, "evt3",
                                   False, words.view(np.uint8))


def write_driver_bag(frames, path: Path) -> int:
    """Write SyntheticFrames as the drivers would have recorded them; returns the message count."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer

    from sam_mmseg_ros.data.bags import _Messages, register_msg_types

    builder = _Messages()
    register_msg_types(builder.ts, {EVENT_PACKET: EVENT_PACKET_MSG})
    t = builder.t
    count = 0
    sensor_origin = frames[0].stamp_ns - 5_000_000_000  # the event camera was powered up 5 s earlier
    with Writer(Path(path), version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}

        def write(topic, msgtype, msg, stamp):
            nonlocal count
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=builder.ts)
            writer.write(connections[topic], stamp, builder.ts.serialize_cdr(msg, msgtype))
            count += 1

        vendor = writer.add_connection(VENDOR_TOPIC, VENDOR_TYPE, msgdef="", rihs01="RIHS01_" + "0" * 64)
        for frame in frames:
            stamp, camera = frame.stamp_ns, frame.camera
            fid = camera.frame_id
            write(TOPICS["camera_info"], "sensor_msgs/msg/CameraInfo", builder.camera_info(camera, stamp), stamp)
            depth = frame.depth.astype(np.float32)
            quant_a = np.float32(100.0 * 101.0)
            quant_b = np.float32(1.0 - quant_a / np.float32(10.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                inverse = np.where((depth > 0) & (depth < 10.0), quant_a / depth + quant_b, 0).astype(np.uint16)
            config = np.array([(0, quant_a, quant_b)], [("f", "<i4"), ("a", "<f4"), ("b", "<f4")]).tobytes()
            payload = np.frombuffer(config + cv2.imencode(".png", inverse)[1].tobytes(), np.uint8)
            write(TOPICS["depth"] + "/compressedDepth", "sensor_msgs/msg/CompressedImage",
                  t["sensor_msgs/msg/CompressedImage"](builder.header(stamp, fid), "32FC1; compressedDepth png", payload),
                  stamp)
            write(TOPICS["event"], EVENT_PACKET, event_packet(builder, frame.events, stamp, sensor_origin, fid), stamp)
            write(TOPICS["lidar"], "sensor_msgs/msg/PointCloud2", builder.lidar(frame.lidar, stamp), stamp)
            writer.write(vendor, stamp, b"\x00\x01\x00\x00\x2a\x00\x00\x00")
            count += 1
            jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame.rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
            write(TOPICS["rgb"] + "/compressed", "sensor_msgs/msg/CompressedImage",
                  t["sensor_msgs/msg/CompressedImage"](builder.header(stamp, fid), "rgb8; jpeg compressed bgr8",
                                                        jpeg.reshape(-1)), stamp + CAMERA_RECORD_DELAY_NS)
            write(GROUND_TRUTH_TOPIC, "sensor_msgs/msg/Image", builder.image(frame.labels, "mono8", stamp, fid),
                  stamp + CAMERA_RECORD_DELAY_NS)
    return count
