"""Camera model built from a ``sensor_msgs/CameraInfo``-like object.

One model serves both directions that the package needs:
- pixels -> rays (depth image -> point cloud), cached per model because undistorting a full pixel
  grid with OpenCV costs tens of milliseconds and camera_info rarely changes;
- points -> pixels (LiDAR anchors -> image).

Conventions follow image_geometry / depth_image_proc: rectified images use P, raw images use K and
D; binning and ROI map full-resolution calibration to the pixel grid the image actually has
(u_full = u * binning_x + roi.x_offset). Pixel centres sit at integer coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')


class CameraInfoError(ValueError):
    """A camera_info that cannot describe the image (uncalibrated, wrong size, unknown model)."""


def _as_matrix(values, shape) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != shape[0] * shape[1]:
        raise CameraInfoError(f'expected {shape[0] * shape[1]} values, got {arr.size}')
    return arr.reshape(shape)


@dataclass(frozen=True, eq=False)
class CameraModel:
    """Intrinsics of one image stream; see the module docstring for conventions."""

    width: int                 # pixel grid of the image (after binning and ROI)
    height: int
    K: np.ndarray              # 3x3, full-resolution raw intrinsics
    D: np.ndarray              # distortion coefficients (may be empty)
    P: np.ndarray              # 3x4, full-resolution rectified projection
    distortion_model: str = 'plumb_bob'
    rectified: bool = True     # True: image is rectified, use P and ignore D
    binning_x: int = 1
    binning_y: int = 1
    roi_x: int = 0
    roi_y: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_camera_info(cls, msg, rectified: bool = True) -> 'CameraModel':
        """Build from a CameraInfo (rclpy or rosbags message, or anything with its fields)."""
        K = _as_matrix(msg.k, (3, 3))
        P = _as_matrix(msg.p, (3, 4))
        D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(K)) or not np.all(np.isfinite(P)) or not np.all(np.isfinite(D)):
            raise CameraInfoError('camera_info holds NaN or infinite calibration values')
        if K[0, 0] == 0.0 or K[1, 1] == 0.0:
            raise CameraInfoError('camera_info K has zero focal length (uncalibrated camera?)')
        if P[0, 0] == 0.0 or P[1, 1] == 0.0:
            # Some drivers fill only K. For an undistorted pinhole P = [K | 0] is what
            # camera_calibration would write.
            P = np.hstack([K, np.zeros((3, 1))])
        bx = max(int(msg.binning_x), 1)
        by = max(int(msg.binning_y), 1)
        roi = msg.roi
        full_w, full_h = int(msg.width), int(msg.height)
        if roi.width > 0 and roi.height > 0:
            w, h, rx, ry = int(roi.width), int(roi.height), int(roi.x_offset), int(roi.y_offset)
        else:
            w, h, rx, ry = full_w, full_h, 0, 0
        if w <= 0 or h <= 0:
            raise CameraInfoError(f'camera_info has no image size ({full_w}x{full_h})')
        model = str(msg.distortion_model or 'plumb_bob')
        camera = cls(width=w // bx, height=h // by, K=K, D=D, P=P, distortion_model=model,
                     rectified=bool(rectified), binning_x=bx, binning_y=by, roi_x=rx, roi_y=ry)
        if camera.has_distortion and model not in DISTORTION_MODELS:
            raise CameraInfoError(f"unsupported distortion model '{model}' for a raw image; "
                                  f'supported: {", ".join(DISTORTION_MODELS)}')
        # OpenCV takes 4, 5, 8, 12 or 14 coefficients (fisheye: the first 4); anything else
        # would fail later, inside rays() or project(), with an obscure cv2.error.
        fisheye = model == 'equidistant'
        if camera.has_distortion and not (D.size >= 4 if fisheye else D.size in (4, 5, 8, 12, 14)):
            raise CameraInfoError(f"distortion model '{model}' with {D.size} coefficients in D; "
                                  f"expected {'at least 4' if fisheye else '4, 5, 8, 12 or 14'}")
        return camera

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float, cx: float,
                cy: float) -> 'CameraModel':
        """An ideal pinhole camera (no distortion), e.g. for tests and synthetic scenes."""
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return cls(width=int(width), height=int(height), K=K, D=np.zeros(5),
                   P=np.hstack([K, np.zeros((3, 1))]))

    # ------------------------------------------------------------------ properties
    @property
    def key(self) -> tuple:
        """Hashable identity: equal keys mean identical rays and projections."""
        return (self.width, self.height, self.K.tobytes(), self.D.tobytes(), self.P.tobytes(),
                self.distortion_model, self.rectified, self.binning_x, self.binning_y,
                self.roi_x, self.roi_y)

    @property
    def has_distortion(self) -> bool:
        return (not self.rectified) and bool(np.any(self.D != 0.0))

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) on this image's pixel grid: from P if rectified, else from K."""
        M = self.P if self.rectified else self.K
        fx, fy = M[0, 0] / self.binning_x, M[1, 1] / self.binning_y
        cx = (M[0, 2] - self.roi_x) / self.binning_x
        cy = (M[1, 2] - self.roi_y) / self.binning_y
        return float(fx), float(fy), float(cx), float(cy)

    def check_image_size(self, width: int, height: int) -> None:
        if (int(width), int(height)) != (self.width, self.height):
            raise CameraInfoError(
                f'image is {width}x{height} but camera_info describes {self.width}x{self.height}'
                f' (binning {self.binning_x}x{self.binning_y}, ROI offset {self.roi_x},{self.roi_y})')

    def scaled(self, width: int, height: int) -> 'CameraModel':
        """The same camera seen through an image resized to width x height."""
        sx, sy = width / self.width, height / self.height
        S = np.diag([sx / self.binning_x, sy / self.binning_y, 1.0])
        shift = np.array([[1.0, 0.0, -self.roi_x], [0.0, 1.0, -self.roi_y], [0.0, 0.0, 1.0]])
        A = S @ shift
        # Pixel-centre aligned resize: u' = (u + 0.5) * s - 0.5.
        A[0, 2] += 0.5 * sx - 0.5
        A[1, 2] += 0.5 * sy - 0.5
        return CameraModel(width=int(width), height=int(height), K=A @ self.K, D=self.D.copy(),
                           P=A @ self.P, distortion_model=self.distortion_model,
                           rectified=self.rectified)

    # ------------------------------------------------------------------ pixels -> rays
    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel (x/z, y/z) as two float32 HxW arrays, computed once per model."""
        cached = self._cache.get('rays')
        if cached is None:
            cached = self._compute_rays()
            for arr in cached:
                arr.setflags(write=False)
            self._cache['rays'] = cached
        return cached

    def _compute_rays(self) -> tuple[np.ndarray, np.ndarray]:
        u = np.arange(self.width, dtype=np.float64)
        v = np.arange(self.height, dtype=np.float64)
        if not self.has_distortion:
            fx, fy, cx, cy = self.intrinsics
            rx = np.broadcast_to(((u - cx) / fx)[None, :], (self.height, self.width))
            ry = np.broadcast_to(((v - cy) / fy)[:, None], (self.height, self.width))
            return np.ascontiguousarray(rx, np.float32), np.ascontiguousarray(ry, np.float32)
        uu, vv = np.meshgrid(u * self.binning_x + self.roi_x, v * self.binning_y + self.roi_y)
        pts = np.stack([uu.ravel(), vv.ravel()], axis=1).reshape(-1, 1, 2)
        norm = self._undistort(pts).reshape(self.height, self.width, 2)
        return (np.ascontiguousarray(norm[..., 0], np.float32),
                np.ascontiguousarray(norm[..., 1], np.float32))

    def _undistort(self, pts: np.ndarray) -> np.ndarray:
        import cv2
        if self.distortion_model == 'equidistant':
            return cv2.fisheye.undistortPoints(pts, self.K, self.D[:4].reshape(4, 1))
        # The default 5 iterations leave pixel-sized errors at the corners of strongly
        # distorted lenses; iterate to convergence instead.
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        eye = np.eye(3)      # R = I, P = I: normalised image coordinates out
        if hasattr(cv2, 'undistortPointsIter'):                 # OpenCV 4
            return cv2.undistortPointsIter(pts, self.K, self.D, eye, eye, criteria)
        return cv2.undistortPoints(pts, self.K, self.D, None, eye, eye, criteria)  # OpenCV 5

    @cached_property
    def _max_ray_radius_sq(self) -> float:
        rx, ry = self.rays()
        return float(np.max(rx.astype(np.float64) ** 2 + ry.astype(np.float64) ** 2))

    # ------------------------------------------------------------------ points -> pixels
    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project Nx3 points in the camera optical frame.

        Returns (u, v, valid): float pixel coordinates on this image's grid and a mask of points in
        front of the camera whose projection is meaningful (for distorted lenses, inside the field
        of view the calibration covers, where the distortion polynomial does not fold back).
        The caller decides about image bounds.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        z = pts[:, 2]
        # Per column: all(axis=1) over an Nx3 mask costs ~10x these three passes.
        valid = np.isfinite(pts[:, 0]) & np.isfinite(pts[:, 1]) & np.isfinite(z) & (z > 1e-6)
        safe_z = np.where(valid, z, 1.0)
        xn, yn = pts[:, 0] / safe_z, pts[:, 1] / safe_z
        if not self.has_distortion:
            M = self.P if self.rectified else self.K
            fx, fy, cx, cy = self.intrinsics
            tx = (M[0, 3] / safe_z / self.binning_x) if self.rectified else 0.0
            ty = (M[1, 3] / safe_z / self.binning_y) if self.rectified else 0.0
            return fx * xn + cx + tx, fy * yn + cy + ty, valid
        import cv2
        valid &= (xn * xn + yn * yn) <= self._max_ray_radius_sq * 1.05
        obj = np.stack([xn, yn, np.ones_like(xn)], axis=1).reshape(-1, 1, 3)
        zero = np.zeros((3, 1))
        if self.distortion_model == 'equidistant':
            img, _ = cv2.fisheye.projectPoints(obj, zero, zero, self.K, self.D[:4].reshape(4, 1))
        else:
            img, _ = cv2.projectPoints(obj, zero, zero, self.K, self.D)
        img = img.reshape(-1, 2)
        u = (img[:, 0] - self.roi_x) / self.binning_x
        v = (img[:, 1] - self.roi_y) / self.binning_y
        return u, v, valid
