"""Where the shipped Fast DDS large-data profile is, and the environment that applies it.

Fast DDS reads the XML named by FASTDDS_DEFAULT_PROFILES_FILE when a process creates its first
DomainParticipant, so the variable must be set before rclpy starts: in the shell, in a launch
file (SetEnvironmentVariable), or through `dds_environment()` for subprocesses.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

PACKAGE = "sam_mmseg_ros"
PROFILE_NAME = "fastdds_large_data.xml"
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def _candidates() -> list[Path]:
    """The colcon install's share dir (ament index), then the source tree (a checkout or an editable
    install), then a pip install's data files, which setup.py's data_files put under <prefix>/share
    (<user base>/share for `pip install --user`)."""
    found = []
    try:
        from ament_index_python.packages import get_package_share_directory

        try:
            found.append(Path(get_package_share_directory(PACKAGE)) / "config" / PROFILE_NAME)
        except (LookupError, OSError):  # not in the ament index, or AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    found.append(Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME)
    for prefix in dict.fromkeys([sysconfig.get_path("data"), sys.prefix, site.getuserbase()]):
        found.append(Path(prefix) / "share" / PACKAGE / "config" / PROFILE_NAME)
    return found


def large_data_profile_path() -> str:
    """Absolute path of the shipped Fast DDS profile (SHM 32 MiB segment + UDPv4)."""
    candidates = _candidates()
    for path in candidates:
        if path.is_file():
            return str(path)
    raise FileNotFoundError(f"{PROFILE_NAME} not found; looked in: " + ", ".join(map(str, candidates)))


def dds_environment(env: dict | None = None) -> dict:
    """A copy of `env` (default: os.environ) that selects Fast DDS and the large-data profile,
    leaving a profile or RMW the user already chose untouched."""
    out = dict(os.environ if env is None else env)
    if not out.get(PROFILE_VARIABLE):
        out[PROFILE_VARIABLE] = large_data_profile_path()
    out.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return out
