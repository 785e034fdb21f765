"""The node's two-stage worker (fiffdepth_ros.ros.overlap), driven without ROS."""
import threading

import pytest

from fiffdepth_ros.demo.harness import wait_until
from fiffdepth_ros.ros.overlap import HandOff, LatestOnly


def test_latest_only_replaces_a_pending_item_and_reports_it():
    slot = LatestOnly()
    assert slot.put(1) is False
    assert slot.put(2) is True                 # 1 was never taken: dropped
    assert slot.take(timeout=0.1) == 2
    assert slot.take(timeout=0.05) is None     # empty
    slot.put(3)
    slot.close()
    assert slot.take() is None                 # closed wins over a pending item


def test_overlapped_back_stage_runs_beside_the_front_stage():
    """Frame N is finished while the front works on frame N+1: both threads must be inside
    their stage at the same time to pass the barrier (the sequential layout cannot)."""
    for overlapped, expect_overlap in ((True, True), (False, False)):
        barrier = threading.Barrier(2, timeout=1.0)
        met = []

        def back(item):
            if item == 0:
                try:
                    barrier.wait()
                    met.append('back')
                except threading.BrokenBarrierError:
                    pass

        stage = HandOff(back, overlapped=overlapped)
        stage.hand_off(0)                      # frame 0 to finishing
        try:                                   # "inference" of frame 1 on this thread
            barrier.wait()
            met.append('front')
        except threading.BrokenBarrierError:
            pass
        assert stage.wait_idle(timeout=2.0)
        stage.close(timeout=1.0)
        assert (sorted(met) == ['back', 'front']) is expect_overlap


def test_hand_off_holds_one_frame_and_blocks_the_front_when_full():
    release = threading.Event()
    done = []

    def back(item):
        release.wait(5.0)
        done.append(item)

    stage = HandOff(back)
    stage.hand_off(1)                          # being finished (blocked on release)
    assert _eventually(lambda: stage._busy)
    stage.hand_off(2)                          # waits in the slot
    third = threading.Thread(target=stage.hand_off, args=(3,))
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive()                    # slot full: the front is held back, nothing dropped
    release.set()
    third.join(timeout=5.0)
    assert not third.is_alive()
    assert stage.wait_idle(timeout=5.0)
    assert done == [1, 2, 3]                   # in order, none lost
    stage.close(timeout=1.0)


def test_sequential_layout_finishes_inline_on_the_callers_thread():
    threads = []
    stage = HandOff(lambda item: threads.append(threading.get_ident()), overlapped=False)
    stage.hand_off('a')
    assert threads == [threading.get_ident()] and stage.mode == 'sequential'


def test_wait_idle_waits_for_the_frame_being_finished():
    release, finished = threading.Event(), []
    stage = HandOff(lambda item: (release.wait(5.0), finished.append(item)))
    stage.hand_off('x')
    assert stage.wait_idle(timeout=0.2) is False      # still busy
    release.set()
    assert stage.wait_idle(timeout=5.0) and finished == ['x']
    stage.close(timeout=1.0)


def test_a_failing_frame_is_reported_and_the_back_thread_goes_on():
    errors, done = [], []

    def back(item):
        if item == 'bad':
            raise ValueError('broken frame')
        done.append(item)

    stage = HandOff(back, on_error=errors.append)
    stage.hand_off('bad')
    stage.hand_off('good')
    assert stage.wait_idle(timeout=5.0)
    assert done == ['good'] and [str(e) for e in errors] == ['broken frame']
    stage.close(timeout=1.0)
    assert not stage._thread.is_alive()


def test_sequential_without_handler_raises():
    stage = HandOff(lambda item: 1 / 0, overlapped=False)
    with pytest.raises(ZeroDivisionError):
        stage.hand_off(1)


def _eventually(predicate, timeout=5.0):
    return wait_until(predicate, timeout, poll_s=0.01)


def test_wait_free_returns_once_the_back_stage_took_the_waiting_frame():
    release = threading.Event()
    stage = HandOff(lambda item: release.wait(5.0))
    stage.hand_off(1)
    assert _eventually(lambda: stage._busy)
    assert stage.wait_free(timeout=0.1)            # 1 is being finished, the slot is free
    stage.hand_off(2)
    assert stage.wait_free(timeout=0.2) is False   # 2 waits behind 1
    release.set()
    assert stage.wait_free(timeout=5.0)
    stage.close(timeout=1.0)
    assert HandOff(lambda item: None, overlapped=False).wait_free(timeout=0.0)


def test_overlap_stages_auto_overlaps_for_cuda_models_only():
    from types import SimpleNamespace as NS

    import torch

    from fiffdepth_ros.ros.depth_node import _overlap
    cpu, cuda = NS(device=torch.device('cpu')), NS(device=torch.device('cuda', 0))
    assert _overlap('auto', cuda) and not _overlap('auto', cpu)
    assert _overlap('on', cpu) and not _overlap('off', cuda)
    assert not _overlap('auto', object())          # no device attribute: the safe layout
