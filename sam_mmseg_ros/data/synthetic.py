"""Procedural multi-sensor driving scenes: RGB, depth, LiDAR, events, camera info and labels in
DELIVER's classes, under weather and lighting conditions and sensor failures.

Why ray casting of analytic primitives: one scene description feeds every sensor, so the camera,
the depth camera, the LiDAR (from its own pose) and the event camera agree geometrically by
construction, which is what lets tests check projection and calibration exactly. `street` says
what is on the road (curved or straight, side streets, hills, curbs, parked and moving traffic),
`raycast` finds what each ray hits, `physics` decides what each sensor can still measure of it:
photon-limited night, fog by visibility, an active time-of-flight depth camera, LiDAR
backscatter. A street seed fixes the street and the vehicle (camera height, pitch, roll, field
of view), so the same street can be rendered under every condition and compared like with like.

World frame: x along the street's start, y left, z up. The ego car drives in a lane of the
street at `ego_speed_mps`; the camera and the LiDAR ride on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sam_mmseg_ros.contracts import EventArray, FrameBundle, ImageData, PointCloud
from sam_mmseg_ros.data import physics, raycast
from sam_mmseg_ros.data.street import (
    FACADE,
    FOLIAGE,
    ID,
    Rig,
    Street,
    build_street,
    draw_layout,
    draw_rig,
    hash01,
)
from sam_mmseg_ros.labels import CLASSES
from sam_mmseg_ros.pipeline import resize_nearest
from sam_mmseg_ros.sensors.camera import CameraModel
from sam_mmseg_ros.sensors.encodings import NATIVE
from sam_mmseg_ros.sensors.preprocess import PreprocessConfig, preprocess

CONDITIONS: tuple[str, ...] = ("sun", "cloud", "fog", "rain", "night", "night_fog")
FAILURES: tuple[str, ...] = ("motion_blur", "overexposure", "underexposure", "lidar_jitter", "low_res_events")

CAMERA_FRAME = "camera_optical_frame"
LIDAR_FRAME = "lidar"
_LIDAR_ELEVATION_DEG = {32: (2.0, -24.9), 64: (15.0, -25.0)}
_LONG_EXPOSURE_S = 0.15  # the motion_blur failure: a fixed long exposure (an ND-filtered camera)

_NIR_REFLECTIVITY = np.full(len(CLASSES), 0.3, np.float32)
for _name, _value in {"Road": 0.12, "RoadLine": 0.6, "SideWalk": 0.25, "Vegetation": 0.45, "Cars": 0.5,
                      "TrafficSign": 0.95, "Terrain": 0.3, "Ground": 0.2, "Pedestrian": 0.3, "Bus": 0.5,
                      "Truck": 0.5, "Building": 0.35, "Sky": 0.0}.items():
    _NIR_REFLECTIVITY[ID[_name]] = _value
"""Near-infrared (850-940 nm) reflectivity per class, for the depth camera and the LiDAR:
retroreflective signs and lane paint are bright, asphalt is dark, vegetation is bright in NIR."""


@dataclass
class SceneConfig:
    """Street-level overrides; None fields are drawn from the street seed."""

    curvature: float | None = None  # 1/m, positive turns left
    crossing: bool | None = None  # a side street ahead
    hills: bool | None = None  # the terrain rises or falls ahead


@dataclass
class SequenceConfig:
    width: int = 512
    height: int = 512
    hfov_deg: float | None = None  # None: the rig's (drawn per rig seed)
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
    seed: int = 0  # the street (and, unless rig_seed is given, the vehicle)
    rig_seed: int | None = None  # the vehicle: camera height, pitch, roll, yaw, field of view, lane
    fog_visibility_m: float | None = None  # None: drawn from the condition's range
    fog_patchiness: float | None = None  # None: the condition's
    start_ns: int = 1_700_000_000_000_000_000
    scene: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self):
        if self.condition not in physics.CONDITION_TABLE:
            raise ValueError(f"unknown condition '{self.condition}' (known: {', '.join(CONDITIONS)})")
        unknown = set(self.failures) - set(FAILURES)
        if unknown:
            raise ValueError(f"unknown failures {sorted(unknown)} (known: {', '.join(FAILURES)})")
        if self.lidar_beams not in _LIDAR_ELEVATION_DEG:
            raise ValueError("lidar_beams must be 32 or 64")
        if self.fog_visibility_m is not None and self.fog_visibility_m <= 0:
            raise ValueError("fog_visibility_m must be positive")
        self.failures = tuple(self.failures)


@dataclass
class SyntheticFrame:
    stamp_ns: int
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], the depth camera's measurement along the optical axis, 0 = none
    labels: np.ndarray  # uint8 [H, W], DELIVER class ids
    camera: CameraModel
    lidar: PointCloud  # in the LiDAR frame (x forward, y left, z up)
    T_camera_lidar: np.ndarray  # [4, 4], maps LiDAR points into the camera optical frame
    events: EventArray  # events since the previous frame
    condition: str
    failures: tuple[str, ...]
    depth_true: np.ndarray  # float32 [H, W], ground truth along the optical axis, 0 = sky
    luminance: np.ndarray  # float32 [H, W], cd/m2 reaching the camera (after fog), before the lens
    transmittance: np.ndarray  # float32 [H, W], fog transmittance camera -> surface, 0 for sky

    def ground_truth_depth(self) -> np.ndarray:
        """float32 [H, W] metres along the optical axis, 0 = none (sky): the depth task's target."""
        return self.depth_true

    def to_bundle(self) -> FrameBundle:
        """The frame as the node's assembler would hand it over, every modality present."""
        stamps = dict.fromkeys(("rgb", "depth", "event", "lidar"), self.stamp_ns)
        return FrameBundle(self.stamp_ns, CAMERA_FRAME, rgb=ImageData(self.rgb, "rgb8"),
                           depth=ImageData(self.depth, "32FC1"), event=self.events, lidar=self.lidar,
                           camera=self.camera, stamps=stamps)


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class _CameraRender:
    radiance: np.ndarray  # [H, W, 3] reaching the lens (fog applied)
    halo_source: np.ndarray | None  # [H, W, 3] light of sources scattered out of the direct path
    depth: np.ndarray  # [H, W] ground truth along the axis, 0 = sky
    labels: np.ndarray
    tof: np.ndarray  # [H, W] the depth camera's measurement
    transmittance: np.ndarray


