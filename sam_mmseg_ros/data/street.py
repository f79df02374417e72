"""Streets for the synthetic generator: the road's shape and what stands along it.

A street is described in road coordinates, s along the centre line and n to its left, and placed
in the world by the road's shape: a circular arc of constant curvature (straight when 0), maybe
with a side street crossing it, over terrain whose height is piecewise linear in world x (hills
and dips). Every object is a yaw-rotated box or a sphere anchored at (s, n) and moving in road
coordinates, so traffic follows a curved lane and cross traffic the side street. Sidewalks are
a raised level of the ground (the curb), so the ray caster treats them analytically instead of
as thousands of boxes.

Each sequence draws its street layout (`StreetLayout`) and its vehicle (`Rig`: camera height,
pitch, roll, yaw, field of view) from seeds, so no two streets look alike from the same pixel:
a map of the most frequent class per pixel position, learned without any sensor, must fail.
The same seed gives the same street under every weather condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_mmseg_ros.labels import CLASSES, class_id

ID = {name: class_id(name) for name in CLASSES}

# Texture kinds of box and sphere surfaces (see synthetic._materials).
PLAIN, FACADE, FOLIAGE = 0, 1, 2

BLOCK_M = 100.0
"""Streets are built in blocks of this length, each from its own seeded generator, so a longer
sequence drives down the same street as a shorter one with the same seed."""
MAX_TURN_RAD = 2.4
"""Largest heading change over a street: the road-coordinate inverse is single-valued below pi."""


@dataclass(frozen=True)
class StreetLayout:
    """The road itself: drawn per street seed by `draw_layout`, or given."""

    curvature: float  # 1/m, positive turns left; 0 is straight
    lanes: int  # per direction
    lane_width: float
    parking_width: float  # a parking lane on both sides, 0: none
    sidewalk_width: float
    curb_height: float
    crossing_s: float  # arc length of a side street's centre line; nan: no side street
    crossing_half_width: float
    crossing_side: int  # +1 left only, -1 right only, 0 both sides (a full crossing)
    terrain_x: tuple[float, ...]  # world x where each straight piece of terrain starts (first -inf)
    terrain_grade: tuple[float, ...]  # rise per metre of each piece
    lamp_spacing: float  # metres between street lamps on a side; 0: no lamps
    lamp_failure: float  # probability that a lamp is out
    lamp_color: tuple[float, float, float]
    density: float  # scales traffic, parked cars, pedestrians and furniture
    park_fraction: float  # share of the frontage that is park instead of buildings

    @property
    def lanes_half_width(self) -> float:
        return self.lanes * self.lane_width

    @property
    def half_width(self) -> float:
        """Centre line to curb."""
        return self.lanes_half_width + self.parking_width

    @property
    def walk_outer(self) -> float:
        return self.half_width + self.sidewalk_width

    @property
    def has_crossing(self) -> bool:
        return bool(np.isfinite(self.crossing_s))

    # --- coordinates ------------------------------------------------------------------------
    def to_world(self, s, n) -> tuple[np.ndarray, np.ndarray]:
        s, n = np.asarray(s, np.float64), np.asarray(n, np.float64)
        if self.curvature == 0.0:
            return s, n
        radius = 1.0 / self.curvature
        theta = s * self.curvature
        rho = radius - n
        return rho * np.sin(theta), radius - rho * np.cos(theta)

    def to_road(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if self.curvature == 0.0:
            return x, y
        radius = 1.0 / self.curvature
        sign = np.sign(radius)
        theta = np.arctan2(sign * x, sign * (radius - y))
        rho = sign * np.hypot(x, radius - y)
        return radius * theta, radius - rho

    def heading(self, s) -> np.ndarray:
        return np.asarray(s, np.float64) * self.curvature

    def terrain_pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(start x, end x, slope, offset) per piece: z = slope * x + offset on [start, end)."""
        start = np.asarray(self.terrain_x, np.float64)
        slope = np.asarray(self.terrain_grade, np.float64)
        end = np.append(start[1:], np.inf)
        offset = np.zeros_like(slope)
        for k in range(1, slope.size):  # continuous at every break
            offset[k] = (slope[k - 1] - slope[k]) * start[k] + offset[k - 1]
        return start, end, slope, offset

    def terrain_height(self, x) -> np.ndarray:
        start, _, slope, offset = self.terrain_pieces()
        x = np.asarray(x, np.float64)
        k = np.searchsorted(start, x, side="right") - 1
        return slope[k] * x + offset[k]

    # --- regions ----------------------------------------------------------------------------
    def carriageway_distance(self, s, n) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance into the carriageway (positive on the road, negative off it) and
        whether the nearest edge is the side street's."""
        along = self.half_width - np.abs(n)
        if not self.has_crossing:
            return along, np.zeros(np.shape(along), bool)
        across = self.crossing_half_width - np.abs(s - self.crossing_s)
        if self.crossing_side != 0:
            across = np.where(n * self.crossing_side > 0, across, -np.inf)
        return np.maximum(along, across), across > along

    def ground_labels(self, s, n, texture_seed: int) -> np.ndarray:
        """Class of the ground at road coordinates: road with markings, sidewalk, terrain/ground."""
        s, n = np.asarray(s, np.float64), np.asarray(n, np.float64)
        inside, _ = self.carriageway_distance(s, n)
        on_road = inside > 0
        an = np.abs(n)
        lanes = self.lanes_half_width
        in_box = np.zeros(s.shape, bool)
        zebra = np.zeros(s.shape, bool)
        side_line = np.zeros(s.shape, bool)
        if self.has_crossing:
            ds = np.abs(s - self.crossing_s)
            in_box = (ds < self.crossing_half_width) & (an < self.half_width)
            zebra = (an < self.half_width) & (ds > self.crossing_half_width + 0.5) & (
                ds < self.crossing_half_width + 4.0) & (np.mod(n, 1.2) < 0.6)
            side_line = (an > self.half_width) & (ds < 0.08) & (np.mod(n, 9.0) < 3.0)
        lane = np.round(an / self.lane_width)
        dashed = (lane > 0) & (lane < self.lanes) & (np.abs(an - lane * self.lane_width) < 0.075) & (
            np.mod(s, 9.0) < 3.0)
        centre = an < 0.1
        edge = np.abs(an - (lanes - 0.25)) < 0.08
        line = on_road & ((~in_box & (centre | dashed | edge | zebra)) | side_line)
        walk = ~on_road & (inside > -self.sidewalk_width)
        patch = hash01(np.floor(s / 6), np.floor(n / 6), np.zeros_like(s), texture_seed + 1) > 0.45
        return np.where(line, ID["RoadLine"], np.where(on_road, ID["Road"], np.where(
            walk, ID["SideWalk"], np.where(patch, ID["Terrain"], ID["Ground"])))).astype(np.uint8)


