"""The FiffDepth-nano recipe end to end on tiny frames, with the recipe's own configs
(config/nano/): procedural frames -> tiny teacher -> pseudo-labels -> autoencoder -> generator
-> fiffdepth -> the export predicts in DepthEstimator. Few steps, tiny widths, one thread."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NANO = ROOT / 'config' / 'nano'
HW = [64, 64]                      # latents 8x8: three UNet levels still divide
# Narrower than the shipped nano widths, same block types (the test is about the wiring).
SMALL_ARCH = ['model.architecture={vae: {block_out_channels: [8, 8, 16, 16]}, '
              'unet: {block_out_channels: [16, 16, 32], attention_head_dim: [2, 2, 4], '
              'cross_attention_dim: 16}, text_encoder: {num_attention_heads: 2, '
              'intermediate_size: 32}}']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """OUT/data as scripts/train_nano.sh lays it out, at 64x64 and a handful of frames."""
    from fiffdepth_ros.cli.pseudolabel import main as pseudolabel
    from fiffdepth_ros.training import teacher
    from fiffdepth_ros.training.data import procedural as proc
    root = tmp_path_factory.mktemp('nano') / 'data'
    proc.write_frames(root / 'synthetic', proc.training_seeds(0, 6), 'synthetic', 64, 64)
    proc.write_frames(root / 'real', proc.training_seeds(0, 4), 'real', 64, 64,
                      depth_format='none')                  # no ground truth on disk at all
    proc.write_frames(root / 'val', proc.held_out_seeds(2), 'synthetic', 64, 64)
    teacher.train_teacher(root.parent / 'teacher', steps=2, batch_size=2, input_size=28,
                          preset='test', pool=4, warmup=1, val_frames=0, render_hw=(48, 64),
                          progress=False)
    assert pseudolabel(['--teacher', str(root.parent / 'teacher'), '--images',
                        str(root / 'real' / 'rgb'), '--out', str(root / 'labels'),
                        '--input-size', '28', '--workers', '0', '--no-progress']) == 0
    return root


def _run(stage, data, out, *overrides, steps=12):
    """Trainer for config/nano/<stage>.yaml with the test's paths and sizes."""
    from accelerate.state import AcceleratorState, GradientState
    from fiffdepth_ros.training.config import load_config
    from fiffdepth_ros.training.loop import Trainer
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    size = f'[{HW[0]}, {HW[1]}]'
    cfg = load_config(NANO / f'{stage}.yaml', [
        f'data.root={data}', f'data.split_root={data}', f'output_dir={out}',
        f'train.max_steps={steps}', 'train.log_every=4', 'train.checkpoint_every=1000',
        'train.batch_size_synthetic=2', 'train.batch_size_real=2', 'data.num_workers=0',
        'validation.max_images=2',
        'train.lr_schedule={name: constant, warmup_steps: 0}',
        f'data.synthetic=[{{kind: rgbd_folder, dir: synthetic, '
        f'filenames: synthetic/frames.txt, resize_to_hw: {size}, max_depth: 80.0}}]',
        f'data.real={{images: real/rgb, pseudo_labels: labels, resize_to_hw: {size}}}',
        f'validation.datasets=[{{kind: rgbd_folder, name: val, dir: val, '
        f'filenames: val/frames.txt, resize_to_hw: {size}, max_depth: 80.0}}]',
        # the wiring on 6 frames: no zoom crops (test_train_data checks data.zoom itself)
        'data.zoom=null', *overrides])
    return Trainer(cfg)


def _losses(trainer, key='loss/loss'):
    return [h[key] for h in trainer.history if key in h]


def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(next(Path(folder).glob('*.safetensors'))))


@pytest.fixture(scope='module')
def chain(data, tmp_path_factory):
    """The three stages, each starting from the previous stage's export."""
    runs = tmp_path_factory.mktemp('runs')
    out = {}
    ae = _run('autoencoder', data, runs / 'ae', *SMALL_ARCH, 'train.optimizer.lr=3e-3')
    out['ae_before'] = ae.validate()
    out['ae_model'] = ae.train()
    out['ae'] = ae
    gen = _run('generator', data, runs / 'gen', f"model.init={out['ae_model']}",
               'train.optimizer.lr=2e-3')
    out['gen_before'] = gen.validate()
    out['gen_model'] = gen.train()
    out['gen'] = gen
    fd = _run('fiffdepth', data, runs / 'fd', f"model.init={out['gen_model']}",
              'train.optimizer.lr=2e-3', steps=16)
    out['fd_model'] = fd.train()
    out['fd'] = fd
    return out


