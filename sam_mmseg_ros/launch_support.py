"""What the launch files decide before they start any process, kept free of ROS and of `launch`
so it is unit tested where neither is installed: launch-argument booleans, the node's namespace,
where the `sam-mmseg` tool and rviz2 are, and the RViz config for a namespace.

Deciding it all first matters: a launch that raises after a process action ran exits with that
process still running (launch starts it after its own shutdown), so a launch file calls these
before it returns any process action.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from sam_mmseg_ros.contracts import NODE_NAME

PACKAGE = "sam_mmseg_ros"
TOOL = "sam-mmseg"
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_NAMESPACE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def launch_bool(name: str, text: str) -> bool:
    """A boolean launch argument: true/false/1/0 (any case); anything else is an error, never a
    silent False."""
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"launch argument {name}:={text!r} must be true, false, 1 or 0") from None


def node_namespace(text: str) -> str:
    """The namespace a node gets from `namespace:=text`: absolute, without a trailing slash, ''
    for none ('veh1', '/veh1' and '/veh1/' are all '/veh1'). Invalid names fail here, with the
    argument named, instead of in the node after it started."""
    tokens = text.strip().strip("/")
    if not tokens:
        return ""
    for token in tokens.split("/"):
        if not _NAMESPACE_TOKEN.fullmatch(token):
            raise ValueError(f"launch argument namespace:={text!r} is not a ROS namespace: each part "
                             "must start with a letter or '_' and hold only letters, digits and '_'")
    return "/" + tokens


def package_executable(package: str, name: str) -> Path | None:
    """`<prefix>/lib/<package>/<name>` of a package in the ament index (AMENT_PREFIX_PATH): what
    `ros2 run` and launch_ros's Node run. None when the package or the executable is not there."""
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:  # a pip install without ROS 2's Python packages
        return None
    try:
        path = Path(get_package_prefix(package)) / "lib" / package / name
    except (LookupError, OSError, ValueError):  # not indexed, AMENT_PREFIX_PATH unset, bad name
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def tool_command() -> list[str]:
    """The command that runs the `sam-mmseg` tool: the ament-indexed install's
    lib/sam_mmseg_ros/sam-mmseg (colcon puts it there, not on PATH), else the one on PATH (pip
    install), else this Python running the CLI module (scripts not on PATH, a source checkout)."""
    found = package_executable(PACKAGE, TOOL) or shutil.which(TOOL)
    return [str(found)] if found else [sys.executable, "-m", "sam_mmseg_ros.cli"]


def render_rviz_config(text: str, namespace: str) -> str:
    """The shipped RViz config (its topics are the node's outputs under no namespace,
    /sam_mmseg/...) with every topic moved under `namespace` (as `node_namespace` returns it)."""
    return re.sub(rf"(?m)^(\s*Value: )/{NODE_NAME}/", rf"\g<1>{namespace}/{NODE_NAME}/", text)


def rviz_config(namespace: str, template: str | os.PathLike) -> Path:
    """An RViz config file whose displays show the node in `namespace`: the template itself for
    no namespace, else a rendered copy in the temp folder (one file per namespace, replaced
    atomically, so concurrent launches never read half a file)."""
    if not namespace:
        return Path(template)
    target = Path(tempfile.gettempdir()) / f"{NODE_NAME}{namespace.replace('/', '__')}.rviz"
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_text(render_rviz_config(Path(template).read_text(), namespace))
    os.replace(partial, target)
    return target
