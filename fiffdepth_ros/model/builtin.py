"""Built-in model names: checkpoints shipped inside the package, selected by name.

    model: nano        (node parameter, launch argument, --model nano in every CLI)

``nano`` is FiffDepth-nano (scripts/train_nano.sh): a few MiB of weights trained by this package
on procedural scenes only, for demonstrations and tests, not for a robot. It lives in the package
itself (``fiffdepth_ros/resources/nano``, installed as package data by pip and colcon alike), so
it is found wherever ``fiffdepth_ros`` is importable. The resolution it runs at is its own
model_index.json's default_processing_resolution (the size it was trained at), which every tool
and the node use unless told otherwise (``processing_res: -1``, the default). A built-in name
wins over a local folder of the same name in the working directory (pass ``./nano`` for that
folder).
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = 'nano'
# name -> folder below fiffdepth_ros/resources
_FOLDERS = {'nano': 'nano'}
_RESOURCES = Path(__file__).resolve().parents[1] / 'resources'
# What a released-layout folder must hold before it is handed to the loader.
_REQUIRED = ('model_index.json', 'unet/config.json', 'vae/config.json')


def builtin_names() -> tuple[str, ...]:
    return tuple(_FOLDERS)


def is_builtin(model: str) -> bool:
    return model in _FOLDERS


def builtin_folder(name: str) -> Path:
    """The packaged folder of built-in model ``name`` (ModelLoadError when it is incomplete:
    a broken install or a checkout without the weights)."""
    from .checkpoint import ModelLoadError
    if name not in _FOLDERS:
        raise ModelLoadError(f"'{name}' is not a built-in model (built-in: "
                             f"{', '.join(builtin_names())})")
    folder = _RESOURCES / _FOLDERS[name]
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    missing += [f'{part}/*.safetensors' for part in ('unet', 'vae')
                if not any((folder / part).glob('*.safetensors'))]
    if missing:
        raise ModelLoadError(
            f"the built-in model '{name}' is not installed completely: {folder} lacks "
            f"{', '.join(missing)}. The package ships it there (package data of fiffdepth_ros); "
            f'reinstall the package (scripts/setup.sh, or colcon build), or retrain it with '
            f'scripts/train_nano.sh OUT and copy OUT/model/* into that folder.')
    return folder
