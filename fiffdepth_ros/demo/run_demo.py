"""Demonstration of the whole node: fiffdepth-demo --output DIR [--model nano|PATH_OR_ID]

Starts the installed depth_node as its own process, streams a synthetic room (camera images,
camera_info and a LiDAR sweep with a known extrinsic) to it over real DDS from this process,
records what it publishes and writes to DIR: colourised depth PNGs, the input images, a PLY of one
point cloud, the diagnostics and a summary with the accuracy against the scene's true depth.
Without --model the node runs a tiny randomly initialised model built here (its relative depth
means nothing; the metric depth comes from the LiDAR anchors). ``--model nano`` runs the built-in
FiffDepth-nano; the room is not in its training data (a different generator from
training/data/procedural.py), and the shipped nano does not generalise to it yet: its prediction
is uncorrelated with the room's depth, the scale fit is refused and the node withholds every
metric frame (README, "Built-in model"), so it is not the default until a nano does.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .accuracy import DEMO_FRAMES, DEMO_RATE_HZ, metric_errors, room_node_params

TINY_NOTE = ('NOTE: no --model given, so this demonstration uses a tiny randomly initialised '
             'model that it builds itself: its relative depth is NOT meaningful. The metric depth '
             'you see comes from the LiDAR anchors (global fit + local correction). --model nano '
             'runs the built-in FiffDepth-nano (not yet good enough on this room for the scale '
             'fit); '
             'pass --model with real weights for real predictions.')
NANO_NOTE = ('NOTE: the model is the built-in FiffDepth-nano (model: nano), trained by this '
             'package on procedural scenes only, for demonstrations and tests, not a model for a '
             'robot. On this room (a scene generator it never saw) its relative depth beats a '
             'planar prior but the LiDAR anchors still disagree with it, so the node refuses the '
             'scale fit and withholds the metric outputs rather than publish wrong metres. Pass '
             '--model with real '
             'weights (a folder or hub id of any supported family) for real predictions.')


def parse_args(argv):
    ap = argparse.ArgumentParser(prog='fiffdepth-demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--output', type=Path, default=Path('demo_output'),
                    help='folder for the results (default: demo_output)')
    ap.add_argument('--model', default='', help="'nano' (the built-in FiffDepth-nano), or a "
                    'depth checkpoint folder or hub id (any family) (default: build a tiny '
                    'random model)')
    ap.add_argument('--frames', type=int, default=DEMO_FRAMES,
                    help=f'frames to stream (default {DEMO_FRAMES})')
    ap.add_argument('--rate', type=float, default=DEMO_RATE_HZ,
                    help=f'stream rate in Hz (default {DEMO_RATE_HZ:g})')
    ap.add_argument('--processing-res', type=int, default=0,
                    help="model resolution (default: the model's own, e.g. 128 for nano; 256 "
                         'for the random tiny model)')
    ap.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    ap.add_argument('--model-family', default='auto',
                    help='auto (detected from the checkpoint), fiffdepth, e2e_ft, lotus_d, '
                         'lotus_d_disparity or marigold')
    ap.add_argument('--startup-timeout', type=float, default=300.0,
                    help='seconds to wait for the node to load its model')
    ap.add_argument('--install-prefix', default=None,
                    help='colcon install folder holding fiffdepth_ros (default: the ament index, '
                         'i.e. a sourced workspace)')
    return ap.parse_args(argv)


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Binary little-endian PLY of the finite points (viewable in MeshLab, CloudCompare...)."""
    fields = [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]
    if rgb is not None:
        fields += [('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
    vertices = np.empty(len(xyz), dtype=fields)
    vertices['x'], vertices['y'], vertices['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is not None:
        vertices['red'], vertices['green'], vertices['blue'] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    props = ''.join(f'property {"float" if t == "<f4" else "uchar"} {n}\n' for n, t in fields)
    header = (f'ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n{props}'
              'end_header\n').encode()
    path.write_bytes(header + vertices.tobytes())


def cloud_points_and_colours(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """Finite points of a depth_image_proc-style cloud and their colours (if it has rgb)."""
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(-1, msg.point_step)
    xyz = data[:, :12].copy().view('<f4').reshape(-1, 3)
    finite = np.isfinite(xyz).all(axis=1)
    names = [f.name for f in msg.fields]
    rgb = None
    if 'rgb' in names:
        offset = msg.fields[names.index('rgb')].offset
        bgr = data[finite, offset:offset + 3]
        rgb = bgr[:, ::-1]
    return xyz[finite], rgb


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)

    from ..conversions.images import image_msg_to_depth, image_to_rgb
    from ..model.builtin import builtin_folder, is_builtin
    from ..model.checkpoint import ModelLoadError
    from .harness import NodeProcess, StreamClient, isolated_ros_env
    from .scene import SyntheticRoom

    import cv2
    model = args.model
    if not model:
        from ..model.tiny import build_tiny_checkpoint
        model = str(build_tiny_checkpoint(out / 'tiny_model'))
        print(TINY_NOTE, flush=True)
    elif is_builtin(model):
        try:
            builtin_folder(model)          # a broken install: say so before starting a node
        except ModelLoadError as exc:
            print(f'[demo] {exc}', file=sys.stderr)
            return 1
        print(NANO_NOTE, flush=True)
    # A given model runs at its own resolution (model_index.json), the random one at 256.
    processing_res = args.processing_res or (-1 if args.model else 256)

    room = SyntheticRoom(640, 480, lidar_lines=32)
    params = room_node_params(room, model, processing_res, args.model_family, args.device)
    env = isolated_ros_env()
    import os
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')})
    # Node and camera share the namespace /demo: /demo/image, /demo/depth/image, ...
    node = NodeProcess(out, params, env=env, prefix=args.install_prefix,
                       extra_args=['-r', '__ns:=/demo'])
    print(f'[demo] starting depth_node: {" ".join(node.command[:1])} '
          f'(ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}, log: {node.log_path})', flush=True)

    import rclpy
    rclpy.init()
    client = None
    code = 1
    try:
        node.start()
        if not node.wait_for_log('ready:', args.startup_timeout):
            print('[demo] depth_node did not become ready:\n' + node.log()[-3000:],
                  file=sys.stderr)
            return 1
        client = StreamClient(namespace='demo', node_name='fiffdepth_demo_camera')
        if not client.wait_for_node(30.0, lidar=True):
            print('[demo] could not connect to depth_node over DDS', file=sys.stderr)
            return 1
        if not client.warm_up(room, room.render(), time.time_ns()):
            print('[demo] warning: the node reports no LiDAR anchors yet', file=sys.stderr)
        frames, period = {}, 1.0 / args.rate
        t_start = time.time()
        for i in range(args.frames):
            frame = room.render(t=i * period)
            stamp_ns = time.time_ns()
            frames[stamp_ns] = frame
            client.publish_frame(room, frame, stamp_ns)
            time.sleep(max(0.0, t_start + (i + 1) * period - time.time()))
        # Diagnostics as they stood while the stream was running (rates decay afterwards).
        client.wait_until(lambda: client.count('diagnostics') > 0, timeout_s=5.0)
        streaming_diagnostics = client.messages('diagnostics')[-1:]
        client.wait_until(lambda: client.count('depth') >= args.frames, timeout_s=30.0)
        time.sleep(1.0)               # one more diagnostics period: the final counters
        client.received['diagnostics'] = [(0.0, m) for m in streaming_diagnostics] + \
            client.received['diagnostics'][-1:]
        code = _write_results(out, client, frames, room, image_msg_to_depth, image_to_rgb, cv2,
                              model=model)
    finally:
        if client is not None:
            client.close()
        exit_code, seconds = node.stop()
        print(f'[demo] depth_node stopped with exit code {exit_code} in {seconds:.2f} s')
        rclpy.try_shutdown()
    if not args.model:
        print(TINY_NOTE)
    elif is_builtin(model):
        print(NANO_NOTE)
    return code


def stream_latency(receipts, sent_stamps) -> dict | None:
    """Stamp -> receipt latency (ms) of every depth image answering a frame this run sent:
    (receipt wall time, message) pairs; the stamps are the senders' wall-clock times. Over all
    the frames the demo ran (the node's own statistics leave its first seconds out, which is
    the whole of a short demo)."""
    from ..conversions.backends import stamp_to_ns
    ms = [1000.0 * (t - stamp_to_ns(msg.header.stamp) / 1e9) for t, msg in receipts
          if stamp_to_ns(msg.header.stamp) in sent_stamps]
    if not ms:
        return None
    return {'frames': len(ms), 'median_ms': float(np.median(ms)),
            'p90_ms': float(np.percentile(ms, 90)), 'max_ms': float(np.max(ms))}


def _write_results(out, client, frames, room, image_msg_to_depth, image_to_rgb, cv2,
                   model: str = '') -> int:
    from ..conversions.backends import stamp_to_ns
    depth_msgs = client.messages('depth')
    summary = {'frames_sent': len(frames), 'depth_images_received': len(depth_msgs),
               'clouds_received': client.count('points'),
               'colorized_received': client.count('colorized'), 'frames': []}
    for i, msg in enumerate(client.messages('colorized')):
        rgb = image_to_rgb(msg)
        cv2.imwrite(str(out / f'depth_color_{i:03d}.png'), rgb[..., ::-1])
    for i, msg in enumerate(depth_msgs):
        stamp = stamp_to_ns(msg.header.stamp)
        truth = frames.get(stamp)
        depth = image_msg_to_depth(msg)
        entry = {'stamp_ns': stamp, 'encoding': msg.encoding, 'size': [msg.width, msg.height],
                 'frame_id': msg.header.frame_id}
        if truth is not None:
            cv2.imwrite(str(out / f'input_{i:03d}.png'), truth.rgb[..., ::-1])
            entry.update(metric_errors(depth, truth.depth))
        summary['frames'].append(entry)
    clouds = client.messages('points')
    if clouds:
        xyz, rgb = cloud_points_and_colours(clouds[-1])
        write_ply(out / 'cloud.ply', xyz, rgb)
        summary['ply_points'] = int(len(xyz))
    diagnostics = client.messages('diagnostics')
    if diagnostics:
        final, streaming = diagnostics[-1].status[0], diagnostics[0].status[0]
        values = {kv.key: kv.value for kv in final.values}
        for kv in streaming.values:              # rates as measured during the stream
            if 'rate' in kv.key:
                values[kv.key] = kv.value
        summary['diagnostics'] = {'level': int.from_bytes(bytes(final.level), 'little')
                                  if isinstance(final.level, bytes) else int(final.level),
                                  'message': final.message, 'values': values}
    errors = [f['abs_rel'] for f in summary['frames'] if 'abs_rel' in f]
    if errors:
        summary['median_abs_rel'] = float(np.median(errors))
    latency = stream_latency(client.receipts('depth'), set(frames))
    if latency:
        summary['latency'] = latency
    lines = []
    if 'diagnostics' in summary:           # which model ran, as the node itself reports it
        values = summary['diagnostics']['values']
        summary['model'] = {k: values.get(k) for k in ('model', 'family', 'model_source',
                                                       'processing_res', 'device')}
        m = summary['model']
        lines.append(f"model: {m['model']} (family {m['family']}; {m['model_source']}), "
                     f"processing_res {m['processing_res']} on {m['device']}")
    else:
        summary['model'] = {'model': model}
        lines.append(f'model: {model} (as requested; the node sent no diagnostics)')
    lines.append(f"frames sent {summary['frames_sent']}, depth images received "
                 f"{summary['depth_images_received']}, clouds {summary['clouds_received']}")
    if errors:
        lines.append(f'metric depth vs true scene depth: median AbsRel {np.median(errors):.3f}')
    if latency:
        lines.append(f"latency camera stamp -> depth image received, over the {latency['frames']} "
                     f"frames streamed: median {latency['median_ms']:.0f} ms, p90 "
                     f"{latency['p90_ms']:.0f} ms, max {latency['max_ms']:.0f} ms")
    if 'diagnostics' in summary:
        d = summary['diagnostics']
        lines.append(f"diagnostics: {d['message']}")
        lines += [f'  {k}: {v}' for k, v in d['values'].items()]
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    lines.append(f'results in {out}')
    (out / 'summary.txt').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0 if depth_msgs else 1


if __name__ == '__main__':
    sys.exit(main())
