"""Training data in each supported on-disk layout, the clear errors, and the batch plan."""
import numpy as np
import pytest
import torch

from test_train_support import (scene, write_hypersim, write_real_folder, write_real_shards,
                                write_rgbd_folder, write_vkitti)
from fiffdepth_ros.training.data.common import DataError
from fiffdepth_ros.training.data.factory import build_real, build_synthetic, build_training_data
from fiffdepth_ros.training.data.mixing import BatchPlan, PlannedSamples, collate


@pytest.mark.parametrize('as_tar', [False, True])
def test_hypersim_layout_folder_and_tar(tmp_path, as_tar):
    root = write_hypersim(tmp_path / ('hs.tar' if as_tar else 'hs'), tmp_path / 'split.txt',
                          n=2, hw=(48, 64), as_tar=as_tar)
    ds = build_synthetic({'kind': 'hypersim', 'dir': root.name, 'filenames': 'split.txt',
                          'resize_to_hw': [24, 32]}, tmp_path, tmp_path)
    ds.check_files()
    assert len(ds) == 2
    s = ds.load(1)
    assert s['rgb'].shape == (3, 24, 32) and s['depth'].shape == (1, 24, 32)
    assert -1.0 <= float(s['rgb'].min()) and float(s['rgb'].max()) <= 1.0
    full = build_synthetic({'kind': 'hypersim', 'dir': root.name, 'filenames': 'split.txt'},
                           tmp_path, tmp_path).load(1)
    _, depth = scene(48, 64, 1)
    valid = full['valid'][0].numpy()
    assert not valid[0, :4].any() and valid[1:].all()          # 0 mm -> invalid
    np.testing.assert_allclose(full['depth'][0].numpy()[valid], depth[valid], atol=6e-4)
    flipped = ds.load(1, flip=True)
    assert torch.equal(flipped['depth'], s['depth'].flip(-1))


