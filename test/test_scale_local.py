"""Dense local correction: accuracy, no seams, robustness, edge awareness, invalid pixels,
the thin-plate spline base between sparse anchors."""
import numpy as np
import pytest

from fiffdepth_ros.scale.local_correction import (LocalCorrectionOptions, _Grid,
                                                  local_correction, thin_plate_base)

H, W = 240, 320


def _truth():
    """A slanted wall with a box in front of it (depth edge)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = 3.0 + 0.004 * xx + 0.003 * yy
    box = (yy > 80) & (yy < 180) & (xx > 100) & (xx < 200)
    depth[box] = 1.5
    return depth.astype(np.float32), box


def _smooth_error():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.exp(0.15 * np.sin(xx / 60.0) * np.cos(yy / 45.0) + 0.05 * yy / H)


def _anchors(n, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.choice(H * W, n, replace=False)
    return idx // W, idx % W


def _near(mask, radius):
    """Pixels within radius of the mask's outline."""
    import cv2
    k = np.ones((2 * radius + 1,) * 2, np.uint8)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, k) > 0) & ~(cv2.erode(m, k) > 0)


def _absrel(pred, truth):
    return float(np.mean(np.abs(pred - truth) / truth))


def test_smooth_error_is_removed_between_anchors():
    truth, _ = _truth()
    aligned = (truth * _smooth_error()).astype(np.float32)
    rows, cols = _anchors(300)
    out = local_correction(aligned, rows, cols, truth[rows, cols])
    assert out.depth.dtype == np.float32 and out.depth.shape == (H, W)
    before, after = _absrel(aligned, truth), _absrel(out.depth, truth)
    assert before > 0.05 and after < before / 5
    assert out.inliers.all()


def test_correction_has_no_seams():
    truth, box = _truth()
    aligned = (truth * _smooth_error()).astype(np.float32)
    rows, cols = _anchors(150, seed=1)
    out = local_correction(aligned, rows, cols, truth[rows, cols])
    log_factor = np.log(out.depth / aligned)
    # Away from the box edge the correction is smooth: no jumps between neighbouring pixels
    # (a nearest-anchor fill would jump by the anchors' differences, several per cent).
    inner = ~_near(box, 8)
    dx = np.abs(np.diff(log_factor, axis=1))[inner[:, 1:] & inner[:, :-1]]
    dy = np.abs(np.diff(log_factor, axis=0))[inner[1:] & inner[:-1]]
    assert max(dx.max(), dy.max()) < 0.01


def test_outlier_anchors_are_dropped():
    truth, _ = _truth()
    aligned = (truth * _smooth_error()).astype(np.float32)
    rows, cols = _anchors(400, seed=2)
    z = truth[rows, cols].copy()
    bad = np.zeros(len(z), bool)
    bad[::5] = True                                   # 20 %, all pushed to the background
    z[bad] *= 2.0
    out = local_correction(aligned, rows, cols, z)
    assert not out.inliers[bad].any()
    assert out.inliers[~bad].mean() > 0.97
    clean = local_correction(aligned, rows[~bad], cols[~bad], z[~bad])
    assert _absrel(out.depth, truth) < 1.3 * _absrel(clean.depth, truth)
    naive = local_correction(aligned, rows, cols, z, options=LocalCorrectionOptions(iterations=0))
    assert _absrel(naive.depth, truth) > 2 * _absrel(out.depth, truth)