class _Renderer:
    """Renders one sequence; keeps the event camera's per-pixel state between frames."""

    def __init__(self, config: SequenceConfig, street: Street, rig: Rig, weather: physics.Weather,
                 rng: np.random.Generator):
        self.cfg = config
        self.street = street
        self.layout = street.layout
        self.rig = rig
        self.weather = weather
        self.cond = weather.condition
        self.rng = rng
        self.sensor = physics.CameraSensor()
        self.fog = physics.FogMedium(weather.extinction, weather.patchiness, street.texture_seed + 31)
        self.camera = CameraModel.from_fov(config.width, config.height, rig.hfov_deg, CAMERA_FRAME)
        xn, yn = self.camera.pixel_rays()
        self.optical_dirs = np.stack([xn, yn, np.ones_like(xn)], -1).reshape(-1, 3)
        self.dir_norm = np.linalg.norm(self.optical_dirs, axis=1)
        self.R_ego_camera = rig.rotation_ego_camera()
        # Fog integrals on every 4th ray: the medium varies over metres, not pixels.
        rows = np.arange(config.height) // 4
        cols = np.arange(config.width) // 4
        coarse_w = (config.width + 3) // 4
        self.coarse_index = (rows[:, None] * coarse_w + cols[None, :]).ravel()
        cr = np.minimum(np.arange(0, config.height, 4) + 2, config.height - 1)
        cc = np.minimum(np.arange(0, config.width, 4) + 2, config.width - 1)
        coarse = (cr[:, None] * config.width + cc[None, :]).ravel()
        self.coarse_dirs = self.optical_dirs[coarse] / self.dir_norm[coarse, None]
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
        self.ego_n = -(min(rig.lane, self.layout.lanes - 1) + 0.5) * self.layout.lane_width

    # --- geometry -------------------------------------------------------------------------
    def ego_pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, rotation ego -> world) at time t: driving along its lane, level."""
        s = self.cfg.ego_speed_mps * t
        x, y = self.layout.to_world(s, self.ego_n)
        position = np.array([float(x), float(y), float(self.layout.terrain_height(x))])
        return position, _yaw_matrix(float(self.layout.heading(s)))

    def camera_pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, rotation optical -> world)."""
        position, R = self.ego_pose(t)
        return position + R @ self.rig.camera_in_ego(), R @ self.R_ego_camera

    # --- camera ---------------------------------------------------------------------------
    def render_camera(self, t: float) -> _CameraRender:
        cam, street = self.camera, self.street
        origin, R_wo = self.camera_pose(t)
        ego_position, R_we = self.ego_pose(t)
        dirs = self.optical_dirs @ R_wo.T
        max_t = 300.0
        centre, half, yaw = street.boxes_at(t)
        sph = street.spheres_at(t)
        box_rect = raycast.camera_rects(raycast.box_corners(centre, half, yaw), origin, R_wo, cam, max_t)
        sph_rect = raycast.camera_rects(raycast.sphere_corners(sph, street.sph_radius), origin, R_wo, cam, max_t)
        hits = raycast.cast(origin, dirs, self.layout, (centre, half, yaw), box_rect, (sph, street.sph_radius),
                            sph_rect, cam.width, max_t)
        surface = hits.kind > 0
        f32 = np.float32
        t_hit = np.where(surface, hits.t, 0.0)
        points = origin + dirs * t_hit[:, None]
        labels, albedo, emission = self._materials(hits, points, centre, yaw)
        norm = self.dir_norm.astype(f32)
        unit = dirs.astype(f32) / norm[:, None]
        distance = np.where(surface, t_hit.astype(f32) * norm, f32(np.inf))

        cond, weather = self.cond, self.weather
        n = hits.normal.astype(f32)
        daylight = f32(weather.ambient) * (f32(0.6) + f32(0.4) * n[:, 2]) + f32(cond.sun) * np.maximum(
            n @ weather.sun_direction.astype(f32), f32(0.0))
        light = np.repeat(daylight[:, None], 3, axis=1)
        fogged = self.fog.mean > 1e-3
        headlamp = ego_position + R_we @ physics.HEADLAMPS_IN_EGO.mean(axis=0)
        lamp_color = np.asarray(self.layout.lamp_color)
        if cond.night:
            idx = np.flatnonzero(surface & (distance < 120.0))
            light[idx] += physics.night_irradiance(points[idx], n[idx], street.lamps, lamp_color, headlamp, R_we,
                                                   self.fog.mean)
        radiance = albedo * light + emission
        elev = np.sqrt(np.clip(unit[:, 2:3], 0.0, 1.0))
        sky = ((1 - elev) * np.array(cond.sky_horizon, f32) + elev * np.array(cond.sky_zenith, f32)) * f32(
            weather.sky_scale)
        radiance = np.where(surface[:, None], radiance, sky)
        tau = np.zeros(distance.shape, f32)
        halo = None
        if fogged:
            coarse_dirs = self.coarse_dirs @ R_wo.T
            coarse_tau = self.fog.optical_depth_table(origin, coarse_dirs)
            tau = self.fog.optical_depth(coarse_tau, distance, self.coarse_index).astype(f32)
            transmittance = np.exp(-tau)[:, None]
            airlight = np.array(cond.sky_horizon, f32) * f32(weather.sky_scale)
            radiance = radiance * transmittance + airlight * (1 - transmittance)
            if cond.night:
                inscatter = physics.night_inscatter(origin, coarse_dirs, self.fog, coarse_tau, street.lamps,
                                                    lamp_color, headlamp, R_we)
                radiance += physics.along_ray(inscatter, distance, self.coarse_index)
            halo = (emission * (1 - transmittance) * f32(0.15)).reshape(cam.height, cam.width, 3)

        cos_inc = np.abs(np.einsum("ij,ij->i", n, unit))
        variation = hash01(hits.kind.astype(np.int64), hits.index, np.zeros(1, np.int64), 77)
        reflectivity = _NIR_REFLECTIVITY[labels] * (f32(0.85) + f32(0.3) * variation)
        tof = physics.tof_depth(distance, 1.0 / norm, reflectivity, cos_inc, np.where(surface, daylight, f32(0.0)),
                                tau, self.fog.beta(origin[0], origin[1]) if fogged else 0.0, self.rng)
        shape = (cam.height, cam.width)
        depth = t_hit.astype(f32)
        transmittance = np.where(surface, np.exp(-tau), f32(0.0))
        return _CameraRender(radiance.reshape(*shape, 3), halo, depth.reshape(shape), labels.reshape(shape),
                             tof.reshape(shape), transmittance.reshape(shape))

    def _materials(self, hits: raycast.Hits, p: np.ndarray, box_centre: np.ndarray, box_yaw: np.ndarray):
        street, cond = self.street, self.cond
        n = hits.t.size
        labels = np.full(n, ID["Sky"], np.uint8)
        albedo = np.zeros((n, 3), np.float32)
        emission = np.zeros((n, 3), np.float32)
        seed = street.texture_seed

        g = hits.kind == raycast.GROUND
        s, nn = hits.road_s[g], hits.road_n[g]
        lab = self.layout.ground_labels(s, nn, seed)
        line, on_road, walk = lab == ID["RoadLine"], lab == ID["Road"], lab == ID["SideWalk"]
        patch = lab == ID["Terrain"]
        on_road |= line
        grain = hash01(np.floor(s * 8), np.floor(nn * 8), np.ones_like(s), seed)
        base = np.empty((s.size, 3), np.float32)
        base[:] = (0.38, 0.31, 0.24)
        base[patch] = (0.28, 0.36, 0.16)
        base[walk] = (0.45, 0.44, 0.42)
        base[on_road] = np.array([0.16, 0.16, 0.17]) * cond.road_albedo_scale
        base[line] = (0.85, 0.85, 0.80)
        tiles = walk & ((np.mod(s, 0.6) < 0.03) | (np.mod(nn, 0.6) < 0.03))
        base[tiles] *= 0.7
        labels[g] = lab
        albedo[g] = base * (0.88 + 0.24 * grain)[:, None]

        b = hits.kind == raycast.BOX
        idx = hits.index[b]
        labels[b] = street.box_label[idx]
        alb = street.box_albedo[idx].copy()
        # Texture coordinates in the box's own frame: along the face, and height above its bottom.
        rel = p[b] - box_centre[idx]
        c, si = np.cos(box_yaw[idx]), np.sin(box_yaw[idx])
        lx, ly = c * rel[:, 0] + si * rel[:, 1], -si * rel[:, 0] + c * rel[:, 1]
        nb = hits.normal[b]
        side_face = np.abs(nb[:, 2]) < 0.5
        across = np.abs(-si * nb[:, 0] + c * nb[:, 1]) > 0.5  # the face looks along the box's y
        u = np.where(across, lx, ly)
        w = rel[:, 2] + street.box_half[idx, 2] + street.box_z[idx]  # height above the ground
        grain = hash01(np.floor(u * 2), np.floor(w * 2), idx, seed)
        alb *= (0.85 + 0.3 * grain)[:, None]
        facade = street.box_texture[idx] == FACADE
        window = facade & side_face & (w > 1.5) & (np.mod(u, 3.0) > 0.8) & (np.mod(u, 3.0) < 2.2) & (
            np.mod(w - 1.0, 3.2) > 1.0) & (np.mod(w - 1.0, 3.2) < 2.4)
        alb[window] = (0.07, 0.09, 0.12)
        albedo[b] = alb
        em = street.box_emission[idx].copy()
        if cond.night:
            em += street.box_night_emission[idx]
            cell = hash01(np.floor(u / 3.0), np.floor((w - 1.0) / 3.2), idx, seed + 2)
            lit = window & (cell > 0.7)
            em[lit] = np.array([0.012, 0.009, 0.005], np.float32) * (0.3 + cell[lit, None])
        emission[b] = em

        sp = hits.kind == raycast.SPHERE
        idx = hits.index[sp]
        labels[sp] = street.sph_label[idx]
        ps = p[sp]
        grain = hash01(np.floor(ps[:, 0] * 4), np.floor(ps[:, 1] * 4), np.floor(ps[:, 2] * 4), seed + 3)
        foliage = street.sph_texture[idx] == FOLIAGE
        albedo[sp] = street.sph_albedo[idx] * np.where(foliage, 0.5 + 0.9 * grain, 0.9 + 0.2 * grain)[:, None]
        return labels, albedo, emission

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
        np.add.at(out, v[keep] * w + u[keep], np.float32(0.6 * self.weather.ambient))
        return out.reshape(radiance.shape)

    def expose(self, render: _CameraRender, t: float) -> np.ndarray:
        """The RGB camera: auto exposure (or a failure's), then `physics.CameraSensor.develop`."""
        luma = render.radiance @ np.array([0.299, 0.587, 0.114], np.float32)
        exposure, gain = self.sensor.auto_exposure(luma)
        if "overexposure" in self.cfg.failures:
            gain *= 8.0
        if "underexposure" in self.cfg.failures:
            gain *= 0.08
        travel_time = max(exposure, _LONG_EXPOSURE_S) if "motion_blur" in self.cfg.failures else exposure
        _, R_wo = self.camera_pose(t)
        _, R_we = self.ego_pose(t)
        forward = R_wo.T @ R_we[:, 0]
        focus = None
        if forward[2] > 1e-3:
            focus = (self.camera.fx * forward[0] / forward[2] + self.camera.cx,
                     self.camera.fy * forward[1] / forward[2] + self.camera.cy)
        halo_sigma = np.radians(8.0) * self.camera.fx
        return self.sensor.develop(render.radiance, exposure, gain, self.rng, depth=render.depth, focus=focus,
                                   travel_m=self.cfg.ego_speed_mps * travel_time, halo_source=render.halo_source,
                                   halo_sigma_px=halo_sigma)

    # --- events ---------------------------------------------------------------------------
    def events(self, radiance: np.ndarray, stamp_ns: int) -> EventArray:
        """Events from log-intensity changes since the last call, on the event sensor's grid.

        Each pixel keeps the log intensity of its last event; every further crossing of its
        (slightly mismatched) threshold makes an event, timed by linear interpolation between
        the frame times. The dark current floors the log intensity; background events come at
        `physics.event_noise_rate`, high in the dark.
        """
        gray = radiance @ np.array([0.299, 0.587, 0.114], np.float32)
        sampled = gray[self.ev_rows[:, None], self.ev_cols[None, :]]
        log_i = np.log(sampled + physics.EVENT_DARK_RADIANCE)
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
        noise_count = self.rng.poisson(physics.event_noise_rate(sampled).ravel() * dt * 1e-9)
        noise_pix = np.repeat(np.arange(gw * gh), noise_count)
        pix = np.concatenate([pix, noise_pix])
        t = np.concatenate([t, t0 + self.rng.integers(1, dt + 1, noise_pix.size)])
        pol = np.concatenate([s, self.rng.choice([-1.0, 1.0], noise_pix.size)]).astype(np.int8)
        y, x = np.divmod(pix, gw)
        if (gw, gh) != (self.ev_w, self.ev_h):  # low-res failure: coarse cells, block centres
            x = np.minimum(((x + 0.5) * self.ev_w / gw).astype(np.int64), self.ev_w - 1)
            y = np.minimum(((y + 0.5) * self.ev_h / gh).astype(np.int64), self.ev_h - 1)
        order = np.argsort(t, kind="stable")
        return EventArray(x[order].astype(np.int32), y[order].astype(np.int32), t[order], pol[order],
                          self.ev_w, self.ev_h)

    # --- lidar ----------------------------------------------------------------------------
    def scan_lidar(self, t: float) -> PointCloud:
        cfg, cond, street = self.cfg, self.cond, self.street
        ego_position, R_we = self.ego_pose(t)
        origin = ego_position + R_we @ self.rig.lidar_in_ego()
        dirs = self.lidar_dirs @ R_we.T
        max_t = cfg.lidar_max_range_m
        cols = cfg.lidar_columns
        centre, half, yaw = street.boxes_at(t)
        sph = street.spheres_at(t)
        box_rect = raycast.lidar_rects((raycast.box_corners(centre, half, yaw) - origin) @ R_we, self.elevations,
                                       cols, max_t)
        sph_rect = raycast.lidar_rects((raycast.sphere_corners(sph, street.sph_radius) - origin) @ R_we,
                                       self.elevations, cols, max_t)
        hits = raycast.cast(origin, dirs, self.layout, (centre, half, yaw), box_rect, (sph, street.sph_radius),
                            sph_rect, cols, max_t)
        rng = self.rng
        surface = hits.kind > 0
        label = np.full(hits.t.size, ID["Sky"], np.uint8)
        box = hits.kind == raycast.BOX
        label[box] = street.box_label[hits.index[box]]
        sphere = hits.kind == raycast.SPHERE
        label[sphere] = street.sph_label[hits.index[sphere]]
        ground = hits.kind == raycast.GROUND
        label[ground] = self.layout.ground_labels(hits.road_s[ground], hits.road_n[ground], street.texture_seed)
        dist = np.where(surface, hits.t, np.inf)
        cos_inc = np.abs(np.einsum("ij,ij->i", hits.normal, dirs))
        fogged = self.fog.mean > 1e-3
        tau = np.zeros_like(dist)
        if fogged:  # the fog varies only horizontally: integrate once per azimuth, scale per beam
            horizontal = np.hypot(dirs[:, 0], dirs[:, 1])
            azimuths = dirs[:cols] / horizontal[:cols, None]
            azimuths[:, 2] = 0.0
            column = np.tile(np.arange(cols), cfg.lidar_beams)
            tau = self.fog.optical_depth(self.fog.optical_depth_table(origin, azimuths), dist * horizontal,
                                         column) / horizontal
        beta_near = float(self.fog.beta(origin[0], origin[1])) if fogged else 0.0
        detected, fog_hit, fog_range, power = physics.lidar_returns(dist, _NIR_REFLECTIVITY[label], cos_inc, tau,
                                                                    beta_near, rng)
        detected &= rng.random(dist.size) > cond.lidar_dropout
        ranges = np.where(detected, dist, 0.0) + rng.normal(0, cond.lidar_noise_m, dist.size)
        intensity = np.clip(255 * power * rng.uniform(0.9, 1.1, dist.size), 0, 255)
        early = fog_hit.copy()
        early_range = fog_range
        if cond.precipitation_returns:
            drop = rng.random(dist.size) < cond.precipitation_returns
            drop_range = rng.uniform(0.5, 8.0, dist.size)
            drop &= ~detected | (drop_range < ranges)
            early_range = np.where(drop, drop_range, early_range)
            early |= drop
        ranges = np.where(early, early_range, ranges)
        intensity = np.where(early, rng.uniform(1, 12, dist.size), intensity)
        keep = detected | early
        xyz = self.lidar_dirs[keep] * ranges[keep, None]
        if "lidar_jitter" in cfg.failures:
            xyz = _jitter_points(xyz, rng)
        return PointCloud(xyz.astype(np.float32), intensity[keep].astype(np.float32), LIDAR_FRAME)


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


