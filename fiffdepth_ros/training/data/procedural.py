"""Procedural RGB-D training frames with exact depth, ray cast analytically in numpy.

Every frame is a pure function of ``(seed, domain, width, height)``: the same arguments give the
same bytes, any frame can be made alone, nothing is read from disk. A scene is one of

- ``room``: a convex box room (six inward planes) with furniture: cabinets, tables on thin legs,
  shelves, balls, pillars, bins, wall panels, poles and handrails;
- ``corridor``: a long narrow room with ceiling pipes, wall cabinets, pilasters, door panels and
  handrails on posts;
- ``outdoor``: a ground plane under the sky (no surface: depth inf) with buildings, trees (trunk
  and crown), street poles, fences (rails on posts), crates, cars and boulders;

seen by a pinhole camera with a random field of view (45-100 degrees), principal point, height,
yaw, pitch and roll. Surfaces are textured from a per-frame atlas of procedural tiles (checkers,
stripes, tiles/bricks, gradients, dots, spectral noise) and lit by ambient light plus one light
(the sun outdoors, a ceiling lamp indoors) with Lambert shading and cast shadows.

Depth is exact: the ray of pixel (u, v) has camera-frame direction ((u - cx)/fx, (v - cy)/fy, 1)
and its hit parameter along that direction *is* the z-depth (REP 117/118: metres, ``inf`` where
no surface). ``valid`` is ``isfinite(depth) & (depth <= MAX_VALID_DEPTH)``: the ground plane
runs to the horizon, and surfaces beyond 80 m are true but not used as targets.

Two image domains share the geometry generator but not the scenes (the domain is part of the
random stream) nor the look:

- ``synthetic``: clean renders, saturated colours, crisp pattern textures, hard shadows: the
  domain whose ground truth trains the t = 0 branch (and the teacher);
- ``real`` (real-like): muted material palettes (wood, plaster, concrete, brick), noise-based
  textures, soft shadows, white-balance casts, exposure and a filmic tone curve, vignetting,
  defocus or motion blur, signal-dependent sensor noise and JPEG artefacts. Its depth is still
  returned (for evaluation), but nothing that trains on this domain may read it: the teacher
  never sees it.

Seeds: ``TRAIN_SEEDS`` (0 .. 999 999) for training, ``HELD_OUT_SEEDS`` (1 000 000 .. 1 099 999)
for validation and benchmarks, never for training (``training_seeds`` rejects them).

How this differs from the demo's room (``fiffdepth_ros/demo/scene.py``), so the demo measures
generalisation: the demo is one fixed scene (fixed six planes and one box, fixed 70 degree camera
at the room's centre looking along +z, a hand-picked seven-colour palette, a 0.5 m world-space
checker and a distance fall-off instead of lighting). This is a different generator: random room
sizes and clutter, an atlas of random textures in surface coordinates, a light with Lambert
shading and shadows, random cameras. None of the demo's shading is in this module, so no seed
reproduces its images.

Disk layout written by ``write_frames`` (and the CLI), one folder per split::

    OUT/rgb/<seed>.png       8-bit RGB PNG
    OUT/depth/<seed>.png     16-bit PNG, millimetres, 0 = invalid   (depth_format='png16')
    OUT/depth/<seed>.npy     float32 metres, inf/NaN = invalid       (depth_format='npy')
    OUT/frames.txt           one line per frame: "rgb/<seed>.png depth/<seed>.png fx fy cx cy"
                             ("rgb/<seed>.png fx fy cx cy" with depth_format='none')
    OUT/meta.json            generator version, domain, size, seeds, depth format

This is the trainer's ``rgbd_folder`` layout (data/rgbd_folder.py reads the first two columns of
each line; 16-bit PNG millimetres with 0 = none, the default depth_scale 0.001): a synthetic
split trains with ``{kind: rgbd_folder, dir: OUT, filenames: OUT/frames.txt}``. For the
real-like domain write images only (``--depth-format none``: its ground truth must never reach
training) and give ``OUT/rgb`` to ``data.real.images`` and to ``fiffdepth-pseudolabel``.

    python -m fiffdepth_ros.training.data.procedural --out DIR --count N \\
        --domain synthetic|real --seed-start S [--width 256 --height 192] \\
        [--depth-format png16|npy|none] [--held-out]
"""
from __future__ import annotations

import argparse
import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GENERATOR_VERSION = 1
DOMAINS = ('synthetic', 'real')
SCENE_KINDS = ('room', 'corridor', 'outdoor')
TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_SEEDS = range(1_000_000, 1_100_000)
MAX_VALID_DEPTH = 80.0
_EPS = 1e-6
_TILE = 64                      # texels per atlas tile side (plus a one-texel wrap border)
_MAX_OBJECT_MATERIALS = 16


# ---------------------------------------------------------------------------------- seeds
def training_seeds(start: int, count: int) -> range:
    """Seeds ``start .. start + count - 1``, checked to lie inside ``TRAIN_SEEDS``."""
    seeds = range(int(start), int(start) + int(count))
    if count < 0 or seeds.start < TRAIN_SEEDS.start or seeds.stop > TRAIN_SEEDS.stop:
        raise ValueError(f'training seeds {seeds.start}..{seeds.stop - 1} leave the training '
                         f'range {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1} (seeds '
                         f'{HELD_OUT_SEEDS.start}..{HELD_OUT_SEEDS.stop - 1} are held out)')
    return seeds


def held_out_seeds(count: int, start: int = 0) -> range:
    """The first ``count`` held-out seeds from offset ``start``: validation and benchmarks."""
    seeds = range(HELD_OUT_SEEDS.start + int(start), HELD_OUT_SEEDS.start + int(start) + count)
    if count < 0 or start < 0 or seeds.stop > HELD_OUT_SEEDS.stop:
        raise ValueError(f'only {len(HELD_OUT_SEEDS)} held-out seeds exist')
    return seeds


