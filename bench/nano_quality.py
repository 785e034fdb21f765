"""FiffDepth-nano quality: the built-in model beside the random tiny model and a planar baseline.

    python bench/nano_quality.py [--model nano|DIR|NAME=DIR ...] [--regressor NAME=DIR ...]
                                 [--frames 200] [--json OUT] [--heldout-only]
                                 [--speed-frames 20] [--threads N] [--processing-res N]

Rows: each ``--model`` (default: the built-in ``nano``; ``NAME=DIR`` labels a row, repeatable,
as scripts/nano_ablation.sh does), each ``--regressor`` (a snapshot of the plain pixel-space
regressor of bench/nano_regressor.py), the random tiny model of fiffdepth_ros.model.tiny and
"depth grows with image row" (prediction = row index: a floor plane seen by a level camera).
Every prediction is aligned in its model's own output space (depth, or disparity for a model
trained with method.target_space: disparity), as the papers' least-squares protocol does.
Columns:
  (a) held-out procedural frames (training/data/procedural.py, seeds the recipe neither trains
      nor validates on), both domains: AbsRel and delta1 after least-squares scale and shift
      (evaluation.alignment / evaluation.metrics), at the frames' native 128x96;
  (b) the demo's synthetic room (demo/scene.py, a different generator, never trained on), the
      demo's 12 streamed frames: relative AbsRel after alignment, and the demo's metric AbsRel
      with the 32-line LiDAR through the node's own pipeline (demo/accuracy.py: the demo's
      parameters, scale fit, temporal filter, local correction; median over frames);
  (c) the real frames in ../shared/data/rgbd (read in place): AbsRel after alignment;
  (d) speed: DepthEstimator.predict (what fiffdepth-predict and the node run per frame) on a
      640x480 frame, median of --speed-frames after 3 warm-up frames.
(b)-(d) run each model at its own processing resolution (model_index.json; the tools' and the
node's default), the random tiny model at 256 (as the demo runs it), unless --processing-res.
Every number is measured when it runs; --heldout-only computes (a) alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))         # nano_regressor (the --regressor rows)

from fiffdepth_ros.evaluation.alignment import align_scale_shift  # noqa: E402
from fiffdepth_ros.evaluation.metrics import compute_metrics, mean_metrics  # noqa: E402
from fiffdepth_ros.demo.accuracy import DEMO_FRAMES  # noqa: E402
from fiffdepth_ros.training.data import procedural  # noqa: E402

REAL_FRAMES = ROOT.parent / 'shared' / 'data' / 'rgbd'
ROOM_MAX_DEPTH = 30.0
RGBD_MAX_DEPTH = 10.0


def real_frames():
    """(rgb, depth in metres, valid) of the shared real RGB-D frames, and their names."""
    out, names = [], []
    for name, rgb_name in (('indoor_relative', 'rgb.jpg'), ('indoor_sparse', 'rgb.png')):
        folder = REAL_FRAMES / name
        if not (folder / rgb_name).is_file():
            continue
        rgb = cv2.cvtColor(cv2.imread(str(folder / rgb_name)), cv2.COLOR_BGR2RGB)
        mm = cv2.imread(str(folder / 'gt_depth.png'), cv2.IMREAD_UNCHANGED).astype(np.float32)
        out.append((rgb, mm / 1000.0, mm > 0))
        names.append(name)
    return out, names


def aligned_metrics(predict, frames, max_depth: float, space: str = 'depth') -> dict:
    """Mean AbsRel / delta1 (evaluation.metrics) after least-squares scale and shift in
    ``space`` (the prediction's own: 'depth' or 'disparity')."""
    per_image = []
    for rgb, depth, valid in frames:
        aligned = align_scale_shift(predict(rgb), depth, valid, space=space, min_depth=1e-3,
                                    max_depth=max_depth)
        per_image.append(compute_metrics(aligned, depth, valid))
    return mean_metrics(per_image)


def relative_row(native, est, domains, room_frames, real, speed_image, speed_frames) -> dict:
    """The columns every learned row has, in its model's own output space: held-out frames
    with ``native`` (their 128x96 as they are); with ``est`` (at the row's own processing
    resolution) the room's relative AbsRel, the rgbd frames and the speed. ``native`` / ``est``:
    DepthEstimator or nano_regressor.Regressor (predict, output_space, processing_res)."""
    space = native.output_space
    row = {f'heldout_{d}': aligned_metrics(native.predict, f, procedural.MAX_VALID_DEPTH, space)
           for d, f in domains.items()}
    row['output_space'] = space
    if est is not None:
        row['processing_res'] = est.processing_res
        row['room_relative'] = aligned_metrics(est.predict, room_frames, ROOM_MAX_DEPTH, space)
        row['rgbd'] = aligned_metrics(est.predict, real, RGBD_MAX_DEPTH, space) if real else None
        row['ms_640x480'] = median_ms(est.predict, speed_image, speed_frames)
    return row


def row_baseline(rgb):
    return np.repeat(np.arange(rgb.shape[0], dtype=np.float32)[:, None], rgb.shape[1], 1)


def median_ms(predict, image, frames: int, warm_up: int = 3) -> float:
    for _ in range(warm_up):
        predict(image)
    seconds = []
    for _ in range(frames):
        t0 = time.perf_counter()
        predict(image)
        seconds.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(seconds))


