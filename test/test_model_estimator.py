"""DepthEstimator: the released single-pass procedure, sizes, formats, batching, errors."""
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiffdepth_ros.model.estimator import DepthEstimator

rng = np.random.default_rng(0)


@pytest.fixture(scope='module')
def estimator(tiny_checkpoint):
    return DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=64)


def reference_depth(checkpoint, image: np.ndarray, processing_res: int) -> np.ndarray:
    """The released steps written out one by one on the checkpoint's own modules."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    vae = AutoencoderKL.from_pretrained(checkpoint / 'vae').eval()
    unet = UNet2DConditionModel.from_pretrained(checkpoint / 'unet').eval()
    tokenizer = CLIPTokenizer.from_pretrained(checkpoint / 'tokenizer')
    text_encoder = CLIPTextModel.from_pretrained(checkpoint / 'text_encoder').eval()
    with torch.no_grad():
        ids = tokenizer('', padding='max_length', max_length=tokenizer.model_max_length,
                        return_tensors='pt').input_ids
        empty = text_encoder(ids)[0]
        h, w = image.shape[:2]
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        scale = processing_res / max(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode='bilinear',
                          align_corners=False, antialias=True)
        x = x * 2 - 1
        moments = vae.quant_conv(vae.encoder(x))
        latent = torch.chunk(moments, 2, dim=1)[0] * 0.18215
        depth_latent = unet(latent, 0, encoder_hidden_states=empty).sample
        decoded = vae.decoder(vae.post_quant_conv(depth_latent / 0.18215))
        depth = (decoded.mean(dim=1, keepdim=True).clip(-1, 1) + 1) / 2
        depth = F.interpolate(depth, size=(h, w), mode='bilinear', align_corners=False,
                              antialias=True)
    return depth[0, 0].numpy()


def test_fp32_output_equals_the_step_by_step_reference(estimator, tiny_checkpoint):
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)   # -> 48x64, no padding needed
    assert estimator.target_size(96, 128) == (48, 64) and 48 % estimator.pad_multiple == 0
    ours = estimator.predict(image)
    ref = reference_depth(tiny_checkpoint, image, 64)
    assert ours.dtype == np.float32 and ours.shape == (96, 128)
    assert np.abs(ours - ref).max() < 1e-5
    assert 0.0 <= ours.min() and ours.max() <= 1.0 and ours.std() > 0


@pytest.mark.parametrize('shape', [(3, 5), (1, 1), (7, 13), (61, 47), (33, 100)])
def test_any_size_comes_back_at_the_input_size(estimator, shape):
    depth = estimator.predict(rng.integers(0, 256, shape + (3,), dtype=np.uint8))
    assert depth.shape == shape and np.isfinite(depth).all()


def test_odd_sizes_are_replicate_padded_then_cropped(estimator):
    estimator.processing_res = 0          # native size: only the padding acts
    try:
        image = rng.integers(0, 256, (47, 62, 3), dtype=np.uint8)
        batch = estimator.preprocess([image])
        assert batch.pixels.shape[-2:] == (48, 64) and batch.resized == (47, 62)
        padded = np.pad(image, ((0, 1), (0, 2), (0, 0)), mode='edge')
        assert estimator.preprocess([padded]).pixels.shape[-2:] == (48, 64)
        np.testing.assert_allclose(estimator.predict(image),
                                   estimator.predict(padded)[:47, :62], atol=1e-6)
    finally:
        estimator.processing_res = 64


def test_grey_rgba_and_float_inputs(estimator):
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_allclose(estimator.predict(grey), estimator.predict(as_rgb), atol=1e-6)
    rgba = np.dstack([as_rgb, np.full(grey.shape, 9, np.uint8)])
    np.testing.assert_allclose(estimator.predict(rgba), estimator.predict(as_rgb), atol=1e-6)
    np.testing.assert_allclose(estimator.predict(as_rgb / 255.0), estimator.predict(as_rgb),
                               atol=1e-5)


def test_batch_equals_single_predictions(estimator):
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in
              [(48, 64, 3), (30, 20, 3), (48, 64, 3), (48, 64, 3)]]
    batched = estimator.predict_batch(images, max_batch=2)
    for image, depth in zip(images, batched):
        # Batched kernels sum in another order: equal up to float32 rounding.
        np.testing.assert_allclose(depth, estimator.predict(image), atol=1e-4)


def test_native_resolution_and_8k(estimator):
    estimator.processing_res = 0
    try:
        image = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
        assert estimator.preprocess([image]).resized == (120, 200)
        assert estimator.predict(image).shape == (120, 200)
    finally:
        estimator.processing_res = 64
    huge = np.zeros((4320, 7680, 3), np.uint8)
    huge[:, 3000:] = 200
    depth = estimator.predict(huge)
    assert depth.shape == (4320, 7680) and np.isfinite(depth).all()


@pytest.mark.parametrize('bad, match', [
    (np.zeros((4, 4, 2), np.uint8), 'HxW, HxWx3 or HxWx4'),
    (np.zeros((0, 4, 3), np.uint8), 'empty'),
    (np.zeros((4, 4, 3), np.int32), 'uint8 or float'),
    ([[1, 2]], 'numpy image'),
])
def test_bad_images_are_refused(estimator, bad, match):
    with pytest.raises(ValueError, match=match):
        estimator.predict(bad)


def test_describe_and_cpu_fp16_falls_back(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu',
                                             precision='fp16', processing_res=32)
    assert est.dtype == torch.float32 and 'fp16 requested on cpu' in caplog.text
    info = est.describe()
    assert info == {'model': str(tiny_checkpoint), 'device': 'cpu', 'precision': 'fp32',
                    'processing_res': 32}
    if not torch.cuda.is_available():     # asking for a GPU that is not there: a clear error
        with pytest.raises(ValueError, match='CUDA is not available'):
            DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cuda')


def test_half_precision_overflow_redecodes_in_fp32(tiny_checkpoint, caplog):
    est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=32)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    expected = est.predict(image)
    # Simulate an fp16 decoder that overflows (no GPU here to make a real one): its output is
    # half precision and infinite the first time.
    calls = []

    def overflow_once(module, inputs, output):
        calls.append(1)
        return torch.full_like(output, float('inf'), dtype=torch.float16) \
            if len(calls) == 1 else output
    handle = est.vae.decoder.register_forward_hook(overflow_once)
    try:
        with caplog.at_level(logging.WARNING):
            depth = est.predict(image)
    finally:
        handle.remove()
    assert np.isfinite(depth).all() and est._decoder32 is not None
    assert 'overflowed' in caplog.text
    np.testing.assert_allclose(depth, expected, atol=1e-5)
