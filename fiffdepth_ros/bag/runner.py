"""Drives the shared DepthPipeline over a bag with reading, inference and writing overlapped.

Four stages, each in its own thread, joined by small bounded queues (the prefetch):

  read     bag -> deserialise -> look-ahead match (FrameSource) -> pipeline.prepare (decode)
  infer    batches of same-size frames -> pipeline.predict (the model; the caller's thread)
  finish   pipeline.finish (scale fit, messages; in frame order: it holds the temporal filter)
           -> serialise (CDR)
  write    output bag

Items keep bag order end to end, so the output bag is written in time order with input copies
interleaved. Torch, OpenCV, numpy and file writes release the GIL, so the stages overlap on a
multi-core machine: finishing and writing a 640x480 frame (an organised xyzrgb cloud is ~10 MB)
take tens of milliseconds each, as much as a fast model's forward pass.

The write thread owns the output bag from creation to close (sqlite3 connections cannot change
threads) and closes it whatever happens, so the output is always a valid bag. It writes a
frame's messages together: an interrupted run never holds half a frame.

Stopping (Ctrl-C sets ``stop``): reading stops, frames not yet given to the model are dropped,
the batch in the model is finished and written, and the bag is closed.

The stages' per-item steps (:func:`prepare_item`, :class:`Batcher`, :class:`OutputStage`) are
also what the Ray fleet runs in its reader and writer actors (bag/fleet.py), so a bag gets the
same batches and the same messages there.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..pipeline import DepthPipeline, FrameError, PreparedFrame
from .frames import CopyItem, FrameItem, FrameSource, SkipItem
from .summary import RunStats
from .topics import OUTPUT_TYPES
from .writer import BagWriter

_END = object()
# A batch is run early when this many copies queue up behind its first frame, so copies of a
# busy input (IMU at hundreds of Hz) never pile up in memory waiting for a full batch.
_MAX_HELD_ITEMS = 512


@dataclass
class _Prepared:
    frame: PreparedFrame
    bag_time_ns: int


@dataclass
class _Inferred:
    frame: PreparedFrame
    relative: Any
    bag_time_ns: int


@dataclass
class _Serialized:
    """A finished frame: (topic, CDR bytes) of each output, all written at the image's bag time."""
    bag_time_ns: int
    messages: list