def test_vkitti_layout_crop_units_and_none(tmp_path):
    root = write_vkitti(tmp_path / 'vkitti', tmp_path / 'vk.txt', n=2)
    ds = build_synthetic({'kind': 'vkitti', 'dir': 'vkitti', 'filenames': 'vk.txt',
                          'kitti_bm_crop': True}, tmp_path, tmp_path)
    assert len(ds) == 2                                  # the 'None' depth line is skipped
    s = ds.load(0)
    assert s['depth'].shape == (1, 352, 1216)
    _, depth = scene(375, 1242, 10)
    ref = depth[375 - 352:, (1242 - 1216) // 2:(1242 - 1216) // 2 + 1216]   # centimetres
    np.testing.assert_allclose(s['depth'][0].numpy(), ref, atol=6e-3)
    assert root.is_dir()


def test_rgbd_folder_png_and_npy(tmp_path):
    write_rgbd_folder(tmp_path / 'robot', n=2, hw=(32, 48))
    ds = build_synthetic({'kind': 'rgbd_folder', 'dir': 'robot', 'filenames': 'robot/list.txt',
                          'depth_scale': 0.001}, tmp_path, tmp_path)
    for i in range(2):
        _, depth = scene(32, 48, 20 + i)
        np.testing.assert_allclose(ds.load(i)['depth'][0].numpy(), depth, atol=6e-4)


def test_clear_errors_before_training(tmp_path):
    write_hypersim(tmp_path / 'hs', tmp_path / 'split.txt', n=2)
    with open(tmp_path / 'split.txt', 'a') as f:
        f.write('ai_009_009/rgb_cam_00_fr0000.png ai_009_009/depth_plane_cam_00_fr0000.png\n')
    ds = build_synthetic({'kind': 'hypersim', 'dir': 'hs', 'filenames': 'split.txt'},
                         tmp_path, tmp_path)
    with pytest.raises(DataError, match='names 2 file.*ai_009_009'):
        ds.check_files()
    with pytest.raises(DataError, match='does not exist'):
        build_synthetic({'kind': 'hypersim', 'dir': 'nowhere', 'filenames': 'split.txt'},
                        tmp_path, tmp_path)
    with pytest.raises(DataError, match='cannot read split file'):
        build_synthetic({'kind': 'hypersim', 'dir': 'hs', 'filenames': 'nosplit.txt'},
                        tmp_path, tmp_path)
    with pytest.raises(DataError, match='kind must be one of'):
        build_synthetic({'kind': 'nyu', 'dir': 'hs', 'filenames': 'split.txt'}, tmp_path, tmp_path)


def test_real_images_folder_and_shards_ids(tmp_path):
    from fiffdepth_ros.training.data.real_images import RealImages
    write_real_folder(tmp_path / 'folder', n=3)
    write_real_shards(tmp_path / 'shards', n_shards=2, per_shard=2)
    folder = RealImages(str(tmp_path / 'folder'))
    assert folder.ids == ['sub/img0', 'sub/img1', 'sub/img2']
    for spec in (str(tmp_path / 'shards'), str(tmp_path / 'shards' / '{00000..00001}.tar'),
                 str(tmp_path / 'shards' / '*.tar')):
        shards = RealImages(spec)
        assert shards.ids == ['00000/000000000', '00000/000000001', '00001/000010002',
                              '00001/000010003']
    rgb, _ = scene(40, 56, 42)
    assert np.abs(shards.read(2).astype(int) - rgb).mean() < 3       # jpeg
    with pytest.raises(DataError, match='do not exist'):
        RealImages(str(tmp_path / 'does_not_exist'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no real images'):
        RealImages(str(tmp_path / 'empty'))


def test_pseudo_label_cache_must_cover_the_images(tmp_path):
    write_real_folder(tmp_path / 'real', n=2)
    (tmp_path / 'labels').mkdir()
    spec = {'images': 'real', 'pseudo_labels': 'labels', 'resize_to_hw': [16, 24]}
    with pytest.raises(DataError, match='not a pseudo-label cache'):
        build_real(spec, tmp_path).check_files()
    from fiffdepth_ros.training.data.real_images import CACHE_FORMAT
    (tmp_path / 'labels' / 'manifest.json').write_text('{"format": "%s"}' % CACHE_FORMAT)
    (tmp_path / 'labels' / 'labels' / 'sub').mkdir(parents=True)
    np.save(tmp_path / 'labels' / 'labels' / 'sub' / 'img0.npy',
            np.linspace(0, 1, 28 * 42, dtype=np.float16).reshape(28, 42))
    with pytest.raises(DataError, match='lacks 1 of 2 real images.*sub/img1'):
        build_real(spec, tmp_path).check_files()
    np.save(tmp_path / 'labels' / 'labels' / 'sub' / 'img1.npy', np.ones((28, 42), np.float16))
    real = build_real(spec, tmp_path)
    real.check_files()
    s = real.load(0, flip=False, crop_u=0.0, crop_v=0.0)
    assert s['rgb'].shape == (3, 16, 24) and s['label'].shape == (1, 16, 24)
    # the label is resized with the image: left-to-right increasing values stay so
    assert float(s['label'][0, 8, -1]) > float(s['label'][0, 8, 0])


def _plan(world=1, rank=0, seed=5):
    # 2 synthetic + 2 real per micro-step in all, split over ``world`` processes
    return BatchPlan([7, 5], [0.5, 0.5], 9, batch_synthetic=2 // world, batch_real=2 // world,
                     seed=seed, world_size=world, rank=rank)


def test_plan_is_a_pure_function_of_the_step_and_splits_across_ranks():
    one = _plan()
    assert one.micro_batch(17) == _plan().micro_batch(17)         # no hidden state
    assert one.micro_batch(17) != one.micro_batch(18)
    halves = _plan(2, 0).micro_batch(17) + _plan(2, 1).micro_batch(17)
    key = lambda d: (d[0], d[-1])                                  # noqa: E731
    assert sorted(map(key, halves)) == sorted(map(key, one.micro_batch(17)))
    # within an epoch each real image appears once (a permutation per epoch)
    seen = [d[1] for u in range(5) for d in one.micro_batch(u) if d[0] == 'real'][:9]
    assert sorted(seen) == list(range(9))


def test_planned_samples_collate(tmp_path):
    write_hypersim(tmp_path / 'hs', tmp_path / 'split.txt', n=3, hw=(16, 24))
    data = {'root': str(tmp_path), 'split_root': str(tmp_path), 'real': None,
            'synthetic': [{'kind': 'hypersim', 'dir': 'hs', 'filenames': 'split.txt'}]}
    synthetic, probs, real = build_training_data(data, need_real=False)
    assert probs == [1.0] and real is None
    plan = BatchPlan([3], probs, 0, 2, 0, seed=1)
    batch = collate([PlannedSamples(synthetic, None)[d] for d in plan.micro_batch(0)])
    assert set(batch) == {'syn'} and batch['syn']['rgb'].shape == (2, 3, 16, 24)
    assert batch['syn']['valid'].dtype == torch.bool and batch['syn']['seed'].shape == (2,)


def test_zoom_draws_from_the_sample_seed_and_crops_the_window(tmp_path):
    """data.zoom [p, max]: per sample (its seed), with probability p a window 1/z of the frame
    (z log-uniform in [1, max]) is cropped and resized back; the same seed, the same crop."""
    from fiffdepth_ros.training.data.common import resize_sample, zoom_crop
    from fiffdepth_ros.training.data.mixing import zoom_draw
    draws = [zoom_draw(seed, [0.5, 2.0]) for seed in range(400)]
    zoomed = [d for d in draws if d is not None]
    assert 150 < len(zoomed) < 250                           # about half
    assert all(1.0 <= z <= 2.0 and 0 <= u <= 1 and 0 <= v <= 1 for z, u, v in zoomed)
    assert min(z for z, _, _ in zoomed) < 1.1 and max(z for z, _, _ in zoomed) > 1.9
    assert zoom_draw(7, [0.5, 2.0]) == zoom_draw(7, [0.5, 2.0])
    assert zoom_draw(7, None) is None and zoom_draw(7, [1.0, 1.0]) is None
    write_rgbd_folder(tmp_path / 'f', n=1, hw=(32, 48))
    data = {'root': str(tmp_path), 'split_root': str(tmp_path), 'real': None,
            'synthetic': [{'kind': 'rgbd_folder', 'dir': 'f', 'filenames': 'f/list.txt'}]}
    (dataset,), _, _ = build_training_data(data, need_real=False)
    plain = dataset.load(0)
    sample = dataset.load(0, zoom=(2.0, 1.0, 0.0))           # top-right quarter, 2x larger
    assert sample['rgb'].shape == plain['rgb'].shape == (3, 32, 48)
    rgb = ((plain['rgb'].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    depth = plain['depth'][0].numpy()
    assert zoom_crop(rgb, depth, (2.0, 1.0, 0.0))[0].shape == (16, 24, 3)
    ref_rgb, ref_depth = resize_sample(rgb[:16, 24:], depth[:16, 24:], (32, 48))
    np.testing.assert_allclose(sample['depth'][0].numpy(), ref_depth)
    assert np.abs(((sample['rgb'].permute(1, 2, 0).numpy() + 1) * 127.5)
                  - ref_rgb).max() <= 1.0
    # PlannedSamples applies it from the seed in the descriptor
    seed = next(s for s in range(100) if zoom_draw(s, [1.0, 2.0])[0] > 1.5)
    a = PlannedSamples([dataset], None, zoom=[1.0, 2.0])[('syn', 0, 0, False, seed)]
    b = dataset.load(0, zoom=zoom_draw(seed, [1.0, 2.0]))
    assert torch.equal(a['rgb'], b['rgb']) and not torch.equal(a['rgb'], plain['rgb'])


def test_a_zoom_window_without_valid_depth_keeps_the_whole_frame(tmp_path):
    """A zoom crop of sky (no valid depth: no target) falls back to the uncropped frame; it once
    stopped a nano training with 'a depth map has no valid pixel'."""
    import cv2
    root = tmp_path / 'f'
    (root / 'rgb').mkdir(parents=True)
    (root / 'depth').mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    mm = np.full((32, 48), 3000, np.uint16)
    mm[:16] = 0                                                # the top half: sky
    cv2.imwrite(str(root / 'rgb' / '0.png'), rgb)
    cv2.imwrite(str(root / 'depth' / '0.png'), mm)
    (root / 'list.txt').write_text('rgb/0.png depth/0.png\n')
    data = {'root': str(tmp_path), 'split_root': str(tmp_path), 'real': None,
            'synthetic': [{'kind': 'rgbd_folder', 'dir': 'f', 'filenames': 'f/list.txt'}]}
    (dataset,), _, _ = build_training_data(data, need_real=False)
    whole = dataset.load(0)
    sky = dataset.load(0, zoom=(2.0, 1.0, 0.0))               # top-right quarter: all sky
    assert torch.equal(sky['rgb'], whole['rgb']) and bool(sky['valid'].any())
    ground = dataset.load(0, zoom=(2.0, 1.0, 1.0))            # bottom-right quarter: valid
    assert not torch.equal(ground['rgb'], whole['rgb']) and bool(ground['valid'].all())
