#!/usr/bin/env python3
"""Speed of the image, depth and point-cloud conversions against a plain copy of the bytes.

Everything goes through RclpyBackend, so the timings include building real rclpy message
objects. For each conversion, at 640x480 and 1280x720, printed side by side in one run:

- ours:  the median of --repeats runs (after warm-up runs that reach the steady state);
- copy:  the median of a plain memcpy of the same number of bytes (the message's data) between
         two preallocated arrays: the floor of what any conversion can cost;
- ref:   a straightforward per-element Python path (struct packing/unpacking, or a per-pixel
         loop for images), timed on a --sample-element subsample and extrapolated linearly to the
         whole image or cloud. The LiDAR cloud (100k points, Ouster-like layout, 48-byte points
         with 10% no-return NaN points) is read once, independent of the image size.

The headline is the node's per-frame output path: a depth Image (32FC1) plus an organised
xyzrgb cloud at 640x480, against the 4 ms target, beside a numpy path that builds the same
messages with tobytes() and the messages' own constructors.

    python bench/conversions.py [--repeats 50] [--sample 20000]
"""
import argparse
import array
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from fiffdepth_ros.conversions.backends import RclpyBackend  # noqa: E402
from fiffdepth_ros.conversions.depth_image import depth_to_image_msg  # noqa: E402
from fiffdepth_ros.conversions.images import compressed_to_rgb, image_to_rgb  # noqa: E402
from fiffdepth_ros.conversions.pointcloud import (DepthCloudBuilder, pointcloud_to_xyz,  # noqa
                                                  xyz_to_pointcloud)
from fiffdepth_ros.geometry.camera_model import CameraModel  # noqa: E402
import timing  # noqa: E402  (bench/timing.py, beside this script)

SIZES = ((640, 480), (1280, 720))
TARGET_MS = 4.0
LIDAR_POINTS = (100, 1000)            # rows x columns: 100k points


def median_ms(fn, repeats: int, warmup: int = 8) -> float:
    return timing.median_ms(fn, repeats, warmup)


def copy_ms(nbytes: int, repeats: int) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    return median_ms(lambda: np.copyto(dst, src), repeats)


def extrapolated_ms(per_element, total: int, sample: int) -> float:
    """Time ``per_element(n)`` (a Python loop over n elements) and scale it to ``total``."""
    n = min(sample, total)
    per_element(min(n, 1000))                                   # warm up
    t0 = time.perf_counter()
    per_element(n)
    return (time.perf_counter() - t0) * 1e3 * total / n


# ---------------------------------------------------------------------------- scene
def scene(width: int, height: int):
    """A smooth colour image, a depth map with 3% invalid pixels, and its camera."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 23),
                    128 + 100 * np.sin((xx + yy) / 51)], -1).astype(np.uint8)
    depth = (2.0 + 1.5 * np.sin(xx / 90) * np.cos(yy / 70) + yy / height).astype(np.float32)
    depth[np.random.default_rng(0).random(depth.shape) < 0.03] = np.nan
    f = 0.8 * width
    camera = CameraModel.pinhole(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
    return rgb, depth, camera


def uyvy(rgb: np.ndarray) -> np.ndarray:
    """BT.601 video-range UYVY bytes (H, W, 2) of an RGB image."""
    r, g, b = [rgb[..., i].astype(np.float32) for i in range(3)]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    packed = np.stack([u[:, 0::2], y[:, 0::2], v[:, 0::2], y[:, 1::2]], -1)
    return np.clip(packed + 0.5, 0, 255).astype(np.uint8).reshape(rgb.shape[0], -1, 2)


# ---------------------------------------------------------------------------- references
def ref_image(data: bytes, order: tuple[int, int, int]):
    """Per-pixel Python: three bytes in, three bytes out in RGB order."""
    def run(n):
        out = bytearray(3 * n)
        a, b, c = order
        for i in range(n):
            o = 3 * i
            out[o], out[o + 1], out[o + 2] = data[o + a], data[o + b], data[o + c]
        return out
    return run


def ref_yuv(data: bytes):
    """Per-pixel-pair Python BT.601 conversion of UYVY."""
    def clamp(x):
        return 0 if x < 0 else 255 if x > 255 else int(x)

    def run(n):
        out = bytearray(3 * n)
        for p in range(n // 2):
            u, y0, v, y1 = data[4 * p:4 * p + 4]
            for k, y in enumerate((y0, y1)):
                c, d, e = 1.164 * (y - 16), u - 128, v - 128
                o = 6 * p + 3 * k
                out[o] = clamp(c + 1.596 * e)
                out[o + 1] = clamp(c - 0.392 * d - 0.813 * e)
                out[o + 2] = clamp(c + 2.017 * d)
        return out
    return run


def ref_depth_32fc1(depth: np.ndarray):
    flat = depth.ravel().tolist()
    pack = struct.Struct('<f').pack

    def run(n):
        return b''.join(pack(flat[i]) for i in range(n))
    return run


def ref_depth_16uc1(depth: np.ndarray):
    flat = depth.ravel().tolist()
    pack = struct.Struct('<H').pack

    def run(n):
        out = []
        for i in range(n):
            z = flat[i]
            mm = 0 if not (z > 0 and z != float('inf')) else min(int(round(z * 1000)), 65535)
            out.append(pack(mm))
        return b''.join(out)
    return run


def ref_cloud(depth: np.ndarray, camera: CameraModel, rgb: np.ndarray | None):
    """depth_image_proc's loop in Python: one point at a time with struct."""
    fx, fy, cx, cy = camera.intrinsics
    h, w = depth.shape
    flat = depth.ravel().tolist()
    colours = rgb.reshape(-1, 3).tolist() if rgb is not None else None
    xyz = struct.Struct('<fff4x')
    nan = float('nan')

    def run(n):
        out = bytearray()
        for i in range(n):
            v, u = divmod(i, w)
            z = flat[i]
            if z == z:
                out += xyz.pack((u - cx) * z / fx, (v - cy) * z / fy, z)
            else:
                out += xyz.pack(nan, nan, nan)
            if colours is not None:
                r, g, b = colours[i]
                out += bytes((b, g, r, 0)) + bytes(12)
        return out
    return run