def sequence_rig(config: SequenceConfig) -> Rig:
    """The vehicle of a sequence: drawn from rig_seed (default: the street seed), field of view
    overridden by config.hfov_deg."""
    rig = draw_rig(config.seed if config.rig_seed is None else config.rig_seed)
    return rig if config.hfov_deg is None else replace(rig, hfov_deg=float(config.hfov_deg))


def sequence_street(config: SequenceConfig) -> Street:
    """The street of a sequence (the same for every condition)."""
    duration = config.num_frames / config.fps
    s_end = config.ego_speed_mps * duration + 220.0
    layout = draw_layout(config.seed, s_end)
    scene = config.scene
    if scene.curvature is not None:
        layout = replace(layout, curvature=float(scene.curvature))
    if scene.crossing is False:
        layout = replace(layout, crossing_s=float("nan"))
    elif scene.crossing and not layout.has_crossing:
        layout = replace(layout, crossing_s=40.0)
    if scene.hills is False:
        layout = replace(layout, terrain_x=(-np.inf,), terrain_grade=(0.0,))
    rig = sequence_rig(config)
    ego_n = -(min(rig.lane, layout.lanes - 1) + 0.5) * layout.lane_width
    return build_street(layout, config.seed, -60.0, s_end, config.ego_speed_mps, ego_n)


