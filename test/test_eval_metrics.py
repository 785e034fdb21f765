"""Alignment and metrics of the evaluation protocol against independent step-by-step formulas."""
import math

import numpy as np
import pytest
import torch

from fiffdepth_ros.evaluation.alignment import (
    align_scale_shift, clip_to_range, fit_scale_shift, nearest_downsample,
)
from fiffdepth_ros.evaluation.metrics import compute_metrics, mean_metrics


def _loop_metrics(pred, gt, valid):
    """Pixel-by-pixel sums, written without numpy reductions."""
    n = 0
    s_abs = s_sq = s_se = s_le = s_l10 = s_le2 = s_inv = s_ae = 0.0
    d1 = d2 = d3 = 0
    for d, g, v in zip(pred.ravel().tolist(), gt.ravel().tolist(), valid.ravel().tolist()):
        if not v:
            continue
        n += 1
        s_abs += abs(d - g) / g
        s_sq += (d - g) ** 2 / g
        s_se += (d - g) ** 2
        s_ae += abs(d - g)
        e = math.log(d) - math.log(g)
        s_le += e
        s_le2 += e * e
        s_l10 += abs(math.log10(d) - math.log10(g))
        s_inv += (1 / d - 1 / g) ** 2
        r = max(d / g, g / d)
        d1 += r < 1.25
        d2 += r < 1.5625
        d3 += r < 1.953125
    return {
        "abs_rel": s_abs / n, "sq_rel": s_sq / n, "rmse": math.sqrt(s_se / n),
        "rmse_log": math.sqrt(s_le2 / n), "log10": s_l10 / n,
        "delta1": d1 / n, "delta2": d2 / n, "delta3": d3 / n, "i_rmse": math.sqrt(s_inv / n),
        "silog": 100 * math.sqrt(s_le2 / n - (s_le / n) ** 2), "mae": s_ae / n,
    }


def test_metrics_equal_their_formulas_on_hand_made_arrays():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 8.0, (13, 17))
    pred = gt * rng.uniform(0.6, 1.7, gt.shape)
    valid = rng.random(gt.shape) > 0.3
    got, want = compute_metrics(pred, gt, valid), _loop_metrics(pred, gt, valid)
    assert set(want) <= set(got)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_tiny_hand_computed_case():
    gt = np.array([[1.0, 2.0], [4.0, 100.0]])
    pred = np.array([[1.0, 2.5], [2.0, 1.0]])
    valid = np.array([[True, True], [True, False]])
    m = compute_metrics(pred, gt, valid)
    assert m["abs_rel"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 4) / 3))
    # ratios 1, 1.25 (not < 1.25: strict), 2
    assert m["delta1"] == pytest.approx(1 / 3)
    assert m["delta2"] == pytest.approx(2 / 3)
    assert m["delta3"] == pytest.approx(2 / 3)


def test_perfect_prediction_and_known_perturbation():
    gt = np.linspace(1, 10, 200).reshape(10, 20)
    valid = np.ones_like(gt, dtype=bool)
    m = compute_metrics(gt.copy(), gt, valid)
    assert m["abs_rel"] == 0 and m["rmse"] == 0 and m["delta1"] == 1 and m["silog"] == pytest.approx(0, abs=1e-6)
    # A uniform 10 % over-estimate: abs_rel 0.1, delta1 1, rmse_log ln 1.1, silog 0 (scale-invariant).
    m = compute_metrics(gt * 1.1, gt, valid)
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["delta1"] == 1.0
    assert m["rmse_log"] == pytest.approx(math.log(1.1))
    assert m["log10"] == pytest.approx(math.log10(1.1))
    assert m["silog"] == pytest.approx(0, abs=1e-5)
    # Half the pixels 30 % too far: delta1 is exactly one half.
    pert = gt.copy()
    pert[:, ::2] *= 1.3
    assert compute_metrics(pert, gt, valid)["delta1"] == pytest.approx(0.5)


def test_metrics_reject_bad_input():
    gt = np.ones((3, 3))
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((3, 3)), gt, np.ones((3, 3), bool))
    with pytest.raises(ValueError):
        compute_metrics(gt, gt, np.zeros((3, 3), bool))
    with pytest.raises(ValueError):
        compute_metrics(gt, np.ones((3, 4)), np.ones((3, 3), bool))


def test_mean_over_images_not_pixels():
    a = {"abs_rel": 0.1, "rmse": 1.0}
    b = {"abs_rel": 0.3, "rmse": 3.0}
    assert mean_metrics([a, b]) == {"abs_rel": pytest.approx(0.2), "rmse": pytest.approx(2.0)}


def _normal_equations(x, y):
    """Closed-form 2x2 least squares, by hand."""
    n = len(x)
    sx, sy = sum(x), sum(y)
    sxx = sum(a * a for a in x)
    sxy = sum(a * b for a, b in zip(x, y))
    scale = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return scale, (sy - scale * sx) / n


