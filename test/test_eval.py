"""Offline evaluation: a tiny synthetic bag through the node's own stages, reports, determinism,
and the DELIVER path."""

import json

import numpy as np
import pytest

from sam_mmseg_ros.contracts import BAG_TOPICS, CONDITION_TOPIC, HEALTH_STATES, MODALITIES
from sam_mmseg_ros.data.bags import read_bag, write_bag
from sam_mmseg_ros.data.synthetic import SequenceConfig, generate_sequence
from sam_mmseg_ros.eval.offline import evaluate_bag, evaluate_deliver
from sam_mmseg_ros.eval.report import write_report
from sam_mmseg_ros.eval.results import FULL, PRIOR, SUBSETS, label_agreement
from sam_mmseg_ros.ingest import OfflineNode, topic_kinds
from sam_mmseg_ros.labels import NUM_CLASSES
from sam_mmseg_ros.node_settings import NodeSettings
from sam_mmseg_ros.sensors.encodings import DELIVER, EncodingError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONDITIONS = ("sun", "night")
FRAMES_PER_CONDITION = 2
QUICK = {FULL: SUBSETS[FULL], "without lidar": SUBSETS["without lidar"]}
OUTAGE = {1: ("lidar",), 2: ("lidar",), 3: ("lidar",)}  # the LiDAR stops after the first frame
OVERRIDES = {"event_sensor_size": [64, 48]}




