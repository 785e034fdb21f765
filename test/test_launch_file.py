"""depth.launch.py: launch/launch_ros are not installable here, so check what can be checked:
it compiles, uses only the public launch API, declares the documented arguments and remaps the
node's topics from them."""
import ast
from pathlib import Path

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'depth.launch.py'
ARGUMENTS = {'namespace', 'image', 'camera_info', 'lidar', 'stereo_depth', 'params_file', 'model',
             'device', 'use_sim_time', 'dds_profile'}


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


def test_sets_the_large_data_dds_profile_unless_one_is_set():
    text = LAUNCH.read_text()
    assert "SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE'" in text
    assert "EnvironmentVariable(\n        'FASTDDS_DEFAULT_PROFILES_FILE'" in text
    assert "'fastdds_large_data.xml'" in text