def test_autoencoder_learns_and_writes_an_sd2_checkpoint(chain):
    ae, model = chain['ae'], chain['ae_model']
    losses = _losses(ae, 'loss/l1')
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0], losses   # measured 0.30 -> 0.25
    after = [h for h in ae.history if 'val/val/l1' in h][-1]
    assert after['val/val/l1'] < chain['ae_before']['val/val/l1']
    assert after['val/val/psnr'] > chain['ae_before']['val/val/psnr']
    # the depth round trip (the ceiling of the depth stage) is measured on the held-out frames
    assert 0.0 < after['val/val/depth_round_trip_abs_rel'] < 10.0
    assert 0.0 <= after['val/val/depth_round_trip_delta1'] <= 1.0
    assert 'loss/kl' in ae.history[0]
    from fiffdepth_ros.training.init_checkpoint import resolve_init_checkpoint
    assert resolve_init_checkpoint(str(model)) == model      # the generator can start here
    index = json.loads((model / 'model_index.json').read_text())
    assert index['_class_name'] == 'StableDiffusionPipeline'
    sched = json.loads((model / 'scheduler' / 'scheduler_config.json').read_text())
    assert sched['prediction_type'] == 'v_prediction' and sched['num_train_timesteps'] == 1000
    # scaling_factor = 1 / std of the training images' latent means, recomputed here
    from diffusers import AutoencoderKL
    from fiffdepth_ros.training.data.common import FileSource
    from fiffdepth_ros.training.data.rgbd_folder import RGBDFolder
    vae = AutoencoderKL.from_pretrained(model / 'vae').eval()
    assert vae.config.block_out_channels == [8, 8, 16, 16]
    means = []
    with torch.no_grad():
        for dataset in ae.synthetic + [ae.real]:
            for i in range(len(dataset)):
                x = dataset.load(i)['rgb'][None]
                means.append(vae.encode(x).latent_dist.mean.flatten())
    std = float(torch.cat(means).std())
    assert vae.config.scaling_factor == pytest.approx(1.0 / std, rel=1e-4)
    assert isinstance(ae.synthetic[0], RGBDFolder) and isinstance(ae.synthetic[0].source,
                                                                   FileSource)


def test_generator_learns_diffusion_on_the_frozen_vae(chain):
    gen, model, ae_model = chain['gen'], chain['gen_model'], chain['ae_model']
    keys = [k for k in chain['gen_before'] if k.startswith('val/val/diffusion_t')]
    assert len(keys) == 3
    after = [h for h in gen.history if keys[0] in h][-1]
    before = sum(chain['gen_before'][k] for k in keys)
    assert sum(after[k] for k in keys) < 0.9 * before, (chain['gen_before'], after)  # 2.64 -> 1.98
    # the VAE was frozen and copied; the UNet moved from the autoencoder stage's fresh one
    a, b = _weights(ae_model / 'vae'), _weights(model / 'vae')
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = _weights(ae_model / 'unet'), _weights(model / 'unet')
    assert not torch.equal(a['conv_in.weight'], b['conv_in.weight'])
    assert json.loads((model / 'model_index.json').read_text())['_class_name'] == \
        'StableDiffusionPipeline'
    assert gen.prediction_type == 'v_prediction' and gen.embedding.shape[1] == 2


def test_fiffdepth_stage_transforms_the_generator_and_exports_a_depth_model(chain):
    fd, model = chain['fd'], chain['fd_model']
    losses = _losses(fd)
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses   # measured 4.53 -> 2.97
    assert {'loss/mae_t0', 'loss/mae_t-1', 'loss/traj'} <= set(fd.history[0])
    assert 'val/val/abs_rel' in fd.history[-1]
    index = json.loads((model / 'model_index.json').read_text())
    assert index['_class_name'] == 'DirectPipeline'
    # config/nano: a disparity model trained at 128 says so, and the engine honours both
    assert index['prediction_type'] == 'disparity'
    assert index['default_processing_resolution'] == 128
    a, b = _weights(chain['gen_model'] / 'unet'), _weights(model / 'unet')
    assert not torch.equal(a['conv_in.weight'], b['conv_in.weight'])
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.training.data import procedural as proc
    est = DepthEstimator.from_pretrained(str(model), device='cpu', precision='fp32',
                                         processing_res=64)
    assert est.scaling_factor == pytest.approx(
        json.loads((model / 'vae' / 'config.json').read_text())['scaling_factor'])
    frame = proc.render_frame(proc.held_out_seeds(1)[0], 'synthetic', 80, 60)
    depth = est.predict(frame.rgb)
    assert depth.shape == (60, 80) and np.isfinite(depth).all()
    assert depth.min() >= 0 and depth.max() <= 1 and depth.std() > 0
    assert est.output_space == 'disparity' and est.processing_res == 64
    own = DepthEstimator.from_pretrained(str(model), device='cpu', precision='fp32')
    assert own.processing_res == 128 and own.describe()['output_space'] == 'disparity'
    own.processing_res = -1                      # the node's runtime setting: the model's own
    assert own.processing_res == 128
    own.processing_res = 0
    assert own.target_size(60, 80) == (60, 80)


