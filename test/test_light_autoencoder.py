"""Light autoencoder parts (model.light) in the engine and their distillation stage
(training/stages/light_autoencoder.py): the engine with light parts against an independent
step-by-step computation for FiffDepth, E2E-FT and Lotus-D (and a TAESD folder), one clear error
without the parts, and the stage run through fiffdepth-train in a fresh process: it learns,
resumes exactly, and writes parts that load and run."""
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiffdepth_ros.model.checkpoint import ModelLoadError
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.model.light import (LightDecoder, LightEncoder, load_light_parts,
                                       model_fingerprint)
from fiffdepth_ros.model.tiny import build_tiny_checkpoint
from sd_reference import load_sd_modules

ROOT = Path(__file__).resolve().parents[1]
WIDTH = dict(block_out_channels=(8, 8, 8, 8), num_blocks=(1, 1, 1, 1))
SMALL = '{block_out_channels: [8, 8, 8, 8], num_blocks: [1, 1, 1, 1]}'
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _random_parts(seed=0):
    """Random light parts whose outputs vary (a decoder bias of 0.5 keeps the depth inside
    [0, 1], so the clipping does not flatten it)."""
    torch.manual_seed(seed)
    encoder = LightEncoder(**WIDTH, output_scale=0.7).eval()
    decoder = LightDecoder(**WIDTH, latent_scale=1.3).eval()
    with torch.no_grad():
        decoder.decoder.layers[-1].bias.fill_(0.5)
    return encoder, decoder


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """Tiny checkpoints of the three single-pass families, each with random light parts."""
    root = tmp_path_factory.mktemp('light')
    out = {}
    for seed, (family, name) in enumerate((('fiffdepth', 'tiny-fiffdepth'),
                                           ('e2e_ft', 'tiny-e2e-ft-depth'),
                                           ('lotus_d', 'tiny-lotus-depth-d-v1'))):
        path = build_tiny_checkpoint(root / name, seed=seed + 10, family=family)
        encoder, decoder = _random_parts(seed)
        encoder.save_pretrained(path / 'light_encoder')
        decoder.save_pretrained(path / 'light_decoder')
        out[family] = path
    return out


# ---------------------------------------------------------------------- the reference
@functools.lru_cache(maxsize=None)
def _modules(path):
    vae, unet, empty = load_sd_modules(path)
    light_encoder = LightEncoder.from_pretrained(path / 'light_encoder').eval()
    light_decoder = LightDecoder.from_pretrained(path / 'light_decoder').eval()
    return vae, unet, empty, light_encoder, light_decoder


def _bilinear(x, size):
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)


def twin_light_encode(encoder, x):
    """LightEncoder by hand: crop to multiples of 8, TAESD's [-1, 1] -> [0, 1], its layers,
    times output_scale."""
    h, w = x.shape[-2:]
    x = x[..., :h - h % 8, :w - w % 8]
    return encoder.encoder.layers((x + 1) / 2) * encoder.config.output_scale


def twin_light_decode(decoder, z):
    """LightDecoder by hand: latent_scale, TAESD's soft clamp tanh(z / 3) * 3, its layers
    (their output is the depth: DecoderTiny's x * 2 - 1 and the wrapper's (y + 1) / 2 cancel),
    clipped to [0, 1]."""
    z = z * decoder.config.latent_scale
    return decoder.decoder.layers(torch.tanh(z / 3) * 3).clamp(0, 1)


