"""Checkpoint resolution, load errors and the empty-prompt embedding cache."""
import shutil
from pathlib import Path

import numpy as np
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
    assert str(missing) in str(err.value)
    assert 'hf download' in str(err.value) and 'huggingface-cli download' in str(err.value)
    with pytest.raises(ModelLoadError, match='no FiffDepth checkpoint given'):
        resolve_checkpoint('')
    afile = tmp_path / 'model.safetensors'
    afile.write_bytes(b'x')
    with pytest.raises(ModelLoadError, match='is a file'):
        resolve_checkpoint(str(afile))


def test_incomplete_checkpoints_are_refused(own_checkpoint):
    shutil.rmtree(own_checkpoint / 'vae')
    with pytest.raises(ModelLoadError, match='lacks vae/') as err:
        resolve_checkpoint(str(own_checkpoint))
    assert str(own_checkpoint) in str(err.value)
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
    assert 'hf download no-such-org/fiffdepth-weights --local-dir' in text


def test_second_start_uses_the_cache_and_never_loads_the_text_encoder(
        own_checkpoint, tmp_path, monkeypatch):
    import transformers
    cache = tmp_path / 'cache'
    ckpt = resolve_checkpoint(str(own_checkpoint))
    first, computed = load_empty_embedding(ckpt, cache)
    assert computed and embedding_path(ckpt, cache).is_file()
    assert first.shape == (1, 2, 32)       # BOS, EOS: padding='do_not_pad'
    # computed and cached alike: ordinary tensors that autograd may save (the trainer's use)
    assert not first.is_inference() and not first.requires_grad

    def refuse(*args, **kwargs):
        raise AssertionError('the text encoder/tokenizer was loaded on a cached start')
    monkeypatch.setattr(transformers.CLIPTextModel, 'from_pretrained', refuse)
    monkeypatch.setattr(transformers.CLIPTokenizer, 'from_pretrained', refuse)
    monkeypatch.setattr(transformers.CLIPTextModel, '__init__', refuse)   # not built either
    again, computed = load_empty_embedding(resolve_checkpoint(str(own_checkpoint)), cache)
    assert not computed and torch.equal(again, first) and not again.is_inference()
    est = DepthEstimator.from_pretrained(str(own_checkpoint), device='cpu', processing_res=32,
                                         cache_dir=str(cache))
    assert torch.equal(est._embedding, first)
    assert not any(isinstance(v, torch.nn.Module) and 'text' in type(v).__name__.lower()
                   for v in vars(est).values())
    assert est.predict(np.zeros((20, 20, 3), np.uint8)).shape == (20, 20)


def test_the_default_cache_is_fiffdepth_cache(own_checkpoint, private_model_cache):
    ckpt = resolve_checkpoint(str(own_checkpoint))
    assert embedding_path(ckpt).parent.parent == private_model_cache
    _, computed = load_empty_embedding(ckpt)
    assert computed and embedding_path(ckpt).is_file()
    assert load_empty_embedding(ckpt)[1] is False


def test_a_cold_cache_without_text_parts_says_what_is_missing(own_checkpoint, tmp_path):
    shutil.rmtree(own_checkpoint / 'text_encoder')
    with pytest.raises(ModelLoadError, match='text_encoder/') as err:
        load_empty_embedding(resolve_checkpoint(str(own_checkpoint)), tmp_path / 'cold')
    assert str(own_checkpoint) in str(err.value)


def test_identity_follows_the_text_encoder(own_checkpoint, tmp_path):
    cache = tmp_path / 'cache'
    before = resolve_checkpoint(str(own_checkpoint))
    assert resolve_checkpoint(str(own_checkpoint)).identity == before.identity
    old, _ = load_empty_embedding(before, cache)
    # Another text encoder in the same folder: another identity, a freshly computed embedding.
    other = build_tiny_checkpoint(tmp_path / 'other', seed=1)
    shutil.rmtree(own_checkpoint / 'text_encoder')
    shutil.copytree(other / 'text_encoder', own_checkpoint / 'text_encoder')
    after = resolve_checkpoint(str(own_checkpoint))
    assert after.identity != before.identity
    new, computed = load_empty_embedding(after, cache)
    assert computed and not torch.equal(new, old)


