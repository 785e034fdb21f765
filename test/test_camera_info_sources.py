"""Where a frame's intrinsics come from when camera_info is latched, rare, off-stamp or absent:
the camera's latest camera_info, else a calibration file (camera_calibration_parsers YAML)."""
import numpy as np
import pytest

from fiffdepth_ros.conversions.camera_info import (CalibrationError, parse_calibration,
                                                   read_calibration, resolve_calibration_url)
from fiffdepth_ros.sync import FrameAssembler
from msg_factories import BACKENDS

BACKEND = BACKENDS[1]
MS = 1_000_000
T0 = 1_700_000_000 * 10**9
K = [500.0, 0.0, 319.5, 0.0, 505.0, 239.5, 0.0, 0.0, 1.0]


def image(stamp, frame='cam', width=640, height=480):
    return BACKEND.image(BACKEND.header(stamp, frame), height, width, 'mono8', width,
                         np.zeros(width * height, np.uint8))


def compressed(stamp, frame='cam'):
    return BACKEND.compressed_image(BACKEND.header(stamp, frame), 'jpeg', b'\xff\xd8')


def info(stamp, frame='cam', width=640, height=480):
    return BACKEND.camera_info(BACKEND.header(stamp, frame), height, width, 'plumb_bob',
                               [0.0] * 5, K, np.eye(3).ravel(), K[:3] + [0] + K[3:6] + [0] +
                               K[6:] + [0])


def test_latched_camera_info_serves_later_images_and_is_said_once():
    asm = FrameAssembler(0.1)
    asm.add_camera_info(info(T0))                       # published once, transient-local
    notes = []
    for i in range(1, 11):                              # images for 10 s after it
        img = image(T0 + i * 1000 * MS)
        assert not asm.awaits_companions(img)           # no companion_wait per frame
        frame = asm.assemble(img)
        assert frame.camera_info is not None and frame.camera_info.width == 640
        notes += [n for n in frame.notes if 'latest camera_info' in n]
    assert len(notes) == 1 and '-1.000 s from the image' in notes[0]
    assert asm.camera_info_fallbacks == 10


def test_an_image_never_waits_for_camera_info_once_its_camera_sent_one():
    asm = FrameAssembler(0.1)
    img = image(T0 + 5000 * MS)
    assert asm.awaits_companions(img)                   # nothing known about the camera yet
    asm.add_camera_info(info(T0))
    assert not asm.awaits_companions(img)


def test_the_fallback_is_the_same_camera_and_size():
    asm = FrameAssembler(0.1)
    asm.add_camera_info(info(T0, frame='other_cam'))
    asm.add_camera_info(info(T0, width=320, height=240))
    assert asm.assemble(image(T0 + 2000 * MS)).camera_info is None          # 640x480 'cam'
    assert asm.assemble(image(T0 + 2000 * MS, width=320, height=240)).camera_info.width == 320
    # A compressed image does not say its size: the camera's latest (the pipeline checks it).
    assert asm.assemble(compressed(T0 + 2000 * MS)).camera_info.width == 320


def test_a_camera_info_within_the_window_still_wins():
    asm = FrameAssembler(0.1)
    asm.add_camera_info(info(T0))
    asm.add_camera_info(info(T0 + 1000 * MS, width=640))
    late = info(T0 + 3000 * MS)
    asm.add_camera_info(late)
    frame = asm.assemble(image(T0 + 1010 * MS))
    assert frame.camera_info is not late and not frame.notes


def test_remembered_camera_info_is_only_a_fallback():
    """The bag's first camera_info, recorded after the first image (the Raspberry Pi case)."""
    asm = FrameAssembler(0.1)
    asm.remember_camera_info(info(T0 + 460 * MS))
    frame = asm.assemble(image(T0))
    assert frame.camera_info is not None and len(asm.camera_infos) == 0
    assert any('+0.460 s from the image' in n for n in frame.notes)


