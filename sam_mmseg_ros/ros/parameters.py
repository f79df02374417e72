"""ROS parameter descriptors from the settings table (`sam_mmseg_ros.settings`).

Declared from the table, `ros2 param describe` shows the same text and range as the README and
the YAML; rclpy enforces the type, read-only flag and scalar ranges, and the node checks the
rest (arrays, choices, consistency) by building its settings through the table's rules.
"""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from sam_mmseg_ros.settings import Setting

_TYPES = {"bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "float": Parameter.Type.DOUBLE,
          "str": Parameter.Type.STRING, "int_array": Parameter.Type.INTEGER_ARRAY,
          "float_array": Parameter.Type.DOUBLE_ARRAY}


def declared_default(setting: Setting):
    """What `declare_parameter` takes: the default, or the type alone for an unset optional one."""
    return _TYPES[setting.kind] if setting.optional else setting.default


def descriptor(setting: Setting) -> ParameterDescriptor:
    text = setting.description
    if setting.choices:
        text += f" (one of: {', '.join(setting.choices)})"
    elif setting.low is not None and setting.kind.endswith("array"):
        text += f" (each {setting.low:g} to {setting.high:g})"
    d = ParameterDescriptor(description=text, read_only=not setting.runtime)
    if setting.kind == "float":
        d.floating_point_range = [FloatingPointRange(from_value=float(setting.low), to_value=float(setting.high))]
    elif setting.kind == "int":
        d.integer_range = [IntegerRange(from_value=int(setting.low), to_value=int(setting.high), step=1)]
    return d
