"""fiffdepth-predict writes .npy, 16-bit PNG and colourised PNG per image."""
import subprocess
import sys

import cv2
import numpy as np

from fiffdepth_ros.cli.predict import main


def test_writes_three_files_per_image_and_skips_unreadable(tmp_path, tiny_checkpoint, capsys):
    images = tmp_path / 'in'
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / 'a.png'), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    cv2.imwrite(str(images / 'b.jpg'), rng.integers(0, 256, (25, 33, 3), dtype=np.uint8))
    (images / 'broken.png').write_bytes(b'not an image')
    out = tmp_path / 'out'
    code = main(['--model', str(tiny_checkpoint), '--input', str(images), '--output', str(out),
                 '--processing-res', '32', '--device', 'cpu', '--fp32', '--batch-size', '2'])
    assert code == 0
    for stem, shape in (('a', (30, 40)), ('b', (25, 33))):
        depth = np.load(out / f'{stem}.npy')
        assert depth.dtype == np.float32 and depth.shape == shape
        png16 = cv2.imread(str(out / f'{stem}_depth16.png'), cv2.IMREAD_UNCHANGED)
        assert png16.dtype == np.uint16 and png16.shape == shape
        np.testing.assert_allclose(png16 / 65535.0, depth, atol=1 / 65535)
        color = cv2.imread(str(out / f'{stem}_color.png'))
        assert color.shape == shape + (3,)
    assert not (out / 'broken.npy').exists()
    captured = capsys.readouterr()
    assert '1 unreadable image(s) skipped' in captured.out
    assert 'warning: skipped' in captured.err and 'broken.png' in captured.err


def test_errors_exit_nonzero(tmp_path, tiny_checkpoint):
    assert main(['--model', str(tiny_checkpoint), '--input', str(tmp_path / 'none'),
                 '--output', str(tmp_path / 'o')]) == 2
    image = tmp_path / 'x.png'
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    assert main(['--model', str(tmp_path / 'no_model'), '--input', str(image),
                 '--output', str(tmp_path / 'o')]) == 1


def test_runs_as_a_module(tmp_path, tiny_checkpoint):
    image = tmp_path / 'x.png'
    cv2.imwrite(str(image), np.full((16, 16, 3), 80, np.uint8))
    result = subprocess.run([sys.executable, '-m', 'fiffdepth_ros.cli.predict', '--model',
                             str(tiny_checkpoint), '--input', str(image), '--output',
                             str(tmp_path / 'o'), '--processing-res', '16'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'o' / 'x.npy').is_file()


def test_inputs_sharing_a_name_do_not_overwrite_each_other(tmp_path, tiny_checkpoint):
    images = tmp_path / 'in'
    images.mkdir()
    cv2.imwrite(str(images / 'a.png'), np.full((12, 20, 3), 30, np.uint8))
    cv2.imwrite(str(images / 'a.jpg'), np.full((14, 10, 3), 220, np.uint8))
    cv2.imwrite(str(images / 'b.png'), np.full((8, 8, 3), 120, np.uint8))
    out = tmp_path / 'out'
    assert main(['--model', str(tiny_checkpoint), '--input', str(images), '--output', str(out),
                 '--processing-res', '16', '--device', 'cpu']) == 0
    assert np.load(out / 'a_png.npy').shape == (12, 20)
    assert np.load(out / 'a_jpg.npy').shape == (14, 10)
    assert np.load(out / 'b.npy').shape == (8, 8)         # unique names keep the plain stem
    assert not (out / 'a.npy').exists()
