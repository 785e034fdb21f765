"""The sparse-anchor metric protocol: anchor sampling, KITTI line thinning, scale recovery, CLI."""
import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_eval_datasets import write_kitti, write_nyu

from fiffdepth_ros.cli.evaluate import main
from fiffdepth_ros.evaluation.alignment import align_scale_shift
from fiffdepth_ros.evaluation.anchors_protocol import (
    HDL64_ELEVATIONS_DEG, AnchorSetting, evaluate_anchor_frame, kitti_principal_point,
    lidar_line_pixels, parse_settings, random_anchor_pixels, sample_seed)
from fiffdepth_ros.evaluation.datasets import open_dataset
from fiffdepth_ros.evaluation.metrics import compute_metrics

DATA = Path(os.environ.get('FIFFDEPTH_DATA', Path(__file__).resolve().parents[2] / 'shared' /
                           'data')) / 'rgbd' / 'indoor_relative'


def _scene(h=120, w=160):
    yy, xx = np.mgrid[0:h, 0:w]
    return (2.0 + 3.0 * yy / h + np.sin(xx / 20.0)).astype(np.float32)


def test_random_anchors_distinct_valid_and_reproducible():
    valid = np.random.default_rng(0).random((60, 80)) > 0.5
    r, c = random_anchor_pixels(valid, 500, sample_seed('a/rgb_0001.png', 0))
    assert len(r) == 500 and valid[r, c].all()
    assert len(set(zip(r.tolist(), c.tolist()))) == 500
    r2, c2 = random_anchor_pixels(valid, 500, sample_seed('a/rgb_0001.png', 0))
    assert np.array_equal(r, r2) and np.array_equal(c, c2)
    r3, _ = random_anchor_pixels(valid, 500, sample_seed('a/rgb_0002.png', 0))
    assert not np.array_equal(r, r3)
    few = np.zeros((10, 10), bool)
    few[2, 3] = few[7, 1] = True
    assert len(random_anchor_pixels(few, 500, sample_seed('x', 0))[0]) == 2


def _synthetic_scan(focal=721.5377, h=352, w=1216):
    """A 64-laser HDL-64E sweep over a ground plane and a wall, projected into the cropped
    KITTI camera; returns the sparse depth image and each pixel's laser."""
    cx, cy = kitti_principal_point()
    origin = np.array([0.0, -0.08, -0.27])            # LiDAR in the camera frame (y down)
    depth = np.zeros((h, w), np.float32)
    beam = np.full((h, w), -1)
    az = np.radians(np.linspace(-38, 38, 2400))
    for k, e in enumerate(np.radians(HDL64_ELEVATIONS_DEG)):
        d = np.stack([np.sin(az) * np.cos(e), np.full_like(az, -np.sin(e)), np.cos(az) * np.cos(e)], 1)
        t_wall = (25.0 - origin[2]) / d[:, 2]
        with np.errstate(divide='ignore'):
            t_ground = np.where(d[:, 1] > 0, (1.65 - origin[1]) / d[:, 1], np.inf)
        p = origin + np.minimum(t_wall, t_ground)[:, None] * d
        u = np.floor(focal * p[:, 0] / p[:, 2] + cx + 0.5).astype(int)
        v = np.floor(focal * p[:, 1] / p[:, 2] + cy + 0.5).astype(int)
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        depth[v[ok], u[ok]] = p[ok, 2]
        beam[v[ok], u[ok]] = k
    return depth, beam


def test_lidar_lines_keep_every_fourth_laser():
    depth, beam = _synthetic_scan()
    valid = depth > 0
    rows, cols = lidar_line_pixels(depth, valid, 721.5377, kitti_principal_point())
    kept = np.zeros_like(valid)
    kept[rows, cols] = True
    want = valid & (beam % 4 == 0)
    assert np.array_equal(kept, want)
    lasers_seen = np.unique(beam[valid])
    assert len(np.unique(beam[kept])) == len(lasers_seen[lasers_seen % 4 == 0]) >= 10


@pytest.mark.parametrize('local', [False, True])
def test_affine_relative_depth_recovers_metres(local):
    gt = _scene()
    valid = np.ones_like(gt, bool)
    relative = (gt - 0.5) / 3.0
    out = evaluate_anchor_frame(relative, gt, valid, AnchorSetting('random', 100, local), 'depth',
                                1e-3, 10.0, sample_seed('s', 0), 'depth')
    assert out['anchors'] == 100 and out['coverage'] == 1.0 and out['status'] == 'fitted'
    assert out['abs_rel'] < 1e-3 and out['mae'] < 5e-3
    assert (out['local_inliers'] > 0) == local
    # A disparity model's output is fitted in inverse depth.
    out = evaluate_anchor_frame(2.0 / gt + 0.1, gt, valid, AnchorSetting('random', 100, local),
                                'disparity', 1e-3, 10.0, sample_seed('s', 0), 'depth')
    assert out['abs_rel'] < 1e-3


def test_parse_settings():
    labels = [s.label for s in parse_settings('100, 500,lines16', 'both')]
    assert labels == ['random100/local', 'random100/global', 'random500/local',
                      'random500/global', 'lines16/local', 'lines16/global']
    with pytest.raises(ValueError):
        parse_settings('many', 'on')
    with pytest.raises(ValueError):
        parse_settings('1', 'on')