def _streams(seed: int, domain: str):
    """Independent generators for the scene, the textures and the sensor: the layout does not
    depend on the image size, and no frame depends on another."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got '{domain}'")
    if int(seed) < 0:
        raise ValueError(f'seed must be >= 0, got {seed}')
    root = np.random.SeedSequence([GENERATOR_VERSION, DOMAINS.index(domain), int(seed)])
    return [np.random.Generator(np.random.PCG64(s)) for s in root.spawn(3)]


# ----------------------------------------------------------------------------- primitives
# Rays are (3, N) arrays (components in rows: fast dot products); origins are (3,) or (3, N).
def _dot(a, b):
    """Row-wise dot product; a constant 3-vector against (3, N) rows skips its zero components
    (most planes and axes are axis-aligned). May return a row of ``b`` itself: read only."""
    if getattr(a, 'ndim', 0) == 1 and getattr(b, 'ndim', 0) == 2:
        return _const_dot(a, b)
    if getattr(b, 'ndim', 0) == 1 and getattr(a, 'ndim', 0) == 2:
        return _const_dot(b, a)
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _const_dot(v, rows):
    out = None
    for i in range(3):
        if v[i] != 0.0:
            term = rows[i] if v[i] == 1.0 else rows[i] * v[i]
            out = term if out is None else out + term
    return np.zeros(rows.shape[1]) if out is None else out


class Plane:
    """Infinite plane n . p = c; ``normal`` points to the side the camera sees."""

    def __init__(self, normal, offset):
        self.n = np.asarray(normal, np.float64) / np.linalg.norm(normal)
        self.c = float(offset)
        helper = np.array([0.0, 0.0, 1.0]) if abs(self.n[2]) < 0.9 else np.array([1.0, 0, 0])
        self.e1 = np.cross(helper, self.n)
        self.e1 /= np.linalg.norm(self.e1)
        self.e2 = np.cross(self.n, self.e1)

    def intersect(self, o, d):
        with np.errstate(divide='ignore', invalid='ignore'):
            t = (self.c - _dot(self.n, o)) / _dot(self.n, d)
        return np.where(t > _EPS, t, np.inf)

    def surface(self, p):
        normal = np.broadcast_to(self.n[:, None], p.shape)
        return normal, _dot(self.e1, p), _dot(self.e2, p)

    def sdf(self, x):
        return float(self.n @ x - self.c)


class Box:
    """Box with centre ``c``, half extents ``h`` and rotation ``R`` (columns: its axes)."""

    def __init__(self, centre, half, R=None):
        self.c = np.asarray(centre, np.float64)
        self.h = np.asarray(half, np.float64)
        self.R = np.eye(3) if R is None else np.asarray(R, np.float64)
        self.radius = float(np.linalg.norm(self.h))
        k = int(np.argmax(self.h))                   # bounding capsule along the longest axis
        self.capsule = (self.c - self.R[:, k] * self.h[k], 2 * self.R[:, k] * self.h[k],
                        float(np.linalg.norm(np.delete(self.h, k))))

    def _local(self, o, d):
        oc = o - (self.c if o.ndim == 1 else self.c[:, None])
        return self.R.T @ oc, self.R.T @ d

    def intersect(self, o, d):
        lo, ld = self._local(o, d)
        lo = lo[:, None] if lo.ndim == 1 else lo
        h = self.h[:, None]
        with np.errstate(divide='ignore', invalid='ignore'):
            inv = 1.0 / ld
            t1, t2 = (-h - lo) * inv, (h - lo) * inv      # slabs; 0 * inf -> NaN, fmin skips it
        near = np.fmin(t1, t2)
        far = np.fmax(t1, t2)
        t_near = np.fmax(np.fmax(near[0], near[1]), near[2])
        t_far = np.fmin(np.fmin(far[0], far[1]), far[2])
        return np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)

    def surface(self, p):
        q = self.R.T @ (p - self.c[:, None])
        axis = np.argmax(np.abs(q) / self.h[:, None], axis=0)
        sign = np.sign(q[axis, np.arange(q.shape[1])])
        normal = self.R[:, axis] * sign
        u = np.where(axis == 0, q[1], q[0])
        v = np.where(axis == 2, q[1], q[2])
        return normal, u, v

    def sdf(self, x):
        q = np.abs(self.R.T @ (np.asarray(x) - self.c)) - self.h
        return float(np.linalg.norm(np.maximum(q, 0.0)) + min(q.max(), 0.0))


class Sphere:
    def __init__(self, centre, radius):
        self.c = np.asarray(centre, np.float64)
        self.r = float(radius)
        self.radius = self.r
        self.capsule = (self.c, np.zeros(3), self.r)

    def intersect(self, o, d):
        oc = o - (self.c if o.ndim == 1 else self.c[:, None])
        oc = oc[:, None] if oc.ndim == 1 else oc
        a = _dot(d, d)
        b = _dot(d, oc)
        disc = b * b - a * (_dot(oc, oc) - self.r * self.r)
        with np.errstate(invalid='ignore'):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > _EPS), t, np.inf)

    def surface(self, p):
        q = p - self.c[:, None]
        normal = q / self.r
        u = self.r * np.arctan2(q[1], q[0])
        return normal, u, q[2]

    def sdf(self, x):
        return float(np.linalg.norm(np.asarray(x) - self.c) - self.r)


class Cylinder:
    """Capped cylinder: centre ``c``, unit axis ``a``, radius ``r``, half length ``h``."""

    def __init__(self, centre, axis, radius, half_length):
        self.c = np.asarray(centre, np.float64)
        self.a = np.asarray(axis, np.float64) / np.linalg.norm(axis)
        self.r, self.hl = float(radius), float(half_length)
        self.radius = float(np.hypot(self.r, self.hl))
        self.capsule = (self.c - self.a * self.hl, 2 * self.a * self.hl, self.r)
        self.e1 = Plane(self.a, 0.0).e1
        self.e2 = np.cross(self.a, self.e1)

    def intersect(self, o, d):
        # Everything from per-ray dot products: with oc = o - c, the axial parts oa = a.oc,
        # da = a.d and the radial quadratic |oc + t d|^2 - (oa + t da)^2 = r^2.
        oc = o - (self.c if o.ndim == 1 else self.c[:, None])
        oa, da = _dot(self.a, oc), _dot(self.a, d)
        dd, d_oc = _dot(d, d), _dot(d, oc)
        oc2 = _dot(oc, oc)
        A, B = dd - da * da, d_oc - da * oa
        disc = B * B - A * (oc2 - oa * oa - self.r * self.r)
        with np.errstate(divide='ignore', invalid='ignore'):
            t_side = (-B - np.sqrt(disc)) / A
            side_ok = (disc >= 0) & (t_side > _EPS) & (np.abs(oa + t_side * da) <= self.hl)
            t_side = np.where(side_ok, t_side, np.inf)
            t_cap = np.fmin((self.hl - oa) / da, (-self.hl - oa) / da)  # the nearer cap
            rad2 = oc2 + t_cap * (2 * d_oc + t_cap * dd) - self.hl * self.hl
            cap_ok = (t_cap > _EPS) & (rad2 <= self.r * self.r)
        return np.fmin(t_side, np.where(cap_ok, t_cap, np.inf))

    def surface(self, p):
        q = p - self.c[:, None]
        s = _dot(self.a, q)
        radial = q - self.a[:, None] * s
        on_cap = np.abs(s) >= self.hl * (1.0 - 1e-7) - 1e-9
        with np.errstate(invalid='ignore', divide='ignore'):
            side_normal = radial / np.maximum(np.sqrt(_dot(radial, radial)), 1e-12)
        cap_normal = self.a[:, None] * np.sign(s)
        normal = np.where(on_cap, cap_normal, side_normal)
        x1, x2 = _dot(self.e1, q), _dot(self.e2, q)
        u = np.where(on_cap, x1, self.r * np.arctan2(x2, x1))
        v = np.where(on_cap, x2, s)
        return normal, u, v

    def sdf(self, x):
        q = np.asarray(x) - self.c
        s = float(self.a @ q)
        radial = float(np.linalg.norm(q - self.a * s))
        dr, ds = radial - self.r, abs(s) - self.hl
        return float(np.hypot(max(dr, 0.0), max(ds, 0.0)) + min(max(dr, ds), 0.0))


def _yaw(angle) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# -------------------------------------------------------------------------------- camera
@dataclass(frozen=True)
class Camera:
    """Pinhole camera; ``R`` has the optical axes (x right, y down, z forward) as its columns,
    in the world frame (x, y horizontal, z up); ``position`` is its centre in the world."""

    K: np.ndarray
    R: np.ndarray
    position: np.ndarray
    width: int
    height: int

    def ray_directions(self) -> np.ndarray:
        """(3, H*W) world directions whose camera-frame z is 1 (hit parameter = z-depth)."""
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        u = (np.arange(self.width, dtype=np.float64) - cx) / fx
        v = (np.arange(self.height, dtype=np.float64) - cy) / fy
        cam = np.empty((3, self.height, self.width))
        cam[0] = u[None, :]
        cam[1] = v[:, None]
        cam[2] = 1.0
        return self.R @ cam.reshape(3, -1)


def look_rotation(yaw, pitch, roll) -> np.ndarray:
    """Camera axes (columns: right, down, forward) for a heading, an elevation and a roll."""
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def _intrinsics(rng, width, height) -> np.ndarray:
    hfov = np.radians(rng.uniform(45.0, 100.0))
    fx = width / 2.0 / np.tan(hfov / 2.0)
    fy = fx * rng.uniform(0.97, 1.03)
    cx = (width - 1) / 2.0 + rng.uniform(-0.03, 0.03) * width
    cy = (height - 1) / 2.0 + rng.uniform(-0.03, 0.03) * height
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    kind: str
    planes: list            # enclosing / ground planes (never cast shadows)
    objects: list           # boxes, spheres, cylinders (cast shadows)
    light: np.ndarray       # direction towards the sun (unit) or a lamp position
    light_is_point: bool
    camera_position: np.ndarray
    camera_angles: tuple    # yaw, pitch, roll
    groups: list            # per object: index of the multi-part object it belongs to

    @property
    def primitives(self) -> list:
        return self.planes + self.objects

    def materials(self) -> np.ndarray:
        """Texture index per primitive: one per plane, one per (multi-part) object."""
        groups = np.asarray(self.groups, int) % _MAX_OBJECT_MATERIALS   # big scenes reuse
        return np.concatenate([np.arange(len(self.planes)), len(self.planes) + groups]).astype(int)


def _clear_of(camera_pos, prim, clearance) -> bool:
    return prim.sdf(camera_pos) > clearance


class _Builder:
    """Collects objects, dropping any that would swallow the camera or sit right on its lens."""

    def __init__(self, camera_pos, clearance=0.5):
        self.camera_pos, self.clearance, self.objects, self.groups = camera_pos, clearance, [], []

    def add(self, *prims) -> bool:
        """Add a multi-part object only if all its parts leave the camera clear."""
        if all(_clear_of(self.camera_pos, p, self.clearance) for p in prims):
            group = self.groups[-1] + 1 if self.groups else 0
            self.objects.extend(prims)
            self.groups.extend([group] * len(prims))
            return True
        return False


def _spot_in_view(rng, cam_pos, yaw, near, far, spread, lo, hi):
    """A floor position (x, y) mostly in front of the camera, clamped into [lo, hi]."""
    ang = yaw + rng.uniform(-spread, spread)
    dist = rng.uniform(near, far)
    xy = cam_pos[:2] + dist * np.array([np.cos(ang), np.sin(ang)])
    return np.clip(xy, lo, hi)


def _furniture(rng, b: _Builder, xy, floor_z, ceiling_z, lo, hi):
    """One indoor object standing at floor position ``xy``."""
    kind = rng.choice(['cabinet', 'table', 'shelf', 'ball', 'pillar', 'bin', 'pole', 'stack'],
                      p=[0.2, 0.17, 0.1, 0.12, 0.1, 0.1, 0.11, 0.1])
    R = _yaw(rng.uniform(0, np.pi))
    if kind == 'cabinet':
        h = np.array([rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.6), rng.uniform(0.2, 1.0)])
        b.add(Box([*xy, floor_z + h[2]], h, R))
    elif kind == 'stack':
        z = floor_z
        for _ in range(rng.integers(2, 4)):
            h = np.array([rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4), rng.uniform(0.1, 0.3)])
            b.add(Box([*(xy + rng.uniform(-0.08, 0.08, 2)), z + h[2]], h,
                      _yaw(rng.uniform(0, np.pi))))
            z += 2 * h[2]
    elif kind == 'table':
        hx, hy, top = rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.5), rng.uniform(0.45, 0.9)
        thick, leg_r = rng.uniform(0.015, 0.04), rng.uniform(0.012, 0.035)
        parts = [Box([*xy, floor_z + top - thick], [hx, hy, thick], R)]
        for sx in (-1, 1):
            for sy in (-1, 1):
                foot = np.array([*xy, 0.0]) + R @ np.array([sx * (hx - 0.05), sy * (hy - 0.05), 0])
                leg_h = (top - 2 * thick) / 2
                parts.append(Cylinder([foot[0], foot[1], floor_z + leg_h], [0, 0, 1], leg_r,
                                      leg_h))
        if b.add(*parts) and rng.random() < 0.5:
            r = rng.uniform(0.05, 0.15)
            b.add(Sphere([*(xy + rng.uniform(-0.1, 0.1, 2)), floor_z + top + r], r))
    elif kind == 'shelf':
        hx, hy = rng.uniform(0.3, 0.9), rng.uniform(0.12, 0.25)
        n, gap = int(rng.integers(2, 5)), rng.uniform(0.25, 0.45)
        parts = []
        for i in range(n):
            parts.append(Box([*xy, floor_z + 0.1 + i * gap], [hx, hy, 0.012], R))
        side = (n - 1) * gap / 2 + 0.12
        for sx in (-1, 1):
            off = np.array([*xy, 0.0]) + R @ np.array([sx * hx, 0.0, 0.0])
            parts.append(Box([off[0], off[1], floor_z + side], [0.015, hy, side], R))
        b.add(*parts)
    elif kind == 'ball':
        r = rng.uniform(0.08, 0.5)
        b.add(Sphere([*xy, floor_z + r], r))
    elif kind == 'pillar':
        r, half = rng.uniform(0.1, 0.35), (ceiling_z - floor_z) / 2
        b.add(Cylinder([*xy, floor_z + half], [0, 0, 1], r, half))
    elif kind == 'bin':
        r, half = rng.uniform(0.1, 0.3), rng.uniform(0.15, 0.5)
        b.add(Cylinder([*xy, floor_z + half], [0, 0, 1], r, half))
    else:                                            # thin pole (lamp, coat stand, sign)
        r, half = rng.uniform(0.01, 0.04), rng.uniform(0.5, 1.1)
        parts = [Cylinder([*xy, floor_z + half], [0, 0, 1], r, half)]
        if rng.random() < 0.5:
            parts.append(Sphere([*xy, floor_z + 2 * half + 0.08], rng.uniform(0.06, 0.15)))
        b.add(*parts)


def _room_planes(size):
    lx, ly, lz = size
    return [Plane([0, 0, 1], 0.0), Plane([0, 0, -1], -lz), Plane([1, 0, 0], 0.0),
            Plane([-1, 0, 0], -lx), Plane([0, 1, 0], 0.0), Plane([0, -1, 0], -ly)]


def _free_distance(pos, yaw, size):
    """Horizontal distance from ``pos`` along heading ``yaw`` to the wall of the room box."""
    f = np.array([np.cos(yaw), np.sin(yaw)])
    with np.errstate(divide='ignore'):
        steps = np.where(f > 0, (size[:2] - pos[:2]) / f, np.where(f < 0, -pos[:2] / f, np.inf))
    return float(steps.min())


def _indoor_camera(rng, size, along_x=False):
    lx, ly, lz = size
    margin = 0.45
    for _ in range(8):                    # mostly not staring into a wall from close up
        if along_x:
            pos = np.array([rng.uniform(margin, min(3.0, lx / 3)),
                            rng.uniform(margin, ly - margin),
                            rng.uniform(0.3, min(1.9, lz - 0.4))])
            yaw = rng.uniform(-0.45, 0.45)
        else:
            pos = np.array([rng.uniform(margin, lx - margin), rng.uniform(margin, ly - margin),
                            rng.uniform(0.3, min(1.9, lz - 0.4))])
            # Look roughly towards the room's far side, so most of the room is in view.
            centre = np.array([lx / 2, ly / 2])
            yaw = np.arctan2(*(centre - pos[:2])[::-1]) + rng.uniform(-1.2, 1.2)
        if _free_distance(pos, yaw, size) > 1.5:
            break
    return pos, (yaw, np.radians(rng.uniform(-30, 12)), np.radians(rng.uniform(-6, 6)))


def _wall_panels(rng, b: _Builder, size, count):
    """Thin panels on the walls (pictures, doors, radiators): depth steps of a few cm."""
    lx, ly, lz = size
    for _ in range(count):
        wall = rng.integers(4)
        w, h, t = rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0), rng.uniform(0.01, 0.08)
        z = rng.uniform(h, max(h + 0.01, lz - h - 0.1))
        if wall < 2:
            x = 0.0 if wall == 0 else lx
            y = rng.uniform(w, max(w + 0.01, ly - w))
            b.add(Box([x, y, z], [t, w, h]))
        else:
            y = 0.0 if wall == 2 else ly
            x = rng.uniform(w, max(w + 0.01, lx - w))
            b.add(Box([x, y, z], [w, t, h]))


def _room_scene(rng) -> Scene:
    size = np.array([rng.uniform(3.0, 9.0), rng.uniform(2.5, 7.0), rng.uniform(2.3, 3.6)])
    pos, angles = _indoor_camera(rng, size)
    b = _Builder(pos)
    lo, hi = np.array([0.2, 0.2]), size[:2] - 0.2
    for _ in range(rng.integers(3, 13)):
        if rng.random() < 0.75:
            xy = _spot_in_view(rng, pos, angles[0], 0.8, 5.0, 0.6, lo, hi)
        else:
            xy = rng.uniform(lo, hi)
        _furniture(rng, b, xy, 0.0, size[2], lo, hi)
    _wall_panels(rng, b, size, rng.integers(0, 5))
    if rng.random() < 0.4:                           # a handrail along one wall
        y = rng.choice([0.08, size[1] - 0.08])
        b.add(Cylinder([size[0] / 2, y, rng.uniform(0.8, 1.0)], [1, 0, 0], 0.025,
                       size[0] / 2 - 0.3))
    lamp = np.array([rng.uniform(0.5, size[0] - 0.5), rng.uniform(0.5, size[1] - 0.5),
                     size[2] - 0.05])
    return Scene('room', _room_planes(size), b.objects, lamp, True, pos, angles, b.groups)


def _corridor_scene(rng) -> Scene:
    size = np.array([rng.uniform(12.0, 40.0), rng.uniform(1.6, 3.2), rng.uniform(2.4, 3.2)])
    pos, angles = _indoor_camera(rng, size, along_x=True)
    b = _Builder(pos)
    lx, ly, lz = size
    for _ in range(rng.integers(1, 4)):              # ceiling pipes along the corridor
        b.add(Cylinder([lx / 2, rng.uniform(0.15, ly - 0.15), lz - rng.uniform(0.1, 0.35)],
                       [1, 0, 0], rng.uniform(0.02, 0.12), lx / 2))
    step = rng.uniform(2.5, 6.0)
    for x in np.arange(rng.uniform(1.0, step), lx, step):   # pilasters on both walls
        if rng.random() < 0.7:
            w = rng.uniform(0.1, 0.25)
            b.add(Box([x, 0.0, lz / 2], [w, w, lz / 2]), )
            b.add(Box([x, ly, lz / 2], [w, w, lz / 2]))
    for _ in range(rng.integers(2, 8)):              # doors and cabinets along the walls
        x, side = rng.uniform(1.0, lx - 1.0), rng.integers(2)
        if rng.random() < 0.5:
            hy = rng.uniform(0.01, 0.05)
            b.add(Box([x, hy if side == 0 else ly - hy, 1.0], [rng.uniform(0.4, 0.6), hy, 1.0]))
        else:
            h = np.array([rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.9)])
            b.add(Box([x, h[1] if side == 0 else ly - h[1], h[2]], h))
    for _ in range(rng.integers(0, 4)):              # things on the floor
        _furniture(rng, b, np.array([rng.uniform(1.5, lx - 0.5), rng.uniform(0.3, ly - 0.3)]),
                   0.0, lz, np.array([0.2, 0.2]), size[:2] - 0.2)
    if rng.random() < 0.6:                           # a handrail on posts
        y, z = (0.12 if rng.random() < 0.5 else ly - 0.12), rng.uniform(0.85, 1.0)
        b.add(Cylinder([lx / 2, y, z], [1, 0, 0], rng.uniform(0.015, 0.03), lx / 2 - 0.5))
        for x in np.arange(1.0, lx - 0.5, rng.uniform(1.5, 3.0)):
            b.add(Cylinder([x, y, z / 2], [0, 0, 1], 0.015, z / 2))
    lamp = np.array([pos[0] + rng.uniform(1.0, 8.0), ly / 2, lz - 0.05])
    return Scene('corridor', _room_planes(size), b.objects, lamp, True, pos, angles, b.groups)


def _outdoor_scene(rng) -> Scene:
    pos = np.array([0.0, 0.0, rng.uniform(0.3, 2.2)])
    yaw = rng.uniform(-np.pi, np.pi)
    angles = (yaw, np.radians(rng.uniform(-25, 8)), np.radians(rng.uniform(-5, 5)))
    b = _Builder(pos, clearance=0.6)

    def spot(near, far, spread=0.8):
        return _spot_in_view(rng, pos, yaw, near, far, spread, -1e9, 1e9)

    for _ in range(rng.integers(0, 6)):              # buildings
        h = np.array([rng.uniform(2.0, 12.0), rng.uniform(2.0, 12.0), rng.uniform(2.0, 15.0)])
        b.add(Box([*spot(10.0, 60.0), h[2]], h, _yaw(rng.uniform(0, np.pi))))
    for _ in range(rng.integers(0, 7)):              # trees
        xy, trunk = spot(3.0, 30.0), rng.uniform(0.8, 2.5)
        r_trunk = rng.uniform(0.06, 0.25)
        b.add(Cylinder([*xy, trunk], [0, 0, 1], r_trunk, trunk),
              Sphere([*xy, 2 * trunk + rng.uniform(0.3, 1.2)], rng.uniform(0.8, 2.5)))
    for _ in range(rng.integers(0, 6)):              # street poles, sometimes with a lamp head
        xy, half = spot(2.0, 25.0), rng.uniform(1.0, 4.0)
        parts = [Cylinder([*xy, half], [0, 0, 1], rng.uniform(0.03, 0.1), half)]
        if rng.random() < 0.5:
            parts.append(Box([*xy, 2 * half], [0.25, 0.12, 0.06], _yaw(rng.uniform(0, np.pi))))
        b.add(*parts)
    if rng.random() < 0.6:                           # a fence: rails on posts
        start, ang = spot(2.0, 10.0), rng.uniform(0, np.pi)
        length, height = rng.uniform(4.0, 20.0), rng.uniform(0.6, 1.4)
        axis = np.array([np.cos(ang), np.sin(ang), 0.0])
        mid = np.array([*start, 0.0]) + axis * length / 2
        parts = [Cylinder(mid + [0, 0, height * f], axis, rng.uniform(0.015, 0.04), length / 2)
                 for f in (0.5, 1.0)]
        for s in np.arange(0.0, length + 1e-9, rng.uniform(1.0, 2.5)):
            p = np.array([*start, 0.0]) + axis * s
            parts.append(Cylinder(p + [0, 0, height / 2], [0, 0, 1], 0.03, height / 2))
        b.add(*parts)
    for _ in range(rng.integers(1, 8)):              # crates, cars, boulders, bollards
        kind, xy = rng.integers(4), spot(1.5, 20.0)
        R = _yaw(rng.uniform(0, np.pi))
        if kind == 0:
            h = rng.uniform(0.2, 0.8, 3)
            b.add(Box([*xy, h[2]], h, R))
        elif kind == 1:
            body = np.array([rng.uniform(1.8, 2.4), rng.uniform(0.8, 1.0), 0.4])
            cab = R @ np.array([-0.2, 0.0, 0.0])
            b.add(Box([*xy, 0.2 + body[2]], body, R),
                  Box([xy[0] + cab[0], xy[1] + cab[1], 1.0 + 0.3], [1.1, 0.75, 0.3], R))
        elif kind == 2:
            r = rng.uniform(0.2, 1.2)
            b.add(Sphere([*xy, r * rng.uniform(0.3, 0.9)], r))
        else:
            b.add(Cylinder([*xy, 0.45], [0, 0, 1], rng.uniform(0.05, 0.15), 0.45))
    elev, az = np.radians(rng.uniform(15, 70)), rng.uniform(-np.pi, np.pi)
    sun = np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
    return Scene('outdoor', [Plane([0, 0, 1], 0.0)], b.objects, sun, False, pos, angles,
                 b.groups)


def sample_scene(rng) -> Scene:
    kind = rng.choice(SCENE_KINDS, p=[0.45, 0.2, 0.35])
    return {'room': _room_scene, 'corridor': _corridor_scene, 'outdoor': _outdoor_scene}[kind](rng)


# ------------------------------------------------------------------------------ ray casting
_CUBE_CORNERS = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1)


def _screen_rect(prim, camera: Camera):
    """Pixel rectangle (r0, r1, c0, c1) that holds the primitive's image, or None when the
    bounding sphere is behind the camera. The projected corners of the cube around the
    bounding sphere bound its image when they all lie in front of the camera."""
    centre = camera.R.T @ (prim.c - camera.position)
    rad = prim.radius
    if centre[2] + rad < _EPS:
        return None
    corners = centre[:, None] + rad * _CUBE_CORNERS
    if corners[2].min() < 1e-3:
        return 0, camera.height, 0, camera.width
    uv = camera.K @ (corners / corners[2])
    c0, c1 = int(np.floor(uv[0].min())), int(np.ceil(uv[0].max())) + 1
    r0, r1 = int(np.floor(uv[1].min())), int(np.ceil(uv[1].max())) + 1
    c0, c1 = max(c0, 0), min(c1, camera.width)
    r0, r1 = max(r0, 0), min(r1, camera.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def cast_primary(scene: Scene, camera: Camera, dirs: np.ndarray):
    """Hit parameter (= z-depth, HxW) and primitive index (-1: sky) of every pixel; planes
    come first in the index, then the objects."""
    h, w = camera.height, camera.width
    o = camera.position
    t_best = np.full(h * w, np.inf)
    ids = np.full(h * w, -1, np.int32)
    for i, plane in enumerate(scene.planes):
        t = plane.intersect(o, dirs)
        closer = t < t_best
        t_best[closer], ids[closer] = t[closer], i
    t_img, id_img = t_best.reshape(h, w), ids.reshape(h, w)
    dirs_img = dirs.reshape(3, h, w)
    for j, prim in enumerate(scene.objects):
        rect = _screen_rect(prim, camera)
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        sub = dirs_img[:, r0:r1, c0:c1].reshape(3, -1)
        t = prim.intersect(o, sub).reshape(r1 - r0, c1 - c0)
        view_t, view_id = t_img[r0:r1, c0:c1], id_img[r0:r1, c0:c1]
        closer = t < view_t
        view_t[closer] = t[closer]
        view_id[closer] = len(scene.planes) + j
    return t_img, id_img


_SHADOW_TILE = 16


def _tile_bounds(points, mask, h, w):
    """Bounding sphere (centre (3, T), radius (T,)) of the masked points of every 16x16 pixel
    tile, NaN for tiles without any, and each pixel's tile index (N,)."""
    n = _SHADOW_TILE
    nh, nw = -(-h // n), -(-w // n)
    p, m = points.reshape(3, h, w), mask.reshape(h, w)
    lo = np.full((3, nh * n, nw * n), np.inf)
    hi = np.full((3, nh * n, nw * n), -np.inf)
    lo[:, :h, :w] = np.where(m, p, np.inf)
    hi[:, :h, :w] = np.where(m, p, -np.inf)
    lo = lo.reshape(3, nh, n, nw, n).min(axis=(2, 4)).reshape(3, -1)
    hi = hi.reshape(3, nh, n, nw, n).max(axis=(2, 4)).reshape(3, -1)
    with np.errstate(invalid='ignore'):
        centre = (lo + hi) / 2
        radius = 0.5 * np.sqrt(_dot(hi - lo, hi - lo))
    tile_of = ((np.arange(h) // n)[:, None] * nw + (np.arange(w) // n)[None, :]).reshape(-1)
    return centre, radius, tile_of


def _segment_distance2(p1, d1, p2, d2):
    """Squared distance between segments p1 + s d1 (many, (3, T)) and p2 + u d2 (one), s and u
    in [0, 1]: the closest-point construction with clamping (u from s, then s from u)."""
    r = p1 - p2[:, None]
    a, e = _dot(d1, d1), float(d2 @ d2)
    b, c, f = _dot(d1, d2[:, None]), _dot(d1, r), _dot(d2[:, None], r)
    if e < 1e-12:                                    # the second segment is a point
        s, u = np.clip(-c / a, 0.0, 1.0), np.zeros_like(a)
    else:
        denom = a * e - b * b
        s = np.where(denom > 1e-12, np.clip((b * f - c * e) / np.where(denom > 1e-12, denom, 1),
                                            0.0, 1.0), 0.0)
        u = (b * s + f) / e
        s = np.where(u < 0, np.clip(-c / a, 0.0, 1.0),
                     np.where(u > 1, np.clip((b - c) / a, 0.0, 1.0), s))
        u = np.clip(u, 0.0, 1.0)
    gap = r + d1 * s - d2[:, None] * u
    return _dot(gap, gap)


def _shadowed(scene: Scene, origins, lit, h, w):
    """Whether the segment from each lit pixel's surface point (origins, (3, N)) towards the
    light (parameter 1 at a lamp, unbounded for the sun) is blocked by an object; (N,) bool.

    Culled per 16x16 pixel tile: every shadow ray of a tile stays within the tile's bounding
    radius of the tile centre's ray (parallel rays for the sun, rays converging on the lamp),
    so an object whose bounding capsule is farther than both radii from that ray is skipped."""
    centre, radius, tile_of = _tile_bounds(origins, lit, h, w)
    lit_idx = np.flatnonzero(lit)
    points, tiles = origins[:, lit_idx], tile_of[lit_idx]
    if scene.light_is_point:
        seg, t_max = scene.light[:, None] - centre, 1.0
        to_light = scene.light[:, None] - points
    else:
        seg, t_max = np.broadcast_to(scene.light[:, None] * 1e4, centre.shape), np.inf
        to_light = scene.light[:, None]                # one direction for all rays
    blocked = np.zeros(lit_idx.size, bool)
    for prim in scene.objects:
        start, axis, cap_radius = prim.capsule
        with np.errstate(invalid='ignore', divide='ignore'):
            gap2 = _segment_distance2(centre, seg, start, axis)
            candidate = gap2 <= (cap_radius + radius) ** 2              # NaN: empty tile
        if not candidate.any():
            continue
        idx = np.flatnonzero(candidate[tiles] & ~blocked)
        if idx.size:
            d = to_light if to_light.shape[1] == 1 else to_light[:, idx]
            t = prim.intersect(points[:, idx], d)
            blocked[idx[t < t_max]] = True
    out = np.zeros(origins.shape[1], bool)
    out[lit_idx] = blocked
    return out


# -------------------------------------------------------------------------------- textures
def _hsv_to_rgb(h, s, v):
    """HSV colours (arrays of equal length, all in [0, 1]) -> (n, 3) RGB in [0, 1]."""
    return np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(h, s, v)])


_FREQ = np.hypot(np.fft.fftfreq(_TILE)[:, None], np.fft.fftfreq(_TILE)[None, :])
_FREQ[0, 0] = 1.0
_LOG_FREQ = np.log(_FREQ)
_TILE_Y, _TILE_X = np.mgrid[0:_TILE, 0:_TILE] / _TILE


_NOISE_BETAS = (0.9, 1.3, 1.7, 2.1)
_NOISE_PER_BETA = 24
_noise_bank_cache: list = []


def _noise_bank() -> np.ndarray:
    """Periodic 1/f^beta noise fields in [0, 1], (betas, fields, tile, tile): made once from a
    fixed seed (the same in every process), so a frame only picks, rolls and flips them."""
    if not _noise_bank_cache:
        rng = np.random.Generator(np.random.PCG64(20260101))
        bank = np.empty((len(_NOISE_BETAS), _NOISE_PER_BETA, _TILE, _TILE), np.float32)
        for i, beta in enumerate(_NOISE_BETAS):
            spectrum = rng.standard_normal((2, _NOISE_PER_BETA, _TILE, _TILE))
            field = np.fft.ifft2((spectrum[0] + 1j * spectrum[1])
                                 * np.exp(-beta * _LOG_FREQ)).real
            field -= field.min(axis=(1, 2), keepdims=True)
            bank[i] = field / field.max(axis=(1, 2), keepdims=True)
        _noise_bank_cache.append(bank)
    return _noise_bank_cache[0]


def _spectral_noise(rng, beta):
    """A periodic noise tile with a spectrum near 1/f^beta, values in [0, 1]."""
    i = int(np.argmin(np.abs(np.asarray(_NOISE_BETAS) - beta)))
    field = _noise_bank()[i, rng.integers(_NOISE_PER_BETA)]
    field = np.roll(field, tuple(rng.integers(0, _TILE, 2)), axis=(0, 1))   # stays periodic
    return field.T if rng.random() < 0.5 else field


_SYNTHETIC_PATTERNS = ('checker', 'stripes', 'tiles', 'gradient', 'dots', 'noise', 'plain')
_SYNTHETIC_P = (0.2, 0.18, 0.16, 0.12, 0.1, 0.14, 0.1)
_REAL_PATTERNS = ('noise', 'grain', 'tiles', 'stripes', 'checker', 'plain')
_REAL_P = (0.3, 0.2, 0.18, 0.1, 0.07, 0.15)
# Material base colours for the real-like domain (linear RGB): woods, plasters, concretes,
# bricks, metals, fabrics, foliage, asphalt.
_MATERIALS = np.array([[0.45, 0.28, 0.15], [0.6, 0.42, 0.25], [0.8, 0.78, 0.72], [0.7, 0.68, 0.6],
                       [0.5, 0.5, 0.48], [0.35, 0.35, 0.34], [0.55, 0.25, 0.18],
                       [0.62, 0.6, 0.58], [0.3, 0.32, 0.4], [0.25, 0.35, 0.18],
                       [0.18, 0.18, 0.19], [0.72, 0.66, 0.5]])


def _pattern(rng, name):
    """A periodic scalar field on one tile, values in [0, 1]."""
    y, x = _TILE_Y, _TILE_X
    if name == 'checker':
        n = rng.choice([2, 4, 8])
        return ((np.floor(x * n) + np.floor(y * n)) % 2).astype(np.float64)
    if name == 'stripes':
        n, m = rng.integers(1, 6), rng.integers(0, 3)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (n * x + m * y))
        return (wave > rng.uniform(0.3, 0.7)).astype(np.float64) if rng.random() < 0.6 else wave
    if name == 'tiles':
        n, m = rng.choice([2, 4, 8]), rng.choice([2, 4, 8])
        gx = x * n + (0.5 * (np.floor(y * m) % 2) if rng.random() < 0.5 else 0.0)  # bricks
        gy = y * m
        grout = rng.uniform(0.04, 0.12)
        cell = rng.random((m, n))[np.floor(gy).astype(int) % m, np.floor(gx).astype(int) % n]
        face = 0.55 + 0.35 * cell
        edge = (np.mod(gx, 1) < grout) | (np.mod(gy, 1) < grout)
        return np.where(edge, 0.0, face)
    if name == 'gradient':
        return 0.5 - 0.5 * np.cos(2 * np.pi * (x if rng.random() < 0.5 else y))
    if name == 'dots':
        n = rng.choice([2, 4, 8])
        dist = np.hypot(np.mod(x * n, 1) - 0.5, np.mod(y * n, 1) - 0.5)
        return (dist < rng.uniform(0.15, 0.4)).astype(np.float64)
    if name == 'noise':
        return _spectral_noise(rng, rng.uniform(0.8, 2.2))
    if name == 'grain':                             # wood-like: stretched noise through a sine
        noise = _spectral_noise(rng, 1.6)
        rings = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.integers(2, 8) * y + 3 * noise))
        return 0.6 * rings + 0.4 * noise
    return np.zeros((_TILE, _TILE))


