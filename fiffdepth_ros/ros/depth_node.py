"""ROS 2 node: camera images (+ camera_info, LiDAR, stereo) in, metric depth and clouds out.

The node is an adapter: parameters, subscriptions, publishers, diagnostics and threading. All
per-frame work happens in :class:`fiffdepth_ros.pipeline.DepthPipeline`, which the offline bag
processor shares.

Threading: subscription callbacks only store messages. Inference runs on a worker thread with a
latest-only hand-off (a new image replaces a pending one and counts as dropped), so callbacks and
timers never wait for the model. With ``overlap_stages`` (default) a second thread finishes and
publishes frame N while the model works on frame N+1 (``fiffdepth_ros.ros.overlap``).
"""
from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from .. import params as P
from ..conversions.backends import RclpyBackend, stamp_to_ns
from ..conversions.camera_info import read_calibration
from ..model.runtime import load_estimator, model_line, set_cpu_threads
from ..pipeline import DepthPipeline, FrameError, PipelineConfig, enabled_outputs
from ..scale.local_correction import warm_up
from ..sync import FrameAssembler
from .entry import run_node
from .extrinsics import ExtrinsicResolver
from .overlap import HandOff, LatestOnly
from .qos import profile
from .stats import NodeStats

OUTPUT_TOPICS = {
    'depth': ('depth/image', Image),
    'camera_info': ('depth/camera_info', CameraInfo),
    'points': ('depth/points', PointCloud2),
    'relative': ('depth/relative', Image),
    'colorized': ('depth/colorized', Image),
}


class WarningLimiter:
    """At most one log line per kind of problem per period, with a count of the rest."""

    def __init__(self, logger, period_s: float = 5.0):
        self.logger = logger
        self.period_s = period_s
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, text: str, key: str | None = None) -> None:
        # One kind of problem = the text without its numbers (sizes, stamps, counts).
        key = key or re.sub(r'[0-9.]+', '#', text)[:100]
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-1e9, 0))
        if now - last >= self.period_s:
            more = f' (and {suppressed} more like it)' if suppressed else ''
            self.logger.warning(text + more)
            self._last[key] = (now, 0)
        else:
            self._last[key] = (last, suppressed + 1)


def _descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    text = f'{spec.description}. Allowed: {spec.allowed()}.'
    desc = ParameterDescriptor(description=text, read_only=spec.read_only)
    if spec.kind in (float, list):
        desc.dynamic_typing = True        # accept 20 as well as 20.0 from YAML / the CLI
    if spec.kind is int and spec.min is not None and spec.max is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max),
                                           step=0)]
    if spec.kind is float and spec.min is not None and spec.max is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                        to_value=float(spec.max), step=0.0)]
    return desc


@dataclass
class _Inferred:
    """One frame between the stages: the model's output and what finishing needs."""

    msg: object                    # the image message
    received: float                # time.monotonic() at receipt
    t_start: float                 # time.perf_counter() when the inference thread took it
    frame: object                  # pipeline.PreparedFrame
    relative: object               # the model's output (numpy, or a tensor on its device)
    outputs: set = field(default_factory=set)
    waited_ms: float = 0.0         # waiting for companions
    front_ms: float = 0.0          # on the inference thread, forward pass included
    inference_ms: float = 0.0


