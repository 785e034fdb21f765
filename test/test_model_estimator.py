"""DepthEstimator: the released single-pass procedure, sizes, formats, batching, errors."""
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiffdepth_ros.model import estimator as estimator_module
from fiffdepth_ros.model.estimator import DepthEstimator, target_size
from sd_reference import load_sd_modules

rng = np.random.default_rng(0)


@pytest.fixture(scope='module')
def estimator(tiny_checkpoint):
    return DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=64)


def release_resize_uint8(x_uint8: torch.Tensor, size) -> torch.Tensor:
    """torchvision's resize of a uint8 tensor: to float32, antialiased bilinear, round, uint8."""
    y = F.interpolate(x_uint8.to(torch.float32), size=size, mode='bilinear',
                      align_corners=False, antialias=True)
    return torch.round(y).to(torch.uint8)


def reference_depth(checkpoint, image: np.ndarray, processing_res: int) -> np.ndarray:
    """The released FiffDepth steps (DirectPipeline) written out one by one on the
    checkpoint's own modules: 2-token prompt, float size product, uint8 round trip, no
    padding, resize straight back to the input size."""
    vae, unet, empty = load_sd_modules(checkpoint)
    with torch.no_grad():
        h, w = image.shape[:2]
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None]          # uint8
        if processing_res > 0:
            factor = min(processing_res / w, processing_res / h)
            rgb = release_resize_uint8(rgb, (int(h * factor), int(w * factor)))
        x = rgb / 255.0 * 2.0 - 1.0
        moments = vae.quant_conv(vae.encoder(x))
        latent = torch.chunk(moments, 2, dim=1)[0] * 0.18215
        t = torch.zeros(1, dtype=torch.long)
        depth_latent = unet(latent, t, encoder_hidden_states=empty).sample
        decoded = vae.decoder(vae.post_quant_conv(depth_latent / 0.18215))
        depth = (torch.clip(decoded.mean(dim=1, keepdim=True), -1, 1) + 1) / 2
        depth = F.interpolate(depth, size=(h, w), mode='bilinear', align_corners=False,
                              antialias=True)
    return depth.clip(0, 1)[0, 0].numpy()


# The acceptance sizes: (H, W, processing_res); 720x1280 -> 432x768 (not a multiple of
# 64), 517x333 at native size, 97x131 -> 222x300 (upscaled).
@pytest.mark.parametrize('h, w, res', [(480, 640, 256), (720, 1280, 768), (517, 333, 0),
                                       (97, 131, 300)])
def test_fp32_output_equals_the_release_step_by_step(tiny_checkpoint, h, w, res):
    est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', processing_res=res)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours = est.predict(image)
    ref = reference_depth(tiny_checkpoint, image, res)
    assert ours.dtype == np.float32 and ours.shape == (h, w)
    diff = np.abs(ours - ref)
    # fp32 noise only: memory format and thread count alone move a tiny model ~1.4e-3 max.
    assert diff.max() < 1e-2 and diff.mean() < 1e-4, (diff.max(), diff.mean())
    assert 0.0 <= ours.min() and ours.max() <= 1.0 and ours.std() > 0
    assert est.family == 'fiffdepth' and est.output_space == 'depth'


def test_the_image_is_not_padded_where_the_networks_take_the_size(estimator):
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    batch = estimator.preprocess([image])
    assert batch.pixels.shape[-2:] == (47, 64) == batch.resized and not batch.padded
    strip = rng.integers(0, 256, (2, 300, 3), dtype=np.uint8)    # -> 1x64: below the VAE's 8
    tiny = estimator.preprocess([strip])
    assert tiny.padded and tiny.pixels.shape[-2:] == (estimator.min_side, 64)
    assert estimator.predict(strip).shape == (2, 300)


def test_the_resized_image_is_rounded_back_to_uint8_levels(estimator):
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    levels = (estimator.preprocess([image]).pixels.float() + 1) / 2 * 255
    np.testing.assert_allclose(levels, levels.round(), atol=1e-3)
    smooth = estimator.preprocess([image / 255.0]).pixels      # float input: not quantised
    assert ((smooth.float() + 1) / 2 * 255 - levels).abs().max() > 0.01


