"""Temporal filter of the global scale and shift, so that metric depth does not flicker.

It smooths (log scale, shift) with a per-frame gain (``responsiveness``: 1 = no smoothing), in
log space for the scale because the scale is a ratio. A frame whose fit would move the mapping by
more than ``gate`` (relative depth change at the anchors' own relative values) is an outlier
frame: it is not used, and the last estimate is held. If ``confirm_frames`` such frames in a row
agree with each other, the scene really changed (the network re-normalised its output, the robot
turned to a new room) and the filter restarts from them.

Without a usable fit the estimate is held for at most ``hold_timeout_s`` and ``hold_max_frames``,
after which it is dropped (status 'none'). Time running backwards (a bag restarted) or a forward
gap longer than ``reset_time_jump_s`` resets the filter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TemporalOptions:
    responsiveness: float = 0.3      # per-frame gain in (0, 1]; 1 = no smoothing
    gate: float = 0.25               # relative depth change beyond which a frame is an outlier
    confirm_frames: int = 3          # agreeing outlier frames in a row that restart the filter
    hold_timeout_s: float = 1.0      # hold the last estimate at most this long ...
    hold_max_frames: int = 30        # ... and this many frames
    reset_time_jump_s: float = 1.0   # forward gap (s) that resets; any backward step resets

    def __post_init__(self):
        if not (0.0 < self.responsiveness <= 1.0):
            raise ValueError(f'responsiveness must be in (0, 1], got {self.responsiveness}')
        if not self.gate > 0:
            raise ValueError(f'gate must be > 0, got {self.gate}')
        if self.confirm_frames < 1 or self.hold_max_frames < 0:
            raise ValueError('confirm_frames must be >= 1 and hold_max_frames >= 0')
        if not (self.hold_timeout_s >= 0 and self.reset_time_jump_s > 0):
            raise ValueError('hold_timeout_s must be >= 0 and reset_time_jump_s > 0')


@dataclass(frozen=True)
class Measurement:
    """One frame's fit: scale > 0, shift, and two relative values spanning its anchors (where
    the mapping is compared with the filter's, since that is where the fit is known to hold)."""

    scale: float
    shift: float
    ref_low: float
    ref_high: float


@dataclass(frozen=True)
class FilterOutput:
    scale: float          # NaN when status is 'none'
    shift: float
    status: str           # 'fitted' (measurement used) | 'held' | 'none'
    note: str = ''


class TemporalFilter:
    def __init__(self, options: TemporalOptions = TemporalOptions()):
        self.options = options
        self.reset()

    def reset(self) -> None:
        self._log_scale = None
        self._shift = 0.0
        self._last_stamp = None
        self._last_good = None
        self._held = 0
        self._candidate = None
        self._candidate_count = 0

    @property
    def has_estimate(self) -> bool:
        return self._log_scale is not None

    @property
    def scale(self) -> float:
        return float(np.exp(self._log_scale)) if self.has_estimate else float('nan')

    @property
    def shift(self) -> float:
        return self._shift if self.has_estimate else float('nan')

    def update(self, stamp_s: float, measurement: Measurement | None) -> FilterOutput:
        opts = self.options
        notes = []
        if self._last_stamp is not None:
            dt = stamp_s - self._last_stamp
            if dt < 0 or dt > opts.reset_time_jump_s:
                self.reset()
                notes.append(f'time jumped by {dt:+.3g} s: filter reset')
        self._last_stamp = stamp_s

        if measurement is not None and not (measurement.scale > 0
                                            and np.isfinite(measurement.shift)):
            notes.append(f'unusable scale {measurement.scale:.4g} ignored')
            measurement = None
        if measurement is None:
            return self._hold(stamp_s, notes)
        if not self.has_estimate:
            self._start(stamp_s, measurement)
            return self._out('fitted', notes)

        change = self._change(measurement)
        if change > opts.gate:
            # An outlier frame, or the first of a real change: confirm over a few frames.
            agrees = (self._candidate is not None
                      and _change_between(self._candidate, measurement) <= opts.gate)
            if agrees:
                self._candidate_count += 1
            else:
                self._candidate, self._candidate_count = measurement, 1
            if self._candidate_count >= opts.confirm_frames:
                self._start(stamp_s, measurement)
                notes.append(f'scale change confirmed over {opts.confirm_frames} frames: '
                             'filter restarted')
                return self._out('fitted', notes)
            notes.append(f'outlier frame gated: mapping would change by {100 * change:.0f} % '
                         f'(gate {100 * opts.gate:.0f} %)')
            if self._hold_expired(stamp_s, self._held + 1):
                # Gated for too long while every frame had a fit of its own: the held
                # estimate is the stale one. Start again from this frame's fit.
                self._start(stamp_s, measurement)
                notes.append('held too long: filter restarted from this frame')
                return self._out('fitted', notes)
            return self._hold(stamp_s, notes)

        a = opts.responsiveness
        self._log_scale += a * (np.log(measurement.scale) - self._log_scale)
        self._shift += a * (measurement.shift - self._shift)
        self._last_good, self._held = stamp_s, 0
        self._candidate, self._candidate_count = None, 0
        return self._out('fitted', notes)

    # ------------------------------------------------------------------ helpers
    def _start(self, stamp_s, m: Measurement) -> None:
        self._log_scale, self._shift = float(np.log(m.scale)), float(m.shift)
        self._last_good, self._held = stamp_s, 0
        self._candidate, self._candidate_count = None, 0

    def _hold(self, stamp_s, notes) -> FilterOutput:
        if not self.has_estimate:
            return self._out('none', notes)
        self._held += 1
        age = stamp_s - self._last_good
        if self._hold_expired(stamp_s, self._held):
            notes.append(f'no usable fit for {self._held} frames / {age:.3g} s: estimate dropped')
            self._log_scale = None
            return self._out('none', notes)
        return self._out('held', notes)

    def _hold_expired(self, stamp_s: float, held: int) -> bool:
        opts = self.options
        return stamp_s - self._last_good > opts.hold_timeout_s or held > opts.hold_max_frames

    def _change(self, m: Measurement) -> float:
        return _change_between(Measurement(self.scale, self._shift, m.ref_low, m.ref_high), m)

    def _out(self, status, notes) -> FilterOutput:
        return FilterOutput(self.scale, self.shift, status, '; '.join(notes))


def _change_between(a: Measurement, b: Measurement) -> float:
    """Largest relative difference of the two mappings over b's range of relative values.

    Where both mappings give no positive depth (relative 0 with a shift of 0, e.g. after a
    scale-only fit: the nearest pixel of a [0, 1] prediction) they agree and the point is
    skipped; where only one does, they disagree completely.
    """
    worst, compared = 0.0, False
    for x in (b.ref_low, 0.5 * (b.ref_low + b.ref_high), b.ref_high):
        pa, pb = a.scale * x + a.shift, b.scale * x + b.shift
        if not (np.isfinite(pa) and np.isfinite(pb)):
            return float('inf')
        if pa <= 0 and pb <= 0:
            continue
        if pa <= 0 or pb <= 0:
            return float('inf')             # only one of them is a valid depth there
        worst, compared = max(worst, abs(pb - pa) / pa), True
    if not compared:
        return abs(b.scale / a.scale - 1.0)
    return worst
