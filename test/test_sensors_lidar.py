"""LiDAR projection, z-buffer rasterization and encoding, checked against hand computations."""

import numpy as np
import pytest

from sam_mmseg_ros.contracts import InputError, PointCloud
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.lidar import encode_lidar, project_points, rasterize

K = np.array([[500.0, 0, 320.0], [0, 400.0, 240.0], [0, 0, 1]])
PINHOLE = CameraModel(640, 480, K, np.zeros(5), "plumb_bob")
PLUMB_BOB = CameraModel(640, 480, K, np.array([-0.2, 0.05, 0.001, -0.002, 0.01]), "plumb_bob")
RATIONAL = CameraModel(640, 480, K, np.array([-0.2, 0.05, 0.001, -0.002, 0.01, 0.1, 0.02, 0.003]),
                       "rational_polynomial")
# LiDAR frame (x forward, y left, z up) mounted 0.2 m right of and 0.1 m above the camera.
T_CAMERA_LIDAR = np.array([[0, -1, 0, -0.2], [0, 0, -1, -0.1], [1, 0, 0, 0], [0, 0, 0, 1]], float)


def _hand_pixel(x, y, z, D, rational=False):
    """OpenCV's projection, written out independently of CameraModel."""
    xn, yn = x / z, y / z
    k1, k2, p1, p2, k3, k4, k5, k6 = np.pad(D, (0, 8 - len(D)))
    r2 = xn**2 + yn**2
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    if rational:
        radial /= 1 + k4 * r2 + k5 * r2**2 + k6 * r2**3
    xd = xn * radial + 2 * p1 * xn * yn + p2 * (r2 + 2 * xn**2)
    yd = yn * radial + p1 * (r2 + 2 * yn**2) + 2 * p2 * xn * yn
    return 500.0 * xd + 320.0, 400.0 * yd + 240.0


@pytest.mark.parametrize("camera, rational", [(PINHOLE, False), (PLUMB_BOB, False), (RATIONAL, True)])
def test_point_lands_on_the_hand_computed_pixel(camera, rational):
    point = (1.0, 0.5, 10.0)
    projected = project_points(PointCloud(np.array([point], np.float32)), np.eye(4), camera)
    u, v = _hand_pixel(*point, camera.D, rational)
    assert len(projected) == 1
    np.testing.assert_allclose([projected.u[0], projected.v[0]], [u, v], atol=1e-3)
    assert (projected.row[0], projected.col[0]) == (int(np.floor(v + 0.5)), int(np.floor(u + 0.5)))
    assert projected.depth[0] == pytest.approx(10.0)
    if camera is PINHOLE:
        assert (u, v) == pytest.approx((370.0, 260.0))


def test_extrinsics_are_applied():
    lidar_point = np.array([[10.0, -1.2, -0.4]])  # 10 m ahead, 1.2 m right, 0.4 m down
    projected = project_points(PointCloud(lidar_point), T_CAMERA_LIDAR, PINHOLE)
    # camera frame: x = 1.2 - 0.2 = 1.0, y = 0.4 - 0.1 = 0.3, z = 10
    np.testing.assert_allclose([projected.u[0], projected.v[0]], [370.0, 252.0], atol=1e-3)


def test_points_behind_outside_and_nonfinite_are_dropped():
    xyz = np.array([
        [0.0, 0.0, 5.0],  # kept
        [0.0, 0.0, -5.0],  # behind
        [0.0, 0.0, 0.05],  # too close to the camera plane
        [100.0, 0.0, 5.0],  # outside, to the right
        [0.0, -50.0, 5.0],  # outside, above
        [np.nan, 0.0, 5.0],
        [0.0, np.inf, 5.0],
        [1.0, 1.0, 20.0],  # kept
    ], np.float32)
    projected = project_points(PointCloud(xyz, np.arange(8, dtype=np.float32)), np.eye(4), PINHOLE)
    np.testing.assert_array_equal(projected.index, [0, 7])
    np.testing.assert_array_equal(projected.intensity, [0.0, 7.0])
    assert projected.points_total == 8 and projected.nonfinite_count == 2


