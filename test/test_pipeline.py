"""SegmentationPipeline: the stages the node and offline evaluation share, on numpy alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sam_mmseg_ros.contracts import MODALITIES, EventArray, FrameBundle, ImageData, PointCloud
from sam_mmseg_ros.health import HealthMonitor, HealthThresholds
from sam_mmseg_ros.labels import class_id
from sam_mmseg_ros.pipeline import FrameResult, SegmentationPipeline, resize_nearest
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.encodings import NATIVE
from sam_mmseg_ros.sensors.lidar import project_points
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig

H, W = 48, 64  # camera
INPUT = (16, 16)  # model
SKY = class_id("Sky")


class StripesBackend:
    """Labels = 4 vertical stripes of the model input (class = stripe index), so the upsampling to
    camera resolution is checkable; router weights = the mask normalized."""

    name, precision = "stripes", "fp32"
    input_shape = (1, len(MODALITIES), 3, *INPUT)
    metadata = {"trained": False}

    def __init__(self):
        self.masks = []
        self.images = []

    def infer(self, images, modality_mask):
        assert images.shape == self.input_shape and images.dtype == np.float32
        self.masks.append(modality_mask.copy())
        self.images.append(images.copy())
        cols = np.arange(INPUT[1]) * 4 // INPUT[1]
        labels = np.broadcast_to(cols, INPUT)[None].astype(np.int32)
        weights = modality_mask / modality_mask.sum()
        return {"labels": labels, "confidence": np.full((1, *INPUT), 0.75, np.float32),
                "router_weights": weights.astype(np.float32)}


def make_bundle(stamp_ns: int = 10**18, camera: bool = True) -> FrameBundle:
    rng = np.random.default_rng(0)
    cam = CameraModel.from_fov(W, H, 90.0, "cam")
    rgb = rng.integers(40, 200, (H, W, 3), dtype=np.uint8)
    depth = np.full((H, W), 8.0, np.float32)
    n = 400
    events = EventArray(rng.integers(0, W, n), rng.integers(0, H, n),
                        stamp_ns - rng.integers(0, 40_000_000, n).astype(np.int64),
                        rng.choice(np.array([-1, 1], np.int8), n), W, H)
    # LiDAR frame = camera frame shifted 1 m back: a grid 10 m ahead covering the view.
    xs, ys = np.meshgrid(np.linspace(-9, 9, 40), np.linspace(-6, 6, 30))
    xyz = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 11.0)], axis=1).astype(np.float32)
    xyz = np.vstack([xyz, [[0.0, 0.0, -5.0]]]).astype(np.float32)  # one point behind the camera
    return FrameBundle(stamp_ns, "cam", rgb=ImageData(rgb, "rgb8"), depth=ImageData(depth, "32FC1"),
                       event=events, lidar=PointCloud(xyz, None, "lidar"), camera=cam if camera else None,
                       stamps=dict.fromkeys(MODALITIES, stamp_ns))


T_CAMERA_LIDAR = np.eye(4)
T_CAMERA_LIDAR[2, 3] = -1.0  # camera = lidar - 1 m in z


def make_pipeline() -> SegmentationPipeline:
    config = PreprocessConfig(input_size=INPUT, encodings={**NATIVE, "depth": "inverse-depth-v1"})
    return SegmentationPipeline(StripesBackend(), config, HealthMonitor(HealthThresholds(min_points_in_image=10)))


def test_resize_nearest_keeps_class_ids_and_pixel_centres():
    small = np.array([[0, 1], [2, 3]], np.uint8)
    big = resize_nearest(small, 4, 6)
    assert big.dtype == np.uint8 and big.shape == (4, 6)
    np.testing.assert_array_equal(big, [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2)
    assert resize_nearest(small, 2, 2) is small


def test_run_returns_camera_resolution_outputs_and_health():
    pipeline = make_pipeline()
    result = pipeline.run(make_bundle(), 10**18 + 5_000_000, T_CAMERA_LIDAR)
    assert isinstance(result, FrameResult)
    assert result.stamp_ns == 10**18 and result.frame_id == "cam"
    assert result.labels.shape == (H, W) and result.labels.dtype == np.uint8
    np.testing.assert_array_equal(result.labels[0], np.arange(W) * 4 // W)  # stripes, nearest
    assert result.confidence.shape == INPUT and result.confidence.dtype == np.float32
    np.testing.assert_allclose(result.router_weights, [0.25] * 4)
    assert result.rgb.shape == (H, W, 3)
    assert set(result.health) == set(MODALITIES)
    assert {m: h.state for m, h in result.health.items()} == dict.fromkeys(MODALITIES, "ok")
    assert result.health["lidar"].router_weight == pytest.approx(0.25)
    assert set(result.timings_ms) == {"encode", "infer", "postprocess", "total"}
    assert all(v >= 0 for v in result.timings_ms.values()) and not result.errors


def test_painted_points_are_in_the_camera_frame_with_the_label_underneath():
    pipeline = make_pipeline()
    bundle = make_bundle()
    xyz, labels = pipeline.run(bundle, bundle.stamp_ns, T_CAMERA_LIDAR).painted
    assert len(xyz) == len(labels) == len(bundle.lidar) - 1  # the point behind the camera is dropped
    np.testing.assert_allclose(xyz[:, 2], 10.0, atol=1e-5)  # 11 m in the LiDAR frame, camera 1 m ahead
    u, _, _, _ = bundle.camera.project(xyz)
    col = np.clip(np.round(u).astype(int), 0, W - 1)
    np.testing.assert_array_equal(labels, col * 4 // W)
    assert pipeline.run(bundle, bundle.stamp_ns, T_CAMERA_LIDAR, paint=False).painted is None


def test_lidar_without_camera_info_is_invalid_and_the_rest_goes_on():
    pipeline = make_pipeline()
    result = pipeline.run(make_bundle(camera=False), 10**18, T_CAMERA_LIDAR)
    assert "camera_info" in result.errors["lidar"]
    assert result.health["lidar"].state == "invalid" and "camera_info" in result.health["lidar"].reason
    assert result.painted is None
    assert pipeline.backend.masks[-1][0, MODALITIES.index("lidar")] == 0
    assert result.router_weights[MODALITIES.index("lidar")] == 0
    assert result.health["rgb"].state == "ok" and result.labels.shape == (H, W)


def test_absent_modality_gets_weight_zero_and_its_reason():
    pipeline = make_pipeline()
    bundle = make_bundle()
    bundle.depth = None
    bundle.absent["depth"] = "stale: nearest depth is 300 ms from the camera stamp (tolerance 100 ms)"
    result = pipeline.run(bundle, bundle.stamp_ns, T_CAMERA_LIDAR)
    assert result.router_weights[MODALITIES.index("depth")] == 0
    assert result.health["depth"].state == "stale" and "300 ms" in result.health["depth"].reason


def test_projected_points_give_camera_frame_positions_of_a_rotated_lidar():
    # x-forward LiDAR 0.5 m behind and 0.2 m above the camera: camera = R @ lidar + t.
    T = np.array([[0, -1, 0, 0.0], [0, 0, -1, -0.2], [1, 0, 0, -0.5], [0, 0, 0, 1]], float)
    rng = np.random.default_rng(1)
    xyz = np.column_stack([rng.uniform(5, 30, 200), rng.uniform(-8, 8, 200), rng.uniform(-2, 2, 200)])
    cloud = PointCloud(xyz.astype(np.float32), None, "lidar")
    projected = project_points(cloud, T, CameraModel.from_fov(W, H, 90.0, "cam"))
    expected = xyz[projected.index] @ T[:3, :3].T + T[:3, 3]
    assert len(projected) > 50
    np.testing.assert_allclose(projected.camera_xyz(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("keep", [("rgb",), ("rgb", "depth"), ("rgb", "depth", "event"), ("rgb", "event", "lidar")])
def test_outputs_with_only_equal_a_run_without_the_other_sensors(keep):
    """Evaluation reuses one encoding per frame for every modality subset: the model input must be
    exactly what the pipeline builds when those sensors are really absent."""
    pipeline = make_pipeline()
    bundle = make_bundle()
    full = pipeline.run(bundle, bundle.stamp_ns, T_CAMERA_LIDAR)
    subset_labels, subset_depth = pipeline.outputs_with_only(keep)
    assert subset_depth is None  # a model without the depth task
    masked_images, masked_mask = pipeline.backend.images[-1], pipeline.backend.masks[-1]

    removed = {m: None for m in MODALITIES if m not in keep}
    reference = make_pipeline()
    alone = reference.run(replace(bundle, absent={m: "removed" for m in removed}, **removed), bundle.stamp_ns, T_CAMERA_LIDAR)
    np.testing.assert_array_equal(masked_mask, reference.backend.masks[-1])
    np.testing.assert_array_equal(masked_images, reference.backend.images[-1])
    np.testing.assert_array_equal(subset_labels, alone.labels)
    assert masked_mask.sum() == len(keep) < full.router_weights.size


class DepthStripesBackend(StripesBackend):
    """StripesBackend with the depth task: depth 2, 4, 8, 16 m per stripe, stripe 2 is sky."""

    def infer(self, images, modality_mask):
        out = super().infer(images, modality_mask)
        out["labels"] = np.where(out["labels"] == 2, SKY, out["labels"]).astype(np.int32)
        cols = np.arange(INPUT[1]) * 4 // INPUT[1]
        out["depth"] = np.broadcast_to(2.0 ** (1 + cols), INPUT)[None].astype(np.float32)
        return out




def test_depth_image_is_camera_resolution_metres_with_nan_over_sky():
    from sam_mmseg_ros.pipeline import depth_image

    depth = np.array([[2.0, 8.0], [2.0, 8.0]], np.float32)
    labels = np.zeros((4, 8), np.uint8)
    labels[0, 0] = SKY
    out = depth_image(depth, labels)
    assert out.dtype == np.float32 and out.shape == (4, 8)
    assert np.isnan(out[0, 0]) and np.isfinite(out[1:]).all()
    # pixel centres: the outer columns keep the values, the middle ones are geometric means (log space)
    np.testing.assert_allclose(out[1:, 1], 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[1:, -1], 8.0, rtol=1e-6)
    assert np.allclose(np.sqrt(out[1:, 3] * out[1:, 4]), 4.0, rtol=1e-5)  # symmetric around the geometric mean
    assert np.isnan(depth_image(np.array([[0.0, np.inf]], np.float32), np.zeros((1, 2), np.uint8))).all()


def test_run_gives_depth_at_camera_resolution_when_the_model_has_it():
    pipeline = make_pipeline()
    pipeline.backend = DepthStripesBackend()
    result = pipeline.run(make_bundle(), 10**18, T_CAMERA_LIDAR)
    assert result.depth.shape == (H, W) and result.depth.dtype == np.float32
    sky = result.labels == SKY
    assert sky.any() and np.isnan(result.depth[sky]).all() and np.isfinite(result.depth[~sky]).all()
    np.testing.assert_allclose(result.depth[:, 0], 2.0, rtol=1e-6)
    assert pipeline.run(make_bundle(), 10**18, T_CAMERA_LIDAR, depth=False).depth is None
    assert make_pipeline().run(make_bundle(), 10**18, T_CAMERA_LIDAR).depth is None  # no depth task


class BufferOwningBackend(StripesBackend):
    """Like TensorRT: offers its input buffer and copies whatever else it is given into it."""

    def __init__(self):
        super().__init__()
        self.buffer = np.zeros(self.input_shape, np.float32)

    def input_buffer(self):
        return self.buffer

    def infer(self, images, modality_mask):
        if images is not self.buffer:
            np.copyto(self.buffer, images)
        return super().infer(self.buffer, modality_mask)


def test_frames_are_encoded_straight_into_a_backend_owned_buffer():
    owning = make_pipeline()
    owning.backend = BufferOwningBackend()
    plain = make_pipeline()
    bundle = make_bundle()
    owning.run(bundle, bundle.stamp_ns, T_CAMERA_LIDAR)
    plain.run(bundle, bundle.stamp_ns, T_CAMERA_LIDAR)
    assert owning._images is owning.backend.buffer  # no copy between preprocessing and the engine
    np.testing.assert_array_equal(owning.backend.images[-1], plain.backend.images[-1])
    # Subsets one after another: each starts from the full frame, not from the last subset.
    for keep in (("rgb",), ("depth", "lidar")):
        owning.outputs_with_only(keep)
        plain.outputs_with_only(keep)
        np.testing.assert_array_equal(owning.backend.images[-1], plain.backend.images[-1])
