"""Synthetic scenes: determinism, labels, cross-sensor geometry, street variety, and the physics of
the conditions (fog by visibility, photon-limited night, active depth camera, LiDAR in fog), failures."""

from dataclasses import replace

import numpy as np
import pytest

from sam_mmseg_ros.data import physics
from sam_mmseg_ros.data.synthetic import (
    CAMERA_FRAME,
    LIDAR_FRAME,
    SequenceConfig,
    SyntheticDataset,
    class_ids_present,
    generate_sequence,
    sequence_rig,
    sequence_street,
)
from sam_mmseg_ros.labels import NUM_CLASSES, class_id

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
    depth = frame.depth_true[row[inside], col[inside]]
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
    # sky has no depth, everything else has a true depth; the depth camera measures part of it
    sky = f.labels == 12
    assert sky.any() and np.all(f.depth_true[sky] == 0) and np.all(f.depth_true[~sky] > 0)
    assert np.all(f.depth[sky] == 0) and 0.2 < (f.depth[~sky] > 0).mean() < 1.0
    for name in ("depth_true", "luminance", "transmittance"):
        assert getattr(f, name).shape == (H, W) and getattr(f, name).dtype == np.float32, name
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


def ranges(frame):
    """Euclidean camera-to-surface distance per pixel (inf for sky) from the true depth."""
    xn, yn = frame.camera.pixel_rays()
    r = frame.depth_true * np.sqrt(1 + xn**2 + yn**2)
    return np.where(frame.depth_true > 0, r, np.inf)


def test_fog_transmittance_follows_koschmieder_at_the_set_visibility():
    for visibility in (20.0, 45.0):
        f = frames(1, condition="fog", seed=3, fog_visibility_m=visibility, fog_patchiness=0.0)[0]
        r = ranges(f)
        surface = np.isfinite(r)
        # T = exp(-beta r) with beta = -ln(0.05) / V: 5 % contrast left at the visibility
        expected = np.exp(np.log(physics.KOSCHMIEDER_CONTRAST) * r[surface] / visibility)
        np.testing.assert_allclose(f.transmittance[surface], expected, rtol=1e-3, atol=1e-6)
        at_v = np.abs(r - visibility) < 0.02 * visibility
        assert at_v.sum() > 10
        np.testing.assert_allclose(f.transmittance[at_v], 0.05, rtol=0.1)
        assert np.all(f.transmittance[~surface] == 0)
    # Patchy fog: the same distance is more or less clear depending on where it is.
    patchy = frames(1, condition="fog", seed=3, fog_visibility_m=30.0, fog_patchiness=0.5)[0]
    r = ranges(patchy)
    band = np.abs(r - 15) < 1.0
    assert np.log(patchy.transmittance[band]).std() > 0.05
    # Visibility is drawn per sequence in 20-60 m.
    draws = {round(physics.draw_weather(physics.CONDITION_TABLE["fog"], np.random.default_rng([s, 23])).visibility_m)
             for s in range(20)}
    assert min(draws) >= 20 and max(draws) <= 60 and len(draws) > 10


def test_fog_lowers_far_contrast_and_lidar_range(sun):
    fog = frames(1, condition="fog", seed=3, fog_visibility_m=25.0)[0]
    clear = sun[0]
    far = (clear.depth_true > 30) & (clear.labels != 12)
    assert far.sum() > 100
    assert gray(fog.rgb)[far].std() < 0.5 * gray(clear.rgb)[far].std()
    far_points = lambda f: (np.linalg.norm(f.lidar.xyz, axis=1) > 30).sum()  # noqa: E731
    assert far_points(fog) < 0.3 * far_points(clear)
    near_points = lambda f: (np.linalg.norm(f.lidar.xyz, axis=1) < 3).sum()  # noqa: E731
    assert near_points(fog) > near_points(clear) + 100  # returns from the droplets


def test_lidar_returns_follow_the_fog_density():
    rng = np.random.default_rng(0)
    sensor = physics.LidarSensor()
    n = 40_000
    nothing = np.full(n, np.inf)
    ones = np.ones(n)
    fractions = []
    for beta in (0.05, 0.1, 0.15):
        _, fog, fog_range, _ = physics.lidar_returns(nothing, ones, ones, nothing, beta, rng)
        # Exponentially distributed (speckle) fog power with mean fog_return * beta above the threshold.
        expected = np.exp(-sensor.threshold / (sensor.fog_return * beta))
        assert abs(fog.mean() - expected) < 0.01, (beta, fog.mean(), expected)
        assert np.median(fog_range[fog]) < 10.0
        fractions.append(fog.mean())
    assert fractions == sorted(fractions)
    # A target's return: reflectivity, (40 m / range)^2 and two-way extinction against the threshold.
    beta = physics.extinction_from_visibility(30.0)
    distance = np.linspace(1.0, 60.0, 600)
    tau = beta * distance
    target, fog, _, _ = physics.lidar_returns(distance, np.full(600, 0.5), np.ones(600), tau, 0.0, rng)
    power = 0.5 * np.minimum((40.0 / distance) ** 2, 1.0) * np.exp(-2 * tau)
    assert np.array_equal(target, power > sensor.threshold) and not fog.any()
    reach = distance[target].max()
    assert 15.0 < reach < 30.0  # in clear air it reaches 60 m
    clear, _, _, _ = physics.lidar_returns(distance, np.full(600, 0.5), np.ones(600), 0 * tau, 0.0, rng)
    assert clear.all()


