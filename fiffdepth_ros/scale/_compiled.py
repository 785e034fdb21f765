"""Compiled kernels of the local correction's coarse-grid stage (numba), beside the numpy /
OpenCV reference in ``local_correction``.

The grids are small (a judging grid holds ~100 cells, the interpolation grid ~1300), so the
numpy path's cost is its number of calls, not its arithmetic: a field is ~60 numpy and OpenCV
calls of a few microseconds each, built 5-6 times per frame. Here each field is one call that
does the same operations in the same order, in float32 where the reference is float32 (the
splat's sums in float64, as ``np.bincount``'s): the results agree to float32 rounding (the
order of OpenCV's SIMD sums differs), see test_scale_local.py.

Optional: without numba, or with ``FIFFDEPTH_NUMBA=0`` in the environment, ``ENABLED`` is
False and the reference runs. Compiled on first use and cached on disk (numba's cache, beside
this file or in the user's cache directory); ``warm_up`` compiles ahead of the first frame.
"""
from __future__ import annotations

import math
import os

import numpy as np

try:                                    # an optional accelerator (requirements.txt has it)
    import numba
except ImportError:                     # pragma: no cover - exercised where numba is absent
    numba = None

ENABLED = numba is not None and os.environ.get('FIFFDEPTH_NUMBA', '1') != '0'


def _jit(fn):
    if numba is None:                   # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, error_model='numpy')(fn)