@dataclass(frozen=True)
class Rig:
    """The vehicle's sensors: camera mount and lens, the LiDAR above and behind the camera."""

    camera_height_m: float
    camera_pitch_deg: float  # positive looks down
    camera_roll_deg: float
    camera_yaw_deg: float
    hfov_deg: float
    lane: int  # driving lane, 0 = the rightmost

    CAMERA_FORWARD_M = 1.5  # camera ahead of the ego origin
    LIDAR_FROM_CAMERA = (-0.3, 0.0, 0.3)  # on the roof: 30 cm behind and above the camera

    def rotation_ego_camera(self) -> np.ndarray:
        """Camera optical axes (x right, y down, z forward) as columns in the ego frame
        (x forward, y left, z up), mount yaw, pitch and roll applied."""
        yaw, pitch, roll = np.radians([self.camera_yaw_deg, self.camera_pitch_deg, self.camera_roll_deg])
        rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        ry = np.array([[np.cos(pitch), 0, np.sin(pitch)], [0, 1, 0], [-np.sin(pitch), 0, np.cos(pitch)]])
        rx = np.array([[1, 0, 0], [0, np.cos(roll), -np.sin(roll)], [0, np.sin(roll), np.cos(roll)]])
        body_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        return rz @ ry @ rx @ body_optical

    def camera_in_ego(self) -> np.ndarray:
        return np.array([self.CAMERA_FORWARD_M, 0.0, self.camera_height_m])

    def lidar_in_ego(self) -> np.ndarray:
        return self.camera_in_ego() + np.asarray(self.LIDAR_FROM_CAMERA)

    def camera_lidar_extrinsic(self) -> np.ndarray:
        """T_camera_lidar: LiDAR frame (the ego axes, at the LiDAR) -> camera optical frame."""
        R = self.rotation_ego_camera()
        T = np.eye(4)
        T[:3, :3] = R.T
        T[:3, 3] = R.T @ (self.lidar_in_ego() - self.camera_in_ego())
        return T


def draw_rig(seed: int) -> Rig:
    """A vehicle: cars to vans (camera 1.2-2.4 m up), mounts not perfectly level, lenses 60-105 deg."""
    rng = np.random.default_rng([seed, 29])
    return Rig(camera_height_m=float(rng.uniform(1.2, 2.4)), camera_pitch_deg=float(rng.uniform(-3.0, 7.0)),
               camera_roll_deg=float(rng.normal(0.0, 1.5)), camera_yaw_deg=float(rng.normal(0.0, 1.5)),
               hfov_deg=float(rng.uniform(60.0, 105.0)), lane=int(rng.integers(0, 3)))


