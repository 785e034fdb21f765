"""The built-in model 'nano': the one resolver (model.builtin via resolve_checkpoint), its
errors, the defaults of every entry point, prediction with it, and the installed node on it."""
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fiffdepth_ros import params as P
from fiffdepth_ros.model import builtin
from fiffdepth_ros.model.checkpoint import ModelLoadError, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / 'fiffdepth_ros' / 'resources' / 'nano'


# ------------------------------------------------------------------ the resolver
def test_nano_resolves_to_the_packaged_folder():
    ckpt = resolve_checkpoint('nano')
    assert ckpt.root == PACKAGED.resolve() and ckpt.builtin
    assert ckpt.name == 'nano' and ckpt.hub_id is None
    assert ckpt.origin == f'built-in, {PACKAGED.resolve()}'
    index = json.loads((ckpt.root / 'model_index.json').read_text())
    assert {'unet', 'vae'} <= set(index)
    assert builtin.builtin_names() == ('nano',) and builtin.DEFAULT_MODEL == 'nano'


def test_nano_family_is_fiffdepth_and_the_weights_are_small():
    from fiffdepth_ros.model.families import make_family, read_info
    family = make_family(read_info(resolve_checkpoint('nano')), 'auto')
    # v2 predicts disparity (config/nano/base.yaml target_space), and its folder says so
    assert family.name == 'fiffdepth' and family.output_space == 'disparity'
    weights = sum(p.stat().st_size for p in PACKAGED.rglob('*.safetensors'))
    assert 0 < weights <= 25 * 2**20            # the bound for all parts together


def test_a_folder_named_nano_in_the_working_directory_does_not_shadow_it(tmp_path,
                                                                        monkeypatch):
    from fiffdepth_ros.model.tiny import build_tiny_checkpoint
    build_tiny_checkpoint(tmp_path / 'nano')
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint('nano').root == PACKAGED.resolve()
    local = resolve_checkpoint('./nano')                 # the way to name that folder
    assert not local.builtin and local.root.resolve() == (tmp_path / 'nano').resolve()


def test_missing_packaged_files_are_one_clear_error_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, '_RESOURCES', tmp_path)
    with pytest.raises(ModelLoadError) as err:
        resolve_checkpoint('nano')
    message = str(err.value)
    assert str(tmp_path / 'nano') in message and 'model_index.json' in message
    assert 'reinstall' in message
    # Configs present but no weights (e.g. a checkout without the LFS files): named too.
    (tmp_path / 'nano' / 'unet').mkdir(parents=True)
    (tmp_path / 'nano' / 'vae').mkdir()
    for f in ('model_index.json', 'unet/config.json', 'vae/config.json'):
        (tmp_path / 'nano' / f).write_text('{}')
    with pytest.raises(ModelLoadError, match=r'unet/\*\.safetensors, vae/\*\.safetensors'):
        builtin.builtin_folder('nano')
    with pytest.raises(ModelLoadError, match="'pico' is not a built-in model"):
        builtin.builtin_folder('pico')


def test_every_packaged_file_is_package_data():
    """setup.py's package_data patterns cover every file of the folder (pip and colcon install
    exactly those)."""
    tree = ROOT / 'setup.py'
    text = tree.read_text()
    start = text.index('package_data=')
    patterns = [p for p in text[start:text.index('}', start)].split("'")
                if p.startswith('resources/')]
    files = [p.relative_to(ROOT / 'fiffdepth_ros').as_posix() for p in PACKAGED.rglob('*')
             if p.is_file()]
    assert files
    uncovered = [f for f in files
                 if not any(fnmatch.fnmatch(f, p) and f.count('/') == p.count('/')
                            for p in patterns)]
    assert not uncovered


# ------------------------------------------------------------------ defaults
def test_node_parameter_and_shipped_configs_default_to_nano():
    assert P.SPECS['model'].default == 'nano' and P.defaults()['model'] == 'nano'
    for name in ('default.yaml', 'jetson.yaml'):
        assert P.load_yaml(ROOT / 'config' / name)['model'] == 'nano'


def test_launch_file_without_a_model_argument_keeps_the_params_file_model(monkeypatch):
    """No model:= given: the launch file passes no model override, so the node gets the params
    file's (default.yaml: nano)."""
    from test_launch_file import LAUNCH, _install_fake_launch
    values, Node, LifecycleNode = _install_fake_launch(monkeypatch)
    namespace = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), 'exec'), namespace)
    values.update(managed='false', model='', lidar='', stereo_depth='')
    started = [e for e in namespace['generate_launch_description']()
               if isinstance(e, (Node, LifecycleNode)) and e.kwargs['condition'].true()]
    assert len(started) == 1
    assert 'model' not in started[0].kwargs['parameters'][1]


