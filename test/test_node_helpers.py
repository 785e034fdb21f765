"""Pieces of the node that need no running graph: warning rate limit, out-of-memory handling."""
import torch

from fiffdepth_ros.ros.depth_node import WarningLimiter, _is_out_of_memory


class FakeLogger:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


def test_warnings_are_rate_limited_per_kind_of_problem(monkeypatch):
    now = [100.0]
    monkeypatch.setattr('fiffdepth_ros.ros.depth_node.time.monotonic', lambda: now[0])
    log = FakeLogger()
    warn = WarningLimiter(log, period_s=5.0)
    warn('image is 320x240 but camera_info describes 640x480')
    warn('image is 160x120 but camera_info describes 640x480')      # same kind: suppressed
    warn("unsupported image encoding '32FC3'")                      # another kind: logged
    assert len(log.lines) == 2
    now[0] += 6.0
    warn('image is 320x240 but camera_info describes 640x480')
    assert log.lines[-1].endswith('(and 1 more like it)')


def test_out_of_memory_is_recognised_and_other_errors_are_not():
    assert _is_out_of_memory(torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate'))
    assert _is_out_of_memory(RuntimeError('CUDA error: out of memory'))
    assert _is_out_of_memory(MemoryError('out of memory'))
    assert not _is_out_of_memory(RuntimeError('shape mismatch'))
    assert not _is_out_of_memory(ValueError('out of memory'))