def draw_layout(seed: int, length_m: float) -> StreetLayout:
    """A street: straight or curved (radius >= 70 m), maybe a side street, maybe a hill ahead.

    `length_m` (how far the street reaches ahead) bounds the curvature so the heading changes by
    less than MAX_TURN_RAD along it.
    """
    rng = np.random.default_rng([seed, 17])
    kind = rng.random()
    curvature = 0.0
    if kind < 0.6:
        curvature = float(rng.choice([-1.0, 1.0]) / rng.uniform(70.0, 400.0))
        curvature = float(np.sign(curvature) * min(abs(curvature), MAX_TURN_RAD / max(length_m, 1.0)))
    lanes = int(rng.choice([1, 1, 2, 2, 3]))
    lane_width = float(rng.uniform(2.9, 3.8))
    parking = float(rng.choice([0.0, 2.2])) if lanes < 3 else 0.0
    crossing = rng.random() < 0.45
    crossing_s = float(rng.uniform(18.0, 70.0)) if crossing else float("nan")
    crossing_half = float(rng.integers(1, 3) * rng.uniform(3.0, 3.6))
    side = int(rng.choice([-1, 0, 1])) if crossing else 0
    hills = rng.random() < 0.45
    if hills:
        first = float(rng.uniform(15.0, 50.0))
        grades = (0.0, float(rng.uniform(-0.09, 0.09)), float(rng.uniform(-0.06, 0.06)))
        breaks = (-np.inf, first, first + float(rng.uniform(25.0, 80.0)))
    else:
        grades, breaks = (0.0,), (-np.inf,)
    lamps = rng.random() > 0.15
    color = [(1.0, 0.72, 0.38), (0.95, 0.95, 1.0)][int(rng.integers(2))]  # sodium or LED
    return StreetLayout(
        curvature=curvature, lanes=lanes, lane_width=lane_width, parking_width=parking,
        sidewalk_width=float(rng.uniform(1.5, 4.5)), curb_height=float(rng.uniform(0.1, 0.2)),
        crossing_s=crossing_s, crossing_half_width=crossing_half, crossing_side=side,
        terrain_x=tuple(float(b) for b in breaks), terrain_grade=grades,
        lamp_spacing=float(rng.uniform(22.0, 45.0)) if lamps else 0.0,
        lamp_failure=float(rng.uniform(0.1, 0.4)), lamp_color=color,
        density=float(rng.uniform(0.5, 1.6)), park_fraction=float(rng.choice([0.0, 0.1, 0.3, 0.6])),
    )


def hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-lattice-cell random numbers in [0, 1) (integer hashing, wraps on overflow)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (iz.astype(np.int64) * 83492791)
    h = h ^ (seed * 2654435761 & 0x7FFFFFFF)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


# --------------------------------------------------------------------------------------------
# Content


