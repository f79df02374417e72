"""Procedural multi-sensor driving scenes: RGB, metric depth, LiDAR, events, camera info and labels
in DELIVER's classes, under weather conditions and sensor failures.

Why ray casting of analytic primitives: one scene description feeds every sensor, so the camera,
the LiDAR (from its own pose) and the event camera agree geometrically by construction, which is
what lets tests check projection and calibration exactly. The scene is a ground plane split into
labelled regions plus axis-aligned boxes and spheres. Every ray is tested only against the
primitives whose screen-space (or azimuth/elevation) rectangle covers it: candidate (ray,
primitive) pairs are built with index arithmetic, tested all at once, and the nearest hit wins.

World frame: x along the road, y left, z up. The camera looks along +x without rotation, so its
near plane is a plane of constant x and clipping a box to it is exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import EventArray, FrameBundle, ImageData, PointCloud
from sam_mmseg_ros.labels import CLASSES, class_id
from sam_mmseg_ros.pipeline import resize_nearest
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.encodings import NATIVE
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

_ID = {name: class_id(name) for name in CLASSES}

CONDITIONS: tuple[str, ...] = ("sun", "cloud", "fog", "rain", "night")
FAILURES: tuple[str, ...] = ("motion_blur", "overexposure", "underexposure", "lidar_jitter", "low_res_events")

CAMERA_FRAME = "camera_optical_frame"
LIDAR_FRAME = "lidar"

# Camera optical axes (x right, y down, z forward) as columns in the world frame.
_R_WORLD_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_CAMERA_IN_EGO = np.array([1.5, 0.0, 1.6])
_LIDAR_FROM_CAMERA = np.array([-0.3, 0.0, 0.3])  # mounted 30 cm behind and above the camera
_LIDAR_ELEVATION_DEG = {32: (2.0, -24.9), 64: (15.0, -25.0)}

# Texture kinds of box/sphere surfaces.
_PLAIN, _FACADE, _FOLIAGE = 0, 1, 2


@dataclass(frozen=True)
class _Condition:
    ambient: float  # hemisphere sky light
    sun: float  # directional light
    sky_horizon: tuple[float, float, float]
    sky_zenith: tuple[float, float, float]
    fog_density: float = 0.0  # 1/m, Koschmieder extinction
    fog_color: tuple[float, float, float] = (0.7, 0.7, 0.72)
    exposure: float = 1.0  # auto-exposure gain
    read_noise: float = 0.004
    street_lights: float = 0.0
    headlights: float = 0.0
    rain: bool = False
    road_albedo_scale: float = 1.0
    event_noise_hz: float = 0.1  # background events per pixel per second
    event_dark_floor: float = 0.02  # added to intensity before the log: low light blunts the pixels
    lidar_dropout: float = 0.01
    lidar_noise_m: float = 0.02
    lidar_early_fraction: float = 0.0  # returns from fog droplets or rain drops
    lidar_early_range_m: tuple[float, float] = (1.0, 15.0)


_CONDITION_TABLE: dict[str, _Condition] = {
    "sun": _Condition(0.30, 0.85, (0.78, 0.86, 0.95), (0.30, 0.50, 0.88)),
    "cloud": _Condition(0.75, 0.08, (0.74, 0.75, 0.77), (0.62, 0.63, 0.66)),
    "fog": _Condition(0.70, 0.04, (0.70, 0.70, 0.72), (0.70, 0.70, 0.72), fog_density=0.035,
                      lidar_dropout=0.03, lidar_early_fraction=0.12),
    "rain": _Condition(0.45, 0.03, (0.45, 0.46, 0.48), (0.38, 0.39, 0.42), fog_density=0.008,
                       fog_color=(0.45, 0.46, 0.48), exposure=1.4, rain=True, road_albedo_scale=0.55,
                       event_noise_hz=0.5, lidar_dropout=0.12, lidar_noise_m=0.05,
                       lidar_early_fraction=0.02, lidar_early_range_m=(0.5, 8.0)),
    "night": _Condition(0.006, 0.0, (0.004, 0.005, 0.008), (0.001, 0.0015, 0.004), exposure=2.0,
                        read_noise=0.008, street_lights=20.0, headlights=6.0, event_noise_hz=1.0,
                        event_dark_floor=0.15),
}
_SUN_DIRECTION = np.array([-0.45, 0.55, 0.70]) / np.linalg.norm([-0.45, 0.55, 0.70])


@dataclass
class SceneConfig:
    """What the street contains; the same seed gives the same street under every condition."""

    lanes_per_direction: int = 2
    lane_width_m: float = 3.5
    sidewalk_width_m: float = 3.0
    vehicles_per_100m: float = 6.0
    pedestrians_per_100m: float = 8.0
    trees_per_100m: float = 5.0
    pole_spacing_m: float = 25.0


@dataclass
class SequenceConfig:
    width: int = 512
    height: int = 512
    hfov_deg: float = 90.0
    fps: float = 10.0
    num_frames: int = 10
    condition: str = "sun"
    failures: tuple[str, ...] = ()
    lidar_beams: int = 32
    lidar_columns: int = 1024
    lidar_max_range_m: float = 120.0
    event_width: int | None = None  # None: same as the RGB camera
    event_height: int | None = None
    event_threshold: float = 0.2  # log-intensity contrast threshold C
    ego_speed_mps: float = 10.0
    seed: int = 0
    start_ns: int = 1_700_000_000_000_000_000
    scene: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self):
        if self.condition not in _CONDITION_TABLE:
            raise ValueError(f"unknown condition '{self.condition}' (known: {', '.join(CONDITIONS)})")
        unknown = set(self.failures) - set(FAILURES)
        if unknown:
            raise ValueError(f"unknown failures {sorted(unknown)} (known: {', '.join(FAILURES)})")
        if self.lidar_beams not in _LIDAR_ELEVATION_DEG:
            raise ValueError("lidar_beams must be 32 or 64")
        self.failures = tuple(self.failures)


@dataclass
class SyntheticFrame:
    stamp_ns: int
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], metres along the optical axis, 0 = no return (sky)
    labels: np.ndarray  # uint8 [H, W], DELIVER class ids
    camera: CameraModel
    lidar: PointCloud  # in the LiDAR frame (x forward, y left, z up)
    T_camera_lidar: np.ndarray  # [4, 4], maps LiDAR points into the camera optical frame
    events: EventArray  # events since the previous frame
    condition: str
    failures: tuple[str, ...]
    depth_true: np.ndarray | None = None  # ground truth where the depth camera's `depth` differs; None: exact

    def ground_truth_depth(self) -> np.ndarray:
        """float32 [H, W] metres along the optical axis, 0 = none (sky): the depth task's target."""
        return self.depth if self.depth_true is None else self.depth_true

    def to_bundle(self) -> FrameBundle:
        """The frame as the node's assembler would hand it over, every modality present."""
        stamps = dict.fromkeys(("rgb", "depth", "event", "lidar"), self.stamp_ns)
        return FrameBundle(self.stamp_ns, CAMERA_FRAME, rgb=ImageData(self.rgb, "rgb8"),
                           depth=ImageData(self.depth, "32FC1"), event=self.events, lidar=self.lidar,
                           camera=self.camera, stamps=stamps)


