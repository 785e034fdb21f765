"""fiffdepth-export: the single pass of a checkpoint as one ONNX graph, with its metadata.

    fiffdepth-export --model nano|PATH_OR_ID --output DIR
                     (--height H --width W | --dynamic [--processing-res N])
                     [--fp16] [--opset 18] [--model-family auto|...]
                     [--runtime onnxruntime|openvino]

Export anywhere (no GPU needed), copy DIR to the robot and pass it as the model: the node,
process_bag(s), fiffdepth-predict and fiffdepth-eval run it on ONNX Runtime (TensorRT, CUDA or
CPU providers) or OpenVINO. Families: fiffdepth, e2e_ft, lotus_d, lotus_d_disparity (Marigold's
multi-step pipeline stays on torch).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv):
    from ..model.export import DEFAULT_OPSET
    from ..model.families import FAMILY_CHOICES
    ap = argparse.ArgumentParser(prog='fiffdepth-export',
                                 description='Export the single pass as one ONNX graph.')
    ap.add_argument('--model', default='nano',
                    help="'nano', a checkpoint folder or a Hugging Face hub id")
    ap.add_argument('--output', required=True, type=Path, help='export folder (created)')
    ap.add_argument('--height', type=int, help='static input height (with --width)')
    ap.add_argument('--width', type=int, help='static input width (with --height)')
    ap.add_argument('--dynamic', action='store_true', help='any input size (instead of a '
                    'static --height/--width)')
    ap.add_argument('--processing-res', type=int, default=None,
                    help='dynamic exports: the processing resolution recorded as the '
                         "export's own (default: the model's own, 128 for nano); static: "
                         'max(H, W)')
    ap.add_argument('--fp16', action='store_true', help='UNet and VAE encoder in half '
                    'precision, the VAE decoder kept in fp32 (for CUDA/TensorRT)')
    ap.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (default 18)')
    ap.add_argument('--model-family', default='auto', choices=FAMILY_CHOICES)
    ap.add_argument('--runtime', default='onnxruntime', choices=('onnxruntime', 'openvino'),
                    help="the runtime 'auto' picks when the folder is loaded")
    from .predict import add_autoencoder_arguments
    add_autoencoder_arguments(ap)          # the light parts go into the graph instead
    return ap.parse_args(argv)


def config_from_args(args):
    from ..model.export import ExportConfig
    res = -1 if args.processing_res is None else args.processing_res   # -1: the model's own
    return ExportConfig(model=args.model, output=args.output, height=args.height,
                        width=args.width, dynamic=args.dynamic, processing_res=res,
                        fp16=args.fp16, opset=args.opset, model_family=args.model_family,
                        runtime=args.runtime, autoencoder=args.autoencoder,
                        light_path=args.light_path)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from ..model.checkpoint import ModelLoadError
    from ..model.export import ExportError, export_single_pass
    try:
        config = config_from_args(args)
        config.validate()
        import onnx  # noqa: F401  (the writer's dependency: one clear error up front)
    except ExportError as exc:
        print(f'fiffdepth-export: {exc}', file=sys.stderr)
        return 2
    except ImportError:
        print("fiffdepth-export: needs the Python package 'onnx': pip install onnx (or pip "
              "install 'fiffdepth_ros[deploy]')", file=sys.stderr)
        return 1
    try:
        info = export_single_pass(config)
    except (ExportError, ModelLoadError, ValueError) as exc:
        print(f'fiffdepth-export: {exc}', file=sys.stderr)
        return 1
    size = 'dynamic size' if info.dynamic else f'{info.height}x{info.width} (h x w)'
    print(f'fiffdepth-export: {info.family} ({info.output_space}, {info.precision}, {size}, '
          f'opset {info.opset}) -> {config.output}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
