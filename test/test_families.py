"""The single-step families in one engine: each family's output against an independent
step-by-step implementation of its released procedure (Marigold: diffusers' own
MarigoldDepthPipeline), on tiny random checkpoints in each family's released layout."""
import functools
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiffdepth_ros.model.checkpoint import ModelLoadError
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.model.tiny import build_tiny_checkpoint
from sd_reference import load_sd_modules

rng = np.random.default_rng(7)
SIZES = [(97, 131, 40), (37, 29, 0)]     # (H, W, processing_res): resized (upscaled), native


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp('families')
    return {
        'e2e_ft': build_tiny_checkpoint(root / 'tiny-e2e-ft-depth', seed=1, family='e2e_ft'),
        'lotus_d': build_tiny_checkpoint(root / 'tiny-lotus-depth-d', seed=2, family='lotus_d'),
        'lotus_d_disparity': build_tiny_checkpoint(root / 'tiny-lotus-depth-d-disparity',
                                                   seed=3, family='lotus_d'),
        'marigold': build_tiny_checkpoint(root / 'tiny-marigold', seed=4, family='marigold'),
    }


_modules = functools.lru_cache(maxsize=None)(load_sd_modules)


def _latent_mean(vae, x):
    return torch.chunk(vae.quant_conv(vae.encoder(x)), 2, dim=1)[0] * 0.18215


def _decode(vae, z):
    return vae.decoder(vae.post_quant_conv(z / 0.18215))


def _bilinear(x, size):
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)


@torch.no_grad()
def e2e_ft_reference(path, image, res):
    """Marigold pipeline as E2E-FT runs it: 1 trailing DDIM step (t = 999) from zero noise,
    v-prediction -> x0, decode, min-max per prediction, resize back."""
    vae, unet, empty = _modules(path)
    cfg = json.loads((path / 'scheduler' / 'scheduler_config.json').read_text())
    assert cfg['beta_schedule'] == 'scaled_linear' and cfg['prediction_type'] == 'v_prediction'
    betas = torch.linspace(cfg['beta_start'] ** 0.5, cfg['beta_end'] ** 0.5,
                           cfg['num_train_timesteps'], dtype=torch.float32) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)[999]
    h, w = image.shape[:2]
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None]
    if res:
        f = min(res / w, res / h)
        rgb = torch.round(_bilinear(rgb.float(), (int(h * f), int(w * f)))).to(torch.uint8)
    latent = _latent_mean(vae, rgb / 255.0 * 2.0 - 1.0)
    x_t = torch.zeros_like(latent)
    v = unet(torch.cat([latent, x_t], 1), torch.tensor(999), encoder_hidden_states=empty).sample
    x0 = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v
    depth = (_decode(vae, x0).mean(1, keepdim=True).clip(-1, 1) + 1) / 2
    depth = (depth - depth.min()) / (depth.max() - depth.min())
    return _bilinear(depth, (h, w))[0, 0].clip(0, 1).numpy()


@torch.no_grad()
def lotus_d_reference(path, image, res):
    """LotusDPipeline + infer.py: x/127.5 - 1, float resize, t = 999 with the task embedding,
    x0 decoded, (x/2 + 0.5) clipped per channel, nearest-exact back, channel mean (with the
    latent's mean where the release samples it)."""
    vae, unet, empty = _modules(path)
    h, w = image.shape[:2]
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    if res:
        f = min(res / w, res / h)
        x = _bilinear(x, (int(h * f), int(w * f)))
    task = torch.tensor([[1.0, 0.0]])
    task = torch.cat([torch.sin(task), torch.cos(task)], dim=-1)
    pred = unet(_latent_mean(vae, x), torch.tensor([999]).long()[0],
                encoder_hidden_states=empty, class_labels=task).sample
    rgb = (_decode(vae, pred) * 0.5 + 0.5).clamp(0, 1)
    rgb = F.interpolate(rgb, size=(h, w), mode='nearest-exact')
    return rgb[0].permute(1, 2, 0).numpy().mean(axis=-1)


