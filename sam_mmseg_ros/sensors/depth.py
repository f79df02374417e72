"""Depth image encoder: 32FC1 / 16UC1 -> metres -> HHA (or inverted depth) in [0, 1].

Everything after decoding runs at the model input resolution: the depth image is first
sampled down with nearest-neighbour (every value kept is a real measurement, an invalid pixel
never blends into a valid one and object edges stay sharp), then converted and encoded. HHA
needs the intrinsics of that resolution, which `CameraModel.resized` gives.

HHA (Gupta et al., ECCV 2014) as used here, each channel in [0, 1], 0 where depth is invalid:

| ch | meaning | scaling |
|----|---------|---------|
| 0 | horizontal disparity | min(1, 2 m / z): 1 up to 2 m, 0.2 at 10 m, 0.04 at 50 m |
| 1 | height above ground | (h - ground) / 10 m, clipped; ground = `camera_height_m` below the camera when given, else the 1st percentile of the pixel heights (Gupta's lowest-point rule, robust to outliers) |
| 2 | angle between surface normal and gravity-up | angle / 180 deg: ground 0, walls 0.5, overhangs towards 1; normals from central differences on every 2nd pixel (halves the cost; one-pixel normals are mostly noise) |

Gravity is the camera's -y axis (optical frame, y points down, camera level) unless a
`gravity_up` vector in the camera frame is given. DELIVER's depth modality is a folder of
8-bit 3-channel images named `hha`; the channels here times 255 give such an image. The
constants are ours, chosen for driving ranges (Gupta's were for rooms: disparity saturating
near 1 m, heights in cm up to 2.55 m), since DELIVER does not document its scaling.
"""

from __future__ import annotations

import numpy as np

from sam_mmseg_ros.contracts import ImageData, InputError
from sam_mmseg_ros.sensors.camera import CameraModel

HHA_DISPARITY_REF_M = 2.0
HHA_HEIGHT_RANGE_M = 10.0
GROUND_PERCENTILE = 1.0
DEPTH_ENCODINGS = ("32FC1", "16UC1")
DEPTH_METHODS = ("hha", "inverse")
_GRAVITY_UP_OPTICAL = (0.0, -1.0, 0.0)


def depth_to_metres(image: ImageData) -> np.ndarray:
    """float32 [H, W] metres; 0, negative, NaN and Inf become NaN (no measurement)."""
    array = _depth_array(image)
    if image.encoding == "16UC1":
        metres = array.astype(np.float32)
        metres *= np.float32(0.001)
        metres[array == 0] = np.nan
        return metres
    metres = np.array(array, dtype=np.float32, order="C")  # contiguous, so the rest is fast
    with np.errstate(invalid="ignore"):
        bad = metres <= 0  # NaN is already NaN
        bad |= metres == np.inf
    if bad.any():  # rare: a masked write costs ~10x the tests above
        metres[bad] = np.nan
    return metres