@pytest.mark.skipif(not DATA.is_dir(), reason=f'test data not found at {DATA}')
def test_real_frame_local_correction_beats_the_global_fit():
    relative = np.load(DATA / 'relative_pred.npy').astype(np.float32)
    gt = cv2.imread(str(DATA / 'gt_depth.png'), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1e3
    valid = (gt > 1e-3) & (gt < 10.0)
    crop = np.zeros_like(valid)
    crop[45:471, 41:601] = True
    valid &= crop
    oracle = compute_metrics(align_scale_shift(relative, gt, valid, min_depth=1e-3, max_depth=10),
                             gt, valid)
    res = {}
    for local in (False, True):
        res[local] = evaluate_anchor_frame(relative, gt, valid, AnchorSetting('random', 500, local),
                                           'depth', 1e-3, 10.0, sample_seed('real', 0), 'depth')
    # 500 anchors: the robust global fit is about as good as least squares on every pixel;
    # local correction between anchors is several times better (bench/eval_anchor_protocol.py).
    assert res[False]['abs_rel'] < 1.2 * oracle['abs_rel']
    assert res[True]['abs_rel'] < 0.5 * res[False]['abs_rel']
    assert res[True]['mae'] < 0.5 * res[False]['mae'] and res[True]['coverage'] > 0.99


def _write_predictions(ds, folder, fn):
    for i in range(len(ds)):
        s = ds[i]
        path = folder / s.pred_name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, fn(s).astype(np.float32))


def _nyu_with_predictions(tmp_path):
    """A tiny NYU split and an affine-distorted prediction of each frame: (split, folder)."""
    split, _ = write_nyu(tmp_path / 'nyu', np.random.default_rng(0))
    ds = open_dataset('nyu', str(tmp_path / 'nyu'), str(split))
    preds = tmp_path / 'nyu_preds'
    _write_predictions(ds, preds, lambda s: (s.depth - 0.2) / 2.0)
    return split, preds


def test_cli_anchor_protocol_nyu_and_kitti(tmp_path, capsys):
    split, preds = _nyu_with_predictions(tmp_path)
    out = tmp_path / 'nyu_out'
    args = ['--dataset', 'nyu', '--data', str(tmp_path / 'nyu'), '--split', str(split),
            '--predictions', str(preds), '--protocol', 'anchors', '--anchors', '100,500',
            '--output', str(out), '--no-progress']
    assert main(args) == 0
    text = capsys.readouterr().out
    assert 'random500/local' in text and 'random100/global' in text
    with open(out / 'per_sample_anchor_metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4
    assert {int(float(r['anchors'])) for r in rows} == {100, 500}
    summary = json.loads((out / 'anchor_metrics.json').read_text())['settings']
    assert all(v['abs_rel'] < 2e-3 and v['failed'] == 0 for v in summary.values())
    assert main(args) == 0                         # resumed: nothing left to do, same summary
    assert json.loads((out / 'anchor_metrics.json').read_text())['settings'] == summary

    split, _ = write_kitti(tmp_path / 'kitti', np.random.default_rng(1))
    ds = open_dataset('kitti', str(tmp_path / 'kitti'), str(split))
    preds = tmp_path / 'kitti_preds'
    _write_predictions(ds, preds, lambda s: np.where(s.depth > 0, s.depth / 10.0 + 1.0, 3.0))
    out = tmp_path / 'kitti_out'
    assert main(['--dataset', 'kitti', '--data', str(tmp_path / 'kitti'), '--split', str(split),
                 '--predictions', str(preds), '--protocol', 'anchors', '--anchor-local', 'off',
                 '--output', str(out), '--no-progress']) == 0
    summary = json.loads((out / 'anchor_metrics.json').read_text())['settings']
    assert list(summary) == ['lines16/global']
    s = ds[0]
    rows, _ = lidar_line_pixels(s.depth, s.valid, 721.5377, kitti_principal_point())
    assert 0 < len(rows) < s.valid.sum()
    assert summary['lines16/global']['abs_rel'] < 1e-3


def test_anchor_protocol_guides_with_the_sample_image():
    """The protocol hands the sample's RGB to the scale recovery: with local_guide 'image' a
    colour edge the flat prediction lacks is kept (two walls at 2 m and 3 m)."""
    h, w = 120, 160
    gt = np.where(np.arange(w)[None] < 70, 2.0, 3.0).astype(np.float32) * np.ones((h, 1))
    gt = gt.astype(np.float32)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :70], rgb[:, 70:] = (200, 190, 170), (60, 70, 110)
    relative = np.full((h, w), 0.5, np.float32) + np.linspace(0, 0.01, w, dtype=np.float32)
    valid = gt > 0
    rows = {}
    for guide in ('depth', 'image'):
        rows[guide] = evaluate_anchor_frame(relative, gt, valid, AnchorSetting('random', 100),
                                            'depth', 0.1, 10.0, sample_seed('walls', 0),
                                            image=rgb, local_guide=guide)
    assert rows['image']['abs_rel'] < 0.6 * rows['depth']['abs_rel']


def test_cli_anchor_protocol_local_guide_option(tmp_path, capsys):
    split, preds = _nyu_with_predictions(tmp_path)
    out = tmp_path / 'out'
    args = ['--dataset', 'nyu', '--data', str(tmp_path / 'nyu'), '--split', str(split),
            '--predictions', str(preds), '--protocol', 'anchors', '--anchors', '100',
            '--anchor-local', 'on', '--output', str(out), '--no-progress']
    assert main(args + ['--local-guide', 'both']) == 0
    assert json.loads((out / 'run.json').read_text())['local_guide'] == 'both'
    summary = json.loads((out / 'anchor_metrics.json').read_text())['settings']
    assert summary['random100/local']['abs_rel'] < 2e-3
    capsys.readouterr()
    assert main(args + ['--local-guide', 'depth']) == 2       # another guide, same folder
    assert 'local_guide' in capsys.readouterr().err