@dataclass
class Street:
    """Everything on a street, as arrays. Boxes and spheres are anchored at road coordinates
    (s, n) at t = 0 and move with (vs, vn) in road coordinates; `yaw` is relative to the road's
    heading at the anchor, `offset` a shift of the part in the object's own frame (x forward)."""

    layout: StreetLayout
    box_s: np.ndarray
    box_n: np.ndarray
    box_v: np.ndarray  # [N, 2] (ds/dt, dn/dt)
    box_yaw: np.ndarray
    box_offset: np.ndarray  # [N, 2]
    box_z: np.ndarray  # bottom above the ground at the anchor
    box_half: np.ndarray  # [N, 3] half length, width, height
    box_label: np.ndarray  # uint8
    box_albedo: np.ndarray  # [N, 3]
    box_texture: np.ndarray  # int8
    box_emission: np.ndarray  # [N, 3] radiance always emitted (traffic lights)
    box_night_emission: np.ndarray  # [N, 3] emitted only at night (lamps, car lights)
    sph_s: np.ndarray
    sph_n: np.ndarray
    sph_v: np.ndarray
    sph_z: np.ndarray  # centre above the ground
    sph_radius: np.ndarray
    sph_label: np.ndarray
    sph_albedo: np.ndarray
    sph_texture: np.ndarray
    lamps: np.ndarray  # [L, 3] world positions of working street lamps
    texture_seed: int

    def boxes_at(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (centre [N, 3], half extents [N, 3], yaw [N]) of every box at time t."""
        centre, yaw = self._pose(self.box_s, self.box_n, self.box_v, self.box_yaw, self.box_offset,
                                 self.box_z + self.box_half[:, 2], t)
        return centre, self.box_half, yaw

    def spheres_at(self, t: float) -> np.ndarray:
        """World centres [S, 3] of the spheres at time t."""
        zeros = np.zeros(self.sph_s.size)
        centre, _ = self._pose(self.sph_s, self.sph_n, self.sph_v, zeros, np.zeros((zeros.size, 2)),
                               self.sph_z, t)
        return centre

    def _pose(self, s0, n0, v, yaw, offset, z, t):
        lay = self.layout
        s = s0 + v[:, 0] * t
        n = n0 + v[:, 1] * t
        x, y = lay.to_world(s, n)
        heading = lay.heading(s) + yaw
        c, si = np.cos(heading), np.sin(heading)
        raised = lay.carriageway_distance(s, n)[0] < 0
        ground = lay.terrain_height(x) + raised * lay.curb_height
        centre = np.stack([x + c * offset[:, 0] - si * offset[:, 1], y + si * offset[:, 0] + c * offset[:, 1],
                           ground + z], axis=1)
        return centre, heading


class _Builder:
    """Collects boxes and spheres in road coordinates; objects stand on the ground at their anchor."""

    def __init__(self, layout: StreetLayout):
        self.layout = layout
        self.boxes: list[tuple] = []
        self.spheres: list[tuple] = []
        self.lamps: list[tuple[float, float, float]] = []  # (s, n, height above ground), working lamps
        # On a slope a flat-bottomed box floats at its downhill end: sink it that far (the ground
        # hides the buried part).
        self.max_grade = float(np.max(np.abs(layout.terrain_grade)))

    def box(self, s, n, length, width, height, label, albedo, *, z=0.0, yaw=0.0, v=(0.0, 0.0),
            offset=(0.0, 0.0), texture=PLAIN, emission=(0.0, 0.0, 0.0), night=(0.0, 0.0, 0.0)):
        sink = self.max_grade * 0.5 * max(length, width) + 0.02 if z <= 0.0 else 0.0
        self.boxes.append((s, n, v, yaw, offset, z - sink, (length / 2, width / 2, (height + sink) / 2), ID[label],
                           albedo, texture, emission, night))

    def sphere(self, s, n, z, radius, label, albedo, texture=PLAIN, v=(0.0, 0.0)):
        self.spheres.append((s, n, v, z, radius, ID[label], albedo, texture))

    def build(self, texture_seed: int) -> Street:
        b = list(zip(*self.boxes, strict=True))
        sp = list(zip(*self.spheres, strict=True)) if self.spheres else [[]] * 8
        f, f32 = np.float64, np.float32
        lay = self.layout
        if self.lamps:
            s, n, h = np.array(self.lamps, f).T
            x, y = lay.to_world(s, n)
            raised = lay.carriageway_distance(s, n)[0] < 0
            lamps = np.stack([x, y, lay.terrain_height(x) + raised * lay.curb_height + h], axis=1)
        else:
            lamps = np.zeros((0, 3))
        return Street(
            lay, np.array(b[0], f), np.array(b[1], f), np.array(b[2], f).reshape(-1, 2), np.array(b[3], f),
            np.array(b[4], f).reshape(-1, 2), np.array(b[5], f), np.array(b[6], f).reshape(-1, 3),
            np.array(b[7], np.uint8), np.array(b[8], f32).reshape(-1, 3), np.array(b[9], np.int8),
            np.array(b[10], f32).reshape(-1, 3), np.array(b[11], f32).reshape(-1, 3),
            np.array(sp[0], f), np.array(sp[1], f), np.array(sp[2], f).reshape(-1, 2), np.array(sp[3], f),
            np.array(sp[4], f), np.array(sp[5], np.uint8), np.array(sp[6], f32).reshape(-1, 3),
            np.array(sp[7], np.int8), lamps, texture_seed)


def jitter(rng: np.random.Generator, rgb, amount: float = 0.08) -> tuple:
    return tuple(np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0.02, 0.95))


def build_street(layout: StreetLayout, seed: int, s_start: float, s_end: float, ego_speed: float,
                 ego_n: float) -> Street:
    """Everything along the street between arc lengths s_start and s_end."""
    sb = _Builder(layout)
    cursor = {1.0: s_start, -1.0: s_start}  # where the next frontage starts, per side
    for block in range(int(np.floor(s_start / BLOCK_M)), int(np.ceil(s_end / BLOCK_M))):
        rng = np.random.default_rng([seed, 7, block + 1000])
        s0, s1 = block * BLOCK_M, (block + 1) * BLOCK_M
        for side in (1.0, -1.0):
            while cursor[side] < s1:
                cursor[side] = _add_frontage(sb, rng, cursor[side], side)
            _add_furniture(sb, rng, s0, s1, side)
            _add_pedestrians(sb, rng, s0, s1, side)
            _add_parked(sb, rng, s0, s1, side)
        _add_traffic(sb, rng, s0, s1, ego_speed, ego_n)
    _add_lamps(sb, seed, s_start, s_end)
    if layout.has_crossing:
        _add_crossing(sb, np.random.default_rng([seed, 8]), ego_speed)
    return sb.build(int(np.random.default_rng([seed, 11]).integers(2**31)))


def _in_crossing(layout: StreetLayout, s: float, side: float, margin: float) -> bool:
    """Whether s lies in the side street's mouth (with its sidewalks and `margin`) on this side."""
    if not layout.has_crossing or (layout.crossing_side and layout.crossing_side != side):
        return False
    return abs(s - layout.crossing_s) < layout.crossing_half_width + layout.sidewalk_width + margin


def _inner_sag(layout: StreetLayout, length: float, n: float) -> float:
    """How far the ends of a straight object of `length`, tangent to the road at offset n, come
    towards the road on the inside of a curve."""
    k = layout.curvature
    if k == 0.0 or n * k <= 0:
        return 0.0
    return length**2 / (8.0 * max(abs(1.0 / k) - abs(n), 10.0))


def _add_frontage(sb: _Builder, rng: np.random.Generator, s: float, side: float) -> float:
    """One building (with its yard and the gap after it) or a stretch of park; returns the next s."""
    lay = sb.layout
    outer = lay.walk_outer
    if _in_crossing(lay, s, side, 2.0):  # skip the side street's mouth (a little beyond: no rounding trap)
        return lay.crossing_s + lay.crossing_half_width + lay.sidewalk_width + 2.5
    if rng.random() < lay.park_fraction:
        length = rng.uniform(20, 50)
        for ts in rng.uniform(s, s + length, int(length / rng.uniform(4, 9))):
            _add_tree(sb, rng, ts, side * (outer + rng.uniform(1.5, 20.0)))
        if rng.random() < 0.6:
            kind = rng.choice(["Fence", "Vegetation"])
            albedo = (0.35, 0.33, 0.30) if kind == "Fence" else jitter(rng, (0.18, 0.35, 0.12))
            sb.box(s + length / 2, side * (outer + 0.4), length, 0.1 if kind == "Fence" else 0.8,
                   rng.uniform(0.8, 1.6), kind, albedo, texture=FOLIAGE if kind == "Vegetation" else PLAIN)
        for bs in rng.uniform(s, s + length, int(rng.integers(0, 3))):
            sb.box(bs, side * (outer - 0.5), 1.6, 0.5, 0.5, "Static", jitter(rng, (0.35, 0.25, 0.15)))
        return s + length
    length = rng.uniform(8, 30)
    depth = rng.uniform(8, 20)
    height = float(np.clip(rng.lognormal(np.log(12.0), 0.6), 4.0, 45.0))
    setback = rng.choice([0.0, rng.uniform(0.5, 3.0), rng.uniform(3.0, 9.0)])
    setback += _inner_sag(lay, length, side * (outer + setback))
    facade = rng.choice([(0.55, 0.45, 0.38), (0.62, 0.60, 0.55), (0.45, 0.30, 0.25), (0.75, 0.72, 0.65),
                         (0.35, 0.37, 0.40)])
    sb.box(s + length / 2, side * (outer + setback + depth / 2), length, depth, height, "Building",
           jitter(rng, facade), texture=FACADE)
    if setback > 3.0 and rng.random() < 0.6:  # front yard behind a fence, wall or hedge
        kind = rng.choice(["Fence", "Wall", "Vegetation"])
        width, albedo, texture = {"Fence": (0.06, (0.35, 0.33, 0.30), PLAIN),
                                  "Wall": (0.3, (0.6, 0.58, 0.55), PLAIN),
                                  "Vegetation": (0.9, (0.18, 0.35, 0.12), FOLIAGE)}[kind]
        sb.box(s + length / 2, side * (outer + 0.3), length, width, rng.uniform(0.8, 1.8), kind,
               jitter(rng, albedo), texture=texture)
    s += length
    gap = rng.uniform(0, 9)
    if gap > 3:
        kind = int(rng.integers(3))
        if kind == 0:
            sb.box(s + gap / 2, side * (outer + 1.0), gap, 0.3, rng.uniform(1.2, 2.5), "Wall",
                   jitter(rng, (0.6, 0.58, 0.55)))
        elif kind == 1:
            sb.box(s + gap / 2, side * (outer + 1.0), gap, 0.05, rng.uniform(1.0, 2.0), "Fence",
                   jitter(rng, (0.35, 0.33, 0.30)))
    return s + gap


def _add_tree(sb: _Builder, rng: np.random.Generator, s: float, n: float):
    trunk = rng.uniform(1.5, 3.5)
    radius = rng.uniform(1.0, 3.0)
    sb.box(s, n, 0.3, 0.3, trunk + radius * 0.5, "Vegetation", (0.30, 0.22, 0.15))
    sb.sphere(s, n, trunk + radius * 0.8, radius, "Vegetation", jitter(rng, (0.20, 0.42, 0.15)), FOLIAGE)


def _add_furniture(sb: _Builder, rng: np.random.Generator, s0: float, s1: float, side: float):
    """Traffic signs, trees along the sidewalk, bins, benches and bollards."""
    lay = sb.layout
    grey = (0.4, 0.4, 0.42)
    curb = side * (lay.half_width + 0.35)
    for s in rng.uniform(s0, s1, rng.poisson(2.5 * lay.density)):
        if _in_crossing(lay, s, side, 0.5):
            continue
        height = rng.uniform(2.0, 2.8)
        sb.box(s, curb, 0.08, 0.08, height + 0.4, "Pole", grey)
        plate = rng.choice([(0.8, 0.1, 0.1), (0.1, 0.25, 0.75), (0.85, 0.85, 0.85), (0.9, 0.75, 0.1)])
        size = rng.uniform(0.5, 0.9)
        sb.box(s - 0.06, curb, 0.04, size, size, "TrafficSign", jitter(rng, plate, 0.04), z=height - size / 2)
    if lay.sidewalk_width > 2.4:
        for s in rng.uniform(s0, s1, rng.poisson(5.0 * lay.density)):
            if not _in_crossing(lay, s, side, 0.5):
                _add_tree(sb, rng, s, side * (lay.walk_outer - 0.8))
    for s in rng.uniform(s0, s1, rng.poisson(4.0 * lay.density)):
        if _in_crossing(lay, s, side, 0.0):
            continue
        kind = int(rng.integers(4))
        n = side * (lay.walk_outer - rng.uniform(0.3, 0.6)) if kind < 3 else side * (lay.half_width + 0.3)
        size = [(0.6, 0.6, 1.0), (1.8, 0.6, 0.5), (0.5, 0.5, 1.3), (0.2, 0.2, 0.9)][kind]  # bin, bench, box, bollard
        sb.box(s, n, *size, "Static", jitter(rng, rng.choice([(0.2, 0.35, 0.25), (0.5, 0.5, 0.5), (0.6, 0.4, 0.2)])))


def _add_pedestrians(sb: _Builder, rng: np.random.Generator, s0: float, s1: float, side: float):
    lay = sb.layout
    for s in rng.uniform(s0, s1, rng.poisson(8.0 * lay.density)):
        n = side * (lay.half_width + rng.uniform(0.5, max(0.6, lay.sidewalk_width - 0.3)))
        speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6) if rng.random() < 0.7 else 0.0
        _add_pedestrian(sb, rng, s, n, (speed, 0.0))


