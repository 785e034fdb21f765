"""fiffdepth-export and the exported-graph runtimes against the torch engine.

Every single-pass family is exported from a tiny random checkpoint in its released layout; the
graph then runs on ONNX Runtime and on OpenVINO through the same estimator (shared preprocess
and postprocess) and must equal the torch engine to float32 rounding (see TOLERANCE), at sizes
that are and are not multiples of 8 and 64, native (processing_res 0) and downscaled.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fiffdepth_ros.model.checkpoint import ModelLoadError
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.model.export import ExportConfig, ExportError, export_single_pass
from fiffdepth_ros.model.runtimes import TorchRuntime, is_export, read_export_info
from fiffdepth_ros.model.runtimes.export_info import METADATA_FILE
from fiffdepth_ros.model.runtimes.onnx_runtime import CPU, CUDA, TENSORRT, choose_providers
from fiffdepth_ros.model.tiny import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Float32 rounding, of the torch output's range: at most 2e-4 at any pixel and 1e-5 on average.
# The tiny random models amplify rounding: on an AVX-512 machine the torch engine's own output
# moves by up to 5e-5 of its range between 1 and 2 threads, ONNX Runtime and OpenVINO differ
# from it by up to 0.9e-4 and 1.03e-4 at 128x192 (mean 4e-6) and by 2e-5 from each other. A
# wrong graph (a resize, a normalisation, a missing constant) moves every pixel: the mean.
TOLERANCE = 2e-4
MEAN_TOLERANCE = 1e-5
# (folder name, layout): the name tells E2E-FT from Marigold and Lotus depth from disparity.
FAMILIES = {'fiffdepth': ('tiny-fiffdepth', 'fiffdepth'),
            'e2e_ft': ('tiny-e2e-ft', 'e2e_ft'),
            'lotus_d': ('tiny-lotus-depth-d-v1-0', 'lotus_d'),
            'lotus_d_disparity': ('tiny-lotus-depth-d-disparity', 'lotus_d')}
# (image h, w, processing_res): multiples of 64 (128x192 native), of 8 only (48x72 native),
# of neither (37x51 native, 101x75 downscaled to 64 -> 64x47, 130x200 -> 72x110).
CASES = [(128, 192, 0), (48, 72, 0), (37, 51, 0), (101, 75, 64), (130, 200, 110)]


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('export_models')
    return {family: build_tiny_checkpoint(root / name, family=layout)
            for family, (name, layout) in FAMILIES.items()}


@pytest.fixture(scope='module')
def dynamic_exports(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp('exports')
    for family, path in checkpoints.items():
        export_single_pass(ExportConfig(model=str(path), output=root / family, dynamic=True,
                                        processing_res=64))
    return {family: root / family for family in checkpoints}


def images(cases=CASES, seed=0):
    rng = np.random.default_rng(seed)
    for h, w, res in cases:
        # A smooth scene plus noise: realistic structure at every resize.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=-1) * 200
        yield res, np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def torch_engine(path, res, one=None):
    return one or DepthEstimator.from_pretrained(str(path), device='cpu', precision='fp32',
                                                 processing_res=res, runtime='torch')


def assert_close(reference, depth, what=''):
    assert depth.shape == reference.shape and depth.dtype == np.float32
    span = float(reference.max() - reference.min())
    assert span > 0.01, f'{what}: a degenerate reference'
    diff = np.abs(depth - reference)
    error, mean = float(diff.max()), float(diff.mean())
    assert error <= TOLERANCE * span, f'{what}: max difference {error:.3g} of range {span:.3g}'
    assert mean <= MEAN_TOLERANCE * span, f'{what}: mean difference {mean:.3g} of range {span:.3g}'


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
@pytest.mark.parametrize('family', list(FAMILIES))
def test_dynamic_export_equals_the_torch_engine(family, runtime, checkpoints, dynamic_exports,
                                                one_torch_thread):
    reference = torch_engine(checkpoints[family], 0)
    exported = DepthEstimator.from_pretrained(str(dynamic_exports[family]), device='cpu',
                                              processing_res=0, runtime=runtime)
    assert exported.runtime.name == runtime and exported.family == family
    assert exported.output_space == reference.output_space
    assert exported.describe()['runtime'] == runtime
    for res, image in images():
        reference.processing_res = exported.processing_res = res
        assert_close(reference.predict(image), exported.predict(image),
                     f'{family} on {runtime}, {image.shape[:2]} at {res}')
    # predict_batch (a batch-1 graph: one run per frame) and predict_on_device.
    batch = [image for _, image in images([(48, 72, 0)] * 2, seed=1)]
    reference.processing_res = exported.processing_res = 0
    for ref, out in zip(reference.predict_batch(batch), exported.predict_batch(batch)):
        assert_close(ref, out, 'batch')
    assert_close(reference.predict(batch[0]), exported.predict_on_device(batch[0]).numpy(),
                 'on device')


def test_metadata_describes_the_export(checkpoints, dynamic_exports):
    info = read_export_info(dynamic_exports['lotus_d_disparity'])
    assert (info.family, info.output_space, info.dynamic, info.precision, info.opset) == (
        'lotus_d_disparity', 'disparity', True, 'fp32', 18)
    assert info.source_model == str(checkpoints['lotus_d_disparity'])
    assert info.package_version and info.runtime == 'onnxruntime' and info.min_side == 8
    import onnx
    graph = onnx.load(str(dynamic_exports['fiffdepth'] / info.graph)).graph
    # The empty-prompt embedding is a constant: the only input is the image.
    assert [i.name for i in graph.input] == ['pixels']
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [1, 3, 'height', 'width']


@pytest.mark.parametrize('size', [(48, 64), (37, 50)])
def test_static_export_and_other_frame_sizes(size, checkpoints, tmp_path, caplog,
                                             one_torch_thread):
    h, w = size
    out = tmp_path / 'static'
    info = export_single_pass(ExportConfig(model=str(checkpoints['e2e_ft']), output=out,
                                           height=h, width=w))
    assert (info.dynamic, info.height, info.width, info.processing_res) == (False, h, w,
                                                                              max(h, w))
    reference = torch_engine(checkpoints['e2e_ft'], 0)
    exported = DepthEstimator.from_pretrained(str(out), device='cpu', processing_res=0)
    assert exported.describe()['static_size'] == f'{h}x{w}'
    (res, image), = images([(h, w, 0)])
    assert_close(reference.predict(image), exported.predict(image), 'at its own size')
    # Another size: resized to the export's (aspect not kept), said once; the reference is the
    # torch engine given the same fixed size.
    fixed = TorchRuntime()
    fixed.fixed_size = (h, w)
    reference.runtime = fixed
    caplog.set_level(logging.WARNING, logger='fiffdepth_ros.model.estimator')
    for _, image in images([(90, 100, 0), (90, 100, 0)]):
        assert_close(reference.predict(image), exported.predict(image), 'other size')
    said = [r for r in caplog.records if 'static export' in r.getMessage()
            and r.name == 'fiffdepth_ros.model.estimator']
    assert len(said) == 2        # once by the reference engine, once by the exported one
    assert exported.describe()['static_size'] == f'{h}x{w} (frames of another size resized to it)'
    # A wrong-size input to the static graph itself is refused by the runtime.
    with pytest.raises(Exception):
        exported.runtime.depth(exported, torch.zeros(1, 3, h + 8, w))


def test_fp16_export_keeps_the_decoder_in_fp32(checkpoints, tmp_path, one_torch_thread):
    import onnx
    out = tmp_path / 'fp16'
    info = export_single_pass(ExportConfig(model=str(checkpoints['fiffdepth']), output=out,
                                           dynamic=True, processing_res=64, fp16=True))
    assert (info.precision, info.decoder_precision) == ('fp16', 'fp32')
    model = onnx.load(str(out / info.graph))
    kinds = {}
    for tensor in model.graph.initializer:
        part = ('decoder' if 'decoder' in tensor.name or 'post_quant' in tensor.name else
                'unet' if tensor.name.startswith('unet.') else
                'encoder' if 'encoder' in tensor.name or 'quant_conv' in tensor.name else None)
        if part:
            kinds.setdefault(part, set()).add(tensor.data_type)
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert kinds['unet'] == {half} and kinds['encoder'] == {half}
    assert kinds['decoder'] == {single}
    io_types = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io_types == [single, single]
    # OpenVINO runs it on the CPU: close to the fp32 engine (fp16 weights and rounding of a
    # random tiny model, so not 1e-4: measured median 0.45 %, p99 3.5 %).
    reference = torch_engine(checkpoints['fiffdepth'], 0)
    exported = DepthEstimator.from_pretrained(str(out), device='cpu', processing_res=0,
                                              runtime='openvino')
    assert exported.describe()['precision'] == 'fp16'
    for _, image in images([(48, 72, 0)]):
        ref, depth = reference.predict(image), exported.predict(image)
        error = np.abs(depth - ref) / (ref.max() - ref.min())
        print('fp16 vs fp32: median', np.median(error), 'p99', np.quantile(error, 0.99),
              'max', error.max())
        assert np.median(error) < 0.01 and np.quantile(error, 0.99) < 0.06


def test_marigold_is_refused_with_a_reason(tmp_path):
    marigold = build_tiny_checkpoint(tmp_path / 'tiny-marigold', family='marigold')
    with pytest.raises(ExportError, match='stays on the torch runtime'):
        export_single_pass(ExportConfig(model=str(marigold), output=tmp_path / 'x',
                                        dynamic=True))


def test_bad_export_requests_are_clear_errors(checkpoints, tmp_path):
    with pytest.raises(ExportError, match='--height and --width'):
        export_single_pass(ExportConfig(model='nano', output=tmp_path / 'a'))
    with pytest.raises(ExportError, match='--height and --width'):
        export_single_pass(ExportConfig(model='nano', output=tmp_path / 'a', height=64,
                                        dynamic=True))
    with pytest.raises(ExportError, match='at least 8'):
        export_single_pass(ExportConfig(model=str(checkpoints['fiffdepth']),
                                        output=tmp_path / 'b', height=4, width=64))
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'notes.txt').write_text('mine')
    with pytest.raises(ExportError, match='not an export folder'):
        export_single_pass(ExportConfig(model='nano', output=tmp_path / 'c', dynamic=True))


def test_runtime_and_folder_mismatches_are_clear_errors(checkpoints, dynamic_exports,
                                                        tmp_path, monkeypatch):
    export = dynamic_exports['fiffdepth']
    with pytest.raises(ModelLoadError, match='fiffdepth-export'):
        DepthEstimator.from_pretrained(str(checkpoints['fiffdepth']), device='cpu',
                                       runtime='onnxruntime')
    with pytest.raises(ModelLoadError, match="runtime 'torch' runs the checkpoint"):
        DepthEstimator.from_pretrained(str(export), device='cpu', runtime='torch')
    with pytest.raises(ModelLoadError, match="model_family 'e2e_ft' does not match"):
        DepthEstimator.from_pretrained(str(export), device='cpu', model_family='e2e_ft')
    with pytest.raises(ValueError, match='unknown runtime'):
        DepthEstimator.from_pretrained(str(export), device='cpu', runtime='tensorflow')
    # A missing runtime package: one error naming it and the pip command.
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(ModelLoadError, match='pip install openvino'):
        DepthEstimator.from_pretrained(str(export), device='cpu', runtime='openvino')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(ModelLoadError, match='pip install onnxruntime'):
        DepthEstimator.from_pretrained(str(export), device='cpu')


def test_openvino_bf16_is_an_opt_in_cpu_precision(checkpoints, dynamic_exports, tmp_path,
                                                  one_torch_thread):
    """precision 'bf16' runs the fp32 graph in bfloat16 on OpenVINO's CPU plugin: on the
    trained nano, near the fp32 output but not equal to it (so bf16 really ran; random tiny
    weights are no measure of bf16's error); a CPU without bf16 is a clear error, and the
    runtimes that have no bf16 path say where it is."""
    import openvino
    export = tmp_path / 'nano-export'
    export_single_pass(ExportConfig(model='nano', output=export, height=96, width=128))
    fp32 = DepthEstimator.from_pretrained(str(export), device='cpu', runtime='openvino',
                                          precision='fp32')
    has_bf16 = 'BF16' in openvino.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    if has_bf16:
        bf16 = DepthEstimator.from_pretrained(str(export), device='cpu', runtime='openvino',
                                              precision='bf16')
        assert bf16.describe()['precision'].startswith('bf16')
        assert fp32.describe()['precision'] == 'fp32'
        for _, image in images([(96, 128, 0), (120, 160, 0)]):
            reference = fp32.predict(image)
            span = float(reference.max() - reference.min())
            error = np.abs(bf16.predict(image) - reference) / span
            assert 1e-5 < error.max() < 5e-2 and error.mean() < 5e-3, (image.shape, error.max())
    else:
        with pytest.raises(ModelLoadError, match='no bf16 support'):
            DepthEstimator.from_pretrained(str(export), device='cpu', runtime='openvino',
                                           precision='bf16')
    with pytest.raises(ModelLoadError, match="use runtime 'openvino'"):
        DepthEstimator.from_pretrained(str(dynamic_exports['fiffdepth']), device='cpu',
                                       runtime='onnxruntime', precision='bf16')
    with pytest.raises(ValueError, match='runtime openvino'):
        DepthEstimator.from_pretrained(str(checkpoints['fiffdepth']), device='cpu',
                                       precision='bf16')


def test_metadata_missing_or_of_another_version_is_refused(dynamic_exports, tmp_path):
    import shutil
    copy = tmp_path / 'copy'
    shutil.copytree(dynamic_exports['fiffdepth'], copy)
    meta = json.loads((copy / METADATA_FILE).read_text())
    (copy / METADATA_FILE).write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ModelLoadError, match='format version 99'):
        DepthEstimator.from_pretrained(str(copy), device='cpu')
    (copy / METADATA_FILE).write_text(json.dumps(dict(meta, format='something-else')))
    with pytest.raises(ModelLoadError, match="not a fiffdepth export's metadata"):
        DepthEstimator.from_pretrained(str(copy), device='cpu')
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    (copy / 'model.onnx').unlink()
    with pytest.raises(ModelLoadError, match='has no model.onnx'):
        DepthEstimator.from_pretrained(str(copy), device='cpu')
    (copy / METADATA_FILE).unlink()
    assert not is_export(copy)
    with pytest.raises(ModelLoadError, match='not an export folder'):
        read_export_info(copy)
    with pytest.raises(ModelLoadError, match='model_index.json is missing'):
        DepthEstimator.from_pretrained(str(copy), device='cpu')


def test_provider_order_fallback_and_explicit_choice(caplog):
    caplog.set_level(logging.WARNING)
    cpu_only = [CPU]
    assert choose_providers(None, cpu_only, 'cpu') == [CPU]
    assert not caplog.records                      # asked for the CPU: nothing to say
    assert choose_providers(None, cpu_only, 'auto') == [CPU]
    assert len(caplog.records) == 1 and TENSORRT in caplog.records[0].getMessage()
    gpu = [TENSORRT, CUDA, CPU]
    assert choose_providers(None, gpu, 'cuda') == [TENSORRT, CUDA, CPU]
    assert choose_providers(['cuda', 'cpu'], gpu, 'auto') == [CUDA, CPU]
    with pytest.raises(ModelLoadError, match='TensorrtExecutionProvider is not available'):
        choose_providers(['tensorrt'], cpu_only, 'auto')      # that one only: an error
    with pytest.raises(ModelLoadError, match='not available'):
        choose_providers(['cuda', 'tensorrt'], cpu_only, 'auto')   # none left


def _cli_env(tmp_path):
    env = dict(os.environ, FIFFDEPTH_CACHE=str(tmp_path / 'empty_cache'), OMP_NUM_THREADS='1',
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return env


def test_cli_export_then_predict_in_fresh_processes(checkpoints, tmp_path):
    """fiffdepth-export and fiffdepth-predict, each in a new process with an empty cache: the
    export folder is accepted where a model folder is, and predicts what torch predicts."""
    import cv2
    env = _cli_env(tmp_path)
    cmd = [sys.executable, '-m', 'fiffdepth_ros.cli.export', '--model',
           str(checkpoints['lotus_d']), '--output', str(tmp_path / 'export'), '--dynamic',
           '--processing-res', '64']
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'lotus_d (depth, fp32, dynamic size, opset 18)' in done.stderr
    assert (tmp_path / 'empty_cache' / 'empty_prompt').is_dir()   # computed, then folded in
    (_, image), = images([(60, 90, 0)])
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'frame.png'), image[..., ::-1])
    outputs = {}
    # The export's processing resolution (64) is fiffdepth-predict's default for it.
    for runtime, model, res in (('onnxruntime', tmp_path / 'export', []),
                                ('torch', checkpoints['lotus_d'], ['--processing-res', '64'])):
        out = tmp_path / runtime
        done = subprocess.run(
            [sys.executable, '-m', 'fiffdepth_ros.cli.predict', '--model', str(model),
             '--input', str(tmp_path / 'in'), '--output', str(out), '--device', 'cpu',
             '--runtime', 'auto', *res],
            env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (f'{runtime} on CPUExecutionProvider' in done.stderr) == (runtime != 'torch')
        assert 'processing_res 64' in done.stderr
        outputs[runtime] = np.load(out / 'frame.npy')
    assert_close(outputs['torch'], outputs['onnxruntime'], 'fiffdepth-predict')
    bad = subprocess.run([sys.executable, '-m', 'fiffdepth_ros.cli.export', '--model', 'nano',
                          '--output', str(tmp_path / 'x'), '--height', '64'],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and '--height and --width' in bad.stderr


def test_weights_over_the_protobuf_limit_go_to_external_data(checkpoints, tmp_path,
                                                             monkeypatch, one_torch_thread):
    """An SD2-size fp32 graph (3.8 GB) exceeds ONNX's 2 GiB protobuf limit: its weights go to
    one model.onnx.data. The limit is lowered here so the tiny model takes that path."""
    import fiffdepth_ros.model.export as export_module
    monkeypatch.setattr(export_module, 'PROTOBUF_LIMIT', 1)
    out = tmp_path / 'external'
    info = export_single_pass(ExportConfig(model=str(checkpoints['fiffdepth']), output=out,
                                           dynamic=True, processing_res=64))
    assert info.external_data == 'model.onnx.data'
    assert sorted(p.name for p in out.iterdir()) == ['fiffdepth_export.json', 'model.onnx',
                                                     'model.onnx.data']
    assert (out / 'model.onnx.data').stat().st_size > (out / 'model.onnx').stat().st_size
    assert (out / 'model.onnx.data').stat().st_mode & 0o044 == 0o044     # readable by others
    reference = torch_engine(checkpoints['fiffdepth'], 0)
    for runtime in ('onnxruntime', 'openvino'):
        exported = DepthEstimator.from_pretrained(str(out), device='cpu', processing_res=0,
                                                  runtime=runtime)
        for _, image in images([(37, 51, 0)]):
            assert_close(reference.predict(image), exported.predict(image), runtime)
    (out / 'model.onnx.data').unlink()
    with pytest.raises(ModelLoadError, match='lacks model.onnx.data'):
        DepthEstimator.from_pretrained(str(out), device='cpu')