@torch.no_grad()
def reference(path, family, image, res, light_encoder=False, light_decoder=False, taesd=None):
    """The family's released procedure step by step, with either half swapped for its light
    twin (or a TAESD AutoencoderTiny's halves)."""
    vae, unet, empty, enc, dec = _modules(path)
    h, w = image.shape[:2]
    f = min(res / w, res / h)
    size = (int(h * f), int(w * f))
    if family == 'lotus_d':
        x = _bilinear(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1, size)
    else:
        rgb = torch.round(_bilinear(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size))
        x = rgb / 255 * 2 - 1
    if taesd is not None and light_encoder:
        latent = taesd.encode(x[..., :size[0] - size[0] % 8, :size[1] - size[1] % 8]).latents
    elif light_encoder:
        latent = twin_light_encode(enc, x)
    else:
        latent = torch.chunk(vae.quant_conv(vae.encoder(x)), 2, dim=1)[0] * 0.18215
    if family == 'fiffdepth':
        z = unet(latent, torch.tensor(0), encoder_hidden_states=empty).sample
    elif family == 'e2e_ft':
        from diffusers import DDIMScheduler
        sched = DDIMScheduler.from_pretrained(path / 'scheduler')
        a = sched.alphas_cumprod[999]
        v = unet(torch.cat([latent, torch.zeros_like(latent)], 1), torch.tensor(999),
                 encoder_hidden_states=empty).sample
        z = -(1 - a).sqrt() * v                               # x_t = 0, v-prediction -> x0
    else:
        task = torch.tensor([[1.0, 0.0]])
        task = torch.cat([torch.sin(task), torch.cos(task)], dim=-1)
        z = unet(latent, torch.tensor(999), encoder_hidden_states=empty,
                 class_labels=task).sample
    if light_decoder and taesd is None:
        depth = twin_light_decode(dec, z)
    else:
        rgb = taesd.decode(z).sample if light_decoder else \
            vae.decoder(vae.post_quant_conv(z / 0.18215))
        if family == 'lotus_d':
            depth = (rgb * 0.5 + 0.5).clamp(0, 1).mean(1, keepdim=True)
        else:
            depth = (rgb.mean(1, keepdim=True).clamp(-1, 1) + 1) / 2
    if family == 'e2e_ft':
        depth = (depth - depth.min()) / (depth.max() - depth.min())
    if family == 'lotus_d':
        return F.interpolate(depth, size=(h, w), mode='nearest-exact')[0, 0].numpy()
    return _bilinear(depth, (h, w))[0, 0].clamp(0, 1).numpy()


VARIANTS = {'light': (True, True), 'light_encoder': (True, False),
            'light_decoder': (False, True), 'full': (False, False)}


@pytest.mark.parametrize('family', ['fiffdepth', 'e2e_ft', 'lotus_d'])
@pytest.mark.parametrize('autoencoder', list(VARIANTS))
def test_engine_with_light_parts_equals_a_step_by_step_computation(models, family, autoencoder):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (83, 117, 3), dtype=np.uint8)   # resized to 28x40: odd sides
    est = DepthEstimator.from_pretrained(str(models[family]), device='cpu', processing_res=40,
                                         autoencoder=autoencoder)
    assert est.family == family and est.autoencoder == autoencoder
    assert est.describe()['autoencoder'] == autoencoder
    # Both halves light: the VAE is not even loaded.
    assert (est.vae is None) == (autoencoder == 'light')
    ours = est.predict(image)
    enc, dec = VARIANTS[autoencoder]
    ref = reference(models[family], family, image, 40, light_encoder=enc, light_decoder=dec)
    assert ref.std() > 1e-3                         # a varied map, not a clipped constant
    diff = np.abs(ours - ref)
    assert ours.shape == ref.shape and diff.max() < 1e-4, diff.max()
    if autoencoder != 'full':                        # the light half changed the output
        full = reference(models[family], family, image, 40)
        assert np.abs(ours - full).max() > 1e-2


def test_a_taesd_folder_can_stand_in_for_both_halves(models, tmp_path):
    from diffusers import AutoencoderTiny
    torch.manual_seed(5)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8,) * 4,
                            decoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4,
                            num_decoder_blocks=(1,) * 4).eval()
    taesd.save_pretrained(tmp_path / 'taesd')
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for autoencoder, (enc, dec) in VARIANTS.items():
        est = DepthEstimator.from_pretrained(str(models['fiffdepth']), device='cpu',
                                             processing_res=48, autoencoder=autoencoder,
                                             light_path=str(tmp_path / 'taesd'))
        ref = reference(models['fiffdepth'], 'fiffdepth', image, 48, light_encoder=enc,
                        light_decoder=dec, taesd=taesd)
        assert np.abs(est.predict(image) - ref).max() < 1e-4, autoencoder


def test_a_folder_without_light_parts_gives_one_clear_error(tiny_checkpoint, models, tmp_path):
    with pytest.raises(ModelLoadError) as err:
        DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', autoencoder='light')
    text = str(err.value)
    assert 'light_encoder/' in text and 'light_decoder/' in text
    assert 'fiffdepth-train --config config/light_autoencoder.yaml' in text
    assert "autoencoder: full" in text
    # one half present: only the other one is named
    half = tmp_path / 'half'
    shutil.copytree(models['fiffdepth'], half)
    shutil.rmtree(half / 'light_encoder')
    DepthEstimator.from_pretrained(str(half), device='cpu', autoencoder='light_decoder')
    with pytest.raises(ModelLoadError, match=r'has no light_encoder/ \(') as err:
        DepthEstimator.from_pretrained(str(half), device='cpu', autoencoder='light')
    assert 'light_decoder/' not in str(err.value).split('(')[0]
    with pytest.raises(ValueError, match='autoencoder must be one of'):
        DepthEstimator.from_pretrained(str(half), device='cpu', autoencoder='tiny')