@_jit
def _pool2(a, out):
    """Mean over 2x2 blocks of a (2, h, w, c) grid into ``out`` (cv2.resize INTER_AREA at
    1/2)."""
    p, h, w, c = a.shape
    q = np.float32(0.25)
    for k in range(p):
        for i in range(h // 2):
            for j in range(w // 2):
                for ch in range(c):
                    out[k, i, j, ch] = ((a[k, 2 * i, 2 * j, ch] + a[k, 2 * i, 2 * j + 1, ch])
                                        + (a[k, 2 * i + 1, 2 * j, ch]
                                           + a[k, 2 * i + 1, 2 * j + 1, ch])) * q


@_jit
def _unpool2(a):
    """Bilinear 2x upsampling of a (2, h, w, c) grid's planes (cv2.resize INTER_LINEAR:
    half-pixel centres, edges replicated): output column 2j is 1/4 column j - 1 + 3/4 column
    j, column 2j + 1 3/4 column j + 1/4 column j + 1 (the edge columns copied), then the same
    down the rows."""
    p, h, w, c = a.shape
    tmp = np.empty((p, h, 2 * w, c), np.float32)
    out = np.empty((p, 2 * h, 2 * w, c), np.float32)
    for k in range(p):
        for i in range(h):
            _interleave(a[k, i].reshape(-1), tmp[k, i].reshape(-1), w, c)
        for y in range(2 * h):
            odd = y % 2
            i0 = y // 2 if odd else max(y // 2 - 1, 0)
            i1 = min(y // 2 + 1, h - 1) if odd else y // 2
            _mix(tmp[k, i0].reshape(-1), tmp[k, i1].reshape(-1), out[k, y].reshape(-1), odd,
                 i0 == i1)
    return out


@_jit
def _mix(src0, src1, dst, odd, same):
    """dst = 1/4 src0 + 3/4 src1 (``odd``: 3/4 src0 + 1/4 src1); ``same``: src0 copied."""
    w0 = np.float32(0.75) if odd else np.float32(0.25)
    w1 = np.float32(0.25) if odd else np.float32(0.75)
    if same:
        for q in range(len(dst)):
            dst[q] = src0[q]
    else:
        for q in range(len(dst)):
            dst[q] = src0[q] * w0 + src1[q] * w1


@_jit
def _interleave(row, out, w, c):
    """One row of w cells of c channels upsampled 2x along the cells (``_unpool2``)."""
    for x in range(2 * w):
        odd = x % 2
        j0 = x // 2 if odd else max(x // 2 - 1, 0)
        j1 = min(x // 2 + 1, w - 1) if odd else x // 2
        _mix(row[j0 * c:(j0 + 1) * c], row[j1 * c:(j1 + 1) * c], out[x * c:(x + 1) * c],
             odd, j0 == j1)


@_jit
def _blur(a, kernel, tmp, out):
    """Separable blur of each plane of a (2, h, w, c) grid with ``kernel`` along rows then
    columns, zero beyond the edges (cv2.sepFilter2D, BORDER_CONSTANT), into ``out``; ``tmp``:
    scratch of one plane. Each pass adds shifted copies of whole rows (long contiguous loops
    the compiler vectorises)."""
    p, h, w, c = a.shape
    r = len(kernel) // 2
    lo, hi = 0, len(kernel)             # the taps of a zero-padded kernel
    while lo < hi and kernel[lo] == 0:
        lo += 1
    while hi > lo and kernel[hi - 1] == 0:
        hi -= 1
    mid = tmp.reshape((h, w * c))
    for k in range(p):
        src = a[k].reshape((h, w * c))
        dst = out[k].reshape((h, w * c))
        mid.fill(0.0)
        for i in range(h):
            row, acc = src[i], mid[i]
            for t in range(lo, hi):
                shift = t - r                   # acc[j] += k[t] * row[j + shift], in cells
                j0, j1 = max(0, -shift), min(w, w - shift)
                if j0 >= j1:
                    continue
                kt = kernel[t]
                # Views from index 0: loops the compiler vectorises (no negative-index checks).
                x, y = row[(j0 + shift) * c:(j1 + shift) * c], acc[j0 * c:j1 * c]
                for q in range(len(y)):
                    y[q] += kt * x[q]
        dst.fill(0.0)
        for i in range(h):
            acc = dst[i]
            for t in range(lo, hi):
                y0 = i + t - r
                if 0 <= y0 < h:
                    kt = kernel[t]
                    row = mid[y0]
                    for q in range(w * c):
                        acc[q] += kt * row[q]


@_jit
def _blend_level(n, d, est, keep, scale, exclusive, weight, pv):
    """One level of _multiscale on flat arrays: alpha from the window's anchors (``scale``
    per unit of d; ``exclusive``: from one support on), est += alpha (n / d - est),
    keep -= alpha keep. The prior's pseudo-anchor adds ``pv`` to n and ``weight`` to d (both 0
    without one: the same values, n + 0 and max(d + 0, tiny) being n and the reference's
    max(d, tiny)); d >= 0, so the lower clip is a no-op where not exclusive."""
    zero, one, tiny = np.float32(0.0), np.float32(1.0), np.float32(1e-30)
    sub = one if exclusive else zero
    for q in range(len(est)):
        alpha = min(max(d[q] * scale - sub, zero), one)
        ratio = (n[q] + pv) / max(d[q] + weight, tiny)
        est[q] += (ratio - est[q]) * alpha
        keep[q] -= alpha * keep[q]


@_jit
def _floor(nd, buffer, offsets, j):
    """Floor j of the pyramid: ``nd`` itself, or its view in ``buffer``."""
    if j == 0:
        return nd
    _, gh, gw, c = nd.shape
    return buffer[offsets[j]:offsets[j + 1]].reshape((2, gh >> j, gw >> j, c))


@_jit
def _multiscale(nd, floors, sigmas, kernels, gain, exclusive, prior_n, prior_v):
    """``local_correction._multiscale`` (its docstring): ``kernels[k]`` is the Gaussian of
    level k at its floor (zero padded, centred); ``prior_n`` <= 0: no prior. Returns the
    (estimate, base share) planes."""
    levels = len(floors)
    top = 0
    for k in range(levels):
        top = max(top, floors[k])
    # The pyramid's floors 1..top in one buffer (no list of arrays: quicker to compile).
    _, gh, gw, c = nd.shape
    offsets = np.zeros(top + 2, np.int64)
    for j in range(1, top + 1):
        offsets[j + 1] = offsets[j] + 2 * (gh >> j) * (gw >> j) * c
    buffer = np.empty(offsets[top + 1], np.float32)
    for j in range(1, top + 1):
        _pool2(_floor(nd, buffer, offsets, j - 1), _floor(nd, buffer, offsets, j))
    current = floors[levels - 1]
    state = np.empty((2, gh >> current, gw >> current, c), np.float32)
    state[0].fill(0.0)
    state[1].fill(1.0)
    blurred = np.empty(nd.shape, np.float32)
    tmp = np.empty(nd.shape[1:], np.float32)
    for k in range(levels - 1, -1, -1):
        j = floors[k]
        while current > j:
            state = _unpool2(state)
            current -= 1
        s = sigmas[k] / 2.0 ** j
        h, w = gh >> j, gw >> j
        nd_j = blurred.reshape(-1)[:2 * h * w * c].reshape((2, h, w, c))
        _blur(_floor(nd, buffer, offsets, j), kernels[k], tmp.reshape(-1)[:h * w * c], nd_j)
        scale = np.float32(gain * s * s * 4.0 ** j)
        weight = pv = np.float32(0.0)
        if prior_n > 0:
            weight = np.float32(prior_n / (gain * s * s * 4.0 ** j))
            pv = weight * np.float32(prior_v)
        _blend_level(nd_j[0].reshape(-1), nd_j[1].reshape(-1), state[0].reshape(-1),
                     state[1].reshape(-1), scale, exclusive, weight, pv)
    while current > 0:
        state = _unpool2(state)
        current -= 1
    return state


_RANGE_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / np.float32(16.0)


@_jit
def _range_blur(nd, kernel):
    """Blur along the channels with the binomial ``kernel`` (5 taps), zero beyond them: one
    vectorised pass over all values as if the channels ran on, then each cell's two channels
    at either end summed again without the neighbouring cell's."""
    c = nd.shape[-1]
    src = nd.reshape(-1)
    out = np.empty_like(nd)
    dst = out.reshape(-1)
    n = len(src)
    k0, k1, k2, k3, k4 = kernel[0], kernel[1], kernel[2], kernel[3], kernel[4]
    x0, x1, x2, x3, x4 = src[0:n - 4], src[1:n - 3], src[2:n - 2], src[3:n - 1], src[4:n]
    y = dst[2:n - 2]
    for q in range(n - 4):
        y[q] = (((k0 * x0[q] + k1 * x1[q]) + k2 * x2[q]) + k3 * x3[q]) + k4 * x4[q]
    for cell in range(n // c):
        row, res = src[cell * c:(cell + 1) * c], dst[cell * c:(cell + 1) * c]
        for ch in (0, 1, c - 2, c - 1):
            if 0 <= ch < c:
                acc = np.float32(0.0)
                for t in range(5):
                    b = ch + t - 2
                    if 0 <= b < c:
                        acc += kernel[t] * row[b]
                res[ch] = acc
    return out


@_jit
def build_field(index, corner_weights, v, wv, support, exclusive, prior, gh, gw, channels,
                bins, floors, sigmas, kernels, range_kernel):
    """``local_correction._Fields.build``: the anchors' values ``v`` (weights ``wv``)
    splatted at ``index`` (``_Grid.splat_index``, num then den) with ``corner_weights``
    ((corners, n); an empty array for nearest-cell splats), blended over the pyramid,
    the spatial fallback blended in and the weighted mean added back; (2, gh, gw, channels)
    float32. ``bins`` 0: a spatial grid (one channel)."""
    n = len(v)
    total = 0.0
    dot = 0.0
    nonzero = 0
    for i in range(n):
        total += wv[i]
        dot += v[i] * wv[i]
        if wv[i] != 0:
            nonzero += 1
    base = dot / total
    gain = 2.0 * math.pi / ((total / nonzero) * support)
    plane = gh * gw * channels
    corners = len(index) // (2 * n)
    acc = np.zeros(2 * plane)
    for k in range(corners):
        for i in range(n):
            wt = wv[i] if corner_weights.size == 0 else corner_weights[k, i] * wv[i]
            acc[index[k * n + i]] += wt * (v[i] - base)
            acc[index[(corners + k) * n + i]] += wt
    nd = acc.astype(np.float32).reshape((2, gh, gw, channels))
    if bins > 0:
        sp = bins + 2
        for q in range(2):
            for i in range(gh):
                for j in range(gw):
                    s = np.float32(0.0)
                    for b in range(bins):
                        s += nd[q, i, j, b]
                    nd[q, i, j, sp] = s
        nd = _range_blur(nd, range_kernel)
        gain = gain / float(range_kernel[2])
    prior_n = prior / support if prior > 0 else 0.0
    state = _multiscale(nd, floors, sigmas, kernels, gain, exclusive, prior_n, -base)
    fb = np.float32(base)
    if bins > 0:
        sp = bins + 2
        for i in range(gh):
            for j in range(gw):
                e = state[0, i, j, sp]
                for b in range(bins):
                    state[0, i, j, b] = (state[0, i, j, b] + state[1, i, j, b] * e) + fb
    else:
        for i in range(gh):
            for j in range(gw):
                state[0, i, j, 0] += fb
    return state


@_jit
def sample_planes(state, index, corner_weights):
    """(field, fallback share) of a built grid at the anchors (``_Fields.sample_planes``),
    float64."""
    flat = state.reshape(-1)
    n2 = len(index)
    corners = corner_weights.shape[0] if corner_weights.size else 1
    n = n2 // (2 * corners)
    out = np.zeros((2, n))
    for q in range(2):
        for k in range(corners):
            base = (q * corners + k) * n
            for i in range(n):
                val = float(flat[index[base + i]])
                out[q, i] += val if corner_weights.size == 0 else val * corner_weights[k, i]
    return out


def kernels_for(sigmas, floors, gaussian) -> np.ndarray:
    """The levels' Gaussians at their floors (``gaussian(sigma)``: cv2's), zero padded to one
    length and centred, (levels, taps) float32."""
    ks = [np.asarray(gaussian(s / 2 ** j), np.float32).ravel() for s, j in zip(sigmas, floors)]
    taps = max(len(k) for k in ks)
    out = np.zeros((len(ks), taps), np.float32)
    for row, k in zip(out, ks):
        off = (taps - len(k)) // 2
        row[off:off + len(k)] = k
    out.flags.writeable = False
    return out