def held_out(count: int, offset: int):
    seeds = procedural.held_out_seeds(count, offset)
    domains = {}
    for domain in procedural.DOMAINS:
        frames = []
        for seed in seeds:
            f = procedural.render_frame(seed, domain, 128, 96)
            frames.append((f.rgb, np.where(f.valid, f.depth, 0).astype(np.float32), f.valid))
        domains[domain] = frames
    return seeds, domains


def parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, _, where = spec.rpartition('=')
        models[name or where] = where
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', action='append', default=None, metavar='[NAME=]MODEL',
                    help="model row(s): 'nano' (default), a folder or hub id; repeatable")
    ap.add_argument('--frames', type=int, default=200, help='held-out frames per domain')
    ap.add_argument('--seed-offset', type=int, default=10000,
                    help='first held-out seed offset (the recipe validates on offsets 0..)')
    ap.add_argument('--regressor', action='append', default=[], metavar='NAME=DIR',
                    help='a bench/nano_regressor.py snapshot as a row; repeatable')
    ap.add_argument('--processing-res', type=int, default=None,
                    help="processing_res on the 640x480 frames (room, rgbd, speed); default: "
                         "each model's own, 256 for the random tiny model")
    ap.add_argument('--speed-frames', type=int, default=20)
    ap.add_argument('--threads', type=int, default=max(1, len(os.sched_getaffinity(0)) - 1),
                    help="torch CPU threads (default: the node's choice, one core fewer than "
                         'available)')
    ap.add_argument('--heldout-only', action='store_true', help='column (a) only')
    ap.add_argument('--group-seeds', action='store_true',
                    help="rows named 'VARIANT@sSEED' (scripts/nano_ablation.sh) are also "
                         'summarised per variant: mean +- standard deviation over the seeds')
    ap.add_argument('--json', type=Path, help='write the table as JSON here')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fiffdepth_ros.demo.accuracy import room_node_params, room_stream, run_in_process
    from fiffdepth_ros.demo.scene import SyntheticRoom
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.model.tiny import build_tiny_checkpoint

    t_start = time.time()
    seeds, domains = held_out(args.frames, args.seed_offset)
    room = SyntheticRoom(640, 480, lidar_lines=32)
    room_frames = [(f.rgb, f.depth, f.depth > 0) for f in room_stream(room)[1:]]
    real, real_names = real_frames()
    speed_image = room_frames[0][0]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = parse_models(args.model or ['nano'])
        models['random tiny'] = str(build_tiny_checkpoint(Path(tmp) / 'tiny', seed=0))
        for name, where in models.items():
            native = DepthEstimator.from_pretrained(where, device='cpu', precision='fp32',
                                                    processing_res=0, cache_dir=tmp)
            est = None
            if not args.heldout_only:
                res = args.processing_res
                if res is None:
                    res = 256 if name == 'random tiny' else -1
                est = DepthEstimator.from_pretrained(where, device='cpu', precision='fp32',
                                                     processing_res=res, cache_dir=tmp)
            row = relative_row(native, est, domains, room_frames, real, speed_image,
                               args.speed_frames)
            if est is not None:
                params = room_node_params(room, where, est.processing_res, device='cpu')
                row['room_metric'] = run_in_process(est, room, params)
            rows[name] = row
        for spec in args.regressor:
            from nano_regressor import Regressor
            name, _, where = spec.rpartition('=')
            native = Regressor(where, processing_res=0)
            est = None if args.heldout_only else Regressor(where, args.processing_res or 128)
            row = relative_row(native, est, domains, room_frames, real, speed_image,
                               args.speed_frames)
            row['regressor'] = native.meta.get('snapshot')
            rows[name or f'regressor {where}'] = row
        rows['row baseline'] = {f'heldout_{d}': aligned_metrics(row_baseline, f,
                                                                procedural.MAX_VALID_DEPTH)
                                for d, f in domains.items()}
        if not args.heldout_only:
            rows['row baseline'].update(
                room_relative=aligned_metrics(row_baseline, room_frames, ROOM_MAX_DEPTH),
                rgbd=aligned_metrics(row_baseline, real, RGBD_MAX_DEPTH) if real else None)

    others = '' if args.heldout_only else (
        f'room ({len(room_frames)} demo frames) and rgbd ({len(real)} real frames: '
        f'{", ".join(real_names)}) at each row\'s processing_res (640x480); ')
    print(f'held-out procedural frames: {args.frames} per domain (synthetic, real-like), 128x96 '
          f'native, seeds {seeds.start}..{seeds.stop - 1}; {others}least-squares scale+shift in '
          f"each model's output space; torch threads {args.threads}; CPU cores "
          f'{len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}; '
          f'{time.time() - t_start:.0f} s')
    print(format_table(rows, args.heldout_only))
    first = next(iter(models))
    base = rows['random tiny']['heldout_synthetic']['abs_rel']
    print(f"{first} / random tiny AbsRel (held-out synthetic): "
          f"{rows[first]['heldout_synthetic']['abs_rel'] / base:.2f}")
    for name, r in rows.items():
        if r.get('room_metric', {}).get('withheld'):
            print(f"{name}: demo frames withheld: {r['room_metric']['withheld'][0]}")
    if not args.heldout_only:
        ours = rows[first]['room_metric']['median_abs_rel']
        random = rows['random tiny']['room_metric']['median_abs_rel']
        print(f'{first} / random tiny demo metric AbsRel (32-line LiDAR): {ours:.3f} / '
              f'{random:.3f} = {ours / random:.2f}')
    groups = seed_summary(rows) if args.group_seeds else {}
    if groups:
        print(format_groups(groups))
    if args.json:
        args.json.write_text(json.dumps({'settings': vars(args) | {'json': str(args.json)},
                                         'seeds': [seeds.start, seeds.stop - 1],
                                         'rows': rows, 'groups': groups}, indent=1,
                                        default=str))
    return 0


