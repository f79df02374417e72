"""Helpers every decoder shares: stamps, the message byte buffer, host byte order."""

from __future__ import annotations

import sys

import numpy as np

NS_PER_S = 1_000_000_000
HOST_IS_BIGENDIAN = sys.byteorder == "big"


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (or anything with sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def message_bytes(data) -> np.ndarray:
    """A message's byte buffer as a uint8 array, without copying (bytes, array.array, ndarray)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def host_order(arr: np.ndarray) -> np.ndarray:
    """`arr` in host byte order: a view when it already is, else one byteswapping copy."""
    native = arr.dtype.newbyteorder("=")
    if arr.dtype == native:
        return arr
    return arr.astype(native)
