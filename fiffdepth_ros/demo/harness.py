"""Drive the installed depth_node from another process over real DDS.

The demonstration, the end-to-end tests and the latency benchmark all do the same thing: start
``depth_node`` as its own process, publish a camera stream (camera_info, LiDAR) to it and record
what it publishes. This module is that harness.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import yaml


def wait_until(predicate, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passed; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def large_data_profile() -> str:
    """Path of the package's Fast DDS profile for large messages (see the file's comment)."""
    return str(Path(__file__).resolve().parents[1] / 'resources' / 'fastdds_large_data.xml')


def isolated_ros_env(base: dict | None = None) -> dict:
    """Environment for a private DDS graph on loopback: parallel runs never see each other.

    Images and clouds are large: both ends use the large-data transport profile unless the
    caller chose a profile of their own.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', large_data_profile())
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.setdefault('RCUTILS_COLORIZED_OUTPUT', '0')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def node_command(prefix: str | Path | None = None) -> list[str]:
    """How to run the installed depth_node: from a colcon install prefix, the ament index
    (a sourced workspace) or, failing both, this Python's copy of the package."""
    candidates = []
    if prefix:
        candidates.append(Path(prefix) / 'fiffdepth_ros' / 'lib' / 'fiffdepth_ros' / 'depth_node')
        candidates.append(Path(prefix) / 'lib' / 'fiffdepth_ros' / 'depth_node')
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
        try:
            candidates.append(Path(get_package_prefix('fiffdepth_ros')) / 'lib' / 'fiffdepth_ros'
                              / 'depth_node')
        except (PackageNotFoundError, OSError):     # not installed / no sourced workspace
            pass
    except ImportError:
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return [str(path)]
    return [sys.executable, '-m', 'fiffdepth_ros.ros.depth_node']


def install_env(prefix: str | Path, env: dict) -> dict:
    """Environment in which a colcon install prefix's Python package comes first."""
    env = dict(env)
    site = sorted(Path(prefix).glob('fiffdepth_ros/lib/python3*/site-packages'))
    if site:
        env['PYTHONPATH'] = os.pathsep.join([str(site[0])] + [p for p in env.get(
            'PYTHONPATH', '').split(os.pathsep) if p])
    env['AMENT_PREFIX_PATH'] = os.pathsep.join(
        [str(Path(prefix) / 'fiffdepth_ros')] + [p for p in env.get(
            'AMENT_PREFIX_PATH', '').split(os.pathsep) if p])
    return env