_PATTERN_VARIANTS = 16
_pattern_bank_cache: dict = {}


def _pattern_field(rng, name):
    """A periodic pattern for one tile: one of a bank of variants of each pattern (made once
    from a fixed seed, like the noise bank), rolled, and transposed half of the time. Drawing
    fresh patterns per surface cost most of a frame's time; the variety is in the variants,
    the shifts and the colours."""
    if name == 'plain':
        return np.zeros((_TILE, _TILE), np.float32)
    if not _pattern_bank_cache:
        bank_rng = np.random.Generator(np.random.PCG64(20260102))
        for kind in sorted(set(_SYNTHETIC_PATTERNS + _REAL_PATTERNS) - {'plain'}):
            _pattern_bank_cache[kind] = np.stack(
                [_pattern(bank_rng, kind) for _ in range(_PATTERN_VARIANTS)]).astype(np.float32)
    field = _pattern_bank_cache[name][rng.integers(_PATTERN_VARIANTS)]
    field = np.roll(field, tuple(rng.integers(0, _TILE, 2)), axis=(0, 1))
    return field.T if rng.random() < 0.5 else field


def _texture_tile(rng, domain):
    """One RGB tile (linear, [0, 1]) for one surface, drawn from the domain's look."""
    if domain == 'synthetic':
        name = rng.choice(_SYNTHETIC_PATTERNS, p=_SYNTHETIC_P)
        h = rng.random(2)
        s, v = rng.uniform(0.45, 1.0, 2), rng.uniform(0.35, 1.0, 2)
        c1, c2 = _hsv_to_rgb(h, s, v)
        detail = 0.0
    else:
        name = rng.choice(_REAL_PATTERNS, p=_REAL_P)
        base = _MATERIALS[rng.integers(len(_MATERIALS))] * rng.uniform(0.75, 1.2)
        c1 = np.clip(base * rng.uniform(0.9, 1.1, 3), 0, 1)
        c2 = np.clip(c1 * rng.uniform(0.55, 0.9), 0, 1)
        detail = rng.uniform(0.05, 0.25)
    field = _pattern_field(rng, name)
    if detail:
        # Material grain: a second noise modulates brightness.
        grain = (1.0 - detail + 2 * detail * _spectral_noise(rng, 1.2)).astype(np.float32)
        tile = (c1.astype(np.float32) + (c2 - c1).astype(np.float32) * field[..., None]) \
            * grain[..., None]
    else:
        tile = c1.astype(np.float32) + (c2 - c1).astype(np.float32) * field[..., None]
    return np.clip(tile, 0.0, 1.0)


