"""The physics that decides what each synthetic sensor can still measure.

Units: irradiance is relative, 1 = 100 klux (full sun on a surface facing it); a white
Lambertian surface under irradiance E has radiance E in the same relative units (1 = about
32 000 cd/m2). Night is therefore 1e-4 to 1e-8 of day, as on a real street, and what a camera
records follows from photon counts, not from a brightness knob.

- Camera (`CameraSensor.develop`): auto exposure up to a longest exposure and a largest analogue
  gain; photoelectrons are Poisson counts, plus dark current and read noise; the lens scatters a
  few per cent of the light into a heavy-tailed veiling-glare halo, fog droplets scatter light
  sources into wide halos, an over-full pixel blooms into its neighbours; the car's motion during
  the exposure smears the image radially from the focus of expansion, more for near objects.
- Fog (`FogMedium`): extinction beta = 3 / V (Koschmieder, 5 % contrast threshold) for
  meteorological visibility V, patchy in space (value noise on a 20 m lattice), integrated along
  every ray; daylight airlight in proportion to 1 - transmittance, and at night the light of lamps
  and headlights scattered back towards the camera along the ray.
- Depth (`tof_depth`): the depth camera is an active, indirect time-of-flight (flash) camera
  registered to the RGB camera. It brings its own 940 nm light, so it works in the dark, but its
  signal falls with distance squared and with the surface's near-infrared reflectivity and
  incidence, sunlight adds shot noise, fog attenuates both ways and its droplets return light
  from a metre or two that mixes into every pixel's phase (pulling depths short). Pixels below a
  signal-to-noise threshold, saturated or beyond the unambiguous range report no depth (0).
- LiDAR (`lidar_returns`): 905 nm pulses, return power from reflectivity, incidence and range,
  two-way fog extinction; the fog volume near the sensor returns a pulse of its own with a
  probability that grows with the fog density; the strongest return is reported.
- Events (`event_noise_rate`): log-intensity pixels with a dark-current floor; in the dark the
  background (shot-noise) event rate rises and real contrast vanishes under the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_mmseg_ros.data.street import hash01

LUX_PER_UNIT = 1.0e5
CANDELA_PER_UNIT = LUX_PER_UNIT / np.pi  # luminance of radiance 1
KOSCHMIEDER_CONTRAST = 0.05
CLEAR_VISIBILITY_M = 30_000.0


def extinction_from_visibility(visibility_m: float) -> float:
    """Koschmieder: the distance where an object's contrast against the horizon falls to 5 %."""
    return -np.log(KOSCHMIEDER_CONTRAST) / visibility_m


@dataclass(frozen=True)
class Condition:
    """Illumination and weather of one condition; ranges are drawn per sequence."""

    sun: float  # direct irradiance on a surface facing the sun
    ambient: tuple[float, float]  # sky irradiance on an upward surface, drawn log-uniformly
    sky_horizon: tuple[float, float, float]  # sky radiance, scaled by ambient / ambient_ref
    sky_zenith: tuple[float, float, float]
    night: bool = False  # street lamps, lit windows, car lights and the ego's low beams are on
    visibility_m: tuple[float, float] | None = None  # meteorological visibility; None: clear
    patchiness: float = 0.0  # relative amplitude of the fog density's spatial variation
    rain: bool = False
    road_albedo_scale: float = 1.0  # wet asphalt is darker
    lidar_dropout: float = 0.01
    lidar_noise_m: float = 0.02
    precipitation_returns: float = 0.0  # rain: fraction of pulses returned by drops
    ambient_ref: float = 1.0  # the ambient the sky colours belong to


CONDITION_TABLE: dict[str, Condition] = {
    "sun": Condition(0.8, (0.15, 0.3), (0.62, 0.70, 0.80), (0.25, 0.40, 0.75), ambient_ref=0.22),
    "cloud": Condition(0.0, (0.12, 0.4), (0.34, 0.35, 0.37), (0.28, 0.29, 0.31), ambient_ref=0.3),
    "fog": Condition(0.03, (0.12, 0.3), (0.30, 0.30, 0.31), (0.30, 0.30, 0.31), visibility_m=(20.0, 60.0),
                     patchiness=0.5, lidar_dropout=0.02, ambient_ref=0.2),
    "rain": Condition(0.0, (0.04, 0.12), (0.12, 0.125, 0.13), (0.10, 0.105, 0.11), visibility_m=(300.0, 1500.0),
                      rain=True, road_albedo_scale=0.55, lidar_dropout=0.1, lidar_noise_m=0.05,
                      precipitation_returns=0.02, ambient_ref=0.08),
    # Moonless: 0.01-0.3 lux of sky glow; a city sky glows orange-grey.
    "night": Condition(0.0, (1e-7, 3e-6), (0.8, 0.7, 0.6), (0.5, 0.5, 0.6), night=True),
    "night_fog": Condition(0.0, (1e-7, 3e-6), (0.8, 0.7, 0.6), (0.8, 0.7, 0.6), night=True,
                           visibility_m=(20.0, 60.0), patchiness=0.5, lidar_dropout=0.02),
}


