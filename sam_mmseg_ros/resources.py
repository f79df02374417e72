"""Where the package's shipped config files are, however it was installed."""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

PACKAGE = "sam_mmseg_ros"


def _candidates(name: str) -> list[Path]:
    """The colcon install's share dir (ament index), then the source tree (a checkout or an editable
    install), then a pip install's data files, which setup.py's data_files put under <prefix>/share
    (<user base>/share for `pip install --user`)."""
    found = []
    try:
        from ament_index_python.packages import get_package_share_directory

        try:
            found.append(Path(get_package_share_directory(PACKAGE)) / "config" / name)
        except (LookupError, OSError):  # not in the ament index, or AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    found.append(Path(__file__).resolve().parents[1] / "config" / name)
    for prefix in dict.fromkeys([sysconfig.get_path("data"), sys.prefix, site.getuserbase()]):
        found.append(Path(prefix) / "share" / PACKAGE / "config" / name)
    return found


def config_file(name: str) -> Path:
    """Absolute path of the shipped `config/<name>`."""
    candidates = _candidates(name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found; looked in: " + ", ".join(map(str, candidates)))
