"""ScaleRecovery: the per-frame API the node and the bag processor call."""
import numpy as np
import pytest

from fiffdepth_ros.scale.anchors import Anchors, depth_image_anchors, disparity_anchors
from fiffdepth_ros.scale.recovery import (STATUSES, ConfigError, FitReport, RecoveryInputError,
                                          ScaleRecovery, ScaleRecoveryConfig)

H, W = 120, 160


def _truth():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = 2.0 + 0.02 * xx + 0.01 * yy                 # 2 .. 6.4 m
    depth[40:80, 60:100] = 1.5
    return depth.astype(np.float32)


TRUTH = _truth()
RELATIVE = ((TRUTH - 1.0) / 6.0).astype(np.float32)     # affine-invariant depth in [0, 1]


def _anchors(n=200, seed=0, depth=TRUTH, scale_error=None):
    rng = np.random.default_rng(seed)
    idx = rng.choice(H * W, n, replace=False)
    rows, cols = idx // W, idx % W
    z = depth[rows, cols].astype(np.float64)
    if scale_error is not None:
        z = z * scale_error
    return Anchors(rows, cols, z, np.full(n, 1e4), offered=n + 10, source='test')


def _absrel(pred, truth=TRUTH):
    ok = np.isfinite(pred)
    return float(np.mean(np.abs(pred[ok] - truth[ok]) / truth[ok]))


def test_fitted_frame_is_metric_and_reported():
    rec = ScaleRecovery(ScaleRecoveryConfig(responsiveness=1.0))
    depth, report = rec.process(RELATIVE, _anchors(), 0.0)
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert report.status == 'fitted' and report.metric
    assert report.anchors_offered == 210 and report.anchors_used == 200
    assert report.inliers == 200 and report.local_inliers == 200
    assert report.scale == pytest.approx(6.0, rel=1e-3) and report.shift == pytest.approx(1.0,
                                                                                          abs=1e-2)
    assert _absrel(depth) < 1e-3
    d = report.as_dict()
    assert set(d) >= {'anchors_offered', 'anchors_used', 'inliers', 'scale', 'shift', 'residual',
                      'status', 'metric'} and d['status'] in STATUSES


def test_dense_anchor_sets_are_thinned_evenly_before_the_fit():
    """More anchors than the local correction's budget (4 per 16x16 cell: 8 x 10 cells, 320 at 120x160)
    reach the fit and the correction as an even subset in the sensor's order, the same frame
    as those anchors given alone; fewer pass whole."""
    from fiffdepth_ros.scale.fit import evenly_spaced
    from fiffdepth_ros.scale.local_correction import anchor_budget

    budget = anchor_budget((H, W))
    assert budget == 320
    dense = _anchors(n=2000, seed=3)
    depth, report = ScaleRecovery(ScaleRecoveryConfig()).process(RELATIVE, dense, 0.0)
    assert report.anchors_offered == 2010 and report.anchors_used == budget
    keep = evenly_spaced(2000, budget)
    alone = Anchors(dense.rows[keep], dense.cols[keep], dense.depth[keep], dense.weight[keep],
                    offered=budget, source='test')
    depth_alone, report_alone = ScaleRecovery(ScaleRecoveryConfig()).process(RELATIVE, alone,
                                                                             0.0)
    assert np.array_equal(depth, depth_alone, equal_nan=True)
    assert (report.scale, report.shift, report.inliers) == (
        report_alone.scale, report_alone.shift, report_alone.inliers)
    assert _absrel(depth) < 1e-3
    _, sparse = ScaleRecovery(ScaleRecoveryConfig()).process(RELATIVE, _anchors(n=budget), 0.0)
    assert sparse.anchors_used == budget


def test_no_anchor_source_uses_fixed_scale_and_is_not_metric():
    rec = ScaleRecovery(ScaleRecoveryConfig(fixed_scale=2.0, fixed_shift=0.5, max_depth=1.5))
    depth, report = rec.process(RELATIVE, None, 0.0)
    assert report.status == 'none' and not report.metric
    expected = 2.0 * RELATIVE + 0.5
    ok = expected <= 1.5
    assert np.allclose(depth[ok], expected[ok]) and np.isnan(depth[~ok]).all()
    assert report.scale == 2.0 and report.shift == 0.5


def test_output_beyond_max_depth_is_nan():
    rec = ScaleRecovery(ScaleRecoveryConfig(max_depth=4.0, min_depth=1.6))
    depth, report = rec.process(RELATIVE, _anchors(), 0.0)
    assert report.metric
    assert np.isnan(depth[TRUTH > 4.05]).all() and np.isnan(depth[TRUTH < 1.55]).all()
    inside = (TRUTH > 1.7) & (TRUTH < 3.9)
    assert np.isfinite(depth[inside]).all()
    assert 'outside [1.6, 4] m' in report.detail          # anchors beyond the range dropped