@dataclass(frozen=True)
class Weather:
    """One sequence's draw of its condition."""

    condition: Condition
    ambient: float
    sun_direction: np.ndarray  # unit vector towards the sun (world)
    visibility_m: float
    patchiness: float

    @property
    def extinction(self) -> float:
        return extinction_from_visibility(self.visibility_m)

    @property
    def sky_scale(self) -> float:
        return self.ambient / self.condition.ambient_ref


def draw_weather(condition: Condition, rng: np.random.Generator, visibility_m: float | None = None,
                 patchiness: float | None = None) -> Weather:
    lo, hi = condition.ambient
    ambient = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    azimuth, elevation = rng.uniform(-np.pi, np.pi), rng.uniform(np.radians(15), np.radians(60))
    sun = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    if visibility_m is None:
        visibility_m = float(rng.uniform(*condition.visibility_m)) if condition.visibility_m else CLEAR_VISIBILITY_M
    if patchiness is None:
        patchiness = condition.patchiness
    return Weather(condition, ambient, sun, float(visibility_m), float(patchiness))


# --------------------------------------------------------------------------------------------
# Fog


FOG_SAMPLES_M = np.array([0.0, 1, 2, 4, 7, 11, 16, 23, 32, 45, 64, 90, 128, 180, 256, 400])
"""Distances along a ray where the optical depth is integrated (trapezoids between them)."""
FOG_LATTICE_M = 20.0
FOG_EXTENT_M = 1000.0


