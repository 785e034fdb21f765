"""fiffdepth-align: the command-line alignment tool."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiffdepth_ros.cli.align import main

REPO = Path(__file__).resolve().parents[1]
H, W = 90, 120


def _scene(tmp_path, n=300, mm_png=False, seed=0):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = (2.0 + 0.03 * xx + 0.01 * yy).astype(np.float32)
    relative = ((truth - 1.0) / 6.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    idx = rng.choice(H * W, n, replace=False)
    sparse = np.zeros((H, W), np.float32)
    sparse.flat[idx] = truth.flat[idx]
    sparse.flat[idx[:5]] = np.nan                     # NaN also means "no anchor"
    np.save(tmp_path / 'rel.npy', relative)
    if mm_png:
        anchors = tmp_path / 'anchors.png'
        cv2.imwrite(str(anchors), np.nan_to_num(sparse * 1000).round().astype(np.uint16))
    else:
        anchors = tmp_path / 'anchors.npy'
        np.save(anchors, sparse)
    return truth, tmp_path / 'rel.npy', anchors, tmp_path / 'out.npy'


@pytest.mark.parametrize('mm_png', [False, True])
def test_aligns_npy_and_png_anchors(tmp_path, capsys, mm_png):
    truth, rel, anchors, out = _scene(tmp_path, mm_png=mm_png)
    assert main([str(rel), str(anchors), str(out)]) == 0
    depth = np.load(out)
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert np.nanmax(np.abs(depth - truth) / truth) < 0.01
    text = capsys.readouterr().out
    assert 'status: fitted' in text and 'metric: True' in text
    # 295 anchors on a 90x120 image: thinned evenly to the correction's 4 per 16x16 cell.
    assert 'anchors_offered: 295' in text and 'anchors_used: 192' in text


def test_options_space_no_local_and_max_depth(tmp_path, capsys):
    truth, rel, anchors, out = _scene(tmp_path)
    assert main([str(rel), str(anchors), str(out), '--no-local', '--max-depth', '4']) == 0
    depth = np.load(out)
    assert np.isnan(depth[truth > 4.05]).all() and np.isfinite(depth[truth < 3.95]).all()
    assert 'local_inliers: 0' in capsys.readouterr().out
    inverse = tmp_path / 'inv.npy'
    np.save(inverse, (1.0 / truth).astype(np.float32))
    assert main([str(inverse), str(anchors), str(out), '--space', 'inverse']) == 0
    assert np.nanmax(np.abs(np.load(out) - truth) / truth) < 0.01
    assert 'space: inverse' in capsys.readouterr().out


def test_errors_are_clear_and_exit_non_zero(tmp_path, capsys):
    truth, rel, anchors, out = _scene(tmp_path)
    assert main([str(tmp_path / 'missing.npy'), str(anchors), str(out)]) == 2
    assert 'not found' in capsys.readouterr().err
    np.save(tmp_path / 'small.npy', np.zeros((10, 10), np.float32))
    assert main([str(rel), str(tmp_path / 'small.npy'), str(out)]) == 2
    assert 'same size' in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / 'eight.png'), np.zeros((H, W), np.uint8))
    assert main([str(rel), str(tmp_path / 'eight.png'), str(out)]) == 2
    assert '16-bit' in capsys.readouterr().err
    (tmp_path / 'anchors.txt').write_text('1 2 3')
    assert main([str(rel), str(tmp_path / 'anchors.txt'), str(out)]) == 2
    assert main([str(rel), str(anchors), str(tmp_path / 'no' / 'dir' / 'out.npy')]) == 2
    assert main([str(rel), str(anchors), str(out), '--max-depth', '0.05']) == 2
    assert 'max_depth' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:                       # argparse: bad choice
        main([str(rel), str(anchors), str(out), '--space', 'log'])
    assert exc.value.code == 2


def test_an_empty_or_all_invalid_anchor_set_is_a_clear_error(tmp_path, capsys):
    truth, rel, _, out = _scene(tmp_path)
    for name, values in (('empty', np.zeros((H, W), np.float32)),
                         ('invalid', np.full((H, W), np.nan, np.float32))):
        path = tmp_path / f'{name}.npy'
        np.save(path, values)
        assert main([str(rel), str(path), str(out)]) == 2
        assert 'no valid anchor' in capsys.readouterr().err
        assert not out.exists()


def test_anchors_that_fit_nothing_write_the_fixed_mapping_and_exit_1(tmp_path, capsys):
    """Anchors exist but every one is beyond --max-depth: no usable fit, not metric."""
    truth, rel, anchors, out = _scene(tmp_path)
    assert main([str(rel), str(anchors), str(out), '--max-depth', '1.0']) == 1
    assert out.exists() and 'not metric' in capsys.readouterr().err


def _walls_image(tmp_path):
    """A colour image with two walls meeting at column 60; the scene's truth gets the step
    (the flat prediction has none)."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :60] = (40, 180, 220)                             # BGR on disk
    rgb[:, 60:] = (200, 60, 40)
    path = tmp_path / 'rgb.png'
    cv2.imwrite(str(path), rgb)
    return path