def test_marigold_refuses_the_light_autoencoder(tmp_path):
    path = build_tiny_checkpoint(tmp_path / 'tiny-marigold', seed=4, family='marigold')
    with pytest.raises(ValueError, match='single-pass families'):
        DepthEstimator.from_pretrained(str(path), device='cpu', autoencoder='light_decoder')


def test_parts_from_another_model_load_with_a_warning(models, tmp_path, caplog):
    from fiffdepth_ros.model.light import write_record
    folder = tmp_path / 'm'
    shutil.copytree(models['fiffdepth'], folder)
    write_record(folder / 'light_decoder', {'teacher': {'fingerprint': 'not-this-one',
                                                        'source': 'other'}})
    with caplog.at_level('WARNING'):
        load_light_parts(folder, str(folder), 'light_decoder')
    assert 'distilled from another model' in caplog.text
    caplog.clear()
    write_record(folder / 'light_decoder', {'teacher': {'fingerprint': model_fingerprint(folder),
                                                        'source': 'it'}})
    with caplog.at_level('WARNING'):
        load_light_parts(folder, str(folder), 'light_decoder')
    assert 'distilled from another model' not in caplog.text


def test_node_parameters_and_tool_flags_reach_the_engine(models, tmp_path):
    from fiffdepth_ros import params as P
    from fiffdepth_ros.model.runtime import load_estimator, model_line
    est = load_estimator(P.validate({'model': str(models['lotus_d']), 'device': 'cpu',
                                     'autoencoder': 'light_encoder'}))
    assert est.autoencoder == 'light_encoder'
    assert 'autoencoder light_encoder' in model_line(est.describe())
    with pytest.raises(P.ParameterError):
        P.validate({'autoencoder': 'small'})
    from fiffdepth_ros.bag.process_bag import build_parser, resolve_params
    args = build_parser().parse_args(['in', 'out', '--autoencoder', 'light',
                                      '--light-path', '/x'])
    p = resolve_params(args)
    assert p['autoencoder'] == 'light' and p['light_path'] == '/x'
    from fiffdepth_ros.cli.evaluate import _parser
    assert _parser().parse_args(['--dataset', 'nyu', '--data', 'd', '--autoencoder',
                                 'light_decoder']).autoencoder == 'light_decoder'


def _clean_env(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1',
               FIFFDEPTH_CACHE=str(tmp_path / 'fresh_cache'), HF_HUB_OFFLINE='1')
    return env


