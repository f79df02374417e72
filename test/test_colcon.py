"""The ROS 2 route: `colcon build` installs the package (ament_python) and the installed
`sam_mmseg_node` runs from the install space, segments frames over DDS and exits cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from node_harness import REPO, Harness, make_test_checkpoint, node_command, node_env  # noqa: E402
from ros_helpers import PROFILE_VARIABLE, RosProcess, random_domain_id  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
PACKAGE = "sam_mmseg_ros"


def colcon() -> str:
    found = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    if found is None:
        pytest.skip("colcon is not installed")
    return found


def test_colcon_build_installs_a_runnable_node(tmp_path, monkeypatch):
    build = subprocess.run(
        [colcon(), "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(REPO),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--packages-select", PACKAGE],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert build.returncode == 0, build.stdout + build.stderr

    prefix = tmp_path / "install" / PACKAGE
    share = prefix / "share" / PACKAGE
    for relative in ("package.xml", "config/sam_mmseg.yaml", "config/sam_mmseg.rviz",
                     "config/fastdds_large_data.xml", "launch/sam_mmseg.launch.py",
                     "launch/replay_eval.launch.py"):
        assert (share / relative).is_file(), relative
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    executable = prefix / "lib" / PACKAGE / "sam_mmseg_node"
    assert os.access(executable, os.X_OK)

    # What `source install/setup.bash` sets for this package: its Python path and the ament index.
    site = next((prefix / "lib").glob("python3*/site-packages"))
    domain_id = random_domain_id()
    env = node_env(domain_id)
    env.pop(PROFILE_VARIABLE)  # the installed package must find its own profile (share/.../config)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
               AMENT_PREFIX_PATH=os.pathsep.join(filter(None, [str(prefix), env.get("AMENT_PREFIX_PATH")])))
    probe = subprocess.run([sys.executable, "-c", "import sam_mmseg_ros.ros.dds as d, sam_mmseg_ros as p;"
                            "print(p.__file__); print(d.large_data_profile_path())"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    module_file, profile = probe.stdout.split()
    assert module_file.startswith(str(site)), "the node would not run the installed copy"
    assert profile == str(share / "config" / "fastdds_large_data.xml")
    env[PROFILE_VARIABLE] = profile

    checkpoint = make_test_checkpoint(tmp_path / "tiny64.pt")
    command = node_command(f"checkpoint:={checkpoint}", executable=executable)
    command[command.index("--params-file") + 1] = str(share / "config" / "sam_mmseg.yaml")
    monkeypatch.setenv(PROFILE_VARIABLE, profile)
    with RosProcess(command, env, cwd=tmp_path) as node:
        harness = Harness(domain_id)
        try:
            harness.start_feeding()
            harness.wait_for_output(node, timeout=45)
        finally:
            harness.close()
        assert node.stop(timeout=30) == 0
    assert "Traceback" not in node.output
