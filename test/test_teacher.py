"""The stand-in Depth Anything teacher: losses, training, the Hugging Face layout, pseudo-labels."""
import json

import numpy as np
import pytest
import torch

from fiffdepth_ros.training import teacher as T
from fiffdepth_ros.training.data import procedural as P

SIZE = 42                   # the teacher's shorter side in these tests (3 patches)
RENDER = (48, 64)


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope='module')
def batch():
    return T.batch_of(range(4), SIZE, RENDER)


def _normalised_np(x, m):
    values = x[m]
    t = np.median(values) if values.size % 2 else np.sort(values)[values.size // 2 - 1]
    return (x - t) / max(np.mean(np.abs(values - t)), 1e-6)


# ------------------------------------------------------------------------------ losses
def test_ssi_loss_matches_a_step_by_step_formula_and_ignores_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 9, 11, generator=g), torch.rand(2, 9, 11, generator=g)
    mask = torch.rand(2, 9, 11, generator=g) > 0.2
    expected = np.mean(np.concatenate([
        np.abs(_normalised_np(pred[i].numpy(), mask[i].numpy())
               - _normalised_np(target[i].numpy(), mask[i].numpy()))[mask[i].numpy()]
        for i in range(2)]))
    assert float(T.ssi_loss(pred, target, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(T.ssi_loss(3.0 * pred + 7.0, target, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(T.ssi_loss(0.5 * target - 2.0, target, mask)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_matching_matches_a_step_by_step_formula():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(1, 8, 10, generator=g), torch.rand(1, 8, 10, generator=g)
    mask = torch.ones(1, 8, 10, dtype=torch.bool)
    mask[0, 2:4, 3:6] = False
    m = mask[0].numpy().astype(float)
    r = (_normalised_np(pred[0].numpy(), mask[0].numpy())
         - _normalised_np(target[0].numpy(), mask[0].numpy())) * m
    total = 0.0
    for step in (1, 2):
        rs, ms = r[::step, ::step], m[::step, ::step]
        gx = np.abs(np.diff(rs, axis=1)) * ms[:, 1:] * ms[:, :-1]
        gy = np.abs(np.diff(rs, axis=0)) * ms[1:, :] * ms[:-1, :]
        total += (gx.sum() + gy.sum()) / ms.sum()
    got = float(T.gradient_matching_loss(pred, target, mask, scales=2))
    assert got == pytest.approx(total / 2, rel=1e-5)


def test_pinned_loss_matches_a_step_by_step_formula_and_sees_the_scale():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(2, 8, 10, generator=g), torch.rand(2, 8, 10, generator=g)
    mask = torch.rand(2, 8, 10, generator=g) > 0.2
    residuals, total = [], 0.0
    for i in range(2):
        m = mask[i].numpy()
        p = pred[i].numpy()
        v = p[m]
        t = np.median(v) if v.size % 2 else np.sort(v)[v.size // 2 - 1]
        residuals.append((p - t - _normalised_np(target[i].numpy(), m)) * m)
    r = np.stack(residuals)
    mf = mask.numpy().astype(float)
    mae = np.abs(r).sum() / mf.sum()
    for step in (1, 2):
        rs, ms = r[:, ::step, ::step], mf[:, ::step, ::step]
        gx = np.abs(np.diff(rs, axis=2)) * ms[:, :, 1:] * ms[:, :, :-1]
        gy = np.abs(np.diff(rs, axis=1)) * ms[:, 1:, :] * ms[:, :-1, :]
        total += (gx.sum() + gy.sum()) / ms.sum()
    got = float(T.teacher_loss(pred, target, mask, gm_weight=2.0, scales=2))
    assert got == pytest.approx(mae + 2.0 * total / 2, rel=1e-5)
    # invariant to a shift, not to a scale (the invariant form is kept: pin_scale=False)
    assert float(T.teacher_loss(pred + 5.0, target, mask, scales=2)) == pytest.approx(got, rel=1e-5)
    exact = T._normalise(target, mask) + 3.0             # the normalised target, shifted
    assert float(T.teacher_loss(exact, target, mask, scales=2)) == pytest.approx(0.0, abs=1e-6)
    assert float(T.teacher_loss(1e-4 * exact, target, mask, scales=2)) > 0.5
    unpinned = float(T.teacher_loss(pred, target, mask, scales=2, pin_scale=False))
    assert unpinned == pytest.approx(
        float(T.ssi_loss(pred, target, mask))
        + 2.0 * float(T.gradient_matching_loss(pred, target, mask, scales=2)), rel=1e-6)


# -------------------------------------------------------------------------------- data
def test_teacher_frames_are_synthetic_disparity_at_the_pseudolabel_size(batch):
    rgb, disp, mask = batch
    assert rgb.dtype == torch.uint8 and rgb.shape[1:] == (3, 42, 56)      # 48x64 -> 42x56
    assert disp.shape == (4, 42, 56) and bool(mask.all())
    frame = P.render_frame(0, 'synthetic', RENDER[1], RENDER[0])
    one = T.teacher_frame(0, SIZE, RENDER)[1].numpy()
    assert np.all(one >= 0) and np.isclose(one.max(), 1.0 / frame.depth.min(), rtol=0.3)
    if (frame.ids == -1).any():
        assert (one == 0).any()                                   # the sky is disparity 0
    with pytest.raises(ValueError, match='held out'):
        T.batch_of([P.HELD_OUT_SEEDS.start], SIZE, RENDER)


# ---------------------------------------------------------------------------- training
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(batch):
    rgb, disp, mask = batch
    model = T.build_teacher('test', SIZE, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = T.teacher_loss(T.predict_disparity(model, rgb), disp, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_saved_teacher_reloads_with_transformers_and_gives_identical_output(tmp_path, batch):
    from transformers import (AutoImageProcessor, AutoModelForDepthEstimation,
                              DepthAnythingForDepthEstimation)
    model = T.build_teacher('test', SIZE, seed=3).eval()
    T.save_teacher(model, tmp_path, SIZE, {'note': 'test'})
    assert {p.name for p in tmp_path.iterdir()} >= {'config.json', 'model.safetensors',
                                                    'preprocessor_config.json',
                                                    T.PROVENANCE_FILE}
    rgb = batch[0][:2]
    with torch.no_grad():
        before = T.predict_disparity(model, rgb)
        loaded = DepthAnythingForDepthEstimation.from_pretrained(tmp_path).eval()
        auto = AutoModelForDepthEstimation.from_pretrained(tmp_path).eval()
        assert torch.equal(T.predict_disparity(loaded, rgb), before)
        assert torch.equal(T.predict_disparity(auto, rgb), before)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.ensure_multiple_of == 14 and processor.keep_aspect_ratio
    assert processor.size['height'] == SIZE
    assert np.allclose(processor.image_mean, [0.485, 0.456, 0.406])


def test_train_teacher_writes_a_loadable_model_with_provenance(tmp_path):
    out = tmp_path / 'teacher'
    prov = T.train_teacher(out, steps=3, batch_size=2, input_size=28, preset='test',
                           log_every=1, val_frames=2, render_hw=(32, 40), progress=False)
    saved = json.loads((out / T.PROVENANCE_FILE).read_text())
    assert saved['steps'] == 3 and len(saved['loss_history']) == 3
    assert saved['domain'] == 'synthetic' and saved['train_seeds'][1] < P.HELD_OUT_SEEDS.start
    assert saved['held_out']['seeds'][0] == P.HELD_OUT_SEEDS.start
    for domain in P.DOMAINS:
        scores = saved['held_out'][domain]
        assert np.isfinite(scores['absrel']) and 0 <= scores['delta1'] <= 1
    assert prov['parameters'] == saved['parameters'] > 0
    with pytest.raises(ValueError, match='held out'):
        T.train_teacher(tmp_path / 'x', steps=1, seed_start=P.HELD_OUT_SEEDS.start - 1, pool=5,
                        preset='test', progress=False)


def test_cli_trains_and_saves(tmp_path, capsys):
    out = tmp_path / 'cli'
    assert T.main(['--out', str(out), '--steps', '2', '--batch-size', '1', '--input-size', '28',
                   '--preset', 'test', '--workers', '0', '--val-frames', '1']) == 0
    assert (out / 'model.safetensors').is_file() and (out / 'preprocessor_config.json').is_file()
    assert json.loads(capsys.readouterr().out)['steps'] == 2
    frames = T.SyntheticTeacherFrames(0, 3, 28)
    a, b = frames[1], frames[4]                        # same seed, the second lap mirrored
    assert torch.equal(a[0].flip(-1), b[0]) and torch.equal(a[1].flip(-1), b[1])


def test_pseudolabel_tool_runs_the_teacher_like_depth_anything(tmp_path):
    """fiffdepth-pseudolabel loads the folder and stores what the teacher predicts on the
    real-like domain (which the teacher never trained on)."""
    import cv2
    from fiffdepth_ros.training.pseudolabel import run_pseudolabel, teacher_size
    teacher_dir = tmp_path / 'teacher'
    model = T.build_teacher('test', SIZE, seed=5).eval()
    T.save_teacher(model, teacher_dir, SIZE)
    P.write_frames(tmp_path / 'real', [20, 21], 'real', RENDER[1], RENDER[0])
    counts = run_pseudolabel(str(teacher_dir), str(tmp_path / 'real' / 'rgb'),
                             tmp_path / 'labels', batch_size=2, input_size=SIZE,
                             device='cpu', num_workers=0, progress=False)
    assert counts['labelled'] == 2
    labels = sorted((tmp_path / 'labels').rglob('*.npy'))
    assert len(labels) == 2
    frame = P.render_frame(20, 'real', RENDER[1], RENDER[0])
    h, w = teacher_size(*frame.rgb.shape[:2], SIZE)
    rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_CUBIC)
    with torch.no_grad():
        mine = T.predict_disparity(model, torch.from_numpy(rgb).permute(2, 0, 1)[None])[0]
    stored = np.load(labels[0]).astype(np.float32)
    assert stored.shape == (h, w)
    mine = mine.numpy() / np.abs(mine.numpy()).max()       # stored divided by its peak
    assert np.allclose(stored, mine, rtol=2e-3, atol=2e-3)    # fp16 storage