def _run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
               FIFFDEPTH_CACHE=str(tmp_path / 'cache'))
    (tmp_path / 'cache').mkdir(exist_ok=True)
    return subprocess.run([sys.executable, '-m', 'fiffdepth_ros.cli.align', *map(str, args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_image_guides_the_local_correction(tmp_path):
    """--image: the colour image's edge keeps each wall's anchors on its side, which the flat
    prediction cannot; without --image the output is today's."""
    truth = np.where(np.arange(W)[None] < 60, 2.0, 3.0).astype(np.float32) * np.ones((H, 1),
                                                                                     np.float32)
    rng = np.random.default_rng(0)
    idx = rng.choice(H * W, 80, replace=False)
    sparse = np.zeros((H, W), np.float32)
    sparse.flat[idx] = truth.flat[idx]
    np.save(tmp_path / 'anchors.npy', sparse)
    rel = np.full((H, W), 0.5, np.float32)
    rel += np.linspace(0, 0.01, W, dtype=np.float32)[None]   # a depth range for the fit
    np.save(tmp_path / 'rel.npy', rel)
    image = _walls_image(tmp_path)
    plain = _run(tmp_path, 'rel.npy', 'anchors.npy', 'plain.npy')
    guided = _run(tmp_path, 'rel.npy', 'anchors.npy', 'guided.npy', '--image', image,
                  '--local-guide', 'image')
    assert plain.returncode in (0, 1) and guided.returncode == plain.returncode, guided.stderr
    err = {n: float(np.nanmean(np.abs(np.load(tmp_path / f'{n}.npy') - truth) / truth))
           for n in ('plain', 'guided')}
    assert err['guided'] < 0.6 * err['plain']
    again = _run(tmp_path, 'rel.npy', 'anchors.npy', 'again.npy', '--image', image,
                 '--local-guide', 'image')
    np.testing.assert_array_equal(np.load(tmp_path / 'again.npy'),
                                  np.load(tmp_path / 'guided.npy'))


def test_a_wrong_image_is_a_clear_error(tmp_path):
    truth, rel, anchors, out = _scene(tmp_path)
    cv2.imwrite(str(tmp_path / 'grey.png'), np.zeros((H, W), np.uint8))
    cv2.imwrite(str(tmp_path / 'deep.png'), np.zeros((H, W, 3), np.uint16))
    cv2.imwrite(str(tmp_path / 'small.png'), np.zeros((H // 2, W, 3), np.uint8))
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    cases = {'grey.png': 'grey', 'deep.png': '8-bit', 'small.png': 'same size',
             'junk.png': 'cannot decode', 'missing.png': 'not found'}
    for name, message in cases.items():
        result = _run(tmp_path, rel, anchors, out, '--image', tmp_path / name,
                      '--local-guide', 'both')
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert not out.exists()
    result = _run(tmp_path, rel, anchors, out, '--local-guide', 'image')
    assert result.returncode == 2 and 'needs --image' in result.stderr


def test_runs_as_a_module(tmp_path):
    truth, rel, anchors, out = _scene(tmp_path, mm_png=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    result = subprocess.run([sys.executable, '-m', 'fiffdepth_ros.cli.align', str(rel),
                             str(anchors), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'status: fitted' in result.stdout
    assert np.nanmax(np.abs(np.load(out) - truth) / truth) < 0.01