_BORDER = 6                     # wrap border of each atlas tile: room for the coarse level's blur


def _atlas(rng, domain, count):
    """Tiles for ``count`` materials in one image, each inside a wrap border, so that bilinear
    sampling and one blur of the whole atlas stay seamless within a tile. Returns the atlas, its
    blurred copy (a coarser mip level against moire on far and grazing surfaces), the tiles'
    mean colours and the tiles' first texel in the atlas."""
    per_row = 8
    rows = -(-count // per_row)
    size = _TILE + 2 * _BORDER
    atlas = np.zeros((rows * size, per_row * size, 3), np.float32)
    means = np.zeros((count, 3), np.float32)
    origins = np.zeros((count, 2), np.float32)
    wrap = np.arange(-_BORDER, _TILE + _BORDER) % _TILE       # padded index -> tile index
    for k in range(count):
        r, c = divmod(k, per_row)
        tile = _texture_tile(rng, domain)
        atlas[r * size:(r + 1) * size, c * size:(c + 1) * size] = tile.take(wrap, 0).take(wrap, 1)
        means[k] = cv2.mean(tile)[:3]
        origins[k] = (c * size + _BORDER, r * size + _BORDER)
    coarse = cv2.GaussianBlur(atlas, (2 * _BORDER + 1, 2 * _BORDER + 1), 2.0)
    return atlas, coarse, means, origins


# ------------------------------------------------------------------------------- rendering
@dataclass
class ProceduralFrame:
    rgb: np.ndarray          # HxWx3 uint8
    depth: np.ndarray        # HxW float32 z-depth in metres, inf where no surface
    valid: np.ndarray        # HxW bool: finite depth within MAX_VALID_DEPTH
    K: np.ndarray            # 3x3 float64 intrinsics
    seed: int
    domain: str
    kind: str                # room | corridor | outdoor
    ids: np.ndarray          # HxW int32 primitive index (-1: sky), see Scene
    scene: Scene
    camera: Camera


def _sky(dirs, domain, rng):
    up = dirs[2] / np.sqrt(_dot(dirs, dirs))
    if domain == 'synthetic':
        horizon, zenith = _hsv_to_rgb(rng.random(2), rng.uniform(0.2, 0.8, 2),
                                      rng.uniform(0.6, 1.0, 2))
    else:
        horizon = np.array([0.75, 0.8, 0.85]) * rng.uniform(0.8, 1.1)
        zenith = np.array([0.3, 0.45, 0.75]) * rng.uniform(0.7, 1.2)
    k = np.clip(up, 0, 1)[:, None] ** 0.6
    return horizon * (1 - k) + zenith * k


def _surfaces(prims, points, ids):
    """Normals (3, N) and surface coordinates u, v (metres) of every pixel's hit point."""
    normals = np.zeros_like(points)
    u, v = np.zeros(ids.size), np.zeros(ids.size)
    present = np.flatnonzero(np.bincount(ids + 1, minlength=len(prims) + 1)[1:])
    for k in present:
        sel = np.flatnonzero(ids == k)
        normals[:, sel], u[sel], v[sel] = prims[k].surface(points[:, sel])
    return normals, u, v


def _albedo(scene, camera, dirs, t, ids, hit, normals, u, v, domain, rng):
    """Textured surface colour (N, 3): one atlas tile per material, sampled in surface
    coordinates, faded to coarser levels where a pixel covers many texels (no moire)."""
    h, w = camera.height, camera.width
    materials = scene.materials()
    n_mat = int(materials.max()) + 1
    atlas, coarse, means, origins = _atlas(rng, domain, n_mat)
    texels_per_metre = (_TILE / rng.uniform(0.25, 2.5, n_mat))[materials]
    phase = rng.uniform(0, _TILE, (len(materials), 2))
    safe = np.where(hit, ids, 0)
    mat, scale = materials[safe], texels_per_metre[safe]
    map_x = (np.mod(u * scale + phase[safe, 0], _TILE) + origins[mat, 0]).astype(np.float32)
    map_y = (np.mod(v * scale + phase[safe, 1], _TILE) + origins[mat, 1]).astype(np.float32)
    map_x, map_y = map_x.reshape(h, w), map_y.reshape(h, w)
    fine = cv2.remap(atlas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    blurred = cv2.remap(coarse, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Texels per pixel: distance / (f cos(incidence)) in metres, times texels per metre.
    cos_over_t = np.abs(_dot(normals, dirs)) / np.where(hit, t, 1.0)
    footprint = scale * _dot(dirs, dirs) / (camera.K[0, 0] * np.maximum(cos_over_t, 1e-9))
    to_coarse = np.clip((footprint - 1.0) / 3.0, 0, 1).astype(np.float32)[:, None]
    to_mean = np.clip((footprint - 4.0) / 12.0, 0, 1).astype(np.float32)[:, None]
    fine, blurred = fine.reshape(-1, 3), blurred.reshape(-1, 3)
    albedo = fine + (blurred - fine) * to_coarse
    return albedo + (means[mat] - albedo) * to_mean


def _shade(scene, camera, dirs, t, ids, domain, rng):
    """Linear radiance (N, 3): textured albedo x (ambient + light x Lambert x shadow)."""
    prims = scene.primitives
    ids, t = ids.reshape(-1), t.reshape(-1)
    hit = ids >= 0
    points = camera.position[:, None] + dirs * np.where(hit, t, 0.0)
    normals, u, v = _surfaces(prims, points, ids)
    albedo = _albedo(scene, camera, dirs, t, ids, hit, normals, u, v, domain, rng)
    if scene.light_is_point:
        to_light = scene.light[:, None] - points
        dist2 = _dot(to_light, to_light)
        lambert = _dot(normals, to_light) / np.sqrt(np.maximum(dist2, 1e-12))
        falloff = 1.0 / (1.0 + dist2 / rng.uniform(4.0, 25.0))
    else:
        lambert = _dot(scene.light, normals)
        falloff = 1.0
    lit = hit & (lambert > 0)
    shadow = np.zeros(ids.size, bool)
    if scene.objects and lit.any():
        shadow = _shadowed(scene, points + normals * 1e-4, lit, camera.height, camera.width)
    if domain == 'synthetic':
        ambient, strength, shadow_dark = rng.uniform(0.2, 0.45), rng.uniform(0.7, 1.1), 1.0
        light_col = np.ones(3, np.float32)
    else:
        ambient, strength = rng.uniform(0.12, 0.4), rng.uniform(0.7, 1.3)
        shadow_dark = rng.uniform(0.5, 0.85)          # indirect light fills real shadows
        light_col = np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.65, 0.95)], np.float32)
    direct = (np.where(lit, lambert, 0.0) * falloff * strength
              * (1 - shadow_dark * shadow)).astype(np.float32)
    radiance = albedo * (np.float32(ambient) + direct[:, None] * light_col)
    if not hit.all():
        radiance[~hit] = _sky(dirs[:, ~hit], domain, rng)
    return radiance


