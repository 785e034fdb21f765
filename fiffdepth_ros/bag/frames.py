"""From raw bag messages to frames for the pipeline, in bag order, with a look-ahead.

Live, the node matches an image with the camera_info / LiDAR / stereo messages it has when it
processes the image (waiting up to ``companion_wait`` for ones stamped near it). In a bag the best
match for an image (the sweep nearest in time) may be recorded *after* the image, so each image is
held in a small look-ahead queue until every companion topic has been seen past
``stamp + max_anchor_age`` (no later message can be nearer), or until bag time has moved
``max_anchor_age + companion_wait`` past the image (a topic that stopped, stamps on another clock).
Then it is matched with :class:`fiffdepth_ros.sync.FrameAssembler`, exactly as in the node.

Items come out in bag-time order, input copies (``--copy-input``) interleaved, so the writer can
write the output bag in time order. A message that cannot be deserialised is skipped and counted.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..conversions.backends import stamp_to_ns
from ..sync import FrameAssembler, FrameInputs
from .reader import BagReader, RawMessage
from .topics import TopicChoice


@dataclass
class CopyItem:
    """An input message copied as it is to the output."""
    raw: RawMessage


@dataclass
class FrameItem:
    """An image selected for processing and its matched companions."""
    inputs: FrameInputs
    bag_time_ns: int


@dataclass
class SkipItem:
    """A selected image that cannot be processed, and why."""
    reason: str
    bag_time_ns: int


@dataclass
class ReadStats:
    images_in_window: int = 0
    selected: int = 0
    corrupt: Counter = field(default_factory=Counter)     # topic -> undeserialisable messages


@dataclass
class _Pending:
    item: Any
    stamp_ns: int = 0


@dataclass(frozen=True)
class Window:
    """Bag-time window [start_ns, end_ns) of the images to process, and the stride."""
    start_ns: int | None = None
    end_ns: int | None = None
    stride: int = 1

    def contains(self, t: int) -> bool:
        return (self.start_ns is None or t >= self.start_ns) and (
            self.end_ns is None or t < self.end_ns)


class FrameSource:
    """Iterates CopyItem / FrameItem / SkipItem in bag order. See the module docstring."""

    def __init__(self, reader: BagReader, topics: TopicChoice, typestore,
                 assembler: FrameAssembler, window: Window = Window(),
                 companion_wait_s: float = 0.1, copy_input: bool = False, stop=None):
        self.reader = reader
        self.topics = topics
        self.typestore = typestore
        self.assembler = assembler
        self.window = window
        self.copy_input = copy_input
        self.stop = stop                           # threading.Event or None
        self.stats = ReadStats()
        self._max_age_ns = assembler.max_age_ns
        self._hold_ns = assembler.max_age_ns + int(companion_wait_s * 1e9)
        self._pending: deque[_Pending] = deque()
        self._adders = {topics.camera_info: assembler.add_camera_info,
                        topics.lidar: assembler.add_lidar, topics.stereo: assembler.add_stereo}
        self._adders.pop(None, None)
        # The buffers whose arrival decides that an image can be matched.
        self._buffers = [buf for topic, buf in ((topics.camera_info, assembler.camera_infos),
                                                (topics.lidar, assembler.lidar),
                                                (topics.stereo, assembler.stereo)) if topic]

    def __iter__(self) -> Iterator[CopyItem | FrameItem | SkipItem]:
        w = self.window
        # Companions from before the window may match its first images, ones after it the last.
        read_start = None if w.start_ns is None else w.start_ns - self._max_age_ns
        read_end = None if w.end_ns is None else w.end_ns + self._hold_ns
        topics = None if self.copy_input else self.topics.inputs
        self._seed_camera_info()
        for raw in self.reader.messages(topics, read_start, read_end):
            if self.stop is not None and self.stop.is_set():
                return
            self._take(raw)
            yield from self._release(raw.bag_time_ns)
        if self.stop is None or not self.stop.is_set():
            yield from self._release(None)

    # ------------------------------------------------------------------ internals
    def _seed_camera_info(self) -> None:
        """The bag's first camera_info as its camera's fallback intrinsics: images recorded
        before it (a driver that publishes camera_info late or once) still get intrinsics."""
        if not self.topics.camera_info:
            return
        for raw in self.reader.messages([self.topics.camera_info]):
            try:
                msg = self.typestore.deserialize_cdr(raw.data, raw.msgtype)
            except Exception:        # counted as corrupt by the main read
                continue
            self.assembler.remember_camera_info(msg)
            break
        self.reader.read_error = None        # a damaged tail is reported by the main read
    def _take(self, raw: RawMessage) -> None:
        in_window = self.window.contains(raw.bag_time_ns)
        if self.copy_input and in_window:
            self._pending.append(_Pending(CopyItem(raw)))
        if raw.topic == self.topics.image:
            if in_window:
                self._take_image(raw)
            return
        add = self._adders.get(raw.topic)
        if add is not None:
            msg = self._deserialize(raw)
            if msg is not None:
                add(msg)

    def _take_image(self, raw: RawMessage) -> None:
        index = self.stats.images_in_window
        self.stats.images_in_window += 1
        if index % self.window.stride:
            return
        self.stats.selected += 1
        msg = self._deserialize(raw)
        if msg is None:
            self._pending.append(_Pending(SkipItem('corrupt image message (cannot be '
                                                   'deserialised)', raw.bag_time_ns)))
            return
        item = FrameItem(inputs=FrameInputs(image=msg), bag_time_ns=raw.bag_time_ns)
        self._pending.append(_Pending(item, stamp_to_ns(msg.header.stamp)))

    def _deserialize(self, raw: RawMessage):
        try:
            return self.typestore.deserialize_cdr(raw.data, raw.msgtype)
        except Exception:      # truncated / garbage bytes raise struct, index, value errors
            self.stats.corrupt[raw.topic] += 1
            return None

    def _ready(self, pending: _Pending, now_ns: int | None) -> bool:
        item = pending.item
        if not isinstance(item, FrameItem) or now_ns is None:
            return True
        if now_ns >= item.bag_time_ns + self._hold_ns:
            return True
        horizon = pending.stamp_ns + self._max_age_ns
        return bool(self._buffers) and all(
            buf.newest_stamp is not None and buf.newest_stamp >= horizon
            for buf in self._buffers)

    def _release(self, now_ns: int | None) -> Iterator[CopyItem | FrameItem | SkipItem]:
        """Items at the head of the queue that are ready (None: the input ended, all are)."""
        while self._pending and self._ready(self._pending[0], now_ns):
            item = self._pending.popleft().item
            if isinstance(item, FrameItem):
                assembled = self.assembler.assemble(item.inputs.image)
                item.inputs = assembled
            yield item