@pytest.fixture(scope="module")
def backend():
    from sam_mmseg_ros.engine import create_backend

    return create_backend("torch", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "bag"
    frames = []
    for i, condition in enumerate(CONDITIONS):
        start = SequenceConfig.start_ns + i * FRAMES_PER_CONDITION * 100_000_000
        frames += generate_sequence(SequenceConfig(width=64, height=48, num_frames=FRAMES_PER_CONDITION,
                                                   condition=condition, seed=i, rig_seed=0, start_ns=start))
    write_bag(frames, path, leave_out=OUTAGE)
    return path


def test_eval_bag_orders_sensors_before_the_camera_and_records_conditions(bag):
    records = [(topic, t, msg) for topic, t, _, msg in read_bag(bag)]
    conditions = [msg.data for topic, _, msg in records if topic == CONDITION_TOPIC]
    assert conditions == [c for c in CONDITIONS for _ in range(FRAMES_PER_CONDITION)]
    lidar = [t for topic, t, _ in records if topic == BAG_TOPICS["lidar"]]
    cameras = [t for topic, t, _ in records if topic == BAG_TOPICS["rgb"]]
    assert len(lidar) == len(cameras) - len(OUTAGE)
    depth = [t for topic, t, _ in records if topic == BAG_TOPICS["depth"]]
    assert all(d < c for d, c in zip(depth, cameras, strict=True))


def test_feeder_follows_the_node_parameters(bag, backend):
    kinds = topic_kinds()
    node = OfflineNode(backend, NodeSettings.from_file(overrides={"enable.lidar": False}))
    bundles = [b for topic, t, _, msg in read_bag(bag) if topic in kinds
               if (b := node.feed(kinds[topic], msg, t)) is not None]
    assert len(bundles) == len(CONDITIONS) * FRAMES_PER_CONDITION
    assert all(b.lidar is None and b.absent["lidar"] == "disabled" for b in bundles)
    # Without event_sensor_size the event sensor is taken to be the camera (from camera_info).
    assert all(b.event is not None for b in bundles[1:])
    assert all(b.depth is not None and b.stamps["depth"] == b.stamp_ns for b in bundles)


def test_offline_eval_writes_reports_and_is_deterministic(bag, backend, tmp_path):
    first = evaluate_bag(bag, backend, overrides=OVERRIDES, subsets=QUICK, progress=False, keep_labels=True)
    second = evaluate_bag(bag, backend, overrides=OVERRIDES, subsets=QUICK, progress=False, keep_labels=True)
    frames = len(CONDITIONS) * FRAMES_PER_CONDITION
    assert first.frames == first.camera_frames == frames
    for name in QUICK:
        assert np.array_equal(first.confusion[name].matrix, second.confusion[name].matrix)
    assert label_agreement(first, second)["pixel_agreement"] == 1.0

    summary = write_report(first, tmp_path, title="test")
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "class_iou.png", "overlay_mosaic.png",
                 "health_timeline.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written["miou"]) == set(QUICK)
    assert set(written["miou_per_condition"][FULL]) == set(CONDITIONS)
    assert np.asarray(written["confusion_matrix"]).shape == (NUM_CLASSES, NUM_CLASSES)
    assert np.asarray(written["confusion_matrix"]).sum() == first.confusion[FULL].matrix.sum() > 0
    assert len(written["class_iou"]) == NUM_CLASSES
    for m in MODALITIES:
        assert sum(written["health_counts"][m].values()) == frames
        assert set(written["health_counts"][m]) == set(HEALTH_STATES)
    assert {"assemble", "encode", "infer", "total"} <= set(written["latency_ms"])
    assert written["model"]["backend"] == "torch"
    # The staged outage shows in the health timeline once the last LiDAR cloud is out of tolerance.
    assert first.timeline[0]["lidar"] == "ok" and first.timeline[0]["lidar_weight"] > 0.0
    assert first.timeline[-1]["lidar"] == "stale" and first.timeline[-1]["lidar_weight"] == 0.0
    report = (tmp_path / "report.md").read_text()
    assert "mIoU by modality subset" in report and "without lidar" in report
    assert summary["miou"] == written["miou"]
    # The sensor-free layout prior is in every report, scored on the same frames.
    prior = written["layout_prior"]
    assert 0 < prior["miou"] < 100 and set(prior["miou_per_condition"]) == set(CONDITIONS)
    assert f"| {PRIOR} |" in report


def test_layout_prior_is_the_majority_class_per_pixel():
    from sam_mmseg_ros.eval.baselines import LayoutPrior
    from sam_mmseg_ros.eval.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 4, (6, 8)) for _ in range(9)]
    frames += [np.full((12, 16), 2)]  # another camera size: sampled on the first frame's grid
    prior = LayoutPrior(num_classes=4)
    for i, gt in enumerate(frames):
        prior.update(gt, "a" if i < 5 else "b")
    same_grid = [f if f.shape == (6, 8) else f[::2, ::2] for f in frames]
    counts = np.stack([(np.stack(same_grid) == c).sum(0) for c in range(4)])
    np.testing.assert_array_equal(prior.prediction(), counts.argmax(0))
    expected = ConfusionMatrix(4)
    for gt in same_grid[:5]:
        expected.update(counts.argmax(0), gt)
    np.testing.assert_array_equal(prior.confusion("a").matrix, expected.matrix)
    total = ConfusionMatrix(4)
    for gt in same_grid:
        total.update(counts.argmax(0), gt)
    np.testing.assert_array_equal(prior.confusion().matrix, total.matrix)


def test_deliver_eval(tmp_path, backend):
    from sam_mmseg_ros.data.deliver import write_deliver_fixture
    from sam_mmseg_ros.engine.torch_backend import TorchBackend

    root = write_deliver_fixture(tmp_path / "DELIVER", frames_per_condition=1, size=(64, 64), splits=("test",),
                                 conditions=CONDITIONS)
    with pytest.raises(EncodingError, match=r"'event-count-v1'.*'carla-dvs-v1'"):
        evaluate_deliver(root, backend, split="test")  # the shipped model is not a DELIVER model
    deliver = TorchBackend(backend.model, "cpu", metadata={"encodings": DELIVER, "checkpoint": "deliver.pt"})
    result = evaluate_deliver(root, deliver, split="test", subsets={"RGB": SUBSETS["RGB"]}, progress=False)
    assert result.frames == 2 * len(CONDITIONS)  # a normal and an eventlowres frame per condition
    assert set(result.per_condition[FULL]) == set(CONDITIONS)
    assert set(result.per_case[FULL]) == {"normal", "eventlowres"}
    assert set(result.confusion) == {FULL, "RGB"}
    assert result.confusion[FULL].total > 0
    assert any("raw label ids above 25" in n and "27: 8" in n for n in result.notes)
    summary = write_report(result, tmp_path / "report")
    assert summary["mode"] == "DELIVER" and (tmp_path / "report" / "overlay_mosaic.png").is_file()
    assert set(summary["miou_per_case"][FULL]) == {"normal", "eventlowres"}
    assert "per sensor-failure case" in (tmp_path / "report" / "report.md").read_text()