def ref_lidar(msg):
    data, step = bytes(msg.data), msg.point_step
    unpack = struct.Struct('<fff').unpack_from

    def run(n):
        out = []
        for i in range(n):
            x, y, z = unpack(data, i * step)
            if x == x and y == y and z == z:
                out.append((x, y, z))
        return out
    return run


def tobytes_path(depth: np.ndarray, rgb: np.ndarray, camera: CameraModel):
    """A plain numpy version of the headline: stack, tobytes(), message constructors."""
    from sensor_msgs.msg import Image, PointCloud2, PointField
    rx, ry = camera.rays()
    h, w = depth.shape
    fields = [PointField(name=n, offset=o, datatype=7, count=1)
              for n, o in (('x', 0), ('y', 4), ('z', 8), ('rgb', 16))]

    def run():
        image = Image(height=h, width=w, encoding='32FC1', step=4 * w, data=depth.tobytes())
        packed = (rgb[..., 2].astype(np.uint32) | (rgb[..., 1].astype(np.uint32) << 8)
                  | (rgb[..., 0].astype(np.uint32) << 16)).view(np.float32)
        zeros = np.zeros_like(depth)
        points = np.stack([rx * depth, ry * depth, depth, zeros, packed, zeros, zeros, zeros],
                          axis=-1)
        cloud = PointCloud2(height=h, width=w, fields=fields, point_step=32, row_step=32 * w,
                            data=points.tobytes(), is_dense=False)
        return image, cloud
    return run


