"""Builders shared by the training tests (no tests here): a tiny SD2-layout checkpoint with a
v-prediction scheduler, tiny datasets in each supported on-disk layout, a tiny Depth Anything."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np


def tiny_sd2_checkpoint(path, seed=0) -> Path:
    """The tiny random checkpoint of fiffdepth_ros.model.tiny plus scheduler/ (SD2's DDPM
    settings, v-prediction): an SD2-layout starting point for training."""
    from diffusers import DDPMScheduler
    from fiffdepth_ros.model.tiny import build_tiny_checkpoint
    path = build_tiny_checkpoint(Path(path), seed=seed)
    if not (path / 'scheduler' / 'scheduler_config.json').is_file():
        DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule='scaled_linear', prediction_type='v_prediction',
                      clip_sample=False).save_pretrained(path / 'scheduler')
    return path


def scene(h, w, seed):
    """A learnable toy scene: a tilted plane with a nearer box; the colour encodes depth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = 2.0 + 3.0 * (yy / h) * rng.uniform(0.5, 1.5) + (xx / w) * rng.uniform(-1, 1)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    depth[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(1.0, 1.8)
    unit = (depth - depth.min()) / (depth.max() - depth.min())
    rgb = np.stack([unit, 1 - unit, 0.5 + 0.5 * np.sin(6 * unit)], -1)
    return (rgb * 255).astype(np.uint8), depth.astype(np.float32)


def _png(array) -> bytes:
    ok, data = cv2.imencode('.png', array)
    assert ok
    return data.tobytes()


def _jpg(rgb) -> bytes:
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    return data.tobytes()


def _write(files: dict, root: Path, as_tar: bool) -> Path:
    if as_tar:
        root.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root, 'w') as tar:
            for rel, data in files.items():
                info = tarfile.TarInfo('./' + rel)       # Marigold's tars use './' names
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return root
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def write_hypersim(root: Path, split: Path, n=4, hw=(48, 64), as_tar=False, seed=0):
    files, lines = {}, []
    for i in range(n):
        rgb, depth = scene(*hw, seed + i)
        depth[0, :4] = 0                                    # a few invalid pixels
        r = f'ai_001_00{i // 2 + 1}/rgb_cam_00_fr{i:04d}.png'
        d = f'ai_001_00{i // 2 + 1}/depth_plane_cam_00_fr{i:04d}.png'
        files[r] = _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        files[d] = _png(np.round(depth * 1000).astype(np.uint16))
        lines.append(f'{r} {d}')
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text('\n'.join(lines) + '\n')
    return _write(files, root, as_tar)


def write_vkitti(root: Path, split: Path, n=2, hw=(375, 1242), as_tar=False, seed=10):
    files, lines = {}, []
    for i in range(n):
        rgb, depth = scene(*hw, seed + i)
        r = f'rgb/Scene01/clone/frames/rgb/Camera_0/rgb_{i:05d}.jpg'
        d = f'depth/Scene01/clone/frames/depth/Camera_0/depth_{i:05d}.png'
        files[r] = _jpg(rgb)
        files[d] = _png(np.round(depth * 100).astype(np.uint16))
        lines.append(f'{r} {d}')
    lines.append('rgb/Scene01/clone/frames/rgb/Camera_0/rgb_99999.jpg None')
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text('\n'.join(lines) + '\n')
    return _write(files, root, as_tar)


def write_rgbd_folder(root: Path, n=2, hw=(32, 48), seed=20):
    lines = []
    for i in range(n):
        rgb, depth = scene(*hw, seed + i)
        (root / 'rgb').mkdir(parents=True, exist_ok=True)
        (root / 'depth').mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / 'rgb' / f'{i}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if i % 2:
            np.save(root / 'depth' / f'{i}.npy', depth)
            lines.append(f'rgb/{i}.png depth/{i}.npy')
        else:
            cv2.imwrite(str(root / 'depth' / f'{i}.png'), np.round(depth * 1000).astype(np.uint16))
            lines.append(f'rgb/{i}.png depth/{i}.png')
    (root / 'list.txt').write_text('\n'.join(lines) + '\n')
    return root


def write_real_folder(root: Path, n=3, hw=(40, 56), seed=30):
    for i in range(n):
        rgb, _ = scene(*hw, seed + i)
        (root / 'sub').mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / 'sub' / f'img{i}.jpg'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def write_real_shards(root: Path, n_shards=2, per_shard=2, hw=(40, 56), seed=40):
    """img2dataset-style webdataset shards written with webdataset's own TarWriter."""
    import webdataset as wds
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(root / f'{s:05d}.tar')) as sink:
            for _ in range(per_shard):
                rgb, _ = scene(*hw, seed + k)
                sink.write({'__key__': f'{s:05d}{k:04d}', 'jpg': _jpg(rgb),
                            'txt': b'a caption', 'json': b'{}'})
                k += 1
    return root


def tiny_depth_anything(path: Path, seed=0) -> Path:
    """A randomly initialised Depth Anything (tiny DINOv2 backbone) from configs, no download."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    if (path / 'config.json').is_file():
        return path
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, patch_size=14, image_size=56,
                            out_features=['stage1', 'stage2', 'stage3', 'stage4'],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8,
                                 reassemble_hidden_size=32, patch_size=14)
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).save_pretrained(path)
    return path
