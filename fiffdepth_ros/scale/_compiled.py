"""Compiled kernels (numba) of metric scale recovery's per-frame work, beside the numpy /
OpenCV reference in ``local_correction`` and ``fit``.

The local correction's grids are small (a judging grid holds ~100 cells, the interpolation
grid ~1300), so the reference's cost is its number of calls, not its arithmetic: a field is ~60
numpy and OpenCV calls of a few microseconds each, built 5-6 times per frame, and a 640x480
frame made ~1700 calls in all. Here each step is one call that does the same operations in the
same order, in float32 where the reference is float32 (the splat's sums in float64, as
``np.bincount``'s): a field (``build_field``), the judging rounds (``judge_rounds``), the
anchors' grid corners and bins, the dense read at half resolution (``slice_grid``, cv2.remap's
taps), the thin-plate spline's centres and its solve (LU without BLAS), and the global fit's
problem (its valid anchors' arrays), IRLS, scores, inliers and affine map; the last 2x
upsampling's product with the affine map and the depth range folded in
(``up2_multiply_affine``). Results agree with the reference to float32 rounding (OpenCV sums
in another order); test_scale_compiled.py checks each kernel against it.

Optional: without numba, or with ``FIFFDEPTH_NUMBA=0`` in the environment, ``ENABLED`` is
False and the reference runs. Compiled on first use and cached on disk (numba's cache, beside
this file or in the user's cache directory; ~20 s on 2 cores the first time on a machine, ~0.5 s
to load after): ``local_correction.warm_up`` does it before the first frame.
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
    down the rows. Each pass works on whole rows (contiguous loops the compiler vectorises)."""
    p, h, w, c = a.shape
    wc = w * c
    tmp = np.empty((p, h, 2 * w, c), np.float32)
    out = np.empty((p, 2 * h, 2 * w, c), np.float32)
    even = np.empty(wc, np.float32)
    odd = np.empty(wc, np.float32)
    for k in range(p):
        for i in range(h):
            _halves(a[k, i].reshape(-1), even, odd, c)
            dst = tmp[k, i].reshape(-1)
            for j in range(w):
                e, o = dst[2 * j * c:(2 * j + 1) * c], dst[(2 * j + 1) * c:(2 * j + 2) * c]
                se, so = even[j * c:(j + 1) * c], odd[j * c:(j + 1) * c]
                for q in range(c):
                    e[q] = se[q]
                    o[q] = so[q]
        for y in range(2 * h):
            i0, i1, odd_row = _rows_of(y, h)
            _mix(tmp[k, i0].reshape(-1), tmp[k, i1].reshape(-1), out[k, y].reshape(-1),
                 odd_row, i0 == i1)
    return out