class FogMedium:
    """Extinction coefficient beta(x, y) = mean * m(x, y): m is value noise with mean 1 and
    relative amplitude `patchiness`, fixed in the world so every sensor and frame sees the same
    patches. Optical depth tau(d) = integral of beta along a ray; transmittance exp(-tau)."""

    def __init__(self, extinction: float, patchiness: float, seed: int):
        self.mean = float(extinction)
        self.patchiness = float(patchiness)
        # The lattice's random values, drawn once for a square of FOG_EXTENT_M around the world
        # origin (clamped beyond): far cheaper than hashing four corners at every sample.
        cells = int(2 * FOG_EXTENT_M / FOG_LATTICE_M) + 2
        ix, iy = np.meshgrid(np.arange(cells) - cells // 2, np.arange(cells) - cells // 2, indexing="ij")
        self.lattice = hash01(ix, iy, np.zeros_like(ix), seed).astype(np.float64)

    def beta(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.patchiness == 0.0:
            return np.full(np.shape(x), self.mean)
        half = self.lattice.shape[0] // 2
        limit = self.lattice.shape[0] - 1.001
        gx = np.clip(np.asarray(x) / FOG_LATTICE_M + half, 0.0, limit)
        gy = np.clip(np.asarray(y) / FOG_LATTICE_M + half, 0.0, limit)
        ix, iy = gx.astype(np.intp), gy.astype(np.intp)
        fx, fy = gx - ix, gy - iy
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        v = self.lattice
        noise = (v[ix, iy] * (1 - fx) + v[ix + 1, iy] * fx) * (1 - fy) + (v[ix, iy + 1] * (1 - fx) + v[ix + 1, iy + 1] * fx) * fy
        return self.mean * np.maximum(1.0 + 2.0 * self.patchiness * (noise - 0.5) * 1.6, 0.1)

    def optical_depth_table(self, origin: np.ndarray, unit_dirs: np.ndarray) -> np.ndarray:
        """[R, J] optical depth from `origin` to FOG_SAMPLES_M along each unit direction."""
        if self.patchiness == 0.0:
            return np.broadcast_to(self.mean * FOG_SAMPLES_M, (unit_dirs.shape[0], FOG_SAMPLES_M.size))
        px = origin[0] + unit_dirs[:, 0:1] * FOG_SAMPLES_M
        py = origin[1] + unit_dirs[:, 1:2] * FOG_SAMPLES_M
        beta = self.beta(px, py)
        steps = np.diff(FOG_SAMPLES_M)
        return np.concatenate([np.zeros((beta.shape[0], 1)),
                               np.cumsum(0.5 * (beta[:, 1:] + beta[:, :-1]) * steps, axis=1)], axis=1)

    def optical_depth(self, table: np.ndarray, distance: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Optical depth at each ray's own distance: linear in the table row `rows[i]` (default i),
        the mean extinction beyond its last sample; inf distance gives inf."""
        tau = along_ray(table, distance, rows)
        beyond = np.maximum(np.where(np.isfinite(distance), distance, 0.0) - FOG_SAMPLES_M[-1], 0.0)
        return np.where(np.isfinite(distance), tau + self.mean * beyond, np.inf)


def along_ray(table: np.ndarray, distance: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Values of a per-ray table sampled at FOG_SAMPLES_M ([R, J] or [R, J, C]) at each ray's
    distance, linearly interpolated (held at the last sample beyond it)."""
    d = np.where(np.isfinite(distance), distance, FOG_SAMPLES_M[-1]).astype(np.float64)
    rows = np.arange(d.size) if rows is None else rows
    j = np.clip(np.searchsorted(FOG_SAMPLES_M, d, side="right") - 1, 0, FOG_SAMPLES_M.size - 2)
    d0, d1 = FOG_SAMPLES_M[j], FOG_SAMPLES_M[j + 1]
    f = np.clip((d - d0) / (d1 - d0), 0.0, 1.0)
    lo, hi = table[rows, j], table[rows, j + 1]
    if table.ndim == 3:
        f = f[:, None]
    return lo + (hi - lo) * f


def henyey_greenstein(cos_theta: np.ndarray, g: float = 0.8) -> np.ndarray:
    """Phase function of fog droplets (per steradian): strongly forward-peaked."""
    return (1 - g * g) / (4 * np.pi * (1 + g * g - 2 * g * cos_theta) ** 1.5)


# --------------------------------------------------------------------------------------------
# Lights

LAMP_INTENSITY = 1500.0 / LUX_PER_UNIT  # 1500 cd straight down: ~30 lux 7 m below
HEADLAMP_INTENSITY = 10000.0 / LUX_PER_UNIT  # 10 000 cd in the low beam's hot spot (ECE R112: >= 12 lux at 25 m)
HEADLAMPS_IN_EGO = np.array([[2.2, 0.7, 0.7], [2.2, -0.7, 0.7]])


def lamp_intensity(cos_down: np.ndarray) -> np.ndarray:
    """Relative luminous intensity of a street lamp towards a direction cos_down below horizontal:
    broad downward lobe, nothing above the horizontal (full cut-off luminaire)."""
    return LAMP_INTENSITY * np.clip(cos_down, 0.0, 1.0) ** 0.6 * (cos_down > 0.05)


def headlamp_intensity(forward: np.ndarray, lateral: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Low beam in the ego frame (x forward, y left, z up), both lamps together at one point: a
    hot spot just below the horizon and right of centre, a wide spread for the foreground, and a
    sharp cut-off above the horizon (a few per cent stray light)."""
    horizontal = np.hypot(forward, lateral)
    az = np.arctan2(lateral, np.maximum(forward, 1e-6))
    el = np.arctan2(up, horizontal)
    lobe = np.exp(-((az + 0.04) / 0.22) ** 2) + 0.25 * np.exp(-(az / 0.7) ** 2)
    vertical = np.where(el < -0.01, np.exp(-((el + 0.02) / 0.12) ** 2), 0.03 + 0.97 * np.exp(-((el + 0.01) / 0.004) ** 2))
    return 2 * HEADLAMP_INTENSITY * lobe * vertical * (forward > 0)


LIGHT_REACH_M = 45.0
"""Street lamps light surfaces within this distance (beyond it, < 1 lux)."""


def _near_lamps(lamps: np.ndarray, centre: np.ndarray, reach: float) -> np.ndarray:
    return lamps[np.linalg.norm(lamps[:, :2] - centre[:2], axis=1) < reach].astype(np.float32)


def night_irradiance(points: np.ndarray, normals: np.ndarray, lamps: np.ndarray, lamp_color: np.ndarray,
                     headlamp: np.ndarray, ego_rotation: np.ndarray, extinction: float) -> np.ndarray:
    """[R, 3] irradiance from street lamps and the ego's low beams on surface points (inverse
    square, incidence cosine, fog extinction on the way; no shadows)."""
    q, nq = points.astype(np.float32), normals.astype(np.float32)
    acc = np.zeros(q.shape[0], np.float32)
    order = np.argsort(q[:, 0], kind="stable")  # each lamp then touches only its slab of x
    xs = q[order, 0]
    for lamp in _near_lamps(lamps, headlamp, 120.0):
        lo, hi = np.searchsorted(xs, [lamp[0] - LIGHT_REACH_M, lamp[0] + LIGHT_REACH_M])
        idx = order[lo:hi]
        v = lamp - q[idx]
        d2 = np.maximum(np.einsum("ij,ij->i", v, v), 0.25)
        inv_d = 1.0 / np.sqrt(d2)
        cos_n = np.maximum(np.einsum("ij,ij->i", nq[idx], v), 0.0) * inv_d
        acc[idx] += lamp_intensity(v[:, 2] * inv_d) * cos_n / d2 * np.exp(-extinction / inv_d)
    out = acc[:, None] * lamp_color.astype(np.float32)
    v = q - headlamp.astype(np.float32)
    d2 = np.maximum(np.einsum("ij,ij->i", v, v), 0.25)
    inv_d = 1.0 / np.sqrt(d2)
    local = v @ ego_rotation.astype(np.float32)  # world -> ego axes
    cos_n = np.maximum(-np.einsum("ij,ij->i", nq, v), 0.0) * inv_d
    head = headlamp_intensity(local[:, 0], local[:, 1], local[:, 2]) * cos_n / d2 * np.exp(-extinction / inv_d)
    out += head[:, None].astype(np.float32) * np.float32(0.97)
    return out


def night_inscatter(origin: np.ndarray, unit_dirs: np.ndarray, medium: FogMedium, tau_table: np.ndarray,
                    lamps: np.ndarray, lamp_color: np.ndarray, headlamp: np.ndarray,
                    ego_rotation: np.ndarray) -> np.ndarray:
    """[R, J, 3] radiance scattered towards the camera by fog lit by lamps and headlights,
    accumulated from the camera to each of FOG_SAMPLES_M along each ray (single scattering,
    Henyey-Greenstein droplets)."""
    mid = (0.5 * (FOG_SAMPLES_M[1:] + FOG_SAMPLES_M[:-1])).astype(np.float32)
    step = np.diff(FOG_SAMPLES_M).astype(np.float32)
    dirs = unit_dirs.astype(np.float32)
    p = origin.astype(np.float32) + dirs[:, None, :] * mid[None, :, None]  # [R, J-1, 3]
    beta = medium.beta(p[..., 0], p[..., 1]).astype(np.float32)
    view_tau = (0.5 * (tau_table[:, 1:] + tau_table[:, :-1])).astype(np.float32)
    weight = beta * np.exp(-view_tau) * step  # [R, J-1]
    lamp_light = np.zeros(p.shape[:2], np.float32)
    for lamp in _near_lamps(lamps, headlamp, 120.0):
        v = p - lamp
        d = np.maximum(np.linalg.norm(v, axis=-1), 0.5)
        cos_scatter = -np.einsum("rjc,rc->rj", v, dirs) / d
        lamp_light += lamp_intensity(-v[..., 2] / d) / d**2 * np.exp(-medium.mean * d) * henyey_greenstein(cos_scatter)
    v = p - headlamp.astype(np.float32)
    d = np.maximum(np.linalg.norm(v, axis=-1), 0.5)
    local = v @ ego_rotation.astype(np.float32)
    cos_scatter = -np.einsum("rjc,rc->rj", v, dirs) / d
    head = headlamp_intensity(local[..., 0], local[..., 1], local[..., 2]) / d**2 * np.exp(-medium.mean * d)
    head = head * henyey_greenstein(cos_scatter) * np.float32(0.97)
    radiance = lamp_light[..., None] * lamp_color.astype(np.float32) + head[..., None]
    cumulative = np.cumsum(radiance * weight[..., None], axis=1)
    return np.concatenate([np.zeros((p.shape[0], 1, 3), np.float32), cumulative], axis=1)


# --------------------------------------------------------------------------------------------
# Camera


@dataclass(frozen=True)
class CameraSensor:
    """A 2-3 um automotive CMOS pixel behind an f/1.8 lens, 8-bit sRGB-like output."""

    electrons_per_unit_s: float = 1.0e7  # photoelectrons per second per pixel at radiance 1
    full_well: float = 10_000.0
    read_noise: float = 2.5  # electrons rms
    dark_current: float = 60.0  # electrons per second
    max_gain: float = 32.0  # analogue gain: full scale = full_well / gain electrons
    min_exposure_s: float = 2e-5
    max_exposure_s: float = 0.04  # night: long exposures, and motion blur
    target: float = 0.15  # auto exposure: mean signal at this fraction of full scale
    glare_fraction: float = 0.015  # light the lens scatters into its veiling-glare halo
    bloom_fraction: float = 0.05

    def auto_exposure(self, luma: np.ndarray) -> tuple[float, float]:
        """(exposure s, gain): the mean signal (brightest 2 % excluded, so lamps and the sun do not
        run the exposure) at `target` of full scale; exposure first, then gain."""
        cut = np.percentile(luma[::4, ::4], 98)
        mean = float(np.mean(np.minimum(luma[::4, ::4], cut))) + 1e-12
        needed = self.target * self.full_well / (mean * self.electrons_per_unit_s)  # exposure x gain
        exposure = float(np.clip(needed, self.min_exposure_s, self.max_exposure_s))
        gain = float(np.clip(needed / exposure, 1.0, self.max_gain))
        return exposure, gain

    def develop(self, radiance: np.ndarray, exposure: float, gain: float, rng: np.random.Generator,
                depth: np.ndarray | None = None, focus: tuple[float, float] | None = None, travel_m: float = 0.0,
                halo_source: np.ndarray | None = None, halo_sigma_px: float = 8.0) -> np.ndarray:
        """Linear radiance [H, W, 3] -> uint8 image: optics (glare, fog halos), the car's motion of
        `travel_m` during the exposure, Poisson photon and dark-current noise, blooming, read
        noise, gain, 8 bits."""
        scale = np.float32(self.electrons_per_unit_s * exposure)
        signal = radiance.astype(np.float32) * scale
        signal = signal * np.float32(1 - self.glare_fraction) + veiling_glare(signal) * np.float32(self.glare_fraction)
        if halo_source is not None:
            signal += fog_halo(halo_source.astype(np.float32) * scale, halo_sigma_px)
        if depth is not None and focus is not None and blur_pixels(depth, focus, travel_m) > 0.5:
            signal = zoom_blur(signal, depth, focus, travel_m)
        dark = self.dark_current * exposure
        electrons = photon_counts(signal + np.float32(dark), rng)
        electrons = bloom(electrons, self.full_well, self.bloom_fraction)
        electrons += rng.standard_normal(electrons.shape, np.float32) * np.float32(self.read_noise)
        linear = (electrons - np.float32(dark)) * np.float32(gain / self.full_well)
        return (np.clip(linear, 0.0, 1.0) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8)


def photon_counts(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson draws; a normal approximation above 50 electrons (same mean and variance, much
    faster), exact Poisson below where the counts are few and the difference matters."""
    out = mean + np.sqrt(np.maximum(mean, 0)) * rng.standard_normal(mean.shape, np.float32)
    low = mean < 50
    if low.any():
        out[low] = rng.poisson(mean[low]).astype(np.float32)
    return out


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.pad(image, ((0, hh - h), (0, ww - w), (0, 0)), mode="edge")
    return padded.reshape(hh // factor, factor, ww // factor, factor, -1).mean(axis=(1, 3))


def _upsample(image: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def _convolve_fft(image: np.ndarray, kernel_fn) -> np.ndarray:
    """Linear (not circular) convolution of [h, w, C] with a radial kernel kernel_fn(r2) given on
    the same grid, normalised to sum 1."""
    h, w = image.shape[:2]
    fh, fw = 2 * h, 2 * w
    yy = np.fft.fftfreq(fh) * fh
    xx = np.fft.fftfreq(fw) * fw
    kernel = kernel_fn(yy[:, None] ** 2 + xx[None, :] ** 2)
    kernel /= kernel.sum()
    spectrum = np.fft.rfft2(kernel)
    out = np.fft.irfft2(np.fft.rfft2(image, s=(fh, fw), axes=(0, 1)) * spectrum[..., None], s=(fh, fw), axes=(0, 1))
    return np.maximum(out[:h, :w], 0.0).astype(np.float32)


GLARE_FACTOR = 4  # the halos are computed on a 4x coarser grid: they are smooth far from the core


def veiling_glare(signal: np.ndarray) -> np.ndarray:
    """Light the lens scatters: `signal` spread by a 1 / (r^2 + r0^2)^1.5 point-spread halo (the
    heavy-tailed shape measured for camera lenses), normalised to keep the energy."""
    r0 = 2.0 / GLARE_FACTOR
    small = _downsample(signal, GLARE_FACTOR)
    return _upsample(_convolve_fft(small, lambda r2: (r2 + r0 * r0) ** -1.5), GLARE_FACTOR, signal.shape)


def fog_halo(source: np.ndarray, sigma_px: float) -> np.ndarray:
    """Light of sources that fog droplets scattered out of the direct path, seen as a glow of
    `sigma_px` around them (energy kept)."""
    sigma2 = max(sigma_px / GLARE_FACTOR, 0.5) ** 2
    small = _downsample(source, GLARE_FACTOR)
    return _upsample(_convolve_fft(small, lambda r2: np.exp(-0.5 * r2 / sigma2)), GLARE_FACTOR, source.shape)


def bloom(electrons: np.ndarray, full_well: float, fraction: float) -> np.ndarray:
    """Charge beyond the full well spills into the neighbouring pixels (mostly along columns);
    anti-blooming drains most of it, so the spill is capped."""
    excess = np.minimum(np.maximum(electrons - full_well, 0.0), 50 * full_well)
    if not excess.any():
        return electrons
    spill = excess * np.float32(fraction / 6)
    spread = np.zeros_like(spill)
    for dy, dx, w in ((1, 0, 2), (-1, 0, 2), (0, 1, 1), (0, -1, 1)):
        spread += np.roll(spill, (dy, dx), axis=(0, 1)) * np.float32(w)
    return np.minimum(electrons, full_well) + spread


def blur_pixels(depth: np.ndarray, focus: tuple[float, float], travel_m: float) -> float:
    """Largest smear of the zoom blur in pixels (nearest surface, farthest corner from the focus)."""
    h, w = depth.shape
    valid = depth[depth > 0]
    if valid.size == 0:
        return 0.0
    reach = max(np.hypot(max(focus[0], w - focus[0]), max(focus[1], h - focus[1])), 1.0)
    return float(min(travel_m / max(float(valid.min()), 0.5), 0.3) * reach)


def zoom_blur(signal: np.ndarray, depth: np.ndarray, focus: tuple[float, float], travel_m: float,
              samples: int = 6) -> np.ndarray:
    """Forward motion of `travel_m` during the exposure: a point at depth Z moves radially from
    the focus of expansion by a fraction travel/Z of its distance to it; averaged over the
    exposure (`samples` steps). Sky (depth 0) counts as infinitely far."""
    h, w = signal.shape[:2]
    fu, fv = focus
    rate = np.where(depth > 0, travel_m / np.maximum(depth, 0.5), 0.0).astype(np.float32)
    rate = np.minimum(rate, 0.3)
    u = np.arange(w, dtype=np.float32)[None, :] - np.float32(fu)
    v = np.arange(h, dtype=np.float32)[:, None] - np.float32(fv)
    acc = np.zeros_like(signal)
    for k in range(samples):
        s = 1.0 - rate * np.float32(k / max(samples - 1, 1))
        cols = np.clip(np.rint(fu + u * s), 0, w - 1).astype(np.intp)
        rows = np.clip(np.rint(fv + v * s), 0, h - 1).astype(np.intp)
        acc += signal[rows, cols]
    return acc / np.float32(samples)


# --------------------------------------------------------------------------------------------
# Active sensors


@dataclass(frozen=True)
class TofSensor:
    """Indirect time-of-flight flash camera, 940 nm, dual-frequency (unambiguous to 50 m)."""

    signal_at_1m: float = 1.0e6  # electrons from a reflectivity-1 surface facing it at 1 m
    sunlight_electrons: float = 1.0e4  # ambient electrons per unit irradiance x reflectivity
    read_noise: float = 10.0
    snr_min: float = 4.0
    saturation: float = 3.0e5
    max_range_m: float = 50.0
    noise_scale_m: float = 6.75  # range noise = noise_scale * sqrt(total electrons) / signal
    backscatter: float = 1.5e-3  # fog return per unit extinction (1/m) relative to signal_at_1m
    backscatter_range_m: float = 1.5


def tof_depth(range_m: np.ndarray, axis_over_range: np.ndarray, reflectivity: np.ndarray, cos_incidence: np.ndarray,
              ambient: np.ndarray, tau: np.ndarray, extinction_near: float, rng: np.random.Generator,
              sensor: TofSensor = TofSensor()) -> np.ndarray:
    """Measured depth along the optical axis (float32, 0 = no measurement) for surfaces at
    `range_m` (inf: nothing), from the physics in the module docstring."""
    f32 = np.float32
    finite = np.isfinite(range_m)
    r = np.where(finite, range_m, f32(1.0)).astype(f32)
    signal = (f32(sensor.signal_at_1m) * reflectivity * np.maximum(cos_incidence, f32(0.02)) / (r * r)
              * np.exp(f32(-2) * np.where(finite, tau, f32(0.0))) * finite)
    ambient_e = f32(sensor.sunlight_electrons) * reflectivity * ambient
    fog = f32(sensor.signal_at_1m * sensor.backscatter * extinction_near)
    # Phasors of the surface and of the fog right in front of the lens (dual-frequency unwrapped).
    phase = r * f32(2 * np.pi / sensor.max_range_m)
    phase_fog = 2 * np.pi * sensor.backscatter_range_m / sensor.max_range_m
    re = signal * np.cos(phase) + f32(fog * np.cos(phase_fog))
    im = signal * np.sin(phase) + f32(fog * np.sin(phase_fog))
    amplitude = np.hypot(re, im)
    total = signal + fog + ambient_e + f32(sensor.read_noise**2)
    noise = f32(sensor.noise_scale_m) * np.sqrt(total) / np.maximum(amplitude, f32(1e-9))
    measured = np.mod(np.arctan2(im, re), f32(2 * np.pi)) * f32(sensor.max_range_m / (2 * np.pi))
    measured += rng.standard_normal(measured.shape, f32) * noise
    valid = (amplitude > f32(sensor.snr_min) * np.sqrt(total)) & (signal + fog + ambient_e < sensor.saturation) & (
        measured > 0.1) & (measured < sensor.max_range_m)
    return np.where(valid, measured * axis_over_range, 0.0).astype(np.float32)


@dataclass(frozen=True)
class LidarSensor:
    """905 nm time-of-flight scanner reporting the strongest return per pulse."""

    threshold: float = 0.004  # detectable power (reflectivity-1 target facing it at 40 m gives 1)
    reference_range_m: float = 40.0
    fog_return: float = 0.029  # mean fog-volume return power per unit extinction (1/m)


def lidar_returns(range_m: np.ndarray, reflectivity: np.ndarray, cos_incidence: np.ndarray, tau: np.ndarray,
                  extinction_near: float, rng: np.random.Generator, sensor: LidarSensor = LidarSensor()):
    """(detected target mask, fog return mask, fog return range) per pulse. The target's power
    falls with range squared beyond the reference range and with two-way extinction; the fog in
    front of the sensor returns a speckled (exponentially distributed) power whose mean grows with
    the extinction, and wins when it is the stronger return."""
    finite = np.isfinite(range_m)
    r = np.where(finite, range_m, 1.0)
    power = reflectivity * np.maximum(cos_incidence, 0.05) * np.minimum((sensor.reference_range_m / r) ** 2, 1.0)
    power = power * np.exp(-2 * np.where(finite, tau, 0.0)) * finite
    fog_power = sensor.fog_return * extinction_near * rng.exponential(1.0, range_m.shape)
    fog = (fog_power > sensor.threshold) & (fog_power > power)
    target = (power > sensor.threshold) & ~fog
    fog_range = 0.8 + rng.exponential(1.0 / (3 * max(extinction_near, 1e-3)), range_m.shape)
    fog &= fog_range < np.where(finite, r, np.inf)
    return target, fog, fog_range, power


# --------------------------------------------------------------------------------------------
# Events

EVENT_DARK_RADIANCE = 2e-5
"""Dark current of an event pixel as an equivalent radiance: the log-intensity floor."""


def event_noise_rate(radiance: np.ndarray) -> np.ndarray:
    """Background events per pixel per second: leak events plus shot-noise events that dominate
    once the photocurrent falls to the dark current's level."""
    return 0.05 + 2.0 * EVENT_DARK_RADIANCE / (radiance + EVENT_DARK_RADIANCE)