def test_cli_defaults_are_nano(monkeypatch):
    from fiffdepth_ros.bag.process_bag import build_parser, resolve_params
    from fiffdepth_ros.cli.predict import parse_args as predict_args
    from fiffdepth_ros.demo.run_demo import parse_args as demo_args
    args = predict_args(['--input', 'x.png', '--output', 'out'])
    # every model runs at its own resolution unless told (-1): nano at the size it was
    # trained at, read from its model_index.json (test_nano_runs_at_its_own_resolution)
    assert args.model == 'nano' and args.processing_res == -1
    assert predict_args(['--model', '/m', '--input', 'x', '--output', 'o']).processing_res == -1
    assert predict_args(['--input', 'x', '--output', 'o', '--processing-res', '0']
                        ).processing_res == 0
    # the demo keeps its random tiny model by default: the shipped nano does not generalise
    # to the demo's room (README); --model nano selects it
    assert demo_args([]).model == '' and demo_args(['--model', 'nano']).model == 'nano'
    assert resolve_params(build_parser().parse_args(['in', 'out']))['model'] == 'nano'
    assert resolve_params(build_parser().parse_args(['in', 'out', '--model', '/m']))['model'] \
        == '/m'


def test_eval_without_model_or_predictions_loads_nano(monkeypatch, capsys):
    from fiffdepth_ros.cli import evaluate
    from fiffdepth_ros.model import estimator
    asked = []

    def fake_from_pretrained(model, **kwargs):
        asked.append(model)
        raise ModelLoadError('stop here')

    class Dataset:
        processing_res = 32
    monkeypatch.setattr(evaluate, 'open_dataset', lambda *a, **k: Dataset())
    monkeypatch.setattr(estimator.DepthEstimator, 'from_pretrained',
                        staticmethod(fake_from_pretrained))
    assert evaluate.main(['--dataset', 'nyu', '--data', 'd']) == 2
    assert asked == ['nano'] and 'stop here' in capsys.readouterr().err


def test_an_explicitly_empty_model_is_an_error_that_names_nano():
    from fiffdepth_ros.model.runtime import load_estimator
    with pytest.raises(P.ParameterError, match="'nano'"):
        load_estimator(P.validate({'model': ''}))


# ------------------------------------------------------------------ prediction
def test_predict_with_nano_gives_a_finite_depth_image(tmp_path, capsys):
    import cv2
    from fiffdepth_ros.cli.predict import main
    from fiffdepth_ros.demo.scene import SyntheticRoom
    frame = SyntheticRoom(160, 120).render()
    cv2.imwrite(str(tmp_path / 'room.png'), frame.rgb[..., ::-1])
    assert main(['--model', 'nano', '--input', str(tmp_path / 'room.png'), '--output',
                 str(tmp_path / 'out'), '--device', 'cpu', '--processing-res', '128']) == 0
    depth = np.load(tmp_path / 'out' / 'room.npy')
    assert depth.shape == (120, 160) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() >= 0.0 and depth.max() <= 1.0
    assert depth.std() > 1e-4                      # not a constant image
    err = capsys.readouterr().err
    assert 'fiffdepth model' in err and 'model nano (family fiffdepth; built-in, ' in err


def test_model_line_says_model_family_and_where_from():
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.model.runtime import model_line
    est = DepthEstimator.from_pretrained('nano', device='cpu', processing_res=64)
    info = est.describe()
    assert info['model'] == 'nano' and info['family'] == 'fiffdepth'
    line = model_line(info)
    assert line.startswith('nano (family fiffdepth; built-in, ') and str(PACKAGED) in line
    assert 'processing_res 64' in line


# ------------------------------------------------------------------ installed
def test_colcon_install_carries_nano_and_resolves_it_there(install_prefix):
    from fiffdepth_ros.demo.harness import install_env
    env = install_env(install_prefix, dict(os.environ))
    code = ('from fiffdepth_ros.model.checkpoint import resolve_checkpoint as r;'
            'print(r("nano").root)')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=str(install_prefix))
    assert out.returncode == 0, out.stderr
    root = Path(out.stdout.strip())
    assert Path(install_prefix) in root.parents
    for f in PACKAGED.rglob('*'):
        if f.is_file():
            assert (root / f.relative_to(PACKAGED)).is_file(), f


