"""Anchor builders: LiDAR projection (z-buffer, occlusion), depth images and disparity."""
import numpy as np
import pytest

from fiffdepth_ros.geometry.camera_model import CameraModel
from fiffdepth_ros.geometry.transforms import RigidTransform, matrix_to_quaternion
from fiffdepth_ros.scale.anchors import (AnchorError, Anchors, depth_image_anchors,
                                         disparity_anchors, lidar_anchors)

CAMERA = CameraModel.pinhole(320, 240, 250.0, 250.0, 159.5, 119.5)
# LiDAR body frame (x forward, y left, z up) in the camera optical frame (x right, y down, z fwd).
OPTICAL_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
BOX_MIN, BOX_MAX = np.array([-0.5, -0.3, 2.0]), np.array([0.5, 1.0, 2.4])
WALL_Z = 6.0


def _cast(origin, dirs):
    """Depth along dirs (camera frame) to the first of: a box, a wall at z = 6."""
    with np.errstate(divide='ignore', invalid='ignore'):
        t_wall = (WALL_Z - origin[2]) / dirs[:, 2]
        t0, t1 = (BOX_MIN - origin) / dirs, (BOX_MAX - origin) / dirs
        near = np.nanmax(np.minimum(t0, t1), axis=1)
        far = np.nanmin(np.maximum(t0, t1), axis=1)
    box = (near <= far) & (near > 0)
    return np.where(box & (near < t_wall), near, t_wall)


def _scene_sweep(lidar_offset, rings=32):
    """LiDAR points (its own frame) of the box-and-wall scene, and camera_from_lidar."""
    camera_from_lidar = RigidTransform(lidar_offset, matrix_to_quaternion(OPTICAL_FROM_BODY))
    el = np.radians(np.linspace(-20, 20, rings))
    az = np.radians(np.arange(-45, 45, 0.2))
    el, az = np.meshgrid(el, az, indexing='ij')
    body = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    body = body.reshape(-1, 3)
    dirs = body @ OPTICAL_FROM_BODY.T
    origin = np.asarray(lidar_offset, float)
    t = _cast(origin, dirs)
    return (t[:, None] * body), camera_from_lidar


def _camera_truth(rows, cols):
    """True depth the camera sees at the given pixels."""
    fx, fy, cx, cy = CAMERA.intrinsics
    dirs = np.stack([(cols - cx) / fx, (rows - cy) / fy, np.ones(len(rows))], -1)
    return _cast(np.zeros(3), dirs)       # dirs have z = 1: the distance is the depth


def _near_depth_edge(rows, cols, radius=3):
    """Pixels within radius of a depth discontinuity of the camera's view (mixed pixels)."""
    rr, cc = np.mgrid[0:CAMERA.height, 0:CAMERA.width]
    depth = _camera_truth(rr.ravel(), cc.ravel()).reshape(rr.shape)
    import cv2
    lo = cv2.erode(depth.astype(np.float32), np.ones((2 * radius + 1,) * 2, np.uint8))
    hi = cv2.dilate(depth.astype(np.float32), np.ones((2 * radius + 1,) * 2, np.uint8))
    return (hi > 1.2 * lo)[rows, cols]


def test_anchors_container():
    a = Anchors([1, 2], [3, 4], [1.0, 2.0], [1.0, 1.0], offered=5, source='lidar')
    b = Anchors.empty('stereo', offered=7)
    both = Anchors.concatenate([a, b, None])
    assert len(both) == 2 and both.offered == 12 and both.source == 'lidar+stereo'
    assert both.rows.dtype == np.int32 and both.depth.dtype == np.float32
    assert len(Anchors.concatenate([])) == 0
    with pytest.raises(AnchorError):
        Anchors([1, 2], [3], [1.0, 2.0], [1.0, 1.0])


def test_lidar_projection_keeps_only_visible_pixels_and_the_nearest_point():
    pts = np.array([
        [0.0, 0.0, 2.0],       # centre pixel, nearest of the pair
        [0.0, 0.0, 4.0],       # same pixel, farther: z-buffer drops it
        [0.0, 0.0, -2.0],      # behind the camera
        [10.0, 0.0, 1.0],      # outside the image
        [0.0, 0.0, 500.0],     # beyond max_depth
        [np.nan, 0.0, 3.0],    # not finite
        [0.4, 0.2, 2.0],       # elsewhere in the image
    ])
    a = lidar_anchors(pts, RigidTransform.identity(), CAMERA, max_depth=100.0,
                      occlusion_window=1)
    assert a.offered == len(pts) and a.source == 'lidar'
    assert sorted(a.depth.tolist()) == [2.0, 2.0]
    centre = (a.rows == 120) & (a.cols == 160)       # 119.5 rounds up to 120 (pixel centres)
    assert centre.sum() == 1 and a.depth[centre][0] == 2.0
    assert np.all(a.weight > 0)


def test_lidar_weight_falls_with_range():
    pts = np.array([[0.0, 0.0, 2.0], [0.5, 0.0, 20.0]])
    a = lidar_anchors(pts, RigidTransform.identity(), CAMERA, occlusion_window=1)
    near, far = a.weight[np.argmin(a.depth)], a.weight[np.argmax(a.depth)]
    assert near > far


