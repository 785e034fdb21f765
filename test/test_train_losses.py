"""FiffDepth losses and targets against independent step-by-step formulas."""
import numpy as np
import pytest
import torch

from fiffdepth_ros.training import losses, targets
from fiffdepth_ros.training.step import schedule_coefficients, trajectory_sample


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mask(shape, seed, p=0.7):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


def test_masked_mae_matches_loop():
    pred, target, mask = _rand((3, 4, 5, 6), 0), _rand((3, 4, 5, 6), 1), _mask((3, 1, 5, 6), 2)
    per_image = []
    for b in range(3):
        vals = [abs(float(pred[b, c, y, x] - target[b, c, y, x]))
                for c in range(4) for y in range(5) for x in range(6) if mask[b, 0, y, x]]
        per_image.append(sum(vals) / len(vals))
    assert float(losses.masked_mae(pred, target, mask)) == pytest.approx(np.mean(per_image),
                                                                         rel=1e-12)


def _gm_reference(pred, target, mask, scales):
    """MiDaS gradient matching written out pixel by pixel (numpy)."""
    r_full = (pred - target).numpy()
    m_full = mask.numpy()
    out = []
    for b in range(r_full.shape[0]):
        total = 0.0
        for k in range(scales):
            s = 2 ** k
            r, m = r_full[b, :, ::s, ::s], m_full[b, 0, ::s, ::s]
            acc = 0.0
            for c in range(r.shape[0]):
                for y in range(r.shape[1]):
                    for x in range(r.shape[2]):
                        if x + 1 < r.shape[2] and m[y, x] and m[y, x + 1]:
                            acc += abs(r[c, y, x + 1] - r[c, y, x])
                        if y + 1 < r.shape[1] and m[y, x] and m[y + 1, x]:
                            acc += abs(r[c, y + 1, x] - r[c, y, x])
            total += acc / (m.sum() * r.shape[0])
        out.append(total)
    return float(np.mean(out))


@pytest.mark.parametrize('scales', [1, 3])
def test_gradient_matching_matches_reference(scales):
    pred, target, mask = _rand((2, 4, 9, 11), 3), _rand((2, 4, 9, 11), 4), _mask((2, 1, 9, 11), 5)
    got = float(losses.gradient_matching(pred, target, mask, scales))
    assert got == pytest.approx(_gm_reference(pred, target, mask, scales), rel=1e-10)


def test_gradient_matching_ignores_a_constant_offset():
    """Only the residual's gradients count: a shifted prediction costs nothing."""
    target, mask = _rand((1, 4, 8, 8), 6), _mask((1, 1, 8, 8), 7)
    shifted = float(losses.gradient_matching(target + 3.0, target, mask))
    assert shifted == pytest.approx(0, abs=1e-12)
    assert float(losses.gradient_matching(target + _rand((1, 4, 8, 8), 8), target, mask)) > 0.1


def test_per_image_reduction_splits_like_the_whole_batch():
    """Halves averaged = the whole batch (what makes 2 processes equal 1 with both halves)."""
    pred, target, mask = _rand((4, 4, 6, 6), 9), _rand((4, 4, 6, 6), 10), _mask((4, 1, 6, 6), 11)
    mask[0, 0, :4] = False                       # very different valid counts per image
    for fn in (losses.masked_mae, losses.gradient_matching):
        whole = fn(pred, target, mask)
        halves = (fn(pred[:2], target[:2], mask[:2]) + fn(pred[2:], target[2:], mask[2:])) / 2
        assert float(whole) == pytest.approx(float(halves), rel=1e-12)


def test_trajectory_loss_is_mean_squared_error():
    a, b = _rand((2, 4, 3, 3), 12), _rand((2, 4, 3, 3), 13)
    assert float(losses.trajectory_loss(a, b)) == pytest.approx(float(((a - b) ** 2).mean()))


def test_quantile_normalize_matches_numpy():
    depth = torch.rand(2, 1, 10, 12, generator=torch.Generator().manual_seed(0)) * 10 + 1
    valid = _mask((2, 1, 10, 12), 1)
    out = targets.quantile_normalize(depth, valid, 0.02)
    for b in range(2):
        d = depth[b, 0].numpy().astype(np.float64)
        v = valid[b, 0].numpy()
        lo, hi = np.quantile(d[v], [0.02, 0.98])
        ref = np.clip((d - lo) / (hi - lo) * 2 - 1, -1, 1)
        np.testing.assert_allclose(out[b, 0].numpy()[v], ref[v], atol=1e-5)
        assert np.all(out[b, 0].numpy()[~v] == 1.0)         # invalid -> far plane
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0


def test_latent_mask_is_an_8x8_max_pool():
    valid = torch.zeros(1, 1, 16, 24, dtype=torch.bool)
    valid[0, 0, 3, 17] = True                   # one valid pixel in block (0, 2)
    valid[0, 0, 8:, :8] = True                  # a fully valid block (1, 0)
    m = targets.latent_mask(valid)
    assert m.shape == (1, 1, 2, 3)
    assert m[0, 0].tolist() == [[False, False, True], [True, False, False]]


