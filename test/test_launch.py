"""Launch files: what they decide before starting anything (sam_mmseg_ros.launch_support, ROS-free,
tested everywhere), a static check of the files, and the real launch description wherever
launch_ros imports (CI has no launch/launch_ros wheels; the real launch was checked by hand)."""

from __future__ import annotations

import ast
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sam_mmseg_ros import launch_support
from sam_mmseg_ros.contracts import INPUT_TOPICS
from sam_mmseg_ros.launch_support import (
    launch_bool,
    node_namespace,
    package_executable,
    render_rviz_config,
    rviz_config,
    tool_command,
)

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
NODE_ARGUMENTS = {"namespace", "params_file", "checkpoint", "engine_path", "backend", "use_sim_time", "rviz",
                  *INPUT_TOPICS}


# --------------------------------------------------------------------------- launch_support


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), (" TRUE ", True),
                                         ("false", False), ("False", False), ("0", False)])
def test_launch_bool_accepts_true_false_1_0(text, value):
    assert launch_bool("use_sim_time", text) is value


@pytest.mark.parametrize("text", ["", "yes", "no", "2", "on", "treu"])
def test_launch_bool_refuses_anything_else_by_name(text):
    with pytest.raises(ValueError, match=r"use_sim_time:=.* must be true, false, 1 or 0"):
        launch_bool("use_sim_time", text)


@pytest.mark.parametrize("text, namespace", [("", ""), ("/", ""), ("veh1", "/veh1"), ("/veh1", "/veh1"),
                                             ("/veh1/", "/veh1"), ("fleet/veh_1", "/fleet/veh_1")])
def test_node_namespace_is_absolute_without_trailing_slash(text, namespace):
    assert node_namespace(text) == namespace


@pytest.mark.parametrize("text", ["1veh", "veh-1", "/a//b", "veh 1", "~/x", "{ns}"])
def test_node_namespace_refuses_what_ros_would(text):
    with pytest.raises(ValueError, match="namespace:="):
        node_namespace(text)


def _install(prefix: Path, package: str, name: str, executable: bool = True) -> Path:
    """A package the way colcon installs it: ament index marker, lib/<package>/<name>."""
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / package
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    tool = prefix / "lib" / package / name
    tool.parent.mkdir(parents=True, exist_ok=True)
    tool.write_text("#!/bin/sh\necho installed\n")
    tool.chmod(tool.stat().st_mode | (stat.S_IXUSR if executable else 0))
    return tool


@pytest.fixture
def no_tools(monkeypatch, tmp_path):
    """No ament index entries and an empty PATH."""
    pytest.importorskip("ament_index_python")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "no_prefix"))
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))
    return tmp_path


def test_tool_is_found_in_a_colcon_install_first(no_tools, monkeypatch):
    tool = _install(no_tools / "install", "sam_mmseg_ros", "sam-mmseg")
    on_path = no_tools / "bin" / "sam-mmseg"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join([str(no_tools / "other"), str(no_tools / "install")]))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert tool_command() == [str(tool)]


def test_tool_on_path_when_not_in_the_ament_index(no_tools, monkeypatch):
    on_path = no_tools / "bin" / "sam-mmseg"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert tool_command() == [str(on_path)]


def test_tool_from_this_python_when_nowhere_else(no_tools, monkeypatch):
    monkeypatch.delenv("AMENT_PREFIX_PATH")
    command = tool_command()
    assert command == [sys.executable, "-m", "sam_mmseg_ros.cli"]
    run = subprocess.run([*command, "replay", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "bag" in run.stdout


def test_tool_without_ament_index_python(no_tools, monkeypatch):
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)  # import fails
    assert package_executable("sam_mmseg_ros", "sam-mmseg") is None
    assert tool_command()[1:] == ["-m", "sam_mmseg_ros.cli"]


def test_rviz2_lookup_is_what_launch_ros_runs(no_tools, monkeypatch):
    assert package_executable("rviz2", "rviz2") is None
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(no_tools / "ros"))
    _install(no_tools / "ros", "rviz2", "rviz2", executable=False)
    assert package_executable("rviz2", "rviz2") is None  # present but not runnable
    tool = _install(no_tools / "ros", "rviz2", "rviz2")
    assert package_executable("rviz2", "rviz2") == tool


RVIZ = Path(__file__).resolve().parents[1] / "config" / "sam_mmseg.rviz"


def _topics(text: str) -> list[str]:
    displays = yaml.safe_load(text)["Visualization Manager"]["Displays"]
    return [d["Topic"]["Value"] for d in displays if "Topic" in d]


def test_shipped_rviz_config_shows_the_node_outputs():
    topics = _topics(RVIZ.read_text())
    assert len(topics) == 3 and all(t.startswith("/sam_mmseg/output/") for t in topics)


def test_rviz_config_follows_the_namespace(tmp_path):
    template = RVIZ.read_text()
    rendered = render_rviz_config(template, "/fleet/veh1")
    assert _topics(rendered) == [t.replace("/sam_mmseg/", "/fleet/veh1/sam_mmseg/") for t in _topics(template)]
    # Only the topics change.
    assert [line for line in rendered.splitlines() if "/sam_mmseg/" not in line] == \
        [line for line in template.splitlines() if "/sam_mmseg/" not in line]
    assert render_rviz_config(template, "") == template


