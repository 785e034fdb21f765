#!/usr/bin/env python3
"""How well each pseudo-label conversion (teacher disparity -> depth target) preserves depth.

The paper does not publish how Depth Anything's affine-invariant disparity becomes a depth-latent
target. On real ground-truth depth (the frames in $FIFFDEPTH_DATA, default ../shared/data, and
NYU-like indoor scenes), an ideal teacher's disparity s / depth + t is built with unknown shifts t
(a fraction of the median disparity; Depth Anything's shift is unknown per image), converted with
each option, and the target in [-1, 1] is compared with the true depth after the least-squares
scale and shift that validation applies (the evaluation's align_scale_shift and compute_metrics):
AbsRel and delta1 of the best the t = -1 branch could learn from that target.

    python bench/pseudolabel_conversion.py [--data DIR]
"""
import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fiffdepth_ros.evaluation.alignment import align_scale_shift  # noqa: E402
from fiffdepth_ros.evaluation.metrics import compute_metrics  # noqa: E402
from fiffdepth_ros.training.targets import pseudo_label_to_normalized  # noqa: E402

OPTIONS = [('inverse', 5.0), ('inverse', 10.0), ('inverse', 20.0), ('inverse', 100.0),
           ('reciprocal', 100.0), ('negate', None)]
SHIFTS = (0.0, 0.1, 0.5)          # t as a fraction of the median true disparity


def road_scene(h=480, w=640, camera_height=1.6, focal=500.0, far=80.0):
    """A synthetic outdoor frame: a ground plane seen from 1.6 m (2-80 m), a wall at 12 m
    across the middle third, the sky invalid: the depth range of driving data."""
    horizon = h * 0.4
    rows = np.arange(h, dtype=np.float32)[:, None] - horizon
    depth = np.where(rows > 0, camera_height * focal / np.maximum(rows, 1e-3), 0.0)
    depth = np.broadcast_to(depth, (h, w)).copy()
    depth[(depth > far)] = 0.0
    wall = (depth > 12.0) | (depth == 0)
    depth[:, w // 3:2 * w // 3][wall[:, w // 3:2 * w // 3]] = 12.0
    depth[: int(horizon * 0.6), w // 3:2 * w // 3] = 0.0    # above the wall: sky
    return depth.astype(np.float32)


def frames(data: Path):
    for png in sorted(data.glob('rgbd/*/gt_depth.png')):
        depth = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        yield f'{png.parent.name} (real)', depth, 10.0
    yield 'road (synthetic)', road_scene(), 80.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=os.environ.get('FIFFDEPTH_DATA',
                                                      str(ROOT.parent / 'shared' / 'data')))
    args = ap.parse_args()
    table, names, shift_effect = {}, [], 0.0
    for name, depth, max_depth in frames(Path(args.data)):
        names.append(name)
        valid = depth > 0
        disparity_true = np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
        median = float(np.median(disparity_true[valid]))
        ratio = np.quantile(depth[valid], 0.98) / np.quantile(depth[valid], 0.02)
        names[-1] += f', q98/q02 depth {ratio:.1f}'
        # the ceiling: the true depth through the synthetic targets' own normalisation
        from fiffdepth_ros.training.targets import quantile_normalize
        d = torch.from_numpy(depth)[None, None]
        target = quantile_normalize(d, d > 0)[0, 0].numpy()
        m = compute_metrics(align_scale_shift(target, depth, valid, space='depth', min_depth=1e-3,
                                              max_depth=max_depth), depth, valid)
        table.setdefault('true depth, quantile-normalised (ceiling)', []).append(
            (m['abs_rel'], m['delta1']))
        for conversion, r in OPTIONS:
            key = conversion + (f' (max_depth_ratio {r:g})' if r else '')
            results = []
            for shift in SHIFTS:
                # holes get the median disparity (a teacher predicts everywhere)
                teacher = np.where(valid, disparity_true, median) + shift * median
                x = torch.from_numpy(teacher)[None, None].float()
                target = pseudo_label_to_normalized(x, conversion,
                                                    max_depth_ratio=r or 20.0)[0, 0].numpy()
                aligned = align_scale_shift(target, depth, valid, space='depth',
                                            min_depth=1e-3, max_depth=max_depth)
                m = compute_metrics(aligned, depth, valid)
                results.append((m['abs_rel'], m['delta1']))
            if conversion == 'reciprocal':        # assumes shift 0: one row per true shift
                for shift, result in zip(SHIFTS, results):
                    table.setdefault(f'{key}, teacher shift {shift:g}', []).append(result)
                continue
            shift_effect = max(shift_effect, max(abs(a[0] - results[0][0]) for a in results))
            table.setdefault(key, []).append(results[0])
    print('# target in [-1, 1] aligned to the true depth by least squares (scale, shift): '
          'AbsRel / delta1')
    print('| conversion | ' + ' | '.join(names) + ' |')
    print('| --- |' + ' --- |' * len(names))
    for key, cells in table.items():
        print(f'| {key} | ' + ' | '.join(f'{a:.3f} / {d:.3f}' for a, d in cells) + ' |')
    print(f'\nlargest AbsRel change when the teacher\'s shift varies over {SHIFTS} x median '
          f'disparity: {shift_effect:.2e} for inverse and negate (they normalise the disparity '
          f'first)')


if __name__ == '__main__':
    main()