def generate_sequence(config: SequenceConfig) -> Iterator[SyntheticFrame]:
    """Frames of one drive down a procedural street; deterministic for a given config."""
    street = sequence_street(config)
    rig = sequence_rig(config)
    condition = physics.CONDITION_TABLE[config.condition]
    weather = physics.draw_weather(condition, np.random.default_rng([config.seed, 23]),
                                   config.fog_visibility_m, config.fog_patchiness)
    renderer = _Renderer(config, street, rig, weather, np.random.default_rng([config.seed, 13]))  # sensor noise
    T_camera_lidar = rig.camera_lidar_extrinsic()
    period_ns = int(round(1e9 / config.fps))

    def render(t):
        out = renderer.render_camera(t)
        if condition.rain:
            out.radiance = renderer.rain_streaks(out.radiance)
        return out

    # The event camera needs a previous frame: render one period before the first stamp.
    renderer.events(render(-1.0 / config.fps).radiance, config.start_ns - period_ns)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    for k in range(config.num_frames):
        t = k / config.fps
        stamp = config.start_ns + k * period_ns
        out = render(t)
        yield SyntheticFrame(
            stamp_ns=stamp,
            rgb=renderer.expose(out, t),
            depth=out.tof,
            labels=out.labels,
            camera=renderer.camera,
            lidar=renderer.scan_lidar(t),
            T_camera_lidar=T_camera_lidar.copy(),
            events=renderer.events(out.radiance, stamp),
            condition=config.condition,
            failures=config.failures,
            depth_true=out.depth,
            luminance=(out.radiance @ luma) * np.float32(physics.CANDELA_PER_UNIT),
            transmittance=out.transmittance,
        )