def _bent_corner(seed, n=100):
    """A plane whose prediction is 35 % too far over one corner (a smooth bump of the error),
    ``n`` random anchors, 30 % of them corrupted (x0.5 or x1.8, half each)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = (2.0 + 0.004 * yy + 0.002 * xx).astype(np.float32)
    bump = 0.3 * np.exp(-((yy - 0.75 * H) ** 2 + (xx - 0.25 * W) ** 2) / (2 * 60.0 ** 2))
    aligned = (truth * np.exp(bump)).astype(np.float32)
    rows, cols = _anchors(n, seed)
    z = truth[rows, cols].astype(np.float64)
    chosen = rng.permutation(n)[:int(0.3 * n)]
    bad = np.zeros(n, bool)
    bad[chosen] = True
    zc = z.copy()
    zc[chosen[:len(chosen) // 2]] *= 0.5
    zc[chosen[len(chosen) // 2:]] *= 1.8
    return truth, aligned, rows, cols, z, zc, bad


def test_sparse_sets_get_the_neighbours_median_veto():
    """Where anchors are sparse and the prediction is locally off, the judging field sits
    between the good anchors and the x1.8 ones and keeps some of those; the median of each
    anchor's nearest neighbours sees the good majority (``consensus_max``)."""
    kept, lost, errors = {}, {}, {}
    for cm in (1024, 0):
        opts = LocalCorrectionOptions(consensus_max=cm)
        kept[cm] = lost[cm] = 0
        errors[cm] = []
        for seed in range(8):
            truth, aligned, rows, cols, z, zc, bad = _bent_corner(seed)
            out = local_correction(aligned, rows, cols, zc, options=opts)
            kept[cm] += int(np.count_nonzero(out.weights[bad] > 0))
            lost[cm] += int(np.count_nonzero(out.weights[~bad] == 0))
            errors[cm].append(_absrel(out.depth, truth))
            clean = local_correction(aligned, rows, cols, z, options=opts)
            assert clean.inliers.all()                       # clean anchors: nobody vetoed
    assert kept[0] >= 10 and kept[1024] <= kept[0] // 2
    assert lost[1024] == lost[0] == 0
    assert np.all(np.array(errors[1024]) <= 1.01 * np.array(errors[0]))
    assert np.mean(errors[1024]) < 0.9 * np.mean(errors[0])


def test_consistent_local_structure_is_kept():
    # The prediction is wrong by x1.6 on the box only (e.g. a hallucinated object): the box's
    # anchors agree with each other, so they are not outliers, and the box gets corrected.
    truth, box = _truth()
    aligned = truth.copy()
    aligned[box] *= 1.6
    rows, cols = _anchors(400, seed=3)
    out = local_correction(aligned, rows, cols, truth[rows, cols])
    on_box = box[rows, cols]
    assert on_box.sum() >= 20 and out.inliers[on_box].all()
    inner = box.copy()
    inner[:84], inner[176:], inner[:, :104], inner[:, 196:] = False, False, False, False
    assert np.median(np.abs(out.depth[inner] / truth[inner] - 1)) < 0.02


def test_edge_aware_correction_stays_on_its_surface():
    # Different errors on the box and the wall: across the box edge, the spatial-only field
    # mixes them, the edge-aware one does not.
    truth, box = _truth()
    aligned = truth * np.where(box, 0.8, 1.1).astype(np.float32)
    rows, cols = _anchors(250, seed=4)
    opts = dict(iterations=0)
    aware = local_correction(aligned, rows, cols, truth[rows, cols],
                             options=LocalCorrectionOptions(edge_aware=True, **opts))
    plain = local_correction(aligned, rows, cols, truth[rows, cols],
                             options=LocalCorrectionOptions(edge_aware=False, **opts))
    band = _near(box, 12)
    err_aware = np.abs(aware.depth / truth - 1)[band].mean()
    err_plain = np.abs(plain.depth / truth - 1)[band].mean()
    assert err_aware < 0.5 * err_plain


def test_invalid_pixels_stay_invalid_and_do_not_spread():
    truth, _ = _truth()
    aligned = (truth * _smooth_error()).astype(np.float32)
    aligned[100:110, 50:60] = np.nan
    rows, cols = _anchors(200, seed=5)
    out = local_correction(aligned, rows, cols, truth[rows, cols])
    assert np.isnan(out.depth[100:110, 50:60]).all()
    assert np.isfinite(out.depth).sum() == np.isfinite(aligned).sum()


def test_no_usable_anchors_returns_the_input():
    truth, _ = _truth()
    out = local_correction(truth, np.array([5]), np.array([5]), np.array([np.nan]))
    assert np.array_equal(out.depth, truth) and not out.inliers.any()
    one = local_correction(truth * 1.1, np.array([5]), np.array([5]), truth[5:6, 5])
    assert np.allclose(one.depth, truth, rtol=1e-4)           # one anchor: a global factor