def nonfinite_count(image: ImageData) -> int:
    """NaN/Inf values in a float depth image (a 16UC1 image has none)."""
    array = _depth_array(image)
    if array.dtype != np.float32:
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def resize_depth_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour sample of a depth array at `size` = (h, w); a view when the factors
    are integers. The sample of output pixel i is input pixel floor((i + 0.5) * H / h)."""
    h, w = size
    H, W = array.shape[:2]
    if H % h == 0 and W % w == 0:
        fy, fx = H // h, W // w
        return array[fy // 2::fy, fx // 2::fx]
    rows = ((np.arange(h) + 0.5) * (H / h)).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * (W / w)).astype(np.intp)
    return array[rows[:, None], cols[None, :]]


def hha(depth_m: np.ndarray, camera: CameraModel, gravity_up=None,
        camera_height_m: float | None = None, out: np.ndarray | None = None,
        normal_step: int = 2) -> np.ndarray:
    """HHA float32 [H, W, 3] in [0, 1] of a metric depth image (NaN = invalid).

    The angle channel is computed on every `normal_step`-th pixel in each direction (when
    that divides the image) and repeated over the block; 1 computes it at every pixel.

    `camera` may be at any resolution of the same aspect ratio; it is resized to the depth
    image. `out`, if given, is a [3, H, W] float32 buffer the channels are written into; the
    returned array is then its [H, W, 3] view.
    """
    H, W = depth_m.shape
    if (camera.width, camera.height) != (W, H):
        camera = camera.resized(W, H)
    up = np.asarray(_GRAVITY_UP_OPTICAL if gravity_up is None else gravity_up, np.float64)
    up = (up / np.linalg.norm(up)).astype(np.float32)
    if out is None:
        out = np.empty((3, H, W), np.float32)
    z = np.asarray(depth_m, np.float32)
    xn, yn = _rays(camera)
    # NaN (invalid depth) flows through every channel and becomes 0 in _clamp01.

    # Disparity.
    np.divide(np.float32(HHA_DISPARITY_REF_M), z, out=out[0])
    _clamp01(out[0])

    # Height above the ground: up . (xn z, yn z, z).
    height = out[1]
    up_per_ray = up[1] * yn + up[2]  # [H, 1] ([H, W] for a fisheye camera)
    if up[0]:
        up_per_ray = up_per_ray + up[0] * xn
    np.multiply(z, up_per_ray, out=height)
    if camera_height_m is not None:
        ground = -float(camera_height_m)
    else:
        # A 1/64 sample gives the percentile to a few cm; np.partition, not np.percentile,
        # whose overhead was most of this step.
        sample = height[::8, ::8]
        sample = sample[np.isfinite(sample)]
        if sample.size:
            k = int(sample.size * GROUND_PERCENTILE / 100)
            ground = float(np.partition(sample, k)[k])
        else:
            ground = 0.0
    height -= np.float32(ground)
    height *= np.float32(1.0 / HHA_HEIGHT_RANGE_M)
    _clamp01(height)

    # Angle of the surface normal with gravity-up, on every `normal_step`-th pixel: the
    # normal costs ~25 array operations, and depth normals are noisy at one-pixel baselines.
    step = normal_step if H % normal_step == 0 and W % normal_step == 0 else 1
    normal_angle = _normal_angle if xn.shape[0] == 1 else _normal_angle_any_rays
    if step == 1:
        normal_angle(z, xn, yn, camera.fx, camera.fy, up, out[2])
    else:
        coarse = np.empty((H // step, W // step), np.float32)
        # Contiguous copies: the ~25 operations of the normal then run on packed rows.
        normal_angle(np.ascontiguousarray(z[::step, ::step]), np.ascontiguousarray(_every(xn, step)),
                     np.ascontiguousarray(_every(yn, step)), camera.fx / step, camera.fy / step, up, coarse)
        # Repeat along rows first: the copy then runs over contiguous rows.
        wide = np.repeat(coarse, step, axis=1)
        out[2].reshape(H // step, step, W)[...] = wide[:, None, :]
        out[2] *= np.isfinite(z)  # a multiply, not a masked copy (~3x slower)
    return out.transpose(1, 2, 0)


def inverse_depth(depth_m: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """Inverted depth [H, W, 3] in [0, 1]: 1 at the camera, 0 at `max_depth` and beyond and
    where invalid; the same value in all three channels."""
    value = 1.0 - np.minimum(np.asarray(depth_m, np.float32), np.float32(max_depth)) / np.float32(max_depth)
    value = np.nan_to_num(value, nan=0.0)
    return np.repeat(value[:, :, None], 3, axis=2)


def encode_depth(image: ImageData, camera: CameraModel | None, size: tuple[int, int] = (512, 512),
                 method: str = "hha", max_depth: float = 80.0, out: np.ndarray | None = None,
                 camera_height_m: float | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """float32 [3, H, W] in [0, 1] at `size` = (H, W), plus stats `valid_fraction` (of the
    pixels at model resolution) and `nonfinite_count` (NaN/Inf in a 32FC1 input).

    HHA needs `camera` (the intrinsics the depth image is registered to); without it this
    raises InputError rather than feed the model a differently encoded image.
    """
    if method not in DEPTH_METHODS:
        raise ValueError(f"unknown depth encoding '{method}' (use {' or '.join(DEPTH_METHODS)})")
    array = _depth_array(image)
    if method == "hha" and camera is None:
        raise InputError("no camera_info received: depth HHA needs the camera intrinsics")
    if camera is not None:
        _check_registered(array.shape, camera)
    small = ImageData(resize_depth_nearest(array, size), image.encoding)
    depth_m = depth_to_metres(small)
    stats = {
        "valid_fraction": float(np.count_nonzero(np.isfinite(depth_m))) / depth_m.size,
        "nonfinite_count": float(nonfinite_count(image)),
    }
    if out is None:
        out = np.empty((3, *size), np.float32)
    if method == "hha":
        hha(depth_m, camera, camera_height_m=camera_height_m, out=out)
    else:
        out[:] = inverse_depth(depth_m, max_depth).transpose(2, 0, 1)
    return out, stats


def _depth_array(image: ImageData) -> np.ndarray:
    dtype = {"32FC1": np.float32, "16UC1": np.uint16}.get(image.encoding)
    if dtype is None:
        raise InputError(f"unsupported depth encoding '{image.encoding}' "
                         f"(supported: {', '.join(DEPTH_ENCODINGS)})")
    array = np.asarray(image.array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or array.dtype != dtype:
        raise InputError(f"depth image with encoding '{image.encoding}' must be [H, W] "
                         f"{np.dtype(dtype).name}, got {list(array.shape)} {array.dtype}")
    if array.size == 0:
        raise InputError("depth image is empty")
    return array


def _check_registered(shape: tuple[int, ...], camera: CameraModel) -> None:
    """The depth image must be registered to the camera: same aspect ratio (any scale)."""
    H, W = shape[:2]
    if abs(W * camera.height - H * camera.width) > 0.01 * W * camera.height:
        raise InputError(f"depth image {W}x{H} is not registered to the camera "
                         f"{camera.width}x{camera.height} (aspect ratios differ)")


# Abramowitz & Stegun 4.4.45: arccos(a) = sqrt(1 - a) * poly(a) on [0, 1], error < 7e-5 rad,
# here divided by pi. np.arccos is not vectorized in numpy and cost 2 ms per 512x512 frame.
_ACOS_OVER_PI = tuple(np.float32(c / np.pi) for c in (1.5707288, -0.2121144, 0.0742610, -0.0187293))


def _arccos_over_pi(cos: np.ndarray, out: np.ndarray) -> None:
    """out = arccos(cos) / pi for cos in [-1, 1] (clipped), NaN stays NaN."""
    a = np.abs(cos)
    np.minimum(a, 1.0, out=a)
    c0, c1, c2, c3 = _ACOS_OVER_PI
    poly = a * c3
    poly += c2
    poly *= a
    poly += c1
    poly *= a
    poly += c0
    np.subtract(1.0, a, out=a)
    np.sqrt(a, out=a)
    np.multiply(a, poly, out=out)
    # arccos(-a) = pi - arccos(a), without a masked write (slow): with s = out in [0, 1/2],
    # 1/2 - copysign(s - 1/2, cos) is s for cos >= 0 and 1 - s for cos < 0 (cos + 0 turns
    # -0.0 into +0.0, which counts as >= 0).
    out -= 0.5
    np.copysign(out, cos + np.float32(0.0), out=out)
    np.subtract(0.5, out, out=out)


def _normal_angle(z, xn, yn, fx: float, fy: float, up: np.ndarray, out: np.ndarray) -> None:
    """out = angle(surface normal, up) / pi of depth z with rays xn [1, W], yn [H, 1]; the
    one-pixel border (no central difference) and invalid depth get 0.

    With P = z (xn, yn, 1), the normal dP/dv x dP/du (facing the camera) is proportional to
    (gx, gy, -(gx xn + gy yn + z)), gx = fx dz/du and gy = fy dz/dv by central differences:
    no cross product needed."""
    gx = z[1:-1, 2:] - z[1:-1, :-2]
    gx *= np.float32(0.5 * fx)
    gy = z[2:, 1:-1] - z[:-2, 1:-1]
    gy *= np.float32(0.5 * fy)
    minus_nz = gx * xn[:, 1:-1]
    minus_nz += gy * yn[1:-1]
    minus_nz += z[1:-1, 1:-1]
    norm = gx * gx
    norm += gy * gy
    norm += minus_nz * minus_nz
    np.sqrt(norm, out=norm)
    cos = gy * up[1]
    if up[0]:
        cos += gx * up[0]
    if up[2]:
        cos -= minus_nz * up[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos /= norm
    angle = out[1:-1, 1:-1]
    _arccos_over_pi(cos, out=angle)
    _clamp01(angle)
    out[0] = out[-1] = 0.0
    out[:, 0] = out[:, -1] = 0.0


def _normal_angle_any_rays(z, xn, yn, fx: float, fy: float, up: np.ndarray, out: np.ndarray) -> None:
    """`_normal_angle` for rays that are not a pinhole's (a fisheye camera: xn, yn [H, W]):
    the normal is the cross product dP/dv x dP/du of the 3-D points P = z (xn, yn, 1) by
    central differences, which needs no intrinsics (`fx`, `fy` are unused)."""
    points = np.stack([z * xn, z * yn, z])  # [3, H, W]
    du = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    dv = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
    normal = np.cross(dv, du, axis=0)
    norm = np.sqrt((normal * normal).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.tensordot(up, normal, axes=1) / norm
    angle = out[1:-1, 1:-1]
    _arccos_over_pi(cos.astype(np.float32), out=angle)
    _clamp01(angle)
    out[0] = out[-1] = 0.0
    out[:, 0] = out[:, -1] = 0.0


def _every(rays: np.ndarray, step: int) -> np.ndarray:
    """Every `step`-th entry of a ray array along the axes it varies on ([1, W], [H, 1] or [H, W])."""
    return rays[::step if rays.shape[0] > 1 else 1, ::step if rays.shape[1] > 1 else 1]


def _clamp01(a: np.ndarray) -> None:
    """Clamp to [0, 1] in place, NaN -> 0 (fmax ignores NaN, where clip would keep it)."""
    np.fmax(a, 0.0, out=a)
    np.fmin(a, 1.0, out=a)


_RAYS_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _rays(camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """camera.pixel_rays() as float32 [1, W] and [H, 1] (they broadcast against the depth),
    cached: the node sees the same camera every frame. A fisheye camera's rays are each
    pixel's true ray, [H, W] each: its pinhole rays would be far off toward the
    edges (a perspective camera's distortion is left out, as before: a few pixels at most)."""
    key = camera.key()
    rays = _RAYS_CACHE.get(key)
    if rays is None:
        if camera.distortion_model == "equidistant":
            xn, yn = camera.pixel_rays(undistort=True)
            rays = (np.ascontiguousarray(xn, np.float32), np.ascontiguousarray(yn, np.float32))
        else:
            xn, yn = camera.pixel_rays()
            rays = (xn[:1].astype(np.float32), yn[:, :1].astype(np.float32))
        if len(_RAYS_CACHE) >= 8:
            _RAYS_CACHE.clear()
        _RAYS_CACHE[key] = rays
    return rays
