"""Shared by the benchmark scripts: the median wall time of repeated calls."""
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