def test_predict_cli_light_and_its_error_in_a_fresh_process(models, tiny_checkpoint, tmp_path):
    import cv2
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'),
                np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    exe = Path(sys.executable).parent / 'fiffdepth-predict'
    out = subprocess.run([str(exe), '--model', str(models['fiffdepth']), '--input',
                          str(tmp_path / 'in'), '--output', str(tmp_path / 'out'), '--device',
                          'cpu', '--autoencoder', 'light', '--processing-res', '48'],
                         env=_clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'autoencoder light' in out.stderr
    assert np.load(tmp_path / 'out' / 'a.npy').shape == (40, 56)
    out = subprocess.run([str(exe), '--model', str(tiny_checkpoint), '--input',
                          str(tmp_path / 'in'), '--output', str(tmp_path / 'out2'),
                          '--device', 'cpu', '--autoencoder', 'light'],
                         env=_clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'has no light_encoder/ and no light_decoder/' in lines[0]
    assert 'Traceback' not in out.stderr


# ---------------------------------------------------------------------- the stage
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Images only (procedural frames of both domains, no depth on disk) and a small RGB-D
    validation set."""
    from fiffdepth_ros.training.data import procedural as proc
    root = tmp_path_factory.mktemp('light_data')
    for domain in proc.DOMAINS:
        proc.write_frames(root / 'images' / domain, proc.training_seeds(0, 4), domain, 48, 32,
                          depth_format='none')
    proc.write_frames(root / 'val', proc.held_out_seeds(2), 'synthetic', 48, 32)
    return root


def _overrides(model, data, out, steps=4, *extra):
    return [f'model.init={model}', f'data.root={data}', f'data.split_root={data}',
            f'output_dir={out}', f'train.max_steps={steps}', 'train.log_every=2',
            'train.checkpoint_every=2', 'train.progress_bar=false', 'train.mixed_precision=no',
            'data.num_workers=0', 'train.batch_size_real=4',
            'data.real={images: images, resize_to_hw: [32, 48]}',
            'validation.datasets=[{kind: rgbd_folder, name: val, dir: val, '
            'filenames: val/frames.txt, resize_to_hw: [32, 48], max_depth: 80.0}]',
            'validation.every=2', 'validation.max_images=2',
            f'method.light_autoencoder.decoder={SMALL}',
            f'method.light_autoencoder.encoder={SMALL}', *extra]


def test_fiffdepth_train_stage_writes_parts_the_engine_loads(data, tmp_path):
    """The CLI in a fresh process with an empty FIFFDEPTH_CACHE; the parts land in the model
    folder and in output_dir/model with their distillation record."""
    model = build_tiny_checkpoint(tmp_path / 'model', seed=21)
    exe = Path(sys.executable).parent / 'fiffdepth-train'
    out = subprocess.run([str(exe), '--config', str(ROOT / 'config' / 'light_autoencoder.yaml'),
                          'stage=light_autoencoder',
                          *_overrides(model, data, tmp_path / 'run')],
                         env=_clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'model written to' in out.stdout
    for part, cls in (('light_decoder', LightDecoder), ('light_encoder', LightEncoder)):
        exported, installed = tmp_path / 'run' / 'model' / part, model / part
        for f in ('config.json', 'diffusion_pytorch_model.safetensors', 'distillation.json'):
            assert (exported / f).read_bytes() == (installed / f).read_bytes()
        record = json.loads((installed / 'distillation.json').read_text())
        assert record['format'] == 'fiffdepth-light-autoencoder-v1' and record['part'] == part
        assert record['teacher']['fingerprint'] == model_fingerprint(model)
        assert record['teacher']['family'] == 'fiffdepth'
        assert record['images'] == {'synthetic': 0, 'real': 8}
        assert record['train']['max_steps'] == 4
        assert np.isfinite(record['last_log']['loss/loss'])
        assert 'val/val/abs_rel_light' in record['validation']
        assert cls.from_pretrained(installed).config.block_out_channels == [8, 8, 8, 8]
    assert (tmp_path / 'fresh_cache').is_dir()          # the embedding cache started empty
    est = DepthEstimator.from_pretrained(str(model), device='cpu', processing_res=48,
                                         autoencoder='light')
    depth = est.predict(np.zeros((32, 48, 3), np.uint8))
    assert depth.shape == (32, 48) and np.isfinite(depth).all()


def _trainer(model, data, out, steps, *extra):
    from accelerate.state import AcceleratorState, GradientState
    from fiffdepth_ros.training.config import load_config
    from fiffdepth_ros.training.loop import Trainer
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Trainer(load_config(ROOT / 'config' / 'light_autoencoder.yaml',
                               _overrides(model, data, out, steps, *extra)))


def test_the_stage_learns_the_teacher_and_validates_full_against_light(data, tmp_path):
    model = build_tiny_checkpoint(tmp_path / 'model', seed=22)
    trainer = _trainer(model, data, tmp_path / 'run', 24, 'train.log_every=8',
                       'train.lr_schedule={name: constant, warmup_steps: 0}',
                       'train.optimizer.lr=3e-3', 'method.light_autoencoder.install=false')
    before = trainer.validate()
    trainer.train()
    logs = [h for h in trainer.history if 'loss/depth_l1' in h]
    assert len(logs) == 3
    assert logs[-1]['loss/depth_l1'] < 0.7 * logs[0]['loss/depth_l1'], logs
    assert logs[-1]['loss/latent_mse'] < 0.7 * logs[0]['loss/latent_mse'], logs
    after = [h for h in trainer.history if 'val/val/light_vs_full_l1' in h][-1]
    assert after['val/val/light_vs_full_l1'] < before['val/val/light_vs_full_l1']
    assert after['val/val/abs_rel_full'] == pytest.approx(before['val/val/abs_rel_full'])
    assert not (model / 'light_decoder').exists()        # install=false: the folder untouched
    # The latent stats set the parts' scales: the teacher's depth latents have unit scale after.
    assert trainer.latent_stats['depth_std'] > 0
    light = trainer.accelerator.unwrap_model(trainer.model)
    assert light.decoder.config.latent_scale == pytest.approx(
        1 / trainer.latent_stats['depth_std'])


def test_resume_continues_the_stage_bit_identically(data, tmp_path):
    from safetensors.torch import load_file
    model = build_tiny_checkpoint(tmp_path / 'model', seed=23)
    extra = ('method.light_autoencoder.install=false', 'validation.every=1000')
    _trainer(model, data, tmp_path / 'a', 4, *extra).train()
    _trainer(model, data, tmp_path / 'b', 2, *extra).train()
    shutil.rmtree(tmp_path / 'b' / 'model')
    resumed = _trainer(model, data, tmp_path / 'b', 4, *extra)
    resumed.train(resume='latest')
    for part in ('light_decoder', 'light_encoder'):
        a = load_file(str(tmp_path / 'a' / 'model' / part / 'diffusion_pytorch_model.safetensors'))
        b = load_file(str(tmp_path / 'b' / 'model' / part / 'diffusion_pytorch_model.safetensors'))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clear_errors_before_training(data, tmp_path):
    from fiffdepth_ros.cli.train import main
    model = build_tiny_checkpoint(tmp_path / 'model', seed=24)
    base = ['--config', str(ROOT / 'config' / 'light_autoencoder.yaml'), '--check']
    assert main(base + _overrides(model, data, tmp_path / 'run')) == 0
    # a built-in model cannot be written into
    assert main(base + _overrides('nano', data, tmp_path / 'run')) == 2
    # a missing image folder
    assert main(base + _overrides(model, data, tmp_path / 'run',
                                  4, 'data.real={images: nowhere}')) == 2
    # an unknown part
    assert main(base + _overrides(model, data, tmp_path / 'run', 4,
                                  'method.light_autoencoder.parts=[vae]')) == 2


def test_the_fiffdepth_stage_still_needs_pseudo_labels(data):
    from fiffdepth_ros.training.data.common import DataError
    from fiffdepth_ros.training.data.factory import build_training_data
    cfg = {'root': str(data), 'split_root': str(data), 'synthetic': [],
           'real': {'images': 'images', 'resize_to_hw': [32, 48]}}
    with pytest.raises(DataError, match='pseudo_labels'):
        build_training_data(cfg, need_synthetic=False, need_real=True)
    _, _, real = build_training_data(cfg, need_synthetic=False, need_real=True,
                                     need_labels=False)
    sample = real.load(0, flip=True, crop_u=0.0, crop_v=1.0)
    assert set(sample) == {'rgb'} and sample['rgb'].shape == (3, 32, 48)
    assert len(real) == 8


@pytest.mark.parametrize('family,autoencoder', [('fiffdepth', 'light'),
                                                ('e2e_ft', 'light_decoder'),
                                                ('lotus_d', 'light_encoder')])
def test_export_carries_the_light_parts_and_equals_the_torch_engine(models, family, autoencoder,
                                                                    tmp_path):
    """fiffdepth-export --autoencoder: the light halves are traced into the one graph; ONNX
    Runtime runs it as the torch engine runs the same parts (1e-4 of the output range)."""
    pytest.importorskip('onnxruntime')
    from fiffdepth_ros.model.export import ExportConfig, export_single_pass
    out = tmp_path / 'export'
    info = export_single_pass(ExportConfig(model=str(models[family]), output=out, dynamic=True,
                                           processing_res=48, autoencoder=autoencoder))
    assert info.autoencoder == autoencoder
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    torch_engine = DepthEstimator.from_pretrained(str(models[family]), device='cpu',
                                                  precision='fp32', processing_res=48,
                                                  autoencoder=autoencoder, runtime='torch')
    graph = DepthEstimator.from_pretrained(str(out), device='cpu', precision='fp32',
                                           processing_res=48)
    assert graph.describe()['autoencoder'] == autoencoder
    reference, depth = torch_engine.predict(image), graph.predict(image)
    span = float(reference.max() - reference.min())
    assert span > 0.01
    assert float(np.abs(depth - reference).max()) <= 1e-4 * span
    # the full-VAE graph of the same model differs: the light parts are really in the graph
    full = DepthEstimator.from_pretrained(str(models[family]), device='cpu', precision='fp32',
                                          processing_res=48, runtime='torch')
    assert float(np.abs(full.predict(image) - reference).max()) > 1e-3 * span


def test_export_refuses_an_unknown_autoencoder_choice(models, tmp_path):
    from fiffdepth_ros.model.export import ExportConfig, ExportError
    config = ExportConfig(model=str(models['fiffdepth']), output=tmp_path / 'x', dynamic=True,
                          autoencoder='tiny')
    with pytest.raises(ExportError, match='autoencoder must be one of'):
        config.validate()
