"""Publish or count large rgb8 images over DDS, to test the Fast DDS large-data profile.

    python dds_image_probe.py publish --count 30 --rate 10 --size 1024
    python dds_image_probe.py subscribe --size 1024

Both use best-effort QoS, the way camera drivers publish. The publisher waits until the
subscriber is matched, so what is measured is delivery, not discovery. Each image carries its
sequence number in every pixel; the subscriber counts only complete, intact images until
SIGINT, then prints `RECEIVED <n>`.
"""

import argparse
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from sam_mmseg_ros.decoders.image import image_to_numpy
from sam_mmseg_ros.ros.messages import numpy_to_image

TOPIC = "dds_probe/image"
QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)


def publish(node, args) -> None:
    pub = node.create_publisher(Image, TOPIC, QOS)
    deadline = time.monotonic() + args.match_timeout
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        raise SystemExit("no subscriber matched")
    print("MATCHED", flush=True)
    image = np.empty((args.size, args.size, 3), np.uint8)
    period = 1.0 / args.rate
    start = time.monotonic()
    for seq in range(args.count):
        image.fill(seq % 256)
        pub.publish(numpy_to_image(image, "rgb8", stamp_ns=time.time_ns(), frame_id=str(seq)))
        time.sleep(max(0.0, start + (seq + 1) * period - time.monotonic()))
    time.sleep(0.5)  # let the last samples leave before the participant goes away
    print(f"PUBLISHED {args.count}", flush=True)


def subscribe(node, args) -> None:
    received = set()

    def on_image(msg):
        array = image_to_numpy(msg).array
        seq = int(msg.header.frame_id)
        if array.shape == (args.size, args.size, 3) and (array == seq % 256).all():
            received.add(seq)

    node.create_subscription(Image, TOPIC, on_image, QOS)
    print("READY", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print(f"RECEIVED {len(received)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("publish", "subscribe"))
    parser.add_argument("--size", type=int, default=1024, help="image width and height")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10.0, help="Hz")
    parser.add_argument("--match-timeout", type=float, default=20.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node(f"dds_probe_{args.mode}")
    try:
        (publish if args.mode == "publish" else subscribe)(node, args)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