class _Link:
    """A bounded queue between two stages. Puts wake up to notice a stop and give up once the
    consumer has ended (it will never take them), so no stage can hang on a dead neighbour."""

    def __init__(self, size: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = stop
        self.consumer_done = threading.Event()

    def put(self, item, force: bool = False) -> bool:
        """``force``: put even when stopping (end markers, work already done)."""
        while not self.consumer_done.is_set():
            if not force and self.stop.is_set():
                return False
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        return self.queue.get()


def prepare_item(pipeline: DepthPipeline, item):
    """The read stage's step: a FrameItem decoded by the pipeline (or skipped, with why)."""
    if isinstance(item, FrameItem):
        try:
            return _Prepared(pipeline.prepare(item.inputs), item.bag_time_ns)
        except FrameError as exc:
            return SkipItem(str(exc), item.bag_time_ns)
    return item


def inference_failure(exc: BaseException) -> str:
    """Why a batch's frames were skipped when the model raised (e.g. out of memory)."""
    return f'inference failed: {type(exc).__name__}: {exc}'.split('\n')[0][:200]


class Batcher:
    """Groups read items, in bag order, into the model's batches: up to ``batch_size`` frames of
    one image size, with the items between them. ``add`` returns the groups that are complete
    ((items, frames) pairs; a group without frames passes straight on), ``flush`` the rest."""

    def __init__(self, batch_size: int):
        self.batch_size = max(1, int(batch_size))
        self.held: list = []
        self.frames: list[_Prepared] = []

    def _take(self) -> tuple[list, list]:
        group = (self.held, self.frames)
        self.held, self.frames = [], []
        return group

    def add(self, item) -> list[tuple[list, list]]:
        ready = []
        if isinstance(item, _Prepared):
            if self.frames and item.frame.rgb.shape != self.frames[0].frame.rgb.shape:
                ready.append(self._take())              # a batch holds one image size
            self.held.append(item)
            self.frames.append(item)
            if len(self.frames) >= self.batch_size:
                ready.append(self._take())
        else:
            self.held.append(item)
            if not self.frames or len(self.held) >= _MAX_HELD_ITEMS:
                ready.append(self._take())
        return ready

    def flush(self) -> list[tuple[list, list]]:
        return [self._take()] if self.held else []


class OutputStage:
    """The finish and write stages' steps: ``finish_item`` (scale fit, messages, CDR; in bag
    order: the pipeline holds the temporal filter) and ``write_item`` into the bag that
    ``open`` creates and ``close`` closes (one thread calls open, write_item and close)."""

    def __init__(self, pipeline: DepthPipeline, open_writer: Callable[[], BagWriter],
                 topics_by_output: dict[str, str], stats: RunStats):
        self.pipeline = pipeline
        self.open_writer = open_writer
        self.topics_by_output = topics_by_output
        self.outputs = tuple(topics_by_output)
        self.stats = stats
        self.writer: BagWriter | None = None

    def finish_item(self, item):
        if isinstance(item, _Inferred):
            item = self._finish_frame(item)
        if isinstance(item, SkipItem):
            self.stats.skipped[item.reason] += 1
        return item

    def _finish_frame(self, item: _Inferred) -> _Serialized | SkipItem:
        t0 = time.perf_counter()
        try:
            result = self.pipeline.finish(item.frame, item.relative, self.outputs)
        except Exception as exc:          # a frame the scale fit or conversions cannot take
            return SkipItem(f'frame failed: {type(exc).__name__}: {exc}'[:200], item.bag_time_ns)
        serialize = self.pipeline.backend.typestore.serialize_cdr
        messages = [(self.topics_by_output[name], serialize(msg, OUTPUT_TYPES[name]))
                    for name, msg in result.messages.items()]
        self.stats.record_result(result)
        self.stats.stage_s['finish'] += time.perf_counter() - t0
        return _Serialized(item.bag_time_ns, messages)

    def open(self) -> None:
        self.writer = self.open_writer()

    def write_item(self, item) -> bool:
        """True when ``item`` was a selected frame (written or skipped): one frame of progress."""
        t0 = time.perf_counter()
        if isinstance(item, CopyItem):
            if not self.writer.copy(item.raw):
                self.stats.copy_problems.update(self.writer.skipped_copies)
        elif isinstance(item, _Serialized):
            for topic, data in item.messages:
                self.writer.write_serialized(topic, item.bag_time_ns, data)
        self.stats.stage_s['write'] += time.perf_counter() - t0
        return isinstance(item, (_Serialized, SkipItem))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()       # always: a closed bag is a valid bag
            self.stats.written = dict(self.writer.counts)


class BagProcessor:
    """One run over a FrameSource into a bag made by ``open_writer``. ``run`` returns RunStats."""

    def __init__(self, source: FrameSource, pipeline: DepthPipeline,
                 open_writer: Callable[[], BagWriter], topics_by_output: dict[str, str],
                 batch_size: int = 1, prefetch: int = 8, stop: threading.Event | None = None,
                 progress=None):
        self.source = source
        self.pipeline = pipeline
        self.open_writer = open_writer
        self.topics_by_output = topics_by_output
        self.outputs = tuple(topics_by_output)
        self.batch_size = max(1, int(batch_size))
        self.stop = stop or threading.Event()
        self.progress = progress          # tqdm-like (update(n)) or None
        self.stats = RunStats(read=source.stats)
        # Its bag is created, written and closed by the write thread.
        self.output = OutputStage(pipeline, open_writer, topics_by_output, self.stats)
        size = max(prefetch, self.batch_size) + 2
        self._to_infer = _Link(size, self.stop)
        self._to_finish = _Link(size, self.stop)
        self._to_write = _Link(size, self.stop)
        self._errors: list[BaseException] = []

    @property
    def failed(self) -> bool:
        """A stage raised (the run stopped for that, not for Ctrl-C)."""
        return bool(self._errors)

    # ------------------------------------------------------------------ run
    def run(self) -> RunStats:
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=self._guard, args=(self._read, None, self._to_infer),
                             name='bag-read', daemon=True),
            threading.Thread(target=self._guard, args=(self._finish, self._to_finish,
                                                       self._to_write), name='bag-finish',
                             daemon=True),
            # Not a daemon: the interpreter never exits with the output bag half closed.
            threading.Thread(target=self._guard, args=(self._write, self._to_write, None),
                             name='bag-write'),
        ]
        for thread in threads:
            thread.start()
        try:
            self._infer()
        except BaseException as exc:
            self._errors.append(exc)
            self.stop.set()
        finally:
            self._to_infer.consumer_done.set()      # the reader's puts give up from now on
            self._to_finish.put(_END, force=True)
            threads[2].join()                       # the bag is closed after this
            self.stop.set()                         # let the reader end if it still reads
            threads[0].join()
            threads[1].join()
        self.stats.wall_s = time.perf_counter() - t0
        self.stats.read_error = self.source.reader.read_error
        if self._errors:
            raise self._errors[0]
        return self.stats

    def _guard(self, stage, inbox: _Link | None, outbox: _Link | None) -> None:
        """Run a thread's stage; whatever happens, tell its neighbours it has ended."""
        try:
            stage()
        except BaseException as exc:
            self._errors.append(exc)
            self.stop.set()
        finally:
            if inbox is not None:
                inbox.consumer_done.set()
            if outbox is not None:
                outbox.put(_END, force=True)

    # ------------------------------------------------------------------ stages
    def _read(self) -> None:
        busy_since = time.perf_counter()
        for item in self.source:
            item = prepare_item(self.pipeline, item)
            self.stats.stage_s['read+decode'] += time.perf_counter() - busy_since
            if not self._to_infer.put(item):
                return
            busy_since = time.perf_counter()

    def _infer(self) -> None:
        batcher = Batcher(self.batch_size)    # items in bag order, waiting for the batch to run
        while True:
            item = self._next_for_inference()
            if item is _END:
                if not self.stop.is_set():
                    for held, frames in batcher.flush():
                        self._run_batch(held, frames)
                return
            for held, frames in batcher.add(item):
                self._run_batch(held, frames)

    def _next_for_inference(self):
        """The next read item; _END at the end of the input or once stopping."""
        while not self.stop.is_set():
            try:
                return self._to_infer.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _run_batch(self, held: list, frames: list[_Prepared]) -> None:
        results: dict[int, Any] = {}
        if frames:
            t0 = time.perf_counter()
            try:
                relatives = self.pipeline.predict([p.frame for p in frames])
                for p, rel in zip(frames, relatives):
                    results[id(p)] = _Inferred(p.frame, rel, p.bag_time_ns)
            except Exception as exc:      # e.g. out of memory: these frames are lost, not the run
                reason = inference_failure(exc)
                for p in frames:
                    results[id(p)] = SkipItem(reason, p.bag_time_ns)
            self.stats.model_s += time.perf_counter() - t0
        for item in held:
            self._to_finish.put(results.get(id(item), item), force=True)
        held.clear()
        frames.clear()

    def _finish(self) -> None:
        while (item := self._to_finish.get()) is not _END:
            self._to_write.put(self.output.finish_item(item), force=True)

    def _write(self) -> None:
        self.output.open()
        try:
            while (item := self._to_write.get()) is not _END:
                if self.output.write_item(item) and self.progress is not None:
                    self.progress.update(1)
        finally:
            self.output.close()       # always: a closed bag is a valid bag
