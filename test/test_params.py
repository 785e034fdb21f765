"""The parameter schema: validation messages, YAML loading, shipped config files in sync."""
import importlib.util
from pathlib import Path

import pytest

from fiffdepth_ros import params as P

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_every_spec_is_documented():
    values = P.validate({})
    assert set(values) == set(P.SPECS)
    for spec in P.SPECS.values():
        assert len(spec.description) > 15, spec.name
        assert spec.coerce(spec.default) == spec.default


@pytest.mark.parametrize('name, bad, expect', [
    ('precision', 'fp8', "one of 'auto', 'fp16', 'fp32'"),
    ('processing_res', -2, 'an integer in [-1, 8192]'),
    ('processing_res', 1.5, 'an integer'),
    ('processing_res', True, 'an integer'),
    ('max_range', 'far', 'a number'),
    ('max_range', float('nan'), 'a number'),
    ('filter_responsiveness', 0.0, 'a number in [0.01, 1]'),
    ('cloud_type', 'xyzi', "one of 'xyz', 'xyzrgb', 'none'"),
    ('local_correction', 'yes', 'true or false'),
    ('lidar_translation', [1.0, 2.0], 'a list of numbers of 3'),
    ('model', 3, 'a string'),
])
def test_bad_values_are_refused_with_what_is_allowed(name, bad, expect):
    with pytest.raises(P.ParameterError) as err:
        P.validate({name: bad})
    assert name in str(err.value) and expect in str(err.value)


def test_coercion_accepts_ints_for_floats_and_lists():
    values = P.validate({'max_range': 30, 'lidar_translation': [0, 0, 1]})
    assert values['max_range'] == 30.0 and isinstance(values['max_range'], float)
    assert values['lidar_translation'] == [0.0, 0.0, 1.0]


@pytest.mark.parametrize('changes, expect', [
    ({'min_range': 5.0, 'max_range': 5.0}, 'min_range'),
    ({'device': 'gpu'}, "'device'"),
    ({'device': 'cuda:x'}, "'device'"),
    ({'lidar_rotation': [0.0, 0.0, 0.0, 0.0]}, 'quaternion'),
    ({'colorize_min': 3.0, 'colorize_max': 1.0}, 'colorize_max'),
    ({'no_such_param': 1}, 'unknown parameter'),
])
def test_cross_parameter_rules(changes, expect):
    with pytest.raises(P.ParameterError) as err:
        P.validate(changes)
    assert expect in str(err.value)


def test_device_forms_accepted():
    for device in ('auto', 'cpu', 'cuda', 'cuda:1'):
        assert P.validate({'device': device})['device'] == device


def test_load_yaml_merges_wildcard_then_node_section(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text('/**:\n  ros__parameters:\n    max_range: 9.0\n    cloud_stride: 2\n'
                    '/robot/depth_node:\n  ros__parameters:\n    cloud_stride: 4\n'
                    'other_node:\n  ros__parameters:\n    cloud_stride: 8\n')
    assert P.load_yaml(path) == {'max_range': 9.0, 'cloud_stride': 4}


def test_load_yaml_plain_mapping_and_errors(tmp_path):
    plain = tmp_path / 'plain.yaml'
    plain.write_text('processing_res: 384\n')
    assert P.load_yaml(plain) == {'processing_res': 384}
    broken = tmp_path / 'broken.yaml'
    broken.write_text('a: [1, 2\n')
    with pytest.raises(P.ParameterError, match='not valid YAML'):
        P.load_yaml(broken)
    with pytest.raises(P.ParameterError, match='cannot read'):
        P.load_yaml(tmp_path / 'missing.yaml')


def _generator():
    spec = importlib.util.spec_from_file_location('generate_configs',
                                                  ROOT / 'scripts' / 'generate_configs.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('filename', ['default.yaml', 'jetson.yaml'])
def test_shipped_configs_are_valid_complete_and_in_sync(filename):
    path = ROOT / 'config' / filename
    loaded = P.load_yaml(path)
    assert set(loaded) == set(P.SPECS)          # every parameter documented in the file
    P.validate(loaded)
    gen = _generator()
    title, overrides = gen.CONFIGS[filename]
    assert path.read_text() == gen.render(title, overrides), 'run scripts/generate_configs.py'


def test_jetson_config_is_lighter_than_default():
    default = P.validate(P.load_yaml(ROOT / 'config' / 'default.yaml'))
    jetson = P.validate(P.load_yaml(ROOT / 'config' / 'jetson.yaml'))
    assert jetson['precision'] == 'fp16'
    # default: the model's own resolution (-1), which for the releases' SD2 models is 768
    from fiffdepth_ros.model.estimator import DEFAULT_PROCESSING_RES
    assert default['processing_res'] == -1
    assert 0 < jetson['processing_res'] < DEFAULT_PROCESSING_RES


def test_readme_parameter_table_is_in_sync():
    gen = _generator()
    readme = (ROOT / 'README.md').read_text()
    assert readme == gen.with_readme_table(readme), 'run scripts/generate_configs.py'
    for name in P.SPECS:
        assert f'| `{name}` |' in readme
