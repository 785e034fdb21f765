"""The training loop end to end on CPU with tiny models: overfitting, exact resume, two
processes equal one, validation, logs, export into the released layout, clear errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_train_support import (tiny_depth_anything, tiny_sd2_checkpoint, write_hypersim,
                                write_real_folder)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A tiny SD2-layout checkpoint, a Hypersim tar, real images and their pseudo-labels."""
    from fiffdepth_ros.cli.pseudolabel import main as pseudolabel
    ws = tmp_path_factory.mktemp('train_ws')
    ckpt = tiny_sd2_checkpoint(ws / 'sd2')
    write_hypersim(ws / 'data' / 'hypersim.tar', ws / 'splits' / 'hs.txt', n=4, hw=(32, 48),
                   as_tar=True)
    write_real_folder(ws / 'data' / 'real', n=4, hw=(36, 52))
    teacher = tiny_depth_anything(ws / 'teacher')
    assert pseudolabel(['--teacher', str(teacher), '--images', str(ws / 'data' / 'real'),
                        '--out', str(ws / 'data' / 'labels'), '--input-size', '28',
                        '--workers', '0', '--no-progress']) == 0
    return ws, ckpt


HS = {'kind': 'hypersim', 'dir': 'hypersim.tar', 'filenames': 'hs.txt', 'resize_to_hw': [32, 48]}


def _cfg(ws, ckpt, out, **train):
    t = {'max_steps': 4, 'batch_size_synthetic': 2, 'batch_size_real': 2,
         'gradient_accumulation_steps': 1, 'mixed_precision': 'no', 'log_every': 1,
         'checkpoint_every': 2, 'progress_bar': False, 'seed': 7,
         'optimizer': {'name': 'adam', 'lr': 1e-3},
         'lr_schedule': {'name': 'exponential', 'warmup_steps': 1, 'total_steps': 10,
                         'final_ratio': 0.1}}
    t.update(train)
    return {'output_dir': str(out), 'model': {'init': str(ckpt), 'gradient_checkpointing': False},
            'data': {'root': str(ws / 'data'), 'split_root': str(ws / 'splits'),
                     'num_workers': 0, 'synthetic': [HS],
                     'real': {'images': 'real', 'pseudo_labels': 'labels',
                              'resize_to_hw': [32, 48]}},
            'validation': {'datasets': [], 'every': 1000},
            'train': t}


def _trainer(cfg):
    from accelerate.state import AcceleratorState, GradientState
    from fiffdepth_ros.training.config import load_config
    from fiffdepth_ros.training.loop import Trainer
    # accelerate keeps one process-wide state; each run here is a fresh "process"
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    path = Path(cfg['output_dir']).parent / (Path(cfg['output_dir']).name + '.yaml')
    path.write_text(yaml.safe_dump(cfg))
    return Trainer(load_config(path))


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def test_tiny_run_overfits_and_logs_every_term(workspace, tmp_path, caplog):
    ws, ckpt = workspace
    cfg = _cfg(ws, ckpt, tmp_path / 'run', max_steps=16, checkpoint_every=100, log_every=4,
               lr_schedule={'name': 'constant', 'warmup_steps': 0})
    trainer = _trainer(cfg)
    with caplog.at_level('INFO', logger='fiffdepth_ros.training.loop'):
        trainer.train()
    # progress_bar: false (a log file): the progress comes as log lines instead
    lines = [r.getMessage() for r in caplog.records if ' step ' in r.getMessage()
             and 'loss' in r.getMessage()]
    assert [line.split(':')[0] for line in lines] == [f'fiffdepth step {s}/16'
                                                      for s in (4, 8, 12, 16)]
    losses = [h['loss/loss'] for h in trainer.history if 'loss/loss' in h]
    assert len(losses) == 4
    assert losses[-1] < losses[0] / 2.5, losses          # measured: 1.20 -> 0.32 over 16 steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next((tmp_path / 'run' / 'logs').rglob('events.*')).parent))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {'loss/loss', 'loss/mae_t0', 'loss/gm_t0', 'loss/mae_t-1', 'loss/gm_t-1',
            'loss/traj', 'lr', 'throughput/images_per_s'} <= tags
    assert [e.step for e in events.Scalars('loss/traj')] == [4, 8, 12, 16]


