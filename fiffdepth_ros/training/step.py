"""One FiffDepth training step: the three uses of the one UNet and the weighted loss.

    1. feed-forward depth   d0 = U(x0_syn, t=0)                  vs d0*  (synthetic GT latent)
    2. learnable filter     d_-1 = U(U(x0_real, t=0), t=-1)      vs the pseudo-label latent
    3. trajectory           U(b_t, t), b_t = noised gamma x0 + (1 - gamma) d0*, vs v_t

L = sum_{t in 0, -1} [L_MAE + w_gm L_GM] + w_traj L_traj (weights from the configuration).
Ablation ``method.real_supervision: direct`` (the paper's "without the t = -1 filter"): use 2
becomes d0_real = U(x0_real, t=0) vs the pseudo-label latent, the same MAE + GM terms
('mae_t0_real', 'gm_t0_real'), and no t = -1 pass; 'filter' (the default) is the method.
Gradients reach the t = 0 prediction through the t = -1 branch (no detach), so real images
improve d0. The timestep -1 goes straight into the sinusoidal timestep embedding; only the
trajectory's t (>= 1) ever indexes the noise schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.stages import unet_pass
from .losses import depth_terms, trajectory_loss

FILTER_TIMESTEP = -1
REAL_SUPERVISION = ('filter', 'direct')     # method.real_supervision


@dataclass
class MethodSettings:
    gamma: float = 0.5
    w_mae: float = 1.0
    w_gm: float = 0.5
    w_traj: float = 0.2
    gm_scales: int = 4
    prediction_type: str = 'v_prediction'    # the checkpoint's scheduler config says
    real_supervision: str = 'filter'         # 'direct': the ablation without the t = -1 filter

    @classmethod
    def from_config(cls, method: dict, prediction_type: str) -> 'MethodSettings':
        w = method['weights']
        return cls(gamma=float(method['gamma']), w_mae=float(w['mae']), w_gm=float(w['gm']),
                   w_traj=float(w['traj']), gm_scales=int(method['gm_scales']),
                   prediction_type=prediction_type,
                   real_supervision=str(method.get('real_supervision', 'filter')))


@dataclass
class StepInputs:
    """Latents (frozen VAE, no grad) and per-sample draws of one micro-batch on one process."""

    syn_latent: torch.Tensor | None = None      # x0, (Bs, 4, h, w)
    syn_target: torch.Tensor | None = None      # d0*
    syn_mask: torch.Tensor | None = None        # (Bs, 1, h, w) bool
    traj_t: torch.Tensor | None = None          # (Bs,) long, >= 1
    traj_noise: torch.Tensor | None = None      # eps, like syn_latent
    real_latent: torch.Tensor | None = None     # (Br, 4, h', w')
    real_target: torch.Tensor | None = None     # pseudo-label latent
    real_mask: torch.Tensor | None = None


def schedule_coefficients(alphas_cumprod: torch.Tensor, t: torch.Tensor):
    """(sqrt(a_t), sqrt(1 - a_t)) as (B, 1, 1, 1). Only trajectory timesteps come here: a
    negative index would silently wrap to the last step (999), so it is refused."""
    if t.dtype not in (torch.int32, torch.int64) or int(t.min()) < 1 \
            or int(t.max()) >= alphas_cumprod.shape[0]:
        raise ValueError(f'trajectory timesteps must be integers in [1, '
                         f'{alphas_cumprod.shape[0] - 1}], got {t.tolist()}')
    a = alphas_cumprod.to(t.device)[t].float().view(-1, 1, 1, 1)
    return a.sqrt(), (1.0 - a).sqrt()


def trajectory_sample(x0, d0_target, noise, t, alphas_cumprod, gamma: float,
                      prediction_type: str = 'v_prediction'):
    """(b_t, regression target): b0 = gamma x0 + (1 - gamma) d0*, b_t = sqrt(a) b0 +
    sqrt(1 - a) eps; target v = sqrt(a) eps - sqrt(1 - a) b0 (eps / b0 for epsilon / sample
    prediction checkpoints)."""
    sa, sb = schedule_coefficients(alphas_cumprod, t)
    b0 = gamma * x0.float() + (1.0 - gamma) * d0_target.float()
    noise = noise.float()
    b_t = sa * b0 + sb * noise
    if prediction_type == 'v_prediction':
        target = sa * noise - sb * b0
    elif prediction_type == 'epsilon':
        target = noise
    elif prediction_type == 'sample':
        target = b0
    else:
        raise ValueError(f"unknown prediction_type '{prediction_type}'")
    return b_t, target


def feed_forward_terms(unet, embedding, inputs: StepInputs, settings: MethodSettings):
    """Use 1: d0 = U(x0, 0) against the synthetic GT latent -> ({mae_t0, gm_t0}, d0)."""
    dtype = next(unet.parameters()).dtype
    d0 = unet_pass(unet, inputs.syn_latent.to(dtype), 0, embedding)
    mae, gm = depth_terms(d0, inputs.syn_target, inputs.syn_mask, settings.gm_scales)
    return {'mae_t0': mae, 'gm_t0': gm}, d0


def trajectory_terms(unet, embedding, alphas_cumprod, inputs: StepInputs,
                     settings: MethodSettings):
    """Use 3: U(b_t, t) against the v target -> ({traj}, prediction)."""
    dtype = next(unet.parameters()).dtype
    b_t, v_target = trajectory_sample(inputs.syn_latent, inputs.syn_target, inputs.traj_noise,
                                      inputs.traj_t, alphas_cumprod, settings.gamma,
                                      settings.prediction_type)
    v_pred = unet_pass(unet, b_t.to(dtype), inputs.traj_t, embedding)
    return {'traj': trajectory_loss(v_pred, v_target)}, v_pred


def filter_terms(unet, embedding, inputs: StepInputs, settings: MethodSettings):
    """Use 2: d_-1 = U(U(x0_real, 0), -1) against the pseudo-label latent (no detach: the
    gradient reaches d0_real) -> ({mae_t-1, gm_t-1}, d0_real, d_filter)."""
    dtype = next(unet.parameters()).dtype
    d0_real = unet_pass(unet, inputs.real_latent.to(dtype), 0, embedding)
    d_filter = unet_pass(unet, d0_real, FILTER_TIMESTEP, embedding)
    mae, gm = depth_terms(d_filter, inputs.real_target, inputs.real_mask, settings.gm_scales)
    return {'mae_t-1': mae, 'gm_t-1': gm}, d0_real, d_filter


def direct_terms(unet, embedding, inputs: StepInputs, settings: MethodSettings):
    """Ablation of use 2: d0_real = U(x0_real, 0) against the pseudo-label latent directly (no
    t = -1 pass) -> ({mae_t0_real, gm_t0_real}, d0_real)."""
    dtype = next(unet.parameters()).dtype
    d0_real = unet_pass(unet, inputs.real_latent.to(dtype), 0, embedding)
    mae, gm = depth_terms(d0_real, inputs.real_target, inputs.real_mask, settings.gm_scales)
    return {'mae_t0_real': mae, 'gm_t0_real': gm}, d0_real


def weighted_total(terms: dict, settings: MethodSettings) -> torch.Tensor:
    """sum over t in {0, -1} of [w_mae L_MAE + w_gm L_GM] + w_traj L_traj (present terms)."""
    total = None
    for key, value in terms.items():
        weight = {'mae': settings.w_mae, 'gm': settings.w_gm,
                  'traj': settings.w_traj}[key.split('_')[0]]
        total = weight * value if total is None else total + weight * value
    if total is None:
        raise ValueError('empty step: neither synthetic nor real samples')
    return total


def fiffdepth_loss(unet, embedding: torch.Tensor, alphas_cumprod: torch.Tensor,
                   inputs: StepInputs, settings: MethodSettings):
    """(terms, outputs): terms are the scalar losses ('loss' the weighted total; 'mae_t0',
    'gm_t0', 'mae_t-1', 'gm_t-1' (or 'mae_t0_real', 'gm_t0_real' with real_supervision
    'direct'), 'traj' as present); outputs the predictions (for tests and logging). Pure: no
    randomness, no global state."""
    terms: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    if inputs.syn_latent is not None:
        part, outputs['d0'] = feed_forward_terms(unet, embedding, inputs, settings)
        terms.update(part)
        if settings.w_traj:
            part, outputs['v'] = trajectory_terms(unet, embedding, alphas_cumprod, inputs,
                                                  settings)
            terms.update(part)
    if inputs.real_latent is not None and settings.real_supervision == 'direct':
        part, outputs['d0_real'] = direct_terms(unet, embedding, inputs, settings)
        terms.update(part)
    elif inputs.real_latent is not None:
        part, outputs['d0_real'], outputs['d_filter'] = filter_terms(unet, embedding, inputs,
                                                                     settings)
        terms.update(part)
    terms['loss'] = weighted_total(terms, settings)
    return terms, outputs


def per_sample_draws(seeds: torch.Tensor, latent_shape, num_train_timesteps: int,
                     t_min: int = 1):
    """Trajectory timestep (uniform in [t_min, T - 1]) and noise of each sample, from the
    sample's own seed: the same sample gets the same draws however the batch is split."""
    ts, noises = [], []
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(int(seed))
        ts.append(int(torch.randint(int(t_min), int(num_train_timesteps), (1,), generator=g)))
        noises.append(torch.randn(tuple(latent_shape), generator=g))
    return torch.tensor(ts, dtype=torch.long), torch.stack(noises)


