"""ROS 1 ``.bag`` input: one or several files of one recording, as ROS 2 messages.

rosbags' AnyReader opens the files together (messages merged in time order) and knows each
connection's ROS 1 definition. Each connection gets a ROS 2 view: the ROS 2 type of the same
name (after :data:`ROS1_TYPE_RENAMES`), no stored definition (the writer generates the ROS 2 one
from its typestore, as for old sqlite3 bags) and the QoS a ROS 2 publisher would offer (latched
topics transient-local). Messages are converted on reading with rosbags' own converter functions:
a plain re-serialisation when the wire layouts agree (the header's seq is dropped), a field by
field migration when they differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

from rosbags.convert.converter import is_same_wireformat, migrate_message
from rosbags.highlevel import AnyReader
from rosbags.interfaces import (Connection, ConnectionExtRosbag2, MessageDefinition,
                                MessageDefinitionFormat)

from .reader import ROS1_TYPE_RENAMES


@dataclass(frozen=True)
class _TopicInfo:
    msgtype: str | None
    msgcount: int


class Ros1Source:
    """The subset of the rosbag2 Reader interface that BagReader uses, over ROS 1 files."""

    def __init__(self, paths: Sequence[Path], error: type, describe: Callable):
        from rosbags.typesys import Stores, get_typestore
        for path in paths:
            if not path.is_file():
                raise error(f'input bag {path} does not exist' if not path.exists()
                            else f'input {path} is not a ROS 1 .bag file')
            if path.suffix != '.bag':
                raise error(f'input {path}: several inputs must all be ROS 1 .bag files')
        self._reader = AnyReader(list(paths))
        try:
            self._reader.open()
        except PermissionError as exc:
            raise error(f'cannot read input bag {paths[0]}: permission denied '
                        f'({exc.filename})') from None
        except Exception as exc:          # AnyReaderError, struct errors on garbage bytes
            names = ', '.join(str(p) for p in paths)
            raise error(f'cannot read ROS 1 input {names}: {describe(exc)}') from None
        self.is_open = True
        # The same store as the rest of the package writes (RosbagsBackend's default).
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._views: dict[int, Connection] = {}
        self._originals: dict[int, Connection] = {}
        self._converters: dict[int, Callable | None] = {}
        self._cache: dict = {}
        for conn in self._reader.connections:
            view = self._view(conn)
            self._views[id(conn)] = view
            self._originals[id(view)] = conn

    # ------------------------------------------------------------------ Reader interface
    @property
    def connections(self) -> list[Connection]:
        return list(self._views.values())

    @property
    def start_time(self) -> int:
        return self._reader.start_time

    @property
    def end_time(self) -> int:
        return self._reader.end_time

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    @property
    def topics(self) -> dict[str, _TopicInfo]:
        return {name: _TopicInfo(info.msgtype and ROS1_TYPE_RENAMES.get(info.msgtype,
                                                                        info.msgtype),
                                 int(info.msgcount))
                for name, info in self._reader.topics.items()}

    def messages(self, connections, start=None, stop=None
                 ) -> Iterator[tuple[Connection, int, bytes | None]]:
        originals = [self._originals[id(c)] for c in connections]
        for conn, stamp, data in self._reader.messages(originals, start=start, stop=stop):
            convert = self._converter(conn)
            if convert is not None:
                try:
                    data = convert(data)
                except Exception:     # damaged bytes: empty data, counted as corrupt downstream
                    data = b''
            yield self._views[id(conn)], stamp, None if convert is None else data

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self._reader.close()

    # ------------------------------------------------------------------ conversion
    def _view(self, conn: Connection) -> Connection:
        from .writer import publisher_qos
        latched = bool(getattr(conn.ext, 'latching', 0))
        qos = publisher_qos('reliable', 1, transient_local=latched)
        return Connection(id=conn.id, topic=conn.topic,
                          msgtype=ROS1_TYPE_RENAMES.get(conn.msgtype, conn.msgtype),
                          msgdef=MessageDefinition(MessageDefinitionFormat.NONE, ''), digest='',
                          msgcount=conn.msgcount, ext=ConnectionExtRosbag2('cdr', [qos]),
                          owner=None)

    def _converter(self, conn: Connection) -> Callable | None:
        """ROS 1 bytes -> ROS 2 CDR for this connection; None when there is no ROS 2 type."""
        key = id(conn)
        if key in self._converters:
            return self._converters[key]
        src, dst = self._reader.typestore, self.typestore
        src_type = conn.msgtype
        dst_type = ROS1_TYPE_RENAMES.get(src_type, src_type)
        convert = None
        if dst_type in dst.fielddefs:
            try:
                if is_same_wireformat(src, dst, src_type, dst_type):
                    convert = partial(dst.ros1_to_cdr, typename=dst_type)
                else:
                    convert = partial(self._migrate, src_type, dst_type)
            except KeyError:             # a nested type the ROS 2 store does not have
                convert = None
        self._converters[key] = convert
        return convert

    def _migrate(self, src_type: str, dst_type: str, data) -> memoryview:
        src, dst = self._reader.typestore, self.typestore
        msg = migrate_message(src, dst, src_type, dst_type, self._cache,
                              src.deserialize_ros1(data, src_type))
        return dst.serialize_cdr(msg, dst_type)
