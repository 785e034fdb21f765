"""FiffDepth-nano quality: a trained model beside the random tiny model and a planar baseline.

    python bench/nano_quality.py --model OUT/model [--frames 200] [--processing-res 128]

Rows: the trained model (``--model``, e.g. scripts/train_nano.sh's OUT/model), the random tiny
model of fiffdepth_ros.model.tiny, and "depth grows with image row" (prediction = row index).
Columns: AbsRel and delta1 after least-squares scale and shift in depth
(fiffdepth_ros.evaluation's align_scale_shift / compute_metrics / mean_metrics) on held-out
procedural frames of both domains (seeds the recipe never trains or validates on: held-out
offset ``--seed-offset``), the real frames in ../shared/data/rgbd (AbsRel only, two frames), and
the model's time per frame. Prints measured numbers only.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fiffdepth_ros.evaluation.alignment import align_scale_shift  # noqa: E402
from fiffdepth_ros.evaluation.metrics import compute_metrics, mean_metrics  # noqa: E402
from fiffdepth_ros.training.data import procedural  # noqa: E402

REAL_FRAMES = ROOT.parent / 'shared' / 'data' / 'rgbd'


def real_frames():
    """(name, rgb, depth in metres, valid) of the shared real RGB-D frames."""
    out = []
    for name, rgb_name in (('indoor_relative', 'rgb.jpg'), ('indoor_sparse', 'rgb.png')):
        folder = REAL_FRAMES / name
        if not (folder / rgb_name).is_file():
            continue
        rgb = cv2.cvtColor(cv2.imread(str(folder / rgb_name)), cv2.COLOR_BGR2RGB)
        mm = cv2.imread(str(folder / 'gt_depth.png'), cv2.IMREAD_UNCHANGED).astype(np.float32)
        out.append((name, rgb, mm / 1000.0, mm > 0))
    return out


def score(predict, frames) -> dict:
    per_image, seconds = [], []
    for rgb, depth, valid in frames:
        t0 = time.perf_counter()
        pred = predict(rgb)
        seconds.append(time.perf_counter() - t0)
        aligned = align_scale_shift(pred, depth, valid, space='depth', min_depth=1e-3,
                                    max_depth=procedural.MAX_VALID_DEPTH)
        per_image.append(compute_metrics(aligned, depth, valid))
    means = mean_metrics(per_image)
    means['ms'] = 1000.0 * float(np.median(seconds))
    return means


def row_baseline(rgb):
    return np.repeat(np.arange(rgb.shape[0], dtype=np.float32)[:, None], rgb.shape[1], 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True, help='trained FiffDepth-nano folder')
    ap.add_argument('--frames', type=int, default=200, help='held-out frames per domain')
    ap.add_argument('--seed-offset', type=int, default=10000,
                    help='first held-out seed offset (the recipe validates on offsets 0..)')
    ap.add_argument('--width', type=int, default=128)
    ap.add_argument('--height', type=int, default=96)
    ap.add_argument('--processing-res', type=int, default=128)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.model.tiny import build_tiny_checkpoint
    seeds = procedural.held_out_seeds(args.frames, args.seed_offset)
    domains = {}
    for domain in procedural.DOMAINS:
        frames = []
        for seed in seeds:
            f = procedural.render_frame(seed, domain, args.width, args.height)
            frames.append((f.rgb, np.where(f.valid, f.depth, 0).astype(np.float32), f.valid))
        domains[domain] = frames
    real = [(rgb, depth, valid) for _, rgb, depth, valid in real_frames()]
    with tempfile.TemporaryDirectory() as tmp:
        models = {'trained (--model)': args.model,
                  'random tiny': str(build_tiny_checkpoint(Path(tmp) / 'tiny', seed=0))}
        rows = {}
        for name, folder in models.items():
            est = DepthEstimator.from_pretrained(folder, device='cpu', precision='fp32',
                                                 processing_res=args.processing_res,
                                                 cache_dir=tmp)
            rows[name] = {d: score(est.predict, f) for d, f in domains.items()}
            rows[name]['rgbd'] = score(est.predict, real) if real else None
        rows['row baseline'] = {d: score(row_baseline, f) for d, f in domains.items()}
        rows['row baseline']['rgbd'] = score(row_baseline, real) if real else None
    print(f'held-out procedural frames: {args.frames} per domain, {args.width}x{args.height}, '
          f'seeds {seeds.start}..{seeds.stop - 1}; processing_res {args.processing_res}; '
          f'{len(real)} real frames (../shared/data/rgbd, 640x480); least-squares scale+shift')
    print(f"{'model':<20} {'syn AbsRel':>10} {'syn d1':>7} {'real-like AbsRel':>16} "
          f"{'real-like d1':>12} {'rgbd AbsRel':>11} {'ms/frame':>8}")
    for name, r in rows.items():
        rgbd = f"{r['rgbd']['abs_rel']:.3f}" if r['rgbd'] else '-'
        print(f"{name:<20} {r['synthetic']['abs_rel']:>10.3f} {r['synthetic']['delta1']:>7.3f} "
              f"{r['real']['abs_rel']:>16.3f} {r['real']['delta1']:>12.3f} {rgbd:>11} "
              f"{r['synthetic']['ms']:>8.1f}")
    base = rows['random tiny']['synthetic']['abs_rel']
    print(f"trained / random tiny AbsRel (synthetic): "
          f"{rows['trained (--model)']['synthetic']['abs_rel'] / base:.2f}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