@torch.no_grad()
def build_inputs(batch: dict, vae, scaling_factor: float, num_train_timesteps: int,
                 method: dict, device) -> StepInputs:
    """A collated micro-batch (see data.mixing.collate) -> StepInputs: images and targets
    through the frozen VAE, validity max-pooled to the latent grid, per-sample draws."""
    from ..model.stages import encode_image
    from .targets import encode_depth, latent_mask, normalized_target, \
        pseudo_label_to_normalized, vae_factor
    dtype = next(vae.encoder.parameters()).dtype
    factor = vae_factor(vae)
    q = float(method['depth_quantile'])
    space = method.get('target_space', 'depth')
    out = StepInputs()
    syn = batch.get('syn')
    if syn is not None:
        valid = syn['valid'].to(device)
        x0 = encode_image(vae, syn['rgb'].to(device, dtype), scaling_factor).float()
        norm = normalized_target(syn['depth'].to(device), valid, q, space)
        out.syn_latent = x0
        out.syn_target = encode_depth(vae, norm, scaling_factor).float()
        out.syn_mask = latent_mask(valid, factor)
        t, noise = per_sample_draws(syn['seed'], x0.shape[1:], num_train_timesteps,
                                    method.get('timesteps_min', 1))
        out.traj_t, out.traj_noise = t.to(device), noise.to(device)
    real = batch.get('real')
    if real is not None:
        pl = method['pseudo_label']
        norm = pseudo_label_to_normalized(real['label'].to(device), pl['conversion'], q,
                                          float(pl.get('max_depth_ratio', 20.0)), space)
        out.real_latent = encode_image(vae, real['rgb'].to(device, dtype), scaling_factor).float()
        out.real_target = encode_depth(vae, norm, scaling_factor).float()
        out.real_mask = torch.ones_like(out.real_latent[:, :1], dtype=torch.bool)
    return out