def test_depth_alignment_equals_direct_least_squares():
    rng = np.random.default_rng(1)
    gt = rng.uniform(1, 9, (20, 30))
    pred = (gt - 2.0) / 3.0 + rng.normal(0, 0.05, gt.shape)
    valid = rng.random(gt.shape) > 0.4
    valid[0, 0] = False
    pred[0, 0] = 1e6  # an invalid outlier must not move the fit
    scale, shift = _normal_equations(pred[valid].tolist(), gt[valid].tolist())
    aligned, s, t = align_scale_shift(pred, gt, valid, return_params=True)
    assert (s, t) == (pytest.approx(scale, rel=1e-9), pytest.approx(shift, rel=1e-9))
    assert np.allclose(aligned[valid], np.maximum(pred[valid] * scale + shift, 1e-6), rtol=1e-5)
    assert abs(s - 3.0) < 0.1 and abs(t - 2.0) < 0.3
    design = np.stack([pred[valid], np.ones(valid.sum())], 1)
    assert np.allclose(np.linalg.lstsq(design, gt[valid], rcond=None)[0], [s, t], rtol=1e-9)
    # A constant prediction carries no scale: the aligned map is the mean of the target.
    flat = align_scale_shift(np.full_like(gt, 0.7), gt, valid)
    assert np.allclose(flat[valid], gt[valid].mean(), rtol=1e-6)


def test_disparity_alignment_inverts_correctly():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1, 20, (16, 16))
    pred_disp = 5.0 / gt + 0.2  # exact affine disparity: 1/gt = (pred - 0.2) / 5
    valid = np.ones_like(gt, dtype=bool)
    aligned, s, t = align_scale_shift(pred_disp, gt, valid, space="disparity", return_params=True)
    assert s == pytest.approx(0.2) and t == pytest.approx(-0.04)
    assert np.allclose(aligned, gt, rtol=1e-5)
    # An affine disparity is not affine in depth: the depth fit cannot recover it exactly.
    assert compute_metrics(align_scale_shift(pred_disp, gt, valid), gt, valid)["abs_rel"] > 0.05
    # Aligned disparity is clipped at 1e-3 before the inversion: at most 1000 m.
    far = pred_disp.copy()
    far[0, 0] = -10.0
    valid2 = valid.copy()
    valid2[0, 0] = False
    out = align_scale_shift(far, gt, valid2, space="disparity")
    assert out[0, 0] == pytest.approx(1000.0)


def test_clip_to_range():
    d = np.array([-1.0, 0.0, 0.5, 5.0, 50.0])
    assert clip_to_range(d, 1e-3, 10.0).tolist() == pytest.approx([1e-3, 1e-3, 0.5, 5.0, 10.0])
    assert clip_to_range(d, None, None)[:2].tolist() == pytest.approx([1e-6, 1e-6])
    assert align_scale_shift(np.array([[1.0, 2.0, 30.0]]), np.array([[1.0, 2.0, 3.0]]),
                             np.array([[True, True, False]]), min_depth=0.5, max_depth=10).max() == 10


# (2, 6048): ETH3D's width (4032x6048 at max 1024) without its 97 MB of rows.
@pytest.mark.parametrize("shape,max_res", [((40, 60), 24), ((37, 23), 10), ((8, 8), 16),
                                           ((2, 6048), 1024)])
def test_alignment_downsample_keeps_the_reference_pixels(shape, max_res):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    got = nearest_downsample(a, max_res)
    s = float(np.min(max_res / np.array(shape)))
    if s >= 1:
        assert got is a
        return
    # The reference hands a 1xHxW tensor to Upsample: only the width is resampled.
    want = torch.nn.Upsample(scale_factor=s, mode="nearest")(torch.from_numpy(a)[None])[0].numpy()
    assert np.array_equal(got, want)
    # Fitting on the downsampled copy uses only those pixels.
    gt = a * 2 + 1
    scale, shift = fit_scale_shift(a, gt, np.ones(shape, bool), max_resolution=max_res)
    assert (scale, shift) == (pytest.approx(2.0), pytest.approx(1.0))


def test_score_arrays_is_alignment_then_metrics():
    from fiffdepth_ros.evaluation.runner import EvaluationError, score_arrays
    rng = np.random.default_rng(3)
    gt = rng.uniform(1, 9, (12, 14))
    pred = gt * rng.uniform(0.9, 1.1, gt.shape) / 5 + 0.3
    valid = gt < 8
    got = score_arrays(pred, gt, valid, 'depth', 1e-3, 10.0)
    want = compute_metrics(align_scale_shift(pred, gt, valid, min_depth=1e-3, max_depth=10.0), gt, valid)
    assert all(got[k] == pytest.approx(v) for k, v in want.items())
    assert got['n_valid'] == int(valid.sum()) and got['scale'] == pytest.approx(5, rel=0.1)
    bad = pred.copy()
    bad[0, 0] = np.nan
    valid[0, 0] = True
    with pytest.raises(EvaluationError, match='non-finite'):
        score_arrays(bad, gt, valid)
