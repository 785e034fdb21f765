"""Robust global scale + shift fit: accuracy, robustness, determinism, degenerate anchor sets."""
import numpy as np
import pytest

from fiffdepth_ros.scale.fit import FitError, FitOptions, apply_fit, fit_scale_shift


def _scene(n=400, seed=0, scale=3.0, shift=0.8, noise=0.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 1.0, n)
    z = scale * x + shift
    return x, z * (1.0 + noise * rng.standard_normal(n))


def test_exact_data_is_recovered():
    x, z = _scene()
    fit = fit_scale_shift(x, z)
    assert fit.status == 'fitted' and fit.reason == ''
    assert np.isclose(fit.scale, 3.0, rtol=1e-6) and np.isclose(fit.shift, 0.8, atol=1e-6)
    assert fit.residual < 1e-6 and fit.inliers.all() and fit.used == len(x)


def test_inverse_space_fits_disparity_like_predictions():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 1.0, 300)                   # larger = nearer
    z = 1.0 / (0.5 * x + 0.05)
    fit = fit_scale_shift(x, z, options=FitOptions(space='inverse'))
    assert fit.status == 'fitted'
    assert np.isclose(fit.scale, 0.5, rtol=1e-6) and np.isclose(fit.shift, 0.05, atol=1e-7)
    depth = apply_fit(x.astype(np.float32), fit.scale, fit.shift, 'inverse')
    assert np.allclose(depth, z, rtol=1e-4)
    # The same data fitted in depth space is visibly worse: the spaces are not interchangeable.
    assert fit_scale_shift(x, z).residual > 0.05


@pytest.mark.parametrize('fraction', [0.1, 0.3])
def test_gross_outliers_are_rejected(fraction):
    x, z = _scene(noise=0.02, seed=2)
    rng = np.random.default_rng(3)
    bad = rng.random(len(z)) < fraction
    z_bad = z.copy()
    z_bad[bad] *= np.where(rng.random(bad.sum()) < 0.5, 0.5, 2.0)
    fit = fit_scale_shift(x, z_bad)
    assert fit.status == 'fitted'
    assert abs(fit.scale / 3.0 - 1) < 0.03 and abs(fit.shift - 0.8) < 0.05
    assert not fit.inliers[bad].any() and fit.inliers[~bad].mean() > 0.99
    # Plain least squares on the same data is much worse: the test data is adversarial.
    ls = np.polyfit(x, z_bad, 1)
    assert abs(ls[0] - 3.0) > 3 * abs(fit.scale - 3.0)


def test_one_sided_outliers_are_rejected():
    # LiDAR returns from the background behind foreground edges: all on one side.
    x, z = _scene(noise=0.02, seed=4)
    z_bad = z.copy()
    z_bad[::3] *= 2.0
    fit = fit_scale_shift(x, z_bad)
    assert abs(fit.scale / 3.0 - 1) < 0.03 and abs(fit.shift - 0.8) < 0.05


def test_fit_is_deterministic():
    x, z = _scene(noise=0.05, seed=5, n=3000)
    z[::4] *= 2.0
    a, b = fit_scale_shift(x, z), fit_scale_shift(x.copy(), z.copy())
    assert (a.scale, a.shift, a.residual) == (b.scale, b.shift, b.residual)
    assert np.array_equal(a.inliers, b.inliers)


def test_weights_favour_precise_anchors():
    x, z = _scene(n=200, seed=6)
    z_noisy = z.copy()
    z_noisy[:100] *= 1.0 + 0.15 * np.sign(np.sin(np.arange(100)))    # within the cutoff
    w_trust_noisy = np.full(200, 1e4)
    w_right = w_trust_noisy.copy()
    w_right[:100] = 1.0                              # sigma 1 m: barely counted
    err_equal = abs(fit_scale_shift(x, z_noisy, w_trust_noisy).scale - 3.0)
    err_weighted = abs(fit_scale_shift(x, z_noisy, w_right).scale - 3.0)
    assert err_weighted < 0.2 * err_equal


def test_too_few_anchors_fall_back_to_scale_only():
    fit = fit_scale_shift([0.5, 0.7], [2.0, 2.8], prior_shift=0.0)
    assert fit.status == 'scale-only' and 'only 2 anchors' in fit.reason
    assert np.isclose(fit.scale, 4.0) and fit.shift == 0.0
    held = fit_scale_shift([0.5], [2.0], prior_shift=1.0)
    assert held.status == 'scale-only' and np.isclose(held.scale, 2.0) and held.shift == 1.0


def test_narrow_depth_range_holds_the_shift():
    rng = np.random.default_rng(7)
    x = 0.5 + 0.001 * rng.standard_normal(50)        # a wall facing the camera
    z = 3.0 * x + 0.8 + 0.01 * rng.standard_normal(50)
    fit = fit_scale_shift(x, z, prior_shift=0.8)
    assert fit.status == 'scale-only' and 'shift unobservable' in fit.reason
    assert fit.shift == 0.8 and np.isclose(fit.scale, 3.0, rtol=0.01)


def test_negative_scale_is_not_accepted():
    x = np.linspace(0.1, 1.0, 50)
    z = 5.0 - 3.0 * x                                # anti-correlated: wrong space or garbage
    fit = fit_scale_shift(x, z)
    assert fit.status in ('scale-only', 'failed') and 'absurd scale' in fit.reason
    assert not (fit.status == 'fitted' and fit.scale < 0)


def test_garbage_anchors_fail_and_say_why():
    rng = np.random.default_rng(8)
    x = rng.uniform(0.05, 1.0, 200)
    z = rng.uniform(0.5, 10.0, 200)                  # no relation to the prediction
    fit = fit_scale_shift(x, z)
    assert fit.status == 'failed' and fit.reason


