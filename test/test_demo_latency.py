"""The demo's latency line: every depth image that answers a frame the demo sent, stamp to
receipt (the node's own statistics leave out its first seconds, i.e. all of a short demo)."""
from types import SimpleNamespace

import pytest

from fiffdepth_ros.demo.run_demo import stream_latency


def _msg(stamp_ns):
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(
        sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)))


def test_latency_over_every_answered_frame():
    t0 = 1_765_000_000 * 10**9
    sent = {t0 + i * 100_000_000 for i in range(5)}
    delays_ms = [40, 55, 70, 85, 400]
    receipts = [((s + d * 10**6) / 1e9, _msg(s)) for s, d in zip(sorted(sent), delays_ms)]
    receipts.append((t0 / 1e9 + 9.0, _msg(t0 - 5 * 10**9)))     # warm-up frame: not ours
    out = stream_latency(receipts, sent)
    assert out['frames'] == 5
    assert out['median_ms'] == pytest.approx(70, abs=0.01)
    assert out['max_ms'] == pytest.approx(400, abs=0.01)
    assert 85 < out['p90_ms'] < 400
    assert stream_latency([], sent) is None
