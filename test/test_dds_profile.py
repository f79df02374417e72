"""The Fast DDS large-data profile: its content, how it is found, and that it carries 1024x1024
images between two processes at 10 Hz best-effort (Fast DDS' defaults deliver none here)."""

import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ros_helpers import RosProcess, random_domain_id, ros_env

from sam_mmseg_ros.ros.dds import PROFILE_VARIABLE, dds_environment, large_data_profile_path

MIB = 1 << 20
PROBE = Path(__file__).with_name("dds_image_probe.py")


def _strip_namespaces(root: ET.Element) -> ET.Element:
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return root


def test_profile_gives_shm_large_segments_and_keeps_udp():
    root = _strip_namespaces(ET.parse(large_data_profile_path()).getroot())
    descriptors = {d.findtext("transport_id"): d for d in root.iter("transport_descriptor")}
    kinds = {tid: d.findtext("type") for tid, d in descriptors.items()}
    shm = next(d for d in descriptors.values() if d.findtext("type") == "SHM")
    assert int(shm.findtext("segment_size")) == 32 * MIB
    assert int(shm.findtext("maxMessageSize")) == 16 * MIB
    participant = root.find("profiles/participant")
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.find("rtps/userTransports")]
    assert sorted(kinds[t] for t in used) == ["SHM", "UDPv4"]
    assert participant.findtext("rtps/useBuiltinTransports") == "false"


def test_profile_validates_against_the_installed_fast_dds_schema():
    xmlschema = pytest.importorskip("xmlschema")
    xsd = Path(sys.prefix) / "share" / "fastdds" / "fastdds_profiles.xsd"
    if not xsd.is_file():
        pytest.skip(f"no Fast DDS schema at {xsd}")
    xmlschema.XMLSchema(str(xsd)).validate(large_data_profile_path())


def test_dds_environment_keeps_user_choices():
    env = dds_environment({})
    assert env[PROFILE_VARIABLE] == large_data_profile_path()
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    mine = {PROFILE_VARIABLE: "/etc/my_profile.xml", "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert dds_environment(mine) == mine


def _mapped_shm_segment_sizes(pid: int) -> list[int]:
    """Sizes of the Fast DDS shared-memory segments (not the small port files) a process maps."""
    names = set(re.findall(r"/dev/shm/(fastdds_(?!port)\S+)", Path(f"/proc/{pid}/maps").read_text()))
    return [os.stat(f"/dev/shm/{n}").st_size for n in names if os.path.exists(f"/dev/shm/{n}")]


@pytest.mark.ros
@pytest.mark.slow
def test_large_images_arrive_between_processes_with_the_profile():
    count = 30  # 3 s at 10 Hz
    env = ros_env(random_domain_id(), large_data_profile=True)
    with RosProcess([sys.executable, str(PROBE), "subscribe", "--size", "1024"], env) as sub:
        sub.wait_for("READY", timeout=30)
        with RosProcess([sys.executable, str(PROBE), "publish", "--count", str(count), "--size", "1024"],
                        env) as pub:
            pub.wait_for("MATCHED", timeout=30)
            if sys.platform.startswith("linux"):  # proof the profile was loaded, not just the defaults
                assert max(_mapped_shm_segment_sizes(pub.proc.pid), default=0) >= 32 * MIB
            assert pub.wait(timeout=60) == 0, pub.output
        sub.stop()
        received = int(sub.wait_for(r"RECEIVED (\d+)", timeout=5).group(1))
    assert received >= 0.9 * count, sub.output
