"""Stamp matching of companions to images (shared by node and bag processor)."""
from types import SimpleNamespace as NS

from fiffdepth_ros.sync import FrameAssembler, StampedBuffer


def msg(stamp_ns, tag=''):
    stamp = NS(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return NS(header=NS(stamp=stamp, frame_id='cam'), tag=tag)


MS = 1_000_000


def test_buffer_nearest_respects_max_age_and_order():
    buf = StampedBuffer(3)
    for t in (30, 10, 20, 40):                  # out of order; oldest (10) falls out
        buf.add(t * MS, t)
    assert len(buf) == 3
    assert buf.nearest(24 * MS, 5 * MS) == 20
    assert buf.nearest(26 * MS, 5 * MS) == 30
    assert buf.nearest(10 * MS, 5 * MS) is None  # dropped by maxlen
    assert buf.nearest(100 * MS, 5 * MS) is None
    assert buf.exact(30 * MS) == 30 and buf.exact(31 * MS) is None
    assert buf.latest_within(35 * MS, 6 * MS) == 40


def test_assembler_picks_nearest_lidar_and_exact_camera_info():
    asm = FrameAssembler(max_age_s=0.05, use_lidar=True, use_stereo=True)
    for t in (0, 100, 200):
        asm.add_camera_info(msg(t * MS, f'info{t}'))
    for t in (90, 130):
        asm.add_lidar(msg(t * MS, f'lidar{t}'))
    frame = asm.assemble(msg(100 * MS))
    assert frame.camera_info.tag == 'info100'
    assert frame.lidar.tag == 'lidar90'
    assert frame.stereo is None and any('stereo' in n for n in frame.notes)
    far = asm.assemble(msg(400 * MS))
    # No camera_info within the age: the camera's latest one (intrinsics are static).
    assert far.lidar is None and far.camera_info.tag == 'info200'
    assert any('latest camera_info' in n for n in far.notes)


def test_camera_info_falls_back_to_latest_within_age():
    asm = FrameAssembler(max_age_s=0.05)
    asm.add_camera_info(msg(100 * MS, 'a'))
    asm.add_camera_info(msg(120 * MS, 'b'))
    assert asm.assemble(msg(130 * MS)).camera_info.tag == 'b'


def test_image_clock_jump_backwards_drops_the_old_timeline():
    asm = FrameAssembler(max_age_s=0.1, use_lidar=True)
    asm.add_camera_info(msg(50_000 * MS))
    asm.add_lidar(msg(50_000 * MS))
    assert asm.assemble(msg(50_000 * MS)).lidar is not None
    looped = asm.assemble(msg(1_000 * MS))       # bag looped back 49 s
    assert asm.clock_jumps == 1
    # The old timeline's camera_info is only the camera's fallback intrinsics now.
    assert looped.lidar is None and looped.camera_info is not None
    assert any('clock jumped backwards by 49.0 s' in n for n in looped.notes)
    assert len(asm.lidar) == 0 and len(asm.camera_infos) == 0
    asm.add_lidar(msg(1_010 * MS, 'new'))
    assert asm.assemble(msg(1_020 * MS)).lidar.tag == 'new'


def test_a_late_old_companion_does_not_disturb_the_current_frame():
    asm = FrameAssembler(max_age_s=0.05, use_lidar=True)
    asm.assemble(msg(100_000 * MS))
    asm.add_camera_info(msg(100_100 * MS, 'info'))
    asm.add_lidar(msg(100_100 * MS, 'sweep'))
    asm.add_lidar(msg(0, 'redelivered'))          # a reliable transport's late re-delivery
    frame = asm.assemble(msg(100_100 * MS))
    assert frame.lidar.tag == 'sweep' and frame.camera_info.tag == 'info'
    assert asm.clock_jumps == 0 and not frame.notes


def test_awaits_companions_only_while_one_may_still_come():
    asm = FrameAssembler(max_age_s=0.05, use_lidar=True)
    image = msg(1000 * MS)
    assert asm.awaits_companions(image)              # nothing seen yet
    asm.add_camera_info(msg(1000 * MS))
    asm.add_lidar(msg(900 * MS))                     # too old, but a newer sweep may come
    assert asm.awaits_companions(image)
    asm.add_lidar(msg(1020 * MS))
    assert not asm.awaits_companions(image)
    late = msg(1300 * MS)
    asm.add_lidar(msg(1400 * MS))                    # topic is past the image: nothing to wait for
    asm.add_camera_info(msg(1400 * MS))
    assert not asm.awaits_companions(late)


def test_companions_of_the_new_timeline_that_arrive_first_are_kept():
    asm = FrameAssembler(max_age_s=0.1, use_lidar=True)
    asm.add_lidar(msg(50_000 * MS, 'old'))
    asm.assemble(msg(50_000 * MS))
    asm.add_camera_info(msg(1_000 * MS))         # the bag looped: companions arrive first
    asm.add_lidar(msg(1_000 * MS, 'new'))
    assert not asm.awaits_companions(msg(1_000 * MS))
    frame = asm.assemble(msg(1_000 * MS))
    assert any('clock jumped backwards' in n for n in frame.notes)
    assert frame.lidar.tag == 'new' and frame.camera_info is not None
    assert asm.lidar.newest_stamp == 1_000 * MS   # the old sweep is gone
    assert not any('clock' in n for n in asm.assemble(msg(1_050 * MS)).notes)
