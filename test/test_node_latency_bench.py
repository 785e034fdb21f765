"""bench/node_latency.py: its column and ratio layout, and one short run of the installed node
on torch beside ONNX Runtime (an export the bench makes itself), in a fresh process."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'bench' / 'node_latency.py'


def load_bench():
    spec = importlib.util.spec_from_file_location('node_latency_bench', BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_columns_keep_the_layout_table_and_add_runtime_ratios():
    bench = load_bench()
    # The default (torch, both layouts): the original table, overlapped / sequential.
    cols = bench.columns(['torch'], ['sequential', 'overlapped'])
    assert [c[0] for c in cols] == ['sequential', 'overlapped']
    assert bench.ratio_columns(cols) == [('overlapped/sequential', 'overlapped', 'sequential')]
    # Runtimes in one layout: one column per runtime, each graph runtime against torch.
    cols = bench.columns(['torch', 'onnxruntime', 'openvino'], ['sequential'])
    assert cols == [('torch', 'torch', 'sequential'), ('onnxruntime', 'onnxruntime', 'sequential'),
                    ('openvino', 'openvino', 'sequential')]
    assert bench.ratio_columns(cols) == [('onnxruntime/torch', 'onnxruntime', 'torch'),
                                         ('openvino/torch', 'openvino', 'torch')]
    # Both: runtime/layout columns, ratios within a layout.
    cols = bench.columns(['torch', 'onnxruntime'], ['sequential', 'overlapped'])
    assert [c[0] for c in cols] == ['torch/sequential', 'torch/overlapped',
                                    'onnxruntime/sequential', 'onnxruntime/overlapped']
    assert [(n, d) for _, n, d in bench.ratio_columns(cols)] == [
        ('onnxruntime/sequential', 'torch/sequential'),
        ('onnxruntime/overlapped', 'torch/overlapped')]
    # No torch column: nothing to divide by.
    assert bench.ratio_columns(bench.columns(['onnxruntime', 'openvino'], ['sequential'])) == []


@pytest.mark.timeout(1500)
def test_bench_runs_the_node_on_torch_and_on_an_export(tmp_path, install_prefix):
    env = dict(os.environ, FIFFDEPTH_CACHE=str(tmp_path / 'cache'), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    out = subprocess.run(
        [sys.executable, str(BENCH), '--runtimes', 'torch,onnxruntime', '--modes', 'sequential',
         '--seconds', '4', '--warmup', '1', '--rate', '10', '--cloud-type', 'none',
         '--output', 'relative',
         '--start-timeout', '600', '--install-prefix', str(install_prefix)],
        capture_output=True, text=True, env=env, timeout=1400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert '(dynamic) to' in text                          # the bench exported the model
    assert 'relative images / clouds received' in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith('torch'))
    assert header.split() == ['torch', 'onnxruntime', 'onnxruntime/torch']
    # What each node said in /diagnostics it runs on (one line per column).
    ran = dict(re.findall(r'^node: runtime \(providers\) \[(\w+)\]\s+(.+)$', text, re.M))
    assert ran == {'torch': 'torch', 'onnxruntime': "onnxruntime ['CPUExecutionProvider']"}
    # The summary table: one row per runtime, each node produced depth at a positive rate.
    rows = re.findall(r'^\| (torch|onnxruntime) \| sequential \| ([\d.]+) \| ([\d.]+) \| '
                      r'(\d+) / (\d+) \| ([\d.]+) \|$', text, re.M)
    assert [r[0] for r in rows] == ['torch', 'onnxruntime']
    for _, inference, rate, p50, p99, bare in rows:
        assert float(inference) > 0 and float(rate) > 0 and float(bare) > 0
        assert 0 < int(p50) <= int(p99)
    # The exported graph computes what torch does (bare predict in the bench's process).
    err = re.search(r'onnxruntime\): [\d.]+, max \|diff\| / range vs torch ([\d.e+-]+)', text)
    assert err and float(err.group(1)) <= 1e-4, text
