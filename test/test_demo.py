"""The demo, shortened: node process, DDS replay, live and offline evaluation, every output file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = ("overlay_mosaic.png", "health_timeline.png", "confusion_matrix.png", "class_iou.png", "report.md",
         "metrics.json", "offline/report.md", "offline/metrics.json")


@pytest.mark.ros
@pytest.mark.slow
def test_short_demo_writes_every_file_and_live_matches_offline(tmp_path):
    out = tmp_path / "demo_output"
    proc = subprocess.run([sys.executable, "-m", "sam_mmseg_ros.cli", "demo", "--output", str(out),
                           "--frames", "6", "--rate", "0.2"], cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    live, offline, agreement = metrics["live"], metrics["offline"], metrics["live_vs_offline"]
    assert live["camera_frames"] == offline["camera_frames"] == 6
    assert live["dropped_frames"] <= 1  # the node keeps up with a 0.2x replay
    # label_agreement compares the frames both runs scored, so a dropped frame cannot hide a mismatch.
    assert agreement["frames_compared"] == live["frames"] > 0
    assert agreement["pixel_agreement"] >= 0.99
    assert metrics["node_shutdown"].startswith("shut down cleanly")
    # The staged LiDAR outage (no cloud for frames 2-3): by frame 3 the last cloud is out of
    # tolerance, so the node gives the LiDAR no weight, and the offline run agrees.
    offline_weights = {row["stamp_ns"]: row["lidar_weight"] for row in offline["health_timeline"]}
    stamps = sorted(offline_weights)
    assert len(stamps) == 6 and offline_weights[stamps[0]] > 0 and offline_weights[stamps[3]] == 0
    live_weights = {row["stamp_ns"]: row["lidar_weight"] for row in live["health_timeline"]}
    # Live weights come from the health message, rounded to 4 decimals.
    assert live_weights and all(abs(live_weights[s] - offline_weights[s]) < 1e-3 for s in live_weights)
    assert len(offline["miou"]) > 1  # modality subsets
    report = (out / "report.md").read_text()
    assert "live vs offline" in report and "Latency" in report and "Health" in report
    assert "What depth, events and LiDAR add to the camera, per condition" in report and "gain (points)" in report
    assert ("UNTRAINED" in report) != metrics["live"]["model"]["trained"]