def camera_lidar_extrinsic() -> np.ndarray:
    """T_camera_lidar of the synthetic rig (the LiDAR frame is the ego frame shifted)."""
    T = np.eye(4)
    T[:3, :3] = _R_WORLD_OPTICAL.T
    T[:3, 3] = _R_WORLD_OPTICAL.T @ _LIDAR_FROM_CAMERA
    return T


# --------------------------------------------------------------------------------------------
# Scene description


@dataclass
class _Scene:
    box_lo: np.ndarray  # [N, 3] at t = 0
    box_hi: np.ndarray
    box_vel: np.ndarray  # [N, 3] m/s
    box_label: np.ndarray  # [N] uint8
    box_albedo: np.ndarray  # [N, 3]
    box_texture: np.ndarray  # [N] int8
    box_emission: np.ndarray  # [N, 3], seen at night
    sph_center: np.ndarray  # [S, 3]
    sph_radius: np.ndarray
    sph_vel: np.ndarray
    sph_label: np.ndarray
    sph_albedo: np.ndarray
    sph_texture: np.ndarray
    lamps: np.ndarray  # [L, 3] street-light positions
    config: SceneConfig
    texture_seed: int

    @property
    def road_half_width(self) -> float:
        return self.config.lanes_per_direction * self.config.lane_width_m


class _SceneBuilder:
    def __init__(self):
        self.boxes: list[tuple] = []
        self.spheres: list[tuple] = []
        self.lamps: list[tuple[float, float, float]] = []

    def box(self, lo, hi, label, albedo, texture=_PLAIN, vel=(0.0, 0.0, 0.0), emission=(0.0, 0.0, 0.0)):
        self.boxes.append((lo, hi, vel, _ID[label], albedo, texture, emission))

    def sphere(self, center, radius, label, albedo, texture=_PLAIN, vel=(0.0, 0.0, 0.0)):
        self.spheres.append((center, radius, vel, _ID[label], albedo, texture))

    def build(self, config: SceneConfig, texture_seed: int) -> _Scene:
        b = list(zip(*self.boxes, strict=True))
        s = list(zip(*self.spheres, strict=True))
        f = np.float64
        return _Scene(
            np.array(b[0], f), np.array(b[1], f), np.array(b[2], f), np.array(b[3], np.uint8),
            np.array(b[4], np.float32), np.array(b[5], np.int8), np.array(b[6], np.float32),
            np.array(s[0], f), np.array(s[1], f), np.array(s[2], f), np.array(s[3], np.uint8),
            np.array(s[4], np.float32), np.array(s[5], np.int8),
            np.array(self.lamps, f).reshape(-1, 3), config, texture_seed)


_BLOCK_M = 100.0


def _build_scene(cfg: SceneConfig, seed: int, x_start: float, x_end: float, ego_speed: float) -> _Scene:
    """A straight street with traffic in both directions between x_start and x_end.

    The street is made in 100 m blocks, each from its own seeded generator, so a longer sequence
    drives down the same street as a shorter one with the same seed.
    """
    sb = _SceneBuilder()
    road = cfg.lanes_per_direction * cfg.lane_width_m
    walk_outer = road + cfg.sidewalk_width_m
    cursor = {1.0: x_start, -1.0: x_start}  # where the next building starts, per side
    for block, bx0 in enumerate(np.arange(x_start, x_end, _BLOCK_M)):
        rng = np.random.default_rng([seed, 7, block])
        bx1 = bx0 + _BLOCK_M
        for side in (1.0, -1.0):
            while cursor[side] < bx1:
                cursor[side] = _add_building(sb, rng, cursor[side], side, walk_outer)
            _add_street_furniture(sb, rng, cfg, bx0, bx1, side)
        _add_traffic(sb, rng, cfg, bx0, bx1, ego_speed)
    return sb.build(cfg, int(np.random.default_rng([seed, 11]).integers(2**31)))


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.08) -> tuple:
    return tuple(np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0.02, 0.95))


def _add_building(sb: _SceneBuilder, rng: np.random.Generator, x: float, side: float, walk_outer: float) -> float:
    """One building and the gap after it (holding a wall, a fence, or nothing); returns the next x."""
    w = rng.uniform(10, 30)
    setback = walk_outer + rng.uniform(2.0, 6.0)
    depth = rng.uniform(10, 20)
    height = rng.uniform(6, 40)
    y0, y1 = sorted((side * setback, side * (setback + depth)))
    facade = rng.choice([(0.55, 0.45, 0.38), (0.62, 0.60, 0.55), (0.45, 0.30, 0.25)])
    sb.box((x, y0, 0.0), (x + w, y1, height), "Building", _jitter(rng, facade), _FACADE)
    x += w
    gap = rng.uniform(0, 9)
    if gap > 3:
        kind = rng.integers(3)
        yw = side * (walk_outer + 1.0)
        if kind == 0:
            y0, y1 = sorted((yw, yw + side * 0.3))
            sb.box((x, y0, 0.0), (x + gap, y1, rng.uniform(1.2, 2.5)), "Wall", _jitter(rng, (0.6, 0.58, 0.55)))
        elif kind == 1:
            y0, y1 = sorted((yw, yw + side * 0.05))
            sb.box((x, y0, 0.0), (x + gap, y1, 1.2), "Fence", _jitter(rng, (0.35, 0.33, 0.30)))
    return x + gap


