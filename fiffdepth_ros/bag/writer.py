"""Writing the output rosbag2 bag (MCAP by default, or sqlite3) with ``rosbags``.

What makes the bag one that ``ros2 bag info`` / ``ros2 bag play`` accept as if ``ros2 bag record``
had written it: every connection carries its message definition and type hash, and the QoS a
normal publisher offers (what ``ros2 bag play`` re-publishes with); rosbags writes metadata.yaml
and the storage index on :meth:`BagWriter.close`, which therefore must always run (the bag
processor closes it on errors and on Ctrl-C too). Copied input messages keep their serialised
bytes, connection QoS and definitions untouched.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer

from .reader import RawMessage

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# metadata.yaml version. 8 is read by ros2 bag from Humble to Kilted: readers before version 9
# parse offered_qos_profiles as a YAML string, which version 9 replaced with a list.
DEFAULT_BAG_VERSION = 8
# What rclcpp reports for "no deadline / lifespan / lease": the values `ros2 bag record` stores.
_INFINITE = QosTime(9223372036, 854775807)


class BagWriteError(RuntimeError):
    """The output bag cannot be created; the message says why and what to do."""


def publisher_qos(reliability: str = 'reliable', depth: int = 1,
                  transient_local: bool = False) -> Qos:
    """QoS of a normal publisher: keep last ``depth``, volatile (transient-local for a latched
    topic), ``reliability`` ('reliable' or 'best_effort', the node's qos_output_reliability
    values)."""
    durability = QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability[reliability.upper()],
               durability=durability, deadline=_INFINITE, lifespan=_INFINITE,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INFINITE,
               avoid_ros_namespace_conventions=False)


def _looks_like_bag(path: Path) -> bool:
    """A folder rosbag2 wrote: metadata.yaml and storage files only (safe to delete)."""
    if not path.is_dir():
        return False
    names = [p for p in path.iterdir()]
    return (path / 'metadata.yaml').is_file() and all(
        p.is_file() and (p.name == 'metadata.yaml' or '.mcap' in p.name or '.db3' in p.name)
        for p in names)


def check_output(output: str | Path, overwrite: bool, input_path: str | Path) -> Path:
    """Refuse outputs that would lose data, before any work is done. Returns the output path.

    An existing output is replaced only with ``overwrite``, and only when it is a bag folder
    (never an arbitrary folder or file, never the input itself)."""
    out = Path(output)
    if out.suffix in ('.mcap', '.db3'):
        raise BagWriteError(f'output {out} names a storage file; give the bag folder to create '
                            f'(e.g. {out.with_suffix("")}): rosbag2 writes metadata.yaml and '
                            'the storage file inside it')
    src = Path(input_path).resolve()
    dst = out.resolve()
    if dst == src or dst in src.parents:
        raise BagWriteError(f'output {out} would replace the input bag {input_path}')
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise BagWriteError(f'output {out} exists already; pass --overwrite to replace it')
        if not _looks_like_bag(out):
            raise BagWriteError(f'output {out} exists and is not a rosbag2 bag folder; refusing '
                                'to delete it even with --overwrite')
    if not out.parent.exists():
        raise BagWriteError(f'the folder of output {out} does not exist')
    return out


class BagWriter:
    """An output bag being written. Single-threaded: one thread calls everything."""

    def __init__(self, path: str | Path, typestore, storage: str = 'mcap',
                 overwrite: bool = False, version: int = DEFAULT_BAG_VERSION):
        if storage not in STORAGES:
            raise BagWriteError(f"storage '{storage}' is not supported: use "
                                f"{' or '.join(STORAGES)}")
        if version not in (8, 9):
            raise BagWriteError(f'bag version {version} is not supported: use 8 or 9')
        self.path = Path(path)
        self.typestore = typestore
        if overwrite and _looks_like_bag(self.path):
            shutil.rmtree(self.path)
        self._writer = Writer(self.path, version=version, storage_plugin=STORAGES[storage])
        try:
            self._writer.open()
        except Exception as exc:
            raise BagWriteError(f'cannot create output bag {self.path}: {exc}') from None
        self._topics: dict[str, Any] = {}     # output topic -> (connection, msgtype)
        self._copies: dict[tuple, Any] = {}   # (topic, type) of an input -> output connection
        self.counts: dict[str, int] = {}
        self.skipped_copies: dict[str, str] = {}    # topic -> why it could not be copied

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def add_topic(self, topic: str, msgtype: str, qos: Qos) -> None:
        """An output topic of a type the typestore knows (definition and hash generated)."""
        conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore,
                                           offered_qos_profiles=[qos])
        self._topics[topic] = (conn, msgtype)
        self.counts.setdefault(topic, 0)

    def write(self, topic: str, bag_time_ns: int, msg) -> None:
        conn, msgtype = self._topics[topic]
        self.write_serialized(topic, bag_time_ns, self.typestore.serialize_cdr(msg, msgtype))

    def write_serialized(self, topic: str, bag_time_ns: int, data) -> None:
        conn, _ = self._topics[topic]
        self._writer.write(conn, int(bag_time_ns), data)
        self.counts[topic] += 1

    def copy(self, raw: RawMessage) -> bool:
        """Copy an input message as it is (bytes, definition, QoS). False if its connection
        cannot be re-created (a type with no stored definition that the typestore lacks)."""
        key = (raw.topic, raw.msgtype)
        conn = self._copies.get(key)
        if conn is None:
            if raw.topic in self.skipped_copies:
                return False
            if raw.data is None:           # a ROS 1 type with no ROS 2 equivalent
                self.skipped_copies[raw.topic] = (f'ROS 1 type {raw.msgtype} has no ROS 2 '
                                                  'equivalent here')
                return False
            conn = self._copy_connection(raw.connection, raw.topic)
            if conn is None:
                return False
            self._copies[key] = conn
        self._writer.write(conn, raw.bag_time_ns, raw.data)
        self.counts[raw.topic] = self.counts.get(raw.topic, 0) + 1
        return True

    def _copy_connection(self, src, topic: str):
        """``topic``: the input's normalised name (a leading slash, as ROS 2 records it)."""
        qos = list(getattr(src.ext, 'offered_qos_profiles', []) or [])
        fmt = getattr(src.ext, 'serialization_format', 'cdr')
        msgdef, digest = src.msgdef.data, src.digest
        if not (msgdef and digest):
            # Older bags (sqlite3 before Iron) and ROS 1 inputs store neither: generate both
            # from the typestore.
            if src.msgtype not in self.typestore.types:
                self.skipped_copies[topic] = (f'type {src.msgtype} has no stored definition '
                                              'and is unknown here')
                return None
            return self._writer.add_connection(topic, src.msgtype, typestore=self.typestore,
                                               serialization_format=fmt,
                                               offered_qos_profiles=qos)
        return self._writer.add_connection(topic, src.msgtype, msgdef=msgdef, rihs01=digest,
                                           serialization_format=fmt, offered_qos_profiles=qos)

    def close(self) -> None:
        """Write the index and metadata.yaml: the bag is complete and readable after this."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
