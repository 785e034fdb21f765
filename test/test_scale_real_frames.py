"""Scale recovery on the real frame in ../shared/data/rgbd (a real network's relative depth and
its ground truth): accuracy that must not regress, and the LiDAR see-through case that used to
make the global fit lock onto the foreground group. bench/scale_recovery.py has the full table."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiffdepth_ros.scale.anchors import depth_image_anchors
from fiffdepth_ros.scale.recovery import ScaleRecovery, ScaleRecoveryConfig

# The project's shared test data sits beside the checkout (../shared/data); FIFFDEPTH_DATA
# points elsewhere.
DATA = Path(os.environ.get('FIFFDEPTH_DATA', Path(__file__).resolve().parents[2] / 'shared' /
                           'data')) / 'rgbd' / 'indoor_relative'

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f'test data not found at {DATA}')


@pytest.fixture(scope='module')
def frame():
    relative = np.load(DATA / 'relative_pred.npy').astype(np.float32)
    gt = cv2.imread(str(DATA / 'gt_depth.png'), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1e3
    return relative, gt


def _recover(relative, gt, rows, cols, z, options=None):
    img = np.zeros(gt.shape, np.float32)
    img[rows, cols] = z
    anchors = depth_image_anchors(img, grid_step=1, target_shape=gt.shape, source='test')
    recovery = ScaleRecovery(ScaleRecoveryConfig(max_depth=10.0), *([options] if options else []))
    depth, report = recovery.process(relative, anchors, 0.0)
    valid = gt > 0
    ok = valid & np.isfinite(depth)
    assert ok.sum() > 0.99 * valid.sum()
    absrel = float(np.mean(np.abs(depth[ok] - gt[ok]) / gt[ok]))
    rmse = float(np.sqrt(np.mean((depth[ok] - gt[ok]) ** 2)))
    return absrel, rmse, report


def _scan_lines(valid, lines, seed, step=4):
    h, w = valid.shape
    rows = np.round(8 + (h - 16) / lines * (np.arange(lines) + (seed + 0.5) / 5)).astype(int)
    rr, cc = np.meshgrid(rows, np.arange(seed % step, w, step), indexing='ij')
    keep = valid[rr.ravel(), cc.ravel()]
    return rr.ravel()[keep], cc.ravel()[keep]


@pytest.mark.parametrize('n, max_absrel, max_rmse', [(500, 0.02, 0.10), (100, 0.04, 0.25)])
def test_random_anchors_reach_the_accuracy_targets(frame, n, max_absrel, max_rmse):
    relative, gt = frame
    flat = np.flatnonzero(gt > 0)
    results = []
    for seed in range(3):
        idx = np.random.default_rng(seed).choice(flat, n, replace=False)
        rows, cols = idx // gt.shape[1], idx % gt.shape[1]
        absrel, rmse, report = _recover(relative, gt, rows, cols, gt[rows, cols])
        assert report.status == 'fitted' and report.metric
        results.append((absrel, rmse))
    absrel, rmse = np.mean(results, axis=0)
    assert absrel <= max_absrel and rmse <= max_rmse


@pytest.mark.parametrize('factor', [0.5, 2.0])
def test_a_third_of_scan_anchors_seen_through_edges_barely_matters(frame, factor):
    """30 % of a 64-line scan moved to the foreground (x0.5) or background (x2), one side only:
    every seed still fits the majority, and the corrected depth stays within 15 % on average
    (30 % for any one seed) of the same scan without the moved third: what a perfect judge
    would give, the information the moved anchors take with them set aside (the clean scan
    itself is 20-40 % better since the detail level honours the anchors at their spacing)."""
    relative, gt = frame
    ratios, to_full = [], []
    for seed in range(5):
        rows, cols = _scan_lines(gt > 0, 64, seed)
        z = gt[rows, cols].copy()
        bad = np.random.default_rng(1000 + seed).permutation(len(z))[:int(round(0.3 * len(z)))]
        kept = np.ones(len(z), bool)
        kept[bad] = False
        clean, _, _ = _recover(relative, gt, rows[kept], cols[kept], z[kept])
        full, _, _ = _recover(relative, gt, rows, cols, z)
        z[bad] *= factor
        absrel, _, report = _recover(relative, gt, rows, cols, z)
        assert report.status == 'fitted', report.detail
        assert report.inliers < 0.75 * len(z)          # the moved third is not in the fit
        ratios.append(absrel / clean)
        to_full.append(absrel / full)
    assert max(ratios) <= 1.3 and np.mean(ratios) <= 1.15, ratios
    # Against the whole clean scan too (measured 2026-12-07: mean 1.14 / 1.17, worst 1.28; the
    # issue's target is <= 1.10, which bench/scale_recovery.py reports as missed for 64 lines).
    assert max(to_full) <= 1.35 and np.mean(to_full) <= 1.2, to_full


def test_global_fit_prior_limits_one_sided_corruption_of_sparse_anchors(frame):
    """500 random anchors, 30 % of them pushed to the background (x2): where the moved ones
    happen to outnumber the good ones locally, the global fit's weak vote in the judging
    (judge_prior) tips the balance. Mean over 5 seeds, against the same without it."""
    from dataclasses import replace

    from fiffdepth_ros.scale.local_correction import LocalCorrectionOptions

    relative, gt = frame
    flat = np.flatnonzero(gt > 0)

    def absrel(rows, cols, z, options):
        return _recover(relative, gt, rows, cols, z, options)[0]

    with_prior, without = LocalCorrectionOptions(), replace(LocalCorrectionOptions(),
                                                            judge_prior=0.0)
    assert with_prior.judge_prior > 0
    clean, moved, moved_no_prior = [], [], []
    for seed in range(5):
        idx = np.random.default_rng(seed).choice(flat, 500, replace=False)
        rows, cols = idx // gt.shape[1], idx % gt.shape[1]
        z = gt[rows, cols].copy()
        clean.append(absrel(rows, cols, z, with_prior))
        z[np.random.default_rng(1000 + seed).permutation(500)[:150]] *= 2.0
        moved.append(absrel(rows, cols, z, with_prior))
        moved_no_prior.append(absrel(rows, cols, z, without))
    # 0.0148 vs 0.0161 here, clean 0.0093. Before the sparse sets' wider judging bands
    # (judge_max_bins) 0.0135 vs 0.0162: those bands give the moved anchors neighbours that
    # outvote them without the prior too, and on these 5 seeds cost this case 10 % (over 20
    # seeds 5 %: 0.0120 -> 0.0126, while two-sided and foreground corruption gained).
    assert np.mean(moved) < 0.95 * np.mean(moved_no_prior)
    assert np.mean(moved) < 1.6 * np.mean(clean)


def _simulated_prediction(gt, seed):
    """A relative depth with a network's kind of error from the GT: holes filled, edges blurred
    (4 px), a smooth +-20 % warp, 1 % pixel noise, an unknown scale and shift."""
    rng = np.random.default_rng(seed)
    valid = (gt > 0).astype(np.float32)
    fill = cv2.GaussianBlur(gt * valid, (0, 0), 8) / np.maximum(cv2.GaussianBlur(valid, (0, 0), 8),
                                                                1e-6)
    d = cv2.GaussianBlur(np.where(gt > 0, gt, fill), (0, 0), 4.0)
    warp = cv2.resize(rng.standard_normal((3, 4)).astype(np.float32), gt.shape[::-1],
                      interpolation=cv2.INTER_CUBIC)
    d = d * np.exp(0.2 * warp + 0.01 * rng.standard_normal(gt.shape).astype(np.float32))
    return (d * rng.uniform(0.3, 3.0) + rng.uniform(-0.5, 0.5)).astype(np.float32)


@pytest.mark.skipif(not (DATA.parent / 'indoor_sparse').is_dir(), reason='no indoor_sparse')
def test_the_guide_choice_survives_corrupted_anchors():
    """'both' on a 16-line scan over predictions with blurred edges: the guide chosen on the
    clean anchors (the image joins it on most) is the one chosen with 30 % of them corrupted
    (x0.5 / x1.8, rejected by the judging). Scoring the candidates by their judging fields
    went back to the depth guide once anchors were rejected (and lost 12 % on the
    benchmark's sparse-frame case)."""
    from fiffdepth_ros.scale import local_correction as lc
    from fiffdepth_ros.scale.fit import apply_fit, fit_scale_shift
    sparse = DATA.parent / 'indoor_sparse'
    gt = cv2.imread(str(sparse / 'gt_depth.png'), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1e3
    rgb = cv2.cvtColor(cv2.imread(str(sparse / 'rgb.png')), cv2.COLOR_BGR2RGB)
    rows, cols = _scan_lines(gt > 0, 16, 0)
    z = gt[rows, cols].astype(np.float64)
    rng = np.random.default_rng(7)
    chosen = rng.permutation(len(z))[:int(round(0.3 * len(z)))]
    corrupted = z.copy()
    corrupted[chosen[::2]] *= 0.5
    corrupted[chosen[1::2]] *= 1.8
    options = lc.LocalCorrectionOptions(guide='both')
    images = []
    for seed in range(4):
        relative = _simulated_prediction(gt, seed)
        mixes = []
        for anchors in (z, corrupted):
            fit = fit_scale_shift(relative[rows, cols].astype(np.float64), anchors)
            aligned = apply_fit(relative, fit.scale, fit.shift, 'depth')
            plan = lc.correction_grid(gt.shape, rows, cols, anchors, None,
                                      lambda r, c: aligned[r, c],
                                      lc.guide_range(lc.log_guide(aligned)), options,
                                      lambda r, c: lc.lightness_at(rgb, r, c),
                                      lc.lightness_range(rgb))
            mixes.append(plan.mix)
            if anchors is corrupted:
                assert np.count_nonzero(plan.weights[chosen] == 0) > 0.9 * len(chosen)
        assert mixes[0] == mixes[1], (seed, mixes)
        images.append(mixes[0][1] > 0)
    assert sum(images) >= 2, images              # the image mattered on most of these
