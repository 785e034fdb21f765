"""Two-stage frame worker: the model on one thread, finishing and publishing on another.

No ROS in here (the node plugs its stages in; tests drive it with plain callables).

    callbacks --put--> LatestOnly --take--> front thread: match, decode, model (frame N+1)
                                               |  hand_off (depth 1, blocks while full)
                                               v
                                            back thread: scale, messages, publish (frame N)

Frames are dropped only before the model (LatestOnly replaces a pending input): once the
model has spent time on a frame it is finished. The hand-off holds one frame; the front thread
waits when the back stage is still busy with the previous one, which pushes back on the input
slot instead of dropping finished model work; the front takes its next input only once the
slot is free (``wait_free``), so the model starts on the newest input, not one that will
wait behind a full slot. Torch, numpy, OpenCV and the DDS serialisation
release the GIL in their heavy parts, so the two threads overlap on two cores (and a GPU model
overlaps with CPU finishing on one).

``overlapped=False`` runs the back stage inline on the front thread: the sequential worker the
node had before, kept for side-by-side benchmarks and as a fallback.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class LatestOnly:
    """A slot of one item: a new item replaces a pending one (latest-only input)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._has_item = False
        self._closed = False

    def put(self, item) -> bool:
        """Store ``item``; True if it replaced one that was not taken yet (a dropped frame)."""
        with self._cond:
            replaced = self._has_item
            self._item, self._has_item = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None):
        """The pending item (and empty the slot); None once closed or after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._has_item and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(timeout=0.2 if left is None else min(left, 0.2))
            if self._closed:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class HandOff:
    """Runs ``back(item)`` for each item handed off, on its own thread (``overlapped``) or
    inline on the caller's thread. At most one item waits while another is being finished.

    ``on_error(exc)`` receives exceptions ``back`` raises (the thread keeps running).
    """

    def __init__(self, back: Callable[[Any], None], overlapped: bool = True,
                 on_error: Callable[[BaseException], None] | None = None,
                 name: str = 'fiffdepth-finish'):
        self.back = back
        self.overlapped = bool(overlapped)
        self.on_error = on_error
        self._cond = threading.Condition()
        self._item: Any = None
        self._has_item = False
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.overlapped:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    @property
    def mode(self) -> str:
        return 'overlapped' if self.overlapped else 'sequential'

    def hand_off(self, item) -> float:
        """Give ``item`` to the back stage; returns the seconds the caller was held up: waiting
        for the slot (overlapped) or running the back stage itself (sequential)."""
        t0 = time.perf_counter()
        if not self.overlapped:
            self._run(item)
            return time.perf_counter() - t0
        with self._cond:
            while self._has_item and not self._closed:
                self._cond.wait(timeout=0.2)
            if self._closed:
                return time.perf_counter() - t0
            self._item, self._has_item = item, True
            self._cond.notify_all()
        return time.perf_counter() - t0

    def wait_free(self, timeout: float | None = None) -> bool:
        """Until the slot is empty (the back stage may still be finishing a frame). Taking
        the next input only then keeps at most one finished-by-the-model frame waiting, so the
        input the model starts on is the newest one. False on timeout or when closed."""
        return self._wait(lambda: self._has_item, timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until nothing is waiting or being finished (e.g. before a configuration change, so
        that no frame sees half of it). False on timeout or when closed."""
        return self._wait(lambda: self._has_item or self._busy, timeout)

    def _wait(self, pending: Callable[[], bool], timeout: float | None) -> bool:
        if not self.overlapped:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while pending() and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=0.2 if left is None else min(left, 0.2))
            return not self._closed

    def close(self, timeout: float | None = None) -> None:
        """Stop the back thread (after the item it is finishing); a waiting item is dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._has_item and not self._closed:
                    self._cond.wait(timeout=0.2)
                if self._closed:
                    return
                item, self._item, self._has_item = self._item, None, False
                self._busy = True
                self._cond.notify_all()             # the slot is free: the front may go on
            try:
                self._run(item)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _run(self, item) -> None:
        try:
            self.back(item)
        except Exception as exc:        # a bad frame must not end the worker
            if self.on_error is None:
                raise
            self.on_error(exc)