def _add_pedestrian(sb: _Builder, rng: np.random.Generator, s: float, n: float, v: tuple[float, float]):
    height = rng.uniform(1.5, 1.9)
    clothes = rng.choice([(0.2, 0.2, 0.5), (0.6, 0.2, 0.2), (0.25, 0.25, 0.25), (0.7, 0.7, 0.6), (0.1, 0.1, 0.1)])
    sb.box(s, n, 0.35, 0.45, height - 0.25, "Pedestrian", jitter(rng, clothes), v=v)
    sb.sphere(s, n, height - 0.12, 0.12, "Pedestrian", (0.62, 0.48, 0.38), v=v)


def _add_parked(sb: _Builder, rng: np.random.Generator, s0: float, s1: float, side: float):
    """Cars (and the odd van or bus) in the parking lane, facing the traffic on their side."""
    lay = sb.layout
    if lay.parking_width == 0.0:
        return
    fill = min(0.9, 0.45 * lay.density)
    for s in np.arange(s0 + 3.0, s1, 6.0):
        if rng.random() > fill or _in_crossing(lay, s, side, 5.0):
            continue
        yaw = 0.0 if side < 0 else np.pi
        _add_vehicle(sb, rng, s + rng.uniform(-0.8, 0.8), side * (lay.lanes_half_width + 1.1), yaw, (0.0, 0.0),
                     lights=False)