class NodeProcess:
    """depth_node in its own process, with a parameters file and remappings."""

    def __init__(self, workdir: Path, params: dict, remaps: dict[str, str] | None = None,
                 env: dict | None = None, prefix: str | Path | None = None,
                 extra_args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.params_file = self.workdir / 'depth_node_params.yaml'
        self.params_file.write_text(yaml.safe_dump(
            {'/**': {'ros__parameters': params}}, sort_keys=True))
        self.log_path = self.workdir / 'depth_node.log'
        self.env = isolated_ros_env(env)
        if prefix:
            self.env = install_env(prefix, self.env)
        args = ['--ros-args', '--params-file', str(self.params_file)]
        for src, dst in (remaps or {}).items():
            args += ['-r', f'{src}:={dst}']
        self.command = node_command(prefix) + args + list(extra_args or [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> 'NodeProcess':
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def wait_for_log(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.running:
                return text in self.log()
            time.sleep(0.1)
        return False

    def stop(self, timeout_s: float = 10.0) -> tuple[int | None, float]:
        """SIGINT (Ctrl-C) and wait; returns (exit code, seconds it took). Kills on timeout."""
        if self.proc is None:
            return None, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode, time.monotonic() - t0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class StreamClient:
    """An rclpy node in this process that publishes camera data and records the outputs.

    rclpy must be initialised (``rclpy.init()``) before constructing it.
    """

    OUTPUTS = {'depth': ('depth/image', 'Image'), 'camera_info': ('depth/camera_info',
                                                                   'CameraInfo'),
               'points': ('depth/points', 'PointCloud2'), 'relative': ('depth/relative', 'Image'),
               'colorized': ('depth/colorized', 'Image')}

    def __init__(self, namespace: str = '', image_topic: str = 'image', outputs=None,
                 reliability: str = 'reliable', record_diagnostics: bool = True,
                 node_name: str = 'fiffdepth_stream_client', keep=None):
        """``keep``: output name -> function of the message giving what is recorded instead of
        the message (for example its stamp): a long stream of 10 MB clouds kept whole fills the
        memory of this process (1263 clouds: 12 GB)."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs import msg as sm

        from ..ros.qos import profile
        self._rclpy = rclpy
        self.node = rclpy.create_node(node_name, namespace=namespace)
        out_qos = profile(reliability, 10)
        self.image_pub = self.node.create_publisher(sm.Image, image_topic, profile('reliable', 5))
        self.compressed_pub = self.node.create_publisher(sm.CompressedImage,
                                                         image_topic + '/compressed',
                                                         profile('reliable', 5))
        self.info_pub = self.node.create_publisher(sm.CameraInfo, 'camera_info',
                                                   profile('reliable', 5))
        self.lidar_pub = self.node.create_publisher(sm.PointCloud2, 'lidar/points',
                                                    profile('reliable', 5))
        self.stereo_pub = self.node.create_publisher(sm.Image, 'stereo/depth',
                                                     profile('reliable', 5))
        self.lock = threading.Lock()
        self.received: dict[str, list] = defaultdict(list)     # name -> [(t_receipt, msg)]
        self._keep = dict(keep or {})
        self.subscriptions = {}
        for name in (outputs or self.OUTPUTS):
            topic, type_name = self.OUTPUTS[name]
            self.subscriptions[name] = self.node.create_subscription(
                getattr(sm, type_name), topic, self._recorder(name), out_qos)
        if record_diagnostics:
            # /diagnostics is global: keep the statuses of the depth node in our namespace.
            prefix = self.node.get_namespace().rstrip('/') + '/depth_node:'
            record = self._recorder('diagnostics')
            self.node.create_subscription(
                DiagnosticArray, '/diagnostics',
                lambda msg: record(msg) if any(s.name.startswith(prefix) for s in msg.status)
                else None, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._running = True
        self._spin.start()

    def _spin_loop(self):
        while self._running and self._rclpy.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:           # shutdown races
                if not self._running:
                    return
                raise

    def _recorder(self, name):
        summary = self._keep.get(name)

        def record(msg):
            kept = msg if summary is None else summary(msg)
            with self.lock:
                self.received[name].append((time.time(), kept))
        return record

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.received[name])

    def messages(self, name: str) -> list:
        with self.lock:
            return [m for _, m in self.received[name]]

    def receipts(self, name: str) -> list:
        """(wall-clock receipt time in seconds, message or its kept summary) of ``name``."""
        with self.lock:
            return list(self.received[name])

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def wait_until(self, predicate, timeout_s: float, poll_s: float = 0.05) -> bool:
        return wait_until(predicate, timeout_s, poll_s)

    def wait_for_node(self, timeout_s: float, compressed: bool = False,
                      lidar: bool = False) -> bool:
        """Until the node subscribes to our image, camera_info (and LiDAR) topics and we are
        matched to its outputs: messages sent before discovery completes are lost."""
        inputs = [self.compressed_pub if compressed else self.image_pub, self.info_pub]
        if lidar:
            inputs.append(self.lidar_pub)
        return self.wait_until(
            lambda: all(pub.get_subscription_count() > 0 for pub in inputs) and all(
                sub.get_publisher_count() > 0 for sub in self.subscriptions.values()),
            timeout_s)

    def publish_frame(self, room, frame, stamp_ns: int, camera_frame: str = 'camera_optical',
                      lidar_frame: str = 'lidar', compressed: bool = False,
                      lidar: bool = True) -> None:
        """Publish camera_info, the LiDAR sweep and then the image of a synthetic frame."""
        from ..conversions.backends import RclpyBackend
        from ..conversions.depth_image import rgb_to_image_msg
        from ..conversions.pointcloud import xyz_to_pointcloud
        backend = self._backend = getattr(self, '_backend', None) or RclpyBackend()
        header = backend.header(stamp_ns, camera_frame)
        self.info_pub.publish(backend.camera_info(header, **room.camera_info_fields()))
        if lidar:
            self.lidar_pub.publish(xyz_to_pointcloud(frame.lidar_points,
                                                     backend.header(stamp_ns, lidar_frame),
                                                     backend))
        if compressed:
            import cv2
            ok, jpeg = cv2.imencode('.jpg', frame.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            self.compressed_pub.publish(backend.compressed_image(header, 'jpeg', jpeg))
        else:
            self.image_pub.publish(rgb_to_image_msg(frame.rgb, header, backend))

    def latest_diagnostics(self) -> dict[str, str]:
        """Key-values of the newest status of our depth node on /diagnostics ({} if none)."""
        messages = self.messages('diagnostics')
        return {kv.key: kv.value for kv in messages[-1].status[0].values} if messages else {}

    def warm_up(self, room, frame, first_stamp_ns: int, timeout_s: float = 30.0) -> bool:
        """Stream ``frame`` until the node reports LiDAR anchors in use, then forget what was
        recorded. Right after discovery the first large LiDAR messages can still be lost (the
        publisher may see the subscription before the subscription has matched it)."""
        deadline = time.monotonic() + timeout_s
        stamp = first_stamp_ns
        ok = False
        while time.monotonic() < deadline and not ok:
            self.publish_frame(room, frame, stamp)
            stamp += 100_000_000
            ok = self.wait_until(
                lambda: int(self.latest_diagnostics().get('anchors used', '0')) > 0, 0.5)
        self.clear()
        return ok

    def close(self) -> None:
        self._running = False
        self._spin.join(timeout=2.0)
        self.executor.remove_node(self.node)
        self.node.destroy_node()