def test_lidar_projection_follows_the_raw_camera_model():
    info_like = type('Info', (), dict(
        k=[250.0, 0, 159.5, 0, 250.0, 119.5, 0, 0, 1], p=[250.0, 0, 159.5, 0, 0, 250.0, 119.5, 0,
                                                        0, 0, 1, 0],
        d=[-0.2, 0.05, 0.0, 0.0, 0.0], distortion_model='plumb_bob', width=320, height=240,
        binning_x=0, binning_y=0, roi=type('Roi', (), dict(x_offset=0, y_offset=0, width=0,
                                                           height=0))()))()
    raw = CameraModel.from_camera_info(info_like, rectified=False)
    rng = np.random.default_rng(3)
    pts = np.stack([rng.uniform(-1, 1, 200), rng.uniform(-0.7, 0.7, 200),
                    rng.uniform(2, 5, 200)], -1)
    a = lidar_anchors(pts, RigidTransform.identity(), raw, occlusion_window=1)
    u, v, ok = raw.project(pts)
    expected = {(int(np.floor(vv + 0.5)), int(np.floor(uu + 0.5)))
                for uu, vv, k in zip(u, v, ok) if k and -0.5 <= uu < 319.5 and -0.5 <= vv < 239.5}
    assert set(zip(a.rows.tolist(), a.cols.tolist())) == expected
    # With distortion the pixel differs from the ideal pinhole one for points off-axis.
    pin = lidar_anchors(pts, RigidTransform.identity(), CAMERA, occlusion_window=1)
    assert set(zip(pin.rows.tolist(), pin.cols.tolist())) != expected


def test_background_seen_past_a_foreground_edge_is_removed():
    # LiDAR 35 cm above and 10 cm behind the camera: over the box's top edge it sees the wall
    # where the camera sees the box.
    points, camera_from_lidar = _scene_sweep([0.0, -0.35, -0.1])
    raw = lidar_anchors(points, camera_from_lidar, CAMERA, occlusion_window=1)
    truth = _camera_truth(raw.rows, raw.cols)
    through = raw.depth > 1.5 * truth
    assert through.sum() > 50, 'the scene must produce see-through points for this test'

    assert (through & ~_near_depth_edge(raw.rows, raw.cols)).sum() > 50

    kept = lidar_anchors(points, camera_from_lidar, CAMERA)        # default occlusion filter
    truth = _camera_truth(kept.rows, kept.cols)
    rel = np.abs(kept.depth - truth) / truth
    # No wall point on the box any more, except mixed pixels at the box's outline (within
    # 3 px, where even the camera's own association is ambiguous).
    assert np.all(rel[~_near_depth_edge(kept.rows, kept.cols)] < 0.25)
    assert np.mean(rel > 0.25) < 0.005
    assert np.mean(rel < 0.01) > 0.95          # (top-face points sit just behind the front)
    assert len(kept) > 0.9 * (len(raw) - through.sum())   # and correct points are kept


def test_depth_image_sparse_keeps_all_dense_is_gridded():
    sparse = np.zeros((60, 80), np.float32)
    sparse[5, 7], sparse[30, 40], sparse[59, 79] = 1.5, 2.5, np.nan
    a = depth_image_anchors(sparse, grid_step=8)
    assert len(a) == 2 and a.offered == 2
    assert set(zip(a.rows.tolist(), a.cols.tolist())) == {(5, 7), (30, 40)}
    dense = np.full((60, 80), 3.0, np.float32)
    dense[0, 0] = 0.0
    b = depth_image_anchors(dense, grid_step=8)
    assert len(b) == len(range(4, 60, 8)) * len(range(4, 80, 8)) and b.offered == 60 * 80 - 1
    assert np.all(b.rows % 8 == 4) and np.all(b.cols % 8 == 4)
    assert np.all(np.diff(depth_image_anchors(np.linspace(1, 5, 80)[None].repeat(60, 0), 8)
                          .weight[:10]) < 0)          # farther stereo depth: less weight


def test_depth_image_rescaled_to_target_and_aspect_checked():
    half = np.zeros((30, 40), np.float32)
    half[10, 20] = 2.0
    a = depth_image_anchors(half, grid_step=4, target_shape=(60, 80))
    assert (a.rows[0], a.cols[0]) == (21, 41)            # pixel centre 10.5 -> 21
    with pytest.raises(AnchorError):
        depth_image_anchors(half, target_shape=(60, 60))
    with pytest.raises(AnchorError):
        depth_image_anchors(half, grid_step=0)
    with pytest.raises(AnchorError):
        depth_image_anchors(np.zeros((4, 4, 3)))


def test_disparity_to_depth_and_invalid_values():
    disp = np.full((20, 30), 10.0, np.float32)
    disp[0, :] = 0.0                   # invalid: zero
    disp[1, :] = -1.0                  # invalid: negative
    disp[2, :] = np.nan
    disp[3, :] = np.inf
    disp[4, :] = 200.0                 # above max_disparity
    disp[5, :] = 0.5                   # below min_disparity
    disp[6, :] = 20.0
    a = disparity_anchors(disp, focal_px=500.0, baseline_m=0.1, min_disparity=1.0,
                          max_disparity=100.0, grid_step=1)
    assert set(np.unique(a.rows).tolist()) == set(range(6, 20))
    assert np.allclose(a.depth[a.rows == 6], 500 * 0.1 / 20.0)
    assert np.allclose(a.depth[a.rows == 7], 5.0)
    w_near, w_far = a.weight[a.rows == 6][0], a.weight[a.rows == 7][0]
    assert np.isclose(w_near / w_far, (5.0 / 2.5) ** 4, rtol=1e-4)      # sigma_z ~ z^2
    # max_disparity 0 (unset in stereo_msgs) means no upper bound.
    b = disparity_anchors(disp, 500.0, 0.1, 1.0, 0.0, grid_step=1)
    assert 4 in b.rows
    with pytest.raises(AnchorError):
        disparity_anchors(disp, 500.0, 0.0)
    with pytest.raises(AnchorError):
        disparity_anchors(disp, 0.0, 0.1)
    with pytest.raises(AnchorError):
        disparity_anchors(disp, 500.0, 0.1, min_disparity=10.0, max_disparity=5.0)