def _add_traffic(sb: _Builder, rng: np.random.Generator, s0: float, s1: float, ego_speed: float, ego_n: float):
    """Vehicles in every lane: ours on n < 0 (right-hand traffic), oncoming on n > 0."""
    lay = sb.layout
    for _ in range(rng.poisson(6.0 * lay.density * lay.lanes)):
        lane = int(rng.integers(lay.lanes))
        direction = rng.choice([-1.0, 1.0])
        n = -direction * (lane + 0.5) * lay.lane_width
        s = rng.uniform(s0, s1)
        if direction > 0 and abs(n - ego_n) < 0.1:
            if -10.0 < s < 14.0:  # keep the ego car's own space clear; our lane drives with us
                continue
            speed = ego_speed
        else:
            speed = direction * rng.uniform(4, 14)
        _add_vehicle(sb, rng, s, n, 0.0 if direction > 0 else np.pi, (speed, 0.0), lights=True)


def _add_lamps(sb: _Builder, seed: int, s_start: float, s_end: float):
    """Street lamps on poles at the curb, staggered between the sides; some are out."""
    lay = sb.layout
    if lay.lamp_spacing == 0.0:
        return
    grey = (0.4, 0.4, 0.42)
    height = 6.0 + 3.0 * hash01(np.zeros(1), np.zeros(1), np.zeros(1), seed + 5)[0]
    for side, phase in ((1.0, 0.0), (-1.0, 0.5)):
        first = (np.floor(s_start / lay.lamp_spacing) + phase) * lay.lamp_spacing
        for i, s in enumerate(np.arange(first, s_end, lay.lamp_spacing)):
            if _in_crossing(lay, s, side, 0.5):
                continue
            n = side * (lay.half_width + 0.4)
            working = hash01(np.array([i]), np.array([int(side)]), np.array([int(s)]), seed + 9)[0] > lay.lamp_failure
            sb.box(s, n, 0.2, 0.2, height, "Pole", grey)
            sb.box(s, n - side * 0.75, 0.3, 1.5, 0.25, "Pole", grey, z=height - 0.25)
            head = n - side * 1.3
            sb.box(s, head, 0.5, 0.35, 0.12, "Pole", (0.3, 0.3, 0.3), z=height - 0.37,
                   night=tuple(3.0 * np.asarray(lay.lamp_color)) if working else (0.0, 0.0, 0.0))
            if working:
                sb.lamps.append((s, head, height - 0.4))
            if int(round(s / lay.lamp_spacing)) % 4 == 2:  # a traffic light hanging from the arm
                lamp = [(1.0, 0.08, 0.04), (0.1, 1.0, 0.3), (1.0, 0.6, 0.0)][int((s * 7) % 3)]
                sb.box(s, n - side * 0.6, 0.4, 0.4, 1.1, "TrafficLight", (0.08, 0.08, 0.08), z=height - 1.4,
                       emission=lamp)


