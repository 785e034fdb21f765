"""Time matching of camera_info, LiDAR and stereo messages to images.

Shared by the node and the bag processor so both pick the same companions for a frame: the
message nearest in time to the image stamp within a maximum age (camera_info falls back to the
latest one within that age, since many drivers stamp it loosely). A clock jump backwards of the
images (a bag played in a loop, a simulator reset) drops the old timeline's companions.

Intrinsics are static: when no camera_info is within the age limit (a driver that publishes it
once, latched, or at another rate or stamp), the latest camera_info of the same camera (same
frame_id, and the same size for raw images) is used, and failing that a calibration file
(``camera_info_url``). Either is said once per camera. Such a frame never waits for camera_info.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable

from .conversions.backends import stamp_to_ns

# A stamp this far behind the newest one seen means the clock jumped back, not reordering.
CLOCK_JUMP_BACK_NS = 1_000_000_000


class StampedBuffer:
    """The last few messages of one topic, kept sorted by header stamp."""

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self._stamps: list[int] = []
        self._msgs: list[Any] = []

    def __len__(self) -> int:
        return len(self._msgs)

    def clear(self) -> None:
        self._stamps.clear()
        self._msgs.clear()

    def add(self, stamp_ns: int, msg) -> None:
        i = bisect.bisect_right(self._stamps, stamp_ns)
        self._stamps.insert(i, stamp_ns)
        self._msgs.insert(i, msg)
        if len(self._stamps) > self.maxlen:     # drop the oldest
            del self._stamps[0], self._msgs[0]

    def drop_after(self, stamp_ns: int) -> None:
        """Forget messages stamped after ``stamp_ns`` (an old timeline after a clock jump)."""
        i = bisect.bisect_right(self._stamps, stamp_ns)
        del self._stamps[i:], self._msgs[i:]

    def exact(self, stamp_ns: int):
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            return self._msgs[i]
        return None

    def nearest(self, stamp_ns: int, max_age_ns: int):
        """The message nearest to ``stamp_ns`` within ``max_age_ns``, else None."""
        i = bisect.bisect_left(self._stamps, stamp_ns)
        best = min((j for j in (i - 1, i) if 0 <= j < len(self._stamps)),
                   key=lambda j: abs(self._stamps[j] - stamp_ns), default=None)
        if best is None or abs(self._stamps[best] - stamp_ns) > max_age_ns:
            return None
        return self._msgs[best]

    @property
    def newest_stamp(self) -> int | None:
        return self._stamps[-1] if self._stamps else None

    def latest_within(self, stamp_ns: int, max_age_ns: int):
        """The newest message whose stamp is within ``max_age_ns`` of ``stamp_ns``."""
        for j in range(len(self._stamps) - 1, -1, -1):
            if abs(self._stamps[j] - stamp_ns) <= max_age_ns:
                return self._msgs[j]
        return None


@dataclass
class FrameInputs:
    """One image and the companions matched to it."""

    image: Any
    camera_info: Any = None
    lidar: Any = None
    stereo: Any = None
    notes: list[str] = field(default_factory=list)


class FrameAssembler:
    """Collects companion messages and matches them to each image by stamp.

    The image stream is the clock: when images jump backwards (a bag played in a loop, a
    simulator reset), companions of the old timeline are dropped. A single late companion (a
    reliable transport re-delivering an old message) is merely never matched: it must not wipe
    the buffers that hold the current frame's companions.
    """

    def __init__(self, max_age_s: float, use_lidar: bool = False, use_stereo: bool = False,
                 calibration: Callable[[Any], Any] | None = None, calibration_name: str = ''):
        """``calibration(image)``: a camera_info for ``image`` from a calibration file, used
        when the camera has sent none (``calibration_name`` names the file in the note)."""
        self.max_age_ns = int(max_age_s * 1e9)
        self.calibration = calibration
        self.calibration_name = calibration_name
        # The latest camera_info per camera: frame_id -> msg, (frame_id, width, height) -> msg.
        self._latest_info: dict[Any, Any] = {}
        self._said: set[tuple[str, str]] = set()     # (kind, frame_id) notes given once
        self.camera_info_fallbacks = 0      # frames that used the latest / calibration info
        self.use_lidar = use_lidar
        self.use_stereo = use_stereo
        self.camera_infos = StampedBuffer(30)
        self.lidar = StampedBuffer(10)
        self.stereo = StampedBuffer(10)
        self._newest_image_ns: int | None = None
        self.clock_jumps = 0
        self._unreported_jump_s: float | None = None     # reported with the next frame

    def _buffers(self) -> list[StampedBuffer]:
        return [self.camera_infos] + ([self.lidar] if self.use_lidar else []) + \
            ([self.stereo] if self.use_stereo else [])

    def _observe_image(self, stamp_ns: int) -> None:
        newest = self._newest_image_ns
        if newest is not None and stamp_ns < newest - CLOCK_JUMP_BACK_NS:
            for buf in (self.camera_infos, self.lidar, self.stereo):
                buf.drop_after(stamp_ns + CLOCK_JUMP_BACK_NS)
            self.clock_jumps += 1
            self._unreported_jump_s = (newest - stamp_ns) * 1e-9
            self._newest_image_ns = stamp_ns
        elif newest is None or stamp_ns > newest:
            self._newest_image_ns = stamp_ns

    def add_camera_info(self, msg) -> None:
        self.camera_infos.add(stamp_to_ns(msg.header.stamp), msg)
        self.remember_camera_info(msg)

    def remember_camera_info(self, msg) -> None:
        """Keep ``msg`` as its camera's fallback intrinsics only (not matched by stamp): e.g.
        the first camera_info of a bag, recorded after the first images."""
        frame = str(msg.header.frame_id)
        self._latest_info[frame] = msg
        size = (getattr(msg, 'width', None), getattr(msg, 'height', None))
        self._latest_info[(frame, *size)] = msg

    def _fallback_info(self, image):
        """The latest camera_info of the image's camera: same frame_id, and for raw images
        (whose size the message says) the same size."""
        frame = str(image.header.frame_id)
        if hasattr(image, 'width') and hasattr(image, 'height'):
            return self._latest_info.get((frame, int(image.width), int(image.height)))
        return self._latest_info.get(frame)      # compressed: the pipeline checks the size

    def _has_static_info(self, image) -> bool:
        return self.calibration is not None or self._fallback_info(image) is not None

    def add_lidar(self, msg) -> None:
        self.lidar.add(stamp_to_ns(msg.header.stamp), msg)

    def add_stereo(self, msg) -> None:
        self.stereo.add(stamp_to_ns(msg.header.stamp), msg)

    def awaits_companions(self, image) -> bool:
        """True while a companion of ``image`` may still arrive: none matches yet and that
        topic has seen nothing as new as the image (live topics arrive in any order)."""
        stamp = stamp_to_ns(image.header.stamp)
        self._observe_image(stamp)
        static_info = self._has_static_info(image)
        return any(buf.nearest(stamp, self.max_age_ns) is None
                   and (buf.newest_stamp is None or buf.newest_stamp < stamp)
                   and not (buf is self.camera_infos and static_info)
                   for buf in self._buffers())

    def assemble(self, image) -> FrameInputs:
        stamp = stamp_to_ns(image.header.stamp)
        frame = FrameInputs(image=image)
        self._observe_image(stamp)
        if self._unreported_jump_s is not None:
            frame.notes.append(f'clock jumped backwards by {self._unreported_jump_s:.1f} s: '
                               'companions of the old timeline dropped')
            self._unreported_jump_s = None
        info = self.camera_infos.exact(stamp)
        if info is None:    # loosely stamped drivers: the latest one within the age limit
            info = self.camera_infos.latest_within(stamp, self.max_age_ns)
        if info is None:
            info = self._static_info(image, stamp, frame.notes)
        frame.camera_info = info
        if info is None:
            frame.notes.append('no camera_info within the age limit')
        if self.use_lidar:
            frame.lidar = self.lidar.nearest(stamp, self.max_age_ns)
            if frame.lidar is None:
                frame.notes.append('no LiDAR sweep within max_anchor_age')
        if self.use_stereo:
            frame.stereo = self.stereo.nearest(stamp, self.max_age_ns)
            if frame.stereo is None:
                frame.notes.append('no stereo frame within max_anchor_age')
        return frame

    def _static_info(self, image, stamp: int, notes: list[str]):
        """Intrinsics are static: the camera's latest camera_info, else the calibration file."""
        camera = str(image.header.frame_id)
        info = self._fallback_info(image)
        if info is not None:
            self.camera_info_fallbacks += 1
            if ('latest', camera) not in self._said:
                self._said.add(('latest', camera))
                offset = (stamp_to_ns(info.header.stamp) - stamp) * 1e-9
                notes.append(f"camera '{camera}': no camera_info within max_anchor_age of the "
                             f'image; using its latest camera_info (stamped {offset:+.3f} s from '
                             'the image; intrinsics are static). Said once.')
            return info
        if self.calibration is not None:
            self.camera_info_fallbacks += 1
            if ('calibration', camera) not in self._said:
                self._said.add(('calibration', camera))
                notes.append(f"camera '{camera}': no camera_info received; using the "
                             f'calibration file {self.calibration_name}. Said once.')
            return self.calibration(image)
        return None