def test_bf16_accumulation_and_loader_workers(workspace, tmp_path):
    """Mixed precision, gradient accumulation and DataLoader worker processes together."""
    ws, ckpt = workspace
    cfg = _cfg(ws, ckpt, tmp_path / 'bf16', max_steps=1, mixed_precision='bf16',
               gradient_accumulation_steps=2, checkpoint_every=1,
               lr_schedule={'name': 'constant', 'warmup_steps': 0})
    cfg['data']['num_workers'] = 1
    trainer = _trainer(cfg)
    assert trainer.vae.dtype == torch.bfloat16
    trainer.train()
    record = trainer.history[-1]
    assert np.isfinite(record['loss/loss']) and record['loss/loss'] > 0
    live = _weights(tmp_path / 'bf16' / 'checkpoints' / 'step-0000001' / 'model.safetensors')
    start = _weights(ckpt / 'unet' / 'diffusion_pytorch_model.safetensors')
    assert live['conv_in.weight'].dtype == torch.float32          # fp32 master weights
    assert not torch.equal(live['conv_in.weight'], start['conv_in.weight'])


def test_resume_continues_bit_identically(workspace, tmp_path):
    ws, ckpt = workspace
    ema = {'enabled': True, 'decay': 0.5}
    cfg = _cfg(ws, ckpt, tmp_path / 'straight')
    cfg['model']['ema'] = ema
    _trainer(cfg).train()
    cfg_b = _cfg(ws, ckpt, tmp_path / 'stopped', max_steps=2)
    cfg_b['model']['ema'] = ema
    _trainer(cfg_b).train()
    cfg_b['train']['max_steps'] = 4
    resumed = _trainer(cfg_b)
    resumed.train(resume='latest')
    for rel in ('checkpoints/step-0000004/model.safetensors',
                'model/unet/diffusion_pytorch_model.safetensors'):
        a, b = _weights(tmp_path / 'straight' / rel), _weights(tmp_path / 'stopped' / rel)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    # ... and the run really moved the weights (EMA export differs from the live weights)
    start = _weights(ckpt / 'unet' / 'diffusion_pytorch_model.safetensors')
    live = _weights(tmp_path / 'straight' / 'checkpoints/step-0000004/model.safetensors')
    export = _weights(tmp_path / 'straight' / 'model/unet/diffusion_pytorch_model.safetensors')
    k = 'conv_in.weight'
    assert not torch.equal(start[k], live[k]) and not torch.equal(live[k], export[k])