def _check_close(ours, ref):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    diff = np.abs(ours - ref)
    assert diff.max() < 1e-2 and diff.mean() < 1e-4, (diff.max(), diff.mean())


@pytest.mark.parametrize('h, w, res', SIZES)
def test_e2e_ft_equals_its_release_step_by_step(models, h, w, res):
    est = DepthEstimator.from_pretrained(str(models['e2e_ft']), device='cpu',
                                         processing_res=res)
    assert est.family == 'e2e_ft' and est.output_space == 'depth'
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours = est.predict(image)
    _check_close(ours, e2e_ft_reference(models['e2e_ft'], image, res))
    # Min-max normalised at processing size, before the resize back.
    depth = est.decode(est.run_unet(est.encode(est.preprocess([image]).pixels)))
    depth = est.strategy.normalise(depth)
    assert depth.min() == 0.0 and depth.max() == 1.0


@pytest.mark.parametrize('h, w, res', SIZES)
def test_lotus_d_equals_its_release_step_by_step(models, h, w, res):
    est = DepthEstimator.from_pretrained(str(models['lotus_d']), device='cpu',
                                         processing_res=res)
    assert est.family == 'lotus_d' and est.output_space == 'depth'
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    _check_close(est.predict(image), lotus_d_reference(models['lotus_d'], image, res))


def test_lotus_d_disparity_is_flagged_and_computed_alike(models):
    est = DepthEstimator.from_pretrained(str(models['lotus_d_disparity']), device='cpu',
                                         processing_res=64)
    assert est.family == 'lotus_d_disparity' and est.output_space == 'disparity'
    assert est.describe()['output_space'] == 'disparity'
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    _check_close(est.predict(image), lotus_d_reference(models['lotus_d_disparity'], image, 64))


def _marigold_reference(path, images, seed, channels_last=False, **kwargs):
    from diffusers import MarigoldDepthPipeline
    pipe = MarigoldDepthPipeline.from_pretrained(path)
    if channels_last:     # the engine's memory format: bit-near inputs to the ensembling
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(images, generator=torch.Generator().manual_seed(seed), output_type='np',
               **kwargs)
    return out.prediction[..., 0]


@pytest.mark.parametrize('steps, ensemble', [(0, 1), (2, 3)])
def test_marigold_is_diffusers_pipeline(models, steps, ensemble):
    est = DepthEstimator.from_pretrained(str(models['marigold']), device='cpu',
                                         processing_res=40, denoising_steps=steps,
                                         ensemble_size=ensemble, seed=11)
    assert est.family == 'marigold' and est.output_space == 'depth'
    info = est.describe()
    assert info['denoising_steps'] == (steps or 1) and info['ensemble_size'] == ensemble
    images = [rng.integers(0, 256, (27, 41, 3), dtype=np.uint8) for _ in range(2)]
    ours = est.predict_batch(images)
    # Ensembling aligns the members by an optimised scale and shift, which on a random tiny
    # model's predictions turns channels_last's 1e-6 differences into 1e-1: compared with the
    # pipeline in the engine's memory format there (bit-equal), in its own otherwise.
    ref = _marigold_reference(models['marigold'], images, 11, channels_last=ensemble > 1,
                              num_inference_steps=steps or None, ensemble_size=ensemble,
                              processing_resolution=40, batch_size=2)
    for o, r in zip(ours, ref):
        _check_close(o, r.astype(np.float32))
    # Every frame starts from the same seed: the same image gives the same depth again.
    np.testing.assert_array_equal(est.predict(images[0]), est.predict(images[0]))


def test_marigold_refuses_a_processing_res_off_the_vae_grid(models):
    est = DepthEstimator.from_pretrained(str(models['marigold']), device='cpu',
                                         processing_res=60)
    with pytest.raises(ValueError, match='multiple of 8'):
        est.predict(np.zeros((20, 30, 3), np.uint8))


