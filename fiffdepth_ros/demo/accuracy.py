"""What the demonstration runs and how it scores it, in one place: the node parameters it gives
depth_node for the synthetic room, the metric AbsRel of a published depth image against the
room's true depth, and the same stream run in this process through the node's own per-frame
pipeline (DepthPipeline: LiDAR anchors, scale fit, temporal filter, local correction), for the
quality benchmark (bench/nano_quality.py) that compares models without starting processes.
"""
from __future__ import annotations

import numpy as np

DEMO_FRAMES = 12
DEMO_RATE_HZ = 4.0


def room_node_params(room, model: str, processing_res: int, model_family: str = 'auto',
                     device: str = 'auto') -> dict:
    """depth_node parameters of the demonstration (32-line LiDAR as a static extrinsic)."""
    return {
        'model': model, 'model_family': model_family, 'device': device,
        'processing_res': processing_res, **room.static_lidar_params(),
        'max_anchor_age': 0.05, 'max_range': 15.0, 'publish_relative': True,
        'publish_colorized': True, 'cloud_type': 'xyzrgb', 'diagnostics_period': 0.5,
        # The recorder here must not miss frames; live users keep the default depth 1.
        'qos_output_depth': 5,
    }


def metric_errors(depth: np.ndarray, truth: np.ndarray) -> dict:
    """valid_fraction, abs_rel and rmse_m of a metric depth image (NaN = invalid) against the
    true depth, over the pixels both have."""
    valid = np.isfinite(depth) & (truth > 0)
    if not valid.any():
        return {'valid_fraction': 0.0}
    rel_err = np.abs(depth[valid] - truth[valid]) / truth[valid]
    return {'valid_fraction': float(valid.mean()), 'abs_rel': float(rel_err.mean()),
            'rmse_m': float(np.sqrt(np.mean((depth[valid] - truth[valid]) ** 2)))}


def room_stream(room, frames: int = DEMO_FRAMES, rate_hz: float = DEMO_RATE_HZ):
    """The frames the demonstration streams: one warm-up frame, then ``frames`` at ``rate_hz``
    (the camera sways sideways over time)."""
    period = 1.0 / rate_hz
    return [room.render()] + [room.render(t=i * period) for i in range(frames)]


def run_in_process(estimator, room, params: dict, frames: int = DEMO_FRAMES,
                   rate_hz: float = DEMO_RATE_HZ, backend=None) -> dict:
    """The demonstration's stream through DepthPipeline in this process: per published frame
    the metric errors (the warm-up frame is not scored, as in the demo), the reasons of the
    frames whose metric outputs were withheld (no scale fit: the demo never receives them) and
    the median AbsRel (NaN when every frame was withheld)."""
    from .. import params as P
    from ..conversions.depth_image import rgb_to_image_msg
    from ..conversions.pointcloud import xyz_to_pointcloud
    from ..pipeline import DepthPipeline, PipelineConfig
    from ..sync import FrameInputs
    if backend is None:
        from ..conversions.backends import RclpyBackend
        backend = RclpyBackend()
    validated = P.validate({k: v for k, v in params.items() if k in P.SPECS})
    pipe = DepthPipeline(estimator, PipelineConfig.from_params(validated), backend)
    stamp0, period_ns = 1_700_000_000 * 10**9, int(1e9 / rate_hz)
    scored, withheld = [], []
    for i, frame in enumerate(room_stream(room, frames, rate_hz)):
        stamp = stamp0 + i * period_ns
        header = backend.header(stamp, params.get('lidar_parent_frame', 'camera_optical'))
        inputs = FrameInputs(
            image=rgb_to_image_msg(frame.rgb, header, backend),
            camera_info=backend.camera_info(header, **room.camera_info_fields()),
            lidar=xyz_to_pointcloud(frame.lidar_points,
                                    backend.header(stamp, params.get('lidar_child_frame',
                                                                     'lidar')), backend))
        result = pipe.process(inputs, outputs=('depth',))
        if i > 0 and result.withheld:          # a withheld frame never reaches the demo
            withheld.append(result.withheld)
        elif i > 0:
            scored.append(metric_errors(result.depth, frame.depth))
    errors = [f['abs_rel'] for f in scored if 'abs_rel' in f]
    return {'frames': scored, 'withheld': withheld,
            'median_abs_rel': float(np.median(errors)) if errors else float('nan')}