# ---------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--repeats', type=int, default=50)
    ap.add_argument('--sample', type=int, default=20000,
                    help='elements timed in the per-element reference paths')
    args = ap.parse_args()
    reps, sample = args.repeats, args.sample
    backend = RclpyBackend()
    header = backend.header(1, 'camera_optical')
    rows = []
    headline = None

    def row(size, name, nbytes, ours, ref=None, note=''):
        rows.append((size, name, nbytes, ours, copy_ms(nbytes, reps), ref, note))

    for width, height in SIZES:
        size = f'{width}x{height}'
        rgb, depth, camera = scene(width, height)
        n = width * height
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        packed = uyvy(rgb)
        msgs = {
            'rgb8': backend.image(header, height, width, 'rgb8', 3 * width, rgb),
            'bgr8': backend.image(header, height, width, 'bgr8', 3 * width, bgr),
            'yuv422': backend.image(header, height, width, 'yuv422', 2 * width, packed),
        }
        jpeg = backend.compressed_image(header, 'rgb8; jpeg compressed bgr8',
                                        cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY,
                                                                   90])[1])
        row(size, 'image in rgb8', 3 * n, median_ms(lambda: image_to_rgb(msgs['rgb8']), reps),
            extrapolated_ms(ref_image(bytes(msgs['rgb8'].data), (0, 1, 2)), n, sample),
            'a view of the message data')
        row(size, 'image in bgr8', 3 * n, median_ms(lambda: image_to_rgb(msgs['bgr8']), reps),
            extrapolated_ms(ref_image(bytes(msgs['bgr8'].data), (2, 1, 0)), n, sample))
        row(size, 'image in yuv422', 3 * n,
            median_ms(lambda: image_to_rgb(msgs['yuv422']), reps),
            extrapolated_ms(ref_yuv(bytes(msgs['yuv422'].data)), n, sample),
            'copy: the RGB output bytes')
        row(size, 'image in jpeg', 3 * n, median_ms(lambda: compressed_to_rgb(jpeg), reps),
            None, f'{len(jpeg.data) / 1e3:.0f} kB jpeg; copy: RGB output bytes')
        row(size, 'depth out 32FC1', 4 * n,
            median_ms(lambda: depth_to_image_msg(depth, header, backend, '32FC1'), reps),
            extrapolated_ms(ref_depth_32fc1(depth), n, sample))
        row(size, 'depth out 16UC1', 2 * n,
            median_ms(lambda: depth_to_image_msg(depth, header, backend, '16UC1'), reps),
            extrapolated_ms(ref_depth_16uc1(depth), n, sample))
        builder = DepthCloudBuilder()
        row(size, 'cloud xyz (organised)', 16 * n,
            median_ms(lambda: builder.build(depth, camera, header, backend), reps),
            extrapolated_ms(ref_cloud(depth, camera, None), n, sample))
        row(size, 'cloud xyzrgb (organised)', 32 * n,
            median_ms(lambda: builder.build(depth, camera, header, backend, rgb=rgb), reps),
            extrapolated_ms(ref_cloud(depth, camera, rgb), n, sample))

        def frame_out():
            depth_to_image_msg(depth, header, backend, '32FC1')
            builder.build(depth, camera, header, backend, rgb=rgb)
        ours = median_ms(frame_out, reps)
        ref = (extrapolated_ms(ref_depth_32fc1(depth), n, sample)
               + extrapolated_ms(ref_cloud(depth, camera, rgb), n, sample))
        row(size, 'depth 32FC1 + xyzrgb cloud', 36 * n, ours, ref)
        if (width, height) == (640, 480):
            headline = (ours, rows[-1][4], rows[-1][2],
                        median_ms(tobytes_path(depth, rgb, camera), reps), ref)

    rng = np.random.default_rng(1)
    points = rng.uniform(-40, 40, (LIDAR_POINTS[0] * LIDAR_POINTS[1], 3)).astype(np.float32)
    points[rng.random(len(points)) < 0.1] = np.nan                 # no return
    lidar = xyz_to_pointcloud(points, backend.header(1, 'lidar'), backend,
                              intensity=rng.random(len(points)), ring=np.repeat(
                                  np.arange(LIDAR_POINTS[0]), LIDAR_POINTS[1]),
                              height=LIDAR_POINTS[0])
    assert isinstance(lidar.data, array.array)
    row('100k pts', 'LiDAR cloud in (Ouster-like)', len(lidar.data),
        median_ms(lambda: pointcloud_to_xyz(lidar), reps),
        extrapolated_ms(ref_lidar(lidar), len(points), sample), 'copy: the message bytes')

    print(f'Conversions through RclpyBackend (rclpy message objects); median of {reps} runs.')
    print('copy = memcpy of the same number of bytes; ref = per-element Python, timed on '
          f'{sample} elements and extrapolated.\n')
    head = (f"{'size':<9} {'conversion':<28} {'MB':>6} {'ours ms':>8} {'copy ms':>8} "
            f"{'ours/copy':>9} {'ref ms':>9} {'ref/ours':>8}  note")
    print(head)
    print('-' * len(head))
    for size, name, nbytes, ours, copy, ref, note in rows:
        ref_s = f'{ref:9.0f}' if ref is not None else f"{'-':>9}"
        speedup = f'{ref / ours:8.0f}' if ref is not None else f"{'-':>8}"
        print(f'{size:<9} {name:<28} {nbytes / 1e6:6.2f} {ours:8.3f} {copy:8.3f} '
              f'{ours / copy:9.1f} {ref_s} {speedup}  {note}')
    ours, copy, nbytes, tobytes, ref = headline
    verdict = 'met' if ours <= TARGET_MS else 'NOT met'
    print(f'\nHeadline, 640x480: depth Image (32FC1) + organised xyzrgb cloud = {ours:.2f} ms '
          f'(target {TARGET_MS:.0f} ms: {verdict}); plain copy of the same {nbytes / 1e6:.2f} MB '
          f'{copy:.2f} ms; numpy + tobytes() path {tobytes:.2f} ms; per-point Python '
          f'{ref / 1e3:.1f} s.')


if __name__ == '__main__':
    main()
