"""The per-frame pipeline shared by the live node and the offline bag processor.

image (+ camera_info, LiDAR, stereo) -> RGB -> relative depth (model) -> anchors -> metric depth
(scale recovery) -> output messages (depth image, camera_info, point cloud, relative, colourised).

It is split into ``prepare`` (decode and check inputs), the model call, and ``finish`` (scale and
build messages) so that the bag processor can batch model calls across frames, while the node
calls ``process`` for one frame. Messages are built through a MessageBackend (rclpy or rosbags).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from .conversions.backends import MessageBackend, stamp_to_ns
from .conversions.colorize import colorize_depth
from .conversions.depth_image import depth_to_image_msg, rgb_to_image_msg
from .conversions.images import image_msg_to_depth, image_msg_to_float, message_to_rgb
from .conversions.pointcloud import DepthCloudBuilder, _xyz_fields, pointcloud_to_xyz
from .geometry.camera_model import CameraInfoError, CameraModel
from .geometry.transforms import RigidTransform
from .scale.anchors import Anchors, depth_image_anchors, disparity_anchors, lidar_anchors
from .scale.local_correction import GuideImageError
from .scale.recovery import FitReport, ScaleRecovery, ScaleRecoveryConfig
from .sync import FrameInputs

OUTPUTS = ('depth', 'camera_info', 'points', 'relative', 'colorized')
# Outputs that claim metres: withheld for a frame without a fit when anchors are configured.
METRIC_OUTPUTS = ('depth', 'camera_info', 'points')


def enabled_outputs(p: dict[str, Any]) -> list[str]:
    """The outputs that validated parameters switch on (the node advertises these)."""
    names = ['depth', 'camera_info']
    if p['cloud_type'] != 'none':
        names.append('points')
    if p['publish_relative']:
        names.append('relative')
    if p['publish_colorized']:
        names.append('colorized')
    return names


class FrameError(ValueError):
    """The frame cannot be processed at all (undecodable image); the caller skips it."""


@dataclass(frozen=True)
class StaticExtrinsic:
    """camera <- LiDAR transform given as parameters (parent/child frames as in tf)."""

    transform: RigidTransform          # pose of child in parent: maps child points to parent
    parent_frame: str = ''
    child_frame: str = ''

    def camera_from(self, camera_frame: str, cloud_frame: str) -> RigidTransform:
        parent = self.parent_frame or camera_frame
        child = self.child_frame or cloud_frame
        if (parent, child) == (camera_frame, cloud_frame):
            return self.transform
        if (parent, child) == (cloud_frame, camera_frame):
            return self.transform.inverse()
        raise LookupError(f"static LiDAR extrinsic is {parent} <- {child}, but the image frame is "
                          f"'{camera_frame}' and the cloud frame is '{cloud_frame}'")

    def fallback(self, camera_frame: str, cloud_frame: str, problem: str) -> RigidTransform:
        """The static extrinsic after a failed tf lookup (``problem``). Only one that names its
        frames is used: an unnamed (default identity) one would misplace every anchor."""
        if not (self.parent_frame and self.child_frame):
            raise LookupError(f'{problem}; set lidar_parent_frame/lidar_child_frame and the '
                              'static lidar_* transform to fall back')
        try:
            return self.camera_from(camera_frame, cloud_frame)
        except LookupError as static_problem:
            raise LookupError(f'{problem}; {static_problem}') from None


# (camera_frame, cloud_frame, stamp_ns) -> camera_from_cloud transform; raises LookupError.
ExtrinsicLookup = Callable[[str, str, int], RigidTransform]


@dataclass
class PipelineConfig:
    image_rectified: bool = True
    output_encoding: str = '32FC1'
    cloud_type: str = 'xyzrgb'
    cloud_stride: int = 1
    cloud_organized: bool = True
    min_range: float = 0.1
    max_range: float = 20.0
    colorize_range: tuple[float, float] | None = None
    stereo_grid_step: int = 8
    fixed_scale_is_metric: bool = False
    # Metric anchors are configured (use_lidar / stereo_source): a frame without a fit or held
    # estimate then never reaches the metric outputs, unless publish_without_fit.
    anchors_configured: bool = False
    publish_without_fit: bool = False
    extrinsic: StaticExtrinsic = field(
        default_factory=lambda: StaticExtrinsic(RigidTransform.identity()))
    scale: ScaleRecoveryConfig = field(default_factory=ScaleRecoveryConfig)
    # fit_space 'auto': the pipeline sets scale.fit_space from its model's output space.
    fit_space_follows_model: bool = False

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> 'PipelineConfig':
        """From a validated parameter dict (see fiffdepth_ros.params)."""
        colour = (p['colorize_min'], p['colorize_max'])
        scale = ScaleRecoveryConfig(
            fit_space='depth' if p['fit_space'] == 'auto' else p['fit_space'],
            local_correction=p['local_correction'], local_guide=p['local_guide'],
            responsiveness=p['filter_responsiveness'], min_depth=p['min_range'],
            max_depth=p['max_range'], fixed_scale=p['fixed_scale'], fixed_shift=p['fixed_shift'])
        extrinsic = StaticExtrinsic(
            RigidTransform(np.array(p['lidar_translation']), np.array(p['lidar_rotation'])),
            p['lidar_parent_frame'], p['lidar_child_frame'])
        return cls(image_rectified=p['image_rectified'], output_encoding=p['output_encoding'],
                   cloud_type=p['cloud_type'], cloud_stride=p['cloud_stride'],
                   cloud_organized=p['cloud_organized'], min_range=p['min_range'],
                   max_range=p['max_range'],
                   colorize_range=colour if colour[1] > colour[0] else None,
                   stereo_grid_step=p['stereo_grid_step'],
                   fixed_scale_is_metric=p['fixed_scale_is_metric'],
                   anchors_configured=p['use_lidar'] or p['stereo_source'] != 'none',
                   publish_without_fit=p['publish_without_fit'], extrinsic=extrinsic,
                   scale=scale, fit_space_follows_model=p['fit_space'] == 'auto')


@dataclass
class PreparedFrame:
    inputs: FrameInputs
    header: Any
    stamp_ns: int
    rgb: np.ndarray
    camera: CameraModel | None
    notes: list[str]
    timings: dict[str, float]
    ready: Any = None          # CUDA event: the relative depth on the device is complete


@dataclass
class FrameResult:
    header: Any
    stamp_ns: int
    messages: dict[str, Any]       # output name -> message, for the outputs asked for
    report: FitReport
    metric: bool
    anchors: int
    notes: list[str]               # why something was skipped or ignored (for rate-limited logs)
    timings: dict[str, float]      # milliseconds per stage
    depth: np.ndarray              # metric (or fixed-scaled) depth, float32 HxW, NaN invalid
    relative: np.ndarray
    # Why the metric outputs were withheld for this frame ('' = they were not).
    withheld: str = ''


def _withheld_reason(report: FitReport, notes: list[str]) -> str:
    """Why a frame has no metric scale, for the diagnostics and the bag summary."""
    missing = [n for n in notes if n.startswith('no ') or 'ignored' in n]
    why = '; '.join(missing) or report.detail or f'scale fit {report.status}'
    return f'no scale fit and no held estimate ({why})'


def _device_finisher(estimator, finish_device):
    """A DeviceFinisher for ``finish_device`` ('auto': the model's device if it is CUDA), or
    None for the numpy path."""
    if finish_device in (None, 'numpy'):
        return None
    if finish_device == 'auto':
        device = getattr(estimator, 'device', None)
        if device is None or getattr(device, 'type', str(device)) != 'cuda':
            return None
        finish_device = device
    from .finish.device import DeviceFinisher     # torch only where it is used
    return DeviceFinisher(finish_device)


def _predict_on_device(estimator, frame: PreparedFrame):
    import torch
    if hasattr(estimator, 'predict_on_device'):
        relative = estimator.predict_on_device(frame.rgb)
    else:
        relative = torch.from_numpy(np.ascontiguousarray(estimator.predict(frame.rgb)))
    if relative.device.type == 'cuda':
        frame.ready = torch.cuda.Event()
        frame.ready.record(torch.cuda.current_stream(relative.device))
    return relative


class DepthPipeline:
    """Turns matched input messages into output messages; holds the per-stream state."""

    def __init__(self, estimator, config: PipelineConfig, backend: MessageBackend,
                 extrinsic_lookup: ExtrinsicLookup | None = None, finish_device='auto'):
        self.estimator = estimator
        # Per-pixel finishing in torch on this device (fiffdepth_ros.finish), or None: numpy.
        # 'auto': on the model's device when that is CUDA; None / 'numpy': numpy always.
        self.finisher = _device_finisher(estimator, finish_device)
        self.backend = backend
        self.extrinsic_lookup = extrinsic_lookup
        config = self._with_model_fit_space(config)
        self._config = config
        self.scale = ScaleRecovery(config.scale)
        self.clouds = DepthCloudBuilder()
        self._cameras: dict[tuple, CameraModel] = {}
        self._last_sweep: tuple | None = None     # (cloud message, projection key, anchors)

    @property
    def config(self) -> PipelineConfig:
        return self._config

    @config.setter
    def config(self, config: PipelineConfig) -> None:
        config = self._with_model_fit_space(config)
        self._config = config
        self.scale.config = config.scale     # a changed scale config resets the filter

    def _with_model_fit_space(self, config: PipelineConfig) -> PipelineConfig:
        """fit_space 'auto': disparity models (estimator.output_space) fit in inverse depth."""
        if not config.fit_space_follows_model:
            return config
        disparity = getattr(self.estimator, 'output_space', 'depth') == 'disparity'
        space = 'inverse' if disparity else 'depth'
        if config.scale.fit_space == space:
            return config
        return replace(config, scale=replace(config.scale, fit_space=space))

    def update(self, **changes) -> None:
        self.config = replace(self._config, **changes)

    # ------------------------------------------------------------------ stages
    def prepare(self, inputs: FrameInputs) -> PreparedFrame:
        t0 = time.perf_counter()
        notes = list(inputs.notes)
        try:
            rgb = message_to_rgb(inputs.image)
        except ValueError as exc:
            raise FrameError(f'image skipped: {exc}') from exc
        camera = None
        if inputs.camera_info is not None:
            try:
                camera = self._camera_model(inputs.camera_info)
                camera.check_image_size(rgb.shape[1], rgb.shape[0])
            except CameraInfoError as exc:
                notes.append(f'camera_info ignored ({exc}): no point cloud, no LiDAR anchors')
                camera = None
        header = inputs.image.header
        return PreparedFrame(inputs=inputs, header=header, stamp_ns=stamp_to_ns(header.stamp),
                             rgb=rgb, camera=camera, notes=notes,
                             timings={'decode': (time.perf_counter() - t0) * 1e3})

    def predict(self, frames: list[PreparedFrame]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        if len(frames) == 1 and self.finisher is not None:
            # The relative depth stays on the device; an event marks when it is ready, so
            # finishing (another thread, another CUDA stream) waits for this frame only.
            out = [_predict_on_device(self.estimator, frames[0])]
        elif len(frames) == 1:
            out = [self.estimator.predict(frames[0].rgb)]
        else:
            out = self.estimator.predict_batch([f.rgb for f in frames])
        per_frame = (time.perf_counter() - t0) * 1e3 / max(len(frames), 1)
        for f in frames:
            f.timings['inference'] = per_frame
        return out

    def finish(self, frame: PreparedFrame, relative: np.ndarray,
               outputs: Iterable[str] = OUTPUTS) -> FrameResult:
        outputs = set(outputs)
        cfg = self._config
        t0, cpu0 = time.perf_counter(), time.thread_time()
        anchors = self._anchors(frame, relative.shape)
        t_anchors = time.perf_counter()
        depth, report = self._recover(frame, relative, anchors)
        metric = bool(report.metric or cfg.fixed_scale_is_metric)
        withheld = ''
        if cfg.anchors_configured and not metric and not cfg.publish_without_fit:
            # The fixed mapping is not metres: a costmap fed from depth/image would misplace
            # every obstacle. Only depth/relative and the colourised picture go out.
            withheld = _withheld_reason(report, frame.notes)
            outputs -= set(METRIC_OUTPUTS)
        t1, cpu1 = time.perf_counter(), time.thread_time()
        messages, depth, relative = self._build(frame, depth, relative, outputs)
        t2 = time.perf_counter()
        # 'scale' includes 'anchors' (collecting them: LiDAR projection, stereo sampling).
        # 'scale_cpu': this thread's CPU time in it, which a loaded machine does not inflate
        # (time waiting for a core or the GIL is in 'scale' only; OpenCV's helper threads in
        # neither).
        timings = dict(frame.timings, scale=(t1 - t0) * 1e3, anchors=(t_anchors - t0) * 1e3,
                       scale_cpu=(cpu1 - cpu0) * 1e3, convert=(t2 - t1) * 1e3)
        return FrameResult(header=frame.header, stamp_ns=frame.stamp_ns, messages=messages,
                           report=report, metric=metric, anchors=len(anchors) if anchors else 0,
                           notes=frame.notes, timings=timings, depth=depth, relative=relative,
                           withheld=withheld)

    def process(self, inputs: FrameInputs, outputs: Iterable[str] = OUTPUTS) -> FrameResult:
        frame = self.prepare(inputs)
        return self.finish(frame, self.predict([frame])[0], outputs)

    # ------------------------------------------------------------------ helpers
    def _camera_model(self, info) -> CameraModel:
        key = (tuple(np.asarray(info.k, np.float64)), tuple(np.asarray(info.p, np.float64)),
               tuple(np.asarray(info.d, np.float64)), str(info.distortion_model),
               int(info.width), int(info.height), int(info.binning_x), int(info.binning_y),
               int(info.roi.x_offset), int(info.roi.y_offset), int(info.roi.width),
               int(info.roi.height), self._config.image_rectified)
        camera = self._cameras.get(key)
        if camera is None:
            camera = CameraModel.from_camera_info(info, rectified=self._config.image_rectified)
            if len(self._cameras) >= 4:        # camera_info changed: keep the cache small
                self._cameras.clear()
            self._cameras[key] = camera
        return camera

    def _anchors(self, frame: PreparedFrame, shape: tuple[int, int]) -> Anchors | None:
        """All metric anchors for this frame, or None when no anchor source is configured."""
        inputs, notes, found = frame.inputs, frame.notes, []
        if inputs.lidar is not None:
            found.append(self._lidar_anchors(frame))
        if inputs.stereo is not None:
            try:
                found.append(self._stereo_anchors(inputs.stereo, shape))
            except ValueError as exc:
                notes.append(f'stereo anchors ignored: {exc}')
        found = [a for a in found if a is not None]
        if not found:
            return None
        return Anchors.concatenate(found)

    def _lidar_anchors(self, frame: PreparedFrame) -> Anchors | None:
        cloud, notes = frame.inputs.lidar, frame.notes
        if frame.camera is None:
            notes.append('LiDAR anchors ignored: no usable camera_info')
            return None
        camera_frame, cloud_frame = str(frame.header.frame_id), str(cloud.header.frame_id)
        try:
            if self.extrinsic_lookup is not None:
                transform = self.extrinsic_lookup(camera_frame, cloud_frame,
                                                  stamp_to_ns(cloud.header.stamp))
            else:
                transform = self._config.extrinsic.camera_from(camera_frame, cloud_frame)
        except LookupError as exc:
            notes.append(f'LiDAR anchors ignored: {exc}')
            return None
        # A 10 Hz sweep serves several 30 Hz images: project it once per camera and extrinsic.
        key = (frame.camera.key, np.asarray(transform.rotation).tobytes(),
               np.asarray(transform.translation).tobytes(), self._config.min_range,
               self._config.max_range)
        last = self._last_sweep
        if last is not None and last[0] is cloud and last[1] == key:
            return last[2]
        # Decoded only for a sweep not projected yet (a 10 Hz sweep serves several images).
        try:
            points = pointcloud_to_xyz(cloud)
        except ValueError as exc:
            notes.append(f'LiDAR cloud ignored: {exc}')
            return None
        if len(points) == 0:
            notes.append('LiDAR cloud ignored: no finite points')
            return None
        if self.finisher is not None:
            with self.finisher.stream():
                anchors = self.finisher.lidar_anchors(points, transform, frame.camera,
                                                      min_depth=self._config.min_range,
                                                      max_depth=self._config.max_range)
        else:
            anchors = lidar_anchors(points, transform, frame.camera,
                                    min_depth=self._config.min_range,
                                    max_depth=self._config.max_range)
        self._last_sweep = (cloud, key, anchors)
        return anchors

    def _recover(self, frame: PreparedFrame, relative, anchors):
        """Metric depth and fit report: numpy, or a tensor on the finishing device."""
        stamp_s = frame.stamp_ns * 1e-9
        image = self._guide_image(frame, tuple(relative.shape[:2]))
        if self.finisher is None:
            return self.scale.process(relative, anchors, stamp_s, image)
        with self.finisher.stream():
            relative = self.finisher.relative_on_device(relative, frame.ready)
            return self.finisher.recover(self.scale, relative, anchors, stamp_s, image)

    def _guide_image(self, frame: PreparedFrame, shape):
        """The frame's RGB image for the local correction's guide, or None (with a note, and
        the depth alone guiding it) where it cannot serve."""
        try:
            return self.scale.guide_image(frame.rgb, shape)
        except GuideImageError as exc:
            frame.notes.append(f'image not used to guide the local correction ({exc}): '
                               'depth guide only')
            return None

    def _build(self, frame: PreparedFrame, depth, relative, outputs: set[str]):
        """(messages, depth, relative) with host arrays; on the device path the bytes of every
        message come to the host in one copy (relative stays on the device unless asked for)."""
        if self.finisher is None:
            return self._messages(frame, depth, relative, outputs), depth, relative
        cfg = self._config
        camera = frame.camera
        with_cloud = 'points' in outputs and cfg.cloud_type != 'none' and camera is not None
        with self.finisher.stream():
            asked = (self.finisher.relative_on_device(relative, frame.ready)
                     if 'relative' in outputs else None)
            host = self.finisher.to_host(
                depth, asked,
                depth16='depth' in outputs and cfg.output_encoding == '16UC1', camera=camera,
                rgb=frame.rgb if cfg.cloud_type == 'xyzrgb' else None,
                cloud=dict(min_range=cfg.min_range, max_range=cfg.max_range,
                           stride=cfg.cloud_stride, organized=cfg.cloud_organized)
                if with_cloud else None)
        backend = self.backend
        header = backend.copy_header(frame.header)
        h, w = host.depth.shape
        msgs: dict[str, Any] = {}
        if 'depth' in outputs:
            msgs['depth'] = (backend.image(header, h, w, '16UC1', w * 2, host.depth16)
                             if host.depth16 is not None
                             else depth_to_image_msg(host.depth, header, backend, '32FC1'))
        if host.relative is not None:
            msgs['relative'] = depth_to_image_msg(host.relative, header, backend, '32FC1')
        if 'colorized' in outputs:
            lo, hi = cfg.colorize_range or (None, None)
            msgs['colorized'] = rgb_to_image_msg(colorize_depth(host.depth, lo, hi), header,
                                                 backend)
        if camera is not None and 'camera_info' in outputs:
            msgs['camera_info'] = self._camera_info(frame.inputs.camera_info, header)
        if host.points is not None:
            ch, cw, step, dense = host.cloud_layout
            msgs['points'] = backend.point_cloud2(
                header, ch, cw, _xyz_fields(backend, cfg.cloud_type == 'xyzrgb'), step,
                step * cw, host.points, is_dense=dense)
        rel = host.relative if host.relative is not None else relative
        return msgs, host.depth, rel

    def _stereo_anchors(self, msg, shape: tuple[int, int]) -> Anchors:
        step = self._config.stereo_grid_step
        if hasattr(msg, 'image') and hasattr(msg, 'f'):          # stereo_msgs/DisparityImage
            disparity = image_msg_to_float(msg.image)
            return disparity_anchors(disparity, float(msg.f), float(msg.t),
                                     float(msg.min_disparity), float(msg.max_disparity),
                                     grid_step=step, target_shape=shape)
        return depth_image_anchors(image_msg_to_depth(msg), grid_step=step, target_shape=shape)

    def _messages(self, frame: PreparedFrame, depth: np.ndarray, relative: np.ndarray,
                  outputs: set[str]) -> dict[str, Any]:
        cfg, backend = self._config, self.backend
        header = backend.copy_header(frame.header)
        msgs: dict[str, Any] = {}
        if 'depth' in outputs:
            msgs['depth'] = depth_to_image_msg(depth, header, backend, cfg.output_encoding)
        if 'relative' in outputs:
            msgs['relative'] = depth_to_image_msg(relative, header, backend, '32FC1')
        if 'colorized' in outputs:
            lo, hi = cfg.colorize_range or (None, None)
            msgs['colorized'] = rgb_to_image_msg(colorize_depth(depth, lo, hi), header, backend)
        if frame.camera is not None:
            if 'camera_info' in outputs:
                msgs['camera_info'] = self._camera_info(frame.inputs.camera_info, header)
            if 'points' in outputs and cfg.cloud_type != 'none':
                rgb = frame.rgb if cfg.cloud_type == 'xyzrgb' else None
                msgs['points'] = self.clouds.build(
                    depth, frame.camera, header, backend, rgb=rgb, min_range=cfg.min_range,
                    max_range=cfg.max_range, stride=cfg.cloud_stride,
                    organized=cfg.cloud_organized)
        return msgs

    def _camera_info(self, info, header):
        """The input camera_info under the depth image's header (same size, same intrinsics)."""
        roi = info.roi
        return self.backend.camera_info(
            header, info.height, info.width, str(info.distortion_model), info.d, info.k, info.r,
            info.p, info.binning_x, info.binning_y,
            self.backend.region_of_interest(roi.x_offset, roi.y_offset, roi.height, roi.width,
                                            roi.do_rectify))
