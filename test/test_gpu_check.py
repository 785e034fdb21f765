"""The GPU check kit's CPU smoke test: scripts/gpu_check.sh --smoke in a fresh process with an
empty cache. On this CPU-only machine every CPU row computes real numbers (fp16/bf16 against
fp32 on the CPU, eager timings, torch finishing against numpy, overlap, a tiny training step,
the exported graph on ONNX Runtime and OpenVINO); the CUDA rows say why they did not run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = 'skipped: CUDA is not available'
FAMILIES = ('fiffdepth', 'e2e_ft', 'lotus_d', 'lotus_d_disparity', 'marigold')


def _run_kit(tmp_path, *args):
    # A generous limit: the sections' budgets are its shares, and a stall of this shared
    # machine must not turn rows into 'time budget spent' here.
    env = dict(os.environ, FIFFDEPTH_CACHE=str(tmp_path / 'cache'), OMP_NUM_THREADS='1',
               HF_HOME=str(tmp_path / 'hf'), FIFFDEPTH_VENV=sys.prefix, GPU_CHECK_TOTAL='1500')
    done = subprocess.run([str(ROOT / 'scripts' / 'gpu_check.sh'), str(tmp_path / 'report'),
                           '--', '--smoke', '--work', str(tmp_path / 'work'), *args],
                          env=env, capture_output=True, text=True, timeout=1600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / 'report' / 'report.json').read_text())
    markdown = (tmp_path / 'report' / 'report.md').read_text()
    return done, report, markdown


def _rows(report, section):
    return {row['row']: row for row in report['sections'][section]['rows']}


@pytest.fixture(scope='module')
def smoke(tiny_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('gpu_check')
    return _run_kit(tmp, '--model', str(tiny_checkpoint), '--height', '40', '--width', '56')


def test_the_report_has_every_section_and_prints_its_markdown(smoke):
    done, report, markdown = smoke
    assert list(report['sections']) == ['precision', 'timings', 'finish', 'overlap', 'train',
                                        'runtimes', 'light', 'scale']
    assert 'stopped' not in report and report['total_s'] < report['time_limit_s']
    budgets = report['budgets_s']       # shares of the limit, the last section the rest
    assert sum(budgets.values()) == pytest.approx(report['time_limit_s'], abs=1)
    for section in report['sections'].values():
        assert f"## {section['title']}" in markdown
        assert section['rows'] and all(row['status'] for row in section['rows'])
    assert markdown in done.stdout


def test_fp16_and_bf16_differ_from_fp32_as_their_mantissas_say(smoke):
    """Each half precision really ran (a difference > 0, finite) and bf16's 8-bit mantissa
    is coarser than fp16's 11 bits on every family; SD2 size needs CUDA."""
    rows = _rows(smoke[1], 'precision')
    for family in FAMILIES:
        fp16, bf16 = rows[f'tiny {family} fp16'], rows[f'tiny {family} bf16']
        for row in (fp16, bf16):
            assert row['status'] == 'ok' and row['finite'], row
            assert 0 < row['mean_diff_of_range'] <= row['max_diff_of_range'] < 0.5, row
        assert bf16['mean_diff_of_range'] > fp16['mean_diff_of_range'], family
        assert 'cast to bf16' in bf16['how']
        if not torch.cuda.is_available():
            assert rows[f'sd2 {family} bf16']['status'].startswith(NO_CUDA)


def test_timings_rows_ran_on_the_cpu_and_agree_with_eager(smoke):
    rows = _rows(smoke[1], 'timings')
    for name in ('eager, channels_last (the engine)', 'whole frame: predict() (host pre/post)',
                 'eager, contiguous'):
        assert rows[name]['status'] == 'ok' and rows[name]['median_ms'] > 0, rows[name]
    assert rows['eager, channels_last (the engine)']['max_diff_vs_eager'] == 0
    assert rows['eager, contiguous']['max_diff_vs_eager'] < 1e-4
    if not torch.cuda.is_available():
        assert rows['CUDA graph of the eager pass']['status'] == NO_CUDA
        assert rows['torch.compile (inductor)']['status'].startswith(NO_CUDA)