@_jit
def _rows_of(y, h):
    """The two source rows (clamped) of output row ``y`` of a 2x upsampling of ``h`` rows,
    and whether ``y`` is odd (its weights 3/4, 1/4 instead of 1/4, 3/4; see _mix)."""
    odd = y % 2
    i0 = y // 2 if odd else max(y // 2 - 1, 0)
    i1 = min(y // 2 + 1, h - 1) if odd else y // 2
    return i0, i1, odd


@_jit
def _halves(row, even, odd, c):
    """A row of cells of ``c`` values upsampled 2x along it, as two halves: even[j] = 1/4
    row[j - 1] + 3/4 row[j], odd[j] = 3/4 row[j] + 1/4 row[j + 1] (per cell; the edge cells
    copied), the half-pixel rule of cv2.resize INTER_LINEAR."""
    n = len(row)
    q1, q3 = np.float32(0.25), np.float32(0.75)
    lo, mid, hi, top = row[:n - c], row[c:], even[c:], odd[:n - c]
    for q in range(n - c):
        hi[q] = lo[q] * q1 + mid[q] * q3
    for q in range(n - c):
        top[q] = lo[q] * q3 + mid[q] * q1
    for q in range(c):
        even[q] = row[q]
        odd[n - c + q] = row[n - c + q]


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
def _span(kernel):
    """(lo, hi): the taps of a zero-padded kernel, kernel[lo:hi]."""
    lo, hi = 0, len(kernel)
    while lo < hi and kernel[lo] == 0:
        lo += 1
    while hi > lo and kernel[hi - 1] == 0:
        hi -= 1
    return lo, hi


@_jit
def _blur(a, kernel, tmp, out):
    """Separable blur of each plane of a (2, h, w, c) grid with ``kernel`` along rows then
    columns, zero beyond the edges (cv2.sepFilter2D, BORDER_CONSTANT), into ``out``; ``tmp``:
    scratch of at least one plane. Kernels of up to 9 taps (every level below the top
    floors: sigma <= 1 cell) sum nine zero-padded shifted rows per output value in registers;
    longer ones (on the few cells of the top floors) go to _blur_any."""
    p, h, w, c = a.shape
    lo, hi = _span(kernel)
    taps = hi - lo
    if taps > 9:
        _blur_any(a, kernel, tmp, out)
        return
    k = np.zeros(9, np.float32)
    for t in range(taps):
        k[4 - (taps - 1) // 2 + t] = kernel[lo + t]
    k0, k1, k2, k3, k4, k5, k6, k7, k8 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]
    wc = w * c
    row = np.zeros((w + 8) * c, np.float32)           # one row, 4 empty cells either side
    mid = np.zeros((h + 8, wc), np.float32)           # the rows filtered, 4 empty rows
    for q in range(p):
        src = a[q].reshape((h, wc))
        dst = out[q].reshape((h, wc))
        for i in range(h):
            row[4 * c:4 * c + wc] = src[i]
            x0, x1, x2 = row[0:wc], row[c:c + wc], row[2 * c:2 * c + wc]
            x3, x4, x5 = row[3 * c:3 * c + wc], row[4 * c:4 * c + wc], row[5 * c:5 * c + wc]
            x6, x7, x8 = row[6 * c:6 * c + wc], row[7 * c:7 * c + wc], row[8 * c:8 * c + wc]
            m = mid[i + 4]
            for j in range(wc):
                m[j] = ((((k0 * x0[j] + k1 * x1[j]) + (k2 * x2[j] + k3 * x3[j]))
                         + ((k4 * x4[j] + k5 * x5[j]) + (k6 * x6[j] + k7 * x7[j])))
                        + k8 * x8[j])
        for i in range(h):
            y0, y1, y2 = mid[i], mid[i + 1], mid[i + 2]
            y3, y4, y5 = mid[i + 3], mid[i + 4], mid[i + 5]
            y6, y7, y8 = mid[i + 6], mid[i + 7], mid[i + 8]
            d = dst[i]
            for j in range(wc):
                d[j] = ((((k0 * y0[j] + k1 * y1[j]) + (k2 * y2[j] + k3 * y3[j]))
                         + ((k4 * y4[j] + k5 * y5[j]) + (k6 * y6[j] + k7 * y7[j])))
                        + k8 * y8[j])


@_jit
def _blur_any(a, kernel, tmp, out):
    """``_blur`` for any kernel: each pass adds shifted copies of whole rows (long contiguous
    loops the compiler vectorises)."""
    p, h, w, c = a.shape
    r = len(kernel) // 2
    lo, hi = _span(kernel)
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


@_jit
def _tap_pair(i0, frac, n):
    """cv2.remap's two taps along one axis of n cells from the upper-left tap ``i0`` and
    ``frac``: (first, second) clamped into the grid and their weights (1 - frac, frac), a tap
    beyond the grid weighing 0 (remap's zero border)."""
    zero, one = np.float32(0.0), np.float32(1.0)
    return (min(max(i0, 0), n - 1), min(max(i0 + 1, 0), n - 1),
            (one - frac) if 0 <= i0 < n else zero, frac if 0 <= i0 + 1 < n else zero)


@_jit
def slice_grid(field, guide, y0, ay, x0, ax, g0, inv_width, out):
    """``local_correction._slice``: the (gh, gw, bins) ``field`` read at every pixel of the
    half-resolution image into ``out``, bilinear in space with the taps and fractions of
    cv2.remap (``y0``/``ay`` per row, ``x0``/``ax`` per column, ``remap_taps``; a tap beyond
    the grid weighs 0, as remap's zero border) and linear between the two bins around the
    ``guide``'s value ((guide - g0) * inv_width; NaN reads bin 0); one bin: the plain
    bilinear read (``guide`` unused). Each output row first blends its two grid rows (a
    vectorised pass over gw x bins values); each pixel then reads two columns of that row."""
    gh, gw, bins = field.shape
    h2, w2 = out.shape
    zero = np.float32(0.0)
    top = np.float32(bins - 1)
    c0 = np.empty(w2, np.int64)
    c1 = np.empty(w2, np.int64)
    wx0 = np.empty(w2, np.float32)
    wx1 = np.empty(w2, np.float32)
    for x in range(w2):
        c0[x], c1[x], wx0[x], wx1[x] = _tap_pair(x0[x], ax[x], gw)
        c0[x] *= bins
        c1[x] *= bins
    flat = field.reshape((gh, gw * bins))
    row = np.empty(gw * bins, np.float32)
    lower = np.empty(w2, np.int32)
    frac = np.empty(w2, np.float32)
    for y in range(h2):
        r0, r1, wy0, wy1 = _tap_pair(y0[y], ay[y], gh)
        f0, f1 = flat[r0], flat[r1]
        for q in range(gw * bins):
            row[q] = f0[q] * wy0 + f1[q] * wy1
        res = out[y]
        if bins == 1:
            for x in range(w2):
                res[x] = row[c0[x]] * wx0[x] + row[c1[x]] * wx1[x]
            continue
        # The bins first (a vectorised pass), then the reads: about twice as fast as both in
        # one loop.
        g = guide[y]
        for x in range(w2):
            gb = (g[x] - g0) * inv_width
            gb = min(max(gb, zero), top) if gb == gb else zero     # NaN -> bin 0 (np.fmax)
            b = min(np.int32(gb), np.int32(bins - 2))
            lower[x] = b
            frac[x] = gb - np.float32(b)
        for x in range(w2):
            i0, i1 = c0[x] + lower[x], c1[x] + lower[x]
            lo = row[i0] * wx0[x] + row[i1] * wx1[x]
            hi = row[i0 + 1] * wx0[x] + row[i1 + 1] * wx1[x]
            res[x] = (hi - lo) * frac[x] + lo


@_jit
def _affine(v, scale, shift, inverse):
    """One pixel of ``fit.apply_fit``: v * scale + shift (``inverse``: its reciprocal) in
    float32, NaN where that is not a positive finite depth (NaN stays NaN)."""
    d = v * scale + shift
    if inverse:
        d = np.float32(1.0) / d
    return np.float32(np.nan) if (d <= np.float32(0.0) or d == np.float32(np.inf)) else d


@_jit
def affine_depth(relative, scale, shift, inverse, out):
    """``fit.apply_fit`` in one pass: out = relative * scale + shift (float32; ``inverse``:
    its reciprocal), NaN where that is not a positive finite depth (NaN stays NaN)."""
    src, dst = relative.reshape(-1), out.reshape(-1)
    for q in range(len(src)):
        dst[q] = _affine(src[q], scale, shift, inverse)


@_jit
def _tukey(x, y, cutoff, s, t, out):
    """``fit._Problem.tukey``: (1 - r^2)^2 of r = |log((s x + t) / y)| / cutoff, 0 beyond
    the cutoff or where the fit is not positive."""
    for i in range(len(x)):
        r = (s * x[i] + t) / y[i]
        if not r > 0.0:                       # NaN or a fit that is not positive: weight 0
            out[i] = 0.0
            continue
        u = min(abs(math.log(r)) / cutoff[i], 1.0)
        u = 1.0 - u * u
        out[i] = u * u


@_jit
def irls(x, y, inv_var, cutoff, s, t, tol, max_iterations, known_s, known_t, use_known):
    """``fit._irls``'s iterations from a finite start (s, t): Tukey weights times
    ``inv_var``, a weighted line from the five weighted sums of the centred data, until the
    fitted values move by <= ``tol`` over the data's x range, or (``use_known``) within
    10 ``tol`` of (known_s, known_t), which is then returned. Where the weights leave no
    line (too few anchors with weight), it stops at the last one, as the reference."""
    n = len(x)
    mx = 0.0
    my = 0.0
    for i in range(n):
        mx += x[i]
        my += y[i]
    mx /= n
    my /= n
    x_lo, x_hi = np.inf, -np.inf
    for i in range(n):
        x_lo = min(x_lo, x[i])
        x_hi = max(x_hi, x[i])
    u = np.empty(n)
    for _ in range(max_iterations):
        _tukey(x, y, cutoff, s, t, u)
        sw = swx = swy = swxx = swxy = 0.0
        nonzero = 0
        for i in range(n):
            w = u[i] * inv_var[i]
            if w != 0.0:
                nonzero += 1
            cx, cy = x[i] - mx, y[i] - my
            sw += w
            swx += w * cx
            swy += w * cy
            swxx += w * cx * cx
            swxy += w * cx * cy
        sxx = sw * swxx - swx * swx
        if not (sw > 0 and sxx > 1e-300 * max(sw * swxx, 1e-300)) or nonzero < 2:
            break
        slope = (sw * swxy - swx * swy) / sxx
        s_new, t_new = slope, my + (swy - slope * swx) / sw - slope * mx
        if not (np.isfinite(s_new) and np.isfinite(t_new)):
            break
        moved = max(abs((s_new - s) * x_lo + t_new - t), abs((s_new - s) * x_hi + t_new - t))
        s, t = s_new, t_new
        if moved <= tol:
            break
        if use_known and max(abs((known_s - s) * x_lo + known_t - t),
                             abs((known_s - s) * x_hi + known_t - t)) <= 10 * tol:
            return known_s, known_t
    return s, t


@_jit
def fit_problem(x, z, w, inverse, noise, cutoff):
    """``fit.fit_scale_shift``'s valid anchors (finite, positive depth and weight) and
    ``fit._Problem``'s arrays for them in one pass, the same operations per anchor: (valid
    mask, x, z, y, inverse variance, cutoff) of the valid ones in input order, and (min x,
    max x, max |x|) over them (inf, -inf, 0 where none is valid)."""
    n = len(x)
    valid = np.empty(n, np.bool_)
    m = 0
    for i in range(n):
        ok = (np.isfinite(x[i]) and np.isfinite(z[i]) and z[i] > 0 and np.isfinite(w[i])
              and w[i] > 0)
        valid[i] = ok
        if ok:
            m += 1
    px, pz, py, iv, cut = np.empty(m), np.empty(m), np.empty(m), np.empty(m), np.empty(m)
    x_lo, x_hi, x_abs = np.inf, -np.inf, 0.0
    k = 0
    for i in range(n):
        if not valid[i]:
            continue
        xi, zi = x[i], z[i]
        e = noise * zi
        var = 1.0 / w[i] + e * e
        root = math.sqrt(var)
        if inverse:
            py[k] = 1.0 / zi
            sd = root / (zi * zi)
        else:
            py[k] = zi
            sd = root
        px[k], pz[k] = xi, zi
        iv[k] = 1.0 / (sd * sd)
        cut[k] = cutoff * root / e
        x_lo, x_hi, x_abs = min(x_lo, xi), max(x_hi, xi), max(x_abs, abs(xi))
        k += 1
    return valid, px, pz, py, iv, cut, x_lo, x_hi, x_abs


@_jit
def tukey_loss(x, y, cutoff, s, t):
    """``fit._robust_line``'s score of a solution: the bounded Tukey loss, the sum of
    1 - u^1.5 over u = ``_tukey``'s weights, and how many weights are not 0."""
    u = np.empty(len(x))
    _tukey(x, y, cutoff, s, t, u)
    loss = 0.0
    nonzero = 0
    for i in range(len(u)):
        loss += 1.0 - u[i] * math.sqrt(u[i])
        if u[i] != 0.0:
            nonzero += 1
    return loss, nonzero


@_jit
def inliers_and_residual(x, y, z, cutoff, s, t, inverse):
    """``fit._Problem.inliers`` and ``fit._relative_rms`` over them: (mask of |log(fit /
    anchor)| < cutoff, the inliers' RMS relative depth error; NaN where there are none)."""
    n = len(x)
    mask = np.empty(n, np.bool_)
    total = 0.0
    count = 0
    for i in range(n):
        f = s * x[i] + t
        r = f / y[i]
        mask[i] = r > 0.0 and abs(math.log(r)) < cutoff[i]
        if mask[i]:
            if inverse:
                f = 1.0 / f if f > 0 else np.inf
            e = (f - z[i]) / z[i]
            total += e * e
            count += 1
    return mask, math.sqrt(total / count) if count else np.nan


@_jit
def _div(a, b):
    """a // b for integers 0 <= a < 2^52, b > 0, by a float division: exact there (a
    quotient that is not a whole number is at least 1 / b below the next, far more than
    float64's rounding), and several times quicker than a 64-bit integer division."""
    return int(math.floor(a / b))


@_jit
def _axis_tap(pos, n):
    """``local_correction._Grid._axis`` for one coordinate: (i0, i1, fraction)."""
    i0 = min(max(math.floor(pos), 0), max(n - 2, 0))
    f = min(max(pos - i0, 0.0), 1.0) if n > 1 else 0.0
    return int(i0), min(int(i0) + 1, n - 1), f


@_jit
def corners(rows, cols, cell, nh, nw, gw, channels, plane, b0, b1, fb, nearest):
    """``local_correction._Grid.corners`` and ``splat_index``: (flat indices (k, n), weights
    (k, n), the splat index (2 k n)): 4 bilinear corners in space or the ``nearest`` cell,
    times the two bins (``b0``, ``b1``, fraction ``fb``; empty arrays: not bilateral). Nearest
    cells without bins have no weights: an empty (0, 0) array."""
    n = len(rows)
    spatial = 1 if nearest else 4
    nb = 2 if len(b0) else 1
    k = spatial * nb
    idx = np.empty((k, n), np.int64)
    wts = np.empty((k, n) if (nb == 2 or not nearest) else (0, 0))
    for i in range(n):
        if nearest:
            cy, cx = min(_div(rows[i], cell), nh - 1), min(_div(cols[i], cell), nw - 1)
            ys, xs = (cy, cy), (cx, cx)
            fy = fx = 0.0
        else:
            y0, y1, fy = _axis_tap((rows[i] + 0.5) / cell - 0.5, nh)
            x0, x1, fx = _axis_tap((cols[i] + 0.5) / cell - 0.5, nw)
            ys, xs = (y0, y1), (x0, x1)
        for s in range(spatial):
            yi, xi = s // 2, s % 2
            cell_index = (ys[yi] * gw + xs[xi]) * channels
            w = 1.0
            if not nearest:
                w = ((1.0 - fy) if yi == 0 else fy) * ((1.0 - fx) if xi == 0 else fx)
            if nb == 1:
                idx[s, i] = cell_index
                if not nearest:
                    wts[s, i] = w
            else:
                idx[2 * s, i] = cell_index + b0[i]
                idx[2 * s + 1, i] = cell_index + b1[i]
                wts[2 * s, i] = w * (1.0 - fb[i])
                wts[2 * s + 1, i] = w * fb[i]
    index = np.empty(2 * k * n, np.int64)
    flat = idx.reshape(-1)
    for q in range(k * n):
        index[q] = flat[q]
        index[k * n + q] = flat[q] + plane
    return idx, wts, index


@_jit
def cell_means(rows, cols, v, weights, side, cell, wcells):
    """``local_correction.thin_plate_base``'s centres for many anchors: the weighted means
    of (row * side, col * side, v) per cell of ``cell`` pixels (``wcells`` cells per image
    row) over the anchors with weight > 0, and the cells' summed weights, in cell order
    (np.bincount's sums, in the anchors' order)."""
    index = np.empty(len(v), np.int64)
    n = 0
    for i in range(len(v)):
        index[i] = _div(rows[i], cell) * wcells + _div(cols[i], cell)
        if weights[i] > 0:
            n = max(n, index[i] + 1)
    sw = np.zeros(n)
    sy = np.zeros(n)
    sx = np.zeros(n)
    sv = np.zeros(n)
    for i in range(len(v)):
        w = weights[i]
        if w > 0:
            c = index[i]
            sw[c] += w
            sy[c] += w * (rows[i] * side)
            sx[c] += w * (cols[i] * side)
            sv[c] += w * v[i]
    used = 0
    for c in range(n):
        if sw[c] > 0:
            used += 1
    oy, ox, ov, ow = np.empty(used), np.empty(used), np.empty(used), np.empty(used)
    k = 0
    for c in range(n):
        if sw[c] > 0:
            oy[k], ox[k], ov[k], ow[k] = sy[c] / sw[c], sx[c] / sw[c], sv[c] / sw[c], sw[c]
            k += 1
    return oy, ox, ov, ow


@_jit
def lu_solve(a, b):
    """Solve a x = b by LU with partial pivoting (a, b copied): (ok, x); ok False where a
    pivot is below 100 machine epsilons (a singular system: cv2.solve's DECOMP_LU rule). No
    BLAS: the small systems of a frame stay on the calling thread."""
    n = len(b)
    m = a.copy()
    x = b.copy()
    for k in range(n):
        p = k
        best = abs(m[k, k])
        for i in range(k + 1, n):
            if abs(m[i, k]) > best:
                best, p = abs(m[i, k]), i
        if best < 100 * 2.220446049250313e-16:
            return False, x
        if p != k:
            for j in range(n):
                m[k, j], m[p, j] = m[p, j], m[k, j]
            x[k], x[p] = x[p], x[k]
        pivot_row = m[k, k + 1:]
        inv = 1.0 / m[k, k]
        for i in range(k + 1, n):
            f = m[i, k] * inv
            if f != 0.0:
                row = m[i, k + 1:]
                for j in range(n - k - 1):
                    row[j] -= f * pivot_row[j]
                x[i] -= f * x[k]
    for k in range(n - 1, -1, -1):
        s = x[k]
        for j in range(k + 1, n):
            s -= m[k, j] * x[j]
        x[k] = s / m[k, k]
    return True, x


@_jit
def locate(values, g0, width, n):
    """``local_correction._RangeAxis.locate``: for each value its lower bin, upper bin and
    the fraction towards the upper one (``_Grid._axis`` on (value - g0) / width)."""
    m = len(values)
    i0 = np.empty(m, np.int64)
    i1 = np.empty(m, np.int64)
    f = np.empty(m)
    for q in range(m):
        i0[q], i1[q], f[q] = _axis_tap((values[q] - g0) / width, n)
    return i0, i1, f


@_jit
def sample(state, idx, corner_weights):
    """The first plane of a (2, gh, gw, channels) grid at the corners ``idx`` (k, n) with
    ``corner_weights`` (k, n; empty: one corner, weight 1), float64 (``_Grid.sample``)."""
    flat = state.reshape(-1)
    k, n = idx.shape
    out = np.zeros(n)
    for c in range(k):
        for i in range(n):
            val = float(flat[idx[c, i]])
            out[i] += val if corner_weights.size == 0 else val * corner_weights[c, i]
    return out


@_jit
def judge_rounds(index, corner_weights, v, support, prior, gh, gw, channels, bins, floors,
                 sigmas, kernels, range_kernel, iterations, cutoff, settle):
    """``local_correction._correction_grid``'s judging rounds on the judging grid: each
    anchor's Tukey weight against the field of its neighbours (``build_field``, exclusive,
    with the prior), until no weight moves by ``settle`` on average or ``iterations``
    rounds; a round that would reject every anchor is not taken. Returns (weights, the last
    round's residuals, its fallback shares; zeros without the bilateral axis)."""
    n = len(v)
    u = np.ones(n)
    u_new = np.empty(n)
    e = np.zeros(n)
    unjudged = np.zeros(n)
    scale = 1.0 / cutoff
    for _ in range(iterations):
        state = build_field(index, corner_weights, v, u, support, True, prior, gh, gw,
                            channels, bins, floors, sigmas, kernels, range_kernel)
        at = sample_planes(state, index, corner_weights)
        nonzero = False
        for i in range(n):
            if bins > 0:
                e[i] = (v[i] - at[0, i]) * (1.0 - at[1, i])
                unjudged[i] = at[1, i]
            else:
                e[i] = v[i] - at[0, i]
            t = min(abs(e[i]) * scale, 1.0)
            w = 1.0 - t * t
            u_new[i] = w * w
            nonzero = nonzero or u_new[i] != 0.0
        if not nonzero:
            break
        change = 0.0
        for i in range(n):
            change += abs(u_new[i] - u[i])
            u[i] = u_new[i]
        if change / n < settle:
            break
    return u, e, unjudged


@_jit
def _up2_row(half, y, row, even, odd):
    """Output row ``y`` of ``half`` upsampled 2x (cv2.resize INTER_LINEAR), its even and odd
    columns into ``even`` and ``odd`` (``row``: scratch)."""
    i0, i1, odd_row = _rows_of(y, half.shape[0])
    _mix(half[i0], half[i1], row, odd_row, i0 == i1)
    _halves(row, even, odd, 1)


@_jit
def up2_multiply(half, other, out):
    """out = cv2.resize(half, twice its size, INTER_LINEAR) * other (``other`` and ``out``
    exactly twice ``half``'s height and width; ``out`` may be ``other``): the 2x pattern of
    weights 1/4, 3/4 with the edges replicated, each output row from one blended row of
    ``half``, the product in the same pass (no upsampled image in between)."""
    h2, w2 = half.shape
    row, even, odd = np.empty(w2, np.float32), np.empty(w2, np.float32), np.empty(w2, np.float32)
    for y in range(2 * h2):
        _up2_row(half, y, row, even, odd)
        o, d = other[y], out[y]
        for j in range(w2):
            d[2 * j] = even[j] * o[2 * j]
            d[2 * j + 1] = odd[j] * o[2 * j + 1]


@_jit
def up2_multiply_affine(half, relative, scale, shift, inverse, lo, hi, out):
    """``up2_multiply(half, aligned, out)`` where aligned = ``affine_depth(relative, ...)``
    (computed per pixel, not stored), then NaN outside [lo, hi] (float32 thresholds,
    ``fit.clip_range``): the map, the product and the range in one pass over the image."""
    h2, w2 = half.shape
    row, even, odd = np.empty(w2, np.float32), np.empty(w2, np.float32), np.empty(w2, np.float32)
    nan = np.float32(np.nan)
    for y in range(2 * h2):
        _up2_row(half, y, row, even, odd)
        src, dst = relative[y], out[y]
        for j in range(w2):
            p = even[j] * _affine(src[2 * j], scale, shift, inverse)
            dst[2 * j] = nan if (p > hi or p < lo) else p
            p = odd[j] * _affine(src[2 * j + 1], scale, shift, inverse)
            dst[2 * j + 1] = nan if (p > hi or p < lo) else p


@_jit
def _remap_tap(coord, steps):
    """cv2.remap's upper-left tap and fraction along one axis for a float32 coordinate:
    exact (``steps`` 0, OpenCV 5) or rounded to 1/``steps`` (OpenCV 4's INTER_TAB_SIZE)."""
    if steps == 0:
        i0 = math.floor(coord)
        return int(i0), np.float32(coord - np.float32(i0))
    s = int(np.rint(coord * np.float32(steps)))
    i0 = s // steps
    return i0, np.float32(s - i0 * steps) * np.float32(1.0 / steps)


@_jit
def read_at(field, cy, cx, rows, cols, b0, fb, steps):
    """``local_correction._read_at``: the (gh, gw, bins) ``field`` at anchor pixels, bilinear
    in space as cv2.remap reads it (``cy``/``cx``: the grid coordinate of every image row /
    column; a tap beyond the grid weighs 0) and linear between bins b0 and b0 + 1 (fraction
    ``fb``; ``b0`` empty: one bin), float64."""
    gh, gw, bins = field.shape
    n = len(rows)
    out = np.empty(n)
    for i in range(n):
        y0, ay = _remap_tap(cy[rows[i]], steps)
        x0, ax = _remap_tap(cx[cols[i]], steps)
        r0, r1, wy0, wy1 = _tap_pair(y0, ay, gh)
        c0, c1, wx0, wx1 = _tap_pair(x0, ax, gw)
        b = b0[i] if len(b0) else 0
        lo = ((field[r0, c0, b] * (wy0 * wx0) + field[r0, c1, b] * (wy0 * wx1))
              + field[r1, c0, b] * (wy1 * wx0)) + field[r1, c1, b] * (wy1 * wx1)
        if len(b0) == 0:
            out[i] = lo
            continue
        hi = ((field[r0, c0, b + 1] * (wy0 * wx0) + field[r0, c1, b + 1] * (wy0 * wx1))
              + field[r1, c0, b + 1] * (wy1 * wx0)) + field[r1, c1, b + 1] * (wy1 * wx1)
        out[i] = float(lo) + (float(hi) - float(lo)) * fb[i]
    return out


@_jit
def detail_field(rows, cols, residual, weights, dh, dw, cell, kernel, floor, limit):
    """``local_correction.detail_grid`` up to its exp: the weighted residuals and weights
    splatted on cells of ``cell`` pixels (float64 sums, as np.bincount's), both blurred with
    ``kernel`` (zero beyond the edges), their ratio with the denominator floored at
    ``floor``, clipped to +-``limit``; (dh, dw) float32."""
    acc = np.zeros((2, dh * dw))
    for i in range(len(rows)):
        c = _div(rows[i], cell) * dw + _div(cols[i], cell)
        acc[0, c] += weights[i] * residual[i]
        acc[1, c] += weights[i]
    nd = acc.astype(np.float32).reshape((2, dh, dw, 1))
    blurred = np.empty_like(nd)
    _blur(nd, kernel, np.empty((dh, dw, 1), np.float32), blurred)
    num, den = blurred[0].reshape(-1), blurred[1].reshape(-1)
    out = np.empty(dh * dw, np.float32)
    for q in range(dh * dw):
        r = num[q] / max(den[q], floor)
        out[q] = min(max(r, -limit), limit)
    return out.reshape((dh, dw))
