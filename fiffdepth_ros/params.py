"""The one parameter schema of fiffdepth_ros.

The node declares these as ROS parameters (with descriptions and ranges), the bag processor reads
the same names from the same YAML file, and both validate through :func:`validate`, so a value
means the same thing everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ParameterError(ValueError):
    """A parameter value that is not allowed; the message says what is."""


_NOUNS = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string',
          list: 'a list of numbers'}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    read_only: bool = False     # needs a restart (model, device, topics, QoS)

    @property
    def kind(self) -> type:
        return type(self.default)

    def allowed(self) -> str:
        if self.choices:
            return 'one of ' + ', '.join(repr(c) for c in self.choices)
        noun = _NOUNS[self.kind]
        if self.min is not None or self.max is not None:
            lo = '-inf' if self.min is None else f'{self.min:g}'
            hi = 'inf' if self.max is None else f'{self.max:g}'
            return f'{noun} in [{lo}, {hi}]'
        return noun

    def coerce(self, value):
        """Return ``value`` as this parameter's type, or raise ParameterError."""
        kind = self.kind
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
            elif kind is int:
                if isinstance(value, bool) or not float(value).is_integer():
                    raise TypeError
                value = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise TypeError
                value = float(value)
                if math.isnan(value):
                    raise TypeError
            elif kind is list:
                value = [float(v) for v in value]
                if len(value) != len(self.default):
                    raise TypeError
            elif kind is str:
                if not isinstance(value, str):
                    raise TypeError
        except (TypeError, ValueError):
            size = f' of {len(self.default)}' if kind is list else ''
            raise ParameterError(
                f"parameter '{self.name}' = {value!r}: expected {self.allowed()}{size}")
        if self.choices and value not in self.choices:
            raise ParameterError(f"parameter '{self.name}' = {value!r}: expected {self.allowed()}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ParameterError(f"parameter '{self.name}' = {value!r}: expected {self.allowed()}")
        return value


_SPECS = (
    # model and inference
    ParamSpec('model', 'nano', "depth checkpoint (FiffDepth, E2E-FT, Lotus-D or Marigold): "
              "'nano' (built in: FiffDepth-nano, trained on procedural scenes, for "
              'demonstrations and tests, not a robot), a local folder in its released diffusers '
              'layout or a Hugging Face hub id', read_only=True),
    ParamSpec('model_family', 'auto', "which family's procedure runs the checkpoint: 'auto' "
              '(detected from its files) or one of the families', read_only=True,
              choices=('auto', 'fiffdepth', 'e2e_ft', 'lotus_d', 'lotus_d_disparity',
                       'marigold')),
    ParamSpec('denoising_steps', 0, 'Marigold only: denoising steps (0 = the checkpoint default)',
              min=0, max=1000, read_only=True),
    ParamSpec('ensemble_size', 1, 'Marigold only: predictions ensembled per frame (N times the '
              'cost)', min=1, max=64, read_only=True),
    ParamSpec('seed', 0, 'Marigold only: noise seed, the same for every frame', min=0,
              max=999999, read_only=True),
    ParamSpec('device', 'auto', "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or "
              "'cuda:N'", read_only=True),
    ParamSpec('precision', 'auto', "'auto' (fp16 on CUDA, fp32 on CPU), 'fp16', 'fp32' or "
              "'bf16' (an export on runtime openvino, CPUs with bf16: about 2x faster "
              'convolutions, ~1e-2 of the range off fp32)',
              choices=('auto', 'fp16', 'fp32', 'bf16'), read_only=True),
    ParamSpec('processing_res', -1, 'longer image side seen by the model, in pixels (-1 = the '
              "model's own: its model_index.json default_processing_resolution, else 768; 0 = "
              'native size); lower is faster and coarser', min=-1, max=8192),
    ParamSpec('upcast_vae', False, 'decode the VAE in fp32 even in fp16 mode (if fp16 overflows)',
              read_only=True),
    ParamSpec('compile', False, 'torch.compile the UNet and VAE (slow first frame)',
              read_only=True),
    ParamSpec('autoencoder', 'full', "which autoencoder runs: 'full' (the model's VAE), 'light' "
              "(the model folder's distilled light_encoder/ and light_decoder/: about 4x fewer "
              "FLOPs per frame at SD2 size; made by fiffdepth-train stage light_autoencoder), "
              "'light_encoder' or 'light_decoder' (one half light, the other the VAE's); "
              'FiffDepth, E2E-FT and Lotus-D', read_only=True,
              choices=('full', 'light', 'light_encoder', 'light_decoder')),
    ParamSpec('light_path', '', 'where the light parts are read from when autoencoder is not '
              "'full': empty = the model folder; else a folder with light_encoder/ and "
              'light_decoder/, or a downloaded TAESD (diffusers AutoencoderTiny folder)',
              read_only=True),
    ParamSpec('runtime', 'auto', "where the model runs: 'auto' (a checkpoint: torch; an export "
              "folder from fiffdepth-export: the runtime it was exported for), 'torch', "
              "'onnxruntime' or 'openvino' (the last two need an export folder as 'model')",
              choices=('auto', 'torch', 'onnxruntime', 'openvino'), read_only=True),
    ParamSpec('runtime_providers', '', "exported graphs: ONNX Runtime execution providers "
              "('tensorrt,cuda,cpu' or full names) or OpenVINO devices ('GPU,CPU'), in order; "
              "'' = the runtime's default (TensorRT, CUDA, CPU; OpenVINO: CPU)", read_only=True),
    ParamSpec('overlap_stages', 'auto', "'on': finish and publish a frame on a second thread "
              "while the model works on the next one; 'off': one thread does everything in "
              "turn; 'auto': 'on' when the model runs on CUDA (on a CPU both stages compete for "
              "the same cores)", choices=('auto', 'on', 'off'), read_only=True),
    # inputs
    ParamSpec('image_transport', 'raw', "'raw' subscribes to 'image', 'compressed' to "
              "'image/compressed'", choices=('raw', 'compressed'), read_only=True),
    ParamSpec('image_rectified', True, 'input images are rectified (use P); false: raw images, '
              'rays undistorted with K and D'),
    ParamSpec('use_lidar', False, "subscribe to 'lidar/points' for metric anchors",
              read_only=True),
    ParamSpec('stereo_source', 'none', "metric anchors from 'stereo/depth' (sensor_msgs/Image, "
              "32FC1 m or 16UC1 mm), 'stereo/disparity' (stereo_msgs/DisparityImage) or none",
              choices=('none', 'depth', 'disparity'), read_only=True),
    ParamSpec('stereo_grid_step', 8, 'sample dense stereo depth every N pixels as anchors',
              min=1, max=256),
    ParamSpec('max_anchor_age', 0.1, 'seconds: the LiDAR sweep / stereo frame nearest the image '
              'stamp is used only within this age; also the camera_info matching window',
              min=0.0, max=10.0),
    ParamSpec('companion_wait', 0.1, 'seconds inference may wait for a camera_info / LiDAR / '
              'stereo message stamped near the image that has not arrived yet (topics arrive in '
              'any order); adds at most this latency', min=0.0, max=2.0),
    ParamSpec('camera_info_url', '', 'calibration file (camera_calibration_parsers YAML, as '
              "camera_calibration writes it; a path, file:// or package:// URL) used when no "
              'camera_info message of the camera has arrived (empty = none)', read_only=True),
    ParamSpec('lidar_use_tf', True, 'look up the LiDAR extrinsic with tf2 when tf2_ros is '
              'available; otherwise (or if false) use the static lidar_* parameters'),
    ParamSpec('lidar_translation', [0.0, 0.0, 0.0], 'static extrinsic: translation [x, y, z] m '
              'of the child frame in the parent frame'),
    ParamSpec('lidar_rotation', [0.0, 0.0, 0.0, 1.0], 'static extrinsic: rotation quaternion '
              '[x, y, z, w] of the child frame in the parent frame'),
    ParamSpec('lidar_parent_frame', '', 'static extrinsic parent frame (the camera optical frame '
              'when empty)'),
    ParamSpec('lidar_child_frame', '', "static extrinsic child frame (the cloud's frame_id when "
              'empty)'),
    # scale recovery
    ParamSpec('fit_space', 'auto', "fit scale and shift in 'depth' or 'inverse' depth; 'auto' "
              "follows the model (inverse for disparity models such as Lotus-D disparity)",
              choices=('auto', 'depth', 'inverse')),
    ParamSpec('filter_responsiveness', 0.3, 'temporal filter gain per frame for scale/shift: '
              '1 = no smoothing', min=0.01, max=1.0),
    ParamSpec('local_correction', True, 'dense local correction between anchors after the global '
              'fit'),
    ParamSpec('local_guide', 'both', "what guides the local correction between anchors: "
              "'depth' (the prediction's own edges), 'image' (the colour image's) or 'both' "
              '(weighed per frame by how well each explains the anchors)',
              choices=('depth', 'image', 'both')),
    ParamSpec('fixed_scale', 1.0, 'no-anchor mode: depth = fixed_scale * relative + fixed_shift '
              '(published as not metric unless fixed_scale_is_metric)', min=1e-6, max=1e6),
    ParamSpec('fixed_shift', 0.0, 'no-anchor mode shift, metres', min=-1e6, max=1e6),
    ParamSpec('fixed_scale_is_metric', False, 'treat fixed_scale/fixed_shift as a known metric '
              'calibration'),
    ParamSpec('publish_without_fit', False, 'with metric anchors configured (use_lidar or a '
              'stereo_source), still publish depth/image and depth/points for frames without a '
              'scale fit or held estimate (fixed mapping, not metric); false: such frames only '
              "reach 'depth/relative' and are counted in /diagnostics"),
    # outputs
    ParamSpec('output_encoding', '32FC1', "depth image encoding: '32FC1' metres (NaN invalid) or "
              "'16UC1' millimetres (0 invalid)", choices=('32FC1', '16UC1')),
    ParamSpec('min_range', 0.1, 'metres: closer depth is invalid', min=0.0, max=1e4),
    ParamSpec('max_range', 20.0, 'metres: farther depth is invalid', min=0.0, max=1e4),
    ParamSpec('cloud_type', 'xyzrgb', "point cloud fields: 'xyz', 'xyzrgb' or 'none'",
              choices=('xyz', 'xyzrgb', 'none')),
    ParamSpec('cloud_stride', 1, 'keep every Nth row and column in the point cloud', min=1,
              max=64),
    ParamSpec('cloud_organized', True, 'organised cloud (image layout, NaN invalid) or a dense '
              'list of valid points'),
    ParamSpec('publish_relative', False, "advertise 'depth/relative' (raw model output, 32FC1)",
              read_only=True),
    ParamSpec('publish_colorized', True, "advertise 'depth/colorized' (rgb8, for people)",
              read_only=True),
    ParamSpec('colorize_min', 0.0, 'colour range start, metres (min = max = 0: per-frame range)',
              min=0.0, max=1e4),
    ParamSpec('colorize_max', 0.0, 'colour range end, metres', min=0.0, max=1e4),
    # QoS and housekeeping
    ParamSpec('qos_reliability', 'best_available', "input subscriptions: 'best_available' "
              "(matches the publisher; reliable where the distro lacks it), 'reliable' or "
              "'best_effort'", choices=('best_available', 'reliable', 'best_effort'),
              read_only=True),
    ParamSpec('qos_output_reliability', 'reliable', "publishers: 'reliable' (RViz and "
              "best-effort subscribers both match) or 'best_effort'",
              choices=('reliable', 'best_effort'), read_only=True),
    ParamSpec('qos_output_depth', 1, 'publisher queue depth', min=1, max=100, read_only=True),
    ParamSpec('diagnostics_period', 1.0, 'seconds between /diagnostics messages', min=0.1,
              max=60.0, read_only=True),
)

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in _SPECS}


