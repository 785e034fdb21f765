"""CameraInfo helpers: for an output image whose size differs from the input's, and from a
calibration file (camera_calibration_parsers YAML) for cameras and bags without camera_info."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import yaml

from ..geometry.camera_model import CameraInfoError, CameraModel
from .backends import MessageBackend


def scale_camera_info(msg, width: int, height: int, backend: MessageBackend, header=None):
    """The camera_info of ``msg``'s image resized to ``width`` x ``height``.

    K and P are mapped exactly as CameraModel.scaled does (pixel-centre convention of cv2.resize:
    u' = (u + 0.5) s - 0.5). Binning and the ROI are folded into the new K and P, so the result
    describes the resized image directly: binning 0, an empty ROI (the whole image) and
    width/height the output size. D and R stay as they are (they act on normalised coordinates).
    The header is copied from ``msg`` unless one is given.
    """
    if int(width) <= 0 or int(height) <= 0:
        raise CameraInfoError(f'output size must be positive, got {width}x{height}')
    # rectified=True only validates K/P; scaled() maps both matrices whatever the image is.
    scaled = CameraModel.from_camera_info(msg, rectified=True).scaled(int(width), int(height))
    return backend.camera_info(
        backend.copy_header(msg.header) if header is None else header, int(height), int(width),
        str(msg.distortion_model), np.asarray(msg.d, np.float64), scaled.K,
        np.asarray(msg.r, np.float64), scaled.P, 0, 0, backend.region_of_interest())


# ---------------------------------------------------------------------- calibration files
class CalibrationError(ValueError):
    """A calibration file that cannot be read or is not a camera calibration; says why."""


@dataclass(frozen=True)
class Calibration:
    """A camera calibration as camera_calibration_parsers stores it in YAML (what the
    ``camera_calibration`` tool writes and camera drivers read through ``camera_info_url``)."""

    width: int
    height: int
    camera_name: str
    distortion_model: str
    d: tuple[float, ...]
    k: tuple[float, ...]          # 9, row-major
    r: tuple[float, ...]          # 9
    p: tuple[float, ...]          # 12
    source: str = ''

    def camera_info(self, header, backend: MessageBackend):
        """A CameraInfo of this calibration under ``header`` (the image's)."""
        return backend.camera_info(header, self.height, self.width, self.distortion_model,
                                   self.d, self.k, self.r, self.p)


def resolve_calibration_url(url: str) -> Path:
    """``file:///abs/path.yaml``, ``package://pkg/relative/path.yaml`` (needs the ament index)
    or a plain path -> the file's path."""
    text = url.strip()
    if text.startswith('file://'):
        return Path(unquote(text[len('file://'):]))
    if text.startswith('package://'):
        package, _, rest = text[len('package://'):].partition('/')
        try:
            from ament_index_python.packages import get_package_share_directory
            return Path(get_package_share_directory(package)) / rest
        except Exception as exc:        # no ament index here, or an unknown package
            raise CalibrationError(f"camera_info_url '{url}': cannot find package "
                                   f"'{package}' ({type(exc).__name__}); give a file path "
                                   'or file:// URL') from None
    if '://' in text:
        raise CalibrationError(f"camera_info_url '{url}': only file://, package:// and plain "
                               'paths are supported')
    return Path(text).expanduser()


def read_calibration(url: str) -> Calibration:
    path = resolve_calibration_url(url)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CalibrationError(f'cannot read calibration file {path}: '
                               f'{exc.strerror or exc}') from None
    return parse_calibration(text, str(path))


def parse_calibration(text: str, source: str = '<calibration>') -> Calibration:
    """Parse the camera_calibration_parsers YAML layout (image_width, image_height,
    camera_name, camera_matrix, distortion_model, distortion_coefficients,
    rectification_matrix, projection_matrix; each matrix as rows / cols / data)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibrationError(f'calibration file {source} is not valid YAML: {exc}') from None
    if not isinstance(data, dict) or 'camera_matrix' not in data:
        raise CalibrationError(f'calibration file {source} has no camera_matrix: not a '
                               'camera_calibration_parsers YAML file')

    def size(key: str) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CalibrationError(f'calibration file {source}: {key} must be a positive '
                                   f'integer, got {value!r}')
        return value

    def matrix(key: str, shape: tuple[int, int] | None, default=None) -> tuple[float, ...]:
        entry = data.get(key)
        if entry is None:
            if default is None:
                raise CalibrationError(f'calibration file {source} has no {key}')
            return tuple(float(v) for v in default)
        try:
            rows, cols = int(entry['rows']), int(entry['cols'])
            values = np.asarray(entry['data'], dtype=np.float64).reshape(-1)
        except (TypeError, KeyError, ValueError):
            raise CalibrationError(f'calibration file {source}: {key} needs rows, cols and '
                                   'numeric data') from None
        if values.size != rows * cols or (shape is not None and (rows, cols) != shape):
            want = f'{shape[0]}x{shape[1]}' if shape else f'{rows}x{cols}'
            raise CalibrationError(f'calibration file {source}: {key} must be {want} '
                                   f'({values.size} values given)')
        if not np.all(np.isfinite(values)):
            raise CalibrationError(f'calibration file {source}: {key} is not finite')
        return tuple(float(v) for v in values)

    width, height = size('image_width'), size('image_height')
    k = matrix('camera_matrix', (3, 3))
    if k[0] <= 0 or k[4] <= 0:
        raise CalibrationError(f'calibration file {source}: camera_matrix has no positive '
                               'focal lengths')
    d = matrix('distortion_coefficients', None, default=())
    r = matrix('rectification_matrix', (3, 3), default=np.eye(3).ravel())
    # Without a projection matrix (a monocular calibration written by hand): P = [K | 0].
    p = matrix('projection_matrix', (3, 4),
               default=np.hstack([np.reshape(k, (3, 3)), np.zeros((3, 1))]).ravel())
    model = str(data.get('distortion_model') or ('plumb_bob' if len(d) == 5 else
                                                 'rational_polynomial' if len(d) == 8 else ''))
    return Calibration(width, height, str(data.get('camera_name') or ''), model, d, k, r, p,
                       source)
