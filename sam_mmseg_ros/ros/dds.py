"""Where the shipped Fast DDS large-data profile is, and the environment that applies it.

Fast DDS reads the XML named by FASTDDS_DEFAULT_PROFILES_FILE when a process creates its first
DomainParticipant, so the variable must be set before rclpy starts: in the shell, in a launch
file (SetEnvironmentVariable), or through `dds_environment()` for subprocesses.
"""

from __future__ import annotations

import os

from sam_mmseg_ros.resources import config_file

PROFILE_NAME = "fastdds_large_data.xml"
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def large_data_profile_path() -> str:
    """Absolute path of the shipped Fast DDS profile (SHM 32 MiB segment + UDPv4)."""
    return str(config_file(PROFILE_NAME))


def dds_environment(env: dict | None = None) -> dict:
    """A copy of `env` (default: os.environ) that selects Fast DDS and the large-data profile,
    leaving a profile or RMW the user already chose untouched."""
    out = dict(os.environ if env is None else env)
    if not out.get(PROFILE_VARIABLE):
        out[PROFILE_VARIABLE] = large_data_profile_path()
    out.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return out


def private_node(name: str):
    """(node, context): a node on its own rclpy context, with the large-data DDS environment set
    before the participant exists, for tools (replay, live evaluation) that may share a process
    with other rclpy users. Shut it down with `context.try_shutdown()`."""
    import rclpy

    os.environ.update(dds_environment())
    context = rclpy.Context()
    rclpy.init(context=context)
    return rclpy.create_node(name, context=context), context
