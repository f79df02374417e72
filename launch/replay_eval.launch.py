"""Replay a rosbag2 with /clock into the sam_mmseg node (sim time), RViz optional.

    ros2 launch sam_mmseg_ros replay_eval.launch.py bag:=/data/drive_01 checkpoint:=/path/model.pt
"""

from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    RegisterEventHandler,
    SetEnvironmentVariable,
    Shutdown,
)
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from sam_mmseg_ros.launch_support import tool_command
from sam_mmseg_ros.ros.dds import PROFILE_VARIABLE, dds_environment
from sam_mmseg_ros.runtime import MODEL_READY

PACKAGE = "sam_mmseg_ros"
READY = MODEL_READY.encode()  # the node's log line once its backend is loaded and warmed up


def start_when_node_ready(action) -> RegisterEventHandler:
    """Run `action` once, when the node logs that its model is ready: a bag replayed while the model
    still loads (or a TensorRT engine builds) would go by unsegmented."""
    started = []

    def on_output(event):
        if not started and READY in event.text:
            started.append(True)
            return action
        return None

    return RegisterEventHandler(OnProcessIO(on_stdout=on_output, on_stderr=on_output))


def after_replay(event, context):
    """A failed replay ends the launch (the node would idle forever); a finished one leaves the node
    and RViz up to look at."""
    if event.returncode != 0:
        return Shutdown(reason=f"the replay failed (exit code {event.returncode})")
    return LogInfo(msg="replay finished; the node keeps running (Ctrl-C to stop)")


def replay_action() -> ExecuteProcess:
    """`sam-mmseg replay`, found where this install put it, publishing the bag with its original
    timing and /clock over the same Fast DDS profile as the node."""
    return ExecuteProcess(cmd=[*tool_command(), "replay", LaunchConfiguration("bag"), "--rate",
                               LaunchConfiguration("rate")], name="replay", output="screen")


def generate_launch_description():
    share = FindPackageShare(PACKAGE).find(PACKAGE)
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(f"{share}/launch/sam_mmseg.launch.py"),
        launch_arguments={"use_sim_time": "true", "rviz": LaunchConfiguration("rviz"),
                          "checkpoint": LaunchConfiguration("checkpoint"),
                          "backend": LaunchConfiguration("backend")}.items())
    dds = dds_environment()
    replay = replay_action()
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder to replay"),
        DeclareLaunchArgument("rate", default_value="1.0"),
        DeclareLaunchArgument("checkpoint", default_value=""),
        DeclareLaunchArgument("backend", default_value=""),
        DeclareLaunchArgument("rviz", default_value="false", description="true|false|1|0"),
        SetEnvironmentVariable(PROFILE_VARIABLE, dds[PROFILE_VARIABLE]),
        SetEnvironmentVariable("RMW_IMPLEMENTATION", dds["RMW_IMPLEMENTATION"]),
        node,
        start_when_node_ready(replay),
        RegisterEventHandler(OnProcessExit(target_action=replay, on_exit=after_replay)),
    ])
