"""Per-frame metric scale recovery: relative depth + metric anchors -> metric depth + report.

One ``ScaleRecovery`` per camera stream (it holds the temporal filter). Per frame:
1. anchors outside the image or the [min_depth, max_depth] range are dropped;
2. robust global scale + shift fit (``fit.fit_scale_shift``) in depth or inverse-depth space;
3. temporal filter of (log scale, shift) with outlier-frame gating (``temporal``);
4. optional dense local correction from the anchors' residuals (``local_correction``), only on
   frames whose fit was accepted (a gated frame's anchors are suspect);
5. metric depth, float32, NaN where invalid or outside [min_depth, max_depth].

Without any anchors ever (no anchor source), the relative depth is mapped with the user's
``fixed_scale`` / ``fixed_shift`` (in the fit space) and reported as not metric. When anchors
stop coming or no fit is usable, the last estimate is held for a while ('held'), then dropped
('none': fixed mapping again, not metric).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .anchors import Anchors
from .fit import SPACES, FitOptions, apply_fit, clip_range, fit_scale_shift
from .local_correction import (GUIDES, LocalCorrectionOptions, check_guide_image,
                               corrected_fit, thinned, warm_up)
from .temporal import Measurement, TemporalFilter, TemporalOptions

STATUSES = ('fitted', 'scale-only', 'held', 'none')


class ConfigError(ValueError):
    """A scale recovery setting outside what it allows."""


class RecoveryInputError(ValueError):
    """A relative depth map or anchor set that cannot be processed."""


def _finite(name, value, low=None, high=None, low_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{name} must be a number, got {value!r}') from None
    if not math.isfinite(v):
        raise ConfigError(f'{name} must be finite, got {value!r}')
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f'{name} must be {">" if low_open else ">="} {low}, got {value!r}')
    if high is not None and v > high:
        raise ConfigError(f'{name} must be <= {high}, got {value!r}')
    return v


@dataclass(frozen=True)
class ScaleRecoveryConfig:
    fit_space: str = 'depth'          # 'depth' (FiffDepth) or 'inverse' (disparity models)
    local_correction: bool = True     # dense local correction after the global fit
    local_guide: str = 'both'         # what guides it when the frame's image is given:
    #                                   'depth', 'image' or 'both' (see local_correction)
    responsiveness: float = 0.3       # temporal filter gain per frame, (0, 1]; 1 = no smoothing
    min_depth: float = 0.1            # metres: closer output is NaN; closer anchors ignored
    max_depth: float = 20.0           # metres: farther output is NaN; farther anchors ignored
    min_anchors: int = 3              # fewer: scale-only fit with the shift held
    fixed_scale: float = 1.0          # no-anchor mapping (in the fit space), not metric
    fixed_shift: float = 0.0
    hold_timeout_s: float = 1.0       # hold the last estimate at most this long ...
    hold_max_frames: int = 30         # ... and this many frames without a usable fit
    reset_time_jump_s: float = 1.0    # forward time gap that resets the filter (backward: always)
    gate: float = 0.25                # relative change of the mapping that marks an outlier frame
    prediction_noise: float = 0.05    # expected relative error of the aligned prediction
    outlier_cutoff: float = 0.5       # global fit: |log(anchor / fit)| of a gross outlier
    min_depth_spread: float = 0.1     # anchors' (p90 - p10) / p50 below which shift is held
    max_scale: float = 1e4            # |scale| outside [1/max_scale, max_scale] is absurd

    def __post_init__(self):
        if self.fit_space not in SPACES:
            raise ConfigError(f"fit_space must be one of {SPACES}, got '{self.fit_space}'")
        if not isinstance(self.local_correction, (bool, np.bool_)):
            raise ConfigError(f'local_correction must be true or false, got '
                              f'{self.local_correction!r}')
        if self.local_guide not in GUIDES:
            raise ConfigError(f"local_guide must be one of {GUIDES}, got {self.local_guide!r}")
        r = _finite('responsiveness', self.responsiveness, 0.0, 1.0, low_open=True)
        lo = _finite('min_depth', self.min_depth, 0.0)
        hi = _finite('max_depth', self.max_depth, 0.0, low_open=True)
        if not hi > lo:
            raise ConfigError(f'max_depth ({hi}) must exceed min_depth ({lo})')
        if int(self.min_anchors) != self.min_anchors or self.min_anchors < 2:
            raise ConfigError(f'min_anchors must be an integer >= 2, got {self.min_anchors!r}')
        s = _finite('fixed_scale', self.fixed_scale)
        if s == 0:
            raise ConfigError('fixed_scale must be non-zero')
        _finite('fixed_shift', self.fixed_shift)
        _finite('hold_timeout_s', self.hold_timeout_s, 0.0)
        if int(self.hold_max_frames) != self.hold_max_frames or self.hold_max_frames < 0:
            raise ConfigError(f'hold_max_frames must be an integer >= 0, got '
                              f'{self.hold_max_frames!r}')
        _finite('reset_time_jump_s', self.reset_time_jump_s, 0.0, low_open=True)
        _finite('gate', self.gate, 0.0, low_open=True)
        _finite('prediction_noise', self.prediction_noise, 0.0, 1.0, low_open=True)
        _finite('outlier_cutoff', self.outlier_cutoff, 0.0, low_open=True)
        _finite('min_depth_spread', self.min_depth_spread, 0.0)
        if not _finite('max_scale', self.max_scale, 1.0, low_open=True) > 1.0:
            raise ConfigError('max_scale must be > 1')
        object.__setattr__(self, 'responsiveness', r)

    def fit_options(self) -> FitOptions:
        return FitOptions(space=self.fit_space, prediction_noise=self.prediction_noise,
                          min_anchors=int(self.min_anchors),
                          min_depth_spread=self.min_depth_spread,
                          scale_bounds=(1.0 / self.max_scale, self.max_scale),
                          outlier_cutoff=self.outlier_cutoff)

    def temporal_options(self) -> TemporalOptions:
        return TemporalOptions(responsiveness=self.responsiveness, gate=self.gate,
                               hold_timeout_s=self.hold_timeout_s,
                               hold_max_frames=int(self.hold_max_frames),
                               reset_time_jump_s=self.reset_time_jump_s)


@dataclass
class FitReport:
    anchors_offered: int = 0          # candidates the sources offered (points, valid pixels)
    anchors_used: int = 0             # anchors that reached the fit (in image and range;
    #                                   dense sets thinned evenly to 4 per 16x16 pixels)
    inliers: int = 0                  # anchors the global fit kept
    scale: float = float('nan')       # mapping used for this frame (after the filter)
    shift: float = float('nan')
    residual: float = float('nan')    # RMS relative depth error of the fit's inliers
    status: str = 'none'              # 'fitted' | 'scale-only' | 'held' | 'none'
    metric: bool = False
    local_inliers: int = 0            # anchors the local correction used (0: not run)
    detail: str = ''                  # why it is not a plain 'fitted', what was dropped
    space: str = 'depth'

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _State:
    had_anchors: bool = False
    filter: TemporalFilter = field(default_factory=TemporalFilter)


class ScaleRecovery:
    def __init__(self, config: ScaleRecoveryConfig = ScaleRecoveryConfig(),
                 local_options: LocalCorrectionOptions = LocalCorrectionOptions()):
        if not isinstance(config, ScaleRecoveryConfig):
            raise ConfigError(f'config must be a ScaleRecoveryConfig, got {type(config).__name__}')
        self._config = config
        self.local_options = local_options
        if config.local_correction:
            warm_up()          # its compiled stage, before the first frame (once per process)
        self.reset()

    @property
    def config(self) -> ScaleRecoveryConfig:
        return self._config

    @config.setter
    def config(self, config: ScaleRecoveryConfig) -> None:
        if not isinstance(config, ScaleRecoveryConfig):
            raise ConfigError(f'config must be a ScaleRecoveryConfig, got {type(config).__name__}')
        if config != self._config:          # a changed parameter invalidates the estimate
            self._config = config
            if config.local_correction:
                warm_up()
            self.reset()

    def reset(self) -> None:
        self._state = _State(filter=TemporalFilter(self._config.temporal_options()))

    # ------------------------------------------------------------------ per frame
    def process(self, relative, anchors: Anchors | None, stamp_s: float, image=None
                ) -> tuple[np.ndarray, FitReport]:
        """Metric depth and report of one frame; ``image``: the frame's HxWx3 uint8 RGB
        image, which guides the local correction as ``local_guide`` says (None: the depth
        alone; a wrong one raises GuideImageError, see ``guide_image``)."""
        rel = _relative(relative)
        plan = self.estimate(rel.shape, lambda rows, cols: rel[rows, cols], anchors, stamp_s,
                             image)
        return self.apply(rel, plan), plan.report

    def guide_image(self, image, shape):
        """``image`` checked for guiding the local correction of a ``shape`` frame: the
        array, or None where it would not be read (no image, local correction off, guide
        'depth'). Raises GuideImageError (a ValueError) for a wrong size, grey or 16-bit."""
        cfg = self._config
        if image is None or not cfg.local_correction or cfg.local_guide == 'depth':
            return None
        return check_guide_image(image, tuple(shape))

    def estimate(self, shape, sample, anchors: Anchors | None, stamp_s: float, image=None
                 ) -> 'Plan':
        """The mapping of this frame from its anchors (fit, temporal filter), without touching
        the dense image: ``sample(rows, cols)`` reads the relative depth at anchor pixels (a
        numpy array or a tensor on the model's device, see fiffdepth_ros.finish)."""
        cfg = self._config
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise RecoveryInputError(f'relative depth must be an HxW array, got shape {shape}')
        image = self.guide_image(image, shape)
        stamp = float(stamp_s)
        if not math.isfinite(stamp):
            raise RecoveryInputError(f'stamp must be finite seconds, got {stamp_s!r}')
        report = FitReport(space=cfg.fit_space)
        notes = []
        state = self._state

        if anchors is None and not state.had_anchors:
            return self._fixed_plan(report, 'no anchor source: fixed scale/shift, not metric')

        rows = cols = z = w = None
        if anchors is not None:
            state.had_anchors = True
            report.anchors_offered = int(anchors.offered)
            rows, cols, z, w, dropped = _usable(anchors, shape, cfg, self.local_options)
            if dropped:
                notes.append(dropped)
            report.anchors_used = len(z)

        filt = state.filter
        measurement = fit = None
        if rows is not None and len(z):
            x = np.asarray(sample(rows, cols), np.float32)
            # A scale-only fallback keeps the last good shift, else the configured one.
            prior = filt.shift if filt.has_estimate else cfg.fixed_shift
            fit = fit_scale_shift(x, z, w, cfg.fit_options(), prior_shift=prior)
            report.inliers, report.residual = fit.n_inliers, fit.residual
            if fit.reason:
                notes.append(fit.reason)
            if fit.ok:
                xin = x[fit.inliers] if fit.n_inliers else x
                measurement = Measurement(fit.scale, fit.shift, float(np.min(xin)),
                                          float(np.max(xin)))
        elif anchors is None:
            notes.append('no anchors this frame')
        else:
            notes.append('no usable anchors this frame')

        out = filt.update(stamp, measurement)
        if out.note:
            notes.append(out.note)
        if out.status == 'none':
            plan = self._fixed_plan(report, 'no usable fit: fixed scale/shift, not metric')
            report.detail = '; '.join(notes + [report.detail])
            return plan

        report.scale, report.shift, report.metric = out.scale, out.shift, True
        report.status = 'scale-only' if (out.status == 'fitted' and fit.status == 'scale-only') \
            else out.status
        report.detail = '; '.join(notes)
        # A frame whose own fit was consistent but gated by the temporal filter (the model's
        # output jumped) is still corrected locally around the held mapping; a frame whose
        # anchors disagree among themselves (no measurement) is not.
        local = (rows, cols, z, w) if (cfg.local_correction and measurement is not None
                                       and len(z)) else None
        return Plan(report, out.scale, out.shift, cfg.fit_space, cfg.min_depth, cfg.max_depth,
                    local, image if local is not None else None)

    def apply(self, rel: np.ndarray, plan: 'Plan') -> np.ndarray:
        """Metric depth (float32 HxW, NaN invalid) of ``rel`` under ``plan``."""
        if plan.local is not None:
            return self.correct_locally(rel, plan)
        return clip_range(apply_fit(rel, plan.scale, plan.shift, plan.space), plan.min_depth,
                          plan.max_depth)

    @property
    def guided_options(self) -> LocalCorrectionOptions:
        """The local correction's options with the configured guide."""
        opts = self.local_options
        if opts.guide != self._config.local_guide:
            opts = replace(opts, guide=self._config.local_guide)
        return opts

    def correct_locally(self, rel: np.ndarray, plan: 'Plan') -> np.ndarray:
        """The plan's metric depth of ``rel`` with its local correction (``corrected_fit``:
        the affine map, the correction and the range in one pass where compiled)."""
        local = corrected_fit(rel, plan.scale, plan.shift, plan.space, *plan.local,
                              self.guided_options, image=plan.image,
                              depth_range=(plan.min_depth, plan.max_depth))
        plan.report.local_inliers = int(np.count_nonzero(local.weights))
        return local.depth

    # ------------------------------------------------------------------ helpers
    def _fixed_plan(self, report: FitReport, note: str) -> 'Plan':
        cfg = self._config
        report.scale, report.shift = cfg.fixed_scale, cfg.fixed_shift
        report.status, report.metric, report.detail = 'none', False, note
        return Plan(report, cfg.fixed_scale, cfg.fixed_shift, cfg.fit_space, cfg.min_depth,
                    cfg.max_depth)


@dataclass(eq=False)
class Plan:
    """What a frame's dense depth is: ``apply_fit(relative, scale, shift, space)``, locally
    corrected with the ``local`` anchors (rows, cols, z, weight) unless None, NaN outside
    [min_depth, max_depth]. ``report`` is the frame's fit report; ``image`` the checked RGB
    image that guides the local correction (None: the depth alone)."""

    report: FitReport
    scale: float
    shift: float
    space: str
    min_depth: float
    max_depth: float
    local: tuple | None = None
    image: np.ndarray | None = None


def _relative(relative) -> np.ndarray:
    arr = np.asarray(relative)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise RecoveryInputError(f'relative depth must be an HxW array, got shape {arr.shape}')
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise RecoveryInputError(f'relative depth must be numeric, got dtype {arr.dtype}')
    return np.ascontiguousarray(arr, dtype=np.float32)


def _usable(anchors: Anchors, shape, cfg: ScaleRecoveryConfig,
            local_options: LocalCorrectionOptions):
    """Anchors inside the image and the depth range, with finite values and weights; more
    than the local correction keeps are thinned as it thins them (``thinned``: evenly, in the
    sensor's order, over the whole image). A dense sensor's 20k returns hold no more for a
    two-parameter fit, or for the local correction (which keeps as many), than an even
    fraction of them, and every pass over them costs."""
    h, w = shape
    rows, cols, z, wt = anchors.rows, anchors.cols, anchors.depth, anchors.weight
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    ok = inside & np.isfinite(z) & (z >= cfg.min_depth) & (z <= cfg.max_depth) & \
        np.isfinite(wt) & (wt > 0)
    notes = []
    outside = len(rows) - int(np.count_nonzero(inside))
    if outside:
        notes.append(f'{outside} anchors outside the {w}x{h} image dropped')
    bad = int(np.count_nonzero(inside & ~ok))
    if bad:
        notes.append(f'{bad} anchors outside [{cfg.min_depth:g}, {cfg.max_depth:g}] m or '
                     'without a valid depth/weight dropped')
    keep = np.flatnonzero(ok)
    keep = keep[thinned(len(keep), shape, local_options)]
    return (rows[keep].astype(np.int64), cols[keep].astype(np.int64),
            z[keep].astype(np.float64), wt[keep].astype(np.float64), '; '.join(notes))
