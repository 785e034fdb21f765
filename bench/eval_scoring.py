"""Time to score one benchmark image (alignment + clip + all metrics), per dataset size.

    python bench/eval_scoring.py [--repeats N]

What fiffdepth-eval spends per image besides the model and the reading: ``runner.score_arrays``
on synthetic depth at each dataset's resolution (NYUv2 480x640, KITTI 352x1216 after the KB
crop, DIODE 768x1024, ETH3D 4032x6048 with alignment at max 1024), depth and disparity spaces.
Prints the median milliseconds and, for ETH3D, the full-resolution fit beside the reference's
1024 subsample. CPU, this machine; nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.evaluation.runner import score_arrays  # noqa: E402
import timing  # noqa: E402  (bench/timing.py, beside this script)

SIZES = {'nyu': (480, 640, None), 'kitti': (352, 1216, None), 'diode': (768, 1024, None),
         'eth3d': (4032, 6048, 1024)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f'{"dataset":<8}{"size":>11}{"space":>11}{"max res":>9}{"ms":>10}')
    for name, (h, w, max_res) in SIZES.items():
        gt = rng.uniform(0.5, 9.5, (h, w)).astype(np.float32)
        valid = rng.random((h, w)) > 0.2
        pred = (gt * rng.uniform(0.9, 1.1, (h, w)).astype(np.float32) - 0.3) / 4.0
        disp = (1.0 / gt).astype(np.float32)
        runs = [('depth', pred, max_res), ('disparity', disp, max_res)]
        if max_res:
            runs.append(('depth', pred, None))
        for space, x, res in runs:
            ms = timing.median_ms(lambda: score_arrays(x, gt, valid, space, 1e-3, 10.0, res),
                                  args.repeats)
            print(f'{name:<8}{f"{h}x{w}":>11}{space:>11}{str(res or "-"):>9}{ms:10.1f}')
        del gt, valid, pred, disp
    return 0


if __name__ == '__main__':
    sys.exit(main())