def _add_vehicle(sb: _Builder, rng: np.random.Generator, s: float, n: float, yaw: float, v: tuple[float, float],
                 lights: bool):
    """A car, truck, bus or two-wheeler centred at (s, n), facing `yaw` relative to the road.
    Moving vehicles at night show headlights (at the front, towards yaw) and tail lights."""
    kind = rng.choice(["Cars"] * 7 + ["Truck", "Bus", "TwoWheeler", "TwoWheeler"])
    paint = jitter(rng, rng.choice([(0.7, 0.1, 0.1), (0.15, 0.2, 0.5), (0.8, 0.8, 0.8), (0.1, 0.1, 0.1),
                                    (0.5, 0.5, 0.52), (0.85, 0.85, 0.82)]))
    box = sb.box
    if kind == "Cars":
        length, width = rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.9)
        box(s, n, length, width, 0.7, "Cars", paint, z=0.3, yaw=yaw, v=v)
        box(s, n, length * 0.5, width * 0.9, 0.5, "Cars", (0.08, 0.09, 0.11), z=1.0, yaw=yaw, v=v,
            offset=(-0.15, 0.0))
        box(s, n, length * 0.85, width * 0.95, 0.3, "Cars", (0.05, 0.05, 0.05), yaw=yaw, v=v)
        front, lamp_z = length / 2, 0.65
    elif kind == "Truck":
        box(s, n, 2.2, 2.4, 3.0, "Truck", paint, yaw=yaw, v=v, offset=(3.6, 0.0))
        box(s, n, 6.8, 2.5, 3.8, "Truck", jitter(rng, (0.8, 0.78, 0.75)), yaw=yaw, v=v, offset=(-1.1, 0.0))
        front, lamp_z, width = 4.7, 0.8, 2.4
    elif kind == "Bus":
        box(s, n, 12.0, 2.5, 1.8, "Bus", paint, yaw=yaw, v=v)
        box(s, n, 12.0, 2.5, 1.4, "Bus", (0.1, 0.11, 0.13), z=1.8, yaw=yaw, v=v)  # windows
        front, lamp_z, width = 6.0, 0.8, 2.5
    else:
        n += -1.0 if n < 0 else 1.0  # ride near the lane edge
        box(s, n, 1.8, 0.5, 1.0, "TwoWheeler", paint, yaw=yaw, v=v)
        box(s, n, 0.5, 0.5, 0.7, "TwoWheeler", jitter(rng, (0.3, 0.3, 0.3)), z=1.0, yaw=yaw, v=v, offset=(-0.2, 0.0))
        front, lamp_z, width = 0.9, 0.8, 0.0
    if not lights:
        return
    for lateral in ((-0.35 * width, 0.35 * width) if width else (0.0,)):
        box(s, n, 0.06, 0.25, 0.12, kind, (0.9, 0.9, 0.9), z=lamp_z, yaw=yaw, v=v, offset=(front + 0.03, lateral),
            night=(30.0, 30.0, 28.0))
        box(s, n, 0.06, 0.25, 0.12, kind, (0.5, 0.05, 0.05), z=lamp_z + 0.1, yaw=yaw, v=v,
            offset=(-front - 0.03 if kind != "Truck" else -4.55, lateral), night=(0.08, 0.006, 0.004))


