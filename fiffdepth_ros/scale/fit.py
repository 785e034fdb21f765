"""Robust, deterministic scale + shift fit between a relative prediction and metric anchors.

Model, in the chosen space:
- ``'depth'``:   z = scale * relative + shift          (affine-invariant depth, e.g. FiffDepth)
- ``'inverse'``: 1 / z = scale * relative + shift      (affine-invariant disparity models)

Least squares in that space, each anchor weighted by 1 / its expected variance there: the
sensor's (anchor weight, 1/m^2) plus the prediction's own error, which is relative
(``prediction_noise * z``) and usually dominates. Robustness: a Tukey-biweight M-estimator by
iteratively reweighted least squares, started from Siegel's repeated-median line on a
deterministic, evenly spaced subset: no random sampling (the same input gives the same fit), and
up to ~50 % gross outliers are tolerated.

The Tukey cutoff is a fixed gross-error threshold on the log ratio between anchor and fit
(``outlier_cutoff``, symmetric: x2 and x0.5 are equally wrong), widened for anchors whose sensor
is noisier than the prediction; it is not a multiple of the residuals' MAD. A relative
prediction's error is structured (a bent floor, a corner it exaggerates), so cutting at a few MADs
drops exactly the anchors that show where it bends; and a third of the anchors pushed to one side
(LiDAR seeing background past an edge) inflates the MAD until nothing is cut.

Degenerate anchor sets fall back to a scale-only fit with the shift held at a prior value (fewer
than ``min_anchors``; anchor depths spanning too narrow a range for the shift to be observable; a
full fit with a negative or absurd scale). If even that fails, or the anchors disagree with the
prediction as a whole (too few inliers, large residual), the status is ``'failed'`` and the
caller holds its last estimate.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from . import _compiled

SPACES = ('depth', 'inverse')


class FitError(ValueError):
    """Inputs that cannot be fitted at all (mismatched lengths, unknown space)."""


@dataclass(frozen=True)
class FitOptions:
    space: str = 'depth'
    prediction_noise: float = 0.05      # expected relative depth error of the aligned prediction
    min_anchors: int = 3                # fewer: scale-only fit
    min_depth_spread: float = 0.1       # (p90 - p10) / p50 of inlier depths; less: scale-only
    scale_bounds: tuple[float, float] = (1e-4, 1e4)   # outside (or <= 0): absurd
    outlier_cutoff: float = 0.5         # |log(anchor / fit)| of a gross outlier (~ x1.65)
    min_inlier_fraction: float = 0.5    # fewer inliers: anchors disagree, failed
    max_residual: float = 0.35          # relative RMS of inliers; more: anchors disagree, failed
    max_iterations: int = 50
    tolerance: float = 1e-3             # convergence: fitted values move < tol * data range
    init_points: int = 64               # subset size of the repeated-median start (O(k^2))
    fit_points: int = 1024              # subset size of the IRLS (inliers judged on all)

    def __post_init__(self):
        if self.space not in SPACES:
            raise FitError(f"space must be one of {SPACES}, got '{self.space}'")
        lo, hi = self.scale_bounds
        if not (0 < lo < hi):
            raise FitError(f'scale_bounds must satisfy 0 < low < high, got {self.scale_bounds}')
        if self.min_anchors < 2:
            raise FitError(f'min_anchors must be >= 2 (a line needs two points), '
                           f'got {self.min_anchors}')
        if not (self.outlier_cutoff > 0 and self.prediction_noise > 0):
            raise FitError('outlier_cutoff and prediction_noise must be > 0')


@dataclass(frozen=True, eq=False)
class FitResult:
    scale: float
    shift: float
    inliers: np.ndarray            # bool, one per input anchor (invalid anchors are False)
    residual: float                # RMS relative depth error of the inliers ((pred - z) / z)
    status: str                    # 'fitted' | 'scale-only' | 'failed'
    reason: str = ''               # why it is not a plain 'fitted'
    used: int = 0                  # valid anchors (finite, positive depth and weight)
    spread: float = field(default=np.nan)   # (p90 - p10) / p50 of inlier depths

    @property
    def ok(self) -> bool:
        return self.status != 'failed'

    @property
    def n_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))


class _Problem:
    """The valid anchors in the fit space, with what the estimators need."""

    @classmethod
    def of_valid(cls, x, z, w, options: FitOptions):
        """(valid mask, the problem of the valid anchors, (min x, max x, max |x|) over them);
        compiled: one pass (``_compiled.fit_problem``) instead of ~20 array operations."""
        if _compiled.ENABLED:
            valid, *arrays, x_lo, x_hi, x_abs = _compiled.fit_problem(
                x, z, w, options.space == 'inverse', options.prediction_noise,
                options.outlier_cutoff)
            p = object.__new__(cls)
            p.space = options.space
            p.x, p.z, p.y, p.inv_var, p.cutoff = arrays
            return valid, p, (x_lo, x_hi, x_abs)
        valid = np.isfinite(x) & np.isfinite(z) & (z > 0) & np.isfinite(w) & (w > 0)
        p = cls(x[valid], z[valid], w[valid], options)
        if not len(p.x):
            return valid, p, (np.inf, -np.inf, 0.0)
        return valid, p, (float(p.x.min()), float(p.x.max()), float(np.max(np.abs(p.x))))

    def __init__(self, x, z, w, options: FitOptions):
        self.x, self.z, self.space = x, z, options.space
        # Expected variance in depth: sensor + prediction (relative); propagated to 1/z if needed.
        var = 1.0 / w + (options.prediction_noise * z) ** 2
        if options.space == 'inverse':
            self.y, sd = 1.0 / z, np.sqrt(var) / z ** 2
        else:
            self.y, sd = z, np.sqrt(var)
        self.inv_var = 1.0 / sd ** 2
        # Cutoff per anchor in log ratio: wider where the sensor is noisier than the prediction.
        self.cutoff = options.outlier_cutoff * np.sqrt(var) / (options.prediction_noise * z)

    def subset(self, index) -> '_Problem':
        """The same problem restricted to ``index`` (arrays copied once, not per iteration)."""
        sub = object.__new__(_Problem)
        sub.space = self.space
        for name in ('x', 'z', 'y', 'inv_var', 'cutoff'):
            setattr(sub, name, getattr(self, name)[index])
        return sub

    def _abs_log_ratio(self, s, t):
        """|log(fit / anchor)|, NaN where the fit is not a positive depth. In inverse space
        fit/anchor is an inverse-depth ratio: the |log| is the same."""
        r = s * self.x
        r += t
        r /= self.y
        with np.errstate(divide='ignore', invalid='ignore'):
            np.log(r, out=r)                  # NaN where the fit is negative, -inf at 0
        return np.abs(r, out=r)

    def log_error(self, s, t):
        """|log(fit / anchor)|; inf where the fit is not a positive depth."""
        err = self._abs_log_ratio(s, t)
        err[np.isnan(err)] = np.inf
        return err

    def tukey(self, s, t):
        """Tukey biweight (1 - r^2)^2 of r = log error / cutoff (0 beyond the cutoff)."""
        u = self._abs_log_ratio(s, t)
        u /= self.cutoff
        np.fmin(u, 1.0, out=u)                # fmin: NaN (a negative fit) -> 1, weight 0
        u *= u
        np.subtract(1.0, u, out=u)
        u *= u
        return u

    def inliers(self, s, t):
        return self.log_error(s, t) < self.cutoff

    def inliers_and_residual(self, s, t):
        """(inliers, their RMS relative depth error): ``inliers`` and ``_relative_rms``."""
        if not (np.isfinite(s) and np.isfinite(t)):
            return np.zeros(len(self.x), bool), np.nan
        if _compiled.ENABLED:
            return _compiled.inliers_and_residual(self.x, self.y, self.z, self.cutoff,
                                                  float(s), float(t), self.space == 'inverse')
        mask = self.inliers(s, t)
        return mask, _relative_rms(s, t, self.x[mask], self.z[mask], self.space)

    def loss(self, s, t) -> tuple[float, int]:
        """The bounded Tukey loss of (s, t), the sum of 1 - (1 - r^2)^3 (the weights
        (1 - r^2)^2 to the power 1.5), and how many anchors keep a weight."""
        if _compiled.ENABLED:
            loss, nonzero = _compiled.tukey_loss(self.x, self.y, self.cutoff, float(s),
                                                 float(t))
            return float(loss), int(nonzero)
        u = self.tukey(s, t)
        return float(np.sum(1.0 - u * np.sqrt(u))), int(np.count_nonzero(u))


def _vector(a) -> np.ndarray:
    """A float64 vector, contiguous and writable (a copy only where it is not): the compiled
    kernels then take the one array type they were compiled for (a read-only or strided
    array, a sensor message's buffer say, would compile another on the first frame)."""
    return np.require(np.asarray(a, np.float64).reshape(-1), requirements=('C', 'W'))


def fit_scale_shift(relative, depth, weight=None, options: FitOptions = FitOptions(),
                    prior_shift: float = 0.0) -> FitResult:
    """Fit scale and shift mapping ``relative`` (N,) to metric ``depth`` (N,) metres.

    ``weight`` (N,) is the anchors' inverse depth variance (1/m^2); None = equal sensor noise
    (1 cm). ``prior_shift`` is the shift a scale-only fallback keeps (e.g. the last good one).
    """
    x, z = _vector(relative), _vector(depth)
    w = np.full(len(z), 1e4) if weight is None else _vector(weight)
    if not (len(x) == len(z) == len(w)):
        raise FitError(f'relative ({len(x)}), depth ({len(z)}) and weight ({len(w)}) '
                       'must have the same length')
    valid, p, (x_lo, x_hi, x_abs) = _Problem.of_valid(x, z, w, options)
    n = len(p.x)
    inliers = np.zeros(len(z), bool)
    if n == 0:
        return FitResult(np.nan, np.nan, inliers, np.nan, 'failed', 'no valid anchors', 0)

    def finish(s, t, status, reason, found=None, spread=None) -> FitResult:
        mask, residual = p.inliers_and_residual(s, t) if found is None else found
        inl = inliers.copy()
        inl[valid] = mask
        spread = _spread(p.z[mask]) if spread is None else spread
        if status != 'failed':
            fraction = np.count_nonzero(mask) / n
            if fraction < options.min_inlier_fraction:
                status, reason = 'failed', (
                    f'{reason + "; " if reason else ""}anchors disagree with the prediction: '
                    f'only {100 * fraction:.0f} % inliers')
            elif not residual <= options.max_residual:
                status, reason = 'failed', (
                    f'{reason + "; " if reason else ""}anchors disagree with the prediction: '
                    f'relative RMS residual {residual:.3g} > {options.max_residual:g}')
        return FitResult(float(s), float(t), inl, residual, status, reason, n, spread)

    lo, hi = options.scale_bounds
    if n >= options.min_anchors and x_hi - x_lo <= 1e-9 * max(x_abs, 1e-30):
        reason = 'all anchors see the same relative value: shift unobservable'
    elif n >= options.min_anchors:
        s, t = _robust_line(p, options)
        found = p.inliers_and_residual(s, t)
        spread = _spread(p.z[found[0]])
        if not (np.isfinite(s) and np.isfinite(t)):
            reason = 'full fit did not converge'
        elif not (lo <= s <= hi):
            reason = f'full fit gave an absurd scale {s:.4g} (allowed {lo:g}..{hi:g})'
        elif not (spread >= options.min_depth_spread):
            reason = (f'anchor depths span only {100 * spread:.1f} % (< '
                      f'{100 * options.min_depth_spread:g} %): shift unobservable')
        else:
            return finish(s, t, 'fitted', '', found, spread)
    else:
        reason = f'only {n} anchors (< {options.min_anchors}): shift not fitted'

    s = _irls_scale_only(p, prior_shift, options)
    if not (np.isfinite(s) and lo <= s <= hi):
        return finish(s, prior_shift, 'failed',
                      f'{reason}; scale-only fit gave an unusable scale {s:.4g}')
    return finish(s, prior_shift, 'scale-only',
                  f'{reason}; scale-only fit, shift held at {prior_shift:.4g}')


# ---------------------------------------------------------------------------- estimators

def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most k of n items, evenly spaced in input order (all of them if n <= k).
    Deterministic; sensors deliver anchors in scan or pixel order, so this thins them
    uniformly over the image. Read only: cached per (n, k), as a frame asks for the same
    subsets several times (the fit's, the local correction's)."""
    return _evenly_spaced(int(n), int(k))


@functools.lru_cache(maxsize=32)
def _evenly_spaced(n: int, k: int) -> np.ndarray:
    idx = np.arange(n) if n <= k else np.linspace(0, n - 1, max(k, 1)).round().astype(np.int64)
    idx.flags.writeable = False
    return idx


def _median(a: np.ndarray) -> float:
    """np.median of a non-empty array without NaN (the same value: the middle element, or
    the mean of the middle two), by one partition, without np.median's overhead."""
    n = len(a)
    if n % 2:
        return float(np.partition(a, n // 2)[n // 2])
    lo, hi = np.partition(a, (n // 2 - 1, n // 2))[n // 2 - 1:n // 2 + 1]
    return float((lo + hi) / 2)


def _sorted_median(a: np.ndarray) -> float:
    """np.median of an ascending, non-empty array without NaN."""
    n = len(a)
    return float(a[n // 2]) if n % 2 else float((a[n // 2 - 1] + a[n // 2]) / 2)


def _median_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN where a row has none), by one sort."""
    srt = np.sort(a, axis=1)                       # NaN sort last
    count = np.count_nonzero(~np.isnan(a), axis=1)
    lo = np.maximum(count - 1, 0) // 2
    hi = np.minimum(count // 2, a.shape[1] - 1)
    rows = np.arange(len(a))
    return np.where(count > 0, 0.5 * (srt[rows, lo] + srt[rows, hi]), np.nan)


def _repeated_median(x, y, k) -> tuple[float, float]:
    """Siegel's repeated-median line on <= k anchors evenly spaced in input order (deterministic;
    sensors deliver anchors in scan or pixel order, so the subset covers the image)."""
    sub = evenly_spaced(len(x), k)
    xs, ys = x[sub], y[sub]
    dx = xs[None, :] - xs[:, None]
    dy = ys[None, :] - ys[:, None]
    with np.errstate(divide='ignore', invalid='ignore'):
        slopes = np.where(dx != 0, dy / dx, np.nan)
    per_point = _median_rows(slopes)
    per_point = per_point[~np.isnan(per_point)]
    if len(per_point) == 0:
        return np.nan, np.nan            # all x equal: no slope
    s = float(np.median(per_point))
    sub = evenly_spaced(len(x), 16 * k)          # the intercept: a median of residuals, O(n)
    return s, float(np.median(y[sub] - s * x[sub]))


def _resistant_line(x, y) -> tuple[float, float]:
    """Tukey's resistant line: slope through the medians of the lower and upper thirds in x,
    intercept the median residual. Uses every point (low variance) and stays inside the
    majority's band under one-sided contamination, where a repeated median on a small subset
    can land between the two groups."""
    order = np.argsort(x, kind='stable')
    third = len(x) // 3
    if third < 1:
        return np.nan, np.nan
    lo, hi = order[:third], order[-third:]
    dx = _sorted_median(x[hi]) - _sorted_median(x[lo])      # x[order] ascends
    if not dx > 0:
        return np.nan, np.nan
    s = (_median(y[hi]) - _median(y[lo])) / dx
    return s, _median(y - s * x)


def _robust_line(p: _Problem, options: FitOptions) -> tuple[float, float]:
    """Tukey IRLS from two deterministic starts (resistant line, repeated median); the
    solution that leaves the lower bounded (Tukey) loss wins. One start can sit between two
    groups of anchors (a third of them seen through a foreground edge) and converge to the
    smaller one. With 100 anchors or more, the second start is skipped when the first
    solution already explains ``_SETTLED_SHARE`` of them: a better line would have to share
    most of those anchors, i.e. lie in the same basin."""
    sub = p.subset(evenly_spaced(len(p.x), options.fit_points))
    best, best_loss = (np.nan, np.nan), np.inf
    starts = (lambda: _resistant_line(sub.x, sub.y),
              lambda: _repeated_median(p.x, p.y, options.init_points))
    for make_start in starts:
        start = make_start()
        if not (np.isfinite(start[0]) and np.isfinite(start[1])):
            continue
        s, t = _irls(sub, options, start, best if np.isfinite(best_loss) else None)
        if not (np.isfinite(s) and np.isfinite(t)):
            continue
        loss, kept = sub.loss(s, t)
        if loss < best_loss - 1e-9 * len(sub.x):
            best, best_loss = (s, t), loss
        if len(sub.x) >= 100 and kept >= _SETTLED_SHARE * len(sub.x):
            break
    if not np.isfinite(best_loss):          # no start: all x equal, or a degenerate subset
        return _irls(sub, options, (np.nan, np.nan))
    return best


_SETTLED_SHARE = 0.8


def _irls(p: _Problem, options: FitOptions, start, known=None) -> tuple[float, float]:
    """Tukey IRLS for y = s x + t on ``p`` (the caller passes an evenly spaced subset of at
    most ``fit_points`` anchors: statistically plenty, and a bounded cost for dense sensors).
    Stops at ``known`` (a solution found from another start) once within 1 % of the data's
    range of it: the same basin, the same fixed point."""
    xs, ys, inv_var = p.x, p.y, p.inv_var
    # Converged when the fitted values move by < tol of the data's own spread.
    tol = options.tolerance * max(float(np.ptp(ys)), 1e-12)
    if _compiled.ENABLED and np.isfinite(start[0]) and np.isfinite(start[1]):
        # The same iterations in one compiled call.
        s, t = _compiled.irls(xs, ys, inv_var, p.cutoff, float(start[0]), float(start[1]),
                              tol, options.max_iterations, *(known or (np.nan, np.nan)),
                              known is not None)
        return float(s), float(t)
    # A weighted line from five weighted sums of the centred data, in one product.
    mx, my = float(np.mean(xs)), float(np.mean(ys))
    cx, cy = xs - mx, ys - my
    moments = np.stack([np.ones_like(cx), cx, cy, cx * cx, cx * cy])

    def weighted_line(w) -> tuple[float, float]:
        sw, swx, swy, swxx, swxy = moments @ w
        sxx = sw * swxx - swx * swx
        if not (sw > 0 and sxx > 1e-300 * max(sw * swxx, 1e-300)) or np.count_nonzero(w) < 2:
            return np.nan, np.nan                   # no weight, or all x equal
        slope = (sw * swxy - swx * swy) / sxx
        return slope, my + (swy - slope * swx) / sw - slope * mx

    s, t = start
    if not (np.isfinite(s) and np.isfinite(t)):
        s, t = weighted_line(inv_var)               # all x equal: the spread check catches it
    if not (np.isfinite(s) and np.isfinite(t)):
        return np.nan, np.nan
    x_lo, x_hi = float(xs.min()), float(xs.max())

    def distance(s2, t2):
        return max(abs((s2 - s) * x_lo + t2 - t), abs((s2 - s) * x_hi + t2 - t))

    for _ in range(options.max_iterations):
        u = p.tukey(s, t)
        u *= inv_var
        s_new, t_new = weighted_line(u)
        if not (np.isfinite(s_new) and np.isfinite(t_new)):
            break
        moved = distance(s_new, t_new)
        s, t = s_new, t_new
        if moved <= tol:
            break
        if known is not None and distance(*known) <= 10 * tol:
            return known
    return float(s), float(t)


def _irls_scale_only(p: _Problem, t0: float, options: FitOptions) -> float:
    target = p.y - t0
    big = np.abs(p.x) > 1e-9 * max(float(np.max(np.abs(p.x))), 1e-300)
    ratios = target[big] / p.x[big]
    if len(ratios) == 0:
        return np.nan
    s = float(np.median(ratios))
    x_max = float(np.max(np.abs(p.x)))
    tol = options.tolerance * max(float(np.ptp(target)), abs(float(np.mean(target))), 1e-12)
    for _ in range(options.max_iterations):
        u = p.tukey(s, t0) * p.inv_var
        den = float(np.dot(u, p.x * p.x))
        if den <= 0:
            break
        s_new = float(np.dot(u, p.x * target)) / den
        moved = abs(s_new - s) * x_max
        s = s_new
        if moved <= tol:
            break
    return s


def _spread(z) -> float:
    """(p10 - p90) / p50, on an evenly spaced subset of at most 2048 values (a statistic)."""
    if len(z) < 2:
        return 0.0
    z = z[evenly_spaced(len(z), 2048)]
    k10, k50, k90 = (int(round(q * (len(z) - 1))) for q in (0.1, 0.5, 0.9))
    z = np.partition(z, (k10, k50, k90))
    p10, p50, p90 = z[k10], z[k50], z[k90]
    return float((p90 - p10) / p50) if p50 > 0 else 0.0


def _relative_rms(s, t, x, z, space) -> float:
    if len(z) == 0 or not (np.isfinite(s) and np.isfinite(t)):
        return np.nan
    pred = s * x + t
    if space == 'inverse':
        with np.errstate(divide='ignore'):
            pred = np.where(pred > 0, 1.0 / pred, np.inf)
    return float(np.sqrt(np.mean(((pred - z) / z) ** 2)))


def apply_fit(relative: np.ndarray, scale: float, shift: float, space: str) -> np.ndarray:
    """Metric depth (float32, a new array) from relative values; results that are not a positive
    finite depth (e.g. behind the near plane of the fit) are NaN."""
    rel = np.asarray(relative, dtype=np.float32)
    if _compiled.ENABLED and rel.flags.c_contiguous:     # one pass instead of five
        out = np.empty(rel.shape, np.float32)
        _compiled.affine_depth(rel, np.float32(scale), np.float32(shift), space == 'inverse',
                               out)
        return out
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        out = rel * np.float32(scale)          # overflow gives inf: marked invalid below
        out += np.float32(shift)
        if space == 'inverse':
            np.divide(np.float32(1.0), out, out=out)
        # Not a positive finite depth (NaN stays NaN: it needs no mask).
        bad = out <= 0
        bad |= out == np.inf
        np.copyto(out, np.float32(np.nan), where=bad)
    return out


def clip_range(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """NaN outside [lo, hi] metres, in place (the thresholds in float32, as numpy compares a
    float32 image with a Python float); returns ``depth``."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    with np.errstate(invalid='ignore'):
        np.copyto(depth, np.float32(np.nan), where=(depth > hi32) | (depth < lo32))
    return depth
