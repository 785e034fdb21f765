"""The ablation switches of issue 13: method.real_supervision (filter | direct), the trajectory
weight 0 and no real-domain data, on a tiny SD2-like UNet.

'direct' is checked against an independent step-by-step computation: the UNet called by hand at
t = 0 on the real latents, the masked MAE and the multi-scale gradient matching written out here
(not losses.py), so a change in what the switch supervises is caught."""
from pathlib import Path

import pytest
import torch

from fiffdepth_ros.training import step as step_mod
from fiffdepth_ros.training.config import ConfigError, load_config
from fiffdepth_ros.training.step import MethodSettings, StepInputs, fiffdepth_loss

pytestmark = pytest.mark.usefixtures('one_torch_thread')
ROOT = Path(__file__).resolve().parents[1]
ROOT_CONFIG = ROOT / 'config' / 'train_fiffdepth.yaml'
NANO_CONFIG = ROOT / 'config' / 'nano' / 'fiffdepth.yaml'


EMB = torch.randn(1, 2, 32, generator=torch.Generator().manual_seed(3))


def _inputs(seed=1, syn=True):
    g = torch.Generator().manual_seed(seed)
    out = StepInputs()
    if syn:
        out.syn_latent = torch.randn(2, 4, 8, 8, generator=g)
        out.syn_target = torch.randn(2, 4, 8, 8, generator=g) * 0.5
        out.syn_mask = torch.rand(2, 1, 8, 8, generator=g) < 0.8
        out.traj_t, out.traj_noise = torch.tensor([5, 600]), torch.randn(2, 4, 8, 8, generator=g)
    out.real_latent = torch.randn(2, 4, 8, 8, generator=g)
    out.real_target = torch.randn(2, 4, 8, 8, generator=g) * 0.5
    # A partly invalid real mask, so the masking of the direct terms is exercised too.
    out.real_mask = torch.rand(2, 1, 8, 8, generator=g) < 0.9
    return out


def _mae_by_hand(pred, target, mask):
    per_image = []
    for b in range(pred.shape[0]):
        cells = mask[b, 0]
        diffs = [(pred[b, c] - target[b, c]).abs()[cells] for c in range(pred.shape[1])]
        per_image.append(torch.cat(diffs).mean())
    return torch.stack(per_image).mean()


def _gm_by_hand(pred, target, mask, scales):
    per_image = []
    for b in range(pred.shape[0]):
        total = 0.0
        for k in range(scales):
            s = 2 ** k
            r = (pred[b] - target[b])[:, ::s, ::s]
            m = mask[b, 0, ::s, ::s].float()
            acc = 0.0
            for c in range(r.shape[0]):
                for y in range(r.shape[1]):
                    for x in range(r.shape[2]):
                        if x + 1 < r.shape[2] and m[y, x] and m[y, x + 1]:
                            acc = acc + (r[c, y, x + 1] - r[c, y, x]).abs()
                        if y + 1 < r.shape[1] and m[y, x] and m[y + 1, x]:
                            acc = acc + (r[c, y + 1, x] - r[c, y, x]).abs()
            total = total + acc / (m.sum() * r.shape[0])
        per_image.append(total)
    return torch.stack([torch.as_tensor(v) for v in per_image]).mean()


def test_direct_terms_equal_an_independent_computation(unet, alphas):
    settings = MethodSettings(w_mae=1.0, w_gm=0.5, w_traj=0.0, gm_scales=2,
                              real_supervision='direct')
    inputs = _inputs(syn=False)
    terms, outputs = fiffdepth_loss(unet, EMB, alphas, inputs, settings)
    terms = {k: v.detach() for k, v in terms.items()}
    assert set(terms) == {'loss', 'mae_t0_real', 'gm_t0_real'}
    assert 'd_filter' not in outputs
    with torch.no_grad():
        d0 = unet(inputs.real_latent, torch.tensor(0), encoder_hidden_states=EMB.expand(2, -1, -1),
                  return_dict=False)[0].float()
    mae = _mae_by_hand(d0, inputs.real_target, inputs.real_mask)
    gm = _gm_by_hand(d0, inputs.real_target, inputs.real_mask, 2)
    assert float(terms['mae_t0_real']) == pytest.approx(float(mae), rel=1e-5)
    assert float(terms['gm_t0_real']) == pytest.approx(float(gm), rel=1e-5)
    assert float(terms['loss']) == pytest.approx(float(mae + 0.5 * gm), rel=1e-5)
    torch.testing.assert_close(outputs['d0_real'].detach().float(), d0)