def test_points_folded_back_by_distortion_are_dropped():
    # k1 = -0.5: the distorted radius peaks at r = 0.816 and falls after; a point at
    # x/z = 1.5 would be mapped to x_d = 1.5 * (1 - 0.5 * 2.25) = -0.19, inside the image.
    camera = CameraModel(640, 480, K, np.array([-0.5, 0, 0, 0, 0]), "plumb_bob")
    xyz = np.array([[15.0, 0.0, 10.0], [5.0, 0.0, 10.0]])
    projected = project_points(PointCloud(xyz), np.eye(4), camera)
    np.testing.assert_array_equal(projected.index, [1])


def test_float64_input_gives_the_same_projection():
    xyz = np.random.default_rng(3).uniform([-5, -3, 1], [5, 3, 30], (200, 3))
    p64 = project_points(PointCloud(xyz), np.eye(4), PLUMB_BOB)
    p32 = project_points(PointCloud(xyz.astype(np.float32)), np.eye(4), PLUMB_BOB)
    np.testing.assert_array_equal(p64.index, p32.index)
    np.testing.assert_allclose(p64.u, p32.u, atol=1e-3)


def test_zbuffer_keeps_the_nearest_point_in_either_order():
    far, near = [2.0, 1.0, 20.0], [1.0, 0.5, 10.0]  # same ray: same pixel
    for order in ([far, near], [near, far]):
        intensity = np.array([200.0 if p is far else 50.0 for p in order], np.float32)
        projected = project_points(PointCloud(np.array(order), intensity), np.eye(4), PINHOLE)
        raster = rasterize(projected, PINHOLE, (480, 640))
        assert raster.valid.sum() == 1
        assert raster.depth[260, 370] == pytest.approx(10.0)
        assert raster.intensity[260, 370] == 50.0


def test_resized_intrinsics_map_points_consistently():
    xyz = np.random.default_rng(4).uniform([-8, -5, 2], [8, 5, 40], (500, 3))
    for camera in (PINHOLE, PLUMB_BOB):
        projected = project_points(PointCloud(xyz), np.eye(4), camera)
        row, col = projected.pixels_at((120, 160))
        small = project_points(PointCloud(xyz), np.eye(4), camera.resized(160, 120))
        inside = np.isin(projected.index, small.index)
        assert inside.mean() > 0.98  # border points may round to the other side
        np.testing.assert_array_equal(row[inside], small.row)
        np.testing.assert_array_equal(col[inside], small.col)


def test_cloud_without_intensity_and_encoding_channels():
    xyz = np.array([[0.0, 0.0, 20.0], [10.0, 5.0, 100.0]])
    projected = project_points(PointCloud(xyz), np.eye(4), PINHOLE)
    assert projected.intensity is None
    raster = rasterize(projected, PINHOLE, (48, 64))
    encoded, stats = encode_lidar(raster, max_range_m=80.0)
    assert encoded.shape == (3, 48, 64) and encoded.dtype == np.float32
    assert not raster.has_intensity and not encoded[1].any()
    r, c = np.argwhere(raster.depth == 20.0)[0]
    np.testing.assert_allclose(encoded[:, r, c], [0.75, 0.0, 1.0])
    assert encoded[2].sum() == 2  # the point beyond max range is still marked valid
    assert encoded[0].max() == 0.75 and encoded.min() >= 0.0 and encoded.max() <= 1.0
    assert stats == {"points_total": 2.0, "points_in_image": 2.0, "in_image_fraction": 1.0,
                     "nonfinite_count": 0.0}


def test_intensity_is_scaled_by_its_range():
    projected = project_points(PointCloud(np.array([[0.0, 0.0, 5.0]]), np.array([51.0])),
                               np.eye(4), PINHOLE)
    encoded, _ = encode_lidar(rasterize(projected, PINHOLE, (48, 64)))
    assert encoded[1].max() == pytest.approx(51.0 / 255.0)
    encoded, _ = encode_lidar(rasterize(projected, PINHOLE, (48, 64)), intensity_scale=102.0)
    assert encoded[1].max() == pytest.approx(0.5)


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.float32, 255.0),
                                          (np.float64, 255.0), (np.int16, 32767.0), (np.uint32, 65535.0)])
