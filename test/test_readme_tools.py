"""The README's tools, run as written, from a fresh virtual environment without ROS sourced and
outside the checkout: the package installed with pip (as scripts/setup.sh does) puts its console
scripts on PATH. The dependencies come from the project's .venv through a path entry (installing
torch again would take minutes); fiffdepth_ros itself only from the pip install."""
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fiffdepth_ros.bag.synthetic import SyntheticBagSpec, write_synthetic_bag

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)
PACKAGE_FILES = ('setup.py', 'setup.cfg', 'package.xml', 'resource', 'launch', 'config',
                 'fiffdepth_ros')


@pytest.fixture(scope='module')
def clean_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('clean_venv')
    src = tmp / 'src'                   # a copy: pip's in-tree build never touches the checkout
    src.mkdir()
    for name in PACKAGE_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(path, src / name)
    venv = tmp / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True,
                   timeout=120)
    py = venv / 'bin' / 'python'
    target = subprocess.run([str(py), '-c', 'import site; print(site.getsitepackages()[0])'],
                            capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (torch, diffusers, rosbags, the rclpy wheels) from this interpreter.
    deps = [p for p in site.getsitepackages() if 'site-packages' in p]
    Path(target, '_fiffdepth_test_deps.pth').write_text('\n'.join(deps) + '\n')
    out = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '-q',
                          '--no-deps', '--no-build-isolation', str(src)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('PYTHON', 'AMENT', 'COLCON', 'VIRTUAL_ENV'))}
    env['PATH'] = f"{venv / 'bin'}:/usr/bin:/bin"
    return venv, env


def run(cmd, env, cwd, timeout=180):
    return subprocess.run(cmd if isinstance(cmd, list) else shlex.split(cmd), env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def readme_command(name: str) -> str:
    """The README's first shell command that starts with ``name`` (continuation lines joined,
    the trailing comment removed)."""
    text = (ROOT / 'README.md').read_text()
    match = re.search(rf'^{re.escape(name)} .*?(?<!\\)$', text.replace('\\\n', ' '), re.M)
    assert match, name
    return match.group(0).split('  #')[0].strip()


def test_console_scripts_are_in_the_venv(clean_venv):
    venv, env = clean_venv
    for exe in ('process_bag', 'fiffdepth-predict', 'fiffdepth-align', 'depth_node',
                'depth_lifecycle_node', 'fiffdepth-demo'):
        assert shutil.which(exe, path=env['PATH']) == str(venv / 'bin' / exe), exe


def test_readme_process_bag_command_runs_as_written(clean_venv, tiny_checkpoint, tmp_path):
    _, env = clean_venv
    command = readme_command('process_bag')
    assert command.startswith('process_bag recording/ recording_depth/ --model /models/')
    write_synthetic_bag(tmp_path / 'recording', SyntheticBagSpec(frames=2, tf_static=True))
    shutil.copytree(ROOT / 'config', tmp_path / 'config')
    # The README's model path stands for the user's checkpoint; the tiny one here.
    argv = shlex.split(re.sub(r'--model \S+', f'--model {tiny_checkpoint}', command))
    argv += ['-p', 'processing_res:=64', '-p', 'device:=cpu', '--no-progress']
    out = run(argv, env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'LiDAR extrinsic from the bag /tf_static' in out.stderr
    assert (tmp_path / 'recording_depth' / 'metadata.yaml').is_file()
    assert re.search(r'\s2\s+/camera/depth/image', out.stdout), out.stdout


def test_predict_and_align_run_from_the_venv(clean_venv, tiny_checkpoint, tmp_path):
    import cv2
    _, env = clean_venv
    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'frame.png'), rgb)
    out = run(['fiffdepth-predict', '--model', str(tiny_checkpoint), '--input', 'frame.png',
               '--output', 'pred', '--processing-res', '64', '--device', 'cpu'], env, tmp_path)
    assert out.returncode == 0, out.stderr
    relative = np.load(tmp_path / 'pred' / 'frame.npy')
    assert relative.shape == (48, 64)
    anchors = np.zeros((48, 64), np.float32)
    anchors[::6, ::6] = 2.0 + relative[::6, ::6]          # depth = relative + 2 m
    np.save(tmp_path / 'anchors.npy', anchors)
    out = run(['fiffdepth-align', 'pred/frame.npy', 'anchors.npy', 'metric.npy', '--no-local'],
              env, tmp_path)
    assert out.returncode == 0, out.stderr
    metric = np.load(tmp_path / 'metric.npy')
    assert metric.shape == (48, 64) and np.isfinite(metric).mean() > 0.9
    # The tiny model's relative depth barely varies: only the metric level is checked.
    assert abs(np.nanmedian(metric) - np.median(anchors[anchors > 0])) < 0.1


def test_depth_node_starts_from_the_venv_without_ros_sourced(clean_venv, tmp_path):
    _, env = clean_venv
    out = run(['depth_node', '--ros-args', '-p', f'model:={tmp_path / "no_model"}',
               '-p', 'device:=cpu'], env, tmp_path, timeout=120)
    # It ran: rclpy came up and the missing checkpoint is the one clear error.
    assert out.returncode == 1, out.stdout + out.stderr
    assert 'cannot start' in out.stdout + out.stderr and 'no_model' in out.stdout + out.stderr
    assert 'Traceback' not in out.stdout + out.stderr
