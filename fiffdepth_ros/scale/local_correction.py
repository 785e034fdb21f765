"""Dense local correction of a globally aligned depth map from its anchors' residuals.

A global scale + shift cannot fix a prediction whose error varies over the image (a wall that
leans the wrong way, a corner the network exaggerates). Each anchor measures that error as the
log-ratio v = log(z_anchor / z_aligned); the correction interpolates v densely and multiplies the
aligned depth by exp(v). All work happens on coarse grids (a few ms per VGA frame):

1. Normalised convolution: splat w*v and w into two grids, blur both with the same Gaussian,
   divide. Gaps fill without seams because the result is a ratio of smooth functions.
2. Multi-scale, density adaptive: scales sigma_k = base_sigma * 2^k cells are blended from coarse
   to fine (large scales on a pooled grid, a pyramid); scale k takes over where its Gaussian
   window holds enough anchors (fully at ``min_support``, half an anchor: the field passes
   through isolated anchors, as an interpolation should). Dense anchors give fine detail;
   between LiDAR rings and at image borders the fill is smooth.
   Smooth base (``spline``): the final field spreads what is left of the residuals after a
   thin-plate spline through the judged anchors' residuals (the surface of least bending
   energy through them; ``spline_smoothing`` relaxes it, the more for an anchor the judging
   half-trusts; more than ``spline_centres`` anchors are first averaged per judging cell).
   Between sparse anchors the spline carries the error's trend (a prediction bent across the
   image) over the gaps, where the normalised convolution alone falls back to a local mean.
   It is clipped to the range of the values it fits (no extrapolated trend beyond the data).
   Detail level (``detail``): the grid's cells average anchors closer than a cell (a LiDAR
   ring's returns every few pixels, and the prediction's errors at that scale, which a real
   network has). What the grid's field leaves of each anchor's residual is spread by one more,
   finer scale (half the grid's finest, 4 px), on cells of 4 px, fully used where its window
   holds an anchor and fading out a few pixels away: near the anchors the correction follows
   them at their own spacing, between rings and sparse anchors it is the grid's. Spatial only
   (it reaches a few pixels); its grid is multiplied onto the half-resolution factor.
3. Edge aware (``edge_aware``): the prediction's errors follow its own structure (an object, a
   corner it got wrong), so the grid gets a third axis, the aligned log depth, in bins of
   ``range_sigma`` (a bilateral grid). An anchor corrects the pixels near it that the prediction
   puts at a similar depth and has no say across a depth edge. Where no anchor shares a pixel's
   depth band, the purely spatial field of steps 1-2 is used. The factor is read at half
   resolution (depth edges to 2 px) and upsampled bilinearly.
4. Robust: Tukey-biweight reweighting, each anchor judged against the field of its neighbours
   *on the same surface* (its bilateral neighbourhood), built so that a scale only counts where
   it holds ``outlier_support`` anchors, i.e. one anchor has at most a ~1/outlier_support share
   in the field that judges it. A LiDAR return from the background behind a foreground edge, or
   a bad stereo match, disagrees with its neighbours and loses its weight; a region where the
   prediction itself is off keeps its anchors, because they agree with each other; an anchor
   with no neighbours on its surface (it may be the only one that sees a structure) is not
   judged. The cutoff is a fixed gross-error ratio (``outlier_cutoff``, log), not a multiple of
   the residuals' MAD: one-sided contamination inflates the MAD until nothing is rejected, and
   the prediction's genuine local errors are far from Gaussian. The global fit has a weak vote
   in every judging window (``judge_prior`` anchors at v = 0, never counted as support): where
   bad anchors happen to match the good ones in number locally, it tips the balance.
   Sparse sets (fewer anchors than grid cells) judge on at most ``judge_max_bins`` bins over
   the frame's depth range: bins of ``range_sigma`` up to a depth ratio of ~2 across the
   frame, wider bands beyond. In bins of ``range_sigma`` over a wide range (outdoors, or a
   prediction that puts a window at 9 m) most of a sparse set's anchors are alone on their
   band, hence not judged, and a x1.8 one among them is taken as it is
   (bench/scale_recovery.py --only guide, 30 % of 100 random anchors corrupted: the real
   prediction's error over clean went from +41 % to +21 %, about what dropping the corrupted
   anchors by an oracle costs; on the same scene stretched to 0.8-40 m from +129 % to +25 %).
   Dense sets keep ``range_sigma``: their bands have neighbours, and wider ones made a 16-line
   scan with corrupted returns worse.
   Sparse sets (up to ``consensus_max`` anchors) have a second judge with a veto: the median
   log ratio of each anchor's 8 nearest anchors (pixels, and the judging's guide at one
   judging cell per judging bin), the same cutoff, the judging field's rejects not voting
   and its unjudged anchors not judged. Where anchors are few the judging field is coarse and
   a corrupted third pulls its weighted mean towards them (the good anchors of a region the
   prediction gets 30 % wrong, and the x1.8 ones, end up on either side of it, both within the
   cutoff); a median stays with the majority. Denser sets are left to the field: there the
   median did not help on the benchmark (16 scan lines, ~2000 anchors), and its k-d tree query
   would cost about as much as the whole correction.

5. Image guided (``guide``, with the frame's RGB image): where the prediction is weak its depth
   cannot tell which anchors share a surface; the image's lightness (Rec. 601 luma, 0-1) joins
   the bilateral axis, which becomes ``mix[0] * log depth + mix[1] * lightness`` (bins of
   ``range_sigma``; lightness counts ``range_sigma / colour_sigma`` per unit, so one bin is
   ``colour_sigma`` of lightness). 'depth': (1, 0), the above; 'image': (0, 1); 'both': per
   frame, after the judging rounds, each of MIX_CANDIDATES (the depth alone, and depth +
   lightness at half weight) gets a field on the judging grid from every other anchor, and the
   one that predicts the others best wins (a holdout, see _choose_mix). Judging
   itself runs on the depth axis ('image': on the lightness). One axis, not two: the grid, the
   pyramid and the dense read stay those of the depth guide, at the cost of one composed
   half-resolution guide image.

Judging rounds run on a grid of four times the cell with nearest-cell splats and scales four
times apart (neighbourhoods, not detail, matter there: the same accuracy as twice the cell and
scales twice apart in bench/scale_recovery.py, ~13 % less time). Anchor sets denser than
``max_anchors_per_cell`` are thinned evenly.

The numpy / OpenCV code here is the reference. Where numba is installed (and
``FIFFDEPTH_NUMBA`` is not 0) the same steps run as compiled kernels (``_compiled``: the
fields, the judging rounds, the corners, the spline's centres and solve, the dense read and
its upsampling), equal to float32 rounding and ~40 % cheaper per frame: the grids are small,
and the reference's cost is its ~1700 calls per frame, not their arithmetic.

``local_correction`` corrects a given aligned depth. ``corrected_fit``, what ScaleRecovery
runs, takes the relative depth and the fit instead: the aligned depth is computed where the
correction reads it (the anchors, the half-resolution guide) and, compiled, in its final
product, which also applies the depth range: one pass over the full-resolution image instead
of three (the affine map, the product, the range), the same values.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np

from . import _compiled
from .fit import _median, _median_rows, apply_fit, clip_range, evenly_spaced

GUIDES = ('depth', 'image', 'both')


@dataclass(frozen=True)
class LocalCorrectionOptions:
    cell: int = 16                   # coarse grid cell, pixels
    base_sigma: float = 0.5          # finest Gaussian scale, cells
    min_support: float = 0.5         # anchors at which a scale is fully used (interpolation)
    edge_aware: bool = True          # bilateral grid over the aligned log depth
    range_sigma: float = 0.1         # bilateral bin width, log depth (~10 % depth difference)
    dense_range_sigma: float | None = 0.05  # the final field's bin width for dense anchor sets
    #                                  (>= 1 per cell); None: range_sigma (judging keeps it)
    max_bins: int = 48               # bilateral bins cap (wider bins for huge depth ranges)
    judge_max_bins: int | None = 8   # the judging's bins cap for sparse anchor sets (< 1 per
    #                                  cell): wide depth ranges get wider bands; None: max_bins
    outlier_support: float = 3.0     # anchors on the same surface that can outvote one anchor
    outlier_cutoff: float = 0.5      # Tukey cutoff, log ratio to the neighbourhood (~ x1.65)
    judge_prior: float = 0.5         # the global fit counts as this many anchors when judging
    iterations: int = 6              # max robust rounds (clean frames stop after 1-2; 0: off)
    settle: float = 0.01             # rounds stop once the mean weight change is below this
    noise_floor: float = 0.01        # log-ratio noise floor (1 %): no anchor is trusted more
    max_correction: float = 1.0      # |log factor| clip: at most x e either way
    max_anchors_per_cell: float = 4.0  # denser anchor sets are thinned evenly (bounded cost)
    guide: str = 'depth'             # bilateral guide with an image: 'depth', 'image', 'both'
    colour_sigma: float = 0.08       # bilateral bin width in image lightness (0-1)
    mix: tuple | None = None         # 'both': fixed (depth, image) guide weights; None: adapt
    spline: bool = True              # thin-plate spline base under the local detail
    spline_smoothing: float = 0.03   # its smoothing (image side = 1); 0 interpolates exactly
    spline_centres: int = 128        # more anchors are averaged per judging cell first
    consensus_max: int = 1024        # sets up to this size: also judged by neighbours' median
    detail: bool = True              # a pixel-scale level: what the grid leaves of each residual

    def __post_init__(self):
        if int(self.cell) < 1:
            raise ValueError(f'local correction cell must be >= 1 pixel, got {self.cell}')
        if not (self.base_sigma > 0 and self.min_support > 0 and self.outlier_support > 0):
            raise ValueError('local correction needs base_sigma, min_support and '
                             'outlier_support > 0')
        if not self.outlier_cutoff > 0:
            raise ValueError(f'outlier_cutoff must be > 0, got {self.outlier_cutoff}')
        if not self.judge_prior >= 0:
            raise ValueError(f'judge_prior must be >= 0, got {self.judge_prior}')
        if not self.max_anchors_per_cell > 0:
            raise ValueError('max_anchors_per_cell must be > 0')
        if self.guide not in GUIDES:
            raise ValueError(f"local correction guide must be one of {GUIDES}, got "
                             f"{self.guide!r}")
        if not (self.spline_smoothing >= 0 and int(self.spline_centres) >= 3):
            raise ValueError('spline_smoothing must be >= 0 and spline_centres >= 3, got '
                             f'{self.spline_smoothing!r}, {self.spline_centres!r}')
        if not int(self.consensus_max) >= 0:
            raise ValueError(f'consensus_max must be >= 0, got {self.consensus_max!r}')
        if not self.colour_sigma > 0:
            raise ValueError(f'colour_sigma must be > 0, got {self.colour_sigma}')
        if self.mix is not None and not (len(self.mix) == 2 and min(self.mix) >= 0
                                         and max(self.mix) > 0):
            raise ValueError(f'mix must be two weights >= 0, not both 0, got {self.mix!r}')
        if self.dense_range_sigma is not None and not self.dense_range_sigma > 0:
            raise ValueError(f'dense_range_sigma must be > 0 or None, got '
                             f'{self.dense_range_sigma!r}')
        if self.judge_max_bins is not None and not int(self.judge_max_bins) >= 2:
            raise ValueError(f'judge_max_bins must be >= 2 or None, got '
                             f'{self.judge_max_bins!r}')
        if not (self.range_sigma > 0 and self.max_bins >= 2 and self.iterations >= 0):
            raise ValueError('local correction needs range_sigma > 0, max_bins >= 2 and '
                             'iterations >= 0')


@dataclass(eq=False)
class LocalCorrection:
    depth: np.ndarray         # float32 HxW corrected depth: aligned * correction factor
    weights: np.ndarray       # float64 per anchor: robust weight in [0, 1] (0 = rejected)
    sigma: float              # robust spread of the local residuals (log), NaN if not judged

    @property
    def inliers(self) -> np.ndarray:
        return self.weights > 0


# Binomial kernel along the bilateral axis (sigma = 1 bin); its peak normalises anchor counts.
_RANGE_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
_ONE = np.ones(1, np.float32)
_NO_WEIGHTS = np.zeros((0, 0))   # nearest-cell corners without a bilateral axis (compiled path)
_NO_BINS = np.zeros(0, np.int64)  # no bilateral axis (compiled path)
_NO_FRACTIONS = np.zeros(0)
_JUDGE_CELLS = 4         # judging grid cell, in cells of the interpolation grid
_JUDGE_RATIO = 4.0       # judging scales 4x apart (neighbourhoods of 0.5, 2, 8 judge cells)
_MAX_SIGMA = 1.0        # blur at most this many cells on a pyramid floor; pool beyond
_SPLINE_STEP = 2         # the spline base is evaluated every 2 cells, linear between
_SLICE_STEP = 2         # the correction factor is read every 2 pixels, then upsampled
_CONSENSUS_NEIGHBOURS = 8   # the consensus judging's neighbourhood, anchors
_DETAIL_CELL = 2 * _SLICE_STEP   # the detail level's cell, pixels (2 half-resolution pixels)


class _Workspace(threading.local):
    """Per-thread scratch images, reused between frames: a fresh 1 MB array costs page faults
    worth several times the arithmetic done on it."""

    def __init__(self):
        self.arrays: dict = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        arr = self.arrays.get(name)
        if arr is None or arr.shape != tuple(shape) or arr.dtype != dtype:
            arr = self.arrays[name] = np.empty(shape, dtype)
        return arr


_WORK = _Workspace()


@functools.lru_cache(maxsize=32)
def _geometry(height, width, cell, base_sigma, ratio):
    """(levels, sigmas, floors, gh, gw, nh, nw) of a _Grid (cached: a frame builds several
    grids of the same few geometries)."""
    nh, nw = max(-(-height // cell), 1), max(-(-width // cell), 1)
    # Scales ``ratio`` apart up to the grid's extent; beyond that the field is the mean.
    levels = max(int(np.floor(np.log(max(nh, nw) / base_sigma) / np.log(ratio))) + 1, 1)
    sigmas = [base_sigma * ratio ** k for k in range(levels)]
    floors = [0] * levels
    for k, s in enumerate(sigmas):
        j = 0
        while s / 2 ** j > _MAX_SIGMA and min(nh, nw) / 2 ** (j + 1) >= 2:
            j += 1
        floors[k] = j
    step = 2 ** max(floors)
    # nh, nw: the cells that cover the image; gh, gw: padded to halve down to the top floor.
    return levels, tuple(sigmas), tuple(floors), -(-nh // step) * step, -(-nw // step) * step, \
        nh, nw


class _Grid:
    """Coarse grid, optionally bilateral (bins along a third axis).

    Cell i is centred on pixel (i + 0.5) * cell - 0.5. The grid is padded with empty cells so
    that each side halves exactly down to the coarsest pyramid floor. Grids are stored as two
    planes, (2, gh, gw, channels): (numerator, denominator) while splatting, (estimate, base
    share) after blending; each plane contiguous, so the blending's arithmetic runs on
    contiguous arrays (~3x faster than on every other channel group). A bilateral grid has
    ``bins + 3`` channels: the bins, two empty guards (the range blur reaches two bins) and
    the purely spatial grid (the splat summed over bins).
    """

    def __init__(self, height: int, width: int, cell: int, base_sigma: float,
                 axis: '_RangeAxis | None' = None, ratio: float = 2.0):
        self.h, self.w, self.cell = height, width, cell
        (self.levels, self.sigmas, self.floors, self.gh, self.gw, self.nh,
         self.nw) = _geometry(height, width, cell, base_sigma, ratio)
        self.axis = axis
        self.bins = axis.bins if axis is not None else 1
        self.channels = self.bins + 3 if axis is not None else 1

    @property
    def spatial_channel(self) -> int:
        return self.bins + 2

    @functools.cached_property
    def levels_arrays(self):
        """(floors int64, sigmas float64, Gaussians per level at their floors) for
        ``_compiled.build_field`` (the kernels cached per geometry: read only)."""
        return _level_arrays(self.floors, self.sigmas)

    @property
    def plane(self) -> int:
        """Values in one of the two planes (the flat offset of the second)."""
        return self.gh * self.gw * self.channels

    @staticmethod
    def _axis(pos, n):
        i0 = np.clip(np.floor(pos), 0, max(n - 2, 0)).astype(np.int64)
        f = np.clip(pos - i0, 0.0, 1.0) if n > 1 else np.zeros(len(pos))
        return i0, np.minimum(i0 + 1, n - 1), f

    def corners(self, rows, cols, anchor_bins=None, nearest=False):
        """Flat indices into a (2, gh, gw, channels) grid (first plane) and weights,
        both (k, n), of the grid corners of n points: 4 (bilinear) or 1 (``nearest`` cell) in
        space, times 2 along the bilateral axis (``anchor_bins`` from _RangeAxis.locate)."""
        if _compiled.ENABLED:
            return self._corners_compiled(rows, cols, anchor_bins, nearest)[:2]
        if nearest:
            idx = (np.minimum(rows // self.cell, self.nh - 1) * self.gw
                   + np.minimum(cols // self.cell, self.nw - 1))[None]
            wts = None
        else:
            y0, y1, fy = self._axis((rows + 0.5) / self.cell - 0.5, self.nh)
            x0, x1, fx = self._axis((cols + 0.5) / self.cell - 0.5, self.nw)
            ys, xs = np.stack([y0, y1]) * self.gw, np.stack([x0, x1])
            idx = (ys[:, None] + xs[None]).reshape(4, -1)
            wy, wx = np.stack([1 - fy, fy]), np.stack([1 - fx, fx])
            wts = (wy[:, None] * wx[None]).reshape(4, -1)
        idx = idx * self.channels
        if anchor_bins is not None:
            b0, b1, fb = anchor_bins
            k = len(idx)
            idx = (idx[:, None] + np.stack([b0, b1])[None]).reshape(2 * k, -1)
            fw = np.stack([1 - fb, fb])
            wts = (fw[None] if wts is None else wts[:, None] * fw[None]).reshape(2 * k, -1)
        return idx, wts

    def _corners_compiled(self, rows, cols, anchor_bins, nearest):
        """(idx, wts or None, splat index) by ``_compiled.corners``."""
        b0, b1, fb = anchor_bins if anchor_bins is not None else (_NO_BINS,) * 3
        idx, wts, index = _compiled.corners(
            np.asarray(rows, np.int64), np.asarray(cols, np.int64), self.cell, self.nh,
            self.nw, self.gw, self.channels, self.plane, b0, b1, np.asarray(fb, np.float64),
            bool(nearest))
        return idx, (wts if wts.size else None), index

    def splat_index(self, corners) -> np.ndarray:
        """The bincount index of ``splat`` for these corners (num then den): fixed per anchor
        set, so the judging rounds compute it once."""
        idx = corners[0]
        return np.concatenate([idx.ravel(), (idx + self.plane).ravel()])

    def splat(self, corners, values, weights, index=None) -> np.ndarray:
        """(num, den) of the points, (2, gh, gw, channels) float32, by one bincount
        (``index``: ``splat_index(corners)`` if already known)."""
        idx, wts = corners
        w = weights if wts is None else wts * weights
        w = np.broadcast_to(w, idx.shape)
        size = idx.size
        both = np.empty(2 * size)
        np.multiply(w, values, out=both[:size].reshape(idx.shape))
        both[size:].reshape(idx.shape)[...] = w
        flat = np.bincount(self.splat_index(corners) if index is None else index, both,
                           2 * self.plane)
        return flat.astype(np.float32).reshape(2, self.gh, self.gw, self.channels)

    def sample(self, state, corners):
        """Interpolate the first plane of a (2, gh, gw, channels) grid at the points."""
        idx, wts = corners
        if _compiled.ENABLED:
            return _compiled.sample(state, idx, _NO_WEIGHTS if wts is None else wts)
        vals = state.ravel()[idx]
        return vals[0] if wts is None else np.sum(vals * wts, axis=0)


@functools.lru_cache(maxsize=32)
def _level_arrays(floors: tuple, sigmas: tuple):
    f = np.array(floors, np.int64)
    s = np.array(sigmas, np.float64)
    f.flags.writeable = s.flags.writeable = False
    return f, s, _compiled.kernels_for(sigmas, floors, _gaussian)


class _RangeAxis:
    """The bilateral axis: log aligned depth in bins of ``width`` from ``g0``."""

    def __init__(self, lo: float, hi: float, opts: 'LocalCorrectionOptions', max_gw: int):
        # cv2.remap addresses < 32767 columns: the side-by-side bins must fit (_slice).
        cap = max(min(opts.max_bins, 32000 // max_gw), 2)
        bins = int(np.ceil((hi - lo) / opts.range_sigma)) + 1
        self.width = opts.range_sigma if bins <= cap else (hi - lo) / (cap - 1)
        self.bins = max(min(bins, cap), 2)
        self.g0 = lo

    def locate(self, guide):
        """Lower bin, upper bin and fraction towards the upper one, per value."""
        if _compiled.ENABLED:
            return _compiled.locate(np.asarray(guide, np.float64), float(self.g0),
                                    float(self.width), self.bins)
        return _Grid._axis((guide - self.g0) / self.width, self.bins)


def _pool2(a: np.ndarray) -> np.ndarray:
    """Mean over 2x2 blocks of both planes of a (2, h, w, channels) grid (sides are even by
    construction: the planes stacked are one image whose 2x2 blocks never straddle them)."""
    _, h, w, c = a.shape
    return cv2.resize(a.reshape(2 * h, w, c), (w // 2, h), interpolation=cv2.INTER_AREA) \
        .reshape(2, h // 2, w // 2, c)


def _unpool2(a: np.ndarray, times: int = 1, dst: np.ndarray | None = None) -> np.ndarray:
    """Bilinear 2x upsampling of an (h, w, channels) grid (inverse geometry of _pool2),
    ``times`` times; the last into ``dst`` if given (contiguous, of the result's shape)."""
    for i in range(times):
        h, w, c = a.shape
        out = None if (dst is None or i < times - 1) else dst.reshape(h * 2, w * 2, c)
        if out is not None and c == 1:
            out = out[:, :, 0]                # OpenCV's one-channel image is 2-d
        a = cv2.resize(a, (w * 2, h * 2), dst=out, interpolation=cv2.INTER_LINEAR) \
            .reshape(h * 2, w * 2, c)
    return a


@functools.lru_cache(maxsize=32)
def _gaussian(sigma: float) -> np.ndarray:
    """cv2.GaussianBlur's own float kernel for ``sigma`` (its size rule for float images,
    2 * round(4 sigma) + 1), for sepFilter2D: the same sums without building the kernel on
    every call (read only, cached)."""
    kernel = cv2.getGaussianKernel(int(round(sigma * 8 + 1)) | 1, sigma, cv2.CV_32F)
    kernel.flags.writeable = False
    return kernel


@functools.lru_cache(maxsize=8)
def _gaussian_k(k: int, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur's float kernel for an explicit size ``k`` (read only, cached)."""
    kernel = cv2.getGaussianKernel(k, sigma, cv2.CV_32F).ravel()
    kernel.flags.writeable = False
    return kernel


def _range_blur(nd: np.ndarray) -> np.ndarray:
    """Blur (2, gh, gw, channels) along the last axis with the binomial kernel, zero borders.
    Filtered down the columns of the transposed (channels, rows) image: a separable filter
    along rows of a few tens of channels costs ~2x in per-row setup (the same sums). (A
    product with the banded matrix is faster still, but hands the work to OpenBLAS's
    threads, whose idle spinning doubles the process's CPU time.)"""
    flat = cv2.transpose(nd.reshape(-1, nd.shape[-1]))
    flat = cv2.sepFilter2D(flat, -1, _ONE, _RANGE_KERNEL, borderType=cv2.BORDER_CONSTANT)
    return cv2.transpose(flat).reshape(nd.shape)


def _multiscale(grid: _Grid, nd: np.ndarray, gain: float, exclusive: bool,
                prior: tuple[float, float] | None = None) -> np.ndarray:
    """Density-adaptive normalised convolution over a pyramid; the base is 0.

    ``nd``: splatted (num, den), shape (2, gh, gw, channels). Returns, in the same layout, the
    blended estimate and the weight the base keeps, prod_k (1 - alpha_k), so that a non-zero
    base b can be added afterwards as est + keep * b.

    Interpolation (``exclusive`` False): a scale blends in from the first anchor and is fully
    used at ``support`` anchors (folded into ``gain``), so the field passes close to isolated
    anchors. Judging (``exclusive`` True): a scale only takes over from ``support`` anchors,
    fully at twice that, which bounds any single anchor's share of the field at its own
    position by ~1/support.

    ``prior`` (anchors, value): a pseudo-anchor of that value worth that many anchors (in units
    of the support) in every window; it shifts the estimate but never counts as support.
    """
    floors = grid.floors
    pyramid = [nd]
    for _ in range(max(floors)):
        pyramid.append(_pool2(pyramid[-1]))
    current = floors[-1]
    # The estimate and the base's share, each contiguous (h, w, channels). Each level moves
    # both towards its own (estimate, 0) by alpha: est += alpha (n - est), keep -= alpha keep.
    # The grids are small: numpy calls and strided passes, not arithmetic, set the cost.
    # The result's planes: the state lands there when it reaches floor 0 (no final stack).
    state = np.empty(nd.shape, np.float32)
    if current == 0:
        est, keep = state
        est.fill(0.0)
        keep.fill(1.0)
    else:
        est = np.zeros(pyramid[current].shape[1:], np.float32)
        keep = np.ones_like(est)
    tiny, zero, one = np.float32(1e-30), np.float32(0.0), np.float32(1.0)
    for k in range(grid.levels - 1, -1, -1):
        j = floors[k]
        if current > j:                                      # carry the state down to floor j
            to = state if j == 0 else (None, None)
            est = _unpool2(est, current - j, to[0])
            keep = _unpool2(keep, current - j, to[1])
            current = j
        s = grid.sigmas[k] / 2 ** j
        kernel = _gaussian(s)
        n, d = (cv2.sepFilter2D(plane, -1, kernel, kernel, borderType=cv2.BORDER_CONSTANT)
                .reshape(plane.shape) for plane in pyramid[j])
        # Effective anchors in the window: a unit-peak kernel summed over the splats.
        alpha = np.multiply(d, np.float32(gain * s * s * 4 ** j))
        if exclusive:                            # clip to [0, 1] (np.clip's wrapper is slower)
            alpha -= one
            np.maximum(alpha, zero, out=alpha)   # (d >= 0: a sum of non-negative splats)
        np.minimum(alpha, one, out=alpha)
        if prior is not None:
            # Worth prior[0] * support anchors at every scale: d counts anchors per window
            # as d * gain * s^2 * 4^j (the alpha above). d + weight > 0: no floor needed.
            weight = np.float32(prior[0] / (gain * s * s * 4 ** j))
            ratio = np.add(n, weight * np.float32(prior[1]))
            ratio /= np.add(d, weight)
        else:
            ratio = np.divide(n, np.maximum(d, tiny))
        ratio -= est
        ratio *= alpha
        est += ratio
        alpha *= keep
        keep -= alpha
    if current > 0:
        _unpool2(est, current, state[0])
        _unpool2(keep, current, state[1])
    return state


class _Fields:
    """Spatial and (edge aware) bilateral field of one anchor set, computed in one pass.

    The bilateral field falls back to the spatial one where no scale had support.
    """

    def __init__(self, shape, opts: LocalCorrectionOptions, cell, rows, cols,
                 axis: _RangeAxis | None = None, anchor_bins=None, nearest=False,
                 ratio: float = 2.0):
        h, w = shape
        self.grid = grid = _Grid(h, w, cell, opts.base_sigma, axis, ratio)
        if _compiled.ENABLED:
            *self.corners, self.index = grid._corners_compiled(rows, cols, anchor_bins,
                                                               nearest)
            return
        self.corners = grid.corners(rows, cols, anchor_bins, nearest)
        self.index = grid.splat_index(self.corners)

    def build(self, v, wv, support, exclusive, prior=0.0) -> np.ndarray:
        """The blended grid, (2, gh, gw, channels): [0, ..., :bins] the field (the spatial
        field if not bilateral), [1, ..., :bins] the share of the spatial fallback in it.
        ``prior``: v = 0 (the global fit) counts as this many anchors in every window."""
        if _compiled.ENABLED:
            return self._build_compiled(v, wv, support, exclusive, prior)
        nd, base, gain = self.splat(v, wv, support)
        pseudo = (prior / support, -base) if prior > 0 else None   # v = 0, relative to base
        return self.blend(_multiscale(self.grid, nd, gain, exclusive, pseudo), base)

    def _build_compiled(self, v, wv, support, exclusive, prior=0.0) -> np.ndarray:
        """``build`` in one compiled call (``_compiled.build_field``: the same steps)."""
        grid = self.grid
        floors, sigmas, kernels = grid.levels_arrays
        wts = self.corners[1]
        return _compiled.build_field(
            self.index, _NO_WEIGHTS if wts is None else wts, np.asarray(v, np.float64),
            np.asarray(wv, np.float64), float(support), bool(exclusive), float(prior),
            grid.gh, grid.gw, grid.channels, grid.bins if grid.axis is not None else 0,
            floors, sigmas, kernels, _RANGE_KERNEL)

    def splat(self, v, wv, support):
        """(nd, base, gain): the anchors splatted relative to their weighted mean ``base``
        (with the spatial channel and the range blur on a bilateral grid), and the gain of
        _multiscale."""
        total = float(wv.sum())
        base = float(np.dot(v, wv)) / total
        mean_w = total / np.count_nonzero(wv)
        gain = 2.0 * np.pi / (mean_w * support)
        grid = self.grid
        nd = grid.splat(self.corners, v - base, wv, self.index)
        if grid.axis is None:
            return nd, base, gain
        flat = nd.reshape(-1, grid.channels)       # (cv2.reduce: ~5x np.sum's speed here)
        nd[..., grid.spatial_channel] = cv2.reduce(flat[:, :grid.bins], 1, cv2.REDUCE_SUM) \
            .reshape(nd.shape[:-1])
        nd = _range_blur(nd)       # commutes with pooling and spatial blur: done once
        return nd, base, gain / float(_RANGE_KERNEL[2])

    def blend(self, state, base) -> np.ndarray:
        """``state`` from _multiscale as ``build`` returns it: the spatial fallback blended
        into the bins, the base added back (in place)."""
        grid = self.grid
        if grid.axis is None:
            state[0] += np.float32(base)
            return state
        bins, sp = grid.bins, grid.spatial_channel
        field, keep = state[0, ..., :bins], state[1, ..., :bins]
        keep_spatial = keep * state[0, ..., sp:]
        field += keep_spatial
        field += np.float32(base)
        return state

    def judge_rounds(self, v, options: LocalCorrectionOptions):
        """(weights, residuals, fallback shares) of ``_correction_grid``'s judging rounds on
        this (judging) grid, compiled (``_compiled.judge_rounds``)."""
        grid = self.grid
        floors, sigmas, kernels = grid.levels_arrays
        wts = self.corners[1]
        return _compiled.judge_rounds(
            self.index, _NO_WEIGHTS if wts is None else wts, np.asarray(v, np.float64),
            float(options.outlier_support), float(options.judge_prior), grid.gh, grid.gw,
            grid.channels, grid.bins if grid.axis is not None else 0, floors, sigmas, kernels,
            _RANGE_KERNEL, int(options.iterations), float(options.outlier_cutoff),
            float(options.settle))

    @staticmethod
    def build_together(fields: 'list[_Fields]', v, wv, support) -> list:
        """``build(v, wv, support, False)`` of bilateral fields on grids of the same cells
        and scales (their bins differ): one _multiscale over their channels side by side
        (each channel is blended on its own), each then split off: the small grids' cost is
        the number of calls, not the values."""
        if _compiled.ENABLED:      # one call per field already: nothing to gain by joining
            return [f._build_compiled(v, wv, support, False) for f in fields]
        parts = [f.splat(v, wv, support) for f in fields]
        grid = fields[0].grid
        assert all(f.grid.axis is not None and (f.grid.gh, f.grid.gw, f.grid.floors,
                                                f.grid.sigmas)
                   == (grid.gh, grid.gw, grid.floors, grid.sigmas) for f in fields)
        assert all(p[2] == parts[0][2] for p in parts)       # the same anchors and weights
        state = _multiscale(grid, np.concatenate([p[0] for p in parts], -1), parts[0][2],
                            False)
        ends = np.cumsum([0] + [f.grid.channels for f in fields])
        return [f.blend(np.ascontiguousarray(state[..., lo:hi]), p[1])
                for f, p, lo, hi in zip(fields, parts, ends[:-1], ends[1:])]

    def sample(self, state):
        """The field at the anchors (``sample_planes``: with the fallback share)."""
        return self.grid.sample(state, self.corners)

    def sample_planes(self, state):
        """(field, fallback share) at the anchors, by one gather (``index`` reads both); the
        numpy judging rounds' (the compiled ones read with ``_compiled.sample_planes``)."""
        vals = state.reshape(-1)[self.index].reshape(2, *self.corners[0].shape)
        wts = self.corners[1]
        return vals[:, 0] if wts is None else np.sum(vals * wts, axis=1)


def _cells(shape, options: LocalCorrectionOptions) -> int:
    """Cells of the interpolation grid over an image of ``shape``."""
    h, w = shape
    return (-(-h // options.cell)) * (-(-w // options.cell))


def anchor_budget(shape, options: LocalCorrectionOptions = LocalCorrectionOptions()) -> int:
    """Most anchors the correction grid can tell apart: ``max_anchors_per_cell`` per cell.
    Denser sets are thinned with ``fit.evenly_spaced``: the subset carries the same field at a
    bounded cost."""
    return int(options.max_anchors_per_cell * _cells(shape, options))


def thinned(n: int, shape, options: LocalCorrectionOptions = LocalCorrectionOptions()
            ) -> np.ndarray:
    """Indices of the n anchors (in the sensor's order) that the correction keeps over an
    image of ``shape``: all of them, or ``anchor_budget`` of them evenly spaced."""
    return evenly_spaced(n, anchor_budget(shape, options))


@dataclass(eq=False)
class CorrectionGrid:
    """A frame's correction on the coarse grid, built from its anchors alone: what remains is
    reading it at every pixel (``_slice`` here, ``finish.local_correction`` on a device).

    ``factor``: exp of the clipped log field, (gh, gw, bins) float32 (bins 1 without the
    bilateral axis); None when no anchor was usable (the depth stays as it is). ``mix``: the
    bilateral guide is ``mix[0] * log(aligned) + mix[1] * lightness`` (``compose_guide``).
    ``detail``: the detail level's factor (``detail_grid``, cells of ``_DETAIL_CELL`` pixels),
    multiplied onto the half-resolution read of ``factor`` upsampled 2x; None: off."""

    factor: np.ndarray | None
    grid: '_Grid | None'
    weights: np.ndarray       # as LocalCorrection.weights
    sigma: float
    mix: tuple = (1.0, 0.0)
    detail: np.ndarray | None = None


def guide_range(guide: np.ndarray):
    """(lo, hi) of the finite values of a subsample of a half-resolution guide (log depth or
    lightness), or None: the bilateral axis's extent (nanmin over every pixel costs more than
    the whole slice; pixels beyond it fall into the end bins)."""
    sub = guide[::2, ::2]
    sub = sub[np.isfinite(sub)]
    return (float(sub.min()), float(sub.max())) if sub.size else None


_WARM = threading.Lock()
_WARMED = []


def warm_up(log=None) -> None:
    """Compile the fit and the correction ahead of the first frame (``_compiled``, where
    numba is used: seconds once per machine, then ~0.5 s per process from numba's cache) by
    fitting and correcting a small frame; once per process, the numpy path needs none.
    ``log``: a callable for the two progress lines (a ROS node's logger.info); default: this
    module's logging logger at INFO."""
    if not _compiled.ENABLED:
        return
    with _WARM:
        if _WARMED:
            return
        log = log or logging.getLogger(__name__).info
        log('loading the compiled scale-recovery kernels (the first run on a machine '
            'compiles them, ~20 s on 2 cores; numba caches them for later runs)')
        start = time.monotonic()
        from .fit import fit_scale_shift
        rng = np.random.default_rng(0)
        h, w = 128, 160            # 80 cells: room for 300 anchors, > spline_centres
        relative = rng.uniform(0.2, 1.0, (h, w)).astype(np.float32)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        idx = rng.choice(relative.size, 300, replace=False)
        z = 0.5 + 3.0 * relative.ravel()[idx]
        fit = fit_scale_shift(relative.ravel()[idx], z)
        aligned = apply_fit(relative, fit.scale, fit.shift, 'depth')
        options = LocalCorrectionOptions(guide='both')
        local_correction(aligned, idx // w, idx % w, z, image=image, options=options)
        corrected_fit(relative, fit.scale, fit.shift, 'depth', idx // w, idx % w, z,
                      image=image, options=options, depth_range=(0.1, 10.0))
        _WARMED.append(True)
        log(f'compiled scale-recovery kernels ready in {time.monotonic() - start:.1f} s')


def _mix_for(options: LocalCorrectionOptions) -> tuple[float, float]:
    """(depth, image) weights of the bilateral guide, the image's in log-depth units: 'image'
    alone, or 'both' with a fixed ``mix`` (or unjudged anchors: equal weights); 'both'
    otherwise chooses per frame (_choose_mix)."""
    k = options.range_sigma / options.colour_sigma
    if options.guide == 'image':
        return 0.0, k
    if options.mix is not None:
        return float(options.mix[0]), float(options.mix[1]) * k
    return 1.0, k


# 'both': the (depth, image) mixes tried, the image's weight in units of colour_sigma.
# (1, 1) and (0.5, 1) were tried too and never chosen on the benchmark's frames
# (bench/scale_recovery.py --only guide); with the holdout scoring, a third candidate of
# either changed the mean by under 0.3 %: two candidates, the cost of two builds.
MIX_CANDIDATES = ((1.0, 0.0), (1.0, 0.5))


_CHOOSE_ANCHORS = 1024   # 'both' scores the candidate mixes on at most this many anchors


def _choose_mix(options, shape, rows, cols, v, u, ga, la, depth_axis=None):
    """The guide (mix) that best predicts the anchors from their neighbours.

    A holdout: each candidate mix's field on the judging grid (the interpolation's support,
    ``min_support``) from every other anchor of an even subset (``_CHOOSE_ANCHORS``: a choice,
    not a field) is read at the others; the mix with the lowest weighted mean |residual|
    (judged weights ``u``, each residual capped at ``outlier_cutoff``) wins, the first (the
    depth alone) on ties. A prediction that separates the surfaces keeps its own edges; a poor
    one leans on the image. Not the judging field itself: its support rule (a scale counts
    from ``outlier_support`` anchors) coarsens the guide that splits the anchors over more
    bins as soon as some are rejected, and its weights were set by agreement with the depth
    guide's field; both favoured the depth guide on corrupted anchor sets (a 16-line scan with
    30 % corrupted went back to the depth guide and lost 12 %).
    ``depth_axis``: the judging's (axis, bins), the depth candidate's (its bins taken at the
    subset). The candidates' axes span the subset's own guide values (a choice read at anchors
    only); the caller builds the final field's axis for the winner."""
    k = options.range_sigma / options.colour_sigma
    sub = evenly_spaced(len(v), _CHOOSE_ANCHORS)
    srows, scols, sv, su, sga, sla = (x[sub] for x in (rows, cols, v, u, ga, la))
    train = np.arange(len(sub)) % 2 == 0
    test = ~train
    best = None
    candidates = []
    for md, mc in MIX_CANDIDATES:
        mix = (md, mc * k)
        if mix == (1.0, 0.0) and depth_axis is not None and depth_axis[0] is not None:
            axis, bins = depth_axis[0], tuple(b[sub] for b in depth_axis[1])   # the judging's
        else:
            axis, bins = _axis_for(options, shape[1], mix, sga, sla, None, None)
        candidates.append((mix, bins, _Fields(
            shape, options, _JUDGE_CELLS * options.cell, srows[train], scols[train], axis,
            tuple(b[train] for b in bins), nearest=True, ratio=_JUDGE_RATIO)))
    states = _Fields.build_together([c[2] for c in candidates], sv[train], su[train],
                                    options.min_support)
    for (mix, bins, fields), state in zip(candidates, states):
        at = fields.grid.corners(srows[test], scols[test], tuple(b[test] for b in bins),
                                 nearest=True)
        e = np.abs(sv[test] - fields.grid.sample(state, at))
        err = float(np.dot(su[test], np.minimum(e, options.outlier_cutoff)))
        if best is None or err < best[0]:
            best = (err, mix)
    return best[1]


def _once(value):
    """A function returning ``value``, or ``value()`` computed on the first call if callable."""
    if callable(value):
        return functools.cache(value)
    return lambda: value


def _composed_at(ga, la, mix):
    """The composed guide at the anchors: ``mix[0] * ga + mix[1] * la`` (the aligned log
    depth and the lightness there; ``la`` None where the image's weight is 0)."""
    if mix[1] == 0:
        return ga * mix[0]
    return la * mix[1] if mix[0] == 0 else ga * mix[0] + la * mix[1]


def _axis_for(options, w, mix, ga, la, depth_extent, light_extent):
    """The bilateral axis over the composed guide and the anchors' places on it."""
    g = _composed_at(ga, la, mix)
    lo, hi = float(g.min()), float(g.max())
    ext = None
    parts = [(mix[0], depth_extent), (mix[1], light_extent)]
    if all(m == 0 or e is not None for m, e in parts):
        ext = (sum(m * e[0] for m, e in parts if m), sum(m * e[1] for m, e in parts if m))
    if ext is not None:
        lo, hi = min(ext[0], lo), max(ext[1], hi)
    axis = _RangeAxis(lo, hi, options, -(-w // options.cell))
    return axis, axis.locate(g)


def correction_grid(shape, rows, cols, depth, weight, sample, guide_extent,
                    options: LocalCorrectionOptions = LocalCorrectionOptions(),
                    lightness=None, lightness_extent=None) -> CorrectionGrid:
    """The coarse grid of ``local_correction`` from the anchors: ``sample(rows, cols)`` reads
    the aligned depth at anchor pixels (float32 values; a numpy array or a device tensor
    behind it), ``guide_extent`` is ``guide_range`` of the half-resolution log guide (only
    read with ``options.edge_aware``). ``lightness(rows, cols)``: the image's lightness at
    anchor pixels (``image_lightness``), None without an image (the guide is then the depth,
    whatever ``options.guide``); ``lightness_extent``: its ``guide_range``, or a callable that
    returns it, called only where the extent is needed (not for 'both' when the depth alone
    wins). OpenCV runs on the calling thread meanwhile (``opencv_on_caller_thread``)."""
    with opencv_on_caller_thread():
        return _correction_grid(shape, rows, cols, depth, weight, sample, guide_extent, options,
                                lightness, lightness_extent)


def _correction_grid(shape, rows, cols, depth, weight, sample, guide_extent, options,
                     lightness, lightness_extent) -> CorrectionGrid:
    h, w = shape
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    z = np.asarray(depth, np.float64)
    weights = np.zeros(len(z))
    # Thinned anchors get weight 0 (not judged).
    used = thinned(len(z), (h, w), options)
    rows, cols, z = rows[used], cols[used], z[used]
    a = np.asarray(sample(rows, cols), np.float32).astype(np.float64)
    valid = np.isfinite(a) & (a > 0) & np.isfinite(z) & (z > 0)
    if not valid.any():
        return CorrectionGrid(None, None, weights, np.nan)
    if not valid.all():
        used, rows, cols, z, a = used[valid], rows[valid], cols[valid], z[valid], a[valid]
    v = np.log(z / a)
    # Sensor noise in log space: var(log z) ~ var(z) / z^2, floored so no anchor dominates.
    log_var = 0.0 if weight is None else 1.0 / (np.asarray(weight, np.float64)[used] * z * z)
    wv = np.broadcast_to(1.0 / (log_var + options.noise_floor ** 2), v.shape).copy()
    wv /= wv.mean()

    guide = options.guide if (lightness is not None and options.edge_aware) else 'depth'
    lightness_extent = _once(lightness_extent)
    axis = anchor_bins = la = None
    ga = np.log(a)
    if guide != 'depth':
        la = np.asarray(lightness(rows, cols), np.float32).astype(np.float64)
    # Dense anchors (at least one per grid cell) and sparse ones are treated apart below.
    dense = len(v) >= _cells((h, w), options)
    # Judging on the predicted surfaces (the image alone for guide 'image'); a sparse set's
    # bands widen with the frame's depth range (judge_max_bins), so that an anchor finds
    # neighbours on its band and is judged.
    judge_mix = _mix_for(options) if guide == 'image' else (1.0, 0.0)
    judging = options
    if not dense and options.judge_max_bins is not None \
            and options.judge_max_bins < options.max_bins:
        judging = replace(options, max_bins=int(options.judge_max_bins))
    if options.edge_aware:
        axis, anchor_bins = _axis_for(judging, w, judge_mix, ga, la, guide_extent,
                                      lightness_extent() if judge_mix[1] else None)
    u = np.ones(len(v))
    sigma = np.nan
    judged = options.iterations > 0 and len(v) > 1
    if judged:
        # Judging needs neighbourhoods, not detail: a coarser grid, nearest cell splats.
        judge = _Fields((h, w), options, _JUDGE_CELLS * options.cell, rows, cols, axis,
                        anchor_bins, nearest=True, ratio=_JUDGE_RATIO)
    if judged and _compiled.ENABLED:                # the rounds below in one call
        u, e, unjudged = judge.judge_rounds(v, options)
    for _ in range(options.iterations if judged and not _compiled.ENABLED else 0):
        # Judging counts anchors, not their claimed precision: an outlier's own noise model
        # is as wrong as its depth (a near-looking return claims a small sigma).
        state = judge.build(v, u, options.outlier_support, True, options.judge_prior)
        if axis is not None:
            # Only anchors on the same surface (similar predicted depth) can outvote an anchor;
            # one whose depth band holds no other anchors nearby is not judged by the spatial
            # fallback (it may sample a structure, e.g. a corner, that only it sees).
            e, unjudged = judge.sample_planes(state)
            np.subtract(v, e, out=e)
            e *= 1.0 - unjudged
        else:
            e = v - judge.sample(state)
        t = np.minimum(np.abs(e) * (1.0 / options.outlier_cutoff), 1.0)
        u_new = (1.0 - t * t) ** 2
        if not u_new.any():
            break
        change = float(np.abs(u_new - u).sum()) / len(u)    # the mean (np.mean's sum)
        u = u_new
        if change < options.settle:    # the field is a weighted mean: it has settled as well
            break
    if judged and len(v) <= options.consensus_max:
        # Sparse sets: the judging field is coarse where anchors are few, and a corrupted third
        # pulls its weighted mean towards them; the neighbours' median also has a veto.
        # Neighbours on the judging's own guide: the log depth, or the lightness for 'image'.
        uc = _consensus_weights(rows, cols, v, _composed_at(ga, la, judge_mix), options,
                                unjudged if axis is not None else None, u,
                                axis.width if axis is not None else options.range_sigma)
        if uc.any():                   # as the rounds: never every anchor rejected
            u = uc
    if judged and u.any():
        # Reported only (the cutoff is fixed, see the module docstring); a subset suffices.
        spread = np.abs(e[u > 0])
        sigma = 1.4826 * _median(spread[::max(len(spread) // 2048, 1)])

    mix = judge_mix
    if guide == 'both':
        mix = _mix_for(options) if options.mix is not None or not judged else \
            _choose_mix(judging, (h, w), rows, cols, v, u, ga, la, (axis, anchor_bins))
    # Dense anchors: the nearest-cell splat loses nothing the blur would keep, at a quarter
    # of the cost; and they hold a finer range axis for the final field (its bins still have
    # anchors; sparse sets gain nothing from it, see dense_range_sigma), while the judging
    # above kept range_sigma's wider neighbourhoods. Sparse sets' final field keeps
    # range_sigma (max_bins), whatever bands their judging had.
    final = options
    if dense and options.dense_range_sigma not in (None, options.range_sigma):
        final = replace(options, range_sigma=options.dense_range_sigma)
    if axis is not None and (mix != judge_mix or final is not options
                             or (judging is not options
                                 and axis.width != options.range_sigma)):
        # The final field's axis, built once: the judging's serves where neither the guide
        # nor the bin width changed (a sparse set's judging axis below its bins cap is the
        # final one; above it, its bins were wider).
        axis, anchor_bins = _axis_for(final, w, mix, ga, la, guide_extent,
                                      lightness_extent() if mix[1] else None)
    fields = _Fields((h, w), options, options.cell, rows, cols, axis, anchor_bins,
                     nearest=dense)
    base = None
    v_anchor = v
    if options.spline and np.count_nonzero(u) >= 3:
        base = thin_plate_base((h, w), rows, cols, v, wv * u, fields.grid, options)
        v = v - _bilinear(base, fields.grid, rows, cols)
    state = fields.build(v, wv * u, options.min_support, False)
    field = state[0, ..., :fields.grid.bins]
    if base is not None:
        field += base[:, :, None]
    # np.minimum/maximum: np.clip on this strided view costs ~10x (its wrapper's copies).
    limit = np.float32(options.max_correction)
    factor = np.maximum(field, -limit)
    np.minimum(factor, limit, out=factor)
    weights[used] = u
    detail = None
    if options.detail:
        residual = v_anchor - _read_at(factor, fields.grid, rows, cols, anchor_bins)
        detail = detail_grid((h, w), rows, cols, residual, wv * u, options)
    return CorrectionGrid(np.exp(factor, out=factor), fields.grid, weights, sigma, mix, detail)


def _read_at(field: np.ndarray, grid: _Grid, rows, cols, anchor_bins) -> np.ndarray:
    """The (gh, gw, bins) ``field`` at anchor pixels as ``_slice`` reads it at a pixel
    (bilinear in space on the same cell centres and clamps, linear between the two bins of
    ``anchor_bins``, from ``_RangeAxis.locate``; None without the bilateral axis), float64."""
    if _compiled.ENABLED:
        b0, fb = (anchor_bins[0], anchor_bins[2]) if anchor_bins is not None else \
            (_NO_BINS, _NO_FRACTIONS)
        return _compiled.read_at(field, _cell_coords(grid.h, grid.cell, grid.nh),
                                 _cell_coords(grid.w, grid.cell, grid.nw),
                                 np.asarray(rows, np.int64), np.asarray(cols, np.int64),
                                 b0, np.asarray(fb, np.float64), remap_steps() or 0)
    if anchor_bins is None:
        return _bilinear(field[:, :, 0], grid, rows, cols)
    gx = _cell_coords(grid.w, grid.cell, grid.nw)[cols].reshape(1, -1)
    gy = _cell_coords(grid.h, grid.cell, grid.nh)[rows].reshape(1, -1)
    gw = field.shape[1]
    b0, _, fb = anchor_bins
    tiles = _bin_tiles(field)
    # Bin b0 and b0 + 1 in one remap: two rows of points.
    map_x = np.empty((2, len(cols)), np.float32)
    np.multiply(b0, gw, out=map_x[0], casting='unsafe')
    map_x[0] += gx[0]
    np.add(map_x[0], np.float32(gw), out=map_x[1])
    lo, hi = cv2.remap(tiles, map_x, np.broadcast_to(gy, map_x.shape).copy(),
                       cv2.INTER_LINEAR).astype(np.float64)
    hi -= lo
    hi *= fb
    hi += lo
    return hi


def _bin_tiles(field: np.ndarray) -> np.ndarray:
    """A (gh, gw, bins) grid as one (gh, bins * gw) image, the bins side by side (bin b's
    tile at x offset b * gw): a bilinear remap inside a tile reads one bin, the same point
    shifted by gw the next (``_slice``, ``_read_at``)."""
    gh, gw, bins = field.shape
    return np.ascontiguousarray(field.transpose(0, 2, 1)).reshape(gh, bins * gw)


@functools.lru_cache(maxsize=16)
def _cell_coords(n: int, cell: int, cells: int) -> np.ndarray:
    """Grid coordinate of each of n pixels along one side (cell i centred on pixel
    (i + 0.5) * cell - 0.5, clamped to the ``cells`` that cover the image), float32; read
    only (cached)."""
    out = np.clip((np.arange(n, dtype=np.float32) + 0.5) / np.float32(cell) - 0.5, 0,
                  cells - 1).astype(np.float32)
    out.flags.writeable = False
    return out


def detail_grid(shape, rows, cols, residual, weights,
                options: LocalCorrectionOptions) -> np.ndarray:
    """The detail level (``options.detail``): exp of the anchors' ``residual`` log ratios
    against the grid's field, spread by one more, finer scale of the normalised convolution,
    float32 on cells of ``_DETAIL_CELL`` pixels (the factor's half-resolution image, upsampled
    2x, is multiplied by it).

    Its Gaussian is half the grid's finest (``base_sigma * cell / 2`` pixels, 4 px by default):
    the next scale of the pyramid. It is fully used where its window holds one anchor (the peak
    of an isolated anchor's kernel: the correction passes through it, as an interpolation
    should) and fades out beyond, so what the grid's cells average away (LiDAR returns every few
    pixels along a ring, the prediction's errors at their scale) stays with the anchors, and
    the field between rings or sparse anchors is the grid's. ``weights``: as the final field's
    (rejected anchors 0). Not edge aware: it reaches a few pixels. Its log is clipped to
    ``max_correction`` as the grid's is."""
    h, w = shape
    cell = _DETAIL_CELL
    dh, dw = -(-h // cell), -(-w // cell)
    idx = (rows // cell) * dw + cols // cell
    sigma = options.base_sigma * options.cell / (2.0 * cell)
    k = 2 * int(np.ceil(3.0 * sigma)) + 1        # to 3 sigma (OpenCV's own choice: 4)
    if _compiled.ENABLED:                      # the same steps up to the exp, one call
        num = _compiled.detail_field(
            np.asarray(rows, np.int64), np.asarray(cols, np.int64), residual, weights, dh, dw,
            cell, _gaussian_k(k, sigma), np.float32(1.0 / (2.0 * np.pi * sigma * sigma)),
            np.float32(options.max_correction))
        return np.exp(num, out=num)
    num, den = (cv2.GaussianBlur(np.bincount(idx, x, dh * dw).astype(np.float32)
                                 .reshape(dh, dw), (k, k), sigma,
                                 borderType=cv2.BORDER_CONSTANT)
                for x in (weights * residual, weights))
    # Anchors in the window: den * 2 pi sigma^2 (a unit-peak kernel summed over them, weights
    # average 1); the level's share alpha = min(that, 1), and alpha * num / den is
    # num / max(den, 1 / (2 pi sigma^2)).
    np.maximum(den, np.float32(1.0 / (2.0 * np.pi * sigma * sigma)), out=den)
    num /= den
    limit = np.float32(options.max_correction)
    np.maximum(num, -limit, out=num)
    np.minimum(num, limit, out=num)
    return np.exp(num, out=num)


def _consensus_weights(rows, cols, v, guide, options: LocalCorrectionOptions, unjudged,
                       start, bin_width) -> np.ndarray:
    """Tukey weights of the anchors against the median log ratio of their
    ``_CONSENSUS_NEIGHBOURS`` nearest anchors, never above ``start`` (the judging field's
    weights), whose rejected anchors do not vote; a second round leaves out the neighbours the
    first rejected as well. Distance: pixels, plus the judging's guide at the anchors
    (``guide``: the aligned log depth, or the lightness in its units for 'image') with one
    of the judging's bins (``bin_width``: ``range_sigma``, or wider where the judging's axis
    reached its bins cap) counting as one judging cell, so that neighbours share a surface
    where they can. A median, not the judging field's weighted mean: a third of the
    neighbours pulled one way cannot drag it with them. ``unjudged``: the judging field's
    fallback share per anchor (None: none); an anchor with no neighbours on its own surface
    (share 1) is not judged here either."""
    from scipy.spatial import cKDTree
    scale = _JUDGE_CELLS * options.cell / bin_width
    pts = np.stack([rows.astype(np.float64), cols.astype(np.float64), guide * scale], 1)
    k = min(_CONSENSUS_NEIGHBOURS, len(v) - 1)
    nb = cKDTree(pts).query(pts, k + 1)[1][:, 1:]            # without the anchor itself
    u = start
    for _ in range(2):
        med = _median_rows(np.where(u[nb] > 0, v[nb], np.nan))
        e = np.where(np.isfinite(med), v - med, 0.0)          # no neighbour left: not judged
        if unjudged is not None:
            e *= 1.0 - unjudged
        t = np.minimum(np.abs(e) * (1.0 / options.outlier_cutoff), 1.0)
        u = np.minimum((1.0 - t * t) ** 2, start)
    return u


_POOL = threading.Lock()
_POOL_STATE = {'users': 0, 'threads': None}


@contextlib.contextmanager
def opencv_on_caller_thread():
    """A context in which OpenCV runs on the calling thread (``cv2.setNumThreads(1)``,
    ~0.3 us): the correction's OpenCV calls are many and small (a few thousand grid values,
    one or two 320x240 images), where handing stripes to the pool's workers gains no wall
    time (measured: 6.1 ms either way on a 20k-point sweep) and the woken workers then spin
    idle, ~1.3 ms of CPU per frame. Counted across threads: the pool's size is restored when
    the last user leaves. Another thread's OpenCV calls meanwhile also run on one thread."""
    with _POOL:
        if _POOL_STATE['users'] == 0:
            _POOL_STATE['threads'] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _POOL_STATE['users'] += 1
    try:
        yield
    finally:
        with _POOL:
            _POOL_STATE['users'] -= 1
            if _POOL_STATE['users'] == 0:
                cv2.setNumThreads(_POOL_STATE['threads'])


_OPENBLAS = None


@contextlib.contextmanager
def single_blas_thread():
    """A context in which the OpenBLAS libraries loaded in the process (numpy's, OpenCV's)
    run on the calling thread only, for small systems solved per frame: on more threads they
    finish no sooner and leave workers spinning. threadpoolctl finds the libraries (once);
    their own set/get calls switch them (~5 us). Without threadpoolctl (an optional
    dependency) nothing changes."""
    global _OPENBLAS
    if _OPENBLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:                 # pragma: no cover - in requirements.txt
            _OPENBLAS = ()
        else:
            _OPENBLAS = tuple(ThreadpoolController().select(internal_api='openblas')
                              .lib_controllers)
    before = [lib.get_num_threads() for lib in _OPENBLAS]
    for lib in _OPENBLAS:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_OPENBLAS, before):
            lib.set_num_threads(n)


def _tps_kernel(d2: np.ndarray, tiny=np.float64(1e-300)) -> np.ndarray:
    """The thin-plate kernel r^2 log r from squared distances (0 at r = 0), in place; ``tiny``
    (of d2's dtype) stands in for 0 under the log."""
    np.maximum(d2, tiny, out=d2)
    k = np.log(d2)
    k *= d2
    k *= d2.dtype.type(0.5)
    return k


def thin_plate_base(shape, rows, cols, v, weights, grid: _Grid,
                    options: LocalCorrectionOptions) -> np.ndarray:
    """A smoothing thin-plate spline through the anchors' log ratios ``v`` (``weights``: 0 for
    rejected anchors), read at the centres of ``grid``'s cells: float32 (gh, gw).

    Fitted on the anchors (more than ``spline_centres``: on their weighted means per judging
    cell, doubled until few enough), coordinates in image sides; anchor i is relaxed by
    ``spline_smoothing / weight_i`` (weights normalised to mean 1), so the judging's
    half-trusted anchors bend it less. Clipped to the range of the fitted values (never
    beyond the data, also where it would extrapolate its linear trend)."""
    h, w = shape
    side = 1.0 / max(h, w)
    many = np.count_nonzero(weights) > options.spline_centres
    if many:
        cell = _JUDGE_CELLS * options.cell
        while (-(-h // cell)) * (-(-w // cell)) > options.spline_centres:
            cell *= 2
    if many and _compiled.ENABLED:
        y, x, vv, ww = _compiled.cell_means(rows, cols, v, weights, side, cell, -(-w // cell))
    else:
        keep = weights > 0
        y, x = rows[keep] * side, cols[keep] * side
        vv, ww = v[keep], weights[keep]
        if many:
            idx = (rows[keep] // cell) * (-(-w // cell)) + cols[keep] // cell
            n = int(idx.max()) + 1
            sw = np.bincount(idx, ww, n)
            used = sw > 0
            y, x, vv = (np.bincount(idx, ww * q, n)[used] / sw[used] for q in (y, x, vv))
            ww = sw[used]
    ww = ww / ww.mean()
    m = len(vv)
    a = np.zeros((m + 3, m + 3))
    a[:m, :m] = _tps_kernel((y[:, None] - y) ** 2 + (x[:, None] - x) ** 2)
    a[np.arange(m), np.arange(m)] += options.spline_smoothing / ww
    poly = np.stack([np.ones(m), y, x], 1)
    a[:m, m:], a[m:, :m] = poly, poly.T
    b = np.concatenate([vv, np.zeros(3)])
    ok = False
    if _compiled.ENABLED:                   # no BLAS: nothing else to hold to one thread
        ok, coef = _compiled.lu_solve(a, b)
    if not ok:
        # On one BLAS thread: OpenCV's LU goes to its OpenBLAS's LAPACK (as numpy's would to
        # its own), which factors a system of ~100 unknowns on every core; its idle workers
        # then spin for a few hundred ms, doubling the process's CPU time for the next frames.
        with single_blas_thread():
            ok, coef = cv2.solve(a, b[:, None], flags=cv2.DECOMP_LU)
            if ok:
                coef = coef[:, 0]
            else:                           # e.g. all centres on one line, no smoothing
                coef = np.linalg.lstsq(a, b, rcond=None)[0]
    # Evaluated every _SPLINE_STEP cells (and the last), linear between: a smooth surface.
    # The kernel sum in float32 (a log of nodes x centres values, most of the spline's time:
    # float64 costs ~7x); the result is a correction in log ratio, good to ~1e-6. einsum, not
    # a matrix product: OpenBLAS would run this one on all cores, and its idle threads then
    # spin, doubling the process's CPU time per frame.
    iy, wy = _nodes(grid.gh)
    ix, wx = _nodes(grid.gw)
    gy = ((iy + 0.5) * grid.cell - 0.5) * side
    gx = ((ix + 0.5) * grid.cell - 0.5) * side
    f32 = np.float32
    dy = np.square(gy.astype(f32)[:, None] - y.astype(f32))
    dx = np.square(gx.astype(f32)[:, None] - x.astype(f32))
    d2 = np.add(dy[:, None, :], dx[None], out=_WORK.get('tps', (len(gy), len(gx), m), f32))
    nodes = np.einsum('ijk,k->ij', _tps_kernel(d2, f32(1e-30)),
                      coef[:m].astype(f32)).astype(np.float64)
    nodes += coef[m] + coef[m + 1] * gy[:, None] + coef[m + 2] * gx[None, :]
    base = wy @ nodes @ wx.T
    np.maximum(base, vv.min(), out=base)      # clip (np.clip's wrapper costs more)
    np.minimum(base, vv.max(), out=base)
    return base.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _nodes(n: int):
    """Every _SPLINE_STEP-th of n cells and the last, and the (n, nodes) linear weights
    that interpolate between them (cached per n: read only)."""
    idx = np.unique(np.r_[np.arange(0, n, _SPLINE_STEP), n - 1])
    weights = np.stack([np.interp(np.arange(n), idx, e) for e in np.eye(len(idx))], 1)
    idx.flags.writeable = weights.flags.writeable = False
    return idx, weights


def _bilinear(field: np.ndarray, grid: _Grid, rows, cols) -> np.ndarray:
    """A float32 (gh, gw) grid read bilinearly at pixels (cell i centred on pixel
    (i + 0.5) * cell - 0.5, clamped to the cells that cover the image), float64."""
    mx = _cell_coords(grid.w, grid.cell, grid.nw)[cols].reshape(1, -1)
    my = _cell_coords(grid.h, grid.cell, grid.nh)[rows].reshape(1, -1)
    out = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.ravel().astype(np.float64)


def log_guide(aligned: np.ndarray) -> np.ndarray:
    """Log of the aligned depth at half resolution (the factor is read there, see _slice);
    NaN / -inf where the depth is invalid. A per-thread scratch image."""
    return _log_half(aligned[::_SLICE_STEP, ::_SLICE_STEP])


def _log_half(half: np.ndarray) -> np.ndarray:
    """``log_guide`` of the aligned depth's half-resolution pixels ``half``."""
    guide = _WORK.get('guide', half.shape, np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        np.log(half, out=guide)
    return guide


class GuideImageError(ValueError):
    """An image that cannot guide the local correction (size, channels, type)."""


# Rec. 601 luma weights, scaled to [0, 1] lightness from 8-bit RGB.
_LUMA = tuple(np.float32(c / 255.0) for c in (0.299, 0.587, 0.114))


def check_guide_image(image, shape) -> np.ndarray:
    """``image`` as an HxWx3 uint8 RGB array of the depth's ``shape``, or GuideImageError."""
    if image is None:
        raise GuideImageError('no image given')
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise GuideImageError(f'the guide image must be colour (HxWx3 RGB), got shape '
                              f'{arr.shape}')
    if arr.dtype != np.uint8:
        raise GuideImageError(f'the guide image must be 8-bit RGB, got dtype {arr.dtype}')
    if arr.shape[:2] != tuple(shape):
        raise GuideImageError(f'the guide image is {arr.shape[1]}x{arr.shape[0]} but the depth '
                              f'is {shape[1]}x{shape[0]}: they must be the same size')
    return arr


def lightness_at(image: np.ndarray, rows, cols) -> np.ndarray:
    """The image's lightness (Rec. 601 luma, 0-1, float32) at the given pixels."""
    if image.flags.c_contiguous:        # np.take on the flat pixels: ~2x a 2-d fancy index
        px = np.take(image.reshape(-1, 3), np.asarray(rows) * image.shape[1] + cols, axis=0)
    else:
        px = image[rows, cols]
    px = px.astype(np.float32)
    return px[:, 0] * _LUMA[0] + px[:, 1] * _LUMA[1] + px[:, 2] * _LUMA[2]


def lightness_guide(image: np.ndarray) -> np.ndarray:
    """The image's lightness at half resolution (the pixels ``log_guide`` reads)."""
    half = image[::_SLICE_STEP, ::_SLICE_STEP]
    out = _WORK.get('light', half.shape[:2], np.float32)
    tmp = _WORK.get('light_tmp', half.shape[:2], np.float32)
    np.multiply(half[:, :, 0], _LUMA[0], out=out)
    out += np.multiply(half[:, :, 1], _LUMA[1], out=tmp)
    out += np.multiply(half[:, :, 2], _LUMA[2], out=tmp)
    return out


def lightness_range(image: np.ndarray):
    """``guide_range(lightness_guide(image))`` without the half-resolution image (the same
    pixels, the same float32 operations): its extent, before the guide is known to need it."""
    q = image[::2 * _SLICE_STEP, ::2 * _SLICE_STEP]
    light = np.multiply(q[:, :, 0], _LUMA[0], dtype=np.float32)
    light += np.multiply(q[:, :, 1], _LUMA[1], dtype=np.float32)
    light += np.multiply(q[:, :, 2], _LUMA[2], dtype=np.float32)
    return float(light.min()), float(light.max())


def compose_guide(log_depth, light, mix) -> np.ndarray:
    """The bilateral guide at half resolution: ``mix[0] * log_depth + mix[1] * light``
    (the log depth itself for (1, 0), today's guide)."""
    d, c = (np.float32(m) for m in mix)
    if c == 0 and d == 1:
        return log_depth
    out = _WORK.get('composed', log_depth.shape, np.float32)
    np.multiply(light, c, out=out)
    if d == 1:
        out += log_depth       # invalid depth stays invalid (NaN / -inf), as the depth guide
    elif d != 0:
        out += log_depth * d
    return out


def local_correction(aligned: np.ndarray, rows, cols, depth, weight=None,
                     options: LocalCorrectionOptions = LocalCorrectionOptions(),
                     image=None, out: np.ndarray | None = None) -> LocalCorrection:
    """Locally corrected depth (HxW float32) that honours the anchors: a new array, or
    ``out`` (HxW float32), which may be ``aligned`` itself (corrected in place: a caller that
    owns its aligned depth saves a fresh image, whose page faults cost about as much as the
    product itself).

    ``aligned``: globally fitted metric depth, float32 (NaN where invalid). ``weight``: the
    anchors' inverse depth variance (1/m^2), None for equal noise. ``image``: the frame's
    HxWx3 uint8 RGB image (``check_guide_image``), which joins the guide as
    ``options.guide`` says; None: the depth guides alone.

    OpenCV runs on the calling thread meanwhile (``opencv_on_caller_thread``).
    """
    aligned = np.asarray(aligned, np.float32)
    h, w = aligned.shape
    if out is not None and (out.shape != (h, w) or out.dtype != np.float32):
        raise ValueError(f'out must be a {h}x{w} float32 array, got {out.shape} {out.dtype}')
    with opencv_on_caller_thread():
        return _local_correction(_Aligned(aligned), rows, cols, depth, weight, options, image,
                                 out)


def corrected_fit(relative: np.ndarray, scale: float, shift: float, space: str, rows, cols,
                  depth, weight=None, options: LocalCorrectionOptions = LocalCorrectionOptions(),
                  image=None, depth_range=(0.0, np.inf)) -> LocalCorrection:
    """``local_correction(apply_fit(relative, scale, shift, space), rows, cols, depth,
    weight, options, image)`` with NaN outside ``depth_range`` (``clip_range``): what
    ScaleRecovery makes of a frame with local anchors, in a new array. The aligned depth is
    never stored: the correction reads it where it needs it (the anchors, the half-resolution
    guide), and on the compiled path (even sizes) its final product maps, corrects and clips
    each pixel in one pass over the image instead of three. The same values."""
    relative = np.ascontiguousarray(relative, np.float32)
    if relative.ndim != 2:
        raise ValueError(f'relative must be an HxW array, got shape {relative.shape}')
    source = _Affine(relative, scale, shift, space, depth_range)
    with opencv_on_caller_thread():
        return _local_correction(source, rows, cols, depth, weight, options, image, None)


class _Aligned:
    """The aligned depth the correction reads and multiplies: a given array."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape = array, array.shape

    def half(self) -> np.ndarray:
        return self.array[::_SLICE_STEP, ::_SLICE_STEP]

    def at(self, rows, cols) -> np.ndarray:
        return self.array[rows, cols]

    def uncorrected(self, out) -> np.ndarray:
        if out is None:
            return self.array.copy()
        np.copyto(out, self.array)
        return out

    def times_half(self, factor: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = factor (half resolution) upsampled 2x, times the aligned depth (compiled)."""
        _compiled.up2_multiply(factor, self.array, out)
        return out

    def times(self, up: np.ndarray, out) -> np.ndarray:
        return np.multiply(up, self.array, out=out)


class _Affine(_Aligned):
    """``apply_fit(relative, scale, shift, space)`` as the aligned depth, computed where the
    correction reads it; the corrected depth NaN outside ``depth_range``."""

    def __init__(self, relative, scale, shift, space, depth_range):
        self.relative, self.shape = relative, relative.shape
        self.fit = (float(scale), float(shift), space)
        self.range = tuple(float(v) for v in depth_range)

    def _map(self, relative) -> np.ndarray:
        return apply_fit(relative, *self.fit)

    def half(self) -> np.ndarray:
        return self._map(np.ascontiguousarray(self.relative[::_SLICE_STEP, ::_SLICE_STEP]))

    def at(self, rows, cols) -> np.ndarray:
        return self._map(self.relative[rows, cols][None])[0]   # 2-D: the image's kernel

    def uncorrected(self, out) -> np.ndarray:
        return clip_range(self._map(self.relative), *self.range)

    def times_half(self, factor: np.ndarray, out: np.ndarray) -> np.ndarray:
        scale, shift, space = self.fit
        _compiled.up2_multiply_affine(factor, self.relative, np.float32(scale),
                                      np.float32(shift), space == 'inverse',
                                      *(np.float32(v) for v in self.range), out)
        return out

    def times(self, up: np.ndarray, out) -> np.ndarray:
        return clip_range(np.multiply(up, self._map(self.relative), out=out), *self.range)


def _local_correction(source: _Aligned, rows, cols, depth, weight, options, image, out):
    h, w = source.shape
    guide = _log_half(source.half()) if options.edge_aware else None
    light_at = light_extent = None
    if image is not None and options.edge_aware and options.guide != 'depth':
        image = check_guide_image(image, (h, w))
        light_extent = functools.partial(lightness_range, image)     # where it is needed
        light_at = (lambda r, c: lightness_at(image, r, c))
    plan = correction_grid((h, w), rows, cols, depth, weight, source.at,
                           guide_range(guide) if guide is not None else None, options,
                           light_at, light_extent)
    if plan.factor is None:
        return LocalCorrection(source.uncorrected(out), plan.weights, np.nan)
    if guide is not None and plan.mix[1] != 0:          # the image is in the chosen guide
        guide = compose_guide(guide, lightness_guide(image), plan.mix)
    factor = _slice(plan.factor, plan.grid, guide)
    if _compiled.ENABLED and factor.shape == (h // 2, w // 2) and h % 2 == 0 and w % 2 == 0 \
            and (plan.detail is None or plan.detail.shape == (h // 4, w // 4)):
        # Even sizes (exactly 2x each time): the same resizes and products, fused.
        if plan.detail is not None:
            _compiled.up2_multiply(plan.detail, factor, factor)
        if out is None:
            out = np.empty((h, w), np.float32)
        return LocalCorrection(source.times_half(factor, out), plan.weights, plan.sigma)
    if plan.detail is not None:                # the detail level, upsampled 2x onto it
        factor *= cv2.resize(plan.detail, factor.shape[::-1],
                             dst=_WORK.get('detail_up', factor.shape, np.float32),
                             interpolation=cv2.INTER_LINEAR)
    up = cv2.resize(factor, (w, h), dst=_WORK.get('up', (h, w), np.float32),
                    interpolation=cv2.INTER_LINEAR)
    return LocalCorrection(source.times(up, out), plan.weights, plan.sigma)


_MAPS: dict = {}


def _pixel_maps(grid: _Grid):
    """Grid coordinates of every pixel of the half-resolution image (cached per size)."""
    h2, w2 = -(-grid.h // _SLICE_STEP), -(-grid.w // _SLICE_STEP)
    key = (h2, w2, grid.cell, grid.nh, grid.nw)
    maps = _MAPS.get(key)
    if maps is None:
        # Half-resolution pixel i samples full-resolution pixel step * i.
        gx = np.clip((np.arange(w2) * _SLICE_STEP + 0.5) / grid.cell - 0.5, 0, grid.nw - 1)
        gy = np.clip((np.arange(h2) * _SLICE_STEP + 0.5) / grid.cell - 0.5, 0, grid.nh - 1)
        maps = (np.ascontiguousarray(np.broadcast_to(gx[None, :].astype(np.float32), (h2, w2))),
                np.ascontiguousarray(np.broadcast_to(gy[:, None].astype(np.float32), (h2, w2))))
        if len(_MAPS) > 8:
            _MAPS.clear()
        _MAPS[key] = maps
    return maps


_INTER_TAB = 32          # OpenCV 4's INTER_TAB_SIZE: its remap weighs in steps of 1/32


@functools.lru_cache(maxsize=None)
def remap_steps() -> int | None:
    """How this OpenCV's remap weighs float images: OpenCV 4 rounds the coordinates to 1/32
    pixel (INTER_TAB_SIZE) and weighs by those steps; OpenCV 5 uses the exact fractions
    (None). Probed once, so that the reads that stand in for it (the compiled slice, the
    device path) follow it."""
    out = cv2.remap(np.array([[0.0, 1.0]], np.float32), np.full((1, 1), 0.3, np.float32),
                    np.zeros((1, 1), np.float32), interpolation=cv2.INTER_LINEAR)
    return None if abs(float(out[0, 0]) - 0.3) < 1e-4 else _INTER_TAB


_TAPS: dict = {}


def remap_taps(grid: _Grid):
    """(y0, ay, x0, ax): cv2.remap's upper-left tap (int64) and fraction (float32) of each
    row and column of the half-resolution pixel maps (``_pixel_maps``: separable), by
    ``remap_steps``'s rule (cached per size)."""
    gx, gy = _pixel_maps(grid)
    key = (gx.shape, grid.cell, grid.nh, grid.nw, remap_steps())
    taps = _TAPS.get(key)
    if taps is None:
        taps = (*_axis_taps(gy[:, 0]), *_axis_taps(gx[0, :]))
        for t in taps:
            t.flags.writeable = False
        if len(_TAPS) > 8:
            _TAPS.clear()
        _TAPS[key] = taps
    return taps


def _axis_taps(coord: np.ndarray):
    steps = remap_steps()
    coord = coord.astype(np.float32)
    if steps is None:
        i0 = np.floor(coord)
        return i0.astype(np.int64), (coord - i0).astype(np.float32)
    s = np.rint(coord * np.float32(steps)).astype(np.int64)      # half to even: cvRound
    i0 = s // steps
    return i0, ((s - i0 * steps).astype(np.float32) * np.float32(1.0 / steps))


def _slice(field: np.ndarray, grid: _Grid, guide) -> np.ndarray:
    """Read the grid at every pixel of the half-resolution image: bilinear (spatial) or
    trilinear (bilateral) by cv2.remap. Half resolution keeps depth edges to 2 pixels at a
    quarter of the cost; the caller upsamples the (smooth) factor bilinearly.

    Bilateral: bins are laid side by side (tile b at x offset b*gw), so a bilinear remap inside
    tile b reads bin b, and one shifted by gw reads bin b+1; the blend between them is linear.
    Returns a per-thread scratch image: use it before the next call.
    """
    gx, gy = _pixel_maps(grid)
    shape = gx.shape
    out = _WORK.get('out', shape, np.float32)
    if _compiled.ENABLED:
        y0, ay, x0, ax = remap_taps(grid)
        g0, inv = ((np.float32(grid.axis.g0), np.float32(1.0 / grid.axis.width))
                   if grid.axis is not None else (np.float32(0.0), np.float32(0.0)))
        _compiled.slice_grid(field, guide if grid.axis is not None else gx, y0, ay, x0, ax,
                             g0, inv, out)
        return out
    if grid.axis is None:
        return cv2.remap(field[:, :, 0], gx, gy, interpolation=cv2.INTER_LINEAR, dst=out)
    _, gw, bins = field.shape
    gb = np.subtract(guide, np.float32(grid.axis.g0), out=_WORK.get('gb', shape, np.float32))
    gb *= np.float32(1.0 / grid.axis.width)
    # fmax maps NaN (invalid aligned depth) to bin 0: the factor stays finite there, so the
    # upsampling cannot spread NaN onto valid neighbours (the depth itself stays NaN).
    np.fmax(gb, np.float32(0.0), out=gb)
    np.minimum(gb, np.float32(bins - 1), out=gb)
    map_x = np.floor(gb, out=_WORK.get('map_x', shape, np.float32))     # bin b0 (gb >= 0)
    np.minimum(map_x, np.float32(bins - 2), out=map_x)
    gb -= map_x                                           # fraction towards bin b0 + 1
    map_x *= np.float32(gw)
    map_x += gx
    tiles = _bin_tiles(field)
    lo = cv2.remap(tiles, map_x, gy, interpolation=cv2.INTER_LINEAR,
                   dst=_WORK.get('lo', shape, np.float32))
    map_x += np.float32(gw)
    cv2.remap(tiles, map_x, gy, interpolation=cv2.INTER_LINEAR, dst=out)
    out -= lo
    out *= gb
    out += lo
    return out
