"""Temporal filter of (log scale, shift): smoothing, gating, holding, resets."""
import numpy as np
import pytest

from fiffdepth_ros.scale.temporal import Measurement, TemporalFilter, TemporalOptions


def m(scale, shift=0.5):
    return Measurement(scale, shift, 0.1, 0.9)


def test_first_measurement_initialises_and_full_responsiveness_follows():
    f = TemporalFilter(TemporalOptions(responsiveness=1.0))
    out = f.update(0.0, m(2.0))
    assert out.status == 'fitted' and out.scale == pytest.approx(2.0)
    out = f.update(0.1, m(2.2, 0.6))
    assert out.scale == pytest.approx(2.2) and out.shift == pytest.approx(0.6)


def test_smoothing_is_geometric_in_scale():
    f = TemporalFilter(TemporalOptions(responsiveness=0.5))
    f.update(0.0, m(2.0))
    out = f.update(0.1, m(2.2, 0.55))
    assert out.scale == pytest.approx(np.sqrt(2.0 * 2.2))      # halfway in log scale
    assert out.shift == pytest.approx(0.525)
    for i in range(40):                                          # converges to a steady input
        out = f.update(0.2 + 0.1 * i, m(2.2, 0.55))
    assert out.scale == pytest.approx(2.2, rel=1e-6)


def test_outlier_frame_is_gated_and_estimate_held():
    f = TemporalFilter(TemporalOptions(responsiveness=0.5, gate=0.25))
    f.update(0.0, m(2.0))
    out = f.update(0.1, m(4.0))                                  # mapping would double
    assert out.status == 'held' and out.scale == pytest.approx(2.0)
    assert 'gated' in out.note
    out = f.update(0.2, m(2.1))                                  # normal frames continue
    assert out.status == 'fitted' and 2.0 < out.scale < 2.1


def test_confirmed_change_restarts_the_filter():
    f = TemporalFilter(TemporalOptions(responsiveness=0.3, confirm_frames=3))
    f.update(0.0, m(2.0))
    statuses = [f.update(0.1 * i, m(3.0)).status for i in range(1, 4)]
    assert statuses == ['held', 'held', 'fitted']
    assert f.scale == pytest.approx(3.0)
    # Outliers that disagree with each other never confirm.
    g = TemporalFilter(TemporalOptions(confirm_frames=2))
    g.update(0.0, m(2.0))
    assert [g.update(0.1 * i, m(s)).status for i, s in enumerate((4.0, 1.0, 4.0, 1.0), 1)] == \
        ['held'] * 4
    assert g.scale == pytest.approx(2.0)


def test_hold_is_bounded_by_frames_and_time():
    f = TemporalFilter(TemporalOptions(hold_max_frames=3, hold_timeout_s=10.0))
    f.update(0.0, m(2.0))
    statuses = [f.update(0.1 * i, None).status for i in range(1, 6)]
    assert statuses == ['held', 'held', 'held', 'none', 'none']
    assert np.isnan(f.update(0.6, None).scale)
    assert f.update(0.7, m(5.0)).status == 'fitted'             # a new fit starts afresh
    assert f.scale == pytest.approx(5.0)

    g = TemporalFilter(TemporalOptions(hold_max_frames=100, hold_timeout_s=0.25,
                                       reset_time_jump_s=5.0))
    g.update(0.0, m(2.0))
    assert g.update(0.2, None).status == 'held'
    assert g.update(0.3, None).status == 'none'


def test_time_jumps_reset():
    f = TemporalFilter(TemporalOptions(responsiveness=0.2, reset_time_jump_s=1.0))
    f.update(10.0, m(2.0))
    out = f.update(9.0, m(3.0))                                  # time went backwards
    assert out.status == 'fitted' and out.scale == pytest.approx(3.0)
    assert 'reset' in out.note
    out = f.update(12.5, m(4.0))                                 # 3.5 s gap
    assert out.scale == pytest.approx(4.0) and 'reset' in out.note
    out = f.update(12.6, m(4.2))                                 # normal step: smoothed
    assert 4.0 < out.scale < 4.2 and out.note == ''


def test_without_estimate_nothing_is_held():
    f = TemporalFilter()
    assert f.update(0.0, None).status == 'none'
    assert f.update(0.1, Measurement(-1.0, 0.0, 0.1, 0.9)).status == 'none'   # unusable


@pytest.mark.parametrize('kwargs', [dict(responsiveness=0.0), dict(responsiveness=1.5),
                                    dict(gate=0.0), dict(confirm_frames=0),
                                    dict(hold_timeout_s=-1.0), dict(reset_time_jump_s=0.0)])
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        TemporalOptions(**kwargs)


def test_scale_only_mappings_at_relative_zero_are_compared_not_gated():
    # After a scale-only fit (shift 0) the nearest pixel of a [0, 1] prediction maps to 0 m in
    # both mappings: that is agreement, not an infinitely large change.
    filt = TemporalFilter(TemporalOptions(responsiveness=0.5))
    assert filt.update(0.0, Measurement(8.6, 0.0, 0.0, 1.0)).status == 'fitted'
    for i in range(1, 8):
        out = filt.update(0.25 * i, Measurement(8.6 * (1 + 0.02 * (-1) ** i), 0.0, 0.0, 1.0))
        assert out.status == 'fitted', out.note
    gated = filt.update(2.5, Measurement(20.0, 0.0, 0.0, 1.0))
    assert gated.status == 'held'                 # a real jump is still gated


def test_gated_for_longer_than_the_hold_restarts_from_the_current_fit():
    # Every frame has a fit of its own, but they disagree with the held estimate (the model's
    # output changed): after the hold timeout the filter follows the data, not 'none'.
    filt = TemporalFilter(TemporalOptions(responsiveness=0.5, hold_timeout_s=1.0,
                                          confirm_frames=3))
    filt.update(0.0, Measurement(2.0, 1.0, 0.1, 0.9))
    statuses = []
    for i in range(1, 6):
        # Alternating far-off fits: never two in a row agree, so no confirmation either.
        m = Measurement(5.0 if i % 2 else 9.0, 1.0, 0.1, 0.9)
        statuses.append(filt.update(0.3 * i, m))
    assert [s.status for s in statuses[:3]] == ['held', 'held', 'held']
    restarted = statuses[3]
    assert restarted.status == 'fitted' and 'restarted from this frame' in restarted.note
    assert restarted.scale == pytest.approx(9.0)