class DepthNode(Node):
    """See the module docstring. Construct, then call :meth:`start` with a loaded estimator."""

    def __init__(self, **kwargs):
        super().__init__('depth_node', **kwargs)
        self.warn = WarningLimiter(self.get_logger())
        for spec in P.SPECS.values():
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        # Raises ParameterError for values that are not allowed (main() reports and exits).
        self.params = P.validate({name: self.get_parameter(name).value for name in P.SPECS})
        self.stats = NodeStats()
        self.pipeline: DepthPipeline | None = None
        self._pending_config: PipelineConfig | None = None
        self._cond = threading.Condition()          # guards _pending_config
        self._images = LatestOnly()                 # (monotonic receipt time, image message)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None     # inference (front stage)
        self._finisher: HandOff | None = None            # finish + publish (back stage)
        # Guards the FrameAssembler; notified when a companion message arrives.
        self._companions = threading.Condition()
        # Frames whose metric outputs the pipeline withheld (anchors configured, no fit).
        self.withheld = 0
        self._last_withheld = ''

    # ------------------------------------------------------------------ set-up
    def start(self, estimator) -> None:
        p = self.params
        self.estimator = estimator
        backend = RclpyBackend()
        calibration = read_calibration(p['camera_info_url']) if p['camera_info_url'] else None
        self.assembler = FrameAssembler(
            p['max_anchor_age'], use_lidar=p['use_lidar'],
            use_stereo=p['stereo_source'] != 'none',
            calibration=None if calibration is None else
            (lambda image: calibration.camera_info(backend.copy_header(image.header), backend)),
            calibration_name=calibration.source if calibration else '')
        config = PipelineConfig.from_params(p)
        resolver = ExtrinsicResolver(self, config.extrinsic, p['lidar_use_tf']) \
            if p['use_lidar'] else None
        if resolver is not None and resolver.tf_error:
            self.get_logger().info(resolver.tf_error)
        if config.scale.local_correction:        # its compiled kernels, logged here
            warm_up(self.get_logger().info)
        self.pipeline = DepthPipeline(estimator, config, backend, resolver)

        companion_qos = profile(p['qos_reliability'], 5)
        self._image_subscription = None
        self._info_subscription = None
        self._resubscribe = self._resubscribe_info = False
        self._camera_info_heard = False
        self._subscribe_images()
        self._subscribe_camera_info()
        if p['use_lidar']:
            self.create_subscription(PointCloud2, 'lidar/points', self._on_lidar, companion_qos)
        if p['stereo_source'] == 'depth':
            self.create_subscription(Image, 'stereo/depth', self._on_stereo, companion_qos)
        elif p['stereo_source'] == 'disparity':
            from stereo_msgs.msg import DisparityImage
            self.create_subscription(DisparityImage, 'stereo/disparity', self._on_stereo,
                                     companion_qos)

        out_qos = profile(p['qos_output_reliability'], p['qos_output_depth'])
        enabled = enabled_outputs(p)
        self.publishers_by_output = {
            name: self.create_publisher(msg_type, topic, out_qos)
            for name, (topic, msg_type) in OUTPUT_TOPICS.items() if name in enabled}
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(p['diagnostics_period'], self._publish_diagnostics)
        self.create_timer(0.5, self._resubscribe_if_needed)
        self._parameters_callback = self.add_on_set_parameters_callback(self._on_set_parameters)

        self._finisher = HandOff(self._process, overlapped=_overlap(p['overlap_stages'],
                                                                    estimator),
                                 on_error=self._on_finish_error)
        if self._finisher.overlapped:
            # Two busy Python threads: a thread coming back from a GIL-free torch/numpy call
            # waits up to the switch interval for the GIL (5 ms by default) while the other
            # runs Python. The model makes hundreds of such calls per frame, so the default
            # interval stretched the forward pass several times; 0.5 ms keeps it near its own.
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self.stats.mode = self._finisher.mode
        self._worker = threading.Thread(target=self._work, name='fiffdepth-inference',
                                        daemon=True)
        self._worker.start()
        info = estimator.describe()
        self.get_logger().info(
            f"ready: model {model_line(info)}; "
            f"image topic '{self.resolve_topic_name('image')}'")

    def _subscribe_images(self) -> None:
        """(Re)create the image subscription.

        BEST_AVAILABLE settles on a reliability when the subscription is created, from the
        publishers known then; a best-effort camera driver that starts later is incompatible.
        Such an incompatibility re-creates the subscription, which then matches it.
        """
        p = self.params
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:                                   # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if self._image_subscription is not None:
            self.destroy_subscription(self._image_subscription)
        msg_type, topic = ((CompressedImage, 'image/compressed')
                           if p['image_transport'] == 'compressed' else (Image, 'image'))
        self._image_subscription = self.create_subscription(
            msg_type, topic, self._on_image, profile(p['qos_reliability'], 1),
            event_callbacks=events)

    def _subscribe_camera_info(self, latched: bool | None = None) -> None:
        """(Re)create the camera_info subscription so that a camera_info published once,
        latched (transient-local), is received. At start durability BEST_AVAILABLE: it settles
        on transient-local when no publisher is known yet or all offer it, so a latched driver
        is heard from the first frame. A volatile driver is then incompatible (it logs that
        once): ``latched=False`` re-creates the subscription volatile. When later every
        publisher is transient-local and nothing was heard, ``latched=True`` (from
        ``_resubscribe_if_needed``) gets the latched message after all."""
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:                                   # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_info_qos)
        if self._info_subscription is not None:
            self.destroy_subscription(self._info_subscription)
        self._info_subscription = self.create_subscription(
            CameraInfo, 'camera_info', self._on_camera_info,
            profile(self.params['qos_reliability'], 5,
                    durability={None: 'best_available', True: 'transient_local',
                                False: 'volatile'}[latched]),
            event_callbacks=events)

    def _on_incompatible_info_qos(self, event) -> None:
        self._resubscribe_info = True

    def _camera_info_is_latched_only(self) -> bool:
        """Every camera_info publisher offers transient-local, nothing arrived yet and our
        subscription is volatile (as the graph reports it: BEST_AVAILABLE resolves there)."""
        if self._camera_info_heard:
            return False
        from rclpy.qos import DurabilityPolicy
        latched = DurabilityPolicy.TRANSIENT_LOCAL
        topic = self.resolve_topic_name('camera_info')
        publishers = self.get_publishers_info_by_topic(topic)
        if not publishers or any(i.qos_profile.durability != latched for i in publishers):
            return False
        ours = [i for i in self.get_subscriptions_info_by_topic(topic)
                if (i.node_name, i.node_namespace) == (self.get_name(), self.get_namespace())]
        return bool(ours) and all(i.qos_profile.durability != latched for i in ours)

    def _on_incompatible_qos(self, event) -> None:
        if self.params['qos_reliability'] == 'best_available':
            self._resubscribe = True
        else:
            self.warn(f'a publisher on the image topic offers incompatible QoS '
                      f'({event.last_policy_kind}); qos_reliability is '
                      f"'{self.params['qos_reliability']}'", key='incompatible-qos')

    def _resubscribe_if_needed(self) -> None:
        if self._resubscribe:
            self._resubscribe = False
            self.get_logger().info('image publisher with other QoS appeared: re-subscribing '
                                   'with best_available to match it')
            self._subscribe_images()
        if self._resubscribe_info:
            self._resubscribe_info = False
            self.get_logger().info('camera_info publisher with other QoS appeared: '
                                   're-subscribing (volatile) to match it')
            self._subscribe_camera_info(latched=False)
        elif self._camera_info_is_latched_only():
            self.get_logger().info('camera_info is published latched (transient-local): '
                                   're-subscribing transient-local to receive it')
            self._subscribe_camera_info(latched=True)

    def stop(self, timeout_s: float = 0.3) -> None:
        self._stop.set()
        self._images.close()
        with self._companions:
            self._companions.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=timeout_s)
        if self._finisher is not None:
            self._finisher.close(timeout=timeout_s)

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, msg) -> None:
        self.stats.count('received')
        self.stats.inputs.tick()
        if self._images.put((time.monotonic(), msg)):
            self.stats.count('dropped')

    def _on_camera_info(self, msg) -> None:
        self._camera_info_heard = True
        with self._companions:
            self.assembler.add_camera_info(msg)
            self._companions.notify_all()

    def _on_lidar(self, msg) -> None:
        with self._companions:
            self.assembler.add_lidar(msg)
            self._companions.notify_all()

    def _on_stereo(self, msg) -> None:
        with self._companions:
            self.assembler.add_stereo(msg)
            self._companions.notify_all()

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        new = dict(self.params)
        try:
            for change in changes:
                spec = P.SPECS.get(change.name)
                if spec is None:
                    continue                      # e.g. use_sim_time
                if spec.read_only:
                    raise P.ParameterError(f"parameter '{spec.name}' is read-only: restart the "
                                           'node to change it')
                new[change.name] = spec.coerce(change.value)
            P.check_consistency(new)
        except P.ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.params = new
        # Applied by the worker between frames, so a frame never sees half a change.
        with self._cond:
            self._pending_config = PipelineConfig.from_params(new)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inference worker
    def _work(self) -> None:
        """Front stage, on the inference thread: the newest image -> companions, decode, model.
        The result goes to the back stage (``_process``) through the hand-off."""
        while not self._stop.is_set():
            # Start the model only when its result can be handed off at once: the frame it
            # takes then is the newest, and none waits behind a full hand-off.
            self._finisher.wait_free()
            item = self._images.take()
            if item is None:                    # closed: the node stops
                return
            received, msg = item
            with self._cond:
                config, self._pending_config = self._pending_config, None
            if config is not None:
                # Applied between frames (the finishing thread idle too), so a frame never
                # sees half a change.
                self._finisher.wait_idle()
                self.pipeline.config = config
                self.estimator.processing_res = self.params['processing_res']
            work = self._infer(msg, received)
            if work is None:
                continue
            self._finisher.hand_off(work)
            # What delays the next inference: everything on this thread but the forward pass
            # (in the sequential layout that includes finishing and publishing).
            self.stats.critical_ms.append(
                (time.perf_counter() - work.t_start) * 1e3 - work.inference_ms)

    def _wanted_outputs(self) -> set[str]:
        return {name for name, pub in self.publishers_by_output.items()
                if pub.get_subscription_count() > 0}

    def _infer(self, msg, received: float) -> '_Inferred | None':
        t_start = time.perf_counter()
        outputs = self._wanted_outputs()
        if not outputs:
            self.stats.count('idle')
            return None
        # Topics arrive in any order: give a LiDAR sweep or camera_info stamped with this image
        # up to companion_wait to arrive before matching without it.
        t_wait = time.perf_counter()
        deadline = time.monotonic() + self.params['companion_wait']
        with self._companions:
            while (self.assembler.awaits_companions(msg) and not self._stop.is_set()
                   and time.monotonic() < deadline):
                self._companions.wait(timeout=max(deadline - time.monotonic(), 0.0))
            inputs = self.assembler.assemble(msg)
        waited_ms = (time.perf_counter() - t_wait) * 1e3
        try:
            frame = self.pipeline.prepare(inputs)
            relative = self.pipeline.predict([frame])[0]
        except FrameError as exc:
            self.stats.count('skipped')
            self.warn(str(exc))
            return None
        except Exception as exc:        # model failures must not take the node down
            self._frame_failed(exc)
            return None
        return _Inferred(msg=msg, received=received, t_start=t_start, frame=frame,
                         relative=relative, outputs=outputs, waited_ms=waited_ms,
                         front_ms=(time.perf_counter() - t_start) * 1e3,
                         inference_ms=frame.timings.get('inference', 0.0))

    def _process(self, work: '_Inferred') -> None:
        """Back stage: scale recovery, messages, publishing and statistics of one frame (on
        the finishing thread, or inline on the inference thread without overlap_stages)."""
        t_finish = time.perf_counter()
        msg = work.msg
        try:
            result = self.pipeline.finish(work.frame, work.relative, work.outputs)
        except FrameError as exc:
            self.stats.count('skipped')
            self.warn(str(exc))
            return
        except Exception as exc:        # finishing failures must not take the node down
            self._frame_failed(exc)
            return
        for note in result.notes:
            self.warn(note)
        self._count_withheld(result)
        t_publish = time.perf_counter()
        for name, out_msg in result.messages.items():
            t0 = time.perf_counter()
            self.publishers_by_output[name].publish(out_msg)
            # Publish cost against message size (serialisation and transport copy).
            self.stats.add_publish(name, len(getattr(out_msg, 'data', b'')),
                                   (time.perf_counter() - t0) * 1e3)
        done = time.perf_counter()
        result.timings.update(wait=work.waited_ms, publish=(done - t_publish) * 1e3)
        now_ns = self.get_clock().now().nanoseconds
        self.stats.count('processed')
        self.stats.outputs.tick()
        self.stats.latency_ms.add((now_ns - stamp_to_ns(msg.header.stamp)) * 1e-6)
        self.stats.node_latency_ms.add((time.monotonic() - work.received) * 1e3)
        inference = result.timings.get('inference', 0.0)
        self.stats.inference_ms.append(inference)
        self.stats.overhead_ms.append(work.front_ms - inference + (done - t_finish) * 1e3)
        self.stats.add_stages({k: v for k, v in result.timings.items() if k != 'inference'})
        self.stats.last_report = result.report
        self.stats.last_metric = result.metric

    def _frame_failed(self, exc: Exception) -> None:
        self.stats.count('skipped')
        if _is_out_of_memory(exc):
            _release_cuda_memory()
            self.warn(f'out of memory during inference: frame dropped ({exc})', key='oom')
        else:
            self.warn(f'frame failed: {exc!r}\n{traceback.format_exc()}', key=type(exc).__name__)

    def _on_finish_error(self, exc: BaseException) -> None:
        self.warn(f'finishing failed: {exc!r}', key='finish-' + type(exc).__name__)

    # ------------------------------------------------------------------ diagnostics
    def _count_withheld(self, result) -> None:
        """A frame without a scale fit while anchors are configured: nothing went out on the
        metric topics (fiffdepth_ros.pipeline); say so in /diagnostics."""
        self._last_withheld = result.withheld
        if result.withheld:
            self.withheld += 1
            self.warn(f'metric outputs withheld: {result.withheld}', key='withheld')

    def _publish_diagnostics(self) -> None:
        summary = self.stats.summary()
        info = self.estimator.describe()
        summary.update({k: str(v) for k, v in info.items()})
        summary['withheld frames (no scale fit)'] = str(self.withheld)
        summary['camera_info fallbacks'] = str(self.assembler.camera_info_fallbacks)
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: depth estimation',
                                  hardware_id=str(info.get('device', '')))
        report = self.stats.last_report
        if self.stats.processed == 0:
            status.level, status.message = DiagnosticStatus.WARN, 'no frame processed yet'
        elif self._last_withheld:
            status.level = DiagnosticStatus.WARN
            status.message = (f'metric outputs withheld ({self.withheld} frames so far): '
                              f'{self._last_withheld}')
        elif not self.stats.last_metric:
            status.level = DiagnosticStatus.WARN
            status.message = 'publishing relative depth (no metric anchors / fixed scale)'
        elif report is not None and report.status in ('held', 'none'):
            status.level, status.message = DiagnosticStatus.WARN, f'scale fit {report.status}'
        else:
            status.level, status.message = DiagnosticStatus.OK, 'metric depth'
        status.values = [KeyValue(key=k, value=v) for k, v in summary.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)