def test_rviz_config_file_per_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_support.tempfile, "gettempdir", lambda: str(tmp_path))
    assert rviz_config("", RVIZ) == RVIZ
    path = rviz_config("/veh1", RVIZ)
    assert path.parent == tmp_path and all(t.startswith("/veh1/sam_mmseg/") for t in _topics(path.read_text()))
    assert rviz_config("/veh1", RVIZ) == path and rviz_config("/veh2", RVIZ) != path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sam_mmseg__veh1.rviz", "sam_mmseg__veh2.rviz"]


# --------------------------------------------------------------------------- launch files


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


def declared_defaults(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(), str(path))
    return {node.args[0].value: kw.value.value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
            and node.args and isinstance(node.args[0], ast.Constant)
            for kw in node.keywords if kw.arg == "default_value" and isinstance(kw.value, ast.Constant)}


def test_rviz_is_off_by_default_in_both_launch_files():
    for name in ("sam_mmseg.launch.py", "replay_eval.launch.py"):
        assert declared_defaults(LAUNCH / name)["rviz"] == "false", name


def test_replay_runs_the_tool_it_finds_not_a_bare_name():
    text = (LAUNCH / "replay_eval.launch.py").read_text()
    assert "tool_command()" in text and '"sam-mmseg"' not in text


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


def _node_actions(tmp_path, monkeypatch, **arguments):
    """What sam_mmseg.launch.py starts for `arguments`: its declarations and its OpaqueFunction run
    in a LaunchContext, as `ros2 launch` does, without starting anything."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchContext

    monkeypatch.setattr(launch_support.tempfile, "gettempdir", lambda: str(tmp_path))
    description = _load(LAUNCH / "sam_mmseg.launch.py").generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update(arguments)
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
    [decide] = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    return context, [(_text(context, a.node_package), _text(context, a.node_executable), a)
                     for a in decide.visit(context)]


def _text(context, substitutions) -> str:
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions

    return perform_substitutions(context, normalize_to_list_of_substitutions(substitutions))


def test_node_launch_description(launch_ros):
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchDescription

    description = _load(LAUNCH / "sam_mmseg.launch.py").generate_launch_description()
    assert isinstance(description, LaunchDescription)
    declared = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert NODE_ARGUMENTS <= declared
    kinds = {type(e).__name__ for e in description.entities}
    assert {"SetEnvironmentVariable", "OpaqueFunction"} <= kinds


def test_missing_rviz2_starts_the_node_alone(launch_ros, no_tools, monkeypatch):
    _, started = _node_actions(no_tools, monkeypatch, rviz="true")
    assert [(package, executable) for package, executable, _ in started] == [("sam_mmseg_ros", "sam_mmseg_node")]


def test_rviz_shows_the_namespace(launch_ros, no_tools, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(no_tools / "ros"))
    _install(no_tools / "ros", "rviz2", "rviz2")
    context, started = _node_actions(no_tools, monkeypatch, rviz="1", namespace="veh1/")
    assert [(package, executable) for package, executable, _ in started] == \
        [("sam_mmseg_ros", "sam_mmseg_node"), ("rviz2", "rviz2")]
    config = no_tools / "sam_mmseg__veh1.rviz"
    assert f"-d {config}" in " ".join(_text(context, c) for c in started[1][2].cmd)
    assert all(t.startswith("/veh1/sam_mmseg/") for t in _topics(config.read_text()))


@pytest.mark.parametrize("argument", ["use_sim_time", "rviz"])
def test_bad_boolean_fails_before_anything_starts(launch_ros, no_tools, monkeypatch, argument):
    with pytest.raises(ValueError, match=f"{argument}:='yes' must be true, false, 1 or 0"):
        _node_actions(no_tools, monkeypatch, **{argument: "yes"})


def test_replay_launch_description(launch_ros):
    from launch import LaunchContext, LaunchDescription

    module = _load(LAUNCH / "replay_eval.launch.py")
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    kinds = {type(e).__name__ for e in description.entities}
    assert {"IncludeLaunchDescription", "RegisterEventHandler"} <= kinds
    context = LaunchContext()
    context.launch_configurations.update(bag="/data/bag", rate="2.0")
    assert [_text(context, part) for part in module.replay_action().cmd] == \
        [*tool_command(), "replay", "/data/bag", "--rate", "2.0"]


def test_a_failed_replay_ends_the_launch(launch_ros):
    from launch.actions import LogInfo, Shutdown
    from launch.events.process import ProcessExited

    module = _load(LAUNCH / "replay_eval.launch.py")
    exited = {"action": None, "name": "replay", "cmd": [], "cwd": None, "env": None, "pid": 1}
    assert isinstance(module.after_replay(ProcessExited(returncode=2, **exited), None), Shutdown)
    assert isinstance(module.after_replay(ProcessExited(returncode=0, **exited), None), LogInfo)