def test_depth_camera_is_active_sees_in_the_dark_and_reads_short_in_fog():
    kwargs = dict(seed=5, width=W, height=H)
    sun_f, night_f = frames(1, condition="sun", **kwargs)[0], frames(1, condition="night", **kwargs)[0]
    fog_f = frames(1, condition="fog", fog_visibility_m=25.0, fog_patchiness=0.0, **kwargs)[0]
    surface = night_f.depth_true > 0

    def accurate(f):  # measured within 10 % of the truth
        return (np.abs(f.depth - f.depth_true) < 0.1 * f.depth_true)[surface].mean()

    # Its own light: at night nothing competes with the signal (in sunlight the ambient shot
    # noise costs range); in fog the signal dies both ways and the droplets answer instead.
    assert accurate(night_f) >= accurate(sun_f) > accurate(fog_f) + 0.2
    far = surface & (sun_f.depth_true > 30)
    assert (night_f.depth[far] > 0).mean() > (sun_f.depth[far] > 0).mean()
    good = (night_f.depth > 0) & surface
    error = np.abs(night_f.depth[good] - night_f.depth_true[good]) / night_f.depth_true[good]
    assert np.median(error) < 0.03
    # Light returned by the droplets in front of the lens mixes into every phase: depths read short.
    read = (fog_f.depth > 0) & (fog_f.depth_true > 6)
    assert read.sum() > 20
    assert np.median((fog_f.depth[read] - fog_f.depth_true[read]) / fog_f.depth_true[read]) < -0.02


def test_night_camera_counts_photons():
    """Flat fields through the night camera (longest exposure, highest gain): the electrons read
    back from the 8-bit output have Poisson variance (= mean) plus read noise."""
    sensor = physics.CameraSensor()
    exposure, gain = sensor.max_exposure_s, sensor.max_gain
    rng = np.random.default_rng(1)
    for electrons in (8.0, 30.0, 120.0):
        radiance = np.full((256, 256, 3), electrons / (sensor.electrons_per_unit_s * exposure), np.float32)
        image = sensor.develop(radiance, exposure, gain, rng)
        read_back = (image.astype(np.float64) / 255.0) ** 2.2 * sensor.full_well / gain
        lit = read_back[64:-64, 64:-64]  # away from the glare's border effects
        mean, var = lit.mean(), lit.var()
        assert abs(mean - electrons) < 0.08 * electrons + 1.0, (electrons, mean)
        expected_var = electrons + sensor.read_noise**2 + sensor.dark_current * exposure
        assert 0.75 * expected_var < var < 1.35 * expected_var, (electrons, var, expected_var)
    # The auto exposure runs out of exposure time and gain at night, not in the day.
    assert sensor.auto_exposure(np.full((64, 64), 1e-5, np.float32)) == (sensor.max_exposure_s, sensor.max_gain)
    day_exposure, day_gain = sensor.auto_exposure(np.full((64, 64), 0.3, np.float32))
    assert day_exposure < 0.002 and day_gain == 1.0


def still_sky(sun):
    """Pixels that are sky in both of the last two frames: no scene change there."""
    return (sun[1].labels == 12) & (sun[2].labels == 12)


def test_night_is_dark_outside_the_lights_with_noisier_events(sun):
    night = frames(3, condition="night", seed=3)
    f = night[0]
    sky = f.labels == 12
    assert f.luminance[sky].max() < 0.05  # cd/m2: moonless sky glow
    assert np.median(f.luminance[~sky]) < 1e-3 * np.median(sun[0].luminance[~sky])
    assert (f.luminance < 0.1).mean() > 0.25  # beyond the lamps and the low beams: a few photons at most
    # There the 8-bit image is the sensor's noise floor (read noise and dark current at full gain).
    assert np.median(gray(f.rgb)[sky]) < 45
    still = still_sky(sun)
    noise = lambda fr: still[fr.events.y, fr.events.x].sum()  # noqa: E731
    assert noise(night[2]) > 5 * noise(sun[2]) + 50