@pytest.mark.parametrize('shape', [(3, 5), (1, 1), (7, 13), (61, 47), (33, 100)])
def test_any_size_comes_back_at_the_input_size(estimator, shape):
    depth = estimator.predict(rng.integers(0, 256, shape + (3,), dtype=np.uint8))
    assert depth.shape == shape and np.isfinite(depth).all()


def test_odd_native_sizes_run_unpadded_and_come_back_at_the_input_size(estimator):
    estimator.processing_res = 0          # native size, as the release: no padding at all
    try:
        image = rng.integers(0, 256, (47, 62, 3), dtype=np.uint8)
        batch = estimator.preprocess([image])
        assert batch.pixels.shape[-2:] == (47, 62) == batch.resized and not batch.padded
        latent = estimator.encode(batch.pixels)
        decoded = estimator.decode(estimator.run_unet(latent))
        assert decoded.shape[-2:] != (47, 62)     # the VAE's output is a few pixels off ...
        depth = estimator.predict(image)
        assert depth.shape == (47, 62) and np.isfinite(depth).all()   # ... resized back
    finally:
        estimator.processing_res = 64


def test_grey_rgba_and_float_inputs(estimator):
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_allclose(estimator.predict(grey), estimator.predict(as_rgb), atol=1e-6)
    rgba = np.dstack([as_rgb, np.full(grey.shape, 9, np.uint8)])
    np.testing.assert_allclose(estimator.predict(rgba), estimator.predict(as_rgb), atol=1e-6)
    estimator.processing_res = 0      # unresized, float 0..1 and uint8 are the same image
    try:
        np.testing.assert_allclose(estimator.predict(as_rgb / 255.0),
                                   estimator.predict(as_rgb), atol=1e-5)
    finally:
        estimator.processing_res = 64


def test_target_size_is_the_releases_float_product():
    assert target_size(375, 1242, 768) == (231, 768)      # KITTI: 231.88 rounds down
    assert target_size(480, 640, 768) == (576, 768)       # upscaled too, as released
    assert target_size(720, 1280, 768) == (432, 768)
    assert target_size(1121, 640, 768) == (767, 438)      # 1121 * (768 / 1121) = 767.99...
    assert target_size(3, 5, 768) == (460, 768)
    assert target_size(1, 7680, 768) == (1, 768)          # never a zero side
    assert target_size(37, 41, 0) == (37, 41)             # 0 = native
    for h in range(1, 1500, 3):                           # int(side * (res / longer side))
        for w in (640, 1242):
            f = min(768 / w, 768 / h)
            assert target_size(h, w, 768) == (max(1, int(h * f)), max(1, int(w * f)))


def test_non_contiguous_views_are_accepted(estimator):
    bgr = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    rgb_view = bgr[..., ::-1]                     # negative strides, as from BGR -> RGB slicing
    np.testing.assert_array_equal(estimator.predict(rgb_view),
                                  estimator.predict(np.ascontiguousarray(rgb_view)))
    np.testing.assert_array_equal(estimator.predict(bgr[:, ::2]),
                                  estimator.predict(np.ascontiguousarray(bgr[:, ::2])))


def test_batch_equals_single_predictions(estimator):
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in
              [(48, 64, 3), (30, 20, 3), (48, 64, 3), (48, 64, 3), (48, 64)]]
    images.append(images[0] / 255.0)          # same size, float: must not share a uint8 batch
    batched = estimator.predict_batch(images, max_batch=2)
    assert [d.shape for d in batched] == [i.shape[:2] for i in images]
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
    (np.zeros((2, 4, 4, 3), np.uint8), 'HxW, HxWx3 or HxWx4'),
    (np.zeros((0, 4, 3), np.uint8), 'empty'),
    (np.zeros((4, 4, 3), np.int32), 'uint8'),
    (np.zeros((4, 4, 3), np.uint16), 'uint8'),
    (np.full((4, 4, 3), 200.0), r'\[0, 1\]'),
    (np.full((4, 4, 3), np.nan, np.float32), r'\[0, 1\]'),
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
                    'model_source': f'local folder {tiny_checkpoint.resolve()}',
                    'processing_res': 32, 'family': 'fiffdepth', 'output_space': 'depth',
                    'autoencoder': 'full', 'runtime': 'torch'}
    if not torch.cuda.is_available():     # asking for a GPU that is not there: a clear error
        with pytest.raises(ValueError, match='CUDA is not available'):
            DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cuda')
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        DepthEstimator.from_pretrained(str(tiny_checkpoint), device='gpu0')
    with pytest.raises(ValueError, match="precision must be"):
        DepthEstimator.from_pretrained(str(tiny_checkpoint), precision='int8')