def test_two_anchors_give_scale_only():
    rec = ScaleRecovery(ScaleRecoveryConfig(responsiveness=1.0))
    rel = RELATIVE - RELATIVE.min()                       # the true shift is now 1.5 m; hold 0
    depth, report = rec.process(rel, _anchors(n=2), 0.0)
    assert report.status == 'scale-only' and report.metric and report.shift == 0.0
    assert 'only 2 anchors' in report.detail


def test_narrow_depth_range_gives_scale_only():
    rr, cc = np.mgrid[0:6, 0:6]                           # a small patch of the wall: 2.0-2.15 m
    rows, cols = rr.ravel(), cc.ravel()
    a = Anchors(rows, cols, TRUTH[rows, cols], np.full(len(rows), 1e4))
    depth, report = ScaleRecovery().process(RELATIVE, a, 0.0)
    assert report.status == 'scale-only' and 'shift unobservable' in report.detail
    assert report.shift == 0.0 and report.metric
    # Shift held at 0: the scale alone matches the patch, the rest of the image is off.
    assert np.allclose(depth[rows, cols], TRUTH[rows, cols], rtol=0.05)
    # Relative values all equal: same fallback, no crash.
    same = Anchors(rows, cols, np.full(len(rows), 2.0), np.full(len(rows), 1e4))
    flat = np.full((H, W), 0.4, np.float32)
    _, report = ScaleRecovery().process(flat, same, 0.0)
    assert report.status == 'scale-only' and report.scale == pytest.approx(5.0)


def test_all_outlier_frame_is_held_then_recovers():
    rec = ScaleRecovery(ScaleRecoveryConfig(responsiveness=0.5, hold_max_frames=5))
    good, first = rec.process(RELATIVE, _anchors(seed=1), 0.0)
    rng = np.random.default_rng(9)
    garbage = Anchors(rng.integers(0, H, 200), rng.integers(0, W, 200),
                      rng.uniform(0.5, 15.0, 200), np.full(200, 1e4))
    held, report = rec.process(RELATIVE, garbage, 0.1)
    assert report.status == 'held' and report.metric
    assert report.scale == pytest.approx(first.scale) and report.local_inliers == 0
    assert _absrel(held) < 0.01                            # the garbage did not get in
    # A wrong but consistent set (LiDAR decalibrated, x1.5) is gated as an outlier frame too.
    _, report = rec.process(RELATIVE, _anchors(seed=2, scale_error=1.5), 0.2)
    assert report.status == 'held'
    back, report = rec.process(RELATIVE, _anchors(seed=3), 0.3)
    assert report.status == 'fitted' and _absrel(back) < 1e-3


def test_hold_times_out_to_fixed_scale():
    rec = ScaleRecovery(ScaleRecoveryConfig(hold_timeout_s=0.25, hold_max_frames=100,
                                            fixed_scale=1.0))
    rec.process(RELATIVE, _anchors(), 0.0)
    _, report = rec.process(RELATIVE, None, 0.1)             # source had anchors: hold
    assert report.status == 'held' and report.metric
    depth, report = rec.process(RELATIVE, Anchors.empty('lidar'), 0.4)
    assert report.status == 'none' and not report.metric and 'dropped' in report.detail
    expected = np.where(RELATIVE >= 0.1, RELATIVE, np.nan)      # fixed map, min_depth 0.1
    assert np.allclose(depth, expected, equal_nan=True)


def test_time_jump_and_config_change_reset_the_filter():
    cfg = ScaleRecoveryConfig(responsiveness=0.2, reset_time_jump_s=1.0)
    rec = ScaleRecovery(cfg)
    rec.process(RELATIVE, _anchors(), 5.0)
    _, report = rec.process(RELATIVE, _anchors(seed=4, scale_error=1.1), 5.1)
    assert report.scale < 6.0 * 1.1 * 0.99                  # smoothed
    _, report = rec.process(RELATIVE, _anchors(seed=5, scale_error=1.1), 3.0)   # backwards
    assert report.scale == pytest.approx(6.6, rel=1e-3) and 'reset' in report.detail
    rec.config = cfg                                          # unchanged: no reset
    _, report = rec.process(RELATIVE, _anchors(seed=6), 3.1)
    assert report.scale < 6.6 * 0.99 and report.scale > 6.0
    rec.config = ScaleRecoveryConfig(responsiveness=0.2, reset_time_jump_s=1.0, max_depth=30.0)
    _, report = rec.process(RELATIVE, _anchors(seed=7), 3.2)
    assert report.scale == pytest.approx(6.0, rel=1e-3)     # restarted, not smoothed