@pytest.mark.timeout(240)
def test_installed_node_without_a_model_parameter_runs_nano(tmp_path, install_prefix):
    """The node with no 'model' given at all: nano, said in the startup line and in
    /diagnostics; a frame of the demo room comes back as nano's relative depth. (Whether its
    metric depth is published depends on nano fitting the room's LiDAR anchors, a property of
    the weights that bench/nano_quality.py reports, so it is not asserted here.)"""
    import rclpy
    from fiffdepth_ros.conversions.backends import stamp_to_ns
    from fiffdepth_ros.conversions.images import image_msg_to_depth
    from fiffdepth_ros.demo.harness import NodeProcess, StreamClient
    from fiffdepth_ros.demo.scene import SyntheticRoom
    room = SyntheticRoom(320, 240, lidar_lines=32)
    namespace = f'nano{os.getpid()}'
    node = NodeProcess(tmp_path, {'device': 'cpu', 'processing_res': 128,
                                  'companion_wait': 1.0, 'qos_output_depth': 5,
                                  'publish_relative': True, 'diagnostics_period': 0.2,
                                  **room.static_lidar_params(), 'max_anchor_age': 0.05},
                       prefix=install_prefix, extra_args=['-r', f'__ns:=/{namespace}'])
    rclpy.init()
    client = None
    try:
        node.start()
        assert node.wait_for_log('ready:', 120), node.log()
        assert 'ready: model nano (family fiffdepth; built-in, ' in node.log()
        assert str(install_prefix) in node.log()          # the installed copy, not the source
        client = StreamClient(namespace=namespace, node_name='nano_e2e', outputs=['relative'])
        assert client.wait_for_node(30, lidar=True), node.log()
        frame = room.render()
        stamp = 1_700_000_900 * 1_000_000_000
        client.publish_frame(room, frame, stamp)

        def relative():
            return next((m for m in client.messages('relative')
                         if stamp_to_ns(m.header.stamp) == stamp), None)
        assert client.wait_until(lambda: relative() is not None, 30), node.log()
        depth = image_msg_to_depth(relative())
        assert depth.shape == (240, 320) and np.isfinite(depth).all()
        assert depth.min() >= 0.0 and depth.max() <= 1.0 and depth.std() > 1e-4
        assert client.wait_until(lambda: client.latest_diagnostics().get('model') == 'nano', 10)
        values = client.latest_diagnostics()
        assert values['family'] == 'fiffdepth' and values['model_source'].startswith('built-in')
    finally:
        if client is not None:
            client.close()
        node.stop()
        rclpy.try_shutdown()


def test_nano_ceiling_bench_round_trip_beats_the_models_own_pass(capsys):
    """bench/nano_ceiling.py on two held-out frames: the numbers it prints are metrics (in
    range), the normalised target alone is nearly exact, and nano's VAE round trip of the true
    depth beats its own (imperfect) t = 0 pass."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'nano_ceiling', Path(__file__).resolve().parents[1] / 'bench' / 'nano_ceiling.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parts = bench.load('nano')
    result = bench.measure(parts, range(bench.procedural.HELD_OUT_SEEDS.start,
                                        bench.procedural.HELD_OUT_SEEDS.start + 2), 128, 96,
                           0.005)
    pred_mae, mean_mae = result.pop('latent MAE')
    assert 0 < pred_mae < mean_mae
    for name, m in result.items():
        assert 0 <= m['abs_rel'] < 1 and 0 <= m['delta1'] <= 1, name
    assert result['target']['abs_rel'] < 0.05
    assert result['ceiling']['abs_rel'] < result['model t=0']['abs_rel']
    assert result['depth + noise 0.1']['abs_rel'] > result['depth + noise 0.01']['abs_rel']


def test_nano_runs_at_its_own_resolution():
    """The built-in model's resolution is its model_index.json's default_processing_resolution
    (what it was trained for), wherever processing_res is left at -1 (every default)."""
    import json
    from fiffdepth_ros.model.builtin import builtin_folder
    from fiffdepth_ros.model.estimator import DepthEstimator
    from fiffdepth_ros.params import defaults
    own = json.loads((builtin_folder('nano') / 'model_index.json').read_text())[
        'default_processing_resolution']
    assert defaults()['processing_res'] == -1
    est = DepthEstimator.from_pretrained('nano', device='cpu', precision='fp32')
    assert 0 < own < 768 and est.processing_res == own
    assert est.target_size(480, 640) == (int(480 * own / 640), own)