def _sensor(radiance, h, w, domain, rng):
    """Radiance (N, 3) -> uint8 image: a clean gamma for 'synthetic', a camera for 'real'."""
    img = radiance.reshape(h, w, 3).astype(np.float32)
    if domain == 'synthetic':
        return (np.clip(img, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
    img *= rng.uniform(0.6, 1.5) * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # exposure, WB
    img = img / (1.0 + img) * 1.3                      # filmic shoulder
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img *= (1.0 - rng.uniform(0.1, 0.45) * r2)[..., None]
    blur = rng.random()
    if blur < 0.55:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.4))
    elif blur < 0.75:
        n = int(rng.integers(3, 8))
        kernel = np.zeros((n, n), np.float32)
        kernel[n // 2] = 1.0 / n
        rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (n, n))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    img = np.clip(img, 0, 1)
    sigma = np.sqrt(rng.uniform(2e-4, 3e-3) * img + rng.uniform(1e-5, 4e-4))   # shot + read
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    out = (np.clip(img, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
    quality = int(rng.integers(35, 92))
    ok, buf = cv2.imencode('.jpg', out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def render_scene(scene: Scene, camera: Camera, domain: str = 'synthetic', texture_rng=None,
                 sensor_rng=None, seed: int = -1) -> ProceduralFrame:
    """Ray cast, shade and expose one scene (``render_frame`` samples both from a seed)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got '{domain}'")
    texture_rng = texture_rng if texture_rng is not None else np.random.default_rng(0)
    sensor_rng = sensor_rng if sensor_rng is not None else np.random.default_rng(0)
    dirs = camera.ray_directions()
    t, ids = cast_primary(scene, camera, dirs)
    radiance = _shade(scene, camera, dirs, t, ids, domain, texture_rng)
    rgb = _sensor(radiance, camera.height, camera.width, domain, sensor_rng)
    depth = t.astype(np.float32)
    valid = np.isfinite(depth) & (depth <= MAX_VALID_DEPTH)
    return ProceduralFrame(rgb=rgb, depth=depth, valid=valid, K=camera.K, seed=int(seed),
                           domain=domain, kind=scene.kind, ids=ids, scene=scene, camera=camera)


def render_frame(seed: int, domain: str = 'synthetic', width: int = 256,
                 height: int = 192) -> ProceduralFrame:
    """The frame of ``seed`` in ``domain`` at ``width`` x ``height`` (see the module doc)."""
    if width < 8 or height < 8:
        raise ValueError(f'frame size must be at least 8x8, got {width}x{height}')
    scene_rng, texture_rng, sensor_rng = _streams(seed, domain)
    scene = sample_scene(scene_rng)
    camera = Camera(_intrinsics(scene_rng, width, height), look_rotation(*scene.camera_angles),
                    scene.camera_position, int(width), int(height))
    return render_scene(scene, camera, domain, texture_rng, sensor_rng, seed)


# -------------------------------------------------------------------------------- writing
DEPTH_FORMATS = ('png16', 'npy', 'none')        # none: images only (the real-like domain)
LIST_FILE = 'frames.txt'


def _frame_name(seed: int) -> str:
    return f'{int(seed):08d}'


def write_frame(out_dir, frame: ProceduralFrame, depth_format: str = 'png16') -> str:
    """Write one frame's files under ``out_dir``; returns its list-file line."""
    out_dir = Path(out_dir)
    name = _frame_name(frame.seed)
    rgb_rel = f'rgb/{name}.png'
    if not cv2.imwrite(str(out_dir / rgb_rel), frame.rgb[..., ::-1]):
        raise OSError(f'cannot write {out_dir / rgb_rel}')
    if depth_format == 'png16':
        depth_rel = f'depth/{name}.png'
        mm = np.where(frame.valid, np.round(frame.depth * 1000.0), 0.0)
        mm = np.where(mm <= 65535, mm, 0).astype(np.uint16)   # beyond 65.5 m: invalid
        ok = cv2.imwrite(str(out_dir / depth_rel), mm)
    elif depth_format == 'npy':
        depth_rel = f'depth/{name}.npy'
        np.save(out_dir / depth_rel, np.where(frame.valid, frame.depth, np.inf).astype(np.float32))
        ok = True
    elif depth_format == 'none':
        depth_rel, ok = None, True
    else:
        raise ValueError(f'depth_format must be one of {DEPTH_FORMATS}')
    if not ok:
        raise OSError(f'cannot write {out_dir / depth_rel}')
    fx, fy, cx, cy = frame.K[0, 0], frame.K[1, 1], frame.K[0, 2], frame.K[1, 2]
    paths = rgb_rel if depth_rel is None else f'{rgb_rel} {depth_rel}'
    return f'{paths} {fx:.6f} {fy:.6f} {cx:.6f} {cy:.6f}'


def _write_one(job) -> str:
    out_dir, seed, domain, width, height, depth_format = job
    return write_frame(out_dir, render_frame(seed, domain, width, height), depth_format)


def write_frames(out_dir, seeds, domain: str = 'synthetic', width: int = 256, height: int = 192,
                 depth_format: str = 'png16', progress: bool = False, workers: int = 1) -> Path:
    """Render and write the frames of ``seeds``; returns the list file's path. ``workers`` > 1
    renders in that many processes (every frame depends on its seed alone, so the files are
    the same; the list keeps the seeds' order)."""
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f'depth_format must be one of {DEPTH_FORMATS}')
    out_dir = Path(out_dir)
    (out_dir / 'rgb').mkdir(parents=True, exist_ok=True)
    if depth_format != 'none':
        (out_dir / 'depth').mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    jobs = [(out_dir, s, domain, width, height, depth_format) for s in seeds]
    if int(workers) > 1:
        import multiprocessing
        with multiprocessing.get_context('spawn').Pool(int(workers)) as pool:
            results = pool.imap(_write_one, jobs, chunksize=32)
            if progress:
                from tqdm import tqdm
                results = tqdm(results, total=len(jobs), desc=f'{domain} frames', unit='frame')
            lines = list(results)
    else:
        iterator = jobs
        if progress:
            from tqdm import tqdm
            iterator = tqdm(jobs, desc=f'{domain} frames', unit='frame')
        lines = [_write_one(job) for job in iterator]
    list_path = out_dir / LIST_FILE
    list_path.write_text('\n'.join(lines) + '\n')
    (out_dir / 'meta.json').write_text(json.dumps({
        'generator': 'fiffdepth_ros.training.data.procedural', 'version': GENERATOR_VERSION,
        'domain': domain, 'width': width, 'height': height, 'depth_format': depth_format,
        'depth_unit': {'png16': 'mm', 'npy': 'm', 'none': None}[depth_format],
        'seeds': [seeds[0], seeds[-1]] if seeds else [], 'count': len(seeds)}, indent=2))
    return list_path


def read_frames(list_path):
    """Read back a folder written by ``write_frames``: yields (rgb, depth in metres with inf
    for invalid, or None for an images-only folder, K) per list line."""
    list_path = Path(list_path)
    root = list_path.parent
    for line in list_path.read_text().splitlines():
        if not line.strip():
            continue
        fields = line.split()
        rgb_rel, depth_rel = fields[0], (fields[1] if len(fields) == 6 else None)
        fx, fy, cx, cy = fields[-4:]
        bgr = cv2.imread(str(root / rgb_rel), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f'cannot read {root / rgb_rel}')
        if depth_rel is None:
            depth = None
        elif depth_rel.endswith('.npy'):
            depth = np.load(root / depth_rel)
        else:
            mm = cv2.imread(str(root / depth_rel), cv2.IMREAD_UNCHANGED)
            if mm is None:
                raise OSError(f'cannot read {root / depth_rel}')
            depth = np.where(mm > 0, mm.astype(np.float32) / 1000.0, np.inf).astype(np.float32)
        K = np.array([[float(fx), 0, float(cx)], [0, float(fy), float(cy)], [0, 0, 1]])
        yield bgr[..., ::-1].copy(), depth, K


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m fiffdepth_ros.training.data.procedural',
        description='Write procedural RGB-D frames with exact depth to a folder with a list file.')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--count', type=int, required=True, help='number of frames')
    parser.add_argument('--domain', choices=DOMAINS, default='synthetic')
    parser.add_argument('--seed-start', type=int, default=0, help='first seed')
    parser.add_argument('--width', type=int, default=256)
    parser.add_argument('--height', type=int, default=192)
    parser.add_argument('--depth-format', choices=DEPTH_FORMATS, default='png16')
    parser.add_argument('--held-out', action='store_true',
                        help='seeds count from the held-out range (validation / benchmarks)')
    parser.add_argument('--workers', type=int, default=1,
                        help='render in this many processes (same files, same list order)')
    args = parser.parse_args(argv)
    try:
        seeds = (held_out_seeds(args.count, args.seed_start) if args.held_out
                 else training_seeds(args.seed_start, args.count))
    except ValueError as exc:
        parser.error(str(exc))
    path = write_frames(args.out, seeds, args.domain, args.width, args.height,
                        args.depth_format, progress=True, workers=args.workers)
    print(f'wrote {len(seeds)} {args.domain} frames, list file {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