def _overlap(choice: str, estimator) -> bool:
    """overlap_stages: 'auto' overlaps when the model runs on CUDA. Measured on a 2-core CPU
    (bench/node_latency.py, bench/overlap.py): with a CPU model the two stages share the same
    cores, the forward pass doubles, the rate stays and the latency grows; with a model that
    holds no CPU the rate rises 1.6-2.1x."""
    if choice in ('on', 'off'):
        return choice == 'on'
    device = getattr(estimator, 'device', None)
    return getattr(device, 'type', str(device)) == 'cuda'


def _is_out_of_memory(exc: Exception) -> bool:
    try:
        import torch
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, (MemoryError, RuntimeError)) and 'out of memory' in str(exc).lower()


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _release_cuda_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _bring_up(node: DepthNode) -> None:
    if node.params['device'] == 'cpu' or (node.params['device'] == 'auto'
                                          and not _cuda_available()):
        node.get_logger().info(f'torch CPU threads: {set_cpu_threads()} (one core is left '
                               'to the ROS executor)')
    node.start(load_estimator(node.params))


def main(args=None, fast_exit: bool = True) -> int:
    return run_node('depth_node', DepthNode, _bring_up, DepthNode.stop, args=args,
                    fast_exit=fast_exit)


if __name__ == '__main__':
    sys.exit(main())
