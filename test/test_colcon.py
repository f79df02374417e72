"""README's "From clone to RViz on a ROS 2 machine", run as far as a machine without a ROS 2
install allows: the venv made with --system-site-packages, the pip step, `python -m colcon build`
with the venv's Python into a fresh workspace, `source install/setup.bash`, and the installed
`sam_mmseg_node` started the way `ros2 run` starts it (by executing the file, so its first line
picks the interpreter); it segments frames over DDS and exits cleanly.

The block's lines are taken from README.md. Lines that need a ROS 2 machine (apt, rosdep,
/opt/ros, ros2) are skipped; the rest run as written, except the stand-ins in `SUBSTITUTIONS`:
the clone is a symlink to this checkout, and the downloads of the pip step are the test
environment's own packages (one .pth in the venv) with pip offline. The numpy < 2 constraint is
left out: it is for Ubuntu 24.04's numpy 1.26, and the ROS wheels here are built for numpy 2.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("colcon_core")

from node_harness import REPO, Harness, make_test_checkpoint, node_command, node_env  # noqa: E402
from ros_helpers import PROFILE_VARIABLE, RosProcess, random_domain_id  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
PACKAGE = "sam_mmseg_ros"
HEADING = "## From clone to RViz on a ROS 2 machine"
NEEDS_ROS_MACHINE = ("sudo ", "source /opt/ros/", "[ -e /etc/ros/", "rosdep ", "ros2 ")
TEST_SITE = sysconfig.get_path("purelib")
SUBSTITUTIONS = {
    "git clone <this repo> src/sam_mmseg_ros": f"ln -s {REPO} src/sam_mmseg_ros",
    # addsitedir, not a bare path: the test environment's own .pth files (editable installs) apply too
    "python3 -m venv --system-site-packages .venv":
        f"{sys.executable} -m venv --system-site-packages --without-pip .venv && "
        f"printf '%s\\n' {shlex.quote(f'import site; site.addsitedir({TEST_SITE!r})')} > "
        f"\"$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))')/test-env.pth\"",
    ".venv/bin/pip install -r src/sam_mmseg_ros/requirements-ros.txt -c src/sam_mmseg_ros/constraints-ubuntu-24.04.txt":
        f"{sys.executable} -m pip --python .venv/bin/python install --no-index -r src/sam_mmseg_ros/requirements-ros.txt",
}


def readme_block() -> list[str]:
    readme = (REPO / "README.md").read_text()
    assert HEADING in readme, f"README.md has no section {HEADING!r}"
    block = re.search(r"```bash\n(.*?)```", readme[readme.index(HEADING):], re.DOTALL)
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def runnable_script(lines: list[str]) -> str:
    missing = [line for line in SUBSTITUTIONS if line not in lines]
    assert not missing, f"README's block changed; update SUBSTITUTIONS for {missing}"
    kept = [SUBSTITUTIONS.get(line, line) for line in lines if not line.startswith(NEEDS_ROS_MACHINE)]
    assert kept[-1] == "source install/setup.bash", kept
    return "\n".join(kept[:-1] + ["env -0 > before.env", kept[-1], "env -0 > after.env"])


def read_env(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text().split("\0") if "=" in item)


def test_readme_block_builds_a_node_that_runs_on_the_venv_python(tmp_path, monkeypatch):
    lines = readme_block()
    assert "rosdep install --from-paths src --ignore-src -y" in " ".join(lines)
    assert any(line.startswith("ros2 launch sam_mmseg_ros sam_mmseg.launch.py") and "rviz:=true" in line
               for line in lines)

    # The block, as the user runs it: HOME is the temporary directory, so ~/ws is tmp_path/ws.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(HOME=str(tmp_path), PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    script = runnable_script(lines)
    run = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{script}\n---\n{run.stdout}{run.stderr}"

    workspace = tmp_path / "ws"
    venv_python = workspace / ".venv" / "bin" / "python"
    prefix = workspace / "install" / PACKAGE
    share = prefix / "share" / PACKAGE
    for relative in ("package.xml", "config/sam_mmseg.yaml", "config/sam_mmseg.rviz",
                     "config/fastdds_large_data.xml", "launch/sam_mmseg.launch.py",
                     "launch/replay_eval.launch.py"):
        assert (share / relative).is_file(), relative
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    executable = prefix / "lib" / PACKAGE / "sam_mmseg_node"
    assert os.access(executable, os.X_OK)
    # What makes `ros2 run` and `ros2 launch` use the venv: the console script's interpreter.
    assert executable.read_text().splitlines()[0] == f"#!{venv_python}"

    # What `source install/setup.bash` changed, applied to the node's environment.
    before, after = read_env(workspace / "before.env"), read_env(workspace / "after.env")
    sourced = {k: v for k, v in after.items() if before.get(k) != v}
    site = next((prefix / "lib").glob("python3*/site-packages"))
    assert str(site) in sourced["PYTHONPATH"].split(os.pathsep)
    domain_id = random_domain_id()
    node_environment = {**node_env(domain_id), **sourced}
    node_environment.pop(PROFILE_VARIABLE)  # the installed package must find its own profile

    probe = subprocess.run(
        [str(venv_python), "-c", "import sam_mmseg_ros, torch, sam_mmseg_ros.ros.dds as d;"
         "print(sam_mmseg_ros.__file__); print(torch.__file__); print(d.large_data_profile_path())"],
        env=node_environment, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    module_file, torch_file, profile = probe.stdout.split()
    assert module_file.startswith(str(site)), "the node would not run the installed copy"
    python_path = node_environment["PYTHONPATH"].split(os.pathsep)
    assert not any(torch_file.startswith(p) for p in python_path if p), "torch must come from the venv"
    assert profile == str(share / "config" / "fastdds_large_data.xml")
    node_environment[PROFILE_VARIABLE] = profile

    checkpoint = make_test_checkpoint(tmp_path / "tiny64.pt")
    command = node_command(f"checkpoint:={checkpoint}", executable=executable)
    command[command.index("--params-file") + 1] = str(share / "config" / "sam_mmseg.yaml")
    monkeypatch.setenv(PROFILE_VARIABLE, profile)
    with RosProcess(command, node_environment, cwd=tmp_path) as node:
        harness = Harness(domain_id)
        try:
            harness.start_feeding()
            harness.wait_for_output(node, timeout=45)
        finally:
            harness.close()
        assert node.stop(timeout=30) == 0
    assert "Traceback" not in node.output