def _add_street_furniture(sb: _SceneBuilder, rng: np.random.Generator, cfg: SceneConfig, x0: float, x1: float,
                          side: float):
    """Poles with lamps, signs and traffic lights; trees; bins; pedestrians on the sidewalk."""
    road = cfg.lanes_per_direction * cfg.lane_width_m
    walk_outer = road + cfg.sidewalk_width_m
    spacing = cfg.pole_spacing_m
    grey = (0.4, 0.4, 0.42)
    for px in np.arange(np.ceil(x0 / spacing) * spacing, x1, spacing):
        i = int(round(px / spacing))
        py = side * (road + 0.5)
        sb.box((px - 0.1, py - 0.1, 0.0), (px + 0.1, py + 0.1, 7.0), "Pole", grey)
        arm_y0, arm_y1 = sorted((py, py - side * 1.5))
        sb.box((px - 0.15, arm_y0, 6.8), (px + 0.15, arm_y1, 7.1), "Pole", grey, emission=(1.0, 0.85, 0.6))
        sb.lamps.append((px, py - side * 1.4, 6.7))
        if i % 3 == 1:
            plate = rng.choice([(0.8, 0.1, 0.1), (0.1, 0.25, 0.75), (0.85, 0.85, 0.85)])
            sb.box((px - 0.14, py - 0.4, 2.3), (px - 0.1, py + 0.4, 3.1), "TrafficSign", _jitter(rng, plate, 0.04))
        elif i % 4 == 2:
            y0, y1 = sorted((py - side * 2.5, py - side * 2.9))
            lamp = [(1.0, 0.1, 0.05), (0.1, 1.0, 0.3), (1.0, 0.7, 0.0)][int(rng.integers(3))]
            sb.box((px - 0.2, y0, 5.0), (px + 0.2, y1, 6.1), "TrafficLight", (0.08, 0.08, 0.08), emission=lamp)
            sb.box((px - 0.08, min(py, y0), 6.2), (px + 0.08, max(py, y1), 6.35), "Pole", grey)
    length = x1 - x0
    for tx in rng.uniform(x0, x1, int(cfg.trees_per_100m * length / 100)):
        ty = side * (walk_outer + rng.uniform(0.3, 1.6))
        trunk = rng.uniform(2.0, 3.5)
        radius = rng.uniform(1.2, 2.8)
        sb.box((tx - 0.15, ty - 0.15, 0.0), (tx + 0.15, ty + 0.15, trunk + radius * 0.5), "Vegetation",
               (0.30, 0.22, 0.15))
        sb.sphere((tx, ty, trunk + radius * 0.8), radius, "Vegetation", _jitter(rng, (0.20, 0.42, 0.15)), _FOLIAGE)
    for sx in rng.uniform(x0, x1, int(length / 40)):
        sy = side * (walk_outer - 0.4)
        sb.box((sx - 0.3, sy - 0.3, 0.0), (sx + 0.3, sy + 0.3, 1.0), "Static", _jitter(rng, (0.2, 0.35, 0.25)))
    for px in rng.uniform(x0, x1, int(cfg.pedestrians_per_100m * length / 100)):
        py = side * (road + rng.uniform(1.0, cfg.sidewalk_width_m - 0.4))
        vel = (rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6), 0.0, 0.0)
        h = rng.uniform(1.5, 1.85)
        clothes = rng.choice([(0.2, 0.2, 0.5), (0.6, 0.2, 0.2), (0.25, 0.25, 0.25), (0.7, 0.7, 0.6)])
        sb.box((px - 0.2, py - 0.25, 0.0), (px + 0.2, py + 0.25, h - 0.25), "Pedestrian", _jitter(rng, clothes),
               vel=vel)
        sb.sphere((px, py, h - 0.12), 0.12, "Pedestrian", (0.62, 0.48, 0.38), vel=vel)


def _add_traffic(sb: _SceneBuilder, rng: np.random.Generator, cfg: SceneConfig, x0: float, x1: float,
                 ego_speed: float):
    """Vehicles in both directions: ours on y < 0 (right-hand traffic), oncoming on y > 0."""
    ego_lane_y = -cfg.lane_width_m / 2
    for _ in range(int(cfg.vehicles_per_100m * (x1 - x0) / 100)):
        lane = int(rng.integers(cfg.lanes_per_direction))
        direction = rng.choice([-1.0, 1.0])
        y = direction * -(lane + 0.5) * cfg.lane_width_m
        x = rng.uniform(x0, x1)
        if direction > 0 and abs(y - ego_lane_y) < 0.1:
            if -10.0 < x < 14.0:  # keep the ego car's own space clear; our lane drives with us
                continue
            speed = ego_speed
        else:
            speed = direction * rng.uniform(5, 14)
        _add_vehicle(sb, rng, x, y, speed)


def _add_vehicle(sb: _SceneBuilder, rng: np.random.Generator, x: float, y: float, speed: float):
    vel = (speed, 0.0, 0.0)
    kind = rng.choice(["Cars"] * 6 + ["Truck", "Bus", "TwoWheeler"])
    paint = _jitter(rng, rng.choice([(0.7, 0.1, 0.1), (0.15, 0.2, 0.5), (0.8, 0.8, 0.8), (0.1, 0.1, 0.1),
                               (0.5, 0.5, 0.52)]))
    if kind == "Cars":
        sb.box((x - 2.25, y - 0.9, 0.3), (x + 2.25, y + 0.9, 1.0), "Cars", paint, vel=vel)
        sb.box((x - 1.3, y - 0.8, 1.0), (x + 1.0, y + 0.8, 1.5), "Cars", (0.08, 0.09, 0.11), vel=vel)  # glass
        sb.box((x - 1.9, y - 0.85, 0.0), (x + 1.9, y + 0.85, 0.3), "Cars", (0.05, 0.05, 0.05), vel=vel)
    elif kind == "Truck":
        sb.box((x + 2.5, y - 1.2, 0.0), (x + 4.7, y + 1.2, 3.0), "Truck", paint, vel=vel)
        sb.box((x - 4.5, y - 1.25, 0.0), (x + 2.3, y + 1.25, 3.8), "Truck", _jitter(rng, (0.8, 0.78, 0.75)), vel=vel)
    elif kind == "Bus":
        sb.box((x - 6.0, y - 1.25, 0.0), (x + 6.0, y + 1.25, 1.8), "Bus", paint, vel=vel)
        sb.box((x - 6.0, y - 1.25, 1.8), (x + 6.0, y + 1.25, 3.2), "Bus", (0.1, 0.11, 0.13), vel=vel)  # windows
    else:
        y += 1.0 if y > 0 else -1.0  # ride near the lane edge
        sb.box((x - 0.9, y - 0.25, 0.0), (x + 0.9, y + 0.25, 1.0), "TwoWheeler", paint, vel=vel)
        sb.box((x - 0.3, y - 0.25, 1.0), (x + 0.2, y + 0.25, 1.7), "TwoWheeler", _jitter(rng, (0.3, 0.3, 0.3)), vel=vel)


