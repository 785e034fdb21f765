"""Session fixtures: a private DDS domain, a private model cache, a tiny model, the colcon build."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))          # test helpers (msg_factories)

# Before anything creates an rclpy context: parallel runs never see each other's topics.
os.environ['ROS_DOMAIN_ID'] = str(random.randint(1, 100))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# Camera images and LiDAR sweeps are large: the package's large-data transport profile.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      str(ROOT / 'fiffdepth_ros' / 'resources' / 'fastdds_large_data.xml'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')


@pytest.fixture(scope='session', autouse=True)
def private_model_cache(tmp_path_factory):
    """Never write the empty-prompt cache into the user's home during tests."""
    path = tmp_path_factory.mktemp('fiffdepth_cache')
    old = os.environ.get('FIFFDEPTH_CACHE')
    os.environ['FIFFDEPTH_CACHE'] = str(path)
    yield path
    if old is None:
        os.environ.pop('FIFFDEPTH_CACHE', None)
    else:
        os.environ['FIFFDEPTH_CACHE'] = old


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
    from fiffdepth_ros.model.tiny import build_tiny_checkpoint
    return build_tiny_checkpoint(tmp_path_factory.mktemp('models') / 'tiny')


@pytest.fixture(scope='session', autouse=True)
def compiled_kernels():
    """The scale-recovery kernels compiled (or loaded from numba's cache) once, before any
    test: a fresh checkout compiles them here, not inside a test's time limits, and the CLI
    subprocesses of later tests find them cached."""
    from fiffdepth_ros.scale.local_correction import warm_up
    warm_up()


@pytest.fixture(scope='session')
def install_prefix(tmp_path_factory):
    """The colcon install folder: scripts/test.sh builds it; a bare pytest run builds it here.
    Its copy of the package compiles its own kernels (numba caches per source file): once
    here, before the nodes of several tests start at the same time."""
    prefix = os.environ.get('FIFFDEPTH_TEST_INSTALL')
    if prefix:
        prefix = Path(prefix)
    else:
        ws = tmp_path_factory.mktemp('colcon_ws')
        out = subprocess.run([str(ROOT / 'scripts' / 'colcon_build.sh'), str(ws)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        prefix = Path(out.stdout.strip().splitlines()[-1])
    from fiffdepth_ros.demo.harness import install_env
    code = ('import fiffdepth_ros.scale.local_correction as lc; lc.warm_up(); '
            'print(lc.__file__)')
    out = subprocess.run([sys.executable, '-c', code], env=install_env(prefix, dict(os.environ)),
                         cwd=prefix, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and str(prefix) in out.stdout, out.stderr
    return prefix


@pytest.fixture
def one_torch_thread():
    """Tiny models on 2 shared cores: more torch threads only add contention."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# The training-step tests' tiny SD2-like UNet (training mode, seeded) and SD2's scaled-linear
# alphas_cumprod; module scope: each test module gets its own fresh UNet.
@pytest.fixture(scope='module')
def unet():
    import torch
    from diffusers import UNet2DConditionModel
    from fiffdepth_ros.model.tiny import TINY_UNET
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).train()


@pytest.fixture(scope='module')
def alphas():
    from diffusers import DDPMScheduler
    return DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085,
                         beta_end=0.012).alphas_cumprod


@pytest.fixture(scope='module')
def rclpy_context():
    """rclpy initialised for one test module (its in-process publishers and subscribers)."""
    import rclpy
    rclpy.init()
    yield
    rclpy.try_shutdown()
