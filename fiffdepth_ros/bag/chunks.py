"""Long recordings in time chunks, with exactly the output of the sequential run.

A frame's model output depends on its image alone, but what follows it does not: the scale
filter carries state from frame to frame, and companions (camera_info, LiDAR sweeps) are matched
across chunk borders. So only the model runs per chunk, in parallel: ``predict_chunk`` gives the
relative depth of every image recorded in a time window (decoded by the pipeline's own
``prepare``, predicted by its own ``predict``). One ordinary sequential run of the whole bag then
replays those outputs in place of the model (:class:`ReplayEstimator`), in the chunks' order,
consuming each chunk as it comes: the reading, matching, scale fit, messages and writing are the
same code in the same order as without chunks, hence the same messages and timestamps.

Each replayed output is checked against a digest of the image it was computed from: a replay
that fell out of step with the bag fails the recording instead of writing wrong depth.
Chunking needs ``--stride 1`` (a stride counts images from the window's start, which a chunk
cannot know without reading everything before it).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..pipeline import DepthPipeline, FrameError, PipelineConfig
from ..sync import FrameInputs
from .frames import Window
from .reader import BagReader


def image_digest(rgb: np.ndarray) -> bytes:
    data = np.ascontiguousarray(rgb)
    return hashlib.blake2b(data.tobytes(), digest_size=12,
                           person=str(data.shape).encode()[:16]).digest()


@dataclass
class ChunkOutput:
    """Model outputs of one chunk's images in bag order: (image digest, relative depth)."""
    window: Window
    frames: list


def chunk_windows(reader: BagReader, window: Window, chunk_s: float) -> list[Window]:
    """The bag-time span of ``window`` (the whole bag when open-ended) cut into pieces of about
    ``chunk_s`` seconds, covering it without gaps or overlaps; one piece when it is shorter
    than two chunks or chunking cannot apply (stride > 1, chunk_s <= 0)."""
    lo = reader.start_ns if window.start_ns is None else max(window.start_ns, reader.start_ns)
    hi = reader.end_ns if window.end_ns is None else min(window.end_ns, reader.end_ns)
    span = hi - lo
    if chunk_s <= 0 or window.stride != 1 or span < 2 * chunk_s * 1e9:
        return [window]
    n = int(round(span / (chunk_s * 1e9)))
    edges = [lo + (span * i) // n for i in range(n + 1)]
    # The first and last pieces stay open-ended like the window (nothing before / after lost).
    edges[0], edges[-1] = window.start_ns, window.end_ns
    return [Window(edges[i], edges[i + 1], 1) for i in range(n)]


def predict_chunk(estimator, reader: BagReader, image_topic: str, typestore, window: Window,
                  batch_size: int = 1, stop: threading.Event | None = None) -> ChunkOutput:
    """Relative depth of the images on ``image_topic`` recorded in ``window`` (bag order).
    Images the bag run will skip (undeserialisable, undecodable) are skipped here too."""
    pipeline = DepthPipeline(estimator, PipelineConfig(), backend=None)
    out: list = []
    pending: list = []

    def run():
        if pending:
            for frame, rel in zip(pending, pipeline.predict(pending)):
                out.append((image_digest(frame.rgb), rel))
            pending.clear()

    for raw in reader.messages([image_topic], window.start_ns, window.end_ns):
        if stop is not None and stop.is_set():
            break
        try:
            msg = typestore.deserialize_cdr(raw.data, raw.msgtype)
            frame = pipeline.prepare(FrameInputs(image=msg))
        except FrameError:
            continue
        except Exception:      # corrupt bytes: the bag run counts and skips it
            continue
        if pending and (frame.rgb.shape != pending[0].rgb.shape or len(pending) >= batch_size):
            run()
        pending.append(frame)
    if stop is None or not stop.is_set():
        run()
    if reader.read_error:
        reader.read_error = None       # the bag run reports a damaged tail itself
    return ChunkOutput(window, out)


class ReplayEstimator:
    """Stands in for the model in the sequential run of a chunked bag: gives back the chunks'
    outputs in order. ``chunks`` yields ChunkOutput in window order (it may compute them
    lazily: consumed one at a time, only a few are held). On a digest mismatch it records
    ``failure`` and sets ``stop``: the run ends, the recording fails, nothing wrong is written.
    """

    def __init__(self, chunks: Iterator[ChunkOutput], stop: threading.Event, device=None):
        self._chunks = iter(chunks)
        self._current: Iterator = iter(())
        self.stop = stop
        self.failure = ''
        self.device = device
        self.replayed = 0

    def _next(self):
        while True:
            item = next(self._current, None)
            if item is not None:
                return item
            try:
                chunk = next(self._chunks, None)
            except Exception as exc:      # a chunk's model run was lost (after its retries)
                self._fail(f'model outputs of a chunk lost: {type(exc).__name__}: '
                           + str(exc).split(chr(10))[0][:200])
            if chunk is None:
                return None
            self._current = iter(chunk.frames)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        item = self._next()
        if item is None or item[0] != image_digest(rgb):
            self._fail('chunked run out of step with the bag at replayed frame '
                       f'{self.replayed}: ' + ('no model output left' if item is None
                                               else 'image digest differs'))
        self.replayed += 1
        relative = item[1]
        # Arrays from Ray's object store are read-only views; the pipeline gets its own.
        return relative if relative.flags.writeable else relative.copy()

    def _fail(self, why: str):
        self.failure = self.failure or why
        self.stop.set()
        raise RuntimeError(self.failure)

    def predict_batch(self, images: list) -> list:
        return [self.predict(rgb) for rgb in images]
