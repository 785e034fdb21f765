"""depth.launch.py: launch/launch_ros are not installable here, so check what can be checked:
it compiles, uses only the public launch API, declares the documented arguments and remaps the
node's topics from them."""
import ast
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'depth.launch.py'
ARGUMENTS = {'namespace', 'image', 'camera_info', 'lidar', 'stereo_depth', 'params_file', 'model',
             'device', 'use_sim_time', 'dds_profile', 'managed'}


def _tree():
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def test_compiles_and_defines_generate_launch_description():
    compile(LAUNCH.read_text(), str(LAUNCH), 'exec')
    names = {n.name for n in _tree().body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in names


def test_imports_only_public_launch_api():
    imported = set()
    for node in ast.walk(_tree()):
        if isinstance(node, ast.ImportFrom):
            assert node.module in ('launch', 'launch.actions', 'launch.conditions',
                                   'launch.substitutions', 'launch_ros.actions',
                                   'launch_ros.substitutions'), node.module
            imported |= {a.name for a in node.names}
    assert {'DeclareLaunchArgument', 'LaunchConfiguration', 'PathJoinSubstitution',
            'FindPackageShare', 'Node'} <= imported


def test_declares_every_documented_argument():
    arguments = next(n for n in _tree().body if isinstance(n, ast.Assign)
                     and n.targets[0].id == 'ARGUMENTS')
    declared = {elt.elts[0].value for elt in arguments.value.elts}
    assert declared == ARGUMENTS


def test_remaps_every_input_topic_and_uses_package_config():
    text = LAUNCH.read_text()
    for topic in ("'image'", "'image/compressed'", "'camera_info'", "'lidar/points'",
                  "'stereo/depth'"):
        assert f'({topic},' in text, topic
    assert "FindPackageShare('fiffdepth_ros'), 'config'" in text and "'default.yaml'" in text
    assert "executable='depth_node'" in text
    assert "executable='depth_lifecycle_node'" in text


def test_sets_the_large_data_dds_profile_unless_one_is_set():
    text = LAUNCH.read_text()
    assert "SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE'" in text
    assert "EnvironmentVariable(\n        'FASTDDS_DEFAULT_PROFILES_FILE'" in text
    assert "'fastdds_large_data.xml'" in text


# ---------------------------------------------------------------------- evaluated with stand-ins
class _Config:
    def __init__(self, name, **_):
        self.name = name


def _install_fake_launch(monkeypatch):
    """Minimal stand-ins for the launch API: substitutions are resolved right away from a dict
    of launch arguments, so which node a set of arguments starts can be checked here."""
    import sys
    import types
    values = {}

    def resolve(part):
        if isinstance(part, _Config):
            return values[part.name]
        if isinstance(part, list):
            return ''.join(resolve(p) for p in part)
        return part if isinstance(part, str) else str(part)

    class PythonExpression:
        def __init__(self, parts):
            self.parts = parts

        def __str__(self):
            return str(eval(''.join(resolve(p) for p in self.parts)))

    class IfCondition:
        def __init__(self, expr):
            self.expr = expr

        def true(self):
            return resolve(self.expr).lower() in ('true', '1')

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class Node(Action):
        pass

    class LifecycleNode(Action):
        pass

    modules = {
        'launch': dict(LaunchDescription=lambda entities: entities),
        'launch.actions': dict(DeclareLaunchArgument=Action, SetEnvironmentVariable=Action),
        'launch.conditions': dict(IfCondition=IfCondition),
        'launch.substitutions': dict(EnvironmentVariable=Action, LaunchConfiguration=_Config,
                                     PathJoinSubstitution=Action,
                                     PythonExpression=PythonExpression),
        'launch_ros.actions': dict(Node=Node, LifecycleNode=LifecycleNode),
        'launch_ros.substitutions': dict(FindPackageShare=Action),
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    return values, Node, LifecycleNode



@pytest.mark.parametrize('managed, model', [('false', ''), ('false', '/m'), ('true', ''),
                                            ('true', '/m'), ('True', '/m')])
def test_exactly_one_node_of_the_right_kind_starts(monkeypatch, managed, model):
    values, Node, LifecycleNode = _install_fake_launch(monkeypatch)
    namespace = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), 'exec'), namespace)
    values.update(managed=managed, model=model, lidar='', stereo_depth='')
    entities = namespace['generate_launch_description']()
    started = [e for e in entities if isinstance(e, (Node, LifecycleNode))
               and e.kwargs['condition'].true()]
    assert len(started) == 1
    node = started[0]
    lifecycle = managed.lower() == 'true'
    assert isinstance(node, LifecycleNode) == lifecycle
    assert node.kwargs['executable'] == ('depth_lifecycle_node' if lifecycle else 'depth_node')
    overrides = node.kwargs['parameters'][1]
    assert ('model' in overrides) == bool(model)
