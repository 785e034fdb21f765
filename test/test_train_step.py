"""The training step with a tiny SD2-like UNet: terms, the t = -1 branch, the schedule, descent."""
import pytest
import torch

from fiffdepth_ros.training import step as step_mod
from fiffdepth_ros.training.step import MethodSettings, StepInputs, fiffdepth_loss


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _inputs(seed=0, syn=True, real=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)            # noqa: E731
    out = StepInputs()
    if syn:
        out.syn_latent, out.syn_target = r(2, 4, 8, 8), r(2, 4, 8, 8) * 0.5
        out.syn_mask = torch.rand(2, 1, 8, 8, generator=g) < 0.8
        out.traj_t = torch.tensor([3, 700])
        out.traj_noise = r(2, 4, 8, 8)
    if real:
        out.real_latent, out.real_target = r(2, 4, 8, 8), r(2, 4, 8, 8) * 0.5
        out.real_mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    return out


EMB = torch.randn(1, 2, 32, generator=torch.Generator().manual_seed(9))


def test_total_is_the_weighted_sum(unet, alphas):
    s = MethodSettings(w_mae=1.0, w_gm=0.5, w_traj=0.2)
    terms, _ = fiffdepth_loss(unet, EMB, alphas, _inputs(), s)
    assert set(terms) == {'loss', 'mae_t0', 'gm_t0', 'traj', 'mae_t-1', 'gm_t-1'}
    expected = (terms['mae_t0'] + 0.5 * terms['gm_t0'] + terms['mae_t-1']
                + 0.5 * terms['gm_t-1'] + 0.2 * terms['traj'])
    assert float(terms['loss'].detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_unet_uses_and_timesteps(unet, alphas, monkeypatch):
    """Four UNet evaluations with timesteps 0, t, 0, -1; the schedule only sees t >= 1."""
    seen, indexed = [], []
    real_forward = unet.forward

    def spy(sample, timestep, *a, **k):
        seen.append(torch.as_tensor(timestep).flatten().tolist())
        return real_forward(sample, timestep, *a, **k)

    real_coeffs = step_mod.schedule_coefficients

    def spy_coeffs(a, t):
        indexed.append(t.tolist())
        return real_coeffs(a, t)

    monkeypatch.setattr(unet, 'forward', spy)
    monkeypatch.setattr(step_mod, 'schedule_coefficients', spy_coeffs)
    fiffdepth_loss(unet, EMB, alphas, _inputs(), MethodSettings())
    assert seen == [[0], [3, 700], [0], [-1]]
    assert indexed == [[3, 700]]


def test_filter_timestep_is_not_wrapped_to_999(unet):
    """U(x, -1) is its own function, not U(x, 999) (what schedule[-1] would have given)."""
    from fiffdepth_ros.model.stages import unet_pass
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b, c = (unet_pass(unet, x, t, EMB) for t in (-1, 999, 0))
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-4


def test_filter_branch_sends_gradient_into_the_t0_prediction(unet, alphas):
    inputs = _inputs(syn=False)
    terms, outputs = fiffdepth_loss(unet, EMB, alphas, inputs, MethodSettings())
    outputs['d0_real'].retain_grad()
    unet.zero_grad()
    terms['loss'].backward()
    assert outputs['d0_real'].grad is not None and outputs['d0_real'].grad.abs().sum() > 0
    with_path = [p.grad.clone() for p in unet.parameters()]
    # The same loss with d0_real detached: the parameters get a different gradient, so the
    # real branch's gradient does pass through the t = 0 prediction.
    from fiffdepth_ros.model.stages import unet_pass
    from fiffdepth_ros.training.losses import depth_terms
    unet.zero_grad()
    d0 = unet_pass(unet, inputs.real_latent, 0, EMB).detach()
    mae, gm = depth_terms(unet_pass(unet, d0, -1, EMB), inputs.real_target, inputs.real_mask)
    (mae + 0.5 * gm).backward()
    detached_path = float((mae + 0.5 * gm).detach())
    assert detached_path == pytest.approx(float(terms['loss'].detach()), rel=1e-5)
    conv_in = list(unet.parameters())[0]
    assert not torch.allclose(conv_in.grad, with_path[0])
    unet.zero_grad()


def test_one_step_lowers_the_loss_on_its_batch(alphas):
    from diffusers import UNet2DConditionModel
    from fiffdepth_ros.model.tiny import TINY_UNET
    torch.manual_seed(1)
    net = UNet2DConditionModel(**TINY_UNET).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    inputs = _inputs(seed=3)
    before, _ = fiffdepth_loss(net, EMB, alphas, inputs, MethodSettings())
    before['loss'].backward()
    opt.step()
    with torch.no_grad():
        after, _ = fiffdepth_loss(net, EMB, alphas, inputs, MethodSettings())
    assert float(after['loss']) < float(before['loss'].detach())


def test_per_sample_draws_do_not_depend_on_the_batch_split():
    seeds = torch.tensor([11, 22, 33, 44])
    t, eps = step_mod.per_sample_draws(seeds, (4, 3, 3), 1000)
    t2, eps2 = step_mod.per_sample_draws(seeds[2:], (4, 3, 3), 1000)
    assert torch.equal(t[2:], t2) and torch.equal(eps[2:], eps2)
    assert int(t.min()) >= 1 and int(t.max()) <= 999 and len(set(t.tolist())) > 1
