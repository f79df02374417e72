"""Launch files: a static check that runs everywhere (launch is not installable on every machine),
and the real launch description wherever launch_ros imports."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from sam_mmseg_ros.contracts import INPUT_TOPICS

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
NODE_ARGUMENTS = {"namespace", "params_file", "checkpoint", "engine_path", "backend", "use_sim_time", "rviz",
                  *INPUT_TOPICS}


def declared_literals(path: Path) -> set[str]:
    """Names given as string literals to DeclareLaunchArgument in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_launch_files_parse_and_declare_their_arguments():
    node_launch = LAUNCH / "sam_mmseg.launch.py"
    literal = declared_literals(node_launch)
    # The input remap arguments are declared in a loop over INPUT_TOPICS, so they are not literals.
    assert NODE_ARGUMENTS - set(INPUT_TOPICS) <= literal
    assert "INPUT_TOPICS.items()" in node_launch.read_text()
    assert {"bag", "rate", "checkpoint", "backend", "rviz"} <= declared_literals(LAUNCH / "replay_eval.launch.py")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def launch_ros(monkeypatch, tmp_path):
    pytest.importorskip("launch_ros")
    import launch_ros.substitutions

    # Outside a colcon install the package share is the source tree.
    monkeypatch.setattr(launch_ros.substitutions.FindPackageShare, "find",
                        lambda self, package: str(LAUNCH.parent), raising=False)
    return launch_ros


def test_node_launch_description(launch_ros):
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchDescription

    description = _load(LAUNCH / "sam_mmseg.launch.py").generate_launch_description()
    assert isinstance(description, LaunchDescription)
    declared = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert NODE_ARGUMENTS <= declared
    kinds = {type(e).__name__ for e in description.entities}
    assert {"SetEnvironmentVariable", "OpaqueFunction", "Node"} <= kinds


def test_replay_launch_description(launch_ros):
    from launch import LaunchDescription

    description = _load(LAUNCH / "replay_eval.launch.py").generate_launch_description()
    assert isinstance(description, LaunchDescription)
    kinds = {type(e).__name__ for e in description.entities}
    assert {"IncludeLaunchDescription", "ExecuteProcess"} <= kinds