# ----------------------------------------------------------------------------- detection
def _copy(src, dst, edit_unet=None, edit_index=None, drop_scheduler=False):
    shutil.copytree(src, dst)
    for name, edit in (('unet/config.json', edit_unet), ('model_index.json', edit_index)):
        if edit:
            data = json.loads((dst / name).read_text())
            edit(data)
            (dst / name).write_text(json.dumps(data))
    if drop_scheduler:
        shutil.rmtree(dst / 'scheduler')
    return dst


def test_each_layout_is_detected(models, tiny_checkpoint):
    from fiffdepth_ros.model.checkpoint import resolve_checkpoint
    from fiffdepth_ros.model.families import detect_family, read_info
    found = {name: detect_family(read_info(resolve_checkpoint(str(path))))
             for name, path in models.items()}
    assert found == {name: name for name in models}
    assert detect_family(read_info(resolve_checkpoint(str(tiny_checkpoint)))) == 'fiffdepth'


def test_the_pipeline_class_tells_same_layouts_apart(models, tmp_path):
    from fiffdepth_ros.model.checkpoint import resolve_checkpoint
    from fiffdepth_ros.model.families import detect_family, read_info

    def family_of(path):
        return detect_family(read_info(resolve_checkpoint(str(path))))
    # The E2E-FT layout without the name hint is what it claims to be: a Marigold pipeline.
    assert family_of(_copy(models['e2e_ft'], tmp_path / 'unnamed')) == 'marigold'

    def e2e_class(d):
        d['_class_name'] = 'E2EFTDepthPipeline'
    assert family_of(_copy(models['marigold'], tmp_path / 'trained', edit_index=e2e_class)) \
        == 'e2e_ft'


@pytest.mark.parametrize('edit_unet, edit_index, match', [
    (lambda d: d.update(in_channels=8), lambda d: d.update(_class_name='SomePipeline'),
     'neither the pipeline class nor the name'),
    (lambda d: d.update(in_channels=6), None, 'no supported family has this UNet layout'),
    (lambda d: d.update(in_channels=8, class_embed_type='projection',
                        projection_class_embeddings_input_dim=4), None, 'Lotus-G'),
    (None, lambda d: d.update(_class_name='LotusDPipeline'), 'names a lotus_d pipeline'),
    (None, lambda d: d.update(_class_name='MarigoldNormalsPipeline'), 'Marigold normals'),
])
def test_unknown_or_inconsistent_layouts_give_one_clear_error(tiny_checkpoint, tmp_path,
                                                             edit_unet, edit_index, match):
    path = _copy(tiny_checkpoint, tmp_path / 'odd', edit_unet, edit_index)
    with pytest.raises(ModelLoadError, match=match) as err:
        DepthEstimator.from_pretrained(str(path), device='cpu')
    assert 'Found: UNet in_channels=' in str(err.value)


def test_model_family_overrides_detection_but_must_fit_the_unet(models, tiny_checkpoint,
                                                                tmp_path):
    # Same layout: E2E-FT and Marigold checkpoints can be run as each other.
    est = DepthEstimator.from_pretrained(str(models['marigold']), device='cpu',
                                         processing_res=32, model_family='e2e_ft')
    assert est.family == 'e2e_ft' and est.predict(np.zeros((20, 30, 3), np.uint8)).shape \
        == (20, 30)
    # An 8-channel UNet fed as FiffDepth: one clear error, not a torch channel RuntimeError.
    with pytest.raises(ModelLoadError, match='fiffdepth needs a UNet with 4 input channels'):
        DepthEstimator.from_pretrained(str(models['e2e_ft']), device='cpu',
                                       model_family='fiffdepth')
    with pytest.raises(ModelLoadError, match='lotus_d needs a class embedding'):
        DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu',
                                       model_family='lotus_d')
    bare = _copy(models['e2e_ft'], tmp_path / 'bare-e2e-ft', drop_scheduler=True)
    with pytest.raises(ModelLoadError, match='scheduler_config.json'):
        DepthEstimator.from_pretrained(str(bare), device='cpu')
    with pytest.raises(ValueError, match="unknown model_family 'dpt'"):
        DepthEstimator.from_pretrained(str(tiny_checkpoint), model_family='dpt')


