"""Camera model built from sensor_msgs/CameraInfo fields.

Projection applies the lens distortion, so LiDAR points land on the raw, distorted image the
camera publishes: plumb_bob and rational_polynomial (OpenCV's pinhole models) or equidistant
(OpenCV's fisheye model, Kannala-Brandt: the image radius is a polynomial in the angle from the
optical axis, theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), so it stays finite
up to 90 degrees off-axis where a pinhole model's tan(theta) does not). `resized` keeps the
intrinsics right when images are scaled to the model input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sam_mmseg_ros.contracts import InputError

FISHEYE_MODELS = ("equidistant", "fisheye")
"""ROS's name for OpenCV's fisheye model, and the name some drivers write instead."""
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", *FISHEYE_MODELS, "none", "")
DISTORTION_CLAMP = 2.0
"""`project` clamps normalized coordinates (x/z, y/z) of the pinhole models to +-this before
distorting: their polynomials in r^2 diverge far outside the field of view."""
FISHEYE_MAX_THETA = np.radians(89.0)
"""The fisheye model's polynomial is in the angle theta, finite for every point in front of the
camera; its radial limit is the normalized radius tan(89 degrees)."""


@dataclass(frozen=True, eq=False)
class CameraModel:
    width: int
    height: int
    K: np.ndarray  # [3, 3] float64
    D: np.ndarray = field(default_factory=lambda: np.zeros(5))  # distortion coefficients
    distortion_model: str = "plumb_bob"
    frame_id: str = ""

    def key(self) -> tuple:
        """Hashable identity of the calibration, for caches keyed by camera (ndarray fields make
        the dataclass itself unhashable)."""
        return (self.width, self.height, tuple(self.K.ravel()), tuple(self.D), self.distortion_model)

    def __post_init__(self):
        K = np.asarray(self.K, np.float64).reshape(3, 3)
        D = np.asarray(self.D, np.float64).ravel()
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"camera_info has invalid size {self.width}x{self.height}")
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InputError(f"camera_info has invalid intrinsics K={K.ravel().tolist()}")
        if self.distortion_model not in DISTORTION_MODELS:
            raise InputError(f"unsupported distortion model '{self.distortion_model}' "
                             f"(supported: plumb_bob, rational_polynomial, equidistant)")
        if not np.all(np.isfinite(D)):
            raise InputError("camera_info distortion coefficients are not finite")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", D)

    @classmethod
    def from_camera_info(cls, width: int, height: int, distortion_model: str, d, k, p=None,
                         frame_id: str = "") -> CameraModel:
        """From CameraInfo fields. When K is all zero (an uncalibrated driver) P's left 3x3 is used."""
        K = np.asarray(k, np.float64).reshape(3, 3)
        if not K.any() and p is not None and np.asarray(p).any():
            K = np.asarray(p, np.float64).reshape(3, 4)[:, :3]
        return cls(int(width), int(height), K, np.asarray(d, np.float64), distortion_model or "plumb_bob",
                   frame_id)

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float, frame_id: str = "") -> CameraModel:
        """An undistorted camera with square pixels and the given horizontal field of view."""
        fx = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
        K = np.array([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]])
        return cls(width, height, K, np.zeros(5), "plumb_bob", frame_id)

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def is_fisheye(self) -> bool:
        return self.distortion_model in FISHEYE_MODELS

    @property
    def has_distortion(self) -> bool:
        """Whether projection differs from the plain pinhole (a fisheye always does: theta, not
        tan(theta), even with all coefficients zero)."""
        return self.is_fisheye or bool(np.any(self.D != 0))

    @property
    def distortion_radius(self) -> float:
        """Normalized radius (of x/z, y/z) up to which `project` follows the lens model; beyond it
        pinhole-model coordinates are clamped."""
        return float(np.tan(FISHEYE_MAX_THETA)) if self.is_fisheye else DISTORTION_CLAMP

    def resized(self, width: int, height: int) -> CameraModel:
        """The same camera seen through an image scaled to width x height (pixel centres kept)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 1] *= sx
        K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return CameraModel(width, height, K, self.D, self.distortion_model, self.frame_id)

    def distort(self, xn: np.ndarray, yn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the distortion model to normalized image coordinates. float32 input stays
        float32 (half the memory traffic; 1e-4 px at 4k resolution), other input is float64."""
        if not self.has_distortion:
            return xn, yn
        dtype = np.result_type(xn, yn, np.float32)
        if self.is_fisheye:
            return self._distort_fisheye(xn, yn, dtype)
        d = np.zeros(8, dtype)
        d[: min(8, self.D.size)] = self.D[:8]
        k1, k2, p1, p2, k3, k4, k5, k6 = d
        r2 = xn * xn
        r2 += yn * yn
        radial = _horner(r2, k1, k2, k3)
        if self.distortion_model == "rational_polynomial":
            radial /= _horner(r2, k4, k5, k6)
        xd = xn * radial
        yd = yn * radial
        if p1 or p2:
            xy2 = xn * yn
            xy2 *= 2
            xd += p1 * xy2 + p2 * (r2 + 2 * xn * xn)
            yd += p1 * (r2 + 2 * yn * yn) + p2 * xy2
        return xd, yd

    def _distort_fisheye(self, xn, yn, dtype):
        """OpenCV fisheye (cv2.fisheye.projectPoints): theta = atan(r), r_d = theta (1 + k1 theta^2
        + k2 theta^4 + k3 theta^6 + k4 theta^8), coordinates scaled by r_d / r."""
        k = np.zeros(4, dtype)
        k[: min(4, self.D.size)] = self.D[:4]
        r = np.hypot(xn, yn).astype(dtype, copy=False)
        theta = np.arctan(r)
        theta2 = theta * theta
        radial = _horner4(theta2, k)
        radial *= theta
        scale = np.divide(radial, r, out=np.ones_like(r), where=r > 0)
        return xn * scale, yn * scale

    def undistort(self, xd: np.ndarray, yd: np.ndarray, tolerance: float = 1e-12,
                  max_iterations: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Normalized undistorted coordinates of distorted ones (the inverse of `distort`), float64:
        Newton's method on theta for the fisheye model (distorted radii beyond its 89-degree limit
        stay at the limit), OpenCV's fixed-point iteration for the pinhole models, continued on the
        coordinates that have not converged yet. For per-camera tables, not per frame."""
        xd, yd = np.asarray(xd, np.float64), np.asarray(yd, np.float64)
        if not self.has_distortion:
            return xd, yd
        if self.is_fisheye:
            k = np.zeros(4)
            k[: min(4, self.D.size)] = self.D[:4]
            limit = FISHEYE_MAX_THETA * _horner4(np.float64(FISHEYE_MAX_THETA) ** 2, k)
            theta_d = np.minimum(np.hypot(xd, yd), limit)
            theta = theta_d.copy()
            for _ in range(50):
                t2 = theta * theta
                step = (theta * _horner4(t2, k) - theta_d) / (
                    1 + t2 * (3 * k[0] + t2 * (5 * k[1] + t2 * (7 * k[2] + t2 * 9 * k[3]))))
                theta -= step
                if np.abs(step).max() < tolerance:
                    break
            scale = np.divide(np.tan(theta), np.hypot(xd, yd), out=np.ones_like(theta), where=theta_d > 0)
            return xd * scale, yd * scale
        shape = np.broadcast(xd, yd).shape
        xd, yd = np.broadcast_to(xd, shape).ravel(), np.broadcast_to(yd, shape).ravel()
        xn, yn = xd.copy(), yd.copy()
        todo = np.arange(xd.size)
        for _ in range(max_iterations):
            x2, y2 = self.distort(xn[todo], yn[todo])
            ex, ey = xd[todo] - x2, yd[todo] - y2
            xn[todo] += ex
            yn[todo] += ey
            todo = todo[np.maximum(np.abs(ex), np.abs(ey)) > tolerance]
            if not todo.size:
                break
        return xn.reshape(shape), yn.reshape(shape)

    def to_pixels(self, xn: np.ndarray, yn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) pixel coordinates of normalized coordinates (x/z, y/z), distortion applied;
        float32 stays float32. Without the clamp of `project`: for coordinates already known
        to be inside the distortion's valid radius."""
        xd, yd = self.distort(xn, yn)
        K = self.K.astype(np.result_type(xd, yd, np.float32))
        u = xd * K[0, 0]
        if K[0, 1]:
            u += K[0, 1] * yd
        u += K[0, 2]
        v = yd * K[1, 1]
        v += K[1, 2]
        return u, v

    def project(self, points_cam: np.ndarray, min_depth: float = 1e-3):
        """Project [N, 3] points in the camera optical frame (z forward).

        Returns (u, v, z, in_front): pixel coordinates (float, pixel centres at integers; float32
        for float32 points, else float64), depth along the optical axis, and a mask of points in
        front of the camera. u, v of points behind the camera are meaningless; callers mask them
        with `in_front`.
        """
        pts = np.asarray(points_cam)
        if pts.dtype.kind != "f":
            pts = pts.astype(np.float64)
        z = pts[:, 2]
        in_front = z > min_depth
        safe_z = np.where(in_front, z, 1.0)
        xn, yn = pts[:, 0] / safe_z, pts[:, 1] / safe_z
        if self.has_distortion and not self.is_fisheye:
            lim = DISTORTION_CLAMP
            xn, yn = np.clip(xn, -lim, lim), np.clip(yn, -lim, lim)
        u, v = self.to_pixels(xn, yn)
        return u, v, z, in_front

    def pixel_rays(self, undistort: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Normalized (x/z, y/z) for every pixel: [H, W] each. Without `undistort` the distortion
        is ignored (separable, broadcast views); with it each pixel's true ray (`undistort`)."""
        u = np.arange(self.width, dtype=np.float64)
        v = np.arange(self.height, dtype=np.float64)
        yd = (v[:, None] - self.cy) / self.fy
        xd = (u[None, :] - self.cx - self.K[0, 1] * yd) / self.fx if undistort else (u[None, :] - self.cx) / self.fx
        shape = (self.height, self.width)
        if undistort and self.has_distortion:
            return self.undistort(np.broadcast_to(xd, shape), np.broadcast_to(yd, shape))
        return np.broadcast_to(xd, shape), np.broadcast_to(yd, shape)


def _horner4(t2: np.ndarray, k) -> np.ndarray:
    """1 + k1 t2 + k2 t2^2 + k3 t2^3 + k4 t2^4 (Horner's scheme)."""
    out = t2 * k[3]
    for c in (k[2], k[1], k[0]):
        out += c
        out *= t2
    out += 1
    return out


def _horner(r2: np.ndarray, c1, c2, c3) -> np.ndarray:
    """1 + c1 r2 + c2 r2^2 + c3 r2^3, evaluated in place (Horner's scheme)."""
    out = r2 * c3
    out += c2
    out *= r2
    out += c1
    out *= r2
    out += 1
    return out