def _add_crossing(sb: _Builder, rng: np.random.Generator, ego_speed: float):
    """The side street: buildings along it, its traffic, signals at the corners and people on the
    zebra crossings."""
    lay = sb.layout
    sc, half = lay.crossing_s, lay.crossing_half_width
    sides = (1.0, -1.0) if lay.crossing_side == 0 else (float(lay.crossing_side),)
    for side in sides:
        for bank in (-1.0, 1.0):  # the two sides of the side street
            n = lay.walk_outer + rng.uniform(1.0, 4.0)
            while n < 90.0:
                width, depth = rng.uniform(10, 25), rng.uniform(8, 18)
                setback = rng.uniform(0.0, 5.0)
                sb.box(sc + bank * (half + lay.sidewalk_width + setback + depth / 2), side * (n + width / 2), width,
                       depth, float(np.clip(rng.lognormal(np.log(12.0), 0.6), 4.0, 40.0)), "Building",
                       jitter(rng, rng.choice([(0.55, 0.45, 0.38), (0.62, 0.60, 0.55), (0.45, 0.30, 0.25)])),
                       yaw=np.pi / 2, texture=FACADE)
                n += width + rng.uniform(0.0, 6.0)
        for _ in range(rng.poisson(3.0 * lay.density)):  # traffic on the side street
            towards = rng.random() < 0.5
            bank = rng.choice([-1.0, 1.0])
            n = side * rng.uniform(lay.walk_outer + 3.0, 70.0)
            speed = rng.uniform(3.0, 10.0) * (0.0 if towards and rng.random() < 0.5 else 1.0)
            vn = -side * speed if towards else side * speed
            yaw = np.pi / 2 if vn > 0 or (vn == 0 and side < 0) else -np.pi / 2
            _add_vehicle(sb, rng, sc + bank * half / 2, n, yaw, (0.0, vn), lights=True)
        grey = (0.4, 0.4, 0.42)
        for bank in (-1.0, 1.0):  # signal poles at the corners
            s = sc + bank * (half + 1.0)
            n = side * (lay.half_width + 0.5)
            sb.box(s, n, 0.2, 0.2, 6.0, "Pole", grey)
            sb.box(s, n - side * 2.0, 0.15, 4.0, 0.15, "Pole", grey, z=5.8)
            lamp = [(1.0, 0.08, 0.04), (0.1, 1.0, 0.3), (1.0, 0.6, 0.0)][int(rng.integers(3))]
            sb.box(s, n - side * 3.5, 0.4, 0.4, 1.1, "TrafficLight", (0.08, 0.08, 0.08), z=4.6, emission=lamp)
    for bank in (-1.0, 1.0):  # pedestrians on the zebra crossings
        s = sc + bank * (half + 2.2)
        for _ in range(rng.poisson(1.5 * lay.density)):
            speed = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 1.6)
            _add_pedestrian(sb, rng, s + rng.uniform(-1.2, 1.2), rng.uniform(-lay.half_width, lay.half_width),
                            (0.0, speed))
