"""The colcon-built package: ament index marker, executables and share files where ROS expects."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLES = ('depth_node', 'depth_lifecycle_node', 'process_bag', 'fiffdepth-predict',
               'fiffdepth-align', 'fiffdepth-demo', 'fiffdepth-export')


def test_package_xml_is_format_3_ament_python_and_parses_with_catkin_pkg():
    from catkin_pkg.package import parse_package
    package = parse_package(str(ROOT / 'package.xml'))      # validates e-mails, names, ...
    assert package.name == 'fiffdepth_ros' and package.package_format == 3
    assert package.get_build_type() == 'ament_python'
    exec_deps = {d.name for d in package.exec_depends}
    assert {'rclpy', 'sensor_msgs', 'stereo_msgs', 'diagnostic_msgs', 'launch_ros'} <= exec_deps
    version = ast.literal_eval(
        next(line.split('=')[1].strip().rstrip(',') for line in
             (ROOT / 'setup.py').read_text().splitlines() if line.strip().startswith('version=')))
    assert package.version == version


def test_colcon_install_layout(install_prefix):
    pkg = Path(install_prefix) / 'fiffdepth_ros'
    assert (pkg / 'share/ament_index/resource_index/packages/fiffdepth_ros').is_file()
    assert (pkg / 'share/fiffdepth_ros/package.xml').is_file()
    assert (pkg / 'share/fiffdepth_ros/launch/depth.launch.py').is_file()
    for config in ('default.yaml', 'jetson.yaml', 'fastdds_large_data.xml'):
        assert (pkg / 'share/fiffdepth_ros/config' / config).is_file()
    for exe in EXECUTABLES:
        path = pkg / 'lib/fiffdepth_ros' / exe
        assert path.is_file() and os.access(path, os.X_OK), exe


def test_installed_console_scripts_run(install_prefix):
    from fiffdepth_ros.demo.harness import install_env
    env = install_env(install_prefix, dict(os.environ))
    for exe in ('process_bag', 'fiffdepth-predict', 'fiffdepth-align', 'fiffdepth-demo'):
        path = Path(install_prefix) / 'fiffdepth_ros/lib/fiffdepth_ros' / exe
        result = subprocess.run([str(path), '--help'], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, (exe, result.stderr)
        assert 'usage' in result.stdout.lower(), exe


def test_ament_index_finds_the_installed_package(install_prefix):
    code = ('from ament_index_python.packages import get_package_share_directory as g;'
            'print(g("fiffdepth_ros"))')
    from fiffdepth_ros.demo.harness import install_env
    env = install_env(install_prefix, dict(os.environ))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == Path(install_prefix) / 'fiffdepth_ros/share/fiffdepth_ros'
