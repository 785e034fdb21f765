"""Shared by the fleet tests: small recordings, the sequential reference run, bag contents."""
from pathlib import Path

import yaml

from fiffdepth_ros.bag.process_bag import main as process_bag_main
from fiffdepth_ros.bag.reader import BagReader
from fiffdepth_ros.bag.synthetic import (SyntheticBagSpec, lidar_extrinsic_params,
                                         write_synthetic_bag)
from fiffdepth_ros.bag.writer import BagWriter, publisher_qos
from fiffdepth_ros.conversions.backends import RosbagsBackend

# Options every run of these tests uses: tiny model at a low resolution, one torch thread (the
# reference and the fleet then run the same kernels), LiDAR anchors so that the scale filter's
# state (carried frame to frame) matters.
COMMON = ['-p', 'processing_res:=64', '--threads', '1', '--lidar-topic', '/lidar/points',
          '--no-progress']


def write_params(folder: Path, room) -> Path:
    params = dict(lidar_extrinsic_params(room), device='cpu')
    path = folder / 'params.yaml'
    path.write_text(yaml.safe_dump({'depth_node': {'ros__parameters': params}}))
    return path


def make_recordings(folder: Path, long_frames: int = 24) -> dict:
    """a (MCAP, 4 frames), b (sqlite3, 3 frames), long (MCAP, ``long_frames`` at 10 Hz),
    corrupt.mcap (garbage after the magic), nocam (a bag without a camera topic)."""
    folder.mkdir(parents=True, exist_ok=True)
    small = dict(width=96, height=72, lidar_lines=8, lidar_columns=256)
    room, _ = write_synthetic_bag(folder / 'a', SyntheticBagSpec(frames=4, **small), 'mcap')
    write_synthetic_bag(folder / 'b', SyntheticBagSpec(frames=3, **small), 'sqlite3')
    write_synthetic_bag(folder / 'long', SyntheticBagSpec(frames=long_frames, distinct_scenes=3,
                                                          **small), 'mcap')
    (folder / 'corrupt.mcap').write_bytes(b'\x89MCAP0\r\n' + b'\x07garbage' * 64)
    backend = RosbagsBackend()
    with BagWriter(folder / 'nocam', backend.typestore, storage='mcap') as writer:
        writer.add_topic('/chatter', 'std_msgs/msg/String', publisher_qos())
        msg = backend.typestore.types['std_msgs/msg/String'](data='hello')
        writer.write('/chatter', 1_700_000_000_000_000_000, msg)
    return {'room': room, 'params': write_params(folder, room)}


def warm_prompt_cache(model) -> None:
    """Compute the checkpoint's empty-prompt embedding once, so that every run below loads it
    from the cache. (Seen here: a run whose embedding was just computed differs from later runs
    that load the cached copy by ~1e-5 relative depth - equal values, other memory, other
    kernel rounding - so references and fleet runs must start from the same state.)"""
    from fiffdepth_ros.model.checkpoint import resolve_checkpoint
    from fiffdepth_ros.model.prompt_cache import load_empty_embedding
    load_empty_embedding(resolve_checkpoint(str(model)))


class ReusedModel:
    """Patches process_bag's model loading to load each checkpoint once per test module: the
    reference runs stay the real command line, without a model load each (seconds here)."""

    def __init__(self):
        import pytest
        from fiffdepth_ros.bag import process_bag
        from fiffdepth_ros.model import runtime
        self.patch = pytest.MonkeyPatch()
        self.loaded = {}
        real = runtime.load_estimator

        def load(p):
            key = tuple(p[k] for k in ('model', 'device', 'precision', 'processing_res',
                                       'upcast_vae', 'compile'))
            if key not in self.loaded:
                self.loaded[key] = real(p)
            return self.loaded[key]
        self.patch.setattr(process_bag, 'load_estimator', load)
        self.patch.setattr(runtime, 'load_estimator', load)

    def undo(self) -> None:
        self.patch.undo()


def sequential_reference(input_path: Path, output: Path, model, params: Path,
                         extra: tuple = ()) -> int:
    """The single-bag command line: what the fleet must reproduce message for message."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return process_bag_main([str(input_path), str(output), '--model', str(model),
                             '--params', str(params)] + COMMON + list(extra))


def contents(path: Path):
    """Every message of a bag in order (topic, bag time, bytes) and its connections."""
    with BagReader(path) as reader:
        messages = [(m.topic, m.bag_time_ns, bytes(m.data)) for m in reader.messages()]
        connections = sorted((c.topic, c.msgtype) for c in reader.connections)
    return messages, connections