def test_torch_finishing_matches_the_numpy_path(smoke):
    report = smoke[1]
    numpy_row, torch_row = report['sections']['finish']['rows']
    assert numpy_row['status'] == torch_row['status'] == 'ok'
    assert numpy_row['median_ms'] > 0 and torch_row['median_ms'] > 0
    equal, total = map(int, torch_row['messages_byte_equal'].split('/'))
    assert total >= 8 and equal >= 2 and 'relative' not in torch_row['messages_differing']
    # The local correction's float32 rounding, as test_finish_torch allows.
    assert torch_row['depth_max_rel_diff'] < 1e-5 and torch_row['depth_nan_pattern_equal']


def test_scale_recovery_on_the_device_matches_the_host_and_is_timed(smoke):
    """The scale bench's cost case (fit + local correction, 640x480, a 20k-point sweep, guide
    'both') timed on both paths; on a CPU device the torch path reads the host's memory and
    its metric depth is the host's exactly (on CUDA, float32 rounding)."""
    section = smoke[1]['sections']['scale']
    assert section['guide'] == 'both' and section['input'] == '480x640'
    rows = _rows(smoke[1], 'scale')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    for anchors, count in (('20k-point LiDAR sweep', 15000), ('100 random anchors', 100)):
        host, dev = rows[f'{anchors}: host'], rows[f'{anchors}: torch on {device}']
        for row in (host, dev):
            assert row['status'] == 'ok' and row['median_ms'] > 0 and row['frames'] >= 2, row
            assert row['anchors'] >= count
        assert dev['depth_nan_pattern_equal']
        assert dev['depth_max_rel_diff'] < (1e-5 if device == 'cuda' else 1e-12), dev


def test_overlap_and_the_training_step_ran_as_scripts(smoke):
    report = smoke[1]
    overlap = _rows(report, 'overlap')
    assert set(overlap) == {f'{m}, {lay}' for m in ('tiny', 'gpu-like')
                            for lay in ('sequential', 'overlapped')}
    assert all(row['status'] == 'ok' and row['fps'] > 0 for row in overlap.values())
    assert report['sections']['overlap']['settings']['device'] == 'cpu'
    (train,) = report['sections']['train']['rows']
    assert train['status'] == 'ok' and train['step_s'] > 0 and train['peak_mb'] > 0
    assert train['parameters'] > 0 and len(train['phases']) == 5


def test_the_light_distillation_step_ran(smoke):
    """The light autoencoder stage's own step (teacher forward, light parts forward and
    backward under bf16 autocast) on the tiny teacher: time, FLOPs and kept activations."""
    (light,) = smoke[1]['sections']['light']['rows']
    assert light['status'] == 'ok', light
    assert light['step_s'] > 0 and light['tflops'] > 0 and light['light_activations_mib'] > 0
    assert light['peak_mb'] is None or torch.cuda.is_available()


def test_runtime_rows_agree_with_torch(smoke):
    rows = _rows(smoke[1], 'runtimes')
    for name in ('torch fp32 cpu', 'onnxruntime cpu', 'openvino cpu'):
        assert rows[name]['status'] == 'ok', rows[name]
        assert rows[name]['median_ms'] > 0 and rows[name]['max_diff_of_range'] <= 1e-4
    assert rows['onnxruntime cpu']['describe']['providers'] == "['CPUExecutionProvider']"
    if not torch.cuda.is_available():
        assert rows['torch fp16 cuda']['status'] == NO_CUDA
        assert 'CUDAExecutionProvider is not available' in rows['onnxruntime cuda']['status']


def test_the_kit_stops_at_its_time_limit_with_the_report_written(tmp_path):
    done, report, markdown = _run_kit(tmp_path, '--sections', 'precision,timings',
                                      '--time-limit', '1')
    # A 1 s limit leaves the precision rows well under a second: they say so; the limit
    # strikes at the section's end or in the timings, still building their model.
    assert report['stopped'].startswith('time limit of 1 s reached during section ')
    assert 'total_s' not in report
    assert all(row['status'] == 'skipped: section time budget spent'
               for row in report['sections']['precision']['rows'] if row['size'] == 'tiny')
    assert '**stopped**' in markdown and markdown in done.stdout