# --------------------------------------------------------------------------------------------
# Ray casting


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-lattice-cell random numbers in [0, 1) (integer hashing, wraps on overflow)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (iz.astype(np.int64) * 83492791)
    h = h ^ (seed * 2654435761 & 0x7FFFFFFF)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _pairs(r0, r1, c0, c1, n_cols):
    """Candidate (ray, primitive) pairs from inclusive per-primitive rectangles on a ray grid."""
    h = np.maximum(r1 - r0 + 1, 0)
    w = np.maximum(c1 - c0 + 1, 0)
    counts = h * w
    prim = np.repeat(np.arange(counts.size), counts)
    local = np.arange(prim.size) - np.repeat(np.cumsum(counts) - counts, counts)
    wp = w[prim]
    ray = (r0[prim] + local // wp) * n_cols + c0[prim] + local % wp
    return ray, prim


@dataclass
class _Hits:
    t: np.ndarray  # [R] distance along the (unnormalized) ray, inf = nothing
    kind: np.ndarray  # [R] 0 none, 1 ground, 2 box, 3 sphere
    index: np.ndarray  # [R] primitive index
    normal: np.ndarray  # [R, 3]


def _cast(origin, dirs, box_lo, box_hi, box_rect, sph_c, sph_r, sph_rect, n_cols, max_t) -> _Hits:
    """Nearest hit of rays from one origin against the ground plane z = 0, boxes and spheres.

    `*_rect` are (r0, r1, c0, c1) candidate rectangles on the ray grid with n_cols columns.
    """
    n = dirs.shape[0]
    t = np.full(n, np.inf)
    kind = np.zeros(n, np.int8)
    index = np.zeros(n, np.int64)
    down = dirs[:, 2] < -1e-9
    tg = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    ground = tg < max_t
    t[ground] = tg[ground]
    kind[ground] = 1

    ray_b, prim_b = _pairs(*box_rect, n_cols)
    d = dirs[ray_b]
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1 = (box_lo[prim_b] - origin) * inv
    t2 = (box_hi[prim_b] - origin) * inv
    tmin = np.minimum(t1, t2)
    tnear = tmin.max(axis=1)
    tfar = np.maximum(t1, t2).min(axis=1)
    hit_b = (tnear <= tfar) & (tnear > 1e-6) & (tnear < max_t)
    ray_b, prim_b, tnear, axis_b = ray_b[hit_b], prim_b[hit_b], tnear[hit_b], tmin[hit_b].argmax(axis=1)

    ray_s, prim_s = _pairs(*sph_rect, n_cols)
    d = dirs[ray_s]
    oc = origin - sph_c[prim_s]
    a = np.einsum("ij,ij->i", d, d)
    bh = np.einsum("ij,ij->i", d, oc)
    disc = bh * bh - a * (np.einsum("ij,ij->i", oc, oc) - sph_r[prim_s] ** 2)
    ts = (-bh - np.sqrt(np.maximum(disc, 0.0))) / a
    hit_s = (disc > 0) & (ts > 1e-6) & (ts < max_t)
    ray_s, prim_s, ts = ray_s[hit_s], prim_s[hit_s], ts[hit_s]

    all_ray = np.concatenate([ray_b, ray_s])
    all_t = np.concatenate([tnear, ts])
    np.minimum.at(t, all_ray, all_t)
    win_b = tnear <= t[ray_b]
    kind[ray_b[win_b]] = 2
    index[ray_b[win_b]] = prim_b[win_b]
    win_s = ts <= t[ray_s]
    kind[ray_s[win_s]] = 3
    index[ray_s[win_s]] = prim_s[win_s]

    normal = np.zeros((n, 3))
    normal[kind == 1, 2] = 1.0
    rb, ab = ray_b[win_b], axis_b[win_b]
    normal[rb, ab] = -np.sign(dirs[rb, ab])
    rs = ray_s[win_s]
    p = origin + dirs[rs] * t[rs, None]
    normal[rs] = (p - sph_c[prim_s[win_s]]) / sph_r[prim_s[win_s], None]
    return _Hits(t, kind, index, normal)


def _camera_rects(lo, hi, cam_pos, camera: CameraModel, max_t):
    """Image rectangles covering boxes clipped to the near plane; empty for culled boxes."""
    near = 0.05
    lo = lo.copy()
    lo[:, 0] = np.maximum(lo[:, 0], cam_pos[0] + near)
    visible = (hi[:, 0] > lo[:, 0]) & (lo[:, 0] - cam_pos[0] < max_t)
    corners = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(8, 3)
    pts = np.where(corners[None] == 1, hi[:, None], lo[:, None]) - cam_pos  # [N, 8, 3]
    opt = pts @ _R_WORLD_OPTICAL  # world -> optical
    z = np.maximum(opt[..., 2], near)
    u = camera.fx * opt[..., 0] / z + camera.cx
    v = camera.fy * opt[..., 1] / z + camera.cy
    c0 = np.clip(np.floor(u.min(1)), 0, camera.width).astype(np.int64)
    c1 = np.clip(np.ceil(u.max(1)), -1, camera.width - 1).astype(np.int64)
    r0 = np.clip(np.floor(v.min(1)), 0, camera.height).astype(np.int64)
    r1 = np.clip(np.ceil(v.max(1)), -1, camera.height - 1).astype(np.int64)
    r1 = np.where(visible, r1, -1)
    return r0, r1, c0, c1


def _lidar_rects(lo, hi, origin, elevations, n_cols, max_t):
    """(beam, azimuth column) rectangles covering boxes seen from the LiDAR origin.

    Azimuth extremes of a box lie on its corners; elevation extremes use the nearest and farthest
    horizontal distance, which bounds them conservatively.
    """
    rel_lo, rel_hi = lo - origin, hi - origin
    nearest = np.maximum(np.maximum(rel_lo, -rel_hi), 0.0)
    d_min = np.hypot(nearest[:, 0], nearest[:, 1])
    d_max = np.hypot(np.maximum(np.abs(rel_lo[:, 0]), np.abs(rel_hi[:, 0])),
                     np.maximum(np.abs(rel_lo[:, 1]), np.abs(rel_hi[:, 1])))
    el_hi = np.arctan2(rel_hi[:, 2], np.where(rel_hi[:, 2] > 0, d_min, d_max))
    el_lo = np.arctan2(rel_lo[:, 2], np.where(rel_lo[:, 2] > 0, d_max, d_min))
    r0 = np.searchsorted(elevations, el_lo) - 1
    r1 = np.searchsorted(elevations, el_hi)
    r0 = np.clip(r0, 0, elevations.size)
    r1 = np.clip(r1, -1, elevations.size - 1)

    cx = np.stack([rel_lo[:, 0], rel_hi[:, 0], rel_lo[:, 0], rel_hi[:, 0]], 1)
    cy = np.stack([rel_lo[:, 1], rel_lo[:, 1], rel_hi[:, 1], rel_hi[:, 1]], 1)
    az = np.arctan2(cy, cx)
    step = 2 * np.pi / n_cols
    c0 = np.floor((az.min(1) + np.pi) / step).astype(np.int64) - 1
    c1 = np.ceil((az.max(1) + np.pi) / step).astype(np.int64) + 1
    wraps = (az.max(1) - az.min(1) > np.pi) | (d_min == 0)
    c0 = np.where(wraps, 0, np.clip(c0, 0, n_cols - 1))
    c1 = np.where(wraps, n_cols - 1, np.clip(c1, 0, n_cols - 1))
    r1 = np.where(d_min < max_t, r1, -1)
    return r0, r1, c0, c1


def _ground_labels(scene: _Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class of the ground plane at (x, y): road with lane markings, sidewalks, terrain/ground patches."""
    cfg = scene.config
    ay = np.abs(y)
    road_half = scene.road_half_width
    lane = np.round(ay / cfg.lane_width_m)
    on_road = ay < road_half
    dashed = (lane > 0) & (lane < cfg.lanes_per_direction) & (np.abs(ay - lane * cfg.lane_width_m) < 0.075) & (
        np.mod(x, 9.0) < 3.0)
    line = on_road & ((ay < 0.1) | (np.abs(ay - (road_half - 0.3)) < 0.08) | dashed)
    walk = ~on_road & (ay < road_half + cfg.sidewalk_width_m)
    patch = _hash01(np.floor(x / 5), np.floor(y / 5), np.zeros_like(x), scene.texture_seed + 1) > 0.45
    return np.where(line, _ID["RoadLine"], np.where(on_road, _ID["Road"], np.where(
        walk, _ID["SideWalk"], np.where(patch, _ID["Terrain"], _ID["Ground"])))).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Sensors


class _Renderer:
    """Renders one sequence; keeps the event camera's per-pixel state between frames."""

    def __init__(self, config: SequenceConfig, scene: _Scene, rng: np.random.Generator):
        self.cfg = config
        self.scene = scene
        self.cond = _CONDITION_TABLE[config.condition]
        self.rng = rng
        self.camera = CameraModel.from_fov(config.width, config.height, config.hfov_deg, CAMERA_FRAME)
        xn, yn = self.camera.pixel_rays()
        # optical (xn, yn, 1) in world axes: the ray parameter is the depth along the optical axis
        self.cam_dirs = np.stack([np.ones_like(xn), -xn, -yn], -1).reshape(-1, 3)
        self.cam_dir_norm = np.linalg.norm(self.cam_dirs, axis=1)
        lo_deg, hi_deg = sorted(_LIDAR_ELEVATION_DEG[config.lidar_beams])
        self.elevations = np.radians(np.linspace(lo_deg, hi_deg, config.lidar_beams))
        az = -np.pi + (np.arange(config.lidar_columns) + 0.5) * 2 * np.pi / config.lidar_columns
        el = self.elevations[:, None]
        self.lidar_dirs = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                                       np.sin(el)), -1).reshape(-1, 3)
        self.ev_w = config.event_width or config.width
        self.ev_h = config.event_height or config.height
        self.ev_grid = (self.ev_w // 4, self.ev_h // 4) if "low_res_events" in config.failures else (
            self.ev_w, self.ev_h)
        gw, gh = self.ev_grid
        self.ev_rows = np.minimum((np.arange(gh) + 0.5) * config.height / gh, config.height - 1).astype(np.int64)
        self.ev_cols = np.minimum((np.arange(gw) + 0.5) * config.width / gw, config.width - 1).astype(np.int64)
        self.ev_threshold = np.clip(rng.normal(config.event_threshold, 0.02, (gh, gw)), 0.05, None)
        self.ev_reference: np.ndarray | None = None
        self.ev_last_log: np.ndarray | None = None
        self.ev_last_ns = 0

    # --- geometry -------------------------------------------------------------------------
    def ego_position(self, t: float) -> np.ndarray:
        return np.array([self.cfg.ego_speed_mps * t, -self.scene.config.lane_width_m / 2, 0.0])

    def _primitives_at(self, t: float):
        s = self.scene
        return s.box_lo + s.box_vel * t, s.box_hi + s.box_vel * t, s.sph_center + s.sph_vel * t

    # --- camera ---------------------------------------------------------------------------
    def render_camera(self, t: float):
        """Linear radiance [H, W, 3], depth, labels at time t (before exposure and sensor noise)."""
        cam = self.camera
        lo, hi, centers = self._primitives_at(t)
        origin = self.ego_position(t) + _CAMERA_IN_EGO
        max_t = 300.0
        box_rect = _camera_rects(lo, hi, origin, cam, max_t)
        r = self.scene.sph_radius[:, None]
        sph_rect = _camera_rects(centers - r, centers + r, origin, cam, max_t)
        hits = _cast(origin, self.cam_dirs, lo, hi, box_rect, centers, self.scene.sph_radius, sph_rect,
                     cam.width, max_t)
        points = origin + self.cam_dirs * np.where(np.isfinite(hits.t), hits.t, 0.0)[:, None]
        labels, albedo, emission = self._materials(hits, points)
        radiance = self._shade(hits, points, albedo, emission, origin)
        depth = np.where(hits.kind > 0, hits.t, 0.0).astype(np.float32)
        shape = (cam.height, cam.width)
        return radiance.reshape(*shape, 3), depth.reshape(shape), labels.reshape(shape)

    def _materials(self, hits: _Hits, p: np.ndarray):
        s, cond = self.scene, self.cond
        n = hits.t.size
        labels = np.full(n, _ID["Sky"], np.uint8)
        albedo = np.zeros((n, 3), np.float32)
        emission = np.zeros((n, 3), np.float32)
        seed = s.texture_seed
        night = cond.street_lights > 0

        g = hits.kind == 1
        x, y = p[g, 0], p[g, 1]
        lab = _ground_labels(s, x, y)
        line, on_road, walk = lab == _ID["RoadLine"], lab == _ID["Road"], lab == _ID["SideWalk"]
        patch = lab == _ID["Terrain"]
        on_road |= line
        grain = _hash01(np.floor(x * 8), np.floor(y * 8), np.ones_like(x), seed)
        base = np.empty((x.size, 3), np.float32)
        base[:] = (0.38, 0.31, 0.24)
        base[patch] = (0.28, 0.36, 0.16)
        base[walk] = (0.45, 0.44, 0.42)
        base[on_road] = np.array([0.16, 0.16, 0.17]) * cond.road_albedo_scale
        base[line] = (0.85, 0.85, 0.80)
        tiles = walk & ((np.mod(x, 0.6) < 0.03) | (np.mod(y, 0.6) < 0.03))
        base[tiles] *= 0.7
        labels[g] = lab
        albedo[g] = base * (0.88 + 0.24 * grain)[:, None]

        b = hits.kind == 2
        idx = hits.index[b]
        tex = s.box_texture[idx]
        labels[b] = s.box_label[idx]
        alb = s.box_albedo[idx].copy()
        pb = p[b]
        nb = hits.normal[b]
        u = pb[:, 0] * np.abs(nb[:, 1]) + pb[:, 1] * np.abs(nb[:, 0]) + pb[:, 0] * np.abs(nb[:, 2])
        w = pb[:, 2] * (1 - np.abs(nb[:, 2])) + pb[:, 1] * np.abs(nb[:, 2])
        grain = _hash01(np.floor(u * 2), np.floor(w * 2), idx, seed)
        alb *= (0.85 + 0.3 * grain)[:, None]
        facade = tex == _FACADE
        window = facade & (np.abs(nb[:, 2]) < 0.5) & (pb[:, 2] > 1.5) & (np.mod(u, 3.0) > 0.8) & (
            np.mod(u, 3.0) < 2.2) & (np.mod(pb[:, 2] - 1.0, 3.2) > 1.0) & (np.mod(pb[:, 2] - 1.0, 3.2) < 2.4)
        alb[window] = (0.07, 0.09, 0.12)
        albedo[b] = alb
        if night:
            lit = window & (_hash01(np.floor(u / 3.0), np.floor((pb[:, 2] - 1.0) / 3.2), idx, seed + 2) > 0.7)
            em = s.box_emission[idx] * 0.5
            em[lit] = (0.25, 0.2, 0.12)
            emission[b] = em

        sp = hits.kind == 3
        idx = hits.index[sp]
        labels[sp] = s.sph_label[idx]
        ps = p[sp]
        grain = _hash01(np.floor(ps[:, 0] * 4), np.floor(ps[:, 1] * 4), np.floor(ps[:, 2] * 4), seed + 3)
        foliage = s.sph_texture[idx] == _FOLIAGE
        albedo[sp] = s.sph_albedo[idx] * np.where(foliage, 0.5 + 0.9 * grain, 0.9 + 0.2 * grain)[:, None]
        return labels, albedo, emission

    def _shade(self, hits: _Hits, p, albedo, emission, origin):
        cond = self.cond
        n = hits.normal
        surface = hits.kind > 0
        light = cond.ambient * (0.6 + 0.4 * n[:, 2:3]) + cond.sun * np.maximum(n @ _SUN_DIRECTION, 0.0)[:, None]
        if cond.street_lights > 0:
            light = light + self._night_lights(p, n, surface, origin)[:, None] * np.array([1.0, 0.85, 0.6])
        radiance = albedo * light + emission
        # Sky by elevation of the ray.
        elev = np.clip(self.cam_dirs[:, 2] / self.cam_dir_norm, 0.0, 1.0)[:, None] ** 0.5
        sky = (1 - elev) * np.array(cond.sky_horizon) + elev * np.array(cond.sky_zenith)
        radiance = np.where(surface[:, None], radiance, sky)
        if cond.fog_density > 0:
            dist = np.where(surface, hits.t * self.cam_dir_norm, np.inf)
            transmittance = np.exp(-cond.fog_density * dist)[:, None]
            radiance = radiance * transmittance + np.array(cond.fog_color) * (1 - transmittance)
        return radiance.astype(np.float32)

    def _night_lights(self, p, n, surface, origin) -> np.ndarray:
        """Irradiance from street lamps (downward cones) and the ego headlights, inverse-square.

        Only surfaces within 60 m are lit: beyond that the falloff makes the light invisible.
        """
        cond = self.cond
        out = np.zeros(p.shape[0], np.float32)
        rel = (p - origin).astype(np.float32)
        idx = np.flatnonzero(surface & (rel[:, 0] < 60.0))
        q, nq, rq = p[idx].astype(np.float32), n[idx].astype(np.float32), rel[idx]
        acc = np.zeros(idx.size, np.float32)
        lamps = self.scene.lamps
        ahead = (lamps[:, 0] - origin[0] > -10.0) & (lamps[:, 0] - origin[0] < 60.0)
        for lamp in lamps[ahead].astype(np.float32):
            vx, vy, vz = lamp[0] - q[:, 0], lamp[1] - q[:, 1], lamp[2] - q[:, 2]
            d2 = np.maximum(vx * vx + vy * vy + vz * vz, 1.0)
            inv_d = 1.0 / np.sqrt(d2)
            cosn = np.maximum(nq[:, 0] * vx + nq[:, 1] * vy + nq[:, 2] * vz, 0.0) * inv_d
            acc += cond.street_lights * (0.02 + np.maximum(vz, 0.0) * inv_d) * cosn / d2
        d2 = np.maximum((rq * rq).sum(1), 1.0)
        inv_d = 1.0 / np.sqrt(d2)
        beam = np.clip((rq[:, 0] * inv_d - 0.88) / 0.08, 0.0, 1.0) * (rq[:, 2] * inv_d < 0.3)
        facing = np.maximum(-(nq * rq).sum(1), 0.0) * inv_d
        acc += cond.headlights * beam * facing / d2
        out[idx] = acc
        return out

    def rain_streaks(self, radiance: np.ndarray) -> np.ndarray:
        """Bright slanted streaks of falling drops, different in every frame."""
        h, w = radiance.shape[:2]
        count = int(6e-3 * h * w)
        length = max(4, h // 24)
        start_u = self.rng.uniform(0, w, count)
        start_v = self.rng.uniform(-length, h, count)
        slant = self.rng.normal(0.25, 0.05, count)
        k = np.arange(length)
        u = (start_u[:, None] + slant[:, None] * k).astype(np.int64).ravel()
        v = (start_v[:, None] + k).astype(np.int64).ravel()
        keep = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        out = radiance.reshape(-1, 3).copy()
        np.add.at(out, v[keep] * w + u[keep], 0.15)
        return out.reshape(radiance.shape)

    def expose(self, radiance: np.ndarray) -> np.ndarray:
        """Camera: exposure, optional failures, shot and read noise, gamma, 8-bit quantization."""
        gain = self.cond.exposure
        if "overexposure" in self.cfg.failures:
            gain *= 5.0
        if "underexposure" in self.cfg.failures:
            gain *= 0.08
        img = radiance * gain
        if "motion_blur" in self.cfg.failures:
            img = self._zoom_blur(img)
        # read noise is amplified by the gain, shot noise grows with the signal
        sigma = np.sqrt((self.cond.read_noise * gain) ** 2 + 0.0004 * np.clip(img, 0, 1))
        img = img + self.rng.standard_normal(img.shape, np.float32) * sigma
        return (np.clip(img, 0.0, 1.0) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8)

    def _zoom_blur(self, img: np.ndarray, samples: int = 8, strength: float = 0.06) -> np.ndarray:
        """Forward motion during a long exposure smears the image radially from the principal point."""
        h, w = img.shape[:2]
        cx, cy = self.camera.cx, self.camera.cy
        u = np.arange(w)
        v = np.arange(h)
        acc = np.zeros_like(img)
        for s in 1.0 - np.linspace(0.0, strength, samples):
            cols = np.clip(np.rint(cx + (u - cx) * s), 0, w - 1).astype(np.int64)
            rows = np.clip(np.rint(cy + (v - cy) * s), 0, h - 1).astype(np.int64)
            acc += img[rows[:, None], cols[None, :]]
        return acc / samples

    # --- events ---------------------------------------------------------------------------
    def events(self, radiance: np.ndarray, stamp_ns: int) -> EventArray:
        """Events from log-intensity changes since the last call, on the event sensor's grid.

        Each pixel keeps the log intensity of its last event; every further crossing of its
        (slightly mismatched) threshold makes an event, timed by linear interpolation between
        the frame times.
        """
        gray = radiance @ np.array([0.299, 0.587, 0.114], np.float32)
        log_i = np.log(gray[self.ev_rows[:, None], self.ev_cols[None, :]] + self.cond.event_dark_floor)
        if self.ev_reference is None:
            self.ev_reference, self.ev_last_log, self.ev_last_ns = log_i, log_i, stamp_ns
            return EventArray.empty(self.ev_w, self.ev_h)
        ref, prev, t0 = self.ev_reference, self.ev_last_log, self.ev_last_ns
        delta = log_i - ref
        thr = self.ev_threshold
        count = np.minimum(np.floor(np.abs(delta) / thr), 20).astype(np.int64)
        sign = np.sign(delta)
        flat = np.flatnonzero(count)
        n = count.ravel()[flat]
        pix = np.repeat(flat, n)
        k = np.arange(pix.size) - np.repeat(np.cumsum(n) - n, n) + 1
        s = sign.ravel()[pix]
        level = ref.ravel()[pix] + s * k * thr.ravel()[pix]
        change = (log_i - prev).ravel()[pix]
        frac = np.clip((level - prev.ravel()[pix]) / np.where(np.abs(change) < 1e-9, 1e-9, change), 0.0, 1.0)
        dt = stamp_ns - t0
        t = t0 + np.clip(frac * dt + self.rng.normal(0, 0.01 * dt, pix.size), 1, dt).astype(np.int64)
        self.ev_reference = ref + sign * count * thr
        self.ev_last_log, self.ev_last_ns = log_i, stamp_ns

        gh, gw = log_i.shape
        n_noise = self.rng.poisson(self.cond.event_noise_hz * gw * gh * dt * 1e-9)
        noise_pix = self.rng.integers(0, gw * gh, n_noise)
        pix = np.concatenate([pix, noise_pix])
        t = np.concatenate([t, t0 + self.rng.integers(1, dt + 1, n_noise)])
        pol = np.concatenate([s, self.rng.choice([-1.0, 1.0], n_noise)]).astype(np.int8)
        y, x = np.divmod(pix, gw)
        if (gw, gh) != (self.ev_w, self.ev_h):  # low-res failure: coarse cells, block centres
            x = np.minimum(((x + 0.5) * self.ev_w / gw).astype(np.int64), self.ev_w - 1)
            y = np.minimum(((y + 0.5) * self.ev_h / gh).astype(np.int64), self.ev_h - 1)
        order = np.argsort(t)
        return EventArray(x[order].astype(np.int32), y[order].astype(np.int32), t[order], pol[order],
                          self.ev_w, self.ev_h)

    # --- lidar ----------------------------------------------------------------------------
    def scan_lidar(self, t: float) -> PointCloud:
        cfg, cond, s = self.cfg, self.cond, self.scene
        lo, hi, centers = self._primitives_at(t)
        origin = self.ego_position(t) + _CAMERA_IN_EGO + _LIDAR_FROM_CAMERA
        max_t = cfg.lidar_max_range_m
        cols = cfg.lidar_columns
        box_rect = _lidar_rects(lo, hi, origin, self.elevations, cols, max_t)
        r = s.sph_radius[:, None]
        sph_rect = _lidar_rects(centers - r, centers + r, origin, self.elevations, cols, max_t)
        hits = _cast(origin, self.lidar_dirs, lo, hi, box_rect, centers, s.sph_radius, sph_rect, cols, max_t)
        rng = self.rng
        rng_range = hits.t
        surface = hits.kind > 0
        label = np.full(rng_range.size, _ID["Sky"], np.uint8)
        label[hits.kind == 2] = s.box_label[hits.index[hits.kind == 2]]
        label[hits.kind == 3] = s.sph_label[hits.index[hits.kind == 3]]
        ground = hits.kind == 1
        p = origin + self.lidar_dirs[ground] * rng_range[ground, None]
        label[ground] = _ground_labels(s, p[:, 0], p[:, 1])
        reflectivity = _REFLECTIVITY[label]
        cos_inc = np.abs(np.einsum("ij,ij->i", hits.normal, self.lidar_dirs))
        dist = np.where(surface, rng_range, 1.0)
        # Return power: reflectivity, incidence, range falloff and two-way fog extinction.
        power = reflectivity * np.maximum(cos_inc, 0.05) * np.minimum((40.0 / dist) ** 2, 1.0)
        power = power * np.exp(-2 * cond.fog_density * dist)
        detected = surface & (power > 0.004) & (rng.random(dist.size) > cond.lidar_dropout)
        ranges = dist + rng.normal(0, cond.lidar_noise_m, dist.size)
        intensity = np.clip(255 * power * rng.uniform(0.9, 1.1, dist.size), 0, 255)
        early = rng.random(dist.size) < cond.lidar_early_fraction
        lo_r, hi_r = cond.lidar_early_range_m
        early_range = rng.uniform(lo_r, hi_r, dist.size)
        early &= ~detected | (early_range < ranges)
        ranges = np.where(early, early_range, ranges)
        intensity = np.where(early, rng.uniform(1, 12, dist.size), intensity)
        keep = detected | early
        xyz = self.lidar_dirs[keep] * ranges[keep, None]
        if "lidar_jitter" in cfg.failures:
            xyz = _jitter_points(xyz, rng)
        return PointCloud(xyz.astype(np.float32), intensity[keep].astype(np.float32), LIDAR_FRAME)


_REFLECTIVITY = np.full(len(CLASSES), 0.3, np.float32)
for _name, _value in {"Road": 0.12, "RoadLine": 0.6, "SideWalk": 0.25, "Vegetation": 0.4, "Cars": 0.5,
                      "TrafficSign": 0.95, "Terrain": 0.3, "Pedestrian": 0.3, "Bus": 0.5, "Truck": 0.5,
                      "Sky": 0.0}.items():
    _REFLECTIVITY[_ID[_name]] = _value


def _jitter_points(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A loose mount: the whole scan rotated and shifted a little, plus extra range noise."""
    angles = rng.normal(0, np.radians(1.5), 3)
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    noise = rng.normal(0, 0.08, xyz.shape)
    return xyz @ rot.T + rng.normal(0, 0.05, 3) + noise


# --------------------------------------------------------------------------------------------
# Public API


def generate_sequence(config: SequenceConfig) -> Iterator[SyntheticFrame]:
    """Frames of one drive down a procedural street; deterministic for a given config."""
    duration = config.num_frames / config.fps
    x_end = config.ego_speed_mps * duration + 320.0
    scene = _build_scene(config.scene, config.seed, -60.0, x_end, config.ego_speed_mps)
    renderer = _Renderer(config, scene, np.random.default_rng([config.seed, 13]))  # sensor noise
    T_camera_lidar = camera_lidar_extrinsic()
    period_ns = int(round(1e9 / config.fps))

    def radiance_at(t):
        rad, depth, labels = renderer.render_camera(t)
        if renderer.cond.rain:
            rad = renderer.rain_streaks(rad)
        return rad, depth, labels

    # The event camera needs a previous frame: render one period before the first stamp.
    renderer.events(radiance_at(-1.0 / config.fps)[0], config.start_ns - period_ns)
    for k in range(config.num_frames):
        t = k / config.fps
        stamp = config.start_ns + k * period_ns
        radiance, depth, labels = radiance_at(t)
        yield SyntheticFrame(
            stamp_ns=stamp,
            rgb=renderer.expose(radiance),
            depth=depth,
            labels=labels,
            camera=renderer.camera,
            lidar=renderer.scan_lidar(t),
            T_camera_lidar=T_camera_lidar.copy(),
            events=renderer.events(radiance, stamp),
            condition=config.condition,
            failures=config.failures,
        )


class SyntheticDataset:
    """Training samples encoded exactly as the node encodes them (`sensors.preprocess`).

    Frames come from short sequences (`frames_per_sequence`), one condition per sequence in turn;
    encoded samples are cached in memory and, with `cache_dir`, in .npz files, so epochs and
    later runs do not render again. A torch Dataset by duck typing (`__len__`/`__getitem__`).
    """

    def __init__(self, seed: int, num_frames: int, size: tuple[int, int] = (256, 256),
                 conditions: Sequence[str] = CONDITIONS, failures: Sequence[str] = (),
                 render_size: tuple[int, int] | None = None, frames_per_sequence: int = 4,
                 cache_dir: str | Path | None = None, sequence_config: SequenceConfig | None = None,
                 encodings: dict[str, str] | None = None):
        self.seed = seed
        self.num_frames = num_frames
        self.size = tuple(size)
        self.conditions = tuple(conditions)
        self.failures = tuple(failures)
        self.render_size = tuple(render_size or size)
        self.frames_per_sequence = frames_per_sequence
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.base = sequence_config or SequenceConfig()
        self.encodings = dict(encodings or NATIVE)  # sensors/encodings.py; recorded by training
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.num_frames

    def _cache_file(self, index: int) -> Path:
        key = f"{self.seed}_{self.size[0]}x{self.size[1]}_{self.render_size[0]}x{self.render_size[1]}"
        key += f"_{'-'.join(self.conditions)}_{'-'.join(self.failures) or 'none'}_{self.frames_per_sequence}"
        if self.encodings != NATIVE:
            key += "_" + "-".join(self.encodings[m] for m in sorted(self.encodings))
        return self.cache_dir / key / f"{index:06d}.npz"

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_frames:
            raise IndexError(index)
        cached = self.cache_dir is not None and self._cache_file(index).exists()
        if index not in self._cache and not (cached and self._load_cached(index)):
            self._render_sequence(index // self.frames_per_sequence)
        import torch  # only training needs it; generating scenes and bags does not

        sample = self._cache[index]
        return {"images": torch.from_numpy(sample["images"]),
                "modality_mask": torch.from_numpy(sample["modality_mask"]),
                "label": torch.from_numpy(sample["label"].astype(np.int64)),
                "depth": torch.from_numpy(sample["depth"]),
                "condition": sample["condition"]}

    def _load_cached(self, index: int) -> bool:
        """Read a cached sample; False for a file written before samples had depth."""
        with np.load(self._cache_file(index), allow_pickle=False) as z:
            if "depth" not in z.files:
                return False
            self._cache[index] = {k: z[k] for k in z.files}
        self._cache[index]["condition"] = str(self._cache[index]["condition"])
        return True

    def _render_sequence(self, sequence: int):
        condition = self.conditions[sequence % len(self.conditions)]
        first = sequence * self.frames_per_sequence
        count = min(self.frames_per_sequence, self.num_frames - first)
        h, w = self.render_size
        config = replace(self.base, width=w, height=h, num_frames=count, condition=condition,
                         failures=self.failures, seed=self.seed * 100_003 + sequence)
        for offset, frame in enumerate(generate_sequence(config)):
            encoded = preprocess(frame.to_bundle(), PreprocessConfig(input_size=self.size, encodings=self.encodings),
                                 frame.T_camera_lidar)
            sample = {"images": np.asarray(encoded.model_input.images[0], np.float32),
                      "modality_mask": np.asarray(encoded.model_input.modality_mask[0], np.float32),
                      "label": resize_nearest(frame.labels, *self.size),
                      "depth": resize_nearest(frame.ground_truth_depth(), *self.size),  # metres, 0 = sky
                      "condition": condition}
            self._cache[first + offset] = sample
            if self.cache_dir is not None:
                path = self._cache_file(first + offset)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, **sample)


def class_ids_present(labels: np.ndarray) -> set[str]:
    """Names of the DELIVER classes in a label image (for tests and reports)."""
    return {CLASSES[i] for i in np.unique(labels) if i < len(CLASSES)}