def test_deterministic():
    truth, _ = _truth()
    aligned = (truth * _smooth_error()).astype(np.float32)
    rows, cols = _anchors(300, seed=6)
    z = truth[rows, cols] * np.where(np.arange(300) % 7 == 0, 2.0, 1.0)
    a = local_correction(aligned, rows, cols, z)
    b = local_correction(aligned.copy(), rows.copy(), cols.copy(), z.copy())
    assert np.array_equal(a.depth, b.depth, equal_nan=True)
    assert np.array_equal(a.weights, b.weights)


def test_in_place_output_equals_a_fresh_one():
    """``out=aligned`` corrects the caller's array itself, to the same values (NaN kept), and
    a second call does not see the first one's scratch images; no usable anchor leaves ``out``
    a copy of the input; a wrong ``out`` is a clear error."""
    truth, _ = _truth()
    aligned = (truth * _smooth_error()).astype(np.float32)
    aligned[10:20, 30:40] = np.nan
    rows, cols = _anchors(300, seed=7)
    fresh = local_correction(aligned, rows, cols, truth[rows, cols])
    mine = aligned.copy()
    inplace = local_correction(mine, rows, cols, truth[rows, cols], out=mine)
    assert inplace.depth is mine
    assert np.array_equal(mine, fresh.depth, equal_nan=True)
    assert not np.array_equal(mine, aligned, equal_nan=True)
    other = (truth * 1.2).astype(np.float32)
    again = local_correction(other, rows, cols, truth[rows, cols])
    assert np.array_equal(mine, fresh.depth, equal_nan=True)       # not overwritten
    assert _absrel(again.depth, truth) < 0.01
    target = np.zeros_like(aligned)
    none = local_correction(aligned, np.array([5]), np.array([5]), np.array([np.nan]),
                            out=target)
    assert none.depth is target and np.array_equal(target, aligned, equal_nan=True)
    with pytest.raises(ValueError, match='out must be'):
        local_correction(aligned, rows, cols, truth[rows, cols], out=np.zeros((H, W)))


def test_the_spline_solve_runs_on_one_blas_thread(monkeypatch):
    """The thin-plate system is solved with every loaded OpenBLAS limited to one thread (on
    more, its idle workers spin and double the frame's CPU time), and the limit is lifted
    afterwards. The numpy path (the compiled one solves without BLAS, test_scale_compiled)."""
    threadpoolctl = pytest.importorskip('threadpoolctl')
    import cv2

    import fiffdepth_ros.scale.local_correction as lc
    from fiffdepth_ros.scale import _compiled
    monkeypatch.setattr(_compiled, 'ENABLED', False)

    def openblas_threads():            # numpy's and OpenCV's (scipy may load a third)
        return {i['filepath']: i['num_threads'] for i in threadpoolctl.threadpool_info()
                if i['internal_api'] == 'openblas' and ('numpy' in i['filepath']
                                                        or 'opencv' in i['filepath'])}

    seen = []
    real_solve = cv2.solve

    def solve(*args, **kwargs):
        seen.append(openblas_threads())
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(lc.cv2, 'solve', solve)
    truth, _ = _truth()
    rows, cols = _anchors(120, seed=8)
    aligned = (truth * _smooth_error()).astype(np.float32)
    local_correction(aligned, rows, cols, truth[rows, cols])    # every library loaded
    # Two threads outside (the test runner may have set one through OMP_NUM_THREADS).
    with threadpoolctl.threadpool_limits(limits=2, user_api='blas'):
        before = openblas_threads()
        assert len(before) == 2 and set(before.values()) == {2}, 'numpy and OpenCV load OpenBLAS'
        seen.clear()
        local_correction(aligned, rows, cols, truth[rows, cols])
        assert seen and set(seen[0]) == set(before) and set(seen[0].values()) == {1}
        assert openblas_threads() == before


