"""Synthetic scenes: determinism, labels, cross-sensor geometry, events, conditions, failures."""

import numpy as np
import pytest

from sam_mmseg_ros.data.synthetic import (
    CAMERA_FRAME,
    LIDAR_FRAME,
    SequenceConfig,
    SyntheticDataset,
    class_ids_present,
    generate_sequence,
)
from sam_mmseg_ros.labels import NUM_CLASSES

W, H = 160, 120


def frames(num_frames=2, **kw):
    kw.setdefault("width", W)
    kw.setdefault("height", H)
    kw.setdefault("lidar_columns", 512)
    return list(generate_sequence(SequenceConfig(num_frames=num_frames, **kw)))


@pytest.fixture(scope="module")
def sun():
    return frames(3, condition="sun", seed=3)


def gray(rgb):
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def lidar_depth_agreement(frame):
    """Fraction of in-view LiDAR points whose camera depth matches the depth image at their pixel."""
    xyz = frame.lidar.xyz.astype(np.float64)
    cam = xyz @ frame.T_camera_lidar[:3, :3].T + frame.T_camera_lidar[:3, 3]
    u, v, z, front = frame.camera.project(cam)
    col, row = np.rint(u).astype(int), np.rint(v).astype(int)
    inside = front & (col >= 0) & (col < frame.camera.width) & (row >= 0) & (row < frame.camera.height)
    depth = frame.depth[row[inside], col[inside]]
    ok = np.abs(depth - z[inside]) < 0.05 * z[inside] + 0.15
    return ok.mean(), int(inside.sum())


def test_same_seed_gives_bitwise_equal_frames(sun):
    again = frames(3, condition="sun", seed=3)
    for a, b in zip(sun, again, strict=True):
        assert a.stamp_ns == b.stamp_ns
        for name in ("rgb", "depth", "labels", "T_camera_lidar"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.lidar.xyz, b.lidar.xyz) and np.array_equal(a.lidar.intensity, b.lidar.intensity)
        for name in ("x", "y", "t_ns", "polarity"):
            assert np.array_equal(getattr(a.events, name), getattr(b.events, name)), name
    shorter = frames(1, condition="sun", seed=3)[0]  # the street does not depend on the length
    assert np.array_equal(shorter.rgb, sun[0].rgb) and np.array_equal(shorter.lidar.xyz, sun[0].lidar.xyz)
    other = frames(1, condition="sun", seed=4)[0]
    assert not np.array_equal(other.rgb, sun[0].rgb)


def test_frame_types_and_frames(sun):
    f = sun[0]
    assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
    assert f.depth.shape == (H, W) and f.depth.dtype == np.float32
    assert f.labels.shape == (H, W) and f.labels.dtype == np.uint8 and f.labels.max() < NUM_CLASSES
    assert f.camera.frame_id == CAMERA_FRAME and f.lidar.frame_id == LIDAR_FRAME
    assert f.lidar.xyz.dtype == np.float32 and f.lidar.intensity.shape == (len(f.lidar),)
    assert (f.events.width, f.events.height) == (W, H)
    assert np.all(np.diff(f.events.t_ns) >= 0)
    # sky has no depth, everything else has
    sky = f.labels == 12
    assert sky.any() and np.all(f.depth[sky] == 0) and np.all(f.depth[~sky] > 0)
    assert sun[1].stamp_ns - sun[0].stamp_ns == 100_000_000


def test_labels_cover_street_classes(sun):
    present = set().union(*(class_ids_present(f.labels) for f in sun))
    expected = {"Road", "RoadLine", "SideWalk", "Building", "Sky", "Pole", "Vegetation"}
    assert expected <= present, expected - present
    assert present & {"Cars", "Truck", "Bus", "TwoWheeler"}


def test_lidar_points_land_on_matching_camera_depth(sun):
    # 320x240: at lower resolutions one pixel spans too much ground depth near the horizon
    for frame in frames(2, condition="sun", seed=3, width=320, height=240):
        agreement, count = lidar_depth_agreement(frame)
        assert count > 1000
        assert agreement >= 0.95, agreement
    # the LiDAR sees all around: points behind the car too
    assert (sun[0].lidar.xyz[:, 0] < -5).sum() > 100


def test_lidar_jitter_breaks_the_calibration():
    frame = frames(1, condition="sun", seed=3, width=320, height=240, failures=("lidar_jitter",))[0]
    agreement, _ = lidar_depth_agreement(frame)
    assert agreement < 0.9


def test_events_follow_intensity_changes(sun):
    prev, cur = sun[1], sun[2]
    ev = cur.events
    assert len(ev) > 1000
    assert np.all((ev.t_ns > prev.stamp_ns) & (ev.t_ns <= cur.stamp_ns))
    change = np.log(gray(cur.rgb) + 10) - np.log(gray(prev.rgb) + 10)
    strong = np.abs(change) > 0.4
    pol_at = np.zeros((H, W))
    np.add.at(pol_at, (ev.y, ev.x), ev.polarity)
    # where the image changed a lot there are events, and their net polarity has its sign
    assert (pol_at[strong] != 0).mean() > 0.8
    assert (np.sign(pol_at[strong]) == np.sign(change[strong])).mean() > 0.85
    # static parts (sky far away) stay mostly quiet
    still = np.abs(change) < 0.02
    assert (pol_at[still] != 0).mean() < 0.2


