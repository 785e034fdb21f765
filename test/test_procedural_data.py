"""Procedural training frames: determinism, exact depth, intrinsics, domains, seeds, files."""
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiffdepth_ros.training.data import procedural as P

ROOT = Path(__file__).resolve().parents[1]
W, H = 64, 48


def _digest(frame) -> str:
    return hashlib.sha256(frame.rgb.tobytes() + frame.depth.tobytes()).hexdigest()


# ------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_bytes_even_in_a_fresh_process():
    a = P.render_frame(11, 'real', W, H)
    P.render_frame(12, 'synthetic', W, H)              # no state carries between frames
    b = P.render_frame(11, 'real', W, H)
    assert _digest(a) == _digest(b)
    assert np.array_equal(a.valid, b.valid) and np.array_equal(a.K, b.K)
    code = ('import hashlib; from fiffdepth_ros.training.data import procedural as P;'
            f'f = P.render_frame(11, "real", {W}, {H});'
            'print(hashlib.sha256(f.rgb.tobytes() + f.depth.tobytes()).hexdigest())')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(a)


def test_different_seeds_and_domains_differ():
    digests = {_digest(P.render_frame(s, d, W, H)) for s in range(4) for d in P.DOMAINS}
    assert len(digests) == 8


def test_scene_layout_does_not_depend_on_image_size():
    small, big = P.render_frame(5, 'synthetic', 32, 24), P.render_frame(5, 'synthetic', 64, 48)
    assert small.kind == big.kind
    assert np.allclose(small.camera.position, big.camera.position)
    assert np.allclose(small.camera.R, big.camera.R)
    assert np.isclose(small.K[0, 0] / 32, big.K[0, 0] / 64)      # same field of view


def test_all_scene_kinds_occur_with_varied_cameras():
    frames = [P.render_frame(s, 'synthetic', 32, 24) for s in range(24)]
    assert {f.kind for f in frames} == set(P.SCENE_KINDS)
    hfov = np.degrees(2 * np.arctan(32 / 2 / np.array([f.K[0, 0] for f in frames])))
    assert hfov.min() >= 45 - 1e-6 and hfov.max() <= 100 + 1e-6 and np.ptp(hfov) > 20
    heights = np.array([f.camera.position[2] for f in frames])
    assert np.ptp(heights) > 0.8
    for f in frames:
        assert f.rgb.shape == (24, 32, 3) and f.rgb.dtype == np.uint8
        assert f.depth.shape == (24, 32) and f.depth.dtype == np.float32
        assert f.valid.dtype == bool and f.K.shape == (3, 3)


# ------------------------------------------------------------------ exact geometry
def _surface_distance(prim, p):
    """Distance of points p (N, 3) to the primitive's surface, from its parameters alone."""
    if isinstance(prim, P.Plane):
        return np.abs(p @ prim.n - prim.c)
    if isinstance(prim, P.Sphere):
        return np.abs(np.linalg.norm(p - prim.c, axis=1) - prim.r)
    if isinstance(prim, P.Box):
        q = np.abs((p - prim.c) @ prim.R) - prim.h          # local coordinates, folded
        return np.abs(q.max(axis=1))                         # on the surface: the max is 0
    if isinstance(prim, P.Cylinder):
        rel = p - prim.c
        s = rel @ prim.a
        radial = np.linalg.norm(rel - np.outer(s, prim.a), axis=1)
        return np.abs(np.maximum(radial - prim.r, np.abs(s) - prim.hl))
    raise TypeError(prim)


def _back_project(frame):
    """World points of all pixels from depth and K alone (the intrinsics' contract)."""
    h, w = frame.depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)
    depth = frame.depth.reshape(-1).astype(np.float64)
    cam = (np.linalg.inv(frame.K) @ pix.T) * np.where(np.isfinite(depth), depth, np.nan)
    return (frame.camera.R @ cam).T + frame.camera.position     # NaN where no surface