def test_opencv_runs_on_the_calling_thread_during_the_correction(monkeypatch):
    """OpenCV's pool is off while the correction runs (its many small calls gain nothing from
    it and leave its workers spinning), also for a second thread inside at the same time, and
    its size is restored once the last one leaves."""
    import threading

    import cv2

    import fiffdepth_ros.scale.local_correction as lc

    truth, _ = _truth()
    rows, cols = _anchors(200, seed=9)
    aligned = (truth * _smooth_error()).astype(np.float32)
    seen = []
    inside, release = threading.Event(), threading.Event()
    real_remap = cv2.remap                   # the spline base's read at the anchors (both paths)

    def remap(*args, **kwargs):
        seen.append(cv2.getNumThreads())
        if threading.current_thread() is not threading.main_thread() and not inside.is_set():
            inside.set()
            release.wait(10)                 # hold the other thread inside the correction
        return real_remap(*args, **kwargs)

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        monkeypatch.setattr(lc.cv2, 'remap', remap)
        other = threading.Thread(target=local_correction,
                                 args=(aligned, rows, cols, truth[rows, cols]))
        other.start()
        assert inside.wait(10)
        local_correction(aligned, rows, cols, truth[rows, cols])     # while the other is inside
        assert cv2.getNumThreads() == 1          # the other thread is still inside
        release.set()
        other.join(10)
        assert seen and set(seen) == {1}
        assert cv2.getNumThreads() == 2
    finally:
        release.set()
        cv2.setNumThreads(before)


def test_the_spline_base_carries_a_smooth_warp_across_sparse_anchors():
    """40 anchors, a smooth warp (the prediction's typical error between sparse anchors): the
    spline base follows its trend through the gaps, where the local means alone (spline off)
    fall back towards the anchors' average."""
    truth, _ = _truth()
    errs = {}
    for seed in range(3):
        aligned = (truth * _smooth_error()).astype(np.float32)
        rows, cols = _anchors(40, seed=20 + seed)
        for spline in (True, False):
            out = local_correction(aligned, rows, cols, truth[rows, cols],
                                   options=LocalCorrectionOptions(spline=spline))
            errs.setdefault(spline, []).append(_absrel(out.depth, truth))
    assert np.mean(errs[True]) < 0.7 * np.mean(errs[False])


def _base(rows, cols, v, weights, **opts):
    options = LocalCorrectionOptions(**opts)
    grid = _Grid(H, W, options.cell, options.base_sigma)
    return thin_plate_base((H, W), rows, cols, v, weights, grid, options)[:grid.nh, :grid.nw]