def defaults() -> dict[str, Any]:
    return {name: (list(s.default) if isinstance(s.default, list) else s.default)
            for name, s in SPECS.items()}


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Complete ``values`` with defaults, coerce each and check cross-parameter rules."""
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise ParameterError(f'unknown parameter(s): {", ".join(unknown)}; '
                             f'known: {", ".join(SPECS)}')
    out = defaults()
    for name, value in values.items():
        out[name] = SPECS[name].coerce(value)
    check_consistency(out)
    return out


def check_consistency(p: dict[str, Any]) -> None:
    if p['min_range'] >= p['max_range']:
        raise ParameterError(f"min_range ({p['min_range']}) must be below max_range "
                             f"({p['max_range']})")
    if p['colorize_max'] < p['colorize_min']:
        raise ParameterError('colorize_max must not be below colorize_min')
    device = p['device']
    if not (device in ('auto', 'cpu', 'cuda') or (device.startswith('cuda:')
                                                  and device[5:].isdigit())):
        raise ParameterError(f"parameter 'device' = {device!r}: expected 'auto', 'cpu', 'cuda' "
                             "or 'cuda:N'")
    quat = p['lidar_rotation']
    norm = math.sqrt(sum(q * q for q in quat))
    if not math.isfinite(norm) or norm < 1e-6:
        raise ParameterError("parameter 'lidar_rotation' must be a non-zero quaternion [x, y, z, w]")
    if not all(math.isfinite(t) for t in p['lidar_translation']):
        raise ParameterError("parameter 'lidar_translation' must be finite")


def load_yaml(path: str | Path, node_name: str = 'depth_node') -> dict[str, Any]:
    """Parameters for ``node_name`` from a ROS 2 parameters file (``/**`` wildcards merged first).

    Accepts the standard layout ``{node: {ros__parameters: {...}}}``, namespaced node keys
    (``/ns/depth_node``) and a plain mapping of parameter names.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ParameterError(f'cannot read parameters file {path}: {exc.strerror}') from exc
    except yaml.YAMLError as exc:
        raise ParameterError(f'parameters file {path} is not valid YAML: {exc}') from exc
    if not isinstance(data, dict):
        raise ParameterError(f'parameters file {path} must hold a mapping')
    sections = [v for v in data.values() if isinstance(v, dict) and 'ros__parameters' in v]
    if not sections:
        return dict(data)
    merged: dict[str, Any] = {}
    for key in sorted(data, key=lambda k: k != '/**'):   # wildcard first, node-specific wins
        section = data[key]
        if not (isinstance(section, dict) and 'ros__parameters' in section):
            continue
        if key in ('/**', '**') or str(key).rstrip('/').split('/')[-1] == node_name:
            merged.update(section['ros__parameters'] or {})
    return merged