def test_calibration_file_serves_a_camera_without_camera_info():
    made = []

    def calibration(img):
        made.append(img)
        return info(0)

    asm = FrameAssembler(0.1, calibration=calibration, calibration_name='/cal/front.yaml')
    img = image(T0)
    assert not asm.awaits_companions(img)
    first = asm.assemble(img)
    second = asm.assemble(image(T0 + 100 * MS))
    assert first.camera_info is not None and second.camera_info is not None
    assert [n for n in first.notes if 'calibration file /cal/front.yaml' in n]
    assert not [n for n in second.notes if 'calibration' in n]
    assert len(made) == 2 and made[0] is img
    asm.add_camera_info(info(T0 + 200 * MS))            # a real one arrives: it wins
    assert asm.assemble(image(T0 + 200 * MS)).camera_info.header.stamp.sec == T0 // 10**9


# ---------------------------------------------------------------------- calibration YAML
# As camera_calibration writes it (ost.yaml), values of a real monocular calibration layout.
OST = """image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [ 614.27, 0.     , 322.19,
          0.     , 613.97, 247.42,
          0.     , 0.     , 1.     ]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.1017, -0.2293, 0.0012, -0.0007, 0.0000]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1., 0., 0., 0., 1., 0., 0., 0., 1.]
projection_matrix:
  rows: 3
  cols: 4
  data: [622.1, 0., 321.6, 0., 0., 623.3, 247.8, 0., 0., 0., 1., 0.]
"""


def test_calibration_yaml_is_read_value_by_value(tmp_path):
    path = tmp_path / 'ost.yaml'
    path.write_text(OST)
    for url in (str(path), f'file://{path}'):
        cal = read_calibration(url)
        assert (cal.width, cal.height, cal.camera_name) == (640, 480, 'narrow_stereo')
        assert cal.distortion_model == 'plumb_bob'
        assert cal.k == (614.27, 0.0, 322.19, 0.0, 613.97, 247.42, 0.0, 0.0, 1.0)
        assert cal.d == (0.1017, -0.2293, 0.0012, -0.0007, 0.0)
        assert cal.p[0] == 622.1 and cal.p[6] == 247.8 and len(cal.p) == 12
        assert cal.source == str(path)
    msg = cal.camera_info(BACKEND.header(T0, 'cam'), BACKEND)
    assert (msg.width, msg.height, msg.header.frame_id) == (640, 480, 'cam')
    np.testing.assert_array_equal(msg.k, np.array(cal.k))
    np.testing.assert_array_equal(msg.d, np.array(cal.d))


def test_calibration_without_projection_uses_k():
    text = OST.split('rectification_matrix')[0]
    cal = parse_calibration(text)
    np.testing.assert_array_equal(np.reshape(cal.p, (3, 4))[:, :3], np.reshape(cal.k, (3, 3)))
    assert cal.r == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize('text, expect', [
    ('image_width: 640\n', 'no camera_matrix'),
    (OST.replace('image_width: 640', 'image_width: -1'), 'image_width must be a positive'),
    (OST.replace('rows: 3\n  cols: 3\n  data: [ 614.27', 'rows: 2\n  cols: 3\n  data: [ 614.27'),
     'camera_matrix must be 3x3'),
    (OST.replace('614.27', '0.0', 1), 'no positive focal lengths'),
    ('camera_matrix: [unclosed', 'not valid YAML'),
])
def test_bad_calibration_files_say_what_is_wrong(text, expect):
    with pytest.raises(CalibrationError, match=expect):
        parse_calibration(text, 'cal.yaml')


def test_calibration_urls(tmp_path):
    assert resolve_calibration_url('file:///a/b%20c.yaml').as_posix() == '/a/b c.yaml'
    with pytest.raises(CalibrationError, match='only file://'):
        resolve_calibration_url('http://example.com/cal.yaml')
    with pytest.raises(CalibrationError, match='cannot read calibration file'):
        read_calibration(str(tmp_path / 'missing.yaml'))
