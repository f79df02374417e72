"""Start the sam_mmseg node (and optionally RViz) with the shipped Fast DDS large-data profile.

    ros2 launch sam_mmseg_ros sam_mmseg.launch.py checkpoint:=/path/model.pt rgb:=/camera/image_raw
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from sam_mmseg_ros.contracts import INPUT_TOPICS
from sam_mmseg_ros.ros.dds import PROFILE_VARIABLE, dds_environment

PACKAGE = "sam_mmseg_ros"
OVERRIDES = ("backend", "checkpoint", "engine_path")  # empty: keep the params file's value


def _node(context):
    value = {name: LaunchConfiguration(name).perform(context) for name in (*OVERRIDES, "use_sim_time")}
    overrides = {name: value[name] for name in OVERRIDES if value[name]}
    overrides["use_sim_time"] = value["use_sim_time"].lower() == "true"
    remappings = [(topic, LaunchConfiguration(key).perform(context)) for key, topic in INPUT_TOPICS.items()]
    return [Node(package=PACKAGE, executable="sam_mmseg_node", name="sam_mmseg",
                 namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
                 parameters=[LaunchConfiguration("params_file"), overrides], remappings=remappings)]


def generate_launch_description():
    share = FindPackageShare(PACKAGE).find(PACKAGE)
    dds = dds_environment()
    args = [
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("params_file", default_value=f"{share}/config/sam_mmseg.yaml"),
        DeclareLaunchArgument("checkpoint", default_value="", description="model weights (.pt)"),
        DeclareLaunchArgument("engine_path", default_value="", description="TensorRT engine"),
        DeclareLaunchArgument("backend", default_value="", description="auto|tensorrt|onnxruntime|torch"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("rviz", default_value="false"),
        # One remap argument per input; the default keeps the node's own topic.
        *[DeclareLaunchArgument(key, default_value=topic, description=f"topic for {topic}")
          for key, topic in INPUT_TOPICS.items()],
    ]
    return LaunchDescription([
        *args,
        SetEnvironmentVariable(PROFILE_VARIABLE, dds[PROFILE_VARIABLE]),
        SetEnvironmentVariable("RMW_IMPLEMENTATION", dds["RMW_IMPLEMENTATION"]),
        OpaqueFunction(function=_node),
        Node(package="rviz2", executable="rviz2", arguments=["-d", f"{share}/config/sam_mmseg.rviz"],
             parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
