"""Ray casting for the synthetic generator: yaw-rotated boxes, spheres and the street surface.

Every ray is tested only against the primitives whose screen-space (or azimuth/elevation)
rectangle covers it: candidate (ray, primitive) pairs are built with index arithmetic, tested
all at once, and the nearest hit wins. The street surface is analytic: terrain made of planes
along world x, the carriageway at terrain level and everything else raised by the curb height,
with the curb's vertical face where a ray passes from one level to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_mmseg_ros.data.street import StreetLayout
from sam_mmseg_ros.sensors.camera import CameraModel

NONE, GROUND, BOX, SPHERE = 0, 1, 2, 3
_CORNERS = np.stack(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij"), -1).reshape(8, 3).astype(np.float64)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


@dataclass
class Hits:
    t: np.ndarray  # [R] distance along the (unnormalized) ray, inf = nothing
    kind: np.ndarray  # [R] NONE, GROUND, BOX, SPHERE
    index: np.ndarray  # [R] primitive index
    normal: np.ndarray  # [R, 3] world frame
    road_s: np.ndarray  # [R] road coordinates of ground hits (0 elsewhere)
    road_n: np.ndarray


def box_corners(centre: np.ndarray, half: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """[N, 8, 3] world corners of yaw-rotated boxes."""
    local = _CORNERS[None] * half[:, None, :]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return centre[:, None, :] + np.stack([x, y, local[..., 2]], -1)


def sphere_corners(centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
    return centre[:, None, :] + _CORNERS[None] * radius[:, None, None]


def camera_rects(corners: np.ndarray, cam_pos: np.ndarray, R_world_optical: np.ndarray, camera: CameraModel,
                 max_t: float, near: float = 0.05):
    """Inclusive image rectangles (r0, r1, c0, c1) covering convex solids given by their 8
    corners, clipped exactly to the near plane (the corners in front plus where the edges cross
    it); empty (r1 = -1) for solids behind the camera or beyond max_t."""
    opt = (corners - cam_pos) @ R_world_optical
    z = opt[..., 2]
    za, zb = z[:, _EDGES[:, 0]], z[:, _EDGES[:, 1]]
    crosses = (za - near) * (zb - near) < 0
    f = (near - za) / np.where(crosses, zb - za, 1.0)
    pa, pb = opt[:, _EDGES[:, 0]], opt[:, _EDGES[:, 1]]
    points = np.concatenate([opt, pa + f[..., None] * (pb - pa)], axis=1)
    valid = np.concatenate([z >= near, crosses], axis=1)
    depth = np.maximum(points[..., 2], near)
    u = camera.fx * points[..., 0] / depth + camera.cx
    v = camera.fy * points[..., 1] / depth + camera.cy
    inf = np.inf
    c0 = np.clip(np.floor(np.where(valid, u, inf).min(1)), 0, camera.width)
    c1 = np.clip(np.ceil(np.where(valid, u, -inf).max(1)), -1, camera.width - 1)
    r0 = np.clip(np.floor(np.where(valid, v, inf).min(1)), 0, camera.height)
    r1 = np.clip(np.ceil(np.where(valid, v, -inf).max(1)), -1, camera.height - 1)
    visible = valid.any(1) & (np.where(valid, depth, inf).min(1) < max_t)
    r1 = np.where(visible, r1, -1)
    return r0.astype(np.int64), r1.astype(np.int64), c0.astype(np.int64), c1.astype(np.int64)


def lidar_rects(corners_lidar: np.ndarray, elevations: np.ndarray, n_cols: int, max_t: float):
    """(beam, azimuth column) rectangles covering solids given by corners in the LiDAR frame.

    Bounds of the corners' axis-aligned box: azimuth extremes lie on its footprint corners;
    elevation extremes use its nearest and farthest horizontal distance (conservative).
    """
    rel_lo, rel_hi = corners_lidar.min(1), corners_lidar.max(1)
    nearest = np.maximum(np.maximum(rel_lo, -rel_hi), 0.0)
    d_min = np.hypot(nearest[:, 0], nearest[:, 1])
    d_max = np.hypot(np.maximum(np.abs(rel_lo[:, 0]), np.abs(rel_hi[:, 0])),
                     np.maximum(np.abs(rel_lo[:, 1]), np.abs(rel_hi[:, 1])))
    el_hi = np.arctan2(rel_hi[:, 2], np.where(rel_hi[:, 2] > 0, d_min, d_max))
    el_lo = np.arctan2(rel_lo[:, 2], np.where(rel_lo[:, 2] > 0, d_max, d_min))
    r0 = np.clip(np.searchsorted(elevations, el_lo) - 1, 0, elevations.size)
    r1 = np.clip(np.searchsorted(elevations, el_hi), -1, elevations.size - 1)
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


def _ground(layout: StreetLayout, origin: np.ndarray, dirs: np.ndarray, max_t: float):
    """First hit of each ray with the street surface: (t, normal [R, 3], s, n)."""
    start, end, slope, offset = layout.terrain_pieces()
    ox, oy, oz = origin
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]

    def level(lift: float):
        best = np.full(dirs.shape[0], np.inf)
        piece = np.zeros(dirs.shape[0], np.int64)
        for k in range(slope.size):
            denom = dz - slope[k] * dx
            down = denom < -1e-12
            t = (slope[k] * ox + offset[k] + lift - oz) / np.where(down, denom, -1.0)
            x = ox + t * dx
            ok = down & (t > 1e-6) & (t < max_t) & (x >= start[k]) & (x < end[k]) & (t < best)
            best = np.where(ok, t, best)
            piece = np.where(ok, k, piece)
        return best, piece

    t_top, piece_top = level(layout.curb_height)
    t_road, piece_road = level(0.0)
    s1, n1 = layout.to_road(ox + t_top * dx, oy + t_top * dy)
    s0, n0 = layout.to_road(ox + t_road * dx, oy + t_road * dy)
    in1, _ = layout.carriageway_distance(s1, n1)
    in0, _ = layout.carriageway_distance(s0, n0)
    finite1, finite0 = np.isfinite(t_top), np.isfinite(t_road)
    top = finite1 & (in1 <= 0)
    road = ~top & finite0 & (in0 > 0)
    curb = ~top & ~road & finite1 & finite0
    t = np.where(top, t_top, np.where(road, t_road, np.inf))
    piece = np.where(top, piece_top, piece_road)
    normal = np.stack([-slope[piece], np.zeros_like(t), np.ones_like(t)], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    s = np.where(top, s1, s0)
    n = np.where(top, n1, n0)
    if curb.any():
        # The ray passed from above the carriageway to below the raised level: it met the curb.
        d1, d0 = in1[curb], in0[curb]
        frac = d1 / np.where(d1 - d0 > 1e-9, d1 - d0, 1e-9)
        tc = t_top[curb] + (t_road[curb] - t_top[curb]) * np.clip(frac, 0.0, 1.0)
        t[curb] = tc
        sc, nc = layout.to_road(ox + tc * dx[curb], oy + tc * dy[curb])
        _, side_street = layout.carriageway_distance(sc, nc)
        heading = layout.heading(sc)
        along = np.stack([np.cos(heading), np.sin(heading)], 1)
        left = np.stack([-np.sin(heading), np.cos(heading)], 1)
        # Horizontal, facing the carriageway.
        face = np.where(side_street[:, None], -np.sign(sc - layout.crossing_s)[:, None] * along,
                        -np.sign(nc)[:, None] * left)
        normal[curb] = np.concatenate([face, np.zeros((face.shape[0], 1))], 1)
        s[curb], n[curb] = sc, np.sign(nc) * np.maximum(np.abs(nc), layout.half_width + 1e-3)
    return t, normal, s, n


def cast(origin, dirs, layout: StreetLayout, boxes, box_rect, spheres, sph_rect, n_cols: int, max_t: float) -> Hits:
    """Nearest hit of rays from one origin against the street surface, boxes and spheres.

    boxes: (centre [N, 3], half [N, 3], yaw [N]); spheres: (centre [S, 3], radius [S]);
    `*_rect` are (r0, r1, c0, c1) candidate rectangles on the ray grid with n_cols columns.
    """
    n = dirs.shape[0]
    t, ground_normal, road_s, road_n = _ground(layout, origin, dirs, max_t)
    kind = np.where(np.isfinite(t), GROUND, NONE).astype(np.int8)
    index = np.zeros(n, np.int64)

    centre, half, yaw = boxes
    ray_b, prim_b = _pairs(*box_rect, n_cols)
    f32 = np.float32
    cos, sin = np.cos(yaw), np.sin(yaw)
    rel = origin - centre  # the origin in every box's frame
    local_origin = np.stack([cos * rel[:, 0] + sin * rel[:, 1], -sin * rel[:, 0] + cos * rel[:, 1], rel[:, 2]])
    # Slab test in each box's frame, one axis at a time on flat float32 arrays (the pairs are
    # the hot loop of the whole generator).
    dx, dy = dirs[ray_b, 0].astype(f32), dirs[ray_b, 1].astype(f32)
    cp, sp = cos[prim_b].astype(f32), sin[prim_b].astype(f32)
    local_dirs = (cp * dx + sp * dy, cp * dy - sp * dx, dirs[ray_b, 2].astype(f32))
    tmins, tmaxs = [], []
    for axis in range(3):
        dl = local_dirs[axis]
        inv = f32(1.0) / np.where(dl == 0, f32(1e-12), dl)
        o = local_origin[axis, prim_b].astype(f32)
        h = half[prim_b, axis].astype(f32)
        ta = (-h - o) * inv
        tb = (h - o) * inv
        tmins.append(np.minimum(ta, tb))
        tmaxs.append(np.maximum(ta, tb))
    tnear = np.maximum(np.maximum(tmins[0], tmins[1]), tmins[2])
    tfar = np.minimum(np.minimum(tmaxs[0], tmaxs[1]), tmaxs[2])
    hit_b = (tnear <= tfar) & (tnear > 1e-5) & (tnear < max_t)
    ray_b, prim_b, tnear = ray_b[hit_b], prim_b[hit_b], tnear[hit_b].astype(np.float64)
    axis_b = np.where(tmins[0][hit_b] == tnear, 0, np.where(tmins[1][hit_b] == tnear, 1, 2))
    sign_b = -np.sign(np.choose(axis_b, [d[hit_b] for d in local_dirs]))

    sph_centre, radius = spheres
    ray_s, prim_s = _pairs(*sph_rect, n_cols)
    d = dirs[ray_s]
    oc = origin - sph_centre[prim_s]
    a = np.einsum("ij,ij->i", d, d)
    bh = np.einsum("ij,ij->i", d, oc)
    disc = bh * bh - a * (np.einsum("ij,ij->i", oc, oc) - radius[prim_s] ** 2)
    ts = (-bh - np.sqrt(np.maximum(disc, 0.0))) / a
    hit_s = (disc > 0) & (ts > 1e-6) & (ts < max_t)
    ray_s, prim_s, ts = ray_s[hit_s], prim_s[hit_s], ts[hit_s]

    np.minimum.at(t, np.concatenate([ray_b, ray_s]), np.concatenate([tnear, ts]))
    win_b = tnear <= t[ray_b]
    kind[ray_b[win_b]] = BOX
    index[ray_b[win_b]] = prim_b[win_b]
    win_s = ts <= t[ray_s]
    kind[ray_s[win_s]] = SPHERE
    index[ray_s[win_s]] = prim_s[win_s]

    normal = np.where((kind == GROUND)[:, None], ground_normal, 0.0)
    rb, ab, sb, pb = ray_b[win_b], axis_b[win_b], sign_b[win_b], prim_b[win_b]
    c, s = cos[pb], sin[pb]
    normal[rb] = np.where((ab == 0)[:, None], np.stack([c, s, 0 * c], 1),
                          np.where((ab == 1)[:, None], np.stack([-s, c, 0 * c], 1),
                                   np.stack([0 * c, 0 * c, 1 + 0 * c], 1))) * sb[:, None]
    rs = ray_s[win_s]
    p = origin + dirs[rs] * t[rs, None]
    normal[rs] = (p - sph_centre[prim_s[win_s]]) / radius[prim_s[win_s], None]
    return Hits(t, kind, index, normal, road_s, road_n)