@pytest.mark.parametrize('seed', [0, 1, 2, 3, 4, 5])
def test_back_projected_pixels_lie_on_the_primitive_they_show(seed):
    frame = P.render_frame(seed, 'synthetic' if seed % 2 else 'real', 80, 60)
    points = _back_project(frame)
    ids = frame.ids.reshape(-1)
    depth = frame.depth.reshape(-1).astype(np.float64)
    prims = frame.scene.primitives
    checked = 0
    for k in np.unique(ids[ids >= 0]):
        sel = (ids == k) & (depth < 60.0)
        if sel.any():
            err = _surface_distance(prims[k], points[sel])
            assert err.max() <= 1e-4 + 2e-6 * depth[sel].max(), (k, type(prims[k]), err.max())
            checked += sel.sum()
    assert checked > 0.5 * ids.size
    # Nothing the ray passes first: no primitive is hit closer along any checked ray.
    dirs = frame.camera.ray_directions()
    for prim in prims:
        t = prim.intersect(frame.camera.position, dirs)
        finite = np.isfinite(depth)
        assert np.all(t[finite] >= depth[finite] * (1 - 1e-6) - 1e-9)
        assert np.all(np.isinf(t[~finite]))                  # sky: nothing on the ray


def test_sky_is_inf_and_invalid_and_far_surfaces_are_not_targets():
    frames = [P.render_frame(s, 'synthetic', 48, 36) for s in range(30)]
    outdoor = [f for f in frames if f.kind == 'outdoor']
    assert outdoor
    sky = np.concatenate([(f.ids == -1).ravel() for f in outdoor])
    depth = np.concatenate([f.depth.ravel() for f in outdoor])
    valid = np.concatenate([f.valid.ravel() for f in outdoor])
    assert sky.any() and np.all(np.isinf(depth[sky])) and not valid[sky].any()
    assert np.all(depth[valid] <= P.MAX_VALID_DEPTH) and np.all(depth[valid] > 0)
    assert np.array_equal(valid, np.isfinite(depth) & (depth <= P.MAX_VALID_DEPTH))
    indoor = [f for f in frames if f.kind != 'outdoor']
    assert all(f.valid.all() for f in indoor)                 # closed rooms: every ray hits


def _camera(width=65, height=49, f=50.0, position=(0.0, 0.0, 1.0), yaw=0.0, pitch=0.0):
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
    return P.Camera(K, P.look_rotation(yaw, pitch, 0.0), np.array(position, float), width,
                    height)


def _scene(planes, objects, kind='room'):
    return P.Scene(kind, planes, objects, np.array([0.3, 0.2, 0.9]) / np.linalg.norm(
        [0.3, 0.2, 0.9]), False, np.zeros(3), (0.0, 0.0, 0.0), list(range(len(objects))))


def test_box_in_front_of_a_wall_gives_the_box_depth():
    cam = _camera()                                   # at (0, 0, 1) looking along world +x
    wall = P.Plane([-1, 0, 0], -5.0)                  # x = 5, facing the camera
    box = P.Box([3.0, 0.0, 1.0], [0.25, 0.3, 0.2])    # front face at x = 2.75
    frame = P.render_scene(_scene([wall], [box]), cam)
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    x_cam = (u - cam.K[0, 2]) / cam.K[0, 0]           # right = world -y, down = world -z
    y_cam = (v - cam.K[1, 2]) / cam.K[1, 1]
    # Pixels whose ray meets the front face's rectangle see the box, the others the wall.
    on_front = (np.abs(-x_cam * 2.75) <= 0.3) & (np.abs(-y_cam * 2.75) <= 0.2)
    assert on_front.sum() > 20
    assert np.allclose(frame.depth[on_front], 2.75, atol=1e-5)
    wall_only = ~on_front & ((np.abs(x_cam * 3.25) > 0.3) | (np.abs(y_cam * 3.25) > 0.2))
    assert np.allclose(frame.depth[wall_only], 5.0, atol=1e-5)
    assert np.all(frame.ids[on_front] == 1) and np.all(frame.ids[wall_only] == 0)


