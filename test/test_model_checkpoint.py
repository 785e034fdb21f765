"""Checkpoint resolution, load errors and the empty-prompt embedding cache."""
import os
import shutil

import pytest
import torch

from fiffdepth_ros.model.checkpoint import ModelLoadError, resolve_checkpoint
from fiffdepth_ros.model.estimator import DepthEstimator
from fiffdepth_ros.model.prompt_cache import embedding_path, load_empty_embedding
from fiffdepth_ros.model.tiny import build_tiny_checkpoint


@pytest.fixture
def own_checkpoint(tmp_path, tiny_checkpoint):
    """A private copy that tests may damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / 'ckpt')


def test_released_layout_is_complete(tiny_checkpoint):
    for part in ('model_index.json', 'unet/config.json', 'vae/config.json',
                 'text_encoder/config.json', 'tokenizer/vocab.json', 'tokenizer/merges.txt'):
        assert (tiny_checkpoint / part).is_file(), part
    assert any((tiny_checkpoint / 'unet').glob('*.safetensors'))


def test_missing_paths_name_the_path_and_the_remedy(tmp_path):
    missing = tmp_path / 'nowhere' / 'fiffdepth'
    with pytest.raises(ModelLoadError) as err:
        resolve_checkpoint(str(missing))
    assert str(missing) in str(err.value) and 'huggingface-cli download' in str(err.value)
    with pytest.raises(ModelLoadError, match='no FiffDepth checkpoint given'):
        resolve_checkpoint('')
    afile = tmp_path / 'model.safetensors'
    afile.write_bytes(b'x')
    with pytest.raises(ModelLoadError, match='is a file'):
        resolve_checkpoint(str(afile))


def test_incomplete_checkpoints_are_refused(own_checkpoint):
    shutil.rmtree(own_checkpoint / 'vae')
    with pytest.raises(ModelLoadError, match='lacks vae/'):
        resolve_checkpoint(str(own_checkpoint))
    (own_checkpoint / 'model_index.json').unlink()
    with pytest.raises(ModelLoadError, match='model_index.json is missing'):
        resolve_checkpoint(str(own_checkpoint))


def test_corrupt_weights_give_a_load_error(own_checkpoint):
    for weights in (own_checkpoint / 'unet').glob('*.safetensors'):
        weights.write_bytes(b'not safetensors')
    with pytest.raises(ModelLoadError, match='cannot load the UNet/VAE'):
        DepthEstimator.from_pretrained(str(own_checkpoint), device='cpu')


def test_hub_id_while_offline_names_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(ModelLoadError) as err:
        resolve_checkpoint('no-such-org/fiffdepth-weights', cache_dir=str(tmp_path))
    text = str(err.value)
    assert "'no-such-org/fiffdepth-weights'" in text and 'HF_HUB_OFFLINE' in text


def test_embedding_is_cached_and_the_text_encoder_not_needed_again(own_checkpoint, tmp_path):
    cache = tmp_path / 'cache'
    ckpt = resolve_checkpoint(str(own_checkpoint))
    first, computed = load_empty_embedding(ckpt, cache)
    assert computed and embedding_path(ckpt, cache).is_file()
    assert first.shape == (1, 77, 32)
    again, computed = load_empty_embedding(resolve_checkpoint(str(own_checkpoint)), cache)
    assert not computed and torch.equal(again, first)
    # Without the text encoder and tokenizer the cached embedding is all a start needs.
    shutil.rmtree(own_checkpoint / 'text_encoder')
    shutil.rmtree(own_checkpoint / 'tokenizer')
    est = DepthEstimator.from_pretrained(str(own_checkpoint), device='cpu', processing_res=32,
                                         cache_dir=str(cache))
    assert est.predict(torch.zeros(20, 20, 3, dtype=torch.uint8).numpy()).shape == (20, 20)
    # A cold cache then needs them and says so.
    with pytest.raises(ModelLoadError, match='text_encoder'):
        load_empty_embedding(resolve_checkpoint(str(own_checkpoint)), tmp_path / 'cold')


def test_identity_changes_with_the_weights(own_checkpoint, tmp_path):
    before = resolve_checkpoint(str(own_checkpoint)).identity
    assert resolve_checkpoint(str(own_checkpoint)).identity == before
    other = build_tiny_checkpoint(tmp_path / 'other', seed=1)
    assert resolve_checkpoint(str(other)).identity != before
    weights = next((own_checkpoint / 'unet').glob('*.safetensors'))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert resolve_checkpoint(str(own_checkpoint)).identity != before
