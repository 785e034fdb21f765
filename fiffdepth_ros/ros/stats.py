"""Rates, latencies and counters the node reports on /diagnostics (no ROS imports).

Latency percentiles are taken over a sliding window of wall time that leaves out the start-up
(the first frames pay for lazy initialisation: allocator, kernels, DDS discovery). A window of
the last N frames instead mixes whatever happened N frames ago into every report, and its p99
over 100 samples is almost the maximum: numpy's p99 of 100 values is v[98] + 0.01 (v[99] -
v[98]), so it is driven by the two largest samples.

Two latencies are kept: image stamp -> publish (what a consumer sees, meaningful only when the
camera's clock is this machine's clock) and receipt -> publish on the monotonic clock (what the
node itself adds; immune to clock steps, unsynchronised cameras and replayed bags).
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over a sliding window of wall-clock time."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-9)
            return (len(self._times) - 1) / span


class SlidingWindow:
    """Samples of the last ``window_s`` seconds (monotonic), without the start-up.

    Samples recorded within ``warmup_s`` of the first one are counted but not kept. At most
    ``max_samples`` are kept (the newest).
    """

    def __init__(self, window_s: float = 10.0, warmup_s: float = 5.0, max_samples: int = 2000):
        self.window_s = float(window_s)
        self.warmup_s = float(warmup_s)
        self._samples: deque[tuple[float, float]] = deque(maxlen=int(max_samples))
        self._first: float | None = None
        self.warmup_samples = 0          # left out as start-up
        self._lock = threading.Lock()

    def add(self, value: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._first is None:
                self._first = now
            if now - self._first < self.warmup_s:
                self.warmup_samples += 1
                return
            self._samples.append((now, float(value)))

    def values(self, now: float | None = None) -> np.ndarray:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._samples and self._samples[0][0] < now - self.window_s:
                self._samples.popleft()
            return np.array([v for _, v in self._samples], np.float64)

    def percentiles(self, qs=(50, 99), now: float | None = None) -> list[float] | None:
        values = self.values(now)
        if not len(values):
            return None
        return [float(v) for v in np.percentile(values, qs)]

    def __len__(self) -> int:
        return len(self.values())


class NodeStats:
    """Everything the diagnostics message reports; updated from any thread."""

    def __init__(self, window: int = 100, window_s: float = 10.0, warmup_s: float = 5.0):
        self.inputs = RateMeter()
        self.outputs = RateMeter()
        # image stamp -> publish, and receipt -> publish (monotonic), milliseconds
        self.latency_ms = SlidingWindow(window_s, warmup_s)
        self.node_latency_ms = SlidingWindow(window_s, warmup_s)
        self.inference_ms: deque[float] = deque(maxlen=window)
        self.overhead_ms: deque[float] = deque(maxlen=window)       # all but the forward pass
        self.critical_ms: deque[float] = deque(maxlen=window)       # what delays the next inference
        # Where the overhead goes: stage name -> recent milliseconds.
        self.stage_ms: dict[str, deque[float]] = {}
        # Publish cost per output against its size: output -> recent ms, last data bytes.
        self.publish_ms: dict[str, deque[float]] = {}
        self.publish_bytes: dict[str, int] = {}
        self._window = window
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0          # replaced by a newer frame before inference started
        self.skipped = 0          # bad input, model error, out of memory
        self.idle = 0             # nobody subscribed to any output
        self.last_report = None
        self.last_metric = False
        self.mode = ''            # 'overlapped' or 'sequential' (the node's worker layout)

    def count(self, name: str, n: int = 1) -> None:
        """Increment a counter from any thread."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def add_stages(self, timings: dict[str, float]) -> None:
        with self._lock:
            for name, ms in timings.items():
                self.stage_ms.setdefault(name, deque(maxlen=self._window)).append(ms)

    def add_publish(self, output: str, nbytes: int, ms: float) -> None:
        with self._lock:
            self.publish_bytes[output] = nbytes
            self.publish_ms.setdefault(output, deque(maxlen=self._window)).append(ms)

    def summary(self) -> dict[str, str]:
        def med(values):
            return f'{np.median(values):.1f}' if len(values) else 'n/a'

        with self._lock:
            stages = {name: list(v) for name, v in self.stage_ms.items() if v}
            inference, overhead = list(self.inference_ms), list(self.overhead_ms)
            critical = list(self.critical_ms)
            publish = ', '.join(f'{name} {self.publish_bytes.get(name, 0) / 1e6:.2f} MB '
                                f'{np.median(v):.2f} ms' for name, v in self.publish_ms.items()
                                if v) or 'n/a'
        lat = self.latency_ms.percentiles((50, 99, 100))
        node_lat = self.node_latency_ms.percentiles((50, 99, 100))
        na = ('n/a', 'n/a', 'n/a')
        lat_s = [f'{v:.1f}' for v in lat] if lat else na
        node_s = [f'{v:.1f}' for v in node_lat] if node_lat else na
        out = {
            'input rate (Hz)': f'{self.inputs.rate():.2f}',
            'output rate (Hz)': f'{self.outputs.rate():.2f}',
            'latency median (ms)': lat_s[0],
            'latency p99 (ms)': lat_s[1],
            'latency max (ms)': lat_s[2],
            'node latency median (ms)': node_s[0],
            'node latency p99 (ms)': node_s[1],
            'latency window': (f'last {self.latency_ms.window_s:g} s, {len(self.latency_ms)} '
                               f'frames; first {self.latency_ms.warmup_s:g} s '
                               f'({self.latency_ms.warmup_samples} frames) left out'),
            'inference median (ms)': med(inference),
            'overhead median (ms)': med(overhead),
            'critical path overhead median (ms)': med(critical),
            'stage medians (ms)': ', '.join(f'{name} {np.median(v):.1f}'
                                            for name, v in stages.items()) or 'n/a',
            'publish medians (data size, ms)': publish,
            'frames received': str(self.received),
            'frames processed': str(self.processed),
            'frames dropped': str(self.dropped),
            'frames skipped': str(self.skipped),
            'metric': str(self.last_metric).lower(),
        }
        if self.mode:
            out['worker'] = self.mode
        report = self.last_report
        if report is not None:
            out.update({
                'anchors offered': str(report.anchors_offered),
                'anchors used': str(report.anchors_used),
                'scale': f'{report.scale:.6g}',
                'shift': f'{report.shift:.6g}',
                'fit status': report.status,
                'fit residual': f'{report.residual:.4g}',
            })
        return out
