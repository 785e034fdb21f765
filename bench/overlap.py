#!/usr/bin/env python3
"""Is the overlap real? The node's two-stage worker in one process, without DDS.

Frames of the synthetic room (640x480, 32x1024 LiDAR sweep with every third image, xyzrgb
cloud) go through the node's layout (fiffdepth_ros.ros.overlap): the model on one thread,
DepthPipeline.finish (anchors, scale recovery, messages) plus rclpy serialisation on the other,
or everything on one thread (sequential). Two models:

- ``tiny``: the tiny random model on the CPU (torch, one thread), as in bench/node_latency.py;
- ``gpu-like``: a stand-in that holds no CPU and no GIL for --model-ms per frame (what a
  forward pass on a GPU is to the host: asynchronous device work), returning the tiny model's
  output computed beforehand.

Printed per model and layout: frames per second, the model's time per frame, the finishing
time per frame, the critical-path overhead (what delays the next model call), the CPU cores the
process kept busy (CPU time / wall time: above 1 only if the stages really ran in parallel) and
the ratios.
Both layouts run interleaved in rounds (this VM's speed drifts), medians over the rounds.

    python bench/overlap.py [--frames 60] [--rounds 3] [--model-ms 40] [--processing-res 128]
                            [--device cpu|cuda] [--backend rclpy|plain|auto] [--in-memory]
                            [--json PATH]

``--device cuda``: the tiny model on the GPU (fp16, as the node's precision 'auto'), the
finishing then on the device too (fiffdepth_ros.finish) as in the node. ``--backend plain``
(bench/gpu_messages.py): messages without ROS, nothing serialised -- for machines without ROS
(the GPU check kit); 'auto' takes rclpy when it imports. ``--in-memory``: the tiny model's
modules built in memory (bench/gpu_models.py) instead of a checkpoint folder, so transformers
is not needed. ``--json``: the table's numbers in a file as well.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))            # gpu_messages, gpu_models

from fiffdepth_ros import params as P  # noqa: E402
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg  # noqa: E402
from fiffdepth_ros.conversions.pointcloud import xyz_to_pointcloud  # noqa: E402
from fiffdepth_ros.demo.scene import SyntheticRoom  # noqa: E402
from fiffdepth_ros.model.tiny import build_tiny_checkpoint  # noqa: E402
from fiffdepth_ros.pipeline import DepthPipeline, PipelineConfig  # noqa: E402
from fiffdepth_ros.ros.overlap import HandOff  # noqa: E402
from fiffdepth_ros.sync import FrameInputs  # noqa: E402
from gpu_messages import backend as message_backend  # noqa: E402


class GpuLike:
    """predict() sleeps (no CPU, no GIL) and returns a precomputed output."""

    def __init__(self, outputs, ms):
        self.outputs, self.seconds, self.i = outputs, ms / 1e3, 0

    def predict(self, rgb):
        time.sleep(self.seconds)
        self.i += 1
        return self.outputs[self.i % len(self.outputs)]


def run(pipeline, inputs, overlapped: bool, serialize_message=None) -> dict:
    finish_ms, critical = [], []

    def back(item):
        frame, relative = item
        t0 = time.perf_counter()
        result = pipeline.finish(frame, relative, ('depth', 'camera_info', 'points'))
        if serialize_message is not None:
            for msg in result.messages.values():
                serialize_message(msg)        # what publish costs before the transport
        finish_ms.append((time.perf_counter() - t0) * 1e3)

    stage = HandOff(back, overlapped=overlapped)
    model_ms = []
    cpu0 = _cpu_seconds()
    t_start = time.perf_counter()
    for inp in inputs:
        stage.wait_free()
        t0 = time.perf_counter()
        frame = pipeline.prepare(inp)
        relative = pipeline.predict([frame])[0]
        model_ms.append(frame.timings['inference'])
        stage.hand_off((frame, relative))
        critical.append((time.perf_counter() - t0) * 1e3 - frame.timings['inference'])
    stage.wait_idle()
    wall = time.perf_counter() - t_start
    cores = (_cpu_seconds() - cpu0) / wall
    stage.close()
    return {'fps': len(inputs) / wall, 'model': np.median(model_ms),
            'finish': np.median(finish_ms), 'critical': np.median(critical), 'cores': cores}


def _cpu_seconds() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', type=int, default=60)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--model-ms', type=float, default=40.0, help='gpu-like stand-in per frame')
    ap.add_argument('--processing-res', type=int, default=128)
    ap.add_argument('--switch-interval-ms', type=float, default=0.5,
                    help="sys.setswitchinterval for the overlapped layout (the node's 0.5 ms)")
    ap.add_argument('--device', default='cpu', help="the model's device: cpu or cuda")
    ap.add_argument('--backend', choices=('rclpy', 'plain', 'auto'), default='rclpy',
                    help='message backend (plain: no ROS, nothing serialised)')
    ap.add_argument('--in-memory', action='store_true',
                    help='build the tiny modules in memory (no checkpoint, no transformers)')
    ap.add_argument('--json', type=Path, default=None, help='also write the numbers here')
    args = ap.parse_args()

    import torch
    torch.set_num_threads(1)                 # as the node on this 2-core machine
    from fiffdepth_ros.model.estimator import DepthEstimator
    precision = 'fp16' if torch.device(args.device).type == 'cuda' else 'fp32'
    if args.in_memory:
        import gpu_models
        model, _ = gpu_models.make_engine(gpu_models.modules('tiny'), 'fiffdepth', args.device,
                                          precision, args.processing_res)
    else:
        work = Path(tempfile.mkdtemp(prefix='fiffdepth_overlap_'))
        model = DepthEstimator.from_pretrained(str(build_tiny_checkpoint(work / 'tiny')),
                                               device=args.device, precision=precision,
                                               processing_res=args.processing_res)
    room = SyntheticRoom(640, 480, lidar_lines=32)
    frames = [room.render(t=i * 0.05) for i in range(6)]
    backend, serialize = message_backend(args.backend)
    inputs = []
    for i in range(args.frames):
        f, stamp = frames[i % len(frames)], 10**18 + i * 33_333_333
        header = backend.header(stamp, 'camera_optical')
        sweep = i // 3 * 3                     # a 10 Hz sweep with every third 30 Hz image
        lidar = xyz_to_pointcloud(frames[sweep % len(frames)].lidar_points,
                                  backend.header(10**18 + sweep * 33_333_333, 'lidar'), backend)
        inputs.append(FrameInputs(image=rgb_to_image_msg(f.rgb, header, backend),
                                  camera_info=backend.camera_info(header,
                                                                  **room.camera_info_fields()),
                                  lidar=lidar if i % 3 == 0 or not inputs else inputs[-1].lidar))
    t, q = room.camera_from_lidar.translation, room.camera_from_lidar.quaternion
    config = PipelineConfig.from_params(P.validate(dict(
        use_lidar=True, lidar_translation=[float(v) for v in t],
        lidar_rotation=[float(v) for v in q], lidar_parent_frame='camera_optical',
        lidar_child_frame='lidar')))
    outputs = [model.predict(f.rgb) for f in frames]
    models = {'tiny': model, 'gpu-like': GpuLike(outputs, args.model_ms)}
    results = {(m, lay): [] for m in models for lay in ('sequential', 'overlapped')}
    default_interval = sys.getswitchinterval()
    for _ in range(args.rounds):
        for name, est in models.items():
            for layout in ('sequential', 'overlapped'):
                sys.setswitchinterval(args.switch_interval_ms / 1e3 if layout == 'overlapped'
                                      else default_interval)
                pipe = DepthPipeline(est, config, backend)
                run(pipe, inputs[:5], layout == 'overlapped', serialize)          # warm-up
                results[(name, layout)].append(run(pipe, inputs, layout == 'overlapped',
                                                   serialize))
    sys.setswitchinterval(default_interval)

    serialised = f'{backend.name} serialisation' if serialize else 'no serialisation'
    print(f'two-stage worker in one process: 640x480, LiDAR 32x1024 with every 3rd image, '
          f'xyzrgb cloud + {serialised}; model on {args.device} ({precision}); '
          f'{args.frames} frames x {args.rounds} rounds; '
          f'CPU cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}')
    table = []
    print(f'{"model":<10} {"layout":<11} {"frames/s":>9} {"model ms":>9} {"finish ms":>10} '
          f'{"critical ms":>12} {"cores used":>11}')
    for name in models:
        fps = {}
        for layout in ('sequential', 'overlapped'):
            rows = results[(name, layout)]
            med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
            fps[layout] = med['fps']
            table.append({'model': name, 'layout': layout, 'fps': med['fps'],
                          'model_ms': med['model'], 'finish_ms': med['finish'],
                          'critical_ms': med['critical'], 'cores': med['cores']})
            print(f'{name:<10} {layout:<11} {med["fps"]:>9.1f} {med["model"]:>9.1f} '
                  f'{med["finish"]:>10.1f} {med["critical"]:>12.1f} {med["cores"]:>11.2f}')
        print(f'{name:<10} overlapped / sequential frames/s: '
              f'{fps["overlapped"] / fps["sequential"]:.2f}x')
    if args.json:
        args.json.write_text(json.dumps({
            'settings': {'device': args.device, 'precision': precision, 'backend': backend.name,
                         'serialised': serialize is not None, 'frames': args.frames,
                         'rounds': args.rounds, 'processing_res': args.processing_res,
                         'gpu_like_model_ms': args.model_ms,
                         'load_average': os.getloadavg()[0]},
            'rows': table}, indent=2) + '\n')


if __name__ == '__main__':
    main()