@pytest.fixture
def half_on_cpu(monkeypatch):
    """Let precision='fp16' run in half precision on the CPU: the CUDA code paths (half UNet,
    VAE upcast, overflow fallback) then run here for real, only slower."""
    real = estimator_module.resolve_dtype
    monkeypatch.setattr(estimator_module, 'resolve_dtype',
                        lambda precision, device: torch.float16 if precision == 'fp16'
                        else real(precision, device))


def test_half_precision_runs_the_whole_model_in_fp16(tiny_checkpoint, estimator, half_on_cpu):
    est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', precision='fp16',
                                         processing_res=64)
    assert est.dtype == torch.float16 and est.describe()['precision'] == 'fp16'
    assert all(p.dtype == torch.float16 for m in (est.unet, est.vae)
               for p in m.parameters())
    assert est._embedding_for(1).dtype == torch.float16
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    depth = est.predict(image)
    assert depth.dtype == np.float32 and depth.shape == (48, 64)
    np.testing.assert_allclose(depth, estimator.predict(image), atol=0.05)


def test_upcast_vae_decodes_with_the_unrounded_fp32_weights(tiny_checkpoint, estimator,
                                                            half_on_cpu):
    est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', precision='fp16',
                                         processing_res=64, upcast_vae=True)
    assert est.describe()['precision'] == 'fp16 (VAE decoder fp32)'
    assert next(est.unet.parameters()).dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in est.vae.encoder.parameters())
    # Loaded in fp32, never rounded through fp16: bit-equal to the fp32 estimator's decoder.
    for ours, full in zip(est.vae.decoder.parameters(), estimator.vae.decoder.parameters()):
        assert ours.dtype == torch.float32 and torch.equal(ours, full)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(est.predict(image), estimator.predict(image), atol=0.05)


def test_fp16_decode_overflow_is_redone_in_fp32_with_one_warning(tiny_checkpoint, estimator,
                                                                 half_on_cpu, caplog):
    est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', precision='fp16',
                                         processing_res=64)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)

    def overflow_in_half(module, inputs, output):
        # What an overflowing SD VAE decoder gives in fp16 on a bright image.
        return torch.full_like(output, float('inf')) if output.dtype == torch.float16 else output
    handle = est.vae.decoder.register_forward_hook(overflow_in_half)
    try:
        with caplog.at_level(logging.WARNING):
            first = est.predict(image)
            second = est.predict(image)
    finally:
        handle.remove()
    assert np.isfinite(first).all() and np.array_equal(first, second)
    assert all(p.dtype == torch.float32 for p in est.vae.decoder.parameters())
    assert caplog.text.count('non-finite') == 1
    assert 'VAE decoder fp32' in est.describe()['precision']
    np.testing.assert_allclose(first, estimator.predict(image), atol=0.05)


def test_embedding_is_expanded_once_per_batch_size(estimator):
    three = estimator._embedding_for(3)
    assert three.shape[0] == 3 and three.dtype == estimator.dtype
    assert estimator._embedding_for(3) is three          # no new tensor per frame
    assert torch.equal(three[2], estimator._embedding[0])


def test_compile_wraps_the_networks(tiny_checkpoint):
    # Compilation itself happens on the first frame (too slow for a unit test on a CPU).
    est = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu', compile=True,
                                         processing_res=32)
    compiled = torch._dynamo.eval_frame.OptimizedModule
    assert all(isinstance(m, compiled) for m in (est.unet, est.vae.encoder, est.vae.decoder))


def test_read_only_images_are_accepted_without_warnings(estimator, recwarn):
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    view = np.frombuffer(image.tobytes(), np.uint8).reshape(image.shape)   # read-only
    assert not view.flags.writeable
    np.testing.assert_array_equal(estimator.predict(view), estimator.predict(image))
    assert not [w for w in recwarn if 'not writable' in str(w.message)]