def test_fog_lowers_far_contrast_and_lidar_range(sun):
    fog = frames(1, condition="fog", seed=3)[0]
    clear = sun[0]
    far = (clear.depth > 40) & (clear.labels != 12)
    assert far.sum() > 100
    assert gray(fog.rgb)[far].std() < 0.5 * gray(clear.rgb)[far].std()
    far_points = lambda f: (np.linalg.norm(f.lidar.xyz, axis=1) > 40).sum()  # noqa: E731
    assert far_points(fog) < 0.5 * far_points(clear)
    near_points = lambda f: (np.linalg.norm(f.lidar.xyz, axis=1) < 3).sum()  # noqa: E731
    assert near_points(fog) > near_points(clear) + 100  # early returns from droplets


def still_sky(sun):
    """Pixels that are sky in both of the last two frames: no scene change there."""
    return (sun[1].labels == 12) & (sun[2].labels == 12)


def test_night_is_dark_with_fewer_noisier_events(sun):
    night = frames(3, condition="night", seed=3)
    assert gray(night[0].rgb).mean() < 0.5 * gray(sun[0].rgb).mean()
    assert gray(night[0].rgb)[night[0].labels == 12].mean() < 30
    assert len(night[2].events) < 0.6 * len(sun[2].events)
    sky = still_sky(sun)
    noise = lambda f: sky[f.events.y, f.events.x].sum()  # noqa: E731
    assert noise(night[2]) > 5 * noise(sun[2]) + 50


def test_rain_drops_lidar_points_and_adds_events(sun):
    rain = frames(3, condition="rain", seed=3)
    assert len(rain[2].lidar) < 0.93 * len(sun[2].lidar)
    near = lambda f: (np.linalg.norm(f.lidar.xyz, axis=1) < 3).sum()  # noqa: E731
    assert near(rain[2]) > near(sun[2]) + 30  # returns from drops
    sky = still_sky(sun)
    sky_events = lambda f: sky[f.events.y, f.events.x].sum()  # noqa: E731
    assert sky_events(rain[2]) > 3 * sky_events(sun[2]) + 50  # streaks across the still sky


def test_exposure_failures_and_low_res_events():
    over = frames(1, seed=3, failures=("overexposure",))[0]
    under = frames(1, seed=3, failures=("underexposure",))[0]
    assert (over.rgb == 255).mean() > 0.3
    assert gray(under.rgb).mean() < 40
    low = frames(2, seed=3, failures=("low_res_events",))[1]
    assert (low.events.width, low.events.height) == (W, H)
    assert np.unique(low.events.x).size <= W // 4


def test_motion_blur_smooths_the_image(sun):
    blurred = frames(1, condition="sun", seed=3, failures=("motion_blur",))[0]
    sharpness = lambda img: np.abs(np.diff(gray(img), axis=1)).mean()  # noqa: E731
    assert sharpness(blurred.rgb) < 0.8 * sharpness(sun[0].rgb)


def test_event_sensor_resolution_is_configurable():
    f = frames(2, event_width=80, event_height=60)[1]
    assert (f.events.width, f.events.height) == (80, 60)
    assert f.events.x.max() < 80 and f.events.y.max() < 60 and len(f.events) > 100


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="condition"):
        SequenceConfig(condition="snow")
    with pytest.raises(ValueError, match="failures"):
        SequenceConfig(failures=("lens_crack",))


def test_dataset_encodes_like_the_node_and_caches(tmp_path):
    pytest.importorskip("torch")
    from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

    ds = SyntheticDataset(seed=1, num_frames=3, size=(64, 64), conditions=("sun", "night"),
                          render_size=(96, 128), frames_per_sequence=2, cache_dir=tmp_path)
    sample = ds[2]
    assert sample["images"].shape == (4, 3, 64, 64) and sample["images"].dtype.is_floating_point
    assert sample["modality_mask"].shape == (4,) and sample["label"].shape == (64, 64)
    assert str(sample["label"].dtype) == "torch.int64" and sample["condition"] == "night"

    config = SequenceConfig(width=128, height=96, num_frames=1, condition="night", seed=1 * 100_003 + 1)
    frame = next(generate_sequence(config))
    encoded = preprocess(frame.to_bundle(), PreprocessConfig(input_size=(64, 64)), frame.T_camera_lidar)
    assert np.array_equal(sample["images"].numpy(), encoded.model_input.images[0])
    assert np.array_equal(sample["modality_mask"].numpy(), encoded.model_input.modality_mask[0])
    from sam_mmseg_ros.pipeline import resize_nearest

    assert str(sample["depth"].dtype) == "torch.float32"  # the depth task's target: metres, 0 = sky
    assert np.array_equal(sample["depth"].numpy(), resize_nearest(frame.depth, 64, 64))

    assert len(list(tmp_path.rglob("*.npz"))) == 1  # only the sequence holding frame 2 was rendered
    again = SyntheticDataset(seed=1, num_frames=3, size=(64, 64), conditions=("sun", "night"),
                             render_size=(96, 128), frames_per_sequence=2, cache_dir=tmp_path)
    assert np.array_equal(again[2]["images"].numpy(), sample["images"].numpy())
    assert again[2]["condition"] == "night"
