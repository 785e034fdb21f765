"""The local correction's compiled grid stage (scale._compiled, numba) against the numpy /
OpenCV reference it replaces: each kernel against the OpenCV call it stands for, each field
against ``_Fields.build`` on the numpy path, and whole corrections with the switch off and on.
Float32 rounding is the only allowed difference (OpenCV sums in another order)."""
import cv2
import numpy as np
import pytest

from fiffdepth_ros.scale import _compiled, local_correction as lc

pytestmark = pytest.mark.skipif(_compiled.numba is None, reason='numba is not installed')

H, W = 240, 320


@pytest.fixture
def numpy_path(monkeypatch):
    """A callable that runs ``fn`` with the compiled stage switched off."""
    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(_compiled, 'ENABLED', False)
            return fn(*args, **kwargs)
    return run


@pytest.mark.parametrize('shape', [(2, 8, 12, 5), (2, 32, 40, 22), (2, 4, 6, 1)])
def test_pool_and_unpool_match_opencv_resize(shape):
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    pooled = np.empty((shape[0], shape[1] // 2, shape[2] // 2, shape[3]), np.float32)
    _compiled._pool2(a, pooled)
    np.testing.assert_allclose(pooled, lc._pool2(a), rtol=1e-6, atol=1e-7)
    up = _compiled._unpool2(a)
    for plane, got in zip(a, up):
        np.testing.assert_allclose(got, lc._unpool2(np.ascontiguousarray(plane)), rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize('sigma', [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize('shape', [(8, 12, 22), (32, 40, 3), (4, 5, 7)])
def test_blur_matches_sepfilter2d_with_zero_border(sigma, shape):
    a = np.random.default_rng(1).uniform(0, 1, (2, *shape)).astype(np.float32)
    k = lc._gaussian(sigma)
    tmp, out = np.empty_like(a[0]), np.empty_like(a)
    padded = _compiled.kernels_for([sigma, 8 * sigma], [0, 0], lc._gaussian)[0]
    assert len(padded) > len(k)              # the zero padding is skipped, not summed
    _compiled._blur(a, padded, tmp, out)
    for plane, got in zip(a, out):
        ref = cv2.sepFilter2D(plane, -1, k, k, borderType=cv2.BORDER_CONSTANT).reshape(shape)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('channels', [5, 22, 51])
def test_range_blur_matches_the_reference(channels):
    nd = np.random.default_rng(2).uniform(0, 1, (2, 6, 7, channels)).astype(np.float32)
    np.testing.assert_allclose(_compiled._range_blur(nd, lc._RANGE_KERNEL), lc._range_blur(nd),
                               rtol=1e-6, atol=1e-7)


def _fields(nearest, bilateral, cell, ratio, n=500, seed=3):
    opts = lc.LocalCorrectionOptions()
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, H, n), rng.integers(0, W, n)
    axis = bins = None
    if bilateral:
        axis = lc._RangeAxis(0.2, 1.9, opts, -(-W // opts.cell))
        bins = axis.locate(rng.uniform(0.2, 1.9, n))
    fields = lc._Fields((H, W), opts, cell, rows, cols, axis, bins, nearest=nearest,
                        ratio=ratio)
    v = rng.normal(0.0, 0.1, n)
    w = rng.uniform(0.0, 2.0, n)
    w[::9] = 0.0
    fields.rows_cols = rows, cols
    return fields, v, w


@pytest.mark.parametrize('nearest,bilateral,cell,ratio', [
    (True, True, 64, 4.0),                  # the judging grid
    (False, True, 16, 2.0),                 # the interpolation grid, sparse anchors
    (True, True, 16, 2.0),                  # dense anchors
    (False, False, 16, 2.0),                # not edge aware
    (True, False, 64, 4.0),
])
@pytest.mark.parametrize('exclusive,prior', [(False, 0.0), (True, 0.5), (True, 0.0)])
def test_compiled_field_matches_the_numpy_build(numpy_path, nearest, bilateral, cell, ratio,
                                                exclusive, prior):
    fields, v, w = _fields(nearest, bilateral, cell, ratio)
    ref = numpy_path(fields.build, v, w, 3.0, exclusive, prior)
    got = fields.build(v, w, 3.0, exclusive, prior)
    assert got.shape == ref.shape and got.dtype == np.float32
    bins = fields.grid.bins
    used = (slice(None),) * 3 + (slice(0, bins) if bilateral else slice(None),)
    assert np.abs(ref[used]).max() > 1e-3             # a field, not zeros on both sides
    np.testing.assert_allclose(got[used], ref[used], rtol=2e-5, atol=2e-6)
    ref_at = fields.sample_planes(ref)                # numpy (the judging rounds' kernel:)
    wts = fields.corners[1]
    got_at = _compiled.sample_planes(got, fields.index, lc._NO_WEIGHTS if wts is None else wts)
    np.testing.assert_allclose(got_at, ref_at, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(fields.sample(got), numpy_path(fields.sample, ref), rtol=2e-5,
                               atol=2e-6)


def test_build_together_on_the_numpy_path_equals_separate_compiled_builds(numpy_path):
    opts = lc.LocalCorrectionOptions()
    a, v, w = _fields(True, True, 64, 4.0, seed=4)
    rng = np.random.default_rng(5)
    axis = lc._RangeAxis(0.0, 3.0, opts, -(-W // opts.cell))
    b = lc._Fields((H, W), opts, 64, *a.rows_cols, axis,
                   axis.locate(rng.uniform(0.0, 3.0, len(v))), nearest=True, ratio=4.0)
    assert a.grid.bins != b.grid.bins
    together = numpy_path(lc._Fields.build_together, [a, b], v, w, opts.min_support)
    apart = lc._Fields.build_together([a, b], v, w, opts.min_support)
    for f, x, y in zip((a, b), together, apart):
        k = f.grid.bins
        np.testing.assert_allclose(y[..., :k], x[..., :k], rtol=2e-5, atol=2e-6)


def _frame(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = 3.0 + 0.004 * xx + 0.003 * yy
    truth[80:180, 100:200] = 1.5
    aligned = truth * np.exp(0.15 * np.sin(xx / 60.0) * np.cos(yy / 45.0))
    image = np.clip(rng.normal(120, 30, (H, W, 3)), 0, 255).astype(np.uint8)
    image[80:180, 100:200] = (200, 40, 40)
    return truth.astype(np.float32), aligned.astype(np.float32), image


@pytest.mark.parametrize('guide', ['depth', 'image', 'both'])
@pytest.mark.parametrize('n', [60, 900, 6000])
def test_local_correction_is_the_same_with_and_without_the_compiled_stage(numpy_path, guide,
                                                                          n):
    truth, aligned, image = _frame()
    rng = np.random.default_rng(n)
    idx = rng.choice(H * W, n, replace=False)
    rows, cols = idx // W, idx % W
    z = truth[rows, cols].astype(np.float64)
    z[::4] *= 1.8                                     # corrupted: the judging has work to do
    opts = lc.LocalCorrectionOptions(guide=guide)
    ref = numpy_path(lc.local_correction, aligned, rows, cols, z, options=opts, image=image)
    got = lc.local_correction(aligned, rows, cols, z, options=opts, image=image)
    assert (ref.weights == 0).sum() > n // 10         # the corrupted anchors were judged
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-5)
    np.testing.assert_allclose(got.depth, ref.depth, rtol=2e-5)
    assert np.abs(got.depth / aligned - 1).max() > 0.05     # a correction happened


def test_switch_from_the_environment(tmp_path):
    """FIFFDEPTH_NUMBA=0 selects the numpy path in a fresh process."""
    import subprocess
    import sys
    code = 'from fiffdepth_ros.scale import _compiled; print(_compiled.ENABLED)'
    env = {**__import__('os').environ, 'FIFFDEPTH_NUMBA': '0'}
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == 'False'


def test_warm_up_compiles_what_a_frame_uses(tmp_path):
    """After ScaleRecovery's warm-up a real frame (any guide, sparse or dense anchors) calls
    only what is compiled: no compile stalls the first frame (no kernel gains a signature)."""
    import subprocess
    import sys
    code = '''
import numpy as np
from fiffdepth_ros.scale import _compiled, local_correction as lc
from fiffdepth_ros.scale.fit import apply_fit, fit_scale_shift
from fiffdepth_ros.scale.recovery import ScaleRecovery
ScaleRecovery()
kernels = {name: k for name, k in vars(_compiled).items() if hasattr(k, 'signatures')}
before = {name: len(k.signatures) for name, k in kernels.items()}
rng = np.random.default_rng(1)
rel = rng.uniform(0.2, 1.0, (480, 640)).astype(np.float32)
image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
for n in (80, 20000):
    idx = rng.choice(rel.size, n, replace=False)
    z = 0.5 + 3.0 * rel.ravel()[idx] * rng.uniform(0.9, 1.1, n)
    f = fit_scale_shift(rel.ravel()[idx], z)
    aligned = apply_fit(rel, f.scale, f.shift, 'depth')
    for guide in lc.GUIDES:
        lc.local_correction(aligned, idx // 640, idx % 640, z,
                            options=lc.LocalCorrectionOptions(guide=guide), image=image)
        lc.corrected_fit(rel, f.scale, f.shift, 'depth', idx // 640, idx % 640, z,
                         options=lc.LocalCorrectionOptions(guide=guide), image=image,
                         depth_range=(0.5, 3.0))
after = {name: len(k.signatures) for name, k in kernels.items()}
print(sorted(n for n in kernels if after[n] > before[n]), before['build_field'],
      before['judge_rounds'], before['slice_grid'], before['irls'],
      before['up2_multiply_affine'])
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == '[] 1 1 1 1 1'


@pytest.mark.parametrize('bilateral', [True, False])
@pytest.mark.parametrize('shape', [(480, 640), (243, 331)])
def test_compiled_slice_matches_the_remap_read(numpy_path, bilateral, shape):
    """The dense read at half resolution: guide values inside, below and above the axis and
    NaN (invalid depth), grids whose cells do not divide the image."""
    h, w = shape
    opts = lc.LocalCorrectionOptions()
    rng = np.random.default_rng(7)
    axis = lc._RangeAxis(0.0, 2.0, opts, -(-w // opts.cell)) if bilateral else None
    grid = lc._Grid(h, w, opts.cell, opts.base_sigma, axis)
    bins = grid.bins if bilateral else 1
    field = np.exp(rng.normal(0, 0.3, (grid.gh, grid.gw, bins))).astype(np.float32)
    guide = rng.uniform(-0.5, 2.5, (-(-h // 2), -(-w // 2))).astype(np.float32)
    guide[::17, ::13] = np.nan
    ref = numpy_path(lc._slice, field, grid, guide).copy()
    got = lc._slice(field, grid, guide)
    assert np.isfinite(got).all() and got.shape == guide.shape
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize('space', ['depth', 'inverse'])
@pytest.mark.parametrize('case', ['clean', 'corrupted', 'two groups', 'few'])
def test_compiled_fit_matches_the_numpy_fit(numpy_path, space, case):
    """fit_scale_shift with the compiled IRLS: the same line (both starts, the early stop at
    the other start's solution, the scale-only fallback's inputs) to its tolerance."""
    from fiffdepth_ros.scale.fit import FitOptions, fit_scale_shift
    rng = np.random.default_rng(11)
    n = {'few': 12}.get(case, 3000)
    x = rng.uniform(0.1, 1.0, n)
    z = 0.5 + 4.0 * x if space == 'depth' else 1.0 / (0.2 + 1.5 * x)
    z = z * np.exp(rng.normal(0, 0.01, n))
    if case == 'corrupted':
        z[::3] *= rng.choice([0.5, 1.8], len(z[::3]))
    elif case == 'two groups':
        z[: n // 3] *= 2.2                         # a third seen through an edge
    opts = FitOptions(space=space)
    ref = numpy_path(fit_scale_shift, x, z, None, opts)
    got = fit_scale_shift(x, z, None, opts)
    assert got.status == ref.status and ref.status == 'fitted'
    np.testing.assert_allclose([got.scale, got.shift], [ref.scale, ref.shift], rtol=1e-9,
                               atol=1e-12)
    assert (got.inliers == ref.inliers).all()


@pytest.mark.parametrize('space', ['depth', 'inverse'])
def test_compiled_fit_problem_and_scores_match_the_numpy_ones(numpy_path, space):
    """The fit's one-pass kernels against _Problem's numpy operations: the valid anchors
    (NaN, inf, zero and negative depth or weight dropped) and their arrays bit for bit, the
    x extent, and for lines that leave some fits negative (weight 0, never an inlier) the
    Tukey loss, the count of kept anchors, the inliers and their RMS error."""
    from fiffdepth_ros.scale.fit import FitOptions, _Problem
    rng = np.random.default_rng(21)
    n = 500
    x = rng.uniform(-0.2, 1.0, n)
    z = np.exp(rng.normal(0.5, 0.5, n))
    w = rng.uniform(10.0, 1e4, n)
    x[3], z[4], z[5], w[6], w[7], x[8], z[9] = np.nan, 0.0, -1.0, 0.0, np.inf, np.inf, np.nan
    opts = FitOptions(space=space)
    ref_valid, ref, ref_extent = numpy_path(_Problem.of_valid, x, z, w, opts)
    valid, got, extent = _Problem.of_valid(x, z, w, opts)
    np.testing.assert_array_equal(valid, ref_valid)
    assert 0 < valid.sum() < n
    for name in ('x', 'z', 'y', 'inv_var', 'cutoff'):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert extent == ref_extent
    for s, t in ((1.5, 0.2), (-2.0, 0.5), (0.8, -0.3)):
        (loss, kept), (ref_loss, ref_kept) = got.loss(s, t), numpy_path(ref.loss, s, t)
        assert kept == ref_kept and 0 < kept < valid.sum()
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        mask, rms = got.inliers_and_residual(s, t)
        ref_mask, ref_rms = numpy_path(ref.inliers_and_residual, s, t)
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_allclose(rms, ref_rms, rtol=1e-12)
    mask, rms = got.inliers_and_residual(1e-9, -5.0)           # every fit negative
    assert not mask.any() and np.isnan(rms)
    none_valid, empty, _ = _Problem.of_valid(x[:1] * np.nan, z[:1], w[:1], opts)
    assert not none_valid.any() and len(empty.x) == 0


def test_fit_of_read_only_and_strided_anchors_compiles_nothing_new():
    """Anchors in a read-only buffer (a message's) or a strided view (a field of a point
    array) give the same fit, without a new specialisation of the fit's kernels (a compile
    that would stall that frame)."""
    from fiffdepth_ros.scale.fit import fit_scale_shift
    rng = np.random.default_rng(22)
    x = rng.uniform(0.1, 1.0, 400)
    z = (0.5 + 2.0 * x) * np.exp(rng.normal(0, 0.01, 400))
    ref = fit_scale_shift(x, z)
    kernels = (_compiled.fit_problem, _compiled.tukey_loss, _compiled.inliers_and_residual)
    before = [len(k.signatures) for k in kernels]
    frozen = np.frombuffer(z.tobytes(), np.float64)
    assert not frozen.flags.writeable
    points = np.stack([x, z], 1)                 # x and z as strided columns
    for got in (fit_scale_shift(x, frozen), fit_scale_shift(points[:, 0], points[:, 1])):
        assert (got.scale, got.shift) == (ref.scale, ref.shift)
    assert [len(k.signatures) for k in kernels] == before


@pytest.mark.parametrize('space', ['depth', 'inverse'])
def test_up2_multiply_affine_is_the_map_then_the_product_then_the_range(space):
    """The fused final pass: bit for bit the affine map (NaN, inf, non-positive fits
    invalid), the 2x upsampled product and NaN outside the range, done one after another."""
    from fiffdepth_ros.scale.fit import apply_fit, clip_range
    rng = np.random.default_rng(23)
    rel = rng.uniform(-0.1, 1.0, (48, 64)).astype(np.float32)
    rel[3, 4], rel[5, 6] = np.nan, np.inf
    half = np.exp(rng.normal(0, 0.3, (24, 32))).astype(np.float32)
    scale, shift, lo, hi = np.float32(2.5), np.float32(0.2), np.float32(0.4), np.float32(2.0)
    aligned = apply_fit(rel, scale, shift, space)
    ref = np.empty_like(aligned)
    _compiled.up2_multiply(half, aligned, ref)
    clip_range(ref, lo, hi)
    got = np.empty_like(ref)
    _compiled.up2_multiply_affine(half, rel, scale, shift, space == 'inverse', lo, hi, got)
    np.testing.assert_array_equal(got, ref)
    valid = np.isfinite(got)
    assert 0.3 < valid.mean() < 0.95 and np.isnan(got[3, 4])


@pytest.mark.parametrize('compiled', [True, False])
@pytest.mark.parametrize('shape', [(240, 320), (243, 331)])
@pytest.mark.parametrize('space', ['depth', 'inverse'])
def test_corrected_fit_is_apply_fit_then_the_correction_then_the_range(numpy_path, compiled,
                                                                       shape, space):
    """corrected_fit (what ScaleRecovery runs) equals its three steps one after another,
    bit for bit: the affine map stored, local_correction on it (guide 'both', with an
    image), NaN outside the range; on the compiled path at even sizes (the fused pass) and
    odd ones, and on the numpy path. Some pixels fall outside the range, some relative
    values are invalid."""
    from fiffdepth_ros.scale.fit import apply_fit, clip_range
    h, w = shape
    rng = np.random.default_rng(24)
    yy, xx = np.mgrid[0:h, 0:w]
    rel = (0.3 + 0.5 * xx / w + 0.1 * (yy > h // 2)).astype(np.float32)
    rel[::37, ::29] = np.nan
    scale, shift = (3.0, 0.2) if space == 'depth' else (1.5, 0.1)
    truth = apply_fit(rel, scale, shift, space) * np.exp(0.2 * np.sin(xx / 40.0))
    idx = rng.choice(h * w, 400, replace=False)
    rows, cols = idx // w, idx % w
    z = truth[rows, cols].astype(np.float64)
    ok = np.isfinite(z)
    rows, cols, z = rows[ok], cols[ok], z[ok]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    opts = lc.LocalCorrectionOptions(guide='both')
    lo, hi = np.nanpercentile(truth, [5, 95])

    def steps():
        aligned = apply_fit(rel, scale, shift, space)
        out = lc.local_correction(aligned, rows, cols, z, None, opts, image=image, out=aligned)
        return clip_range(out.depth, lo, hi), out.weights

    def fused():
        out = lc.corrected_fit(rel, scale, shift, space, rows, cols, z, None, opts, image=image,
                               depth_range=(lo, hi))
        return out.depth, out.weights

    run = (lambda f: f()) if compiled else numpy_path
    (ref, ref_w), (got, got_w) = run(steps), run(fused)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_w, ref_w)
    inside = np.isfinite(apply_fit(rel, scale, shift, space))
    assert 0.05 < np.isnan(got[inside]).mean() < 0.3        # the range clipped some pixels
    assert not np.allclose(got[np.isfinite(got)],
                           apply_fit(rel, scale, shift, space)[np.isfinite(got)])  # corrected


@pytest.mark.parametrize('space', ['depth', 'inverse'])
def test_compiled_affine_map_is_the_numpy_one_bit_for_bit(numpy_path, space):
    from fiffdepth_ros.scale.fit import apply_fit
    rng = np.random.default_rng(12)
    rel = rng.uniform(-0.2, 1.0, (61, 83)).astype(np.float32)
    rel[3, 4], rel[5, 6], rel[7, 8] = np.nan, np.inf, 3e38
    for scale, shift in ((2.5, 0.3), (-1.0, 0.5), (1e38, 1.0)):
        ref = numpy_path(apply_fit, rel, scale, shift, space)
        got = apply_fit(rel, scale, shift, space)
        np.testing.assert_array_equal(got, ref)       # NaN where the reference has NaN too
        assert np.isnan(got).any() and np.isfinite(got).any()


@pytest.mark.parametrize('nearest', [True, False])
@pytest.mark.parametrize('bilateral', [True, False])
def test_compiled_corners_match_the_numpy_ones(numpy_path, nearest, bilateral):
    """Indices and weights of the anchors' grid corners, including anchors on the image's
    last rows and columns (the clamped cells) and a grid one cell high."""
    opts = lc.LocalCorrectionOptions()
    rng = np.random.default_rng(13)
    for h, w in ((H, W), (243, 331), (10, 331)):
        rows = np.r_[rng.integers(0, h, 300), h - 1, 0, h - 1]
        cols = np.r_[rng.integers(0, w, 300), w - 1, w - 1, 0]
        axis = lc._RangeAxis(0.0, 2.0, opts, -(-w // opts.cell)) if bilateral else None
        bins = axis.locate(rng.uniform(-0.3, 2.3, len(rows))) if bilateral else None
        grid = lc._Grid(h, w, opts.cell, opts.base_sigma, axis)
        ref = numpy_path(grid.corners, rows, cols, bins, nearest)
        got = grid.corners(rows, cols, bins, nearest)
        np.testing.assert_array_equal(got[0], ref[0])
        if ref[1] is None:
            assert got[1] is None
        else:
            np.testing.assert_allclose(got[1], ref[1], rtol=1e-15, atol=1e-15)
        fields = lc._Fields((h, w), opts, opts.cell, rows, cols, axis, bins, nearest)
        ref_index = numpy_path(lambda: lc._Fields((h, w), opts, opts.cell, rows, cols, axis,
                                                  bins, nearest).index)
        np.testing.assert_array_equal(fields.index, ref_index)


def test_lu_solve_matches_numpy_and_reports_a_singular_system():
    rng = np.random.default_rng(14)
    for n in (1, 5, 131):
        a = rng.normal(size=(n, n)) + n * np.eye(n) * rng.choice([0.0, 1.0])
        a[0, 0] = 0.0 if n > 1 else a[0, 0]           # a zero on the diagonal: pivoting
        b = rng.normal(size=n)
        ok, x = _compiled.lu_solve(a, b)
        assert ok
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    a = np.ones((4, 4))                                # rank 1
    ok, _ = _compiled.lu_solve(a, np.ones(4))
    assert not ok


@pytest.mark.parametrize('n', [40, 3000])
def test_compiled_thin_plate_matches_the_numpy_one(numpy_path, n):
    """The spline base: its centres (averaged per cell beyond spline_centres) and its solve
    without BLAS; a weight-0 anchor is left out; all anchors on one line (a singular system
    without smoothing) falls back to least squares on both paths."""
    opts = lc.LocalCorrectionOptions()
    rng = np.random.default_rng(15)
    rows, cols = rng.integers(0, H, n), rng.integers(0, W, n)
    v = 0.2 * np.sin(cols / 50.0) + rng.normal(0, 0.01, n)
    weights = rng.uniform(0.2, 2.0, n)
    weights[::5] = 0.0
    grid = lc._Grid(H, W, opts.cell, opts.base_sigma)
    ref = numpy_path(lc.thin_plate_base, (H, W), rows, cols, v, weights, grid, opts)
    got = lc.thin_plate_base((H, W), rows, cols, v, weights, grid, opts)
    assert np.ptp(ref) > 0.1
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    line = lc.LocalCorrectionOptions(spline_smoothing=0.0)
    rows = np.full(8, 100)
    cols = np.arange(8) * 30
    vals = np.linspace(0, 0.2, 8)
    ref = numpy_path(lc.thin_plate_base, (H, W), rows, cols, vals, np.ones(8), grid, line)
    got = lc.thin_plate_base((H, W), rows, cols, vals, np.ones(8), grid, line)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_compiled_locate_matches_the_numpy_one(numpy_path):
    """The anchors' places on the bilateral axis, values below, inside and above it."""
    opts = lc.LocalCorrectionOptions()
    axis = lc._RangeAxis(0.3, 2.1, opts, 20)
    values = np.r_[np.random.default_rng(16).uniform(-1.0, 3.0, 500), 0.3, 2.1]
    ref = numpy_path(axis.locate, values)
    got = axis.locate(values)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


def test_the_compiled_spline_solve_calls_no_blas(monkeypatch):
    """The compiled path solves the thin-plate system itself: neither OpenCV's solve (its
    OpenBLAS LAPACK) nor numpy's is called, so no BLAS thread pool wakes up."""
    def no_blas(*args, **kwargs):
        raise AssertionError('a BLAS solve was called')
    monkeypatch.setattr(lc.cv2, 'solve', no_blas)
    monkeypatch.setattr(lc.np.linalg, 'lstsq', no_blas)
    truth, aligned, _ = _frame()
    rng = np.random.default_rng(17)
    idx = rng.choice(H * W, 300, replace=False)
    out = lc.local_correction(aligned, idx // W, idx % W, truth.ravel()[idx])
    assert np.abs(out.depth / aligned - 1).max() > 0.05


@pytest.mark.parametrize('shape', [(240, 320), (3, 5), (1, 1)])
def test_up2_multiply_is_resize_then_product(shape):
    """The fused 2x upsampling and product of the final read against cv2.resize and
    np.multiply, also in place (``out`` is ``other``)."""
    rng = np.random.default_rng(18)
    half = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    other = rng.uniform(1.0, 5.0, (2 * shape[0], 2 * shape[1])).astype(np.float32)
    other[0, 0] = np.nan                                 # invalid depth stays invalid
    ref = cv2.resize(half, other.shape[::-1], interpolation=cv2.INTER_LINEAR) * other
    out = np.empty_like(other)
    _compiled.up2_multiply(half, other, out)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    _compiled.up2_multiply(half, other, other)
    np.testing.assert_allclose(other, ref, rtol=1e-6)


@pytest.mark.parametrize('shape', [(243, 331), (242, 330), (240, 322)])
def test_local_correction_at_sizes_that_do_not_halve_evenly(numpy_path, shape):
    """Odd sizes (the read's resizes are not exactly 2x) and sizes whose detail grid does not
    halve evenly take OpenCV's resizes; the result is the numpy path's either way."""
    h, w = shape
    rng = np.random.default_rng(19)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    truth = (2.0 + 0.01 * xx + 0.005 * yy).astype(np.float32)
    aligned = (truth * np.exp(0.1 * np.sin(xx / 40.0))).astype(np.float32)
    idx = rng.choice(h * w, 400, replace=False)
    ref = numpy_path(lc.local_correction, aligned, idx // w, idx % w, truth.ravel()[idx])
    got = lc.local_correction(aligned, idx // w, idx % w, truth.ravel()[idx])
    np.testing.assert_allclose(got.depth, ref.depth, rtol=2e-5)
    assert np.abs(got.depth / aligned - 1).max() > 0.05


@pytest.mark.parametrize('bilateral', [True, False])
def test_compiled_read_at_anchors_matches_the_remap_read(numpy_path, bilateral):
    """The factor at the anchors (what the detail level subtracts), anchors on the image's
    last rows and columns included."""
    opts = lc.LocalCorrectionOptions()
    rng = np.random.default_rng(20)
    for h, w in ((H, W), (243, 331)):
        axis = lc._RangeAxis(0.0, 2.0, opts, -(-w // opts.cell)) if bilateral else None
        grid = lc._Grid(h, w, opts.cell, opts.base_sigma, axis)
        field = rng.normal(0, 0.3, (grid.gh, grid.gw, grid.bins if bilateral else 1)) \
            .astype(np.float32)
        rows = np.r_[rng.integers(0, h, 500), h - 1, 0]
        cols = np.r_[rng.integers(0, w, 500), w - 1, w - 1]
        bins = axis.locate(rng.uniform(-0.2, 2.2, len(rows))) if bilateral else None
        ref = numpy_path(lc._read_at, field, grid, rows, cols, bins)
        got = lc._read_at(field, grid, rows, cols, bins)
        assert np.abs(ref).max() > 0.1
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


def test_compiled_detail_level_matches_the_numpy_one(numpy_path):
    opts = lc.LocalCorrectionOptions()
    rng = np.random.default_rng(21)
    for h, w, n in ((H, W, 3000), (243, 331, 40)):
        idx = rng.choice(h * w, n, replace=False)
        residual = rng.normal(0, 0.05, n)
        residual[::50] = 3.0                          # beyond max_correction: clipped
        weights = rng.uniform(0, 2, n)
        weights[::7] = 0.0
        ref = numpy_path(lc.detail_grid, (h, w), idx // w, idx % w, residual, weights, opts)
        got = lc.detail_grid((h, w), idx // w, idx % w, residual, weights, opts)
        assert got.shape == ref.shape and np.ptp(ref) > 0.05
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize('shape', [(5, 7), (2, 2), (1, 40), (64, 1), (480, 8), (17, 1000)])
@pytest.mark.parametrize('guide', ['depth', 'both'])
def test_compiled_correction_of_tiny_and_thin_images(numpy_path, shape, guide):
    """Grids of one cell, one row or one column of cells, and pyramids that cannot halve: the
    compiled path gives the numpy path's correction."""
    h, w = shape
    rng = np.random.default_rng(h * 1000 + w)
    rel = rng.uniform(1, 3, (h, w)).astype(np.float32)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    n = min(h * w, 300)
    idx = rng.choice(h * w, n, replace=False)
    z = rel.ravel()[idx] * rng.uniform(0.9, 1.1, n)
    opts = lc.LocalCorrectionOptions(guide=guide)
    ref = numpy_path(lc.local_correction, rel, idx // w, idx % w, z, options=opts, image=image)
    got = lc.local_correction(rel, idx // w, idx % w, z, options=opts, image=image)
    np.testing.assert_allclose(got.depth, ref.depth, rtol=2e-6)
    np.testing.assert_allclose(got.weights, ref.weights, atol=1e-6)
    assert np.abs(got.depth / rel - 1).max() > 1e-3
