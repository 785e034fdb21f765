"""``process_bag``: metric depth for a whole rosbag2 recording, offline, without ROS.

    process_bag INPUT OUTPUT [--model M] [--params config.yaml] [--image-topic T]
                [--camera-info-topic T] [--lidar-topic T] [--stereo-depth-topic T]
                [--storage mcap|sqlite3] [--copy-input] [--start S] [--end S] [--stride N] ...

Runs the node's per-frame pipeline (fiffdepth_ros.pipeline) on every selected image of INPUT and
writes OUTPUT, a new rosbag2 bag. Parameters mean what they mean for ``depth_node`` and may come
from the same YAML file (the ``depth_node`` / ``/**`` section); flags override the file.

Output topics, like the node's, live in the camera's namespace (image '/cam/image_raw' ->
'/cam/depth/image', '/cam/depth/camera_info', '/cam/depth/points', optionally
'/cam/depth/relative' and '/cam/depth/colorized', per publish_relative / publish_colorized /
cloud_type); ``--output-namespace`` moves them. Every output message keeps the source image's
header and is stamped in the bag with the source image's bag time.

Exit status: 0 done, 1 cannot start or failed (one error line), 130 interrupted (the output bag
is closed and valid, holding the frames finished before Ctrl-C).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any

import yaml

from .. import params as P
from ..conversions.backends import RosbagsBackend
from ..conversions.camera_info import Calibration, read_calibration
from ..model.runtime import load_estimator, model_line, set_cpu_threads
from ..pipeline import DepthPipeline, PipelineConfig, enabled_outputs
from ..sync import FrameAssembler
from .frames import FrameSource, Window
from .reader import BagReader, BagReadError, normalize_topic
from .runner import BagProcessor
from .summary import RunStats, format_summary
from .tf_static import BagExtrinsics, read_static_tf
from .topics import OUTPUT_TYPES, TopicChoice, TopicError, choose_topics, output_topics
from .writer import (DEFAULT_BAG_VERSION, BagWriteError, BagWriter, check_output,
                     publisher_qos)

# ROS parameters every node has; a node's YAML may set them, they mean nothing offline.
_ROS_GENERIC_PARAMS = {'use_sim_time', 'start_type_description_service'}


class UsageError(ValueError):
    """A command line that cannot work; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='process_bag', description='Metric depth for a rosbag2 recording with the depth '
        "node's pipeline (no ROS installation needed). Writes a new bag.",
        epilog='Parameters: any depth_node parameter from --params FILE (its depth_node or /** '
        'section) or -p NAME:=VALUE; the dedicated flags (--model, --device, ...) override '
        'both. Output topics: <image namespace>/depth/{image,camera_info,points,relative,'
        "colorized}, as the node publishes them. Exit status: 0 done, 1 error, 130 Ctrl-C "
        '(the output is a valid bag of the frames finished).')
    ap.add_argument('input', nargs='+', help='rosbag2 folder (with metadata.yaml), a .mcap / '
                    '.db3 file, or ROS 1 .bag file(s) of one recording')
    ap.add_argument('output', help='bag folder to create')
    ap.add_argument('--model', help="checkpoint folder or hub id (parameter 'model'; default "
                    "'nano', the built-in demonstration model)")
    ap.add_argument('--params', metavar='YAML', help='ROS 2 parameters file, as for the node')
    ap.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                    help='set one parameter (YAML value syntax); repeatable')
    ap.add_argument('--device', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    ap.add_argument('--precision', choices=P.SPECS['precision'].choices,
                    help="'bf16': an export on --runtime openvino (CPUs with bf16)")
    ap.add_argument('--runtime', choices=P.SPECS['runtime'].choices,
                    help="parameter 'runtime': onnxruntime/openvino run an export folder "
                         '(fiffdepth-export) given as --model')
    ap.add_argument('--processing-res', type=int, metavar='PX',
                    help='longer image side seen by the model (0 = native)')
    ap.add_argument('--autoencoder', choices=P.SPECS['autoencoder'].choices,
                    help="parameter 'autoencoder': full (the model's VAE), light (the model "
                    "folder's distilled light parts), light_encoder or light_decoder")
    ap.add_argument('--light-path', metavar='DIR',
                    help="parameter 'light_path': light parts from DIR (or a TAESD folder)")
    ap.add_argument('--publish-relative', action=argparse.BooleanOptionalAction, default=None,
                    help="also write '<ns>/depth/relative' (raw model output)")
    ap.add_argument('--publish-colorized', action=argparse.BooleanOptionalAction, default=None,
                    help="also write '<ns>/depth/colorized' (rgb8; default from parameters: on)")
    topics = ap.add_argument_group('input topics (found automatically when unambiguous)')
    topics.add_argument('--image-topic', help='sensor_msgs/Image or CompressedImage topic')
    topics.add_argument('--camera-info-topic', help='default: the camera_info in its namespace')
    topics.add_argument('--lidar-topic', help='PointCloud2 topic for metric anchors (enables '
                        'use_lidar; extrinsic from the bag /tf_static or lidar_* parameters)')
    topics.add_argument('--stereo-depth-topic', help='stereo depth Image or DisparityImage topic '
                        'for metric anchors (sets stereo_source from its type)')
    out = ap.add_argument_group('output')
    out.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                     help='output storage (default mcap)')
    out.add_argument('--bag-version', type=int, choices=(8, 9), default=DEFAULT_BAG_VERSION,
                     help='metadata.yaml version: 8 (default) is read by ros2 bag on Humble to '
                     'Kilted, 9 only from Jazzy on')
    out.add_argument('--output-namespace', metavar='NS',
                     help="namespace of the output topics (default: the image's)")
    out.add_argument('--copy-input', action='store_true',
                     help='also copy every input topic (in the window) as it is, so the output '
                     'replays on its own')
    out.add_argument('--overwrite', action='store_true',
                     help='replace OUTPUT if it is an existing bag')
    sel = ap.add_argument_group('selection')
    sel.add_argument('--start', type=float, metavar='S',
                     help='first image: seconds from the start of the bag')
    sel.add_argument('--end', type=float, metavar='S',
                     help='stop before this many seconds from the start of the bag')
    sel.add_argument('--stride', type=int, default=1, metavar='N',
                     help='process every Nth image of the window')
    run = ap.add_argument_group('throughput')
    run.add_argument('--batch-size', type=int, metavar='N',
                     help='frames per model call (default: 4 on CUDA, 1 on CPU, where batching '
                     'gains little and Ctrl-C waits for a whole batch)')
    run.add_argument('--threads', type=int, metavar='N',
                     help='torch CPU threads (default: CPU cores - 1, one core is left to '
                     'reading and writing; not used on CUDA)')
    run.add_argument('--prefetch', type=int, default=8, metavar='N',
                     help='frames decoded ahead of the model / waiting to be written')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    return ap