def _fill_hub_cache(cache: Path, repo: str, source: Path, commit: str = 'a' * 40) -> Path:
    """The layout huggingface_hub's cache has after `hf download` (blobs linked or copied)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / 'refs').mkdir(parents=True)
    (folder / 'refs' / 'main').write_text(commit)
    return Path(shutil.copytree(source, folder / 'snapshots' / commit))


def test_hub_id_resolves_from_a_prefilled_cache_while_offline(tiny_checkpoint, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    hub = tmp_path / 'hub'
    snapshot = _fill_hub_cache(hub, 'acme/fiffdepth-tiny', tiny_checkpoint)
    ckpt = resolve_checkpoint('acme/fiffdepth-tiny', cache_dir=str(hub))
    assert ckpt.root == snapshot and ckpt.hub_id == 'acme/fiffdepth-tiny'
    assert ckpt.identity == 'hub-acme--fiffdepth-tiny-' + 'a' * 40
    est = DepthEstimator.from_pretrained('acme/fiffdepth-tiny', device='cpu', processing_res=32,
                                         cache_dir=str(tmp_path / 'emb'),
                                         hub_cache_dir=str(hub))
    assert est.model_name == 'acme/fiffdepth-tiny'
    assert est.predict(np.zeros((10, 12, 3), np.uint8)).shape == (10, 12)


def test_hub_snapshot_without_text_parts_while_offline_names_the_id(tiny_checkpoint, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    hub = tmp_path / 'hub'
    snapshot = _fill_hub_cache(hub, 'acme/slim', tiny_checkpoint)
    shutil.rmtree(snapshot / 'text_encoder')
    ckpt = resolve_checkpoint('acme/slim', cache_dir=str(hub))
    with pytest.raises(ModelLoadError) as err:
        load_empty_embedding(ckpt, tmp_path / 'emb')
    assert "'acme/slim'" in str(err.value) and 'hf download acme/slim' in str(err.value)


def test_tiny_checkpoint_is_reused_only_when_complete_with_the_same_seed(tmp_path):
    path = build_tiny_checkpoint(tmp_path / 'tiny', seed=3)
    weights = next((path / 'unet').glob('*.safetensors'))
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_checkpoint(path, seed=3) == path
    assert weights.stat().st_mtime_ns == stamp                 # reused, not rewritten
    shutil.rmtree(path / 'tokenizer')                          # incomplete: rebuilt
    build_tiny_checkpoint(path, seed=3)
    assert (path / 'tokenizer' / 'vocab.json').is_file()
    before = (path / 'text_encoder' / 'model.safetensors').read_bytes()
    build_tiny_checkpoint(path, seed=4)                        # other seed: other weights
    assert (path / 'text_encoder' / 'model.safetensors').read_bytes() != before


def test_a_damaged_cache_file_is_recomputed(own_checkpoint, tmp_path):
    ckpt = resolve_checkpoint(str(own_checkpoint))
    good, _ = load_empty_embedding(ckpt, tmp_path)
    embedding_path(ckpt, tmp_path).write_bytes(b'truncated')
    again, computed = load_empty_embedding(ckpt, tmp_path)
    assert computed and torch.equal(again, good)
    assert load_empty_embedding(ckpt, tmp_path)[1] is False      # and rewritten intact


def test_identity_hashes_large_text_weights_by_content(own_checkpoint):
    """Weight files are hashed by samples, not by name alone: a same-size replacement with its
    modification time kept (cp -p, rsync -a) still gets a new identity."""
    import os
    big = own_checkpoint / 'text_encoder' / 'model-00002-of-00002.safetensors'
    big.write_bytes(np.random.default_rng(0).bytes(5 << 20))
    before = resolve_checkpoint(str(own_checkpoint)).identity
    stat = big.stat()
    big.write_bytes(np.random.default_rng(1).bytes(5 << 20))
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert resolve_checkpoint(str(own_checkpoint)).identity != before


def test_hub_download_fetches_only_what_is_loaded(tiny_checkpoint, tmp_path, monkeypatch):
    """Online: model_index.json, unet/ and vae/ only, safetensors only (no fp16/EMA copies, no
    pickles) unless the repository has no safetensors; the text parts later, same commit."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    commit = 'b' * 40

    def fake_repo(with_safetensors: bool) -> list[str]:
        files = [str(p.relative_to(tiny_checkpoint)) for p in tiny_checkpoint.rglob('*')
                 if p.is_file() and not p.name.startswith('.')]
        extra = [f'{part}/diffusion_pytorch_model.{kind}' for part in ('unet', 'vae')
                 for kind in ('bin', 'fp16.safetensors', 'non_ema.bin')]
        if not with_safetensors:
            files = [f for f in files if not f.endswith('.safetensors')]
        return files + extra

    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, cache_dir=None, allow_patterns=None,
                               ignore_patterns=None, local_files_only=False, **kwargs):
        calls.append((revision, local_files_only))
        snapshot = tmp_path / 'hub' / 'snapshots' / commit
        for name in filter_repo_objects(fake_repo(repo_id.endswith('safe')),
                                        allow_patterns=allow_patterns,
                                        ignore_patterns=ignore_patterns):
            dst = snapshot / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = tiny_checkpoint / name
            dst.write_bytes(src.read_bytes() if src.is_file() else b'unused')
        return str(snapshot)
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', fake_snapshot_download)

    ckpt = resolve_checkpoint('acme/safe')
    got = sorted(str(p.relative_to(ckpt.root)) for p in ckpt.root.rglob('*') if p.is_file())
    assert got == ['model_index.json', 'unet/config.json',
                   'unet/diffusion_pytorch_model.safetensors', 'vae/config.json',
                   'vae/diffusion_pytorch_model.safetensors']
    assert calls == [(None, False)]
    embedding, computed = load_empty_embedding(ckpt, tmp_path / 'emb')
    assert computed and embedding.shape == (1, 2, 32)
    assert calls[-1] == (commit, False)           # the text parts of the same commit
    assert (ckpt.root / 'tokenizer' / 'vocab.json').is_file()

    shutil.rmtree(tmp_path / 'hub')
    calls.clear()
    legacy = resolve_checkpoint('acme/pickled')   # no safetensors: falls back to .bin
    assert calls == [(None, False), (None, False)]
    assert (legacy.root / 'unet' / 'diffusion_pytorch_model.bin').is_file()
    assert not (legacy.root / 'unet' / 'diffusion_pytorch_model.non_ema.bin').exists()