def test_no_valid_anchors():
    fit = fit_scale_shift([0.5, 0.6, np.nan], [0.0, np.nan, 2.0])
    assert fit.status == 'failed' and fit.used == 0 and 'no valid anchors' in fit.reason
    assert fit_scale_shift([], []).status == 'failed'


def test_bad_arguments():
    with pytest.raises(FitError):
        fit_scale_shift([1.0, 2.0], [1.0])
    with pytest.raises(FitError):
        FitOptions(space='log')
    with pytest.raises(FitError):
        FitOptions(scale_bounds=(2.0, 1.0))


def test_apply_fit_marks_impossible_depth_invalid():
    rel = np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)
    depth = apply_fit(rel, 2.0, -0.5, 'depth')
    assert np.isnan(depth[0, 0]) and np.isclose(depth[0, 1], 0.5) and np.isnan(depth[0, 3])
    inv = apply_fit(rel, 1.0, 0.0, 'inverse')
    assert np.isnan(inv[0, 0]) and np.isclose(inv[0, 1], 2.0)      # 1/0 is not a depth
    assert depth.dtype == np.float32


def test_a_start_between_two_groups_does_not_decide_the_fit(monkeypatch):
    """A third of the anchors seen through a foreground edge (x0.5): IRLS started near that
    group converges to it; the fit runs from a second start (the resistant line) and keeps the
    solution with the lower bounded loss, i.e. the majority."""
    import fiffdepth_ros.scale.fit as fit_module

    x, z = _scene(n=1000, noise=0.02, seed=11)
    bad = np.random.default_rng(12).permutation(len(z))[:300]
    z[bad] *= 0.5
    opts = FitOptions()
    minority = (1.5, 0.4)                      # the x0.5 group's line: 0.5 * (3.0 x + 0.8)
    problem = fit_module._Problem(x, z, np.full(len(z), 1e4), opts)
    s, t = fit_module._irls(problem, opts, minority)
    assert np.isclose(s, 1.5, rtol=0.05)       # one start alone lands on the minority
    monkeypatch.setattr(fit_module, '_repeated_median', lambda *a: minority)
    fit = fit_scale_shift(x, z, options=opts)
    assert fit.status == 'fitted'
    assert np.isclose(fit.scale, 3.0, rtol=0.03) and np.isclose(fit.shift, 0.8, atol=0.05)
    assert not fit.inliers[bad].any() and fit.n_inliers == 700


def test_resistant_line_is_robust_to_a_scattered_third():
    from fiffdepth_ros.scale.fit import _resistant_line

    x, z = _scene(n=900, seed=13)
    z[::3] *= 2.0                              # every third anchor seen through to the background
    s, t = _resistant_line(x, z)
    # Inside the majority's basin (the x2 group's line would be 6.0 x + 1.6).
    assert abs(s - 3.0) < 1.0 and abs(t - 0.8) < 0.5
    assert np.isnan(_resistant_line(np.ones(10), np.arange(10.0))[0])   # no spread in x
    assert np.isnan(_resistant_line(np.ones(2), np.ones(2))[0])          # too few for thirds


def test_second_start_runs_only_when_the_first_leaves_many_anchors_out(monkeypatch):
    import fiffdepth_ros.scale.fit as fit_module

    calls = []
    real = fit_module._repeated_median
    monkeypatch.setattr(fit_module, '_repeated_median',
                        lambda *a: calls.append(1) or real(*a))
    x, z = _scene(n=1000, noise=0.02, seed=14)
    z[:50] *= 2.0                                   # 5 % gross outliers: one start suffices
    assert fit_scale_shift(x, z).status == 'fitted' and not calls
    z[:300] *= 2.0                                  # 30 %: the second start is tried as well
    fit = fit_scale_shift(x, z)
    assert calls and np.isclose(fit.scale, 3.0, rtol=0.03)
    calls.clear()
    fit_scale_shift(x[:40], z[:40])                 # few anchors
    assert calls                                    # small sets always try both (cheap)


def test_apply_fit_marks_overflow_invalid():
    rel = np.array([[3e38, -3e38, 1.0]], np.float32)
    depth = apply_fit(rel, 10.0, 0.0, 'depth')           # +inf, -inf: not a depth
    assert np.isnan(depth[0, 0]) and np.isnan(depth[0, 1]) and depth[0, 2] == 10.0


def test_evenly_spaced_subsets_are_even_read_only_and_reused():
    from fiffdepth_ros.scale.fit import evenly_spaced
    idx = evenly_spaced(4800, 1024)
    assert len(idx) == 1024 and idx[0] == 0 and idx[-1] == 4799
    np.testing.assert_array_equal(idx, np.linspace(0, 4799, 1024).round().astype(np.int64))
    assert np.all(np.diff(idx) >= 4) and np.all(np.diff(idx) <= 5)
    assert evenly_spaced(4800, 1024) is idx                 # cached: one frame asks twice
    with pytest.raises(ValueError):
        idx[0] = 1                                          # shared, so read only
    np.testing.assert_array_equal(evenly_spaced(7, 10), np.arange(7))


@pytest.mark.parametrize('n', [1, 2, 3, 10, 11, 1024, 1025])
def test_partition_medians_equal_numpys(n):
    from fiffdepth_ros.scale.fit import _median, _sorted_median
    a = np.random.default_rng(n).normal(size=n)
    assert _median(a) == float(np.median(a))
    assert _sorted_median(np.sort(a)) == float(np.median(a))