# ----------------------------------------------------------------------------- parameters
def test_params_offer_exactly_the_families():
    from fiffdepth_ros import params as P
    from fiffdepth_ros.model.families import FAMILY_CHOICES
    assert P.SPECS['model_family'].choices == FAMILY_CHOICES
    assert P.defaults()['model_family'] == 'auto' and P.defaults()['fit_space'] == 'auto'


class _Model:
    def __init__(self, output_space):
        self.output_space = output_space


@pytest.mark.parametrize('output_space, requested, fitted', [
    ('disparity', 'auto', 'inverse'), ('depth', 'auto', 'depth'),
    ('disparity', 'depth', 'depth'), ('depth', 'inverse', 'inverse')])
def test_fit_space_follows_the_model_unless_the_user_sets_it(output_space, requested, fitted):
    from fiffdepth_ros import params as P
    from fiffdepth_ros.pipeline import DepthPipeline, PipelineConfig
    config = PipelineConfig.from_params(P.validate({'fit_space': requested}))
    pipeline = DepthPipeline(_Model(output_space), config, backend=None)
    assert pipeline.config.scale.fit_space == fitted
    assert pipeline.scale.config.fit_space == fitted
    pipeline.update(min_range=0.2)                    # a later parameter change keeps it
    assert pipeline.scale.config.fit_space == fitted


def test_the_runtime_loader_passes_the_family_parameters(models):
    from fiffdepth_ros import params as P
    from fiffdepth_ros.model.runtime import load_estimator
    p = P.validate({'model': str(models['marigold']), 'device': 'cpu', 'processing_res': 32,
                    'model_family': 'marigold', 'denoising_steps': 2, 'ensemble_size': 1,
                    'seed': 5})
    est = load_estimator(p)
    assert (est.family, est.strategy.denoising_steps, est.strategy.seed) == ('marigold', 2, 5)
    p = P.validate({'model': str(models['lotus_d_disparity']), 'device': 'cpu'})
    assert load_estimator(p).output_space == 'disparity'


def test_fiffdepth_predict_runs_any_family_and_says_disparity(models, tmp_path, capsys):
    import cv2

    from fiffdepth_ros.cli.predict import main
    rgb = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), rgb[..., ::-1])
    code = main(['--model', str(models['lotus_d_disparity']), '--input', str(tmp_path / 'a.png'),
                 '--output', str(tmp_path / 'out'), '--processing-res', '32', '--device', 'cpu'])
    assert code == 0 and 'disparity (larger = nearer)' in capsys.readouterr().err
    est = DepthEstimator.from_pretrained(str(models['lotus_d_disparity']), device='cpu',
                                         processing_res=32)
    np.testing.assert_allclose(np.load(tmp_path / 'out' / 'a.npy'), est.predict(rgb), atol=1e-6)
    code = main(['--model', str(models['e2e_ft']), '--input', str(tmp_path / 'a.png'),
                 '--output', str(tmp_path / 'out2'), '--processing-res', '32', '--device', 'cpu',
                 '--model-family', 'fiffdepth'])
    assert code == 1 and 'fiffdepth needs a UNet with 4 input channels' in capsys.readouterr().err


def test_a_lotus_checkpoint_named_neither_way_is_taken_as_depth_with_a_warning(models,
                                                                               tmp_path,
                                                                               caplog):
    import logging

    from fiffdepth_ros.model.checkpoint import resolve_checkpoint
    from fiffdepth_ros.model.families import detect_family, read_info
    renamed = _copy(models['lotus_d_disparity'], tmp_path / 'lotus')
    with caplog.at_level(logging.WARNING):
        assert detect_family(read_info(resolve_checkpoint(str(renamed)))) == 'lotus_d'
    assert 'model_family: lotus_d_disparity' in caplog.text
