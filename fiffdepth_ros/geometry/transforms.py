"""Rigid transforms (rotation + translation) between sensor frames, numpy only.

Conventions follow tf2 / geometry_msgs: a transform ``parent_from_child`` holds the pose of the
child frame in the parent frame and maps points given in the child frame into the parent frame,
``p_parent = R @ p_child + t``. Quaternions are (x, y, z, w), as in geometry_msgs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TransformError(ValueError):
    """A transform that does not describe a rigid motion (bad quaternion, NaN, wrong shape)."""


def _vector(values, size: int, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TransformError(f'{name} must be {size} numbers ({exc})') from None
    if arr.size != size:
        raise TransformError(f'{name} must have {size} values, got {arr.size}')
    if not np.all(np.isfinite(arr)):
        raise TransformError(f'{name} holds NaN or infinite values: {arr.tolist()}')
    return arr


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion (x, y, z, w)."""
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a rotation matrix (Shepperd's method).

    Branches on the largest diagonal term so that no square root of a small number is taken,
    which keeps 180-degree rotations exact.
    """
    m = np.asarray(R, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """``parent_from_child``: maps points in the child frame into the parent frame."""

    translation: np.ndarray        # (3,) metres
    quaternion: np.ndarray         # (4,) x, y, z, w; normalised on construction

    def __post_init__(self):
        t = _vector(self.translation, 3, 'translation')
        q = _vector(self.quaternion, 4, 'quaternion (x, y, z, w)')
        norm = float(np.linalg.norm(q))
        if norm < 1e-9:
            raise TransformError('quaternion (x, y, z, w) has zero length: not a rotation '
                                 '(the identity is [0, 0, 0, 1])')
        # Frozen dataclass: set the cleaned arrays through object.__setattr__.
        object.__setattr__(self, 'translation', t)
        object.__setattr__(self, 'quaternion', q / norm)
        t.setflags(write=False)
        self.quaternion.setflags(write=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls) -> 'RigidTransform':
        return cls(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))

    @classmethod
    def from_matrix(cls, matrix, atol: float = 1e-6) -> 'RigidTransform':
        """From a 4x4 homogeneous matrix (or a 3x4 [R | t]) whose R is a proper rotation."""
        M = np.asarray(matrix, dtype=np.float64)
        if M.shape not in ((4, 4), (3, 4)):
            raise TransformError(f'expected a 4x4 or 3x4 matrix, got shape {M.shape}')
        if not np.all(np.isfinite(M)):
            raise TransformError('transform matrix holds NaN or infinite values')
        if M.shape == (4, 4) and not np.allclose(M[3], [0, 0, 0, 1], atol=atol):
            raise TransformError(f'last row of a rigid transform must be [0, 0, 0, 1], got {M[3]}')
        R = M[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=atol) or np.linalg.det(R) < 0:
            raise TransformError('upper-left 3x3 block is not a proper rotation '
                                 '(orthonormal with determinant +1)')
        return cls(M[:3, 3].copy(), matrix_to_quaternion(R))

    @classmethod
    def from_msg(cls, msg) -> 'RigidTransform':
        """From a geometry_msgs/Transform-like object (.translation.x.., .rotation.x..w).

        Also accepts a TransformStamped-like object (uses its .transform) and a Pose-like object
        (.position / .orientation). Duck-typed: no ROS import.
        """
        if hasattr(msg, 'transform'):
            msg = msg.transform
        try:
            if hasattr(msg, 'translation'):
                t, r = msg.translation, msg.rotation
            else:
                t, r = msg.position, msg.orientation
            translation = [t.x, t.y, t.z]
            quaternion = [r.x, r.y, r.z, r.w]
        except AttributeError as exc:
            raise TransformError(f'not a Transform-like message: {exc}') from None
        return cls(np.array(translation, dtype=np.float64),
                   np.array(quaternion, dtype=np.float64))

    # ------------------------------------------------------------------ properties
    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation matrix."""
        return quaternion_to_matrix(self.quaternion)

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        M = np.eye(4)
        M[:3, :3] = self.rotation
        M[:3, 3] = self.translation
        return M

    # ------------------------------------------------------------------ operations
    def apply(self, points) -> np.ndarray:
        """Transform Nx3 points (or one 3-vector) from the child into the parent frame."""
        pts = np.asarray(points, dtype=np.float64)
        single = pts.shape == (3,)
        pts2 = pts.reshape(1, 3) if single else pts
        if pts2.ndim != 2 or pts2.shape[1] != 3:
            raise TransformError(f'points must be Nx3, got shape {pts.shape}')
        out = pts2 @ self.rotation.T + self.translation
        return out[0] if single else out

    def inverse(self) -> 'RigidTransform':
        """``child_from_parent``."""
        q = self.quaternion * np.array([-1.0, -1.0, -1.0, 1.0])
        return RigidTransform(-(quaternion_to_matrix(q) @ self.translation), q)

    def compose(self, other: 'RigidTransform') -> 'RigidTransform':
        """``self * other``: with self = a_from_b and other = b_from_c, returns a_from_c."""
        R = self.rotation
        return RigidTransform(R @ other.translation + self.translation,
                              matrix_to_quaternion(R @ other.rotation))

    def __matmul__(self, other: 'RigidTransform') -> 'RigidTransform':
        return self.compose(other)

    def __repr__(self) -> str:
        t = ', '.join(f'{v:.6g}' for v in self.translation)
        q = ', '.join(f'{v:.6g}' for v in self.quaternion)
        return f'RigidTransform(translation=[{t}], quaternion=[{q}])'