GENERATOR_VERSION = 2
"""Part of the sample cache's key: raise it when a change to the generator changes its frames,
so caches written by an earlier generator are not read as this one's."""


class SyntheticDataset:
    """Training samples encoded exactly as the node encodes them (`sensors.preprocess`).

    Frames come from short sequences (`frames_per_sequence`), one street per sequence, each with
    its own vehicle (camera height, pitch, roll, field of view), the conditions taking turns;
    `render_sizes` (H, W) take turns too, so the model sees cameras of other shapes squeezed into
    its input as the node squeezes them. Encoded samples are cached in memory and, with
    `cache_dir`, in .npz files, so epochs and later runs do not render again. A torch Dataset by
    duck typing (`__len__`/`__getitem__`).
    """

    def __init__(self, seed: int, num_frames: int, size: tuple[int, int] = (256, 256),
                 conditions: Sequence[str] = CONDITIONS, failures: Sequence[str] = (),
                 render_size: tuple[int, int] | None = None, frames_per_sequence: int = 4,
                 cache_dir: str | Path | None = None, sequence_config: SequenceConfig | None = None,
                 encodings: dict[str, str] | None = None, render_sizes: Sequence[tuple[int, int]] | None = None):
        if render_size is not None and render_sizes is not None:
            raise ValueError("give render_size or render_sizes, not both")
        self.seed = seed
        self.num_frames = num_frames
        self.size = tuple(size)
        self.conditions = tuple(conditions)
        self.failures = tuple(failures)
        self.render_sizes = tuple(tuple(s) for s in (render_sizes or [render_size or size]))
        self.frames_per_sequence = frames_per_sequence
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.base = sequence_config or SequenceConfig()
        self.encodings = dict(encodings or NATIVE)  # sensors/encodings.py; recorded by training
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.num_frames

    def _cache_file(self, index: int) -> Path:
        renders = "-".join(f"{h}x{w}" for h, w in self.render_sizes)
        key = f"g{GENERATOR_VERSION}_{self.seed}_{self.size[0]}x{self.size[1]}_{renders}"
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

    def sequence_config(self, sequence: int) -> SequenceConfig:
        """The SequenceConfig that renders sequence number `sequence` of this dataset."""
        first = sequence * self.frames_per_sequence
        # Shapes take turns over whole rounds of conditions, so every condition gets every shape.
        h, w = self.render_sizes[(sequence // len(self.conditions)) % len(self.render_sizes)]
        return replace(self.base, width=w, height=h, num_frames=min(self.frames_per_sequence, self.num_frames - first),
                       condition=self.conditions[sequence % len(self.conditions)], failures=self.failures,
                       seed=self.seed * 100_003 + sequence)

    def _render_sequence(self, sequence: int):
        config = self.sequence_config(sequence)
        first = sequence * self.frames_per_sequence
        for offset, frame in enumerate(generate_sequence(config)):
            encoded = preprocess(frame.to_bundle(), PreprocessConfig(input_size=self.size, encodings=self.encodings),
                                 frame.T_camera_lidar)
            sample = {"images": np.asarray(encoded.model_input.images[0], np.float32),
                      "modality_mask": np.asarray(encoded.model_input.modality_mask[0], np.float32),
                      "label": resize_nearest(frame.labels, *self.size),
                      "depth": resize_nearest(frame.ground_truth_depth(), *self.size),  # metres, 0 = sky
                      "condition": config.condition}
            self._cache[first + offset] = sample
            if self.cache_dir is not None:
                path = self._cache_file(first + offset)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, **sample)


def class_ids_present(labels: np.ndarray) -> set[str]:
    """Names of the DELIVER classes in a label image (for tests and reports)."""
    return {CLASSES[i] for i in np.unique(labels) if i < len(CLASSES)}