def test_stage_switch_errors():
    from fiffdepth_ros.training.config import ConfigError, load_config
    with pytest.raises(ConfigError, match='stage must be one of'):
        load_config(NANO / 'autoencoder.yaml', ['stage=vae'])
    from fiffdepth_ros.training.stages.autoencoder import architecture
    with pytest.raises(ConfigError, match='model.architecture.decoder'):
        architecture({'model': {'architecture': {'decoder': {}}}})
    for name in ('autoencoder', 'generator', 'fiffdepth'):
        assert load_config(NANO / f'{name}.yaml')['stage'] == name


def test_autoencoder_batch_adds_depth_targets_and_crops_reproducibly():
    from types import SimpleNamespace
    from fiffdepth_ros.training.config import ConfigError
    from fiffdepth_ros.training.stages.autoencoder import AutoencoderStage
    from fiffdepth_ros.training.targets import quantile_normalize
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + 9.0 * torch.rand(2, 1, 32, 48, generator=g)
    valid = torch.ones(2, 1, 32, 48, dtype=torch.bool)
    batch = {'syn': {'rgb': torch.rand(2, 3, 32, 48, generator=g) * 2 - 1, 'depth': depth,
                     'valid': valid, 'seed': torch.tensor([3, 4])},
             'real': {'rgb': torch.rand(1, 3, 32, 48, generator=g) * 2 - 1,
                      'seed': torch.tensor([9])}}

    def trainer(**options):
        cfg = {'method': {'depth_quantile': 0.02,
                          'autoencoder': {'kl_weight': 1e-6, 'depth_maps': False,
                                          'crop_hw': None, **options}}}
        return SimpleNamespace(cfg=cfg, accelerator=SimpleNamespace(device='cpu'))

    plain = AutoencoderStage.pixels_of(trainer(), batch)
    assert plain.shape == (3, 3, 32, 48)
    full = AutoencoderStage.pixels_of(trainer(depth_maps=True), batch)
    assert full.shape == (5, 3, 32, 48) and torch.equal(full[:3], plain)
    norm = quantile_normalize(depth, valid, 0.02)
    assert torch.equal(full[3:], norm.expand(-1, 3, -1, -1))      # grey: one map, 3 channels
    crop = AutoencoderStage.pixels_of(trainer(depth_maps=True, crop_hw=[16, 24]), batch)
    assert crop.shape == (5, 3, 16, 24)
    again = AutoencoderStage.pixels_of(trainer(depth_maps=True, crop_hw=[16, 24]), batch)
    assert torch.equal(crop, again)                             # drawn from the sample seeds
    windows = [(t, l) for t in range(17) for l in range(25)
               if torch.equal(full[..., t:t + 16, l:l + 24], crop)]
    assert len(windows) == 1                                    # one crop of every image
    with pytest.raises(ConfigError, match='crop_hw'):
        AutoencoderStage.pixels_of(trainer(crop_hw=[40, 24]), batch)


def _train_cli(config, cache, *overrides):
    """``fiffdepth-train`` as a new user runs it: a fresh process, its own empty caches."""
    import os
    import subprocess
    import sys
    cache.mkdir(parents=True)
    env = dict(os.environ, FIFFDEPTH_CACHE=str(cache / 'fiffdepth'), HF_HOME=str(cache / 'hf'),
               OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-m', 'fiffdepth_ros.cli.train', '--config',
                          str(config), *overrides], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_every_train_stage_runs_from_an_empty_cache_in_a_fresh_process(data, tmp_path):
    """The first training on a new machine computes the empty-prompt embedding itself (nothing
    cached): every stage that takes it must train on it (it once crashed with 'Inference tensors
    cannot be saved for backward' until a second run found the embedding cached)."""
    size = f'[{HW[0]}, {HW[1]}]'
    common = [f'data.root={data}', f'data.split_root={data}', 'train.max_steps=2',
              'train.log_every=1', 'train.checkpoint_every=1000',
              # batch 1: the embedding reaches the UNet as it is, not as an expanded view
              'train.batch_size_synthetic=1', 'train.batch_size_real=1', 'data.num_workers=0', 'validation.max_images=1',
              'train.lr_schedule={name: constant, warmup_steps: 0}',
              f'data.synthetic=[{{kind: rgbd_folder, dir: synthetic, '
              f'filenames: synthetic/frames.txt, resize_to_hw: {size}, max_depth: 80.0}}]',
              f'data.real={{images: real/rgb, pseudo_labels: labels, resize_to_hw: {size}}}',
              f'validation.datasets=[{{kind: rgbd_folder, name: val, dir: val, '
              f'filenames: val/frames.txt, resize_to_hw: {size}, max_depth: 80.0}}]']
    init = []
    for stage in ('autoencoder', 'generator', 'fiffdepth'):
        cache = tmp_path / f'cache_{stage}'
        out = _train_cli(NANO / f'{stage}.yaml', cache, *common, *init,
                         f'output_dir={tmp_path / stage}',
                         *(SMALL_ARCH if stage == 'autoencoder' else []))
        model = tmp_path / stage / 'model'
        assert (model / 'model_index.json').is_file(), out.stdout[-2000:]
        if stage != 'autoencoder':
            # the embedding was computed in this process (the cache was empty) and cached
            assert len(list((cache / 'fiffdepth' / 'empty_prompt').glob('*.safetensors'))) == 1
        init = [f'model.init={model}']


