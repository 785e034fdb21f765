"""An export folder: one ONNX graph of the single pass and its metadata file beside it.

    <folder>/model.onnx              the graph: input 'pixels' (1, 3, h, w) float32 in [-1, 1],
                                     output 'depth' (1, 1, h', w') float32 in [0, 1] (before
                                     the family's per-prediction normalisation)
    <folder>/model.onnx.data         the weights, when the graph is over 2 GB (ONNX external
                                     data; keep it next to model.onnx)
    <folder>/fiffdepth_export.json   this module's ExportInfo

Written by ``fiffdepth-export`` (model.export), read by the onnxruntime and openvino runtimes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..checkpoint import ModelLoadError

METADATA_FILE = 'fiffdepth_export.json'
GRAPH_FILE = 'model.onnx'
FORMAT = 'fiffdepth-onnx-single-pass'
FORMAT_VERSION = 1        # a reader accepts exactly the versions it knows


@dataclass
class ExportInfo:
    family: str                       # model.families name
    output_space: str                 # 'depth' or 'disparity'
    dynamic: bool                     # any (h, w) >= min_side, else exactly (height, width)
    height: int | None
    width: int | None
    processing_res: int               # the longer side the export was made for
    precision: str                    # 'fp32' or 'fp16' (UNet + encoder; decoder in fp32)
    decoder_precision: str
    opset: int
    min_side: int                     # the VAE's downsampling factor: smallest side taken
    source_model: str
    source_revision: str | None = None
    package_version: str = ''
    torch_version: str = ''
    runtime: str = 'onnxruntime'      # what runtime 'auto' picks for this folder
    autoencoder: str = 'full'         # full, or which halves are the light parts (model.light)
    graph: str = GRAPH_FILE
    external_data: str | None = None
    batch: int = 1                    # the graph's batch size (runtimes loop over frames)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return None if self.dynamic else (int(self.height), int(self.width))

    def write(self, folder: Path) -> Path:
        path = Path(folder) / METADATA_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + '\n')
        return path


def is_export(model) -> bool:
    """``model`` is a folder holding an export's metadata file."""
    try:
        return (Path(model).expanduser() / METADATA_FILE).is_file()
    except (TypeError, OSError):
        return False


def read_export_info(folder) -> ExportInfo:
    """The metadata of an export folder (ModelLoadError naming what is wrong)."""
    folder = Path(folder).expanduser()
    path = folder / METADATA_FILE
    redo = ('export it again with this version: fiffdepth-export --model <checkpoint> '
            f'--output {folder}')
    if not path.is_file():
        raise ModelLoadError(f"'{folder}' is not an export folder: {METADATA_FILE} is missing "
                             f'({redo})')
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f'{path} is unreadable ({exc}); {redo}') from exc
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise ModelLoadError(f"{path} is not a fiffdepth export's metadata (format "
                             f"{data.get('format') if isinstance(data, dict) else None!r}, "
                             f'expected {FORMAT!r}); {redo}')
    version = data.get('format_version')
    if version != FORMAT_VERSION:
        raise ModelLoadError(f'{path}: export format version {version!r}, this fiffdepth_ros '
                             f'reads version {FORMAT_VERSION} only; {redo}')
    known = {f.name for f in fields(ExportInfo)}
    try:
        info = ExportInfo(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise ModelLoadError(f'{path} lacks fields ({exc}); {redo}') from exc
    if not info.dynamic and not (info.height and info.width):
        raise ModelLoadError(f'{path}: a static export without height and width; {redo}')
    if not (folder / info.graph).is_file():
        raise ModelLoadError(f"export folder '{folder}' has no {info.graph} (copy the whole "
                             'folder, model.onnx.data included when there is one)')
    if info.external_data and not (folder / info.external_data).is_file():
        raise ModelLoadError(f"export folder '{folder}' lacks {info.external_data}, the graph's "
                             'weights (copy the whole folder)')
    return info