def test_feeder_marks_an_undecodable_message_invalid_and_keeps_going(bag, backend):
    kinds = topic_kinds()
    node = OfflineNode(backend, NodeSettings.from_file(overrides=OVERRIDES))
    results = []
    for topic, t, _, msg in read_bag(bag):
        if topic == BAG_TOPICS["depth"]:
            msg.data = msg.data[: msg.data.size // 2]  # truncated buffer
        if topic in kinds and (bundle := node.feed(kinds[topic], msg, t)) is not None:
            results.append(node.segment(bundle, t))
    assert "truncated" in node.feeder.problems.current["depth"]
    assert len(results) == len(CONDITIONS) * FRAMES_PER_CONDITION
    assert all(r.health["depth"].state == "invalid" and r.health["rgb"].state == "ok" for r in results)


@pytest.fixture(scope="module")
def depth_backend():
    """An untrained multi-task model: the plumbing of depth scoring, not its quality."""
    import torch

    from sam_mmseg_ros.engine.torch_backend import TorchBackend
    from sam_mmseg_ros.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("tiny_talora", img_size=64, depth=2, global_attn_indexes=(1,),
                            aux_block_indexes=(0, 1), decoder_depth=1)
    return TorchBackend(model, "cpu", "fp32")


@pytest.fixture(scope="module")
def holed_bag(tmp_path_factory):
    """Two frames whose depth camera lost a 16x16 block (the ground truth keeps it)."""
    from dataclasses import replace

    path = tmp_path_factory.mktemp("eval_holes") / "bag"
    frames = []
    for frame in generate_sequence(SequenceConfig(width=64, height=48, num_frames=2, condition="fog", seed=5)):
        holed = frame.depth.copy()
        holed[24:40, 8:24] = 0.0
        frames.append(replace(frame, depth=holed, depth_true=frame.depth))
    write_bag(frames, path)
    return path


def test_depth_is_scored_per_subset_and_condition_and_in_the_sensors_holes(holed_bag, depth_backend, backend,
                                                                           tmp_path):
    from sam_mmseg_ros.eval.metrics import DepthErrors
    from sam_mmseg_ros.eval.offline import read_ground_truth

    subsets = {FULL: SUBSETS[FULL], "without depth": SUBSETS["without depth"]}
    result = evaluate_bag(holed_bag, depth_backend, overrides=OVERRIDES, subsets=subsets, progress=False)
    assert set(result.depth) == set(subsets) and set(result.depth_per_condition[FULL]) == {"fog"}
    assert set(result.depth_holes) == set(subsets)  # without the sensor: the same pixels, for comparison
    assert result.depth_holes["without depth"].count + result.depth_holes["without depth"].missing == \
        result.depth_holes[FULL].count + result.depth_holes[FULL].missing
    truth = read_ground_truth(holed_bag)[2]
    assert len(truth) == 2 and all(t.shape == (48, 64) for t in truth.values())
    scored = sum(int(np.count_nonzero(np.isfinite(t) & (t <= 80))) for t in truth.values())
    full = result.depth[FULL]
    assert full.count + full.missing == scored and full.count > 0.5 * scored  # NaN only where labels say sky
    holes = result.depth_holes[FULL]
    assert 0 < holes.count + holes.missing <= 2 * 16 * 16
    assert isinstance(result.depth["without depth"], DepthErrors)

    summary = write_report(result, tmp_path, title="depth", with_figures=False)
    assert summary["depth"][FULL]["pixels"] == full.count and summary["depth_in_sensor_holes"][FULL]["pixels"]
    assert summary["depth_per_condition"]["without depth"]["fog"]["abs_rel"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "Depth by modality subset" in report and "hole filling" in report and "without depth" in report

    plain = evaluate_bag(holed_bag, backend, overrides=OVERRIDES, subsets={}, progress=False)
    assert not plain.depth and write_report(plain, tmp_path / "plain", with_figures=False)["depth"] == {}
    assert "Depth by" not in (tmp_path / "plain" / "report.md").read_text()  # no depth task, no depth section


def test_deliver_eval_scores_depth(tmp_path, depth_backend):
    from sam_mmseg_ros.data.deliver import write_deliver_fixture
    from sam_mmseg_ros.engine.torch_backend import TorchBackend

    root = write_deliver_fixture(tmp_path / "DELIVER", frames_per_condition=1, size=(64, 64), splits=("test",),
                                 conditions=CONDITIONS)
    deliver = TorchBackend(depth_backend.model, "cpu", metadata={"encodings": DELIVER, "checkpoint": "deliver.pt"})
    result = evaluate_deliver(root, deliver, split="test", subsets={"RGB": SUBSETS["RGB"]}, progress=False)
    assert set(result.depth) == {FULL, "RGB"} and result.depth[FULL].count > 0


def test_comparison_tables_from_metrics_files(tmp_path, capsys):
    from sam_mmseg_ros.eval.report import main as compare

    depth = {"abs_rel": 0.1, "rmse_m": 5.0, "delta1": 0.9, "pixels": 10, "missing_predictions": 0, "max_depth_m": 80.0}
    multi = {"miou": {FULL: 40.0, "RGB": 35.0}, "miou_per_condition": {FULL: {"fog": 38.0, "sun": 42.0}},
             "depth": {FULL: depth, "RGB": {**depth, "abs_rel": 0.2}},
             "depth_per_condition": {FULL: {"fog": depth, "sun": depth}}, "depth_in_sensor_holes": {FULL: depth}}
    single = {"miou": {FULL: 40.5, "RGB": None}, "miou_per_condition": {FULL: {"fog": 39.0, "sun": 42.0}},
              "depth": {}, "depth_per_condition": {}, "depth_in_sensor_holes": {}}
    paths = []
    for name, summary in (("multi", multi), ("single", single)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(summary))
    assert compare([f"multi-task={paths[0]}", f"single-task={paths[1]}"]) == 0
    out = capsys.readouterr().out
    assert f"| {FULL} | 40.0 | 40.5 | -0.5 |" in out and "| RGB | 35.0 | n/a | n/a |" in out
    assert "| single-task | 39.0 | 42.0 |" in out
    assert "#### multi-task: depth" in out and "#### single-task: depth" not in out
    assert "| RGB | 0.200 | 5.00 | 90.0 | 10 |" in out and "0.100 · 5.0 m · 90 %" in out and "hole filling" in out


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_eval_scores_the_backend_at_the_node_precision(tmp_path, monkeypatch, precision):
    """`eval --backend tensorrt` builds the engine the node runs, not an fp32 one of its own."""
    import sam_mmseg_ros.engine as engine
    from sam_mmseg_ros import cli

    asked = {}

    def stop_here(kind, **options):
        asked.update(options, kind=kind)
        raise SystemExit(0)

    monkeypatch.setattr(engine, "create_backend", stop_here)
    params = tmp_path / "params.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    precision: {precision}\n    use_cuda_graph: true\n")
    with pytest.raises(SystemExit):
        cli.main(["eval", str(tmp_path), "--backend", "tensorrt", "--params-file", str(params)])
    assert asked["kind"] == "tensorrt" and asked["precision"] == precision and asked["use_cuda_graph"] is True
