"""The colcon-installed depth_node over real DDS with an exported graph as its model.

The node is given an export folder (fiffdepth-export of the tiny checkpoint) as 'model' and
runs it on ONNX Runtime ('runtime: auto' picks the folder's own runtime); its raw relative
output must equal the torch engine's prediction of the same frame, and /diagnostics must say
which runtime runs it."""
import os

import numpy as np
import pytest

from fiffdepth_ros.conversions.images import image_msg_to_depth
from fiffdepth_ros.demo.harness import NodeProcess, StreamClient
from fiffdepth_ros.demo.scene import SyntheticRoom
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.model.export import ExportConfig, export_single_pass

pytestmark = pytest.mark.timeout(300)

ROOM = SyntheticRoom(320, 240, lidar_lines=32)
RUN = f'export{os.getpid()}'


def test_node_runs_an_export_over_dds(tmp_path, tiny_checkpoint, install_prefix, rclpy_context):
    export = tmp_path / 'export'
    export_single_pass(ExportConfig(model=str(tiny_checkpoint), output=export, dynamic=True,
                                    processing_res=128))
    params = {'model': str(export), 'device': 'cpu', 'processing_res': 128,
              'companion_wait': 1.0, 'publish_relative': True, 'diagnostics_period': 0.2,
              'qos_output_depth': 5, **ROOM.static_lidar_params()}
    node = NodeProcess(tmp_path / 'node', params, prefix=install_prefix,
                       extra_args=['-r', f'__ns:=/{RUN}'])
    node.start()
    client = None
    try:
        assert node.wait_for_log('ready:', 120), node.log()
        assert 'onnxruntime on CPUExecutionProvider' in node.log()
        client = StreamClient(namespace=RUN, node_name='export_client')
        assert client.wait_for_node(30, lidar=True), node.log()
        frame = ROOM.render(t=0.0)
        stamp = 1_700_000_000 * 10**9
        client.publish_frame(ROOM, frame, stamp)

        def relative_arrived():
            return any(m.header.stamp.sec == stamp // 10**9 for m in client.messages('relative'))
        assert client.wait_until(relative_arrived, 60), node.log()
        relative = image_msg_to_depth(client.messages('relative')[-1])
        reference = DepthEstimator.from_pretrained(str(tiny_checkpoint), device='cpu',
                                                   processing_res=128).predict(frame.rgb)
        valid = np.isfinite(relative)
        assert valid.mean() > 0.9
        span = reference.max() - reference.min()
        assert np.abs(relative[valid] - reference[valid]).max() <= 1e-4 * span
        assert client.wait_until(lambda: client.count('depth') > 0, 20), node.log()
        client.wait_until(lambda: client.count('diagnostics') > 0, 10)
        values = {kv.key: kv.value for kv in client.messages('diagnostics')[-1].status[0].values}
        assert values['runtime'] == 'onnxruntime'
        assert values['providers'] == "['CPUExecutionProvider']"
    finally:
        if client is not None:
            client.close()
        node.stop()