GROUP_METRICS = [(f'heldout_{d}', m) for d in ('synthetic', 'real') for m in ('abs_rel', 'delta1')]


def seed_summary(rows: dict) -> dict:
    """{variant: {'seeds': n, 'heldout_synthetic/abs_rel': [mean, std], ...}} over the rows
    named 'VARIANT@sSEED'; std is the sample standard deviation (ddof 1; 0 for one seed)."""
    by_variant: dict[str, list[dict]] = {}
    for name, row in rows.items():
        variant, sep, seed = name.rpartition('@s')
        if sep and seed.isdigit():
            by_variant.setdefault(variant, []).append(row)
    out = {}
    for variant, runs in by_variant.items():
        entry = {'seeds': len(runs)}
        for part, metric in GROUP_METRICS:
            values = np.array([r[part][metric] for r in runs], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            entry[f'{part}/{metric}'] = [float(values.mean()), std]
        out[variant] = entry
    return out


def format_groups(groups: dict) -> str:
    lines = ['variant | seeds | syn AbsRel | syn d1 | real-like AbsRel | real-like d1 '
             '(mean +- std over seeds)']
    for variant, g in groups.items():
        cells = [f'{g[f"{p}/{m}"][0]:.3f} +- {g[f"{p}/{m}"][1]:.3f}' for p, m in GROUP_METRICS]
        lines.append(' | '.join([variant, str(g['seeds'])] + cells))
    return '\n'.join(lines)


def _cell(value, fmt='.3f') -> str:
    return '-' if value is None else format(value, fmt)


def format_table(rows: dict, heldout_only: bool) -> str:
    head = ['model', 'space', 'syn AbsRel', 'syn d1', 'real-like AbsRel', 'real-like d1']
    if not heldout_only:
        head += ['room rel AbsRel', 'room metric AbsRel', 'rgbd AbsRel', 'res', 'ms/frame']
    lines = [' | '.join(head)]
    for name, r in rows.items():
        cells = [name, r.get('output_space', 'depth'), _cell(r['heldout_synthetic']['abs_rel']),
                 _cell(r['heldout_synthetic']['delta1']), _cell(r['heldout_real']['abs_rel']),
                 _cell(r['heldout_real']['delta1'])]
        if not heldout_only:
            metric = r.get('room_metric')
            rgbd = r.get('rgbd')
            room_metric = None
            if metric:                 # frames withheld by the node (no scale fit) counted
                room_metric = _cell(metric['median_abs_rel'])
                if metric['withheld']:
                    room_metric += f" ({len(metric['withheld'])}/{DEMO_FRAMES} withheld)"
            cells += [_cell(r['room_relative']['abs_rel']),
                      room_metric or '-',
                      _cell(rgbd['abs_rel'] if rgbd else None),
                      str(r.get('processing_res', '-')),
                      _cell(r.get('ms_640x480'), '.1f')]
        lines.append(' | '.join(cells))
    return '\n'.join(lines)


if __name__ == '__main__':
    raise SystemExit(main())
