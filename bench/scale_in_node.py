#!/usr/bin/env python3
"""The scale stage as the node runs it, wall and CPU time, alone and beside a model thread.

``DepthPipeline.finish`` on the node bench's workload (bench/node_latency.py): the synthetic
room at 640x480, a 32x1024 LiDAR sweep with every third image (a sweep serves three images),
the tiny random model's relative depth (a poor prediction: several robust rounds of the local
correction, the bilateral grid at its widest), xyzrgb cloud and depth image built. Printed
per layout: the medians (p90) of the stage timings the node reports: 'scale' (wall, anchors
included), 'scale_cpu' (this thread's CPU time in it; n/a for a copy that does not report it),
'anchors', and 'finish_cpu' (the thread's CPU time in the whole finish: scale and messages).

'beside a model thread' runs the tiny model in a loop on a second thread (the overlapped node
on a CPU; the switch interval 0.5 ms as the node sets it): the gap between wall and CPU time is
waiting for the GIL and for a core.

``--baseline DIR`` measures another copy of the package beside this one, frames interleaved
(the same machine conditions for both), e.g. the code before a change:

    git archive REV fiffdepth_ros | tar -x -C /tmp/base
    python bench/scale_in_node.py --baseline /tmp/base [--rounds 3]
"""
import argparse
import importlib
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiffdepth_ros.conversions.backends import RclpyBackend  # noqa: E402
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg  # noqa: E402
from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud  # noqa: E402
from fiffdepth_ros.demo.scene import SyntheticRoom  # noqa: E402
from fiffdepth_ros.model.estimator import DepthEstimator  # noqa: E402
from fiffdepth_ros.model.tiny import build_tiny_checkpoint  # noqa: E402
from fiffdepth_ros.sync import FrameInputs  # noqa: E402

STAGES = ('scale', 'scale_cpu', 'anchors')


def load_copy(folder: Path, name: str = 'fiffdepth_baseline'):
    """The fiffdepth_ros package in ``folder`` imported as ``name`` (relative imports stay
    inside it)."""
    init = folder / 'fiffdepth_ros' / '__init__.py'
    if not init.is_file():
        sys.exit(f'no fiffdepth_ros package in {folder}')
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


def pipeline_of(package: str, estimator, room):
    params = importlib.import_module(package + '.params')
    pipeline = importlib.import_module(package + '.pipeline')
    p = params.validate(dict(**room.static_lidar_params(), publish_colorized=False,
                             cloud_type='xyzrgb'))
    return pipeline.DepthPipeline(estimator, pipeline.PipelineConfig.from_params(p),
                                  RclpyBackend())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--baseline', type=Path, help='folder holding another fiffdepth_ros')
    ap.add_argument('--rounds', type=int, default=3, help='passes over 48 frames per layout')
    ap.add_argument('--processing-res', type=int, default=128)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)

    work = Path(os.environ.get('TMPDIR', '/tmp')) / 'fiffdepth_bench_scale_in_node'
    estimator = DepthEstimator.from_pretrained(str(build_tiny_checkpoint(work / 'tiny')),
                                               device='cpu',
                                               processing_res=args.processing_res)
    room = SyntheticRoom(640, 480, lidar_lines=32)
    frames = [room.render(t=i * 0.05) for i in range(8)]
    backend = RclpyBackend()
    inputs, sweep = [], None
    for i in range(48):
        frame, stamp = frames[i % 8], 10**18 + i * 33_333_333
        header = backend.header(stamp, 'camera_optical')
        if i % 3 == 0:
            sweep = xyz_to_pointcloud(frame.lidar_points, backend.header(stamp, 'lidar'),
                                      backend)
        inputs.append(FrameInputs(image=rgb_to_image_msg(frame.rgb, header, backend),
                                  camera_info=backend.camera_info(
                                      header, **room.camera_info_fields()), lidar=sweep))
    relative = [estimator.predict(f.rgb) for f in frames]
    pipes = {'this checkout': pipeline_of('fiffdepth_ros', estimator, room)}
    if args.baseline:
        pipes = {'baseline': pipeline_of(load_copy(args.baseline), estimator, room), **pipes}
    outputs = ['depth', 'camera_info', 'points']

    def measure(rounds):
        times = {n: {k: [] for k in STAGES + ('finish_cpu',)} for n in pipes}
        for r in range(rounds):
            order = list(pipes) if r % 2 == 0 else list(pipes)[::-1]
            for i, x in enumerate(inputs):
                for name in order:
                    pipe = pipes[name]
                    frame = pipe.prepare(x)
                    cpu = time.thread_time()
                    result = pipe.finish(frame, relative[i % 8], outputs)
                    times[name]['finish_cpu'].append((time.thread_time() - cpu) * 1e3)
                    for k in STAGES:
                        times[name][k].append(result.timings.get(k, np.nan))
        return times

    measure(1)                                       # warm-up (allocations, caches)
    stop = threading.Event()

    def model_loop():
        while not stop.is_set():
            estimator.predict(frames[0].rgb)

    print(f'# scale stage as in the node: 640x480, 32x1024 LiDAR every third image, tiny model '
          f'output at processing_res {args.processing_res}; {args.rounds} x 48 frames; CPU '
          f'cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}')
    results = {}
    thread = None
    for layout in ('alone', 'beside a model thread'):
        if layout != 'alone':
            sys.setswitchinterval(0.0005)
            thread = threading.Thread(target=model_loop, daemon=True)
            thread.start()
        results[layout] = measure(args.rounds)
    stop.set()
    if thread is not None:
        thread.join()
    for layout, times in results.items():
        for name, stages in times.items():
            print(f'{layout:<22} {name:<14} ' + ', '.join(
                f'{k} {np.median(v):.2f} (p90 {np.percentile(v, 90):.2f})'
                if np.isfinite(v).all() else f'{k} n/a' for k, v in stages.items()) + ' ms')
        if len(times) == 2:
            ratios = {k: np.median(times['this checkout'][k]) / np.median(times['baseline'][k])
                      for k in ('scale', 'anchors', 'finish_cpu')}
            print(f'{layout:<22} this / baseline: '
                  + ', '.join(f'{k} {r:.2f}x' for k, r in ratios.items()))
    print(f'load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
