"""Start the sam_mmseg node (and optionally RViz) with the shipped Fast DDS large-data profile.

    ros2 launch sam_mmseg_ros sam_mmseg.launch.py checkpoint:=/path/model.pt rgb:=/camera/image_raw
"""

import launch.logging
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from sam_mmseg_ros.contracts import INPUT_TOPICS
from sam_mmseg_ros.launch_support import launch_bool, node_namespace, package_executable, rviz_config
from sam_mmseg_ros.ros.dds import PROFILE_VARIABLE, dds_environment

PACKAGE = "sam_mmseg_ros"
OVERRIDES = ("backend", "checkpoint", "engine_path")  # empty: keep the params file's value


def _node_and_viewer(context, share):
    """The node and RViz, with every argument checked and rviz2 looked up before either starts."""
    value = {name: LaunchConfiguration(name).perform(context)
             for name in (*OVERRIDES, "use_sim_time", "rviz", "namespace")}
    use_sim_time = launch_bool("use_sim_time", value["use_sim_time"])
    show_rviz = launch_bool("rviz", value["rviz"])
    namespace = node_namespace(value["namespace"])
    overrides = {name: value[name] for name in OVERRIDES if value[name]}
    overrides["use_sim_time"] = use_sim_time
    remappings = [(topic, LaunchConfiguration(key).perform(context)) for key, topic in INPUT_TOPICS.items()]
    actions = [Node(package=PACKAGE, executable="sam_mmseg_node", name="sam_mmseg", namespace=namespace or None,
                    output="screen", emulate_tty=True, remappings=remappings,
                    parameters=[LaunchConfiguration("params_file"), overrides],
                    on_exit=Shutdown(reason="the sam_mmseg node exited"))]
    if show_rviz and package_executable("rviz2", "rviz2") is None:
        launch.logging.get_logger("sam_mmseg.launch").warning(
            f"rviz:={value['rviz']} but rviz2 is not installed (no rviz2 package in the ament index): "
            "going on without RViz")
    elif show_rviz:
        config = rviz_config(namespace, f"{share}/config/sam_mmseg.rviz")
        actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", str(config)],
                            parameters=[{"use_sim_time": use_sim_time}]))
    return actions


def generate_launch_description():
    share = FindPackageShare(PACKAGE).find(PACKAGE)
    dds = dds_environment()
    args = [
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("params_file", default_value=f"{share}/config/sam_mmseg.yaml"),
        DeclareLaunchArgument("checkpoint", default_value="", description="model weights (.pt)"),
        DeclareLaunchArgument("engine_path", default_value="", description="TensorRT engine"),
        DeclareLaunchArgument("backend", default_value="", description="auto|tensorrt|onnxruntime|torch"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="true|false|1|0"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true|false|1|0; without rviz2 installed: a warning, no RViz"),
        # One remap argument per input; the default keeps the node's own topic.
        *[DeclareLaunchArgument(key, default_value=topic, description=f"topic for {topic}")
          for key, topic in INPUT_TOPICS.items()],
    ]
    return LaunchDescription([
        *args,
        SetEnvironmentVariable(PROFILE_VARIABLE, dds[PROFILE_VARIABLE]),
        SetEnvironmentVariable("RMW_IMPLEMENTATION", dds["RMW_IMPLEMENTATION"]),
        OpaqueFunction(function=_node_and_viewer, kwargs={"share": share}),
    ])