def test_an_embedding_cached_with_77_tokens_is_never_reused(own_checkpoint, tmp_path):
    from safetensors.torch import save_file
    ckpt = resolve_checkpoint(str(own_checkpoint))
    cache = tmp_path / 'cache'
    stale = cache / 'empty_prompt' / f'{ckpt.identity}-max_length.safetensors'  # older name
    stale.parent.mkdir(parents=True)
    save_file({'embedding': torch.ones(1, 77, 32)}, str(stale))
    embedding, computed = load_empty_embedding(ckpt, cache)
    assert computed and embedding.shape == (1, 2, 32)
    assert embedding_path(ckpt, cache) != stale and stale.is_file()


def _save_fp16_variant(folder: Path, module) -> None:
    module.to(torch.float16).save_pretrained(folder, variant='fp16')


def test_half_precision_loads_the_fp16_variant_files(own_checkpoint):
    """The variant is what is loaded: its weights are made to differ from the full ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from fiffdepth_ros.model.checkpoint import load_unet_and_vae
    unet = UNet2DConditionModel.from_pretrained(own_checkpoint / 'unet')
    with torch.no_grad():
        unet.conv_in.weight.add_(1.0)
    _save_fp16_variant(own_checkpoint / 'unet', unet)
    _save_fp16_variant(own_checkpoint / 'vae',
                       AutoencoderKL.from_pretrained(own_checkpoint / 'vae'))
    ckpt = resolve_checkpoint(str(own_checkpoint))
    half_unet, half_vae = load_unet_and_vae(ckpt, torch.float16)
    assert torch.equal(half_unet.conv_in.weight, unet.conv_in.weight.half())
    assert half_vae.dtype == torch.float16
    full_unet, _ = load_unet_and_vae(ckpt, torch.float32)      # fp32: the full files
    assert not torch.allclose(full_unet.conv_in.weight, unet.conv_in.weight.float())
    # upcast_vae: the VAE in fp32 from the full-precision files, the UNet from the variant.
    half_unet, vae32 = load_unet_and_vae(ckpt, torch.float16, vae_dtype=torch.float32)
    full_vae = AutoencoderKL.from_pretrained(own_checkpoint / 'vae')
    assert vae32.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(vae32.parameters(), full_vae.parameters()))


def test_hub_download_in_half_precision_fetches_only_the_fp16_files(tiny_checkpoint, tmp_path,
                                                                    monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    files = [str(p.relative_to(tiny_checkpoint)) for p in tiny_checkpoint.rglob('*')
             if p.is_file() and not p.name.startswith('.')]
    files += ['unet/diffusion_pytorch_model.fp16.safetensors',
              'vae/diffusion_pytorch_model.fp16.safetensors',
              'scheduler/scheduler_config.json']

    def fake_snapshot_download(repo_id, *, allow_patterns=None, ignore_patterns=None, **kwargs):
        snapshot = tmp_path / 'hub' / 'snapshots' / ('c' * 40)
        for name in filter_repo_objects(files, allow_patterns=allow_patterns,
                                        ignore_patterns=ignore_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(b'{}' if name.endswith('.json') else b'w')
        return str(snapshot)
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', fake_snapshot_download)
    ckpt = resolve_checkpoint('acme/half', variant='fp16')
    got = sorted(str(p.relative_to(ckpt.root)) for p in ckpt.root.rglob('*') if p.is_file())
    assert got == ['model_index.json', 'scheduler/scheduler_config.json', 'unet/config.json',
                   'unet/diffusion_pytorch_model.fp16.safetensors', 'vae/config.json',
                   'vae/diffusion_pytorch_model.fp16.safetensors']