def test_intensity_scale_is_fixed_by_the_field_type_not_by_the_frame(dtype, scale):
    """Ouster-like frames whose maxima are 250 and 260 keep one scale (a per-frame scale made
    them 257x apart)."""
    channels = []
    peaks = (250, 260) if np.dtype(dtype).itemsize > 1 else (200, 250)
    for peak in peaks:
        cloud = PointCloud(np.array([[0.0, 0.0, 5.0], [0.5, 0.0, 5.0]]), np.array([100, peak], dtype))
        encoded, _ = encode_lidar(rasterize(project_points(cloud, np.eye(4), PINHOLE), PINHOLE, (48, 64)))
        channels.append(np.sort(encoded[1][encoded[2] > 0]))
    assert channels[0][0] == channels[1][0] == pytest.approx(100.0 / scale)
    assert channels[1][1] == pytest.approx(min(1.0, peaks[1] / scale))


def test_empty_cloud():
    projected = project_points(PointCloud(np.zeros((0, 3), np.float32)), np.eye(4), PINHOLE)
    assert len(projected) == 0
    encoded, stats = encode_lidar(rasterize(projected, PINHOLE, (48, 64)))
    assert not encoded.any()
    assert stats["points_total"] == 0 and stats["in_image_fraction"] == 0.0


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        project_points(PointCloud(np.zeros((4, 2))), np.eye(4), PINHOLE)
    with pytest.raises(InputError, match="4x4"):
        project_points(PointCloud(np.zeros((4, 3))), np.eye(3), PINHOLE)
    with pytest.raises(InputError, match="intensities"):
        project_points(PointCloud(np.zeros((4, 3)), np.zeros(3)), np.eye(4), PINHOLE)
    projected = project_points(PointCloud(np.zeros((4, 3))), np.eye(4), PINHOLE)
    with pytest.raises(InputError, match="projected for"):
        rasterize(projected, PINHOLE.resized(320, 240), (48, 64))


@pytest.mark.parametrize("camera", [PINHOLE, PLUMB_BOB, RATIONAL])
def test_fast_cut_keeps_every_point_that_lands_in_the_image(camera):
    """The pre-filter before distortion must not lose points near the image border."""
    axis = np.linspace(-1.2, 1.2, 241)
    xn, yn = np.meshgrid(axis, axis)
    xyz = np.stack([xn.ravel() * 5, yn.ravel() * 5, np.full(xn.size, 5.0)], axis=1)
    u, v, _, _ = camera.project(xyz)
    expected = np.flatnonzero((np.floor(u + 0.5) >= 0) & (np.floor(u + 0.5) < 640)
                              & (np.floor(v + 0.5) >= 0) & (np.floor(v + 0.5) < 480))
    projected = project_points(PointCloud(xyz), np.eye(4), camera)
    np.testing.assert_array_equal(projected.index, expected)


@pytest.mark.parametrize("camera", [PINHOLE, PLUMB_BOB, RATIONAL])
def test_float32_projection_stays_float32_and_matches_float64(camera):
    xyz = np.random.default_rng(4).uniform([-8, -6, 2], [8, 6, 30], (500, 3))
    u64, v64, _, _ = camera.project(xyz)
    u32, v32, _, _ = camera.project(xyz.astype(np.float32))
    assert u64.dtype == np.float64 and u32.dtype == v32.dtype == np.float32
    np.testing.assert_allclose(u32, u64, atol=2e-3)
    np.testing.assert_allclose(v32, v64, atol=2e-3)
    xn, yn = xyz[:, 0] / xyz[:, 2], xyz[:, 1] / xyz[:, 2]
    inside_clamp = (np.abs(xn) <= 2) & (np.abs(yn) <= 2)
    assert 0 < inside_clamp.sum() < len(xyz)
    u, v = camera.to_pixels(xn[inside_clamp], yn[inside_clamp])
    np.testing.assert_allclose([u, v], [u64[inside_clamp], v64[inside_clamp]], atol=1e-9)


# A 190-degree-class fisheye as camera_calibration writes it (distortion_model "equidistant",
# D = [k1, k2, k3, k4]) with a little skew, at 1280x960.
FISHEYE_K = np.array([[330.0, 0.4, 641.3], [0, 331.5, 478.9], [0, 0, 1]])
FISHEYE = CameraModel.from_camera_info(1280, 960, "equidistant", [0.021, -0.006, 0.0012, -0.0002],
                                       FISHEYE_K.ravel())


