"""scripts/train_nano.sh and scripts/nano_ablation.sh as a new user runs them: fresh processes,
empty caches, a few frames and steps of every stage (the real budgets are the README's)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {'NANO_SYN_FRAMES': '8', 'NANO_REAL_FRAMES': '4', 'NANO_VAL_FRAMES': '2',
         'NANO_TEACHER_STEPS': '3', 'NANO_AE_STEPS': '2', 'NANO_GEN_STEPS': '2',
         'NANO_FD_STEPS': '2', 'NANO_THREADS': '1'}


def _run(args, env, timeout=900):
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out.stdout + out.stderr


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
    base = tmp_path_factory.mktemp('nano_scripts')
    env = dict(os.environ, **SMOKE, FIFFDEPTH_CACHE=str(base / 'cache'),
               HF_HOME=str(base / 'hf'), PYTHON=sys.executable)
    run = base / 'run'
    # stop after the data stages, then resume: the finished stages are not run again
    first = _run(['bash', 'scripts/train_nano.sh', str(run)], dict(env, NANO_UNTIL='pseudolabel'))
    assert 'stopping after pseudolabel' in first and not (run / 'autoencoder').exists()
    second = _run(['bash', 'scripts/train_nano.sh', '--device', 'cpu', str(run)], env)
    return base, env, run, first, second


def test_train_nano_runs_every_stage_resumes_and_exports(smoke_run):
    _, _, run, first, second = smoke_run
    for stage in ('render', 'teacher', 'pseudolabel'):
        assert f'== {stage}\n' in first and f'== {stage}: done already' in second
    for stage in ('autoencoder', 'generator', 'fiffdepth'):
        assert f'== {stage}\n' in second
        assert f'{stage} step 2/2: loss' in second          # progress, as log lines
    model = run / 'model'
    index = json.loads((model / 'model_index.json').read_text())
    assert index['_class_name'] == 'DirectPipeline'
    assert index['prediction_type'] == 'disparity'                   # config/nano
    assert index['default_processing_resolution'] == 128
    provenance = json.loads((model / 'provenance.json').read_text())
    assert provenance['device'] == 'cpu'
    assert set(provenance['stage_seconds']) == {'render', 'teacher', 'pseudolabel',
                                                'autoencoder', 'generator', 'fiffdepth'}
    assert set(provenance['stage_cpu_seconds']) == set(provenance['stage_seconds'])
    assert provenance['data']['synthetic']['count'] == 8
    from fiffdepth_ros.model.estimator import DepthEstimator
    est = DepthEstimator.from_pretrained(str(model), device='cpu', precision='fp32')
    assert est.output_space == 'disparity' and est.processing_res == 128


def test_train_nano_refuses_an_unknown_device(tmp_path):
    out = subprocess.run(['bash', 'scripts/train_nano.sh', '--device', 'tpu', str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and '--device must be cpu or cuda' in out.stderr


def test_ablation_runs_every_variant_per_seed_and_summarises(smoke_run):
    base, env, run, _, _ = smoke_run
    out = base / 'ablation'
    text = _run(['bash', 'scripts/nano_ablation.sh', str(run / 'generator' / 'model'),
                 str(run / 'data'), str(out), '2'],
                dict(env, NANO_ABLATION_SEEDS='1 2', NANO_ABLATION_VARIANTS='full noreal',
                     NANO_ABLATION_FRAMES='2'))
    result = json.loads((out / 'ablation.json').read_text())
    assert {'full@s1', 'full@s2', 'noreal@s1', 'noreal@s2'} <= set(result['rows'])
    assert set(result['groups']) == {'full', 'noreal'}
    assert all(g['seeds'] == 2 for g in result['groups'].values())
    assert 'mean +- std over seeds' in text
    # the seeds draw other batches and noise, so the two runs of a variant differ
    from safetensors.torch import load_file
    a, b = (load_file(str(next((out / f'full@s{s}' / 'model' / 'unet').glob('*.safetensors'))))
            for s in (1, 2))
    assert not all(torch.equal(a[k], b[k]) for k in a)