def test_thin_plate_base_reproduces_a_plane_and_stays_within_its_data():
    rows, cols = _anchors(60, seed=7)
    plane = 0.1 + 0.002 * rows - 0.001 * cols
    grid = LocalCorrectionOptions().cell * (np.arange(H // 16)[:, None] + 0.5) - 0.5
    gridc = LocalCorrectionOptions().cell * (np.arange(W // 16)[None, :] + 0.5) - 0.5
    exact = _base(rows, cols, plane, np.ones(60), spline_smoothing=0.0)
    want = 0.1 + 0.002 * grid - 0.001 * gridc
    inside = (want >= plane.min()) & (want <= plane.max())
    assert np.allclose(exact[inside], want[inside], atol=1e-5)   # linear in, linear out
    assert exact.min() >= plane.min() - 1e-6 and exact.max() <= plane.max() + 1e-6
    # Anchors in the top half only: the trend is not extrapolated past the data's range.
    top = rows < H // 2
    half = _base(rows[top], cols[top], 0.004 * rows[top], np.ones(top.sum()))
    assert half.max() <= 0.004 * rows[top].max() + 1e-6


def test_thin_plate_base_equals_scipys_smoothing_thin_plate_spline():
    """Against an independent implementation: scipy's RBFInterpolator (thin-plate kernel
    r^2 log r, linear polynomial, per-anchor smoothing = spline_smoothing / normalised weight),
    read at the cells where the base is evaluated exactly (every _SPLINE_STEP-th and the last;
    linear in between), then clipped to the data's range as the base is."""
    from scipy.interpolate import RBFInterpolator
    from fiffdepth_ros.scale.local_correction import _nodes
    rows, cols = _anchors(50, seed=11)
    v = 0.08 * np.sin(cols / 60.0) + 0.05 * np.cos(rows / 45.0)
    w = np.random.default_rng(3).uniform(0.3, 1.0, 50)
    options = LocalCorrectionOptions()
    grid = _Grid(H, W, options.cell, options.base_sigma)
    base = thin_plate_base((H, W), rows, cols, v, w, grid, options)
    side = 1.0 / max(H, W)
    reference = RBFInterpolator(np.stack([rows * side, cols * side], 1), v,
                                kernel='thin_plate_spline', degree=1,
                                smoothing=options.spline_smoothing / (w / w.mean()))
    iy, ix = _nodes(grid.gh)[0], _nodes(grid.gw)[0]
    cy = ((iy + 0.5) * grid.cell - 0.5) * side
    cx = ((ix + 0.5) * grid.cell - 0.5) * side
    points = np.stack(np.meshgrid(cy, cx, indexing='ij'), -1).reshape(-1, 2)
    want = np.clip(reference(points).reshape(len(iy), len(ix)), v.min(), v.max())
    assert np.allclose(base[np.ix_(iy, ix)], want, atol=1e-6)
    assert np.ptp(want) > 0.05                         # a surface, not a constant


def test_thin_plate_base_ignores_rejected_anchors_and_averages_dense_sets():
    rows, cols = _anchors(60, seed=8)
    v = 0.05 * np.sin(cols / 50.0)
    w = np.ones(60)
    ref = _base(rows, cols, v, w)
    bad_v, bad_w = v.copy(), w.copy()
    bad_v[::6], bad_w[::6] = 3.0, 0.0                  # rejected by the judging: weight 0
    assert np.allclose(_base(rows, cols, bad_v, bad_w),
                       _base(rows[bad_w > 0], cols[bad_w > 0], v[bad_w > 0],
                             w[bad_w > 0]), atol=1e-6)
    assert not np.allclose(ref, _base(rows, cols, bad_v, np.ones(60)), atol=1e-3)
    # More anchors than spline_centres: fitted on cell means, the same smooth surface.
    rr, cc = _anchors(3000, seed=9)
    dense = _base(rr, cc, 0.05 * np.sin(cc / 50.0), np.ones(3000))
    sparse = _base(rr[:100], cc[:100], 0.05 * np.sin(cc[:100] / 50.0), np.ones(100))
    assert np.abs(dense - sparse).mean() < 0.01


@pytest.mark.parametrize('kwargs', [dict(cell=0), dict(outlier_cutoff=0.0),
                                    dict(range_sigma=0.0), dict(iterations=-1),
                                    dict(spline_smoothing=-0.1), dict(spline_centres=2),
                                    dict(consensus_max=-1), dict(dense_range_sigma=0.0),
                                    dict(judge_max_bins=1)])
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        LocalCorrectionOptions(**kwargs)


def test_detail_level_honours_anchors_closer_than_a_cell_and_leaves_the_gaps_to_the_grid():
    """Scan lines (returns every 4 px, lines 32 px apart) over a prediction whose error varies
    along the lines faster than the grid's 16-px cells resolve: the detail level keeps most of
    it on and near the lines (the grid alone averages it away); midway between the lines the
    correction is the grid's."""
    truth, _ = _truth()
    xx = np.mgrid[0:H, 0:W][1].astype(np.float64)
    aligned = (truth * np.exp(0.04 * np.sin(xx / 6.0))).astype(np.float32)
    lines = np.arange(16, H, 32)
    rows, cols = (a.ravel() for a in np.meshgrid(lines, np.arange(1, W, 4), indexing='ij'))
    on = local_correction(aligned, rows, cols, truth[rows, cols])
    off = local_correction(aligned, rows, cols, truth[rows, cols],
                           options=LocalCorrectionOptions(detail=False))
    assert on.inliers.all() and off.inliers.all()
    gap = np.min(np.abs(np.arange(H)[:, None] - lines[None]), 1)
    near = np.broadcast_to((gap <= 2)[:, None], (H, W))
    far = np.broadcast_to((gap >= 14)[:, None], (H, W))
    assert _absrel(off.depth[near], truth[near]) > 0.015                 # the grid alone
    assert _absrel(on.depth[near], truth[near]) < 0.4 * _absrel(off.depth[near], truth[near])
    np.testing.assert_allclose(on.depth[far], off.depth[far], rtol=2e-3)


def test_fields_blended_together_equal_fields_blended_apart(monkeypatch):
    """'both' blends its two holdout candidates in one _multiscale (channels side by side):
    each must come out as built on its own (to float32 rounding: OpenCV's filters may take
    another vector path for another channel count). The numpy path (the compiled one builds
    them apart)."""
    from fiffdepth_ros.scale import _compiled
    from fiffdepth_ros.scale.local_correction import _Fields, _RangeAxis
    monkeypatch.setattr(_compiled, 'ENABLED', False)
    opts = LocalCorrectionOptions()
    rng = np.random.default_rng(3)
    rows, cols = _anchors(400, seed=3)
    v = rng.normal(0.0, 0.1, len(rows))
    u = rng.uniform(0.0, 1.0, len(rows))
    u[::7] = 0.0
    fields = []
    for lo, hi, guide in ((0.5, 1.5, rng.uniform(0.5, 1.5, len(rows))),
                          (0.0, 3.0, rng.uniform(0.0, 3.0, len(rows)))):
        axis = _RangeAxis(lo, hi, opts, -(-W // opts.cell))
        fields.append(_Fields((H, W), opts, 4 * opts.cell, rows, cols, axis,
                              axis.locate(guide), nearest=True, ratio=4.0))
    assert fields[0].grid.bins != fields[1].grid.bins
    together = _Fields.build_together(fields, v, u, opts.min_support)
    for f, state in zip(fields, together):
        np.testing.assert_allclose(state, f.build(v, u, opts.min_support, False), rtol=1e-6,
                                   atol=1e-8)


def _blurred_box_scene():
    """The box scene's truth, and a prediction that blurs its depth edges (sigma 4 px) under a
    smooth error: a network's soft edges, which only the anchors can sharpen."""
    import cv2
    truth, box = _truth()
    pred = cv2.GaussianBlur(truth, (0, 0), 4.0) / _smooth_error().astype(np.float32)
    return truth, box, pred.astype(np.float32)


def _scan_lines(step=15, spacing=3):
    rows, cols = np.mgrid[step // 2:H:step, 0:W:spacing]
    return rows.ravel(), cols.ravel()


def test_dense_anchor_sets_get_the_finer_range_axis_in_the_final_field():
    """At least one anchor per cell: the final field's bins are dense_range_sigma wide; a
    sparse set, or dense_range_sigma None, keeps range_sigma; the judging keeps it always."""
    from fiffdepth_ros.scale.local_correction import _cells, correction_grid
    truth, _, pred = _blurred_box_scene()
    opts = LocalCorrectionOptions()
    dense_r, dense_c = _scan_lines()
    sparse_r, sparse_c = _anchors(100)
    assert len(dense_r) >= _cells((H, W), opts) > len(sparse_r)

    def width(rows, cols, options):
        grid = correction_grid((H, W), rows, cols, truth[rows, cols], None,
                               lambda r, c: pred[r, c], None, options).grid
        return grid.axis.width

    assert width(dense_r, dense_c, opts) == opts.dense_range_sigma == 0.05
    assert width(sparse_r, sparse_c, opts) == opts.range_sigma
    assert width(dense_r, dense_c, LocalCorrectionOptions(dense_range_sigma=None)) == \
        opts.range_sigma


def test_the_finer_range_axis_sharpens_blurred_edges_between_dense_scan_lines():
    """Scan lines 15 px apart over a prediction whose depth edges are blurred: the finer axis
    for dense sets corrects the pixels near the box's edges better than range_sigma's bins,
    and does not cost the flat pixels."""
    truth, box, pred = _blurred_box_scene()
    rows, cols = _scan_lines()
    near = _near(box, 6)

    def corrected(**kw):
        out = local_correction(pred, rows, cols, truth[rows, cols],
                               options=LocalCorrectionOptions(**kw)).depth
        return _absrel(out[near], truth[near]), _absrel(out[~near], truth[~near])

    fine_edge, fine_flat = corrected()
    wide_edge, wide_flat = corrected(dense_range_sigma=None)
    assert fine_edge < 0.9 * wide_edge
    assert fine_flat <= 1.02 * wide_flat


def _ramp_scene():
    """A floor seen from above it: 1 m at the bottom row to 40 m at the top (log-linear), the
    prediction off by a smooth error: a depth range of 37 bins of range_sigma."""
    yy = np.mgrid[0:H, 0:W][0].astype(np.float64)
    truth = np.exp(np.log(40.0) * (1.0 - yy / (H - 1))).astype(np.float32)
    return truth, (truth * _smooth_error()).astype(np.float32)


def _corrupted(z, seed, fraction=0.3):
    """``fraction`` of the anchors x0.5 or x1.8 (half each), and which."""
    rng = np.random.default_rng(seed)
    bad = np.zeros(len(z), bool)
    idx = rng.permutation(len(z))[:int(round(fraction * len(z)))]
    bad[idx] = True
    out = z.copy()
    out[idx[:len(idx) // 2]] *= 0.5
    out[idx[len(idx) // 2:]] *= 1.8
    return out, bad


@pytest.mark.parametrize('seed', [0, 2])
def test_sparse_sets_over_a_wide_depth_range_are_judged_on_wider_bands(seed):
    """100 anchors over 1-40 m, 30 % of them x0.5 or x1.8: in bands of range_sigma nearly every
    anchor is alone on its band, so not judged, and the corrupted ones stay; with the judging
    capped at judge_max_bins bands they have neighbours and are dropped. The clean set's
    correction is the same either way (the final field keeps range_sigma)."""
    truth, aligned = _ramp_scene()
    rows, cols = _anchors(100, seed=seed)
    z = truth[rows, cols].astype(np.float64)
    zc, bad = _corrupted(z, seed)

    def run(depths, **kw):
        return local_correction(aligned, rows, cols, depths,
                                options=LocalCorrectionOptions(**kw))

    capped, fine = run(zc), run(zc, judge_max_bins=None)
    assert LocalCorrectionOptions().judge_max_bins == 8
    assert fine.inliers[bad].sum() >= 20                   # the failure the cap removes
    assert capped.inliers[bad].sum() <= 3 and capped.inliers[~bad].mean() >= 0.95
    assert _absrel(capped.depth, truth) < 0.25 * _absrel(fine.depth, truth)
    clean, clean_fine = run(z), run(z, judge_max_bins=None)
    assert clean.inliers.all()
    assert _absrel(clean.depth, truth) <= 1.05 * _absrel(clean_fine.depth, truth) < 0.01


def test_judging_bands_change_nothing_where_the_range_fits_or_the_set_is_dense():
    """A frame whose prediction spans 5 bins of range_sigma (3-4 m, a small smooth error), and
    a dense set (scan lines) over 1-40 m: the output is the same with the cap or without; a
    cap below the frame's 5 bins does change the first (the test can see the judging)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    narrow = 3.0 + xx / W
    aligned = (narrow * np.exp(0.05 * np.sin(xx / 40.0) * np.cos(yy / 30.0))).astype(np.float32)
    rows, cols = _anchors(100, seed=4)
    z, _ = _corrupted(narrow[rows, cols], 4)
    below = local_correction(aligned, rows, cols, z, options=LocalCorrectionOptions(
        judge_max_bins=3))
    assert not np.array_equal(below.weights, local_correction(aligned, rows, cols, z).weights)
    pairs = [(aligned, rows, cols, z)]
    truth, aligned = _ramp_scene()
    from fiffdepth_ros.scale.local_correction import _cells
    rows, cols = _scan_lines()
    assert len(rows) >= _cells((H, W), LocalCorrectionOptions())
    pairs.append((aligned, rows, cols, _corrupted(truth[rows, cols].astype(np.float64), 5)[0]))
    for image, r, c, depths in pairs:
        a = local_correction(image, r, c, depths)
        b = local_correction(image, r, c, depths,
                             options=LocalCorrectionOptions(judge_max_bins=None))
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.weights, b.weights)
