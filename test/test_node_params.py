"""Node parameters: bad values stop the start-up with a clear message; thresholds and output
toggles change at run time, and invalid run-time values are refused with a reason."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy")

from node_harness import (  # noqa: E402
    Harness,
    checkpoint,  # noqa: F401 - fixture
    health_by_modality,
    node_command,
    node_env,
    stamp_ns,
    start_node,
)
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from ros_helpers import PROFILE_VARIABLE, RosProcess, random_domain_id, ros_env  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.mark.parametrize(("override", "expected"), [
    ("backend:=tensorrtx", "backend: 'tensorrtx' is not one of auto, tensorrt, onnxruntime, torch"),
    ("overlay_alpha:=1.5", "overlay_alpha"),
    ("T_camera_lidar.translation:=[1.0,2.0]", "T_camera_lidar.translation: expected 3 numbers, got 2"),
])
def test_invalid_parameters_stop_the_node_with_a_clear_message(override, expected):
    with RosProcess(node_command(override), node_env(random_domain_id())) as node:
        assert node.wait(timeout=60) == 2
    assert expected in node.output and "Traceback" not in node.output


def _set(h: Harness, name: str, value) -> tuple[bool, str]:
    client = h.node.create_client(SetParameters, "/sam_mmseg/set_parameters")
    assert client.wait_for_service(timeout_sec=10)
    if isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    elif isinstance(value, str):
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=pv)]))
    deadline = time.monotonic() + 10
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    h.node.destroy_client(client)
    result = future.result().results[0]
    return result.successful, result.reason


def test_thresholds_and_output_toggles_change_at_run_time(checkpoint, monkeypatch):  # noqa: F811
    domain_id = random_domain_id()
    for key in (PROFILE_VARIABLE, "RMW_IMPLEMENTATION"):
        monkeypatch.setenv(key, ros_env(domain_id)[key])
    proc = start_node(domain_id, checkpoint)
    h = Harness(domain_id)
    try:
        h.start_feeding()
        h.wait_for_output(proc)

        assert _set(h, "publish.overlay", False) == (True, "")
        switched = time.monotonic() + 0.5  # frames already in flight
        h.wait_until(lambda: len(h.messages("labels", switched)) >= 5, 15, "labels after overlay off", proc)
        assert not h.messages("overlay", switched)

        ok, reason = _set(h, "overlay_alpha", 2.0)
        assert not ok and "overlay_alpha" in reason
        ok, reason = _set(h, "backend", "onnxruntime")  # a valid value, but read-only after start-up
        assert not ok and "read-only" in reason.lower().replace(" ", "-")

        assert _set(h, "health.min_points_in_image", 100000) == (True, "")
        changed = time.time_ns()
        h.wait_until(lambda: any(health_by_modality(m)["lidar"]["state"] == "degraded"
                                 for m in h.messages("modality_health") if stamp_ns(m) > changed),
                     15, "lidar degraded under the new threshold", proc)
    finally:
        h.close()
        proc.stop(timeout=30)