def test_inverse_space_with_disparity_anchors():
    disparity_rel = (1.0 / TRUTH).astype(np.float32)        # disparity-like prediction
    rel = (0.3 * disparity_rel + 0.1).astype(np.float32)   # ... up to an unknown affine map
    focal, baseline = 100.0, 0.12
    disp = np.zeros((H, W), np.float32)
    disp[::6, ::6] = focal * baseline / TRUTH[::6, ::6]
    anchors = disparity_anchors(disp, focal, baseline, grid_step=6, target_shape=(H, W))
    rec = ScaleRecovery(ScaleRecoveryConfig(fit_space='inverse', local_correction=False))
    depth, report = rec.process(rel, anchors, 0.0)
    assert report.status == 'fitted' and report.space == 'inverse'
    assert _absrel(depth) < 1e-3
    wrong = ScaleRecovery(ScaleRecoveryConfig(fit_space='depth', local_correction=False))
    depth_wrong, report_wrong = wrong.process(rel, anchors, 0.0)
    assert report_wrong.status != 'fitted' or _absrel(depth_wrong) > 0.02


def test_local_correction_reduces_a_smooth_prediction_error():
    yy, xx = np.mgrid[0:H, 0:W]
    bent = RELATIVE * np.exp(0.1 * np.sin(xx / 25.0)).astype(np.float32)
    on = ScaleRecovery(ScaleRecoveryConfig(local_correction=True))
    off = ScaleRecovery(ScaleRecoveryConfig(local_correction=False))
    a = depth_image_anchors(np.where((yy % 10 == 0) & (xx % 10 == 0), TRUTH, 0.0), 8)
    d_on, r_on = on.process(bent, a, 0.0)
    d_off, r_off = off.process(bent, a, 0.0)
    assert r_on.local_inliers > 0 and r_off.local_inliers == 0
    assert _absrel(d_on) < 0.4 * _absrel(d_off)


def test_anchors_outside_the_image_are_dropped_and_reported():
    a = _anchors()
    a = Anchors(np.append(a.rows, [H + 5, -1]), np.append(a.cols, [3, 3]),
                np.append(a.depth, [2.0, 2.0]), np.append(a.weight, [1.0, 1.0]))
    _, report = ScaleRecovery().process(RELATIVE, a, 0.0)
    assert report.anchors_used == 200 and '2 anchors outside' in report.detail


@pytest.mark.parametrize('bad', [np.zeros((3, 4, 2)), np.zeros(5), np.array([['a']]),
                                 np.zeros((0, 4))])
def test_bad_relative_input(bad):
    with pytest.raises(RecoveryInputError):
        ScaleRecovery().process(bad, None, 0.0)
    with pytest.raises(RecoveryInputError):
        ScaleRecovery().process(RELATIVE, None, float('nan'))


@pytest.mark.parametrize('kwargs, word', [
    (dict(fit_space='log'), 'fit_space'), (dict(responsiveness=0.0), 'responsiveness'),
    (dict(responsiveness=2.0), 'responsiveness'), (dict(min_depth=5.0, max_depth=1.0), 'max_depth'),
    (dict(min_anchors=1), 'min_anchors'), (dict(fixed_scale=0.0), 'fixed_scale'),
    (dict(fixed_shift=float('nan')), 'fixed_shift'), (dict(hold_timeout_s=-1), 'hold_timeout_s'),
    (dict(reset_time_jump_s=0), 'reset_time_jump_s'), (dict(local_correction='yes'),
                                                       'local_correction')])
def test_config_validation_says_what_is_allowed(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        ScaleRecoveryConfig(**kwargs)
    with pytest.raises(ConfigError):
        ScaleRecovery().config = 'not a config'


def test_report_defaults():
    r = FitReport()
    assert r.status == 'none' and not r.metric and np.isnan(r.scale)


def test_gated_frame_with_consistent_anchors_is_still_corrected_locally():
    # The model's output jumps (relative scaled by 2) while the anchors stay right: the
    # temporal gate holds the old global mapping, but the anchors still correct the output.
    rec = ScaleRecovery(ScaleRecoveryConfig(responsiveness=0.5))
    rec.process(RELATIVE, _anchors(seed=1), 0.0)
    jumped = (RELATIVE * 2.0).astype(np.float32)
    depth, report = rec.process(jumped, _anchors(seed=2), 0.1)
    assert report.status == 'held'
    assert report.local_inliers > 100
    held_only = (report.scale * jumped + report.shift).astype(np.float32)
    assert _absrel(depth) < 0.5 * _absrel(held_only)