def test_low_beam_lights_the_near_road_and_cuts_off_above_the_horizon():
    hot = physics.headlamp_intensity(np.array([25.0]), np.array([-1.0]), np.array([-0.5]))[0]
    assert 15_000 < hot * physics.LUX_PER_UNIT < 25_000  # both lamps, candela
    above = physics.headlamp_intensity(np.array([25.0]), np.array([0.0]), np.array([1.0]))[0]
    assert above < 0.05 * hot
    behind = physics.headlamp_intensity(np.array([-5.0]), np.array([0.0]), np.array([-0.5]))[0]
    assert behind == 0.0
    # Irradiance on walls facing the car, in the same direction of the beam: inverse square.
    points = np.array([[10.0, 0.0, 0.5], [40.0, 0.0, -0.1]])
    normals = np.array([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    e = physics.night_irradiance(points, normals, np.zeros((0, 3)), np.ones(3), np.array([0.0, 0.0, 0.7]),
                                 np.eye(3), 0.0)[:, 0]
    assert e[0] / e[1] == pytest.approx(16.0, rel=0.01)


def test_streets_differ_in_layout_and_vehicle():
    """Curves, side streets, hills and camera mounts vary with the seed, so a map of the most
    frequent class per pixel (no sensor at all) gets much of another street wrong."""
    layouts = [sequence_street(SequenceConfig(seed=s, num_frames=1)).layout for s in range(40)]
    assert sum(lay.curvature != 0 for lay in layouts) > 10 and sum(lay.curvature == 0 for lay in layouts) > 5
    assert sum(lay.has_crossing for lay in layouts) > 8
    assert sum(len(lay.terrain_grade) > 1 for lay in layouts) > 8
    rigs = [sequence_rig(SequenceConfig(seed=s)) for s in range(40)]
    assert np.ptp([r.camera_height_m for r in rigs]) > 0.8 and np.ptp([r.hfov_deg for r in rigs]) > 30
    assert np.ptp([r.camera_pitch_deg for r in rigs]) > 6
    labels = np.stack([frames(1, seed=s, width=64, height=48, lidar_columns=64)[0].labels for s in range(24)])
    fit, held_out = labels[:16], labels[16:]
    counts = np.stack([(fit == c).sum(0) for c in range(NUM_CLASSES)])
    prior = counts.argmax(0)
    assert (held_out == prior).mean() < 0.75


def test_curbs_raise_the_sidewalk_and_slopes_tilt_the_ground():
    from sam_mmseg_ros.data import raycast
    from sam_mmseg_ros.data.street import draw_layout

    layout = replace(draw_layout(0, 100.0), curvature=0.0, crossing_s=float("nan"), lanes=1, lane_width=3.5,
                     parking_width=0.0, sidewalk_width=3.0, curb_height=0.15, terrain_x=(-np.inf, 20.0),
                     terrain_grade=(0.0, 0.1))
    origin = np.array([0.0, 0.0, 1.5])
    # Looking right and down across the road: the road, then the curb's face, then the sidewalk top.
    y = -np.linspace(0.5, 6.0, 400)
    dirs = np.stack([np.full_like(y, 5.0), y, np.full_like(y, -1.5)], 1)
    t, normal, s, n = raycast._ground(layout, origin, dirs, 100.0)
    z = origin[2] + t * dirs[:, 2]
    hit_n = origin[1] + t * dirs[:, 1]
    road = hit_n > -3.5 + 1e-6
    np.testing.assert_allclose(z[road], 0.0, atol=1e-9)
    top = np.abs(z - 0.15) < 1e-9
    assert top.any() and np.all(hit_n[top] <= -3.5 + 1e-6)
    face = ~road & ~top
    assert face.any() and np.allclose(normal[face], [0.0, 1.0, 0.0]) and np.all((z[face] > 0) & (z[face] < 0.15))
    labels = layout.ground_labels(s, n, 0)
    assert set(np.unique(labels[top | face]).tolist()) == {class_id("SideWalk")}
    # Ahead, the road climbs 10 % after x = 20 m.
    ahead = np.array([[1.0, 0.0, -0.02]])
    t, normal, _, _ = raycast._ground(layout, origin, ahead, 200.0)
    x = t[0]
    assert x > 20 and abs(origin[2] - 0.02 * x - 0.1 * (x - 20.0)) < 1e-6
    np.testing.assert_allclose(normal[0], np.array([-0.1, 0.0, 1.0]) / np.sqrt(1.01))


def test_rain_drops_lidar_points_and_adds_events(sun):
    rain = frames(3, condition="rain", seed=3)
    assert len(rain[2].lidar) < 0.93 * len(sun[2].lidar)
    near = lambda f: (np.linalg.norm(f.lidar.xyz, axis=1) < 2).sum()  # noqa: E731
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
    assert np.array_equal(sample["depth"].numpy(), resize_nearest(frame.ground_truth_depth(), 64, 64))

    assert len(list(tmp_path.rglob("*.npz"))) == 1  # only the sequence holding frame 2 was rendered
    again = SyntheticDataset(seed=1, num_frames=3, size=(64, 64), conditions=("sun", "night"),
                             render_size=(96, 128), frames_per_sequence=2, cache_dir=tmp_path)
    assert np.array_equal(again[2]["images"].numpy(), sample["images"].numpy())
    assert again[2]["condition"] == "night"
