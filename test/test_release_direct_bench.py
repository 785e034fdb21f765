"""bench/release_direct.py (the released DirectPipeline's per-frame steps, which
bench/export_runtimes.py --release times against the engine) computes what the engine
computes on an SD-VAE checkpoint: otherwise its row would time some other work."""
import sys
from pathlib import Path

import numpy as np

from fiffdepth_ros.model.estimator import DepthEstimator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from release_direct import ReleaseDirect  # noqa: E402


def test_release_steps_equal_the_engine(tiny_checkpoint, one_torch_thread):
    rng = np.random.default_rng(3)
    for (h, w), res in (((96, 128), 64), ((61, 90), 0)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        engine = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu',
                                                precision='fp32', processing_res=res,
                                                runtime='torch')
        release = ReleaseDirect(tiny_checkpoint, res)
        ours, theirs = engine.predict(image), release.predict(image)
        assert theirs.shape == ours.shape == (h, w) and theirs.dtype == np.float32
        assert release.empty_text_embed is not None and release.empty_text_embed.shape[1] == 2
        diff = np.abs(ours - theirs)
        assert ours.std() > 0 and diff.max() < 1e-2 and diff.mean() < 1e-4, (diff.max(),
                                                                              diff.mean())