def test_direct_makes_one_t0_pass_on_real_images_and_no_filter_pass(unet, alphas, monkeypatch):
    seen = []
    real_forward = unet.forward

    def spy(sample, timestep, *a, **k):
        seen.append((sample.shape[0], torch.as_tensor(timestep).flatten().tolist()))
        return real_forward(sample, timestep, *a, **k)
    monkeypatch.setattr(unet, 'forward', spy)
    fiffdepth_loss(unet, EMB, alphas, _inputs(), MethodSettings(real_supervision='direct'))
    steps = [t for _, t in seen]
    assert steps == [[0], [5, 600], [0]]          # synthetic t = 0, trajectory, real t = 0
    assert not any(-1 in t for t in steps)
    seen.clear()
    fiffdepth_loss(unet, EMB, alphas, _inputs(), MethodSettings())
    assert [t for _, t in seen] == [[0], [5, 600], [0], [-1]]      # the method: t = -1 pass


def test_direct_gradient_reaches_the_unet(unet, alphas):
    unet.zero_grad(set_to_none=True)
    terms, _ = fiffdepth_loss(unet, EMB, alphas, _inputs(syn=False),
                              MethodSettings(real_supervision='direct'))
    terms['loss'].backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:3])
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # The first conv sees only the real latents in this step: its gradient is theirs.
    assert float(unet.conv_in.weight.grad.abs().sum()) > 0
    unet.zero_grad(set_to_none=True)


def test_filter_stays_the_default_and_unchanged(unet, alphas):
    cfg = load_config(ROOT_CONFIG)
    assert cfg['method']['real_supervision'] == 'filter'
    from fiffdepth_ros.training.config import DEFAULTS
    assert DEFAULTS['method']['real_supervision'] == 'filter'            # the code's default
    settings = MethodSettings.from_config(cfg['method'], 'v_prediction')
    assert settings.real_supervision == 'filter'
    inputs = _inputs()
    terms, outputs = fiffdepth_loss(unet, EMB, alphas, inputs, settings)
    terms = {k: v.detach() for k, v in terms.items()}
    assert {'mae_t-1', 'gm_t-1'} <= set(terms) and 'mae_t0_real' not in terms
    # The filter branch by hand: U(U(x0_real, 0), -1) against the pseudo-label latent.
    with torch.no_grad():
        emb = EMB.expand(2, -1, -1)
        d0 = unet(inputs.real_latent, torch.tensor(0), encoder_hidden_states=emb,
                  return_dict=False)[0]
        d_filter = unet(d0, torch.tensor(-1), encoder_hidden_states=emb,
                        return_dict=False)[0].float()
    assert float(terms['mae_t-1']) == pytest.approx(
        float(_mae_by_hand(d_filter, inputs.real_target, inputs.real_mask)), rel=1e-5)


def test_real_supervision_is_validated():
    cfg = load_config(ROOT_CONFIG, ['method.real_supervision=direct'])
    assert MethodSettings.from_config(cfg['method'], 'v_prediction').real_supervision == 'direct'
    with pytest.raises(ConfigError, match='method.real_supervision must be one of'):
        load_config(ROOT_CONFIG, ['method.real_supervision=teacher'])
    assert step_mod.REAL_SUPERVISION == ('filter', 'direct')


def test_no_trajectory_and_no_real_data_overrides(unet, alphas):
    """'Without the trajectory loss' is method.weights.traj=0 (no trajectory pass at all);
    'without real-domain data' is data.real=null with train.batch_size_real=0."""
    cfg = load_config(NANO_CONFIG, ['method.weights.traj=0'])
    settings = MethodSettings.from_config(cfg['method'], 'v_prediction')
    terms, outputs = fiffdepth_loss(unet, EMB, alphas, _inputs(), settings)
    assert 'traj' not in terms and 'v' not in outputs
    cfg = load_config(NANO_CONFIG, ['data.real=null',
                                                      'train.batch_size_real=0'])
    assert cfg['data']['real'] is None
    with pytest.raises(ConfigError, match='data.real is not set'):
        load_config(NANO_CONFIG, ['data.real=null'])
