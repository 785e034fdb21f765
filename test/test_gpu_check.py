"""The GPU check kit's CPU smoke test: scripts/gpu_check.sh in a fresh process with an empty
cache, on a tiny checkpoint. On this CPU-only machine the CPU rows run and agree with torch;
the CUDA and TensorRT rows are reported as skipped with the reason, not as failures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_reports_every_row_on_a_cpu(tiny_checkpoint, tmp_path):
    env = dict(os.environ, FIFFDEPTH_CACHE=str(tmp_path / 'cache'), OMP_NUM_THREADS='1',
               FIFFDEPTH_VENV=sys.prefix)
    done = subprocess.run(
        [str(ROOT / 'scripts' / 'gpu_check.sh'), str(tmp_path / 'report'), '--', '--model',
         str(tiny_checkpoint), '--height', '40', '--width', '56', '--repeats', '1',
         '--work', str(tmp_path / 'work')],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / 'report' / 'report.json').read_text())
    rows = {row['row']: row for row in report['rows']}
    for name in ('torch fp32 cpu', 'onnxruntime cpu', 'openvino cpu'):
        assert rows[name]['status'] == 'ok', rows[name]
        assert rows[name]['median_ms'] > 0
        assert rows[name]['max_diff_of_range'] <= 1e-4
    assert rows['onnxruntime cpu']['describe']['providers'] == "['CPUExecutionProvider']"
    if not torch.cuda.is_available():
        assert rows['torch fp16 cuda']['status'] == 'skipped: CUDA is not available'
        assert rows['onnxruntime cuda']['status'].startswith('skipped: ModelLoadError')
        assert 'CUDAExecutionProvider is not available' in rows['onnxruntime cuda']['status']
    markdown = (tmp_path / 'report' / 'report.md').read_text()
    assert '| onnxruntime cpu | ok |' in markdown and markdown in done.stdout