def test_regressor_bench_trains_on_the_recipe_data_and_is_scored_beside_nano(data, tmp_path,
                                                                             capsys):
    """bench/nano_regressor.py (the plain pixel-space comparison) on the recipe's data layout:
    a CPU-seconds budget with snapshots, the recipe's target space; bench/nano_quality.py
    scores a snapshot as a row in its own output space."""
    import importlib.util
    import sys

    def load(name):
        spec = importlib.util.spec_from_file_location(name, ROOT / 'bench' / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    regressor = load('nano_regressor')
    meta = regressor.train(data, tmp_path / 'reg', budget_cpu_s=4.0, snapshots=[1.0],
                           log_every=1)
    assert meta['steps'] >= 1 and meta['target_space'] == 'disparity'
    assert [s['folder'] for s in meta['snapshots']] == ['cpu-00001', 'cpu-00004']
    assert all(s['cpu_s'] >= mark for s, mark in zip(meta['snapshots'], (1.0, 4.0)))
    assert 3.0e6 < meta['parameters'] < 5.0e6             # about nano's 4.1M
    snap = regressor.Regressor(tmp_path / 'reg' / 'cpu-00004')
    assert snap.output_space == 'disparity' and snap.processing_res == 128
    out = snap.predict(np.zeros((60, 80, 3), np.uint8))
    assert out.shape == (60, 80) and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0          # the engine's output contract
    quality = load('nano_quality')
    assert quality.main(['--heldout-only', '--frames', '2', '--threads', '1', '--regressor',
                         f"plain={tmp_path / 'reg' / 'cpu-00004'}",
                         '--json', str(tmp_path / 'q.json')]) == 0
    rows = json.loads((tmp_path / 'q.json').read_text())['rows']
    assert set(rows) == {'nano', 'plain', 'random tiny', 'row baseline'}
    assert rows['plain']['output_space'] == 'disparity'
    assert 0.0 < rows['plain']['heldout_synthetic']['abs_rel'] < 10.0
    assert 'plain | disparity' in capsys.readouterr().out
    # --no-real: the synthetic frames alone (no real-like images, no pseudo-labels)
    cfg = regressor.training_config(data, real=False)
    assert cfg['data']['real'] is None and cfg['train']['batch_size_real'] == 0
    only = regressor.train(data, tmp_path / 'syn', budget_cpu_s=1.0, snapshots=[], log_every=1,
                           real_like=False)
    assert only['real_like'] is False and meta['real_like'] is True and only['steps'] >= 1


def test_ablation_seed_summary_is_mean_and_sample_std():
    """bench/nano_quality.py --group-seeds (scripts/nano_ablation.sh): rows 'VARIANT@sSEED'
    become mean +- sample standard deviation per variant; other rows are left out."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('nano_quality_g', ROOT / 'bench' /
                                                  'nano_quality.py')
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)

    def row(a, b):
        return {'heldout_synthetic': {'abs_rel': a, 'delta1': 1 - a},
                'heldout_real': {'abs_rel': b, 'delta1': 1 - b}}
    rows = {'full@s1': row(0.2, 0.3), 'full@s2': row(0.4, 0.5), 'full@s3': row(0.3, 0.4),
            'noreal@s1': row(0.5, 0.6), 'random tiny': row(0.9, 0.9)}
    groups = quality.seed_summary(rows)
    assert set(groups) == {'full', 'noreal'} and groups['full']['seeds'] == 3
    mean, std = groups['full']['heldout_synthetic/abs_rel']
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.1)     # ddof 1
    assert groups['noreal']['heldout_real/abs_rel'] == [pytest.approx(0.6), 0.0]
    assert 'full | 3 | 0.300 +- 0.100' in quality.format_groups(groups)
