"""Start the FiffDepth depth node.

    ros2 launch fiffdepth_ros depth.launch.py image:=/camera/image_rect \
        camera_info:=/camera/camera_info lidar:=/lidar/points model:=/path/to/fiffdepth

managed:=true starts the lifecycle (managed) node instead, for a lifecycle manager such as
Navigation 2's: it waits unconfigured; configure loads the model, activate publishes.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import (EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution,
                                  PythonExpression)
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ('namespace', '', 'namespace of the node and its output topics'),
    ('image', 'image', 'camera image topic (with image_transport: compressed in the params '
                       'file, IMAGE/compressed is used)'),
    ('camera_info', 'camera_info', 'camera_info topic of the image'),
    ('lidar', '', 'LiDAR PointCloud2 topic for metric anchors (empty = none)'),
    ('stereo_depth', '', 'stereo or depth-camera depth image topic (32FC1 m / 16UC1 mm) for '
                         'metric anchors (empty = none)'),
    ('params_file', PathJoinSubstitution([FindPackageShare('fiffdepth_ros'), 'config',
                                          'default.yaml']), 'parameters file'),
    ('model', '', "checkpoint folder, hub id or 'nano' (empty = the params_file value; the "
                  "package's default.yaml: nano, the built-in demonstration model)"),
    ('device', 'auto', 'auto (CUDA when available), cpu, cuda or cuda:N'),
    ('use_sim_time', 'false', 'use /clock, e.g. when replaying a bag'),
    ('managed', 'false', 'true: a lifecycle (managed) node, brought up by a lifecycle manager '
                         '(configure loads the model, activate publishes, deactivate stops, '
                         'cleanup frees the GPU)'),
    # Large images and clouds need larger Fast DDS buffers (see the file); a profile already
    # set in the environment is kept.
    ('dds_profile', EnvironmentVariable(
        'FASTDDS_DEFAULT_PROFILES_FILE',
        default_value=PathJoinSubstitution([FindPackageShare('fiffdepth_ros'), 'config',
                                            'fastdds_large_data.xml'])),
     'Fast DDS XML profile for the node (empty = Fast DDS defaults)'),
]


def _is_set(name):
    return PythonExpression(["'", LaunchConfiguration(name), "' != ''"])


def _not(condition):
    return PythonExpression(["not ('", condition, "'.lower() == 'true')"])


def _is(condition, value):
    return PythonExpression(["'", condition, "'.lower() == '", value, "'"])


def _all(a, b):
    return PythonExpression(["'", a, "'.lower() == 'true' and '", b, "'.lower() == 'true'"])


def _topic_or(name, default):
    # An empty remapping target is invalid: keep the node's own name when unset.
    return PythonExpression(["'", LaunchConfiguration(name), "' or '", default, "'"])


def generate_launch_description():
    overrides = {
        'device': LaunchConfiguration('device'),
        'use_sim_time': LaunchConfiguration('use_sim_time'),
        'use_lidar': _is_set('lidar'),
        'stereo_source': PythonExpression(
            ["'depth' if '", LaunchConfiguration('stereo_depth'), "' else 'none'"]),
    }
    image = LaunchConfiguration('image')
    common = dict(
        package='fiffdepth_ros', name='depth_node',
        namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
        remappings=[
            ('image', image),
            ('image/compressed', [image, '/compressed']),
            ('camera_info', LaunchConfiguration('camera_info')),
            ('lidar/points', _topic_or('lidar', 'lidar/points')),
            ('stereo/depth', _topic_or('stereo_depth', 'stereo/depth')),
        ])
    params_file = LaunchConfiguration('params_file')
    managed = LaunchConfiguration('managed')
    # The model argument overrides the params file only when it is given.
    with_model = [params_file, dict(overrides, model=LaunchConfiguration('model'))]
    nodes = []
    for parameters, model_given in ((with_model, 'true'), ([params_file, overrides], 'false')):
        nodes.append(Node(executable='depth_node', parameters=parameters,
                          condition=IfCondition(_all(_not(managed), _is(_is_set('model'),
                                                                          model_given))),
                          **common))
        nodes.append(LifecycleNode(executable='depth_lifecycle_node', parameters=parameters,
                                   condition=IfCondition(_all(managed, _is(_is_set('model'),
                                                                           model_given))),
                                   **common))
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, default, text in ARGUMENTS]
        + [SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                                  LaunchConfiguration('dds_profile'))]
        + nodes)
