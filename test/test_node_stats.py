"""Diagnostics bookkeeping of the node (pure Python)."""
from types import SimpleNamespace as NS

from fiffdepth_ros.ros.stats import NodeStats, RateMeter


def test_rate_meter_window():
    meter = RateMeter(window_s=1.0)
    for i in range(11):
        meter.tick(now=10.0 + i * 0.1)           # 10 Hz for one second
    assert abs(meter.rate(now=11.0) - 10.0) < 1e-6
    assert meter.rate(now=20.0) == 0.0           # all events aged out


def test_summary_reports_counters_latency_and_fit():
    stats = NodeStats()
    assert stats.summary()['latency median (ms)'] == 'n/a'
    stats.received, stats.processed, stats.dropped = 10, 7, 3
    stats.latency_ms.extend([10.0, 20.0, 30.0])
    stats.last_report = NS(anchors_offered=50, anchors_used=40, scale=2.5, shift=0.1,
                           status='fitted', residual=0.01)
    stats.last_metric = True
    s = stats.summary()
    assert s['frames dropped'] == '3' and s['frames processed'] == '7'
    assert s['latency median (ms)'] == '20.0'
    assert s['fit status'] == 'fitted' and s['scale'] == '2.5' and s['metric'] == 'true'
