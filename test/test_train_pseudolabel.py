"""fiffdepth-pseudolabel with a tiny random Depth Anything: batched, fp16, resumable, and equal
to the teacher run by hand on the same resized, normalised image."""
import json

import cv2
import numpy as np
import torch

from test_train_support import tiny_depth_anything, write_real_shards
from fiffdepth_ros.cli.pseudolabel import main
from fiffdepth_ros.training.pseudolabel import teacher_size


def test_teacher_size_keeps_aspect_in_multiples_of_14():
    assert teacher_size(480, 640, 518) == (518, 686)
    assert teacher_size(40, 56, 28) == (28, 38 + 4)
    for h, w in [(333, 517), (100, 1000), (1000, 100)]:
        th, tw = teacher_size(h, w, 518)
        assert th % 14 == 0 and tw % 14 == 0 and min(th, tw) >= 518
        assert abs(th / tw - h / w) < 0.05 * h / w


def test_pseudolabel_shards_batched_resumable_and_exact(tmp_path, capsys):
    torch.set_num_threads(1)
    teacher = tiny_depth_anything(tmp_path / 'teacher')
    write_real_shards(tmp_path / 'shards', n_shards=2, per_shard=3, hw=(40, 56))
    out = tmp_path / 'labels'
    args = ['--teacher', str(teacher), '--images', str(tmp_path / 'shards' / '{00000..00001}.tar'),
            '--out', str(out), '--input-size', '28', '--batch-size', '4', '--workers', '0',
            '--no-progress']
    assert main(args) == 0
    assert '6 labelled, 0 already done, 6 images' in capsys.readouterr().out
    files = sorted(p.relative_to(out / 'labels').as_posix()
                   for p in (out / 'labels').rglob('*.npy'))
    assert files == ['00000/000000000.npy', '00000/000000001.npy', '00000/000000002.npy',
                     '00001/000010003.npy', '00001/000010004.npy', '00001/000010005.npy']
    label = np.load(out / 'labels' / '00001' / '000010004.npy')
    assert label.dtype == np.float16 and label.shape == teacher_size(40, 56, 28)
    # by hand: decode, resize (bicubic), ImageNet normalisation, the model, fp16
    import tarfile
    from transformers import DepthAnythingForDepthEstimation
    with tarfile.open(tmp_path / 'shards' / '00001.tar') as tar:
        data = tar.extractfile('000010004.jpg').read()
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    h, w = teacher_size(40, 56, 28)
    x = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    model = DepthAnythingForDepthEstimation.from_pretrained(teacher).eval()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x).permute(2, 0, 1)[None].float()
                    ).predicted_depth[0].numpy()
    ref = ref / np.abs(ref).max()                 # stored scaled to a peak of 1
    assert np.abs(ref).max() == 1.0 and (ref > 0.1).mean() > 0.05
    np.testing.assert_allclose(label.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    # resumable: a second run labels nothing; a deleted file is redone
    (out / 'labels' / '00000' / '000000001.npy').unlink()
    assert main(args) == 0
    assert '1 labelled, 5 already done' in capsys.readouterr().out
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['teacher'] == str(teacher)
    # another teacher into the same cache is refused
    assert main(args[:1] + [str(tmp_path / 'other')] + args[2:]) == 2
    assert 'refusing to mix' in capsys.readouterr().err


def test_pseudolabel_clear_errors(tmp_path, capsys):
    assert main(['--teacher', str(tmp_path / 'none'), '--images', str(tmp_path / 'missing'),
                 '--out', str(tmp_path / 'o')]) == 2
    assert 'do not exist' in capsys.readouterr().err
    write_real_shards(tmp_path / 'shards', n_shards=1, per_shard=1)
    assert main(['--teacher', str(tmp_path / 'none'), '--images', str(tmp_path / 'shards'),
                 '--out', str(tmp_path / 'o'), '--workers', '0', '--no-progress']) == 2
    assert 'cannot load the teacher' in capsys.readouterr().err


def test_stored_labels_keep_small_variations_on_a_large_offset():
    """A teacher whose output is a large offset plus small variations (as a collapsed SSI-trained
    teacher gives) must not be stored as a constant: fp16 near 1 has a step of 4.9e-4."""
    from fiffdepth_ros.training.pseudolabel import to_stored
    rng = np.random.default_rng(0)
    variation = rng.standard_normal((32, 48)).astype(np.float32) * 1e-4
    stored = to_stored(1.015 + variation)
    recovered = stored.astype(np.float64) - stored.astype(np.float64).mean()
    expected = (variation - variation.mean()) / np.abs(1.015 + variation).max()
    assert np.corrcoef(recovered.ravel(), expected.ravel())[0, 1] > 0.999
    # An ordinary prediction (variation comparable to its peak) stays fp16 and faithful.
    ordinary = rng.uniform(0.1, 5.0, (32, 48)).astype(np.float32)
    stored = to_stored(ordinary)
    assert stored.dtype == np.float16
    assert np.allclose(stored.astype(np.float32), ordinary / ordinary.max(), atol=1e-3)
