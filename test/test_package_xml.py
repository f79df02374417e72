"""`rosdep install --from-paths src --ignore-src` works for this package: every dependency in
package.xml is a key in rosdistro's rosdep database or a ROS package of kilted and jazzy (an
unknown key makes rosdep stop with "Cannot locate rosdep definition" and install nothing), and
each Python package setup.py needs reaches a ROS machine one way only: from apt through its
rosdep key, or from the pip step (requirements-ros.txt). Never both: a pip copy of numpy or
OpenCV in the venv would shadow the apt one that ROS's own modules are built against.

The names below are facts read from ros/rosdistro at ROSDISTRO_COMMIT: rosdep/base.yaml,
rosdep/python.yaml, kilted/distribution.yaml and jazzy/distribution.yaml. To add a dependency,
look it up there and add it here; with a rosdistro checkout, `ROSDISTRO_DIR=<checkout> pytest
test/test_package_xml.py` re-checks this snapshot against the files.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ROSDISTRO_COMMIT = "8468e88ccd523427f9131e39d2af0938f1c298b2"  # ros/rosdistro, 2026-08-22
DISTRIBUTIONS = ("kilted", "jazzy")  # both on Ubuntu 24.04 (noble)
PLATFORM = ("ubuntu", "noble")

ROSDEP_KEYS = {
    # key: (installer, packages) on Ubuntu 24.04
    "python3-numpy": ("apt", ("python3-numpy",)),
    "python3-opencv": ("apt", ("python3-opencv",)),
    "python3-yaml": ("apt", ("python3-yaml",)),
    "python3-tqdm": ("apt", ("python3-tqdm",)),
    "python3-pil": ("apt", ("python3-pil",)),
    "python3-matplotlib": ("apt", ("python3-matplotlib",)),
    "python3-setuptools": ("apt", ("python3-setuptools",)),
    "python3-pytest": ("apt", ("python3-pytest",)),
    "python3-pytorch-pip": ("pip", ("torch", "torchvision")),
    "python3-onnxruntime-pip": ("pip", ("onnxruntime",)),
    "python3-rosbags-pip": ("pip", ("rosbags",)),
}
"""rosdep keys this package relies on. Not keys (checked): python3-onnx-pip, python3-onnx,
python3-onnxscript-pip, python3-torch-pip, any opencv-python-headless key."""

ROS_PACKAGES = {
    # package: its release repository, the same in kilted and jazzy
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "rcl_interfaces",
    "rosgraph_msgs": "rcl_interfaces",
    "ament_index_python": "ament_index",
    "std_msgs": "common_interfaces",
    "sensor_msgs": "common_interfaces",
    "geometry_msgs": "common_interfaces",
    "diagnostic_msgs": "common_interfaces",
    "sensor_msgs_py": "common_interfaces",
    "event_camera_msgs": "event_camera_msgs",
    "tf2_ros_py": "geometry2",
    "tf2_msgs": "geometry2",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "ros2launch": "launch_ros",
    "rviz2": "rviz",
    "cv_bridge": "vision_opencv",
}

PYTHON_SOURCES = {
    # setup.py distribution: its rosdep key, or None when it has none (the pip step installs it)
    "numpy": "python3-numpy",
    "opencv-python-headless": "python3-opencv",
    "pyyaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "pillow": "python3-pil",
    "matplotlib": "python3-matplotlib",
    "setuptools": "python3-setuptools",
    "torch": "python3-pytorch-pip",
    "onnxruntime": "python3-onnxruntime-pip",
    "rosbags": "python3-rosbags-pip",
    "onnx": None,
    "onnxscript": None,
}


def package_dependencies() -> dict[str, str]:
    """Every dependency of package.xml (conditions evaluated as rosdep does): name -> its tag."""
    package = parse_package(str(REPO / "package.xml"))
    package.evaluate_conditions(os.environ)
    tags = {"buildtool_depend": package.buildtool_depends, "build_depend": package.build_depends,
            "build_export_depend": package.build_export_depends, "exec_depend": package.exec_depends,
            "test_depend": package.test_depends, "doc_depend": package.doc_depends}
    return {d.name: tag for tag, deps in tags.items() for d in deps if d.evaluated_condition}


def install_requires() -> dict[str, Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    found = next(k.value for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "install_requires")
    return {canonicalize_name(r.name): r for r in map(Requirement, ast.literal_eval(found))}


def pip_step() -> dict[str, Requirement]:
    lines = (REPO / "requirements-ros.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in (raw.split("#")[0].strip() for raw in lines) if line]
    return {canonicalize_name(r.name): r for r in requirements}


def pip_keys(dependencies) -> set[str]:
    return {name for name in dependencies if ROSDEP_KEYS.get(name, ("",))[0] == "pip"}


def test_every_dependency_is_a_rosdep_key_or_a_ros_package():
    unknown = sorted(set(package_dependencies()) - set(ROSDEP_KEYS) - set(ROS_PACKAGES))
    assert not unknown, (
        f"package.xml depends on {unknown}: neither a key of rosdistro's rosdep database nor a ROS "
        f"package of {'/'.join(DISTRIBUTIONS)} in this test's snapshot. rosdep install stops on an "
        "unknown key. Look it up in ros/rosdistro and add it to the snapshot, or install it with "
        "the pip step (requirements-ros.txt)")


def test_each_python_package_comes_from_apt_or_from_the_pip_step():
    dependencies = package_dependencies()
    required, pip = install_requires(), pip_step()
    unmapped = sorted(set(required) - set(PYTHON_SOURCES))
    assert not unmapped, f"setup.py requires {unmapped}: say in PYTHON_SOURCES how a ROS machine gets them"
    for name, requirement in required.items():
        key = PYTHON_SOURCES[name]
        if key is not None:
            assert dependencies.get(key) in ("exec_depend", "buildtool_depend"), f"{name}: declare {key}"
        from_pip = key is None or ROSDEP_KEYS[key][0] == "pip"
        assert (name in pip) == from_pip, (
            f"{name} {'belongs' if from_pip else 'must not be'} in requirements-ros.txt "
            f"({'no rosdep key' if key is None else f'{key} installs it with {ROSDEP_KEYS[key][0]}'})")
        if from_pip:
            assert pip[name].specifier == requirement.specifier, f"{name}: setup.py and requirements-ros.txt disagree"
    assert set(pip) <= set(required), "requirements-ros.txt installs what setup.py does not need"
    assert pip_keys(dependencies) == {PYTHON_SOURCES[n] for n in pip if PYTHON_SOURCES[n]}


def test_readme_rosdep_skips_exactly_the_pip_keys():
    """README's venv route installs the pip keys' packages into the venv: rosdep must leave them
    alone (it would run `sudo pip install` into the system Python, which PEP 668 refuses)."""
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^rosdep install .*$", readme, flags=re.MULTILINE)
    assert commands, "README has no `rosdep install` command"
    for command in commands:
        skipped = re.search(r'--skip-keys "([^"]*)"', command)
        assert skipped and set(skipped.group(1).split()) == pip_keys(package_dependencies()), command


def _resolution(rule, platform=PLATFORM):
    """rosdep's rule for `platform` -> (installer, packages); apt is the default installer."""
    os_name, version = platform
    rule = rule.get(os_name, rule.get("*")) if isinstance(rule, dict) else rule
    if isinstance(rule, dict) and "pip" not in rule and "apt" not in rule:
        rule = rule.get(version, rule.get("*"))
    if isinstance(rule, dict):
        installer = next(iter(rule))
        packages = rule[installer]["packages"] if isinstance(rule[installer], dict) else rule[installer]
        return installer, tuple(packages)
    return "apt", tuple(rule)


@pytest.mark.skipif("ROSDISTRO_DIR" not in os.environ, reason="set ROSDISTRO_DIR to a ros/rosdistro checkout")
def test_snapshot_matches_rosdistro():
    import yaml

    root = Path(os.environ["ROSDISTRO_DIR"])
    database = {}
    for name in ("base.yaml", "python.yaml"):
        database.update(yaml.safe_load((root / "rosdep" / name).read_text()))
    for key, expected in ROSDEP_KEYS.items():
        assert key in database, key
        assert _resolution(database[key]) == expected, key
    for distribution in DISTRIBUTIONS:
        repositories = yaml.safe_load((root / distribution / "distribution.yaml").read_text())["repositories"]
        for package, repository in ROS_PACKAGES.items():
            release = repositories.get(repository, {}).get("release", {})
            assert package in release.get("packages", [repository]) and "version" in release, (distribution, package)