def test_two_processes_give_the_update_of_one_with_the_combined_batch(workspace, tmp_path):
    """accelerate launch, 2 CPU processes (gloo), 1+1 images each == 1 process with 2+2."""
    ws, ckpt = workspace
    sgd = {'name': 'sgd', 'lr': 0.05}
    common = dict(max_steps=1, checkpoint_every=1, optimizer=sgd, max_grad_norm=0.0,
                  lr_schedule={'name': 'constant', 'warmup_steps': 0})
    one = _cfg(ws, ckpt, tmp_path / 'one', **common)
    one['model']['gradient_checkpointing'] = True      # DDP with re-computed activations too
    _trainer(one).train()
    two = _cfg(ws, ckpt, tmp_path / 'two', batch_size_synthetic=1, batch_size_real=1, **common)
    two['model']['gradient_checkpointing'] = True
    (tmp_path / 'two.yaml').write_text(yaml.safe_dump(two))
    env = dict(os.environ, ACCELERATE_USE_CPU='true', OMP_NUM_THREADS='1',
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    accelerate = Path(sys.executable).parent / 'accelerate'
    out = subprocess.run([str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2',
                          '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend',
                          'no', '--main_process_port', str(29500 + os.getpid() % 1000),
                          '-m', 'fiffdepth_ros.cli.train', '--config', str(tmp_path / 'two.yaml')],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((tmp_path / 'two' / 'checkpoints' / 'step-0000001' /
                        'trainer_state.json').read_text())
    assert state['num_processes'] == 2
    a = _weights(tmp_path / 'one' / 'checkpoints' / 'step-0000001' / 'model.safetensors')
    b = _weights(tmp_path / 'two' / 'checkpoints' / 'step-0000001' / 'model.safetensors')
    start = _weights(ckpt / 'unet' / 'diffusion_pytorch_model.safetensors')
    update_a = torch.cat([(a[k] - start[k]).flatten() for k in sorted(a)])
    update_b = torch.cat([(b[k] - start[k]).flatten() for k in sorted(a)])
    # float32 summation order (batch 1 vs 2 kernels, the gloo all-reduce) moves it ~1e-5;
    # another sample, seed or reduction would move it by tens of percent
    rel = float((update_a - update_b).norm() / update_a.norm())
    assert float(update_a.abs().max()) > 1e-3 and rel < 1e-4, rel


def test_validation_matches_a_step_by_step_evaluation(workspace, tmp_path):
    """AbsRel / delta1 after least squares, recomputed with diffusers' modules and numpy."""
    ws, ckpt = workspace
    cfg = _cfg(ws, ckpt, tmp_path / 'val', max_steps=1)
    cfg['validation'] = {'datasets': [dict(HS, name='hs')], 'every': 1, 'max_images': 2}
    trainer = _trainer(cfg)
    got = trainer.validate()
    from fiffdepth_ros.training.data.factory import build_synthetic
    ds = build_synthetic(HS, ws / 'data', ws / 'splits')
    unet, vae = trainer.accelerator.unwrap_model(trainer.unet), trainer.vae
    abs_rel, delta1 = [], []
    with torch.no_grad():
        for i in range(2):
            s = ds.load(i)
            z = vae.encode(s['rgb'][None]).latent_dist.mean * 0.18215
            d = unet(z, torch.tensor(0), encoder_hidden_states=trainer.embedding).sample
            img = vae.decode(d / 0.18215).sample.mean(1)[0].clamp(-1, 1).numpy()
            pred = (img + 1) / 2
            gt, valid = s['depth'][0].numpy(), s['valid'][0].numpy()
            A = np.stack([pred[valid], np.ones(valid.sum())], 1)
            (sc, sh), *_ = np.linalg.lstsq(A, gt[valid], rcond=None)
            aligned = np.clip(pred * sc + sh, 1e-5, 65.0)[valid]
            abs_rel.append(np.mean(np.abs(aligned - gt[valid]) / gt[valid]))
            delta1.append(np.mean(np.maximum(aligned / gt[valid], gt[valid] / aligned) < 1.25))
    assert got['val/hs/abs_rel'] == pytest.approx(np.mean(abs_rel), rel=1e-4)
    assert got['val/hs/delta1'] == pytest.approx(np.mean(delta1), abs=1e-3)
    assert trainer.embedding.shape[1] == 2                    # the 2-token empty prompt


def test_export_loads_in_the_engine_and_the_release_interface(workspace, tmp_path):
    ws, ckpt = workspace
    trainer = _trainer(_cfg(ws, ckpt, tmp_path / 'exp', max_steps=1, batch_size_real=0,
                            **{'checkpoint_every': 1}))
    out = trainer.train()
    index = json.loads((out / 'model_index.json').read_text())
    assert index['_class_name'] == 'DirectPipeline'
    assert {'unet', 'vae', 'text_encoder', 'tokenizer'} <= set(index)
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.model.stages import decode_latent, depth_from_decoded, encode_image
    est = DepthEstimator.from_pretrained(str(out), device='cpu', precision='fp32',
                                         processing_res=0)
    rgb = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    depth = est.predict(rgb)
    assert depth.shape == (32, 48) and np.isfinite(depth).all()
    # the engine runs the trained UNet (not the initial one)
    unet = trainer.accelerator.unwrap_model(trainer.unet).eval()
    with torch.no_grad():
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
        z = encode_image(trainer.vae, x, 0.18215)
        ref = depth_from_decoded(decode_latent(
            trainer.vae, unet(z, torch.tensor(0), encoder_hidden_states=trainer.embedding).sample,
            0.18215))[0, 0].numpy()
    assert np.abs(depth - ref).max() < 2e-2 and np.abs(depth - ref).mean() < 2e-3
    # the released DirectPipeline's constructor signature (unet, vae, text_encoder, tokenizer,
    # and three config values; no scheduler) loads the folder through diffusers
    from diffusers import DiffusionPipeline

    class DirectPipeline(DiffusionPipeline):
        def __init__(self, unet, vae, text_encoder, tokenizer, scale_invariant=True,
                     shift_invariant=True, default_processing_resolution=None):
            super().__init__()
            self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder,
                                  tokenizer=tokenizer)

    pipe = DirectPipeline.from_pretrained(str(out))
    assert torch.equal(pipe.unet.conv_in.weight, unet.conv_in.weight)
    # a disparity model's model_index.json (method.target_space: disparity) loads there too:
    # the release ignores the key it does not take
    from fiffdepth_ros.training.export import released_model_index
    disparity_index = released_model_index(128, 'disparity')
    assert disparity_index['prediction_type'] == 'disparity'
    (out / 'model_index.json').write_text(json.dumps(disparity_index))
    pipe = DirectPipeline.from_pretrained(str(out))
    assert torch.equal(pipe.unet.conv_in.weight, unet.conv_in.weight)
    est = DepthEstimator.from_pretrained(str(out), device='cpu', precision='fp32')
    assert est.output_space == 'disparity' and est.processing_res == 128
    # and it is again an SD2-layout checkpoint training can start from
    from fiffdepth_ros.training.init_checkpoint import resolve_init_checkpoint
    assert resolve_init_checkpoint(str(out)) == out


def test_clear_errors_before_any_model_loads(workspace, tmp_path, capsys):
    ws, ckpt = workspace
    from fiffdepth_ros.cli.train import main
    from fiffdepth_ros.training.init_checkpoint import InitCheckpointError, resolve_init_checkpoint
    cfg = _cfg(ws, ckpt, tmp_path / 'err')
    (tmp_path / 'ok.yaml').write_text(yaml.safe_dump(cfg))
    assert main(['--config', str(tmp_path / 'ok.yaml'), '--check']) == 0
    assert '4 synthetic samples, 4 real images' in capsys.readouterr().out
    bad = [('data.root=/nonexistent', 'does not exist'),
           ('train.max_stepz=3', "unknown configuration key 'train.max_stepz'"),
           ('method.pseudo_label.conversion=log', 'conversion must be one of'),
           (f'model.init={tmp_path}', 'not in the Stable Diffusion 2 layout')]
    for override, message in bad:
        assert main(['--config', str(tmp_path / 'ok.yaml'), override, '--check']) == 2
        assert message in capsys.readouterr().err, override
    # a pseudo-label cache missing an image
    shutil.copytree(ws / 'data', tmp_path / 'data')
    os.remove(next((tmp_path / 'data' / 'labels' / 'labels').rglob('*.npy')))
    assert main(['--config', str(tmp_path / 'ok.yaml'), f'data.root={tmp_path / "data"}',
                 '--check']) == 2
    assert 'lacks 1 of 4 real images' in capsys.readouterr().err
    # an 8-channel (Marigold-style) UNet and a checkpoint without scheduler/
    eight = tmp_path / 'eight'
    shutil.copytree(ckpt, eight)
    conf = json.loads((eight / 'unet' / 'config.json').read_text())
    (eight / 'unet' / 'config.json').write_text(json.dumps(dict(conf, in_channels=8)))
    with pytest.raises(InitCheckpointError, match='takes 8'):
        resolve_init_checkpoint(str(eight))
    shutil.rmtree(eight / 'scheduler')
    with pytest.raises(InitCheckpointError, match='lacks scheduler/'):
        resolve_init_checkpoint(str(eight))


def test_config_base_files_and_overrides(tmp_path):
    from fiffdepth_ros.training.config import ConfigError, load_config
    (tmp_path / 'base.yaml').write_text(
        'train: {max_steps: 11, seed: 3}\nmethod: {gamma: 0.3}\n'
        'data: {synthetic: [{kind: hypersim}], real: {images: r}}\n')
    (tmp_path / 'main.yaml').write_text('base_config: [base.yaml]\ntrain: {max_steps: 12}\n')
    cfg = load_config(tmp_path / 'main.yaml', ['method.weights.traj=0.0', 'train.seed=9'])
    assert cfg['train']['max_steps'] == 12 and cfg['train']['seed'] == 9
    assert cfg['method']['gamma'] == 0.3 and cfg['method']['weights'] == \
        {'mae': 1.0, 'gm': 0.5, 'traj': 0.0}
    paper = load_config(ROOT / 'config' / 'train_fiffdepth.yaml')
    assert paper['method']['gamma'] == 0.5 and paper['method']['weights'] == \
        {'mae': 1.0, 'gm': 0.5, 'traj': 0.2}
    assert paper['train']['optimizer']['lr'] == 3e-5
    with pytest.raises(ConfigError, match='gamma'):
        load_config(tmp_path / 'main.yaml', ['method.gamma=2'])
    with pytest.raises(ConfigError, match='batch_size_real > 0'):
        load_config(tmp_path / 'main.yaml', ['data.real=null'])
