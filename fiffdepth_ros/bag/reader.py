"""Reading recordings with ``rosbags``: no ROS installation needed.

Accepts a rosbag2 folder with metadata.yaml (sqlite3 or MCAP), a single ``.mcap`` / ``.db3``
file, or one or several ROS 1 ``.bag`` files of one recording (read together, in time order, via
rosbags' AnyReader). ROS 1 messages are converted to their ROS 2 equivalents on reading (the
``std_msgs/Header`` seq dropped, ``D/K/R/P`` become ``d/k/r/p``, ``tf/tfMessage`` becomes
``tf2_msgs/TFMessage``), so everything downstream sees ROS 2 CDR whatever the input was.
Topic names are normalised to a leading slash: bags converted from ROS 1 hold names like
``raspicam_node/camera/image/compressed``, which name the same topic as the absolute form.

Anything that cannot be opened becomes one :class:`BagReadError` with a message saying what is
wrong, never a traceback from deep inside a storage plugin. Messages come raw (serialised CDR) in
bag-time order; deserialising them is the caller's job, so a corrupt message can be skipped and
counted there without stopping the read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError

SINGLE_FILE_SUFFIXES = ('.mcap', '.db3')
ROS1_SUFFIX = '.bag'
# ROS 1 types whose ROS 2 equivalent has another name (as rosbags-convert renames them).
ROS1_TYPE_RENAMES = {'tf/msg/tfMessage': 'tf2_msgs/msg/TFMessage'}


def normalize_topic(name: str) -> str:
    """'raspicam_node/camera/image' and '/raspicam_node/camera/image' name one topic."""
    return '/' + str(name).strip().lstrip('/')


class BagReadError(RuntimeError):
    """The input cannot be read as a rosbag2 recording; the message says why."""


@dataclass(frozen=True)
class RawMessage:
    topic: str              # normalised (leading slash)
    msgtype: str            # ROS 2 type name
    bag_time_ns: int        # the recorder's receive time (the bag timestamp)
    data: bytes | memoryview | None     # ROS 2 CDR; None: a ROS 1 type with no ROS 2 equivalent
    connection: object      # rosbags Connection (carries msgdef, digest, QoS for --copy-input)


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int


class BagReader:
    """An open input bag. Use as a context manager or call :meth:`close`.

    ``path``: a rosbag2 folder or file, or a ``.bag`` file / a list of ``.bag`` files."""

    def __init__(self, path: str | Path | Sequence[str | Path]):
        paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        if not paths:
            raise BagReadError('no input bag given')
        self.paths = paths
        self.path = paths[0]
        self.is_ros1 = any(p.suffix == ROS1_SUFFIX for p in paths)
        if self.is_ros1:
            from .ros1 import Ros1Source
            self._reader = Ros1Source(paths, BagReadError, _describe)
        elif len(paths) > 1:
            raise BagReadError('several inputs are only accepted for ROS 1 .bag files (one '
                               'recording split into files); a rosbag2 recording is one folder')
        else:
            self._reader = _open(self.path)
        #: set when reading stopped early on a damaged file (the messages before it came through)
        self.read_error: str | None = None

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None and self._reader.is_open:
            self._reader.close()
        self._reader = None

    # ------------------------------------------------------------------ metadata
    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        """Just after the last message (rosbags' convention)."""
        return int(self._reader.end_time)

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def connections(self) -> list:
        return list(self._reader.connections)

    def topics(self) -> dict[str, TopicSummary]:
        """Normalised topic name -> ROS 2 type and message count (a topic recorded with two
        types is skipped: neither type can be trusted for it)."""
        out: dict[str, TopicSummary] = {}
        clashing = set()
        for name, info in self._reader.topics.items():
            topic = normalize_topic(name)
            msgtype = info.msgtype and ROS1_TYPE_RENAMES.get(info.msgtype, info.msgtype)
            if msgtype is None or topic in clashing:
                continue
            if topic in out:         # 'a/b' and '/a/b' both recorded: merge when one type
                if out[topic].msgtype != msgtype:
                    clashing.add(topic)
                    del out[topic]
                    continue
                out[topic] = TopicSummary(topic, msgtype, out[topic].count + int(info.msgcount))
            else:
                out[topic] = TopicSummary(topic, msgtype, int(info.msgcount))
        return out

    # ------------------------------------------------------------------ messages
    def messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None) -> Iterator[RawMessage]:
        """Raw messages of ``topics`` (all when None) with start_ns <= bag time < end_ns, in
        bag-time order.

        A damaged file (a truncated recording, a corrupt chunk) ends the iteration early instead
        of raising: everything readable before the damage is yielded and :attr:`read_error` says
        what happened, so a long recording cut by a power loss is still processed.
        """
        wanted = None if topics is None else {normalize_topic(t) for t in topics}
        connections = [c for c in self._reader.connections
                       if wanted is None or normalize_topic(c.topic) in wanted]
        if not connections:
            return
        names = {id(c): normalize_topic(c.topic) for c in connections}
        last_ns = None
        try:
            for conn, stamp, data in self._reader.messages(connections, start=start_ns,
                                                           stop=end_ns):
                last_ns = int(stamp)
                yield RawMessage(names[id(conn)], conn.msgtype, last_ns, data, conn)
        except Exception as exc:
            # Only the storage plugin runs in this try (consumers' code runs outside the
            # generator), and plugins raise all kinds of errors on damaged bytes (ReaderError,
            # struct.error, apsw.CorruptError, ...).
            self.read_error = (f'input ends early, the rest is unreadable: {_describe(exc)} '
                               f'(at bag time {last_ns})')


def _open(path: Path) -> Reader:
    if not path.exists():
        raise BagReadError(f'input bag {path} does not exist')
    if path.is_dir():
        if not (path / 'metadata.yaml').is_file():
            found = sorted(p.name for p in path.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES)
            hint = (f'; it holds {", ".join(found)}: pass that file instead' if found else '')
            raise BagReadError(f'input {path} is not a rosbag2 bag folder: it has no '
                               f'metadata.yaml{hint}')
    elif path.suffix not in SINGLE_FILE_SUFFIXES:
        raise BagReadError(f"input {path} is not a recording: expected a rosbag2 folder with "
                           f"metadata.yaml, a {' / '.join(SINGLE_FILE_SUFFIXES)} file or ROS 1 "
                           f"{ROS1_SUFFIX} file(s)")
    try:
        reader = Reader(path)
        reader.open()
    except PermissionError as exc:
        raise BagReadError(f'cannot read input bag {path}: permission denied ({exc.filename})') \
            from None
    except Exception as exc:     # ReaderError, sqlite3 errors, struct errors on garbage bytes
        raise BagReadError(f'cannot read input bag {path}: {_describe(exc)}') from None
    return reader


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if not text:
        return name
    if 'end magic' in text:
        # An MCAP without its footer: the recorder was killed before closing the file.
        text += (' The file looks truncated (a recording that was never closed); repair it '
                 'with `mcap recover` or `ros2 bag reindex` first')
    return text if isinstance(exc, ReaderError) else f'{text} ({name})'
