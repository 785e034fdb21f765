"""camera <- LiDAR extrinsic for bags: the bag's own /tf_static, or the static parameters.

The node asks tf2 (when ``lidar_use_tf``) and falls back to the static ``lidar_*`` parameters. A
recording carries the same rigid transforms on ``/tf_static``, so the bag processor reads them
from there and keeps the node's fallback rule: fall back only to a static extrinsic that names
its frames, since an unnamed (default identity) one would silently misplace every anchor.
Only static transforms are used: a camera and a LiDAR on one robot are rigidly mounted.
"""
from __future__ import annotations

from collections import deque

from ..geometry.transforms import RigidTransform
from ..pipeline import StaticExtrinsic
from .reader import BagReader

TF_STATIC_TOPIC = '/tf_static'
TF_MESSAGE = 'tf2_msgs/msg/TFMessage'


def _frame(name: str) -> str:
    return str(name).lstrip('/')      # ROS 1 style '/base_link' names the same frame


class StaticTfTree:
    """Transforms between frames from TFMessage transforms (parent_from_child edges)."""

    def __init__(self):
        self._edges: dict[str, dict[str, RigidTransform]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._edges.values()) // 2

    def add(self, parent: str, child: str, parent_from_child: RigidTransform) -> None:
        parent, child = _frame(parent), _frame(child)
        self._edges.setdefault(parent, {})[child] = parent_from_child
        self._edges.setdefault(child, {})[parent] = parent_from_child.inverse()

    def lookup(self, target: str, source: str) -> RigidTransform:
        """``target_from_source``; raises LookupError when the frames are not connected."""
        target, source = _frame(target), _frame(source)
        if target == source:
            return RigidTransform.identity()
        previous = {target: None}
        queue = deque([target])
        while queue:                        # breadth first from the target frame
            frame = queue.popleft()
            for nxt in self._edges.get(frame, {}):
                if nxt not in previous:
                    previous[nxt] = frame
                    queue.append(nxt)
        if source not in previous:
            raise LookupError(f"/tf_static of the bag does not connect '{target}' and "
                              f"'{source}'")
        result = RigidTransform.identity()
        frame = source
        while previous[frame] is not None:          # walk source -> target, composing
            parent = previous[frame]
            result = self._edges[parent][frame] @ result
            frame = parent
        return result


def read_static_tf(reader: BagReader, typestore) -> tuple[StaticTfTree, int]:
    """The bag's /tf_static tree and the number of messages that could not be read."""
    tree, bad = StaticTfTree(), 0
    topics = reader.topics()
    if TF_STATIC_TOPIC not in topics or topics[TF_STATIC_TOPIC].msgtype != TF_MESSAGE:
        return tree, 0
    for raw in reader.messages([TF_STATIC_TOPIC]):
        try:
            msg = typestore.deserialize_cdr(raw.data, raw.msgtype)
            for t in msg.transforms:
                tree.add(t.header.frame_id, t.child_frame_id, RigidTransform.from_msg(t))
        except Exception:          # corrupt bytes, a bad quaternion: skip that message
            bad += 1
    reader.read_error = None        # a damaged tail is reported by the main read
    return tree, bad


class BagExtrinsics:
    """Callable (camera_frame, cloud_frame, stamp_ns) -> camera_from_cloud, like the node's
    ExtrinsicResolver with the bag's /tf_static in place of tf2."""

    def __init__(self, static: StaticExtrinsic, tree: StaticTfTree | None):
        self.static = static
        self.tree = tree if tree is not None and len(tree) else None

    def __call__(self, camera_frame: str, cloud_frame: str, stamp_ns: int) -> RigidTransform:
        if camera_frame == cloud_frame:
            return RigidTransform.identity()
        if self.tree is not None:
            try:
                return self.tree.lookup(camera_frame, cloud_frame)
            except LookupError as exc:
                return self.static.fallback(camera_frame, cloud_frame, str(exc))
        return self.static.camera_from(camera_frame, cloud_frame)
