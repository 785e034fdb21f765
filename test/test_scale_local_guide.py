"""The image-guided local correction (``local_guide``): the colour image joins the predicted
depth as the bilateral guide that spreads the anchors' residuals.

- where the prediction has no edge but the image has one, the image guide keeps the anchors of
  each surface on their own side; the depth guide cannot;
- 'both' weighs the guides by how well each explains the anchors from their neighbours;
- the neighbourhood outlier judging still rejects corrupted anchors;
- the same inputs give the same output; the depth guide with an image is today's output;
- a wrong image (size, grey, 16-bit) is a clear error in the library, a note and the depth guide
  in the node's pipeline;
- the torch twin (the finishing device's path) gives the numpy path's result.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from fiffdepth_ros.conversions.backends import RosbagsBackend
from fiffdepth_ros.conversions.depth_image import rgb_to_image_msg
from fiffdepth_ros.finish import local_correction as flc
from fiffdepth_ros.finish.device import DeviceFinisher
from fiffdepth_ros.pipeline import DepthPipeline, PipelineConfig
from fiffdepth_ros.scale import local_correction as lc
from fiffdepth_ros.scale.anchors import Anchors
from fiffdepth_ros.scale.local_correction import (GuideImageError, LocalCorrectionOptions,
                                                  check_guide_image, local_correction)
from fiffdepth_ros.scale.recovery import ConfigError, ScaleRecovery, ScaleRecoveryConfig
from fiffdepth_ros.sync import FrameInputs

H, W = 120, 160
RTOL = 2e-6          # float32 rounding, as test_finish_local_correction.py


def _two_walls(seed=0, n=120):
    """Two walls side by side at 2 m and 3 m (a step at column 70), different colours, with
    a little texture; the prediction is one flat plane: it has no edge where the image has."""
    rng = np.random.default_rng(seed)
    truth = np.full((H, W), 2.0, np.float32)
    truth[:, 70:] = 3.0
    rgb = np.empty((H, W, 3), np.uint8)
    rgb[:, :70] = (200, 190, 170)
    rgb[:, 70:] = (60, 70, 110)
    rgb = np.clip(rgb.astype(int) + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)
    aligned = np.full((H, W), 2.5, np.float32)
    idx = rng.choice(H * W, n, replace=False)
    rows, cols = idx // W, idx % W
    return truth, rgb, aligned, rows, cols, truth[rows, cols].astype(np.float64)


def _absrel(depth, truth):
    return float(np.mean(np.abs(depth - truth) / truth))


def test_the_image_separates_surfaces_the_prediction_does_not():
    truth, rgb, aligned, rows, cols, z = _two_walls()
    depth = local_correction(aligned, rows, cols, z, options=LocalCorrectionOptions())
    image = local_correction(aligned, rows, cols, z, image=rgb,
                             options=LocalCorrectionOptions(guide='image'))
    both = local_correction(aligned, rows, cols, z, image=rgb,
                            options=LocalCorrectionOptions(guide='both'))
    band = np.zeros((H, W), bool)
    band[:, 50:90] = True                                    # 20 px either side of the step
    e_depth = _absrel(depth.depth[band], truth[band])
    e_image = _absrel(image.depth[band], truth[band])
    e_both = _absrel(both.depth[band], truth[band])
    assert e_depth > 0.04                  # the flat prediction smears the step
    assert e_image < 0.5 * e_depth
    assert e_both < 0.5 * e_depth          # 'both' found that the image explains the anchors


def test_both_keeps_the_depth_guide_where_the_prediction_explains_the_anchors():
    """The prediction has the step; the image is texture that crosses it: 'both' keeps the
    depth alone (mix (1, 0)); on the flat prediction it takes the image in."""
    truth, _, _, rows, cols, z = _two_walls()
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)      # colour unrelated to depth
    aligned = truth * np.float32(1.05)
    shape = (H, W)
    opts = LocalCorrectionOptions(guide='both')
    good = lc.correction_grid(shape, rows, cols, z, None, lambda r, c: aligned[r, c],
                              lc.guide_range(lc.log_guide(aligned)), opts,
                              lambda r, c: lc.lightness_at(texture, r, c), (0.0, 1.0))
    assert good.mix == (1.0, 0.0)
    _, rgb, flat, rows, cols, z = _two_walls()
    poor = lc.correction_grid(shape, rows, cols, z, None, lambda r, c: flat[r, c],
                              lc.guide_range(lc.log_guide(flat)), opts,
                              lambda r, c: lc.lightness_at(rgb, r, c), (0.0, 1.0))
    assert poor.mix[1] > 0


def test_the_lightness_extent_is_computed_only_when_the_image_guide_wins():
    """'both' scores its candidates at anchors only: the image's extent over every pixel is
    asked for (once) when a mix with the image wins, never when the depth alone does."""
    truth, rgb, flat, rows, cols, z = _two_walls()
    texture = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    aligned = truth * np.float32(1.05)
    opts = LocalCorrectionOptions(guide='both')
    for image, pred, wins_image in ((texture, aligned, False), (rgb, flat, True)):
        calls = []

        def extent(image=image):
            calls.append(1)
            return lc.lightness_range(image)

        plan = lc.correction_grid((H, W), rows, cols, z, None, lambda r, c: pred[r, c],
                                  lc.guide_range(lc.log_guide(pred)), opts,
                                  lambda r, c: lc.lightness_at(image, r, c), extent)
        assert (plan.mix[1] > 0) == wins_image
        assert len(calls) == (1 if wins_image else 0)
        given = lc.correction_grid((H, W), rows, cols, z, None, lambda r, c: pred[r, c],
                                   lc.guide_range(lc.log_guide(pred)), opts,
                                   lambda r, c: lc.lightness_at(image, r, c),
                                   lc.lightness_range(image))
        np.testing.assert_array_equal(plan.factor, given.factor)   # a value or a callable


def test_lightness_is_luma_and_its_range_needs_no_half_image():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (H + 1, W + 3, 3), dtype=np.uint8)
    half = lc.lightness_guide(rgb).copy()
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(half, luma[::2, ::2], rtol=0, atol=1e-6)
    assert lc.lightness_range(rgb) == lc.guide_range(half)
    r, c = np.array([0, 5, H // 2]), np.array([1, 7, W // 2 + 1])     # half-resolution pixels
    np.testing.assert_array_equal(lc.lightness_at(rgb, 2 * r, 2 * c), half[r, c])


def test_outlier_judging_still_rejects_corrupted_anchors():
    truth, rgb, aligned, rows, cols, z = _two_walls(n=200)
    bad = np.zeros(len(z), bool)
    bad[::4] = True                                          # 25 % moved to x1.8
    zc = np.where(bad, z * 1.8, z)
    for guide in ('image', 'both'):
        opts = LocalCorrectionOptions(guide=guide)
        clean = local_correction(aligned, rows, cols, z, image=rgb, options=opts)
        dirty = local_correction(aligned, rows, cols, zc, image=rgb, options=opts)
        assert np.count_nonzero(dirty.weights[bad] == 0) >= 0.8 * np.count_nonzero(bad)
        assert np.all(dirty.weights[~bad] > 0)
        assert _absrel(dirty.depth, truth) < _absrel(clean.depth, truth) + 0.01


def test_deterministic_and_the_depth_guide_is_todays_output():
    truth, rgb, aligned, rows, cols, z = _two_walls()
    aligned = aligned * (1 + 0.2 * np.linspace(0, 1, W, dtype=np.float32))[None]
    opts = LocalCorrectionOptions(guide='both')
    a = local_correction(aligned, rows, cols, z, image=rgb, options=opts)
    b = local_correction(aligned.copy(), rows.copy(), cols.copy(), z.copy(), image=rgb.copy(),
                         options=opts)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.weights, b.weights)
    today = local_correction(aligned, rows, cols, z)
    with_image = local_correction(aligned, rows, cols, z, image=rgb,
                                  options=LocalCorrectionOptions(guide='depth'))
    np.testing.assert_array_equal(with_image.depth, today.depth)
    # ScaleRecovery: local_guide 'depth' ignores the image; 'image' uses it.
    anchors = Anchors(rows, cols, z, np.ones(len(z)), offered=len(z), source='test')
    rel = aligned / 3
    by_depth = ScaleRecoveryConfig(local_guide='depth')
    ref, _ = ScaleRecovery(by_depth).process(rel, anchors, 0.0)
    same, _ = ScaleRecovery(by_depth).process(rel, anchors, 0.0, rgb)
    other, _ = ScaleRecovery(ScaleRecoveryConfig(local_guide='image')).process(rel, anchors,
                                                                             0.0, rgb)
    np.testing.assert_array_equal(same, ref)
    assert np.nanmax(np.abs(other - ref)) > 0.05


@pytest.mark.parametrize('image, message', [
    (np.zeros((H, W), np.uint8), 'colour'),
    (np.zeros((H, W, 1), np.uint8), 'colour'),
    (np.zeros((H, W, 3), np.uint16), '8-bit'),
    (np.zeros((H + 2, W, 3), np.uint8), 'same size'),
])
def test_a_wrong_image_is_a_clear_error(image, message):
    with pytest.raises(GuideImageError, match=message):
        check_guide_image(image, (H, W))
    truth, _, aligned, rows, cols, z = _two_walls()
    with pytest.raises(GuideImageError, match=message):
        local_correction(aligned, rows, cols, z, image=image,
                         options=LocalCorrectionOptions(guide='image'))
    anchors = Anchors(rows, cols, z, np.ones(len(z)), offered=len(z), source='test')
    with pytest.raises(GuideImageError, match=message):
        ScaleRecovery(ScaleRecoveryConfig(local_guide='both')).process(aligned, anchors, 0.0,
                                                                       image)


def test_config_and_options_refuse_an_unknown_guide():
    with pytest.raises(ConfigError, match='local_guide'):
        ScaleRecoveryConfig(local_guide='colour')
    with pytest.raises(ValueError, match='guide'):
        LocalCorrectionOptions(guide='rgb')
    with pytest.raises(ValueError, match='mix'):
        LocalCorrectionOptions(mix=(0.0, 0.0))


# ---------------------------------------------------------------------------- node pipeline
class _Flat:
    """A model that predicts the flat plane of _two_walls."""

    def predict(self, rgb):
        return np.full(rgb.shape[:2], 0.5, np.float32)


def _inputs(rgb, sparse):
    backend = RosbagsBackend()
    header = backend.header(10 ** 9, 'cam')
    image = rgb_to_image_msg(rgb, header, backend)
    depth = backend.image(header, H, W, '32FC1', W * 4, sparse.astype(np.float32).tobytes())
    return FrameInputs(image=image, camera_info=None, lidar=None, stereo=depth)


def _pipeline(guide):
    scale = ScaleRecoveryConfig(local_guide=guide, max_depth=10.0, responsiveness=1.0)
    cfg = PipelineConfig(cloud_type='none', stereo_grid_step=1, anchors_configured=True,
                         scale=scale)
    return DepthPipeline(_Flat(), cfg, RosbagsBackend(), finish_device='numpy')


def test_the_pipeline_guides_with_the_frame_image():
    truth, rgb, _, rows, cols, z = _two_walls()
    sparse = np.zeros((H, W), np.float32)
    sparse[rows, cols] = z
    by_depth = _pipeline('depth').process(_inputs(rgb, sparse))
    by_image = _pipeline('image').process(_inputs(rgb, sparse))
    assert by_depth.metric and by_image.metric
    assert _absrel(by_image.depth, truth) < 0.7 * _absrel(by_depth.depth, truth)
    assert not any('guide' in n for n in by_image.notes)


class _Half(_Flat):
    """A model whose output is half the image's size."""

    def predict(self, rgb):
        return np.full((rgb.shape[0] // 2, rgb.shape[1] // 2), 0.5, np.float32)


def test_the_pipeline_falls_back_to_the_depth_guide_with_a_note():
    """An image the guide cannot use (here: the model's output is another size than the
    image) costs the image guide for that frame, not the frame: a note (the node logs it,
    rate-limited) and the depth guide."""
    truth, rgb, _, rows, cols, z = _two_walls()
    sparse = np.zeros((H, W), np.float32)
    sparse[rows, cols] = z
    pipe, ref_pipe = _pipeline('both'), _pipeline('depth')
    pipe.estimator = ref_pipe.estimator = _Half()
    result = pipe.process(_inputs(rgb, sparse))
    ref = ref_pipe.process(_inputs(rgb, sparse))
    assert result.metric and result.depth.shape == (H // 2, W // 2)
    assert any('not used to guide the local correction' in n and 'same size' in n
               for n in result.notes)
    np.testing.assert_array_equal(result.depth, ref.depth)


# ---------------------------------------------------------------------------- torch twin
@pytest.mark.parametrize('guide', ['image', 'both'])
@pytest.mark.parametrize('size', [(160, 120), (161, 121)])          # odd: uneven halves
def test_torch_twin_gives_the_numpy_result(guide, size):
    w, h = size
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    truth = np.where(xx < w // 2, 2.0, 3.0).astype(np.float32) + 0.002 * yy
    rgb = np.where((xx < w // 2)[..., None], np.uint8(200), np.uint8(60)).astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=2)
    rgb[..., 2] = rng.integers(0, 256, (h, w))                # blue: noise
    aligned = (2.5 + 0.1 * np.sin(xx / 9)).astype(np.float32)
    aligned[:7, :11] = np.nan
    idx = rng.choice(h * w, 300, replace=False)
    rows, cols = idx // w, idx % w
    z = truth[rows, cols].astype(np.float64)
    z[::9] *= 1.8                                              # outliers for the judging
    weight = np.full(len(z), 400.0)
    opts = LocalCorrectionOptions(guide=guide)
    ref = local_correction(aligned, rows, cols, z, weight, opts, image=rgb)
    depth, weights, sigma = flc.local_correction_torch(torch.from_numpy(aligned), rows, cols, z,
                                                       weight, opts, image=rgb,
                                                       host_read=False)
    got = depth.numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.depth))
    np.testing.assert_allclose(got, ref.depth, rtol=RTOL, atol=0)
    np.testing.assert_allclose(weights, ref.weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigma, ref.sigma, rtol=1e-5, equal_nan=True)
    plain = local_correction(aligned, rows, cols, z, weight, replace(opts, guide='depth'))
    assert np.nanmax(np.abs(ref.depth - plain.depth)) > 0.05      # the image did something


def test_device_finisher_passes_the_image():
    truth, rgb, aligned, rows, cols, z = _two_walls()
    anchors = Anchors(rows, cols, z, np.ones(len(z)), offered=len(z), source='test')
    rel = np.full((H, W), 0.5, np.float32)
    cfg = ScaleRecoveryConfig(local_guide='image', max_depth=10.0)
    ref, ref_report = ScaleRecovery(cfg).process(rel, anchors, 1.0, rgb)
    got, report = DeviceFinisher('cpu').recover(ScaleRecovery(cfg), torch.from_numpy(rel),
                                                anchors, 1.0, rgb)
    assert report == ref_report
    np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL, atol=0)
    flat, _ = ScaleRecovery(replace(cfg, local_guide='depth')).process(rel, anchors, 1.0, rgb)
    assert np.nanmax(np.abs(ref - flat)) > 0.1