def test_pseudo_label_conversions_order_and_range():
    depth = torch.linspace(1.0, 10.0, 64).view(1, 1, 8, 8)
    disparity = 3.0 / depth + 0.2                              # affine disparity of that depth
    for conversion in targets.PSEUDO_LABEL_CONVERSIONS:
        out = targets.pseudo_label_to_normalized(disparity, conversion)
        flat = out.flatten()
        assert float(flat.min()) == -1.0 and float(flat.max()) == 1.0
        assert torch.all(flat[1:] >= flat[:-1])               # ordered like depth
    # inverse: with max ratio r, the normalised disparity u maps to 1 / (u (1 - 1/r) + 1/r)
    u = (targets.quantile_normalize(disparity, torch.ones_like(disparity, dtype=torch.bool))
         + 1) / 2
    ref = 1.0 / (u * (1 - 1 / 20.0) + 1 / 20.0)
    torch.testing.assert_close(targets.disparity_to_depth_inverse(disparity), ref)
    # reciprocal: 1 / disparity (shift taken as 0), so a zero-shift disparity gives the
    # depth target itself
    exact = targets.pseudo_label_to_normalized(3.0 / depth, 'reciprocal', max_depth_ratio=100)
    torch.testing.assert_close(exact, targets.quantile_normalize(
        depth, torch.ones_like(depth, dtype=torch.bool)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='unknown pseudo-label conversion'):
        targets.pseudo_label_to_normalized(disparity, 'bogus')


def test_trajectory_sample_matches_diffusers_scheduler():
    """b_t and the v target against diffusers' own add_noise and get_velocity."""
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012,
                          prediction_type='v_prediction')
    x0, d0, eps = _rand((3, 4, 5, 5), 1).float(), _rand((3, 4, 5, 5), 2).float(), \
        _rand((3, 4, 5, 5), 3).float()
    t = torch.tensor([1, 500, 999])
    b_t, v = trajectory_sample(x0, d0, eps, t, sched.alphas_cumprod, gamma=0.5)
    b0 = 0.5 * x0 + 0.5 * d0
    torch.testing.assert_close(b_t, sched.add_noise(b0, eps, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, sched.get_velocity(b0, eps, t), rtol=1e-5, atol=1e-5)
    _, eps_target = trajectory_sample(x0, d0, eps, t, sched.alphas_cumprod, 0.5, 'epsilon')
    torch.testing.assert_close(eps_target, eps)


def test_schedule_refuses_the_filter_timestep():
    """-1 would wrap to step 999 if it ever indexed the schedule: refused."""
    alphas = torch.linspace(0.99, 0.01, 1000)
    with pytest.raises(ValueError, match='trajectory timesteps'):
        schedule_coefficients(alphas, torch.tensor([-1]))
    with pytest.raises(ValueError):
        schedule_coefficients(alphas, torch.tensor([0]))
    sa, sb = schedule_coefficients(alphas, torch.tensor([999]))
    assert float(sa) ** 2 == pytest.approx(0.01, rel=1e-5)


def test_disparity_target_matches_numpy_and_orders_near_high():
    """method.target_space: disparity -- 1 / depth on valid pixels, the same quantile
    normalisation, holes filled as far (-1); checked against a numpy computation."""
    depth = torch.rand(2, 1, 10, 12, generator=torch.Generator().manual_seed(3)) * 20 + 0.5
    valid = _mask((2, 1, 10, 12), 4)
    out = targets.normalized_target(depth, valid, 0.02, 'disparity')
    for b in range(2):
        d = depth[b, 0].numpy().astype(np.float64)
        v = valid[b, 0].numpy()
        disp = 1.0 / d[v]
        lo, hi = np.quantile(disp, [0.02, 0.98])
        ref = np.clip((disp - lo) / (hi - lo) * 2 - 1, -1, 1)
        np.testing.assert_allclose(out[b, 0].numpy()[v], ref, atol=1e-5)
        assert np.all(out[b, 0].numpy()[~v] == -1.0)        # invalid -> far, i.e. low disparity
        near, far = np.unravel_index(np.argmin(np.where(v, d, np.inf)), d.shape), \
            np.unravel_index(np.argmax(np.where(v, d, -np.inf)), d.shape)
        assert out[b, 0][near] == 1.0 and out[b, 0][far] == -1.0
    torch.testing.assert_close(targets.normalized_target(depth, valid, 0.02, 'depth'),
                               targets.quantile_normalize(depth, valid, 0.02))
    with pytest.raises(ValueError, match='target space'):
        targets.normalized_target(depth, valid, 0.02, 'log')


def test_disparity_space_uses_pseudo_labels_as_they_are():
    """A teacher's affine disparity in a disparity target: normalised directly, no conversion;
    an affine change of the label does not change the target."""
    depth = torch.linspace(1.0, 10.0, 64).view(1, 1, 8, 8)
    label = 3.0 / depth + 0.2
    out = targets.pseudo_label_to_normalized(label, 'inverse', 0.02, 20.0, space='disparity')
    ones = torch.ones_like(label, dtype=torch.bool)
    torch.testing.assert_close(out, targets.quantile_normalize(label, ones, 0.02))
    torch.testing.assert_close(out, targets.pseudo_label_to_normalized(
        2.5 * label - 0.1, 'negate', 0.02, 5.0, space='disparity'), atol=1e-5, rtol=1e-5)
    # and it equals the synthetic disparity target of the same depth when the shift is 0
    torch.testing.assert_close(
        targets.pseudo_label_to_normalized(3.0 / depth, space='disparity'),
        targets.normalized_target(depth, ones, 0.02, 'disparity'), atol=1e-5, rtol=1e-5)
