"""The evaluation's two protocols on the real frame in ../shared/data/rgbd/indoor_relative.

    python bench/eval_anchor_protocol.py [--data DIR] [--seeds N]

The frame (640x480, NYUv2-like) has a real network's relative depth and its ground truth; it is
read in place. It is scored as fiffdepth-eval scores an NYUv2 test image: valid = GT in
(1e-3, 10) m inside the Eigen crop (rows 45:471, cols 41:601).
1. Relative protocol (the papers'): least-squares scale+shift on every valid pixel, in depth and
   in disparity, clip to the range; AbsRel, delta1, RMSE.
2. Anchor protocol (what the node publishes): N random valid GT pixels (N = 100, 500, 1000;
   --seeds draws each) -> the package's ScaleRecovery (robust global fit, temporal filter off,
   local correction off/on) -> metric depth scored on every valid pixel (AbsRel, RMSE and MAE in
   metres). Plus indoor_sparse's real 405-pixel LiDAR-like pattern used as pixel positions
   (values from this frame's GT), as bench/scale_recovery.py does.
Printed: mean and standard deviation over the seeds, the local/global ratio, milliseconds per
frame of the scale recovery (this machine, CPU). One frame only: not a benchmark result.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.evaluation.alignment import align_scale_shift  # noqa: E402
from fiffdepth_ros.evaluation.anchors_protocol import (  # noqa: E402
    AnchorSetting, anchor_weights, evaluate_anchor_frame, recover_metric, sample_seed)
from fiffdepth_ros.evaluation.metrics import compute_metrics  # noqa: E402

_SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
DEFAULT_DATA = Path(os.environ.get('FIFFDEPTH_DATA', _SHARED)) / 'rgbd'
MIN_D, MAX_D = 1e-3, 10.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', type=Path, default=DEFAULT_DATA)
    p.add_argument('--seeds', type=int, default=20)
    args = p.parse_args(argv)
    frame = args.data / 'indoor_relative'
    relative = np.load(frame / 'relative_pred.npy').astype(np.float32)
    gt = cv2.imread(str(frame / 'gt_depth.png'), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1e3
    valid = (gt > MIN_D) & (gt < MAX_D)
    crop = np.zeros_like(valid)
    crop[45:471, 41:601] = True
    valid &= crop
    print(f'frame {frame} ({gt.shape[1]}x{gt.shape[0]}), {int(valid.sum())} valid pixels '
          f'(NYUv2 range and Eigen crop)\n')

    print('relative protocol (least squares on every valid pixel)')
    print(f'{"alignment":<12}{"AbsRel":>9}{"delta1":>9}{"RMSE m":>9}')
    for space in ('depth', 'disparity'):
        m = compute_metrics(align_scale_shift(relative, gt, valid, space=space, min_depth=MIN_D,
                                              max_depth=MAX_D), gt, valid)
        print(f'{space:<12}{m["abs_rel"]:9.4f}{m["delta1"]:9.4f}{m["rmse"]:9.4f}')

    print(f'\nanchor protocol ({args.seeds} seeds; mean +- std)')
    head = f'{"anchors":<16}{"mode":<8}{"AbsRel":>16}{"RMSE m":>16}{"MAE m":>16}{"ms":>8}'
    print(head)
    rows = {}
    for n in (100, 500, 1000):
        for local in (False, True):
            runs = [evaluate_anchor_frame(relative, gt, valid, AnchorSetting('random', n, local),
                                          'depth', MIN_D, MAX_D, sample_seed('frame', s),
                                          'depth') for s in range(args.seeds)]
            rows[(n, local)] = runs
            _print(f'random {n}', local, runs)
    sparse_path = args.data / 'indoor_sparse' / 'sparse_depth.png'
    if sparse_path.is_file():
        pattern = cv2.imread(str(sparse_path), cv2.IMREAD_UNCHANGED) > 0
        r, c = np.nonzero(pattern & valid)
        z = gt[r, c].astype(np.float64)
        for local in (False, True):
            metric, report, sec = recover_metric(relative, r, c, z, anchor_weights(z, 'depth'),
                                                 'depth', local, MIN_D, MAX_D)
            ok = valid & np.isfinite(metric)
            m = compute_metrics(metric, gt, ok)
            m.update(ms=sec * 1e3)
            _print(f'real {len(z)}-px', local, [m])
    print('\nlocal / global (mean ratio)')
    for n in (100, 500, 1000):
        g, loc = rows[(n, False)], rows[(n, True)]
        ratio = {k: np.mean([b[k] for b in loc]) / np.mean([a[k] for a in g])
                 for k in ('abs_rel', 'rmse', 'mae')}
        print(f'random {n:<9} AbsRel x{ratio["abs_rel"]:.3f}  RMSE x{ratio["rmse"]:.3f}  '
              f'MAE x{ratio["mae"]:.3f}')
    return 0


def _print(label, local, runs):
    def ms(k):
        v = np.array([r[k] for r in runs])
        return f'{v.mean():.4f}+-{v.std():.4f}'
    t = np.median([r['ms'] for r in runs])
    print(f'{label:<16}{"local" if local else "global":<8}{ms("abs_rel"):>16}{ms("rmse"):>16}'
          f'{ms("mae"):>16}{t:8.1f}')


if __name__ == '__main__':
    sys.exit(main())
