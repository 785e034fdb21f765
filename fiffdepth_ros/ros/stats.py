"""Rates, latencies and counters the node reports on /diagnostics (no ROS imports)."""
from __future__ import annotations

import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over a sliding window of wall-clock time."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-9)
        return (len(self._times) - 1) / span if span > 0 else 0.0


class NodeStats:
    """Everything the diagnostics message reports; updated from any thread."""

    def __init__(self, window: int = 100):
        self.inputs = RateMeter()
        self.outputs = RateMeter()
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.inference_ms: deque[float] = deque(maxlen=window)
        self.overhead_ms: deque[float] = deque(maxlen=window)
        # Where the overhead goes: stage name -> recent milliseconds.
        self.stage_ms: dict[str, deque[float]] = {}
        self.received = 0
        self.processed = 0
        self.dropped = 0          # replaced by a newer frame before inference started
        self.skipped = 0          # bad input, model error, out of memory
        self.idle = 0             # nobody subscribed to any output
        self.last_report = None
        self.last_metric = False

    def add_stages(self, timings: dict[str, float]) -> None:
        for name, ms in timings.items():
            self.stage_ms.setdefault(name, deque(maxlen=self.latency_ms.maxlen)).append(ms)

    def summary(self) -> dict[str, str]:
        def med(values):
            return f'{np.median(values):.1f}' if values else 'n/a'

        def p99(values):
            return f'{np.percentile(values, 99):.1f}' if values else 'n/a'

        out = {
            'input rate (Hz)': f'{self.inputs.rate():.2f}',
            'output rate (Hz)': f'{self.outputs.rate():.2f}',
            'latency median (ms)': med(self.latency_ms),
            'latency p99 (ms)': p99(self.latency_ms),
            'inference median (ms)': med(self.inference_ms),
            'overhead median (ms)': med(self.overhead_ms),
            'stage medians (ms)': ', '.join(f'{name} {np.median(v):.1f}'
                                            for name, v in self.stage_ms.items() if v) or 'n/a',
            'frames received': str(self.received),
            'frames processed': str(self.processed),
            'frames dropped': str(self.dropped),
            'frames skipped': str(self.skipped),
            'metric': str(self.last_metric).lower(),
        }
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