def test_sphere_nearest_point_and_ground_plane_formula():
    cam = _camera(position=(0.0, 0.0, 1.5))
    ground = P.Plane([0, 0, 1], 0.0)
    sphere = P.Sphere([4.0, 0.0, 1.5], 0.5)          # centred on the optical axis
    frame = P.render_scene(_scene([ground], [sphere], 'outdoor'), cam)
    cy, cx = (cam.height - 1) // 2, (cam.width - 1) // 2
    assert frame.depth[cy, cx] == pytest.approx(3.5, abs=1e-6)       # D - r
    assert frame.depth[cy, cx] == frame.depth[frame.ids == 1].min()
    # Ground rows below the sphere: z = h f / (v - cy) for a level camera at height h.
    for v in range(cy + 15, cam.height):
        expected = 1.5 * cam.K[1, 1] / (v - cam.K[1, 2])
        assert frame.depth[v, 2] == pytest.approx(expected, rel=1e-6)
        assert frame.ids[v, 2] == 0
    # The horizon row and above are sky, except where the sphere is.
    sky = frame.ids[:cy + 1, :3]
    assert np.all(sky == -1) and np.all(np.isinf(frame.depth[:cy + 1, :3]))


def test_thin_cylinder_is_seen_and_shadows_darken_the_ground():
    cam = _camera(position=(0.0, 0.0, 1.5), pitch=np.radians(-20))
    ground = P.Plane([0, 0, 1], 0.0)
    pole = P.Cylinder([4.0, 0.0, 1.0], [0, 0, 1], 0.03, 1.0)
    ball = P.Sphere([3.0, 1.0, 1.2], 0.4)
    sun = np.array([-0.5, 0.0, 0.8]) / np.linalg.norm([-0.5, 0.0, 0.8])
    scene = P.Scene('outdoor', [ground], [pole, ball], sun, False, np.zeros(3),
                    (0.0, 0.0, 0.0), [0, 1])
    frame = P.render_scene(scene, cam, texture_rng=np.random.default_rng(3))
    assert (frame.ids == 1).any()                     # a 6 cm pole at 4 m covers pixels
    # Ground points whose ray to the sun meets the ball are in shadow: darker than the rest.
    points = _back_project(frame)
    on_ground = frame.ids.reshape(-1) == 0
    t = ball.intersect(points[on_ground].T.copy(), np.repeat(sun[:, None], on_ground.sum(), 1))
    shadowed = np.isfinite(t)
    grey = frame.rgb.reshape(-1, 3)[on_ground].astype(float).mean(axis=1)
    assert shadowed.sum() > 5
    assert grey[shadowed].mean() < 0.8 * grey[~shadowed].mean()


# --------------------------------------------------------------------------- domains
def _saturation(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].astype(float) / 255