# ---------------------------------------------------------------------- parameters
def _parse_assignment(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition(':=')
    if not sep or not name.strip():
        raise UsageError(f"-p expects NAME:=VALUE, got '{text}'")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UsageError(f"-p {text}: the value is not valid YAML ({exc})") from None


def resolve_params(args, warn=print) -> dict[str, Any]:
    """Defaults < --params file < -p NAME:=VALUE < dedicated flags, validated like the node's."""
    values: dict[str, Any] = {}
    if args.params:
        loaded = P.load_yaml(args.params, node_name='depth_node')
        unknown = sorted(set(loaded) - set(P.SPECS) - _ROS_GENERIC_PARAMS)
        if unknown:
            # The node ignores undeclared parameters too; say so, they may be typos.
            warn(f"ignoring unknown parameter(s) in {args.params}: {', '.join(unknown)}")
        values.update({k: v for k, v in loaded.items() if k in P.SPECS})
    for text in args.param:
        name, value = _parse_assignment(text)
        values[name] = value
    flags = {'model': args.model, 'device': args.device, 'precision': args.precision,
             'runtime': args.runtime,
             'processing_res': args.processing_res, 'publish_relative': args.publish_relative,
             'autoencoder': args.autoencoder, 'light_path': args.light_path,
             'publish_colorized': args.publish_colorized}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.lidar_topic:
        values['use_lidar'] = True
    return P.validate(values)


def _window(args, reader: BagReader) -> Window:
    if args.stride < 1:
        raise UsageError(f'--stride must be at least 1, got {args.stride}')
    for name in ('start', 'end'):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise UsageError(f'--{name} must be seconds >= 0 from the start of the bag, '
                             f'got {value}')
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise UsageError(f'--end ({args.end}) must be after --start ({args.start})')
    base = reader.start_ns if reader.message_count else 0
    to_ns = lambda s: None if s is None else base + int(round(s * 1e9))   # noqa: E731
    return Window(to_ns(args.start), to_ns(args.end), args.stride)


def _estimated_frames(reader: BagReader, choice: TopicChoice, window: Window) -> int | None:
    info = reader.topics().get(choice.image)
    if info is None or not info.count:
        return None
    count = info.count
    if window.start_ns is not None or window.end_ns is not None:
        lo = max(window.start_ns or reader.start_ns, reader.start_ns)
        hi = min(window.end_ns or reader.end_ns, reader.end_ns)
        span = max(reader.end_ns - reader.start_ns, 1)
        count = round(count * max(hi - lo, 0) / span)
    return -(-count // window.stride)


class CtrlC:
    """Ctrl-C sets ``stop``: the current frame is finished and the bag closed (a model call
    cannot be cut short, so further Ctrl-C only say so). ``interrupted`` tells a Ctrl-C stop
    from a normal end."""

    def __init__(self, stop: threading.Event, log):
        self.stop = stop
        self.log = log
        self.interrupted = False
        self._previous = None

    def _handler(self, signum, frame):
        # Never raises: an exception here could land inside the bag's close and lose it.
        if self.interrupted:
            self.log('still stopping: waiting for the model call in progress, then closing '
                     'the output')
            return
        self.interrupted = True
        self.stop.set()
        self.log('\ninterrupted: finishing the current frame and closing the output')

    def __enter__(self) -> 'CtrlC':
        if threading.current_thread() is threading.main_thread():    # signals only go there
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------- main
def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def process(argv=None, log=_log) -> RunStats:
    """Run the command line ``argv`` and return its RunStats (raises on errors; for scripts and
    benchmarks). ``main`` is the console script around it."""
    args = build_parser().parse_args(argv)
    return _run(args, log)


def main(argv=None) -> int:
    try:
        stats = process(argv)
        return 130 if stats.interrupted else 0
    except (BagReadError, BagWriteError, TopicError, UsageError, P.ParameterError) as exc:
        _log(f'process_bag: error: {exc}')
        return 1
    except KeyboardInterrupt:         # Ctrl-C before processing started (loading the model)
        _log('process_bag: interrupted')
        return 130
    except Exception as exc:      # model load failures and the like: one line, no traceback
        from ..model.checkpoint import ModelLoadError
        if isinstance(exc, (ModelLoadError, ValueError, OSError)):
            _log(f'process_bag: error: {exc}')
            return 1
        raise


@dataclass
class Plan:
    """What a run will do, settled (and checked) before the model is loaded."""
    params: dict[str, Any]
    topics: TopicChoice
    window: Window
    topics_by_output: dict[str, str]        # output name -> output topic
    extrinsics: BagExtrinsics | None
    calibration: Calibration | None = None  # camera_info_url, for cameras without camera_info


def _check_run_options(args) -> None:
    for name in ('batch_size', 'threads', 'prefetch'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def plan_run(args, p: dict[str, Any], reader: BagReader, typestore, log) -> Plan:
    types = {name: t.msgtype for name, t in reader.topics().items()}
    given = {name: normalize_topic(value) if value else None for name, value in (
        ('image', args.image_topic), ('camera_info', args.camera_info_topic),
        ('lidar', args.lidar_topic), ('stereo', args.stereo_depth_topic))}
    calibration = read_calibration(p['camera_info_url']) if p['camera_info_url'] else None
    choice = choose_topics(types, **given, calibration=calibration is not None,
                           use_lidar=p['use_lidar'], stereo_source=p['stereo_source'],
                           prefer_compressed=p['image_transport'] == 'compressed')
    if choice.stereo_source != p['stereo_source']:
        p = P.validate({**p, 'stereo_source': choice.stereo_source})
    outputs = enabled_outputs(p)
    topics_by_output = {k: v for k, v in output_topics(choice.image, args.output_namespace)
                        .items() if k in outputs}
    if args.copy_input and (clash := sorted(set(topics_by_output.values()) & set(types))):
        raise UsageError(f"output topic(s) {', '.join(clash)} exist in the input, which "
                         '--copy-input copies; pass --output-namespace NS')
    extrinsics = None
    if choice.lidar:
        tree = read_static_tf(reader, typestore)[0] if p['lidar_use_tf'] else None
        extrinsics = BagExtrinsics(PipelineConfig.from_params(p).extrinsic, tree)
        log('LiDAR extrinsic from ' + ('the bag /tf_static' if extrinsics.tree is not None
                                       else 'the static lidar_* parameters'))
    used = [('image', choice.image), ('camera_info', choice.camera_info),
            ('LiDAR', choice.lidar), (f'stereo {choice.stereo_source}', choice.stereo)]
    log(f"input {' '.join(args.input)}: " + ', '.join(f'{k} {v}' for k, v in used if v))
    for note in choice.notes:
        log(f'note: {note}')
    return Plan(p, choice, _window(args, reader), topics_by_output, extrinsics, calibration)


def _run(args, log) -> RunStats:
    _check_run_options(args)
    p = resolve_params(args, warn=lambda t: log(f'process_bag: warning: {t}'))
    for path in args.input:
        out_path = check_output(args.output, args.overwrite, path)
    backend = RosbagsBackend()       # one typestore reads the inputs and writes the outputs
    with BagReader(args.input if len(args.input) > 1 else args.input[0]) as reader:
        plan = plan_run(args, p, reader, backend.typestore, log)
        estimator = load_estimator(plan.params)
        info = estimator.describe()
        log(f'model {model_line(info)}')
        on_cuda = getattr(estimator.device, 'type', 'cpu') == 'cuda'
        if not on_cuda:
            _set_cpu_threads(args.threads, log)
        stop = threading.Event()
        processor = _processor(args, plan, reader, estimator, backend, out_path, stop,
                               batch=args.batch_size or (4 if on_cuda else 1))
        log('outputs: ' + ', '.join(plan.topics_by_output.values())
            + (' + copies of every input topic' if args.copy_input else ''))
        ctrl_c = CtrlC(stop, log)
        try:
            with ctrl_c:
                stats = processor.run()
        finally:
            if processor.progress is not None:
                processor.progress.close()
        stats.interrupted = ctrl_c.interrupted
        print(format_summary(stats, str(out_path)), flush=True)
    return stats


def _processor(args, plan: Plan, reader: BagReader, estimator, backend, out_path,
               stop: threading.Event, batch: int) -> BagProcessor:
    source = frame_source(args, plan, reader, backend, stop)
    progress = _progress_bar(_estimated_frames(reader, plan.topics, plan.window),
                             args.no_progress)
    return BagProcessor(source, make_pipeline(plan, estimator, backend),
                        writer_factory(args, plan, backend, out_path), plan.topics_by_output,
                        batch_size=batch, prefetch=args.prefetch, stop=stop, progress=progress)


# The pieces of a run, also built apart by the Ray fleet's reader and writer (bag/fleet.py).
def make_pipeline(plan: Plan, estimator, backend) -> DepthPipeline:
    # Anchors count as configured when the bag has their topic (like a node that receives them).
    config = replace(PipelineConfig.from_params(plan.params),
                     anchors_configured=bool(plan.topics.lidar or plan.topics.stereo))
    return DepthPipeline(estimator, config, backend, plan.extrinsics)


def frame_source(args, plan: Plan, reader: BagReader, backend,
                 stop: threading.Event | None) -> FrameSource:
    p = plan.params
    calibration = plan.calibration
    assembler = FrameAssembler(
        p['max_anchor_age'], use_lidar=bool(plan.topics.lidar),
        use_stereo=bool(plan.topics.stereo),
        calibration=None if calibration is None else
        (lambda image: calibration.camera_info(backend.copy_header(image.header), backend)),
        calibration_name=calibration.source if calibration else '')
    return FrameSource(reader, plan.topics, backend.typestore, assembler, plan.window,
                       companion_wait_s=p['companion_wait'], copy_input=args.copy_input,
                       stop=stop)


def writer_factory(args, plan: Plan, backend, out_path):
    qos = publisher_qos(plan.params['qos_output_reliability'], plan.params['qos_output_depth'])

    def open_writer() -> BagWriter:       # called by the write thread, which owns the bag
        writer = BagWriter(out_path, backend.typestore, storage=args.storage,
                           overwrite=args.overwrite, version=args.bag_version)
        for name, topic in plan.topics_by_output.items():
            writer.add_topic(topic, OUTPUT_TYPES[name], qos)
        return writer
    return open_writer


def _set_cpu_threads(requested: int | None, log) -> None:
    log(f'torch CPU threads: {set_cpu_threads(requested)}')


def _progress_bar(total: int | None, disabled: bool):
    """tqdm on stderr (frames/s and ETA). Also in logs (not a terminal), refreshed less often."""
    if disabled:
        return None
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(total=total, unit='frame', desc='process_bag', dynamic_ncols=tty,
                smoothing=0.1, file=sys.stderr, mininterval=0.2 if tty else 2.0)


if __name__ == '__main__':
    sys.exit(main())