def _wide_points(n=4000, seed=0):
    """Points up to 85 degrees off the optical axis, in front of the camera."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, np.radians(85), n)
    phi = rng.uniform(-np.pi, np.pi, n)
    dist = rng.uniform(0.5, 40, n)
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1) * dist[:, None]


def test_fisheye_projection_matches_opencv_fisheye():
    cv2 = pytest.importorskip("cv2")
    points = _wide_points()
    expected, _ = cv2.fisheye.projectPoints(points[:, None, :], np.zeros(3), np.zeros(3), FISHEYE_K,
                                            FISHEYE.D, alpha=FISHEYE_K[0, 1] / FISHEYE_K[0, 0])
    u, v, z, in_front = FISHEYE.project(points)
    assert in_front.all()
    np.testing.assert_allclose(np.stack([u, v], 1), expected[:, 0], atol=1e-6)
    # float32, as the LiDAR path runs it: well under a pixel.
    u32, v32, _, _ = FISHEYE.project(points.astype(np.float32))
    np.testing.assert_allclose(np.stack([u32, v32], 1), expected[:, 0], atol=5e-3)


def test_fisheye_lidar_points_land_where_opencv_puts_them_far_off_axis():
    """The pinhole clamp (normalized radius 2, 63 degrees) must not cut a fisheye: points at 80
    degrees still land on their OpenCV pixel."""
    cv2 = pytest.importorskip("cv2")
    points = _wide_points(seed=1)
    projected = project_points(PointCloud(points.astype(np.float32)), np.eye(4), FISHEYE)
    expected, _ = cv2.fisheye.projectPoints(points[projected.index][:, None, :], np.zeros(3), np.zeros(3),
                                            FISHEYE_K, FISHEYE.D, alpha=FISHEYE_K[0, 1] / FISHEYE_K[0, 0])
    np.testing.assert_allclose(np.stack([projected.u, projected.v], 1), expected[:, 0], atol=5e-3)
    inside = ((expected[:, 0, 0] >= -0.5) & (expected[:, 0, 0] < 1279.5) & (expected[:, 0, 1] >= -0.5)
              & (expected[:, 0, 1] < 959.5))
    assert inside.all()
    all_expected, _ = cv2.fisheye.projectPoints(points[:, None, :], np.zeros(3), np.zeros(3), FISHEYE_K,
                                                FISHEYE.D, alpha=FISHEYE_K[0, 1] / FISHEYE_K[0, 0])
    lands = ((all_expected[:, 0, 0] >= -0.5) & (all_expected[:, 0, 0] < 1279.5)
             & (all_expected[:, 0, 1] >= -0.5) & (all_expected[:, 0, 1] < 959.5))
    assert abs(len(projected) - lands.sum()) <= 3  # float32 rounding right at the image border
    assert np.degrees(np.arccos(points[projected.index, 2] / np.linalg.norm(
        points[projected.index], axis=1))).max() > 80


@pytest.mark.parametrize("camera", [FISHEYE, PLUMB_BOB, RATIONAL])
def test_undistorted_pixel_rays_reproject_onto_their_pixels_and_match_opencv(camera):
    cv2 = pytest.importorskip("cv2")
    xn, yn = camera.pixel_rays(undistort=True)
    rows, cols = np.mgrid[0:camera.height:29, 0:camera.width:37]
    rows, cols = rows.ravel(), cols.ravel()
    if camera.is_fisheye:  # this lens sees 2 x 89 degrees: the image corners lie beyond it
        theta_d = np.hypot((cols - camera.cx) / camera.fx, (rows - camera.cy) / camera.fy)
        seen = theta_d < 0.98 * np.radians(89.0)
        rows, cols = rows[seen], cols[seen]
    u, v, _, _ = camera.project(np.stack([xn[rows, cols], yn[rows, cols], np.ones(rows.size)], 1))
    np.testing.assert_allclose(np.stack([u, v], 1), np.stack([cols, rows], 1), atol=1e-6)
    # OpenCV's fisheye undistortPoints ignores skew: compare on the same camera without it.
    plain = CameraModel(camera.width, camera.height, camera.K * [[1, 0, 1], [1, 1, 1], [1, 1, 1]], camera.D,
                        camera.distortion_model)
    xn, yn = plain.pixel_rays(undistort=True)
    pixels = np.stack([cols, rows], 1).astype(np.float64)[:, None]
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-15)
    expected = (cv2.fisheye.undistortPoints(pixels, plain.K, plain.D, criteria=criteria) if plain.is_fisheye
                else cv2.undistortPoints(pixels, plain.K, plain.D, criteria=criteria))[:, 0]
    np.testing.assert_allclose(np.stack([xn[rows, cols], yn[rows, cols]], 1), expected, atol=1e-6)