def _noise_level(rgb):
    """Median absolute Laplacian of the grey image: sensor noise and JPEG raise it on flat
    areas, where a clean render has none."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.median(np.abs(cv2.Laplacian(grey, cv2.CV_32F))))


def test_the_two_domains_look_measurably_different():
    seeds = range(12)
    syn = [P.render_frame(s, 'synthetic', 96, 72).rgb for s in seeds]
    real = [P.render_frame(s, 'real', 96, 72).rgb for s in seeds]
    sat_syn = np.mean([_saturation(x).mean() for x in syn])
    sat_real = np.mean([_saturation(x).mean() for x in real])
    assert sat_syn > 1.5 * sat_real, (sat_syn, sat_real)
    assert np.median([_noise_level(x) for x in real]) > np.median([_noise_level(x) for x in syn])


# ----------------------------------------------------------------------------- seeds
def test_held_out_seeds_are_rejected_for_training():
    assert list(P.training_seeds(10, 3)) == [10, 11, 12]
    assert P.training_seeds(P.TRAIN_SEEDS.stop - 5, 5)[-1] == P.TRAIN_SEEDS.stop - 1
    with pytest.raises(ValueError, match='held out'):
        P.training_seeds(P.TRAIN_SEEDS.stop - 5, 6)
    with pytest.raises(ValueError, match='held out'):
        P.training_seeds(P.HELD_OUT_SEEDS.start + 3, 1)
    with pytest.raises(ValueError):
        P.training_seeds(-1, 2)
    held = P.held_out_seeds(200)
    assert len(held) == 200 and held[0] in P.HELD_OUT_SEEDS and held[-1] in P.HELD_OUT_SEEDS
    assert not set(held) & set(P.TRAIN_SEEDS)
    with pytest.raises(SystemExit):                   # the CLI refuses them too
        P.main(['--out', '/nonexistent', '--count', '2', '--seed-start',
                str(P.HELD_OUT_SEEDS.start)])


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize('depth_format', ['png16', 'npy'])
def test_written_frames_round_trip(tmp_path, depth_format):
    seeds = [3, 4, 5]
    list_path = P.write_frames(tmp_path, seeds, 'synthetic', W, H, depth_format)
    lines = list_path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith('rgb/00000003.png depth/00000003.')
    for (rgb, depth, K), seed in zip(P.read_frames(list_path), seeds):
        ref = P.render_frame(seed, 'synthetic', W, H)
        assert np.array_equal(rgb, ref.rgb)
        assert np.allclose(K, ref.K, atol=1e-6)
        expected_valid = ref.valid & (ref.depth <= 65.535 if depth_format == 'png16' else True)
        assert np.array_equal(np.isfinite(depth), expected_valid)
        ok = np.isfinite(depth)
        # PNG: half a millimetre of rounding plus float32 rounding; npy: exact.
        tol = 0.0 if depth_format == 'npy' else 0.0005 + 1e-5
        assert np.abs(depth[ok] - ref.depth[ok]).max() <= tol
    if depth_format == 'png16':
        mm = cv2.imread(str(tmp_path / 'depth' / '00000003.png'), cv2.IMREAD_UNCHANGED)
        assert mm.dtype == np.uint16 and mm.shape == (H, W)


def test_images_only_folder_for_the_real_like_domain(tmp_path):
    list_path = P.write_frames(tmp_path, [30, 31], 'real', W, H, depth_format='none')
    assert not (tmp_path / 'depth').exists()
    lines = list_path.read_text().splitlines()
    assert [len(line.split()) for line in lines] == [5, 5]
    (rgb, depth, K), _ = list(P.read_frames(list_path))
    ref = P.render_frame(30, 'real', W, H)
    assert depth is None and np.array_equal(rgb, ref.rgb) and np.allclose(K, ref.K, atol=1e-6)


def test_the_trainers_rgbd_folder_reader_reads_the_written_folder(tmp_path):
    from fiffdepth_ros.training.data.factory import build_synthetic
    P.write_frames(tmp_path, [40, 41], 'synthetic', W, H)
    dataset = build_synthetic({'kind': 'rgbd_folder', 'dir': str(tmp_path),
                               'filenames': str(tmp_path / P.LIST_FILE)})
    dataset.check_files()
    assert len(dataset) == 2
    sample = dataset.load(1)
    ref = P.render_frame(41, 'synthetic', W, H)
    rgb = ((sample['rgb'].permute(1, 2, 0).numpy() + 1.0) * 127.5).round()
    assert np.array_equal(rgb.astype(np.uint8), ref.rgb)
    depth, valid = sample['depth'][0].numpy(), sample['valid'][0].numpy()
    assert np.array_equal(valid, ref.valid & (ref.depth <= 65.535))
    assert np.abs(depth[valid] - ref.depth[valid]).max() <= 0.0005 + 1e-5


def test_cli_writes_a_folder(tmp_path, capsys):
    assert P.main(['--out', str(tmp_path), '--count', '2', '--domain', 'real',
                   '--seed-start', '7', '--width', '40', '--height', '30']) == 0
    assert sorted(p.name for p in (tmp_path / 'rgb').iterdir()) == ['00000007.png',
                                                                   '00000008.png']
    rgb = cv2.imread(str(tmp_path / 'rgb' / '00000008.png'))[..., ::-1]
    assert np.array_equal(rgb, P.render_frame(8, 'real', 40, 30).rgb)
    assert 'wrote 2 real frames' in capsys.readouterr().out


def test_rendering_in_several_processes_writes_the_same_folder(tmp_path):
    """--workers N: each frame depends on its seed alone, so N processes write the same files
    and the list keeps the seeds' order."""
    one = P.write_frames(tmp_path / 'one', range(50, 56), 'synthetic', 40, 30)
    two = P.write_frames(tmp_path / 'two', range(50, 56), 'synthetic', 40, 30, workers=2)
    assert one.read_text() == two.read_text()
    for sub in ('rgb', 'depth'):
        names = sorted(p.name for p in (tmp_path / 'one' / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / 'two' / sub).iterdir())
        for name in names:
            assert (tmp_path / 'one' / sub / name).read_bytes() == \
                (tmp_path / 'two' / sub / name).read_bytes()
