"""Diagnostics bookkeeping of the node (pure Python)."""
import threading
from types import SimpleNamespace as NS

import numpy as np

from fiffdepth_ros.ros.stats import NodeStats, RateMeter, SlidingWindow


def test_rate_meter_window():
    meter = RateMeter(window_s=1.0)
    for i in range(11):
        meter.tick(now=10.0 + i * 0.1)           # 10 Hz for one second
    assert abs(meter.rate(now=11.0) - 10.0) < 1e-6
    assert meter.rate(now=20.0) == 0.0           # all events aged out


def test_summary_reports_counters_latency_and_fit():
    stats = NodeStats(warmup_s=0.0)
    assert stats.summary()['latency median (ms)'] == 'n/a'
    stats.received, stats.processed, stats.dropped = 10, 7, 3
    for v in (10.0, 20.0, 30.0):
        stats.latency_ms.add(v)
    stats.last_report = NS(anchors_offered=50, anchors_used=40, scale=2.5, shift=0.1,
                           status='fitted', residual=0.01)
    stats.last_metric = True
    s = stats.summary()
    assert s['frames dropped'] == '3' and s['frames processed'] == '7'
    assert s['latency median (ms)'] == '20.0' and s['latency max (ms)'] == '30.0'
    assert s['fit status'] == 'fitted' and s['scale'] == '2.5' and s['metric'] == 'true'


def test_start_up_frames_are_left_out_of_the_latency_window():
    """The first frames pay for lazy initialisation: a 7 s first frame must not be the p99."""
    window = SlidingWindow(window_s=10.0, warmup_s=5.0)
    window.add(7000.0, now=100.0)                # first frame: warm-up
    window.add(3000.0, now=104.9)                # still inside the start-up
    for i in range(50):
        window.add(100.0 + i, now=105.0 + i * 0.1)
    assert window.warmup_samples == 2
    p50, p99 = window.percentiles((50, 99), now=110.0)
    assert p50 == np.percentile(np.arange(100.0, 150.0), 50) and p99 < 150.0


def test_latency_window_slides_over_time_not_over_a_frame_count():
    window = SlidingWindow(window_s=10.0, warmup_s=0.0)
    window.add(5000.0, now=0.0)                  # an old stall ...
    for i in range(20):
        window.add(50.0, now=1.0 + i * 0.5)
    assert max(window.values(now=10.0)) == 5000.0
    assert max(window.values(now=10.5)) == 50.0  # ... ages out after window_s
    assert len(window.values(now=100.0)) == 0 and window.percentiles(now=100.0) is None


def test_why_a_p99_over_100_frames_reads_seconds():
    """numpy's p99 of 100 samples is v[98] + 0.01 (v[99] - v[98]): one stalled frame of 7.4 s
    gives ~0.3 s; a p99 of 7.4 s needs two such frames or one far older stamp."""
    base = [100.0] * 98
    assert np.percentile(base + [100.0, 7400.0], 99) < 200.0
    assert np.percentile(base + [7400.0, 7400.0], 99) == 7400.0


def test_counters_are_safe_from_several_threads():
    stats = NodeStats()

    def bump():
        for _ in range(2000):
            stats.count('received')

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.received == 8000
    stats.critical_ms.extend([3.0, 5.0])
    stats.mode = 'overlapped'
    s = stats.summary()
    assert s['critical path overhead median (ms)'] == '4.0' and s['worker'] == 'overlapped'


def test_publish_cost_is_reported_against_message_size():
    stats = NodeStats()
    for ms in (2.0, 4.0, 3.0):
        stats.add_publish('points', 9_830_400, ms)
    stats.add_publish('depth', 1_228_800, 0.5)
    text = stats.summary()['publish medians (data size, ms)']
    assert text == 'points 9.83 MB 3.00 ms, depth 1.23 MB 0.50 ms'
