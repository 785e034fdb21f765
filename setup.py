"""ament_python build of fiffdepth_ros (also installable with plain pip)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'fiffdepth_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config',
         glob('config/*.yaml') + ['fiffdepth_ros/resources/fastdds_large_data.xml']),
    ],
    # Real dependencies are declared in package.xml (rosdep) and requirements.txt (pip): colcon
    # does not resolve install_requires, and torch must stay the robot's own build.
    # resources/nano: the built-in model 'nano' (fiffdepth_ros.model.builtin), found next to
    # the installed package by pip and colcon installs alike.
    package_data={package_name: ['resources/*.xml', 'resources/nano/*.json',
                                 'resources/nano/*/*.json', 'resources/nano/*/*.txt',
                                 'resources/nano/*/*.safetensors']},
    install_requires=['setuptools'],
    # process_bags --ray (fleet-scale bag processing); also requirements-fleet.txt.
    # deploy: fiffdepth-export and the onnxruntime / openvino runtimes (model.runtimes); on a
    # Jetson use NVIDIA's onnxruntime-gpu wheel for its JetPack instead of onnxruntime.
    extras_require={'fleet': ['ray>=2.9'],
                    'deploy': ['onnx>=1.16', 'onnxruntime>=1.18', 'openvino>=2024.0']},
    zip_safe=True,
    maintainer='fiffdepth_ros maintainers',
    maintainer_email='maintainers@fiffdepth-ros.dev',
    description='Dense metric depth from one camera with FiffDepth, for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'depth_node = fiffdepth_ros.ros.depth_node:main',
            'depth_lifecycle_node = fiffdepth_ros.ros.lifecycle_node:main',
            'process_bag = fiffdepth_ros.bag.process_bag:main',
            'process_bags = fiffdepth_ros.bag.process_bags:main',
            'fiffdepth-predict = fiffdepth_ros.cli.predict:main',
            'fiffdepth-align = fiffdepth_ros.cli.align:main',
            'fiffdepth-eval = fiffdepth_ros.cli.evaluate:main',
            'fiffdepth-demo = fiffdepth_ros.demo.run_demo:main',
            'fiffdepth-train = fiffdepth_ros.cli.train:main',
            'fiffdepth-pseudolabel = fiffdepth_ros.cli.pseudolabel:main',
            'fiffdepth-export = fiffdepth_ros.cli.export:main',
        ],
    },
)
