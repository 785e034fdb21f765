"""Shared by the benchmark scripts: the median wall time of repeated calls, and the FLOPs of
one call."""
import time

import numpy as np


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def interleaved_ms(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """{name: (median, p10, p90)} milliseconds, the calls taken round-robin (one of each per
    round): on a shared machine whose speed drifts, every row sees the same conditions and
    the rows stay comparable."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: tuple(float(v) * 1e3 for v in np.percentile(t, [50, 10, 90]))
            for name, t in times.items()}


def tflops(fn) -> float:
    """TFLOPs of one call of ``fn`` without autograd (torch.utils.flop_counter: convolutions,
    matmuls, attention; a multiply-add counted as 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e12
