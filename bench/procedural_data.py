#!/usr/bin/env python3
"""Render speed of the procedural training frames, on one core, per domain and image size.

For each size (256x192, the nano recipe's frames, and 640x480) and domain, --frames different
seeds are rendered one after another (frames differ in scene kind and object count, so the spread
is part of the result); printed: median, p10-p90 and mean milliseconds per frame, frames per
second, and the share of each stage (scene sampling, primary ray casting, shading with textures
and shadows, sensor model). Beside them, the demo's fixed room (one box, no textures, no
lighting, fiffdepth_ros/demo/scene.py) at the same size as a floor for an analytic ray caster.

    python bench/procedural_data.py [--frames 40]
"""
import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '1')           # one core, before numpy loads its BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.demo.scene import SyntheticRoom  # noqa: E402
from fiffdepth_ros.training.data import procedural as P  # noqa: E402

STAGES = ('scene', 'ray cast', 'shade', 'sensor')


def render_timed(seed, domain, width, height):
    """render_frame's steps, each timed in CPU seconds of this process (same calls, same
    result): on a machine shared with other jobs, wall time would also count their share."""
    marks = [time.process_time()]
    scene_rng, texture_rng, sensor_rng = P._streams(seed, domain)
    scene = P.sample_scene(scene_rng)
    camera = P.Camera(P._intrinsics(scene_rng, width, height),
                      P.look_rotation(*scene.camera_angles), scene.camera_position, width, height)
    marks.append(time.process_time())
    dirs = camera.ray_directions()
    t, ids = P.cast_primary(scene, camera, dirs)
    marks.append(time.process_time())
    radiance = P._shade(scene, camera, dirs, t, ids, domain, texture_rng)
    marks.append(time.process_time())
    rgb = P._sensor(radiance, height, width, domain, sensor_rng)
    marks.append(time.process_time())
    return rgb, np.diff(marks) * 1e3, scene.kind


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=40, help='seeds per size and domain')
    args = parser.parse_args()
    cv2.setNumThreads(1)
    P.render_frame(0, 'synthetic', 64, 48)     # warm-up: imports, the noise bank
    seeds = P.held_out_seeds(args.frames)
    # The timed path must be the real one: same bytes as render_frame.
    assert np.array_equal(render_timed(seeds[0], 'real', 64, 48)[0],
                          P.render_frame(seeds[0], 'real', 64, 48).rgb)
    print(f'procedural frames, one core, {args.frames} held-out seeds per row '
          f'(cv2 threads 1, BLAS threads 1; CPU time of this process, wall time beside it)\n')
    header = (f"{'size':>8} {'domain':>10} {'median ms':>10} {'p10-p90 ms':>14} {'mean ms':>8} "
              f"{'frames/s':>9} {'wall ms':>8}  " + '  '.join(f'{s:>8}' for s in STAGES))
    print(header)
    medians = {}
    for width, height in ((256, 192), (640, 480)):
        for domain in P.DOMAINS:
            totals, stages, kinds, walls = [], [], [], []
            for seed in seeds:
                t0 = time.perf_counter()
                _, parts, kind = render_timed(seed, domain, width, height)
                walls.append((time.perf_counter() - t0) * 1e3)
                totals.append(parts.sum())
                stages.append(parts)
                kinds.append(kind)
            totals = np.array(totals)
            share = np.sum(stages, axis=0) / totals.sum() * 100
            p10, p50, p90 = np.percentile(totals, [10, 50, 90])
            medians[(width, domain)] = p50
            print(f'{width}x{height:<4} {domain:>10} {p50:10.1f} {p10:6.1f}-{p90:<7.1f} '
                  f'{totals.mean():8.1f} {1e3 / totals.mean():9.1f} {np.median(walls):8.1f}  '
                  + '  '.join(f'{s:7.0f}%' for s in share))
        room = SyntheticRoom(width, height)
        room.render(0.0)
        times = []
        for i in range(10):
            t0 = time.process_time()
            room.render(0.1 * i)
            times.append(time.process_time() - t0)
        medians[(width, 'demo')] = float(np.median(times)) * 1e3
        print(f"{width}x{height:<4} {'demo room':>10} {medians[(width, 'demo')]:10.1f}   "
              '(fixed 6 planes + 1 box, no textures or lights; includes a 32x1024 LiDAR sweep)')
    print('\nratios (median):')
    for domain in P.DOMAINS:
        print(f'  {domain:>9}: 640x480 / 256x192 = '
              f'{medians[(640, domain)] / medians[(256, domain)]:.2f} '
              f'(pixels x{640 * 480 / (256 * 192):.2f}); '
              f'256x192 vs demo room = {medians[(256, domain)] / medians[(256, "demo")]:.2f}x')
    print(f'  kinds rendered: {dict(zip(*np.unique(kinds, return_counts=True)))}')


if __name__ == '__main__':
    main()
