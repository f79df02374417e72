"""Message decoders: ROS messages -> the package's numpy data types, without ROS.

Decoders only read attributes, so they accept rclpy messages and `rosbags` message dataclasses
alike (same field names; `data` is array.array / bytes in rclpy and a uint8 ndarray in rosbags):
the live node and offline bag evaluation decode with the same code. Decoded arrays are views of
the message buffer whenever the layout allows it (no copy), and are marked read-only. Anything a
sensor could get wrong raises `contracts.InputError`. Building messages is `ros.messages`' job.
"""
