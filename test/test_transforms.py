"""RigidTransform: construction, algebra, message conversion and rejection of bad input."""
from types import SimpleNamespace as NS

import numpy as np
import pytest

from fiffdepth_ros.geometry.transforms import (RigidTransform, TransformError,
                                               matrix_to_quaternion, quaternion_to_matrix)


def _rot_z(deg):
    a = np.radians(deg)
    return np.array([0.0, 0.0, np.sin(a / 2), np.cos(a / 2)])


def _random_transform(rng):
    q = rng.normal(size=4)
    return RigidTransform(rng.normal(size=3), q)


def test_identity_and_rotation_about_z():
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 9.0]])
    assert np.allclose(RigidTransform.identity().apply(pts), pts)
    t = RigidTransform([1.0, 0.0, 0.0], _rot_z(90))
    assert np.allclose(t.apply([1.0, 0.0, 0.0]), [1.0, 1.0, 0.0])     # x -> y, then +x
    assert t.apply(pts).shape == (2, 3)


def test_quaternion_is_normalised():
    t = RigidTransform([0, 0, 0], 5.0 * _rot_z(30))
    assert np.isclose(np.linalg.norm(t.quaternion), 1.0)
    assert np.allclose(t.rotation @ t.rotation.T, np.eye(3))


@pytest.mark.parametrize('quaternion', [[0, 0, 0, 0], [np.nan, 0, 0, 1], [0, 0, np.inf, 1]])
def test_zero_or_nan_quaternion_is_rejected(quaternion):
    with pytest.raises(ValueError):
        RigidTransform([0, 0, 0], quaternion)


@pytest.mark.parametrize('translation, quaternion', [([0, 0], [0, 0, 0, 1]),
                                                     ([0, 0, 0], [0, 0, 1]),
                                                     ([0, np.nan, 0], [0, 0, 0, 1])])
def test_bad_shapes_and_values_are_rejected(translation, quaternion):
    with pytest.raises(TransformError):
        RigidTransform(translation, quaternion)


def test_inverse_and_compose_match_matrices():
    rng = np.random.default_rng(1)
    a, b = _random_transform(rng), _random_transform(rng)
    pts = rng.normal(size=(20, 3))
    assert np.allclose(a.inverse().apply(a.apply(pts)), pts)
    assert np.allclose(a.compose(b).matrix, a.matrix @ b.matrix)
    assert np.allclose((a @ b).apply(pts), a.apply(b.apply(pts)))
    assert np.allclose(a.inverse().matrix, np.linalg.inv(a.matrix))


@pytest.mark.parametrize('axis', [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
def test_matrix_round_trip_including_half_turns(axis):
    # 180-degree rotations exercise every branch of the matrix -> quaternion conversion.
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    for angle in (0.0, 0.3, np.pi / 2, np.pi):
        q = np.append(axis * np.sin(angle / 2), np.cos(angle / 2))
        R = quaternion_to_matrix(q)
        assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12)
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = R, [0.1, -2.0, 3.5]
        assert np.allclose(RigidTransform.from_matrix(M).matrix, M, atol=1e-12)


def test_from_matrix_rejects_non_rigid():
    with pytest.raises(TransformError):
        RigidTransform.from_matrix(np.diag([1.0, 1.0, -1.0, 1.0]))      # a reflection
    with pytest.raises(TransformError):
        RigidTransform.from_matrix(np.diag([2.0, 1.0, 1.0, 1.0]))       # a scaling
    with pytest.raises(TransformError):
        RigidTransform.from_matrix(np.eye(3))


def test_from_msg_is_duck_typed():
    q = _rot_z(45)
    msg = NS(translation=NS(x=1.0, y=2.0, z=3.0), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3]))
    t = RigidTransform.from_msg(msg)
    assert np.allclose(t.translation, [1, 2, 3]) and np.allclose(t.quaternion, q)
    stamped = NS(header=None, transform=msg)
    assert np.allclose(RigidTransform.from_msg(stamped).matrix, t.matrix)
    with pytest.raises(TransformError):
        RigidTransform.from_msg(NS(translation=NS(x=0, y=0, z=0)))
    zero = NS(translation=NS(x=0, y=0, z=0), rotation=NS(x=0, y=0, z=0, w=0))
    with pytest.raises(ValueError):
        RigidTransform.from_msg(zero)


def test_apply_rejects_wrong_point_shape():
    with pytest.raises(TransformError):
        RigidTransform.identity().apply(np.zeros((4, 2)))
