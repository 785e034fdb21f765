"""fiffdepth-predict: relative depth for image files.

    fiffdepth-predict [--model nano|PATH_OR_ID] --input DIR_OR_FILE --output DIR
                      [--processing-res N] [--device cpu|cuda|auto] [--fp16|--fp32]
                      [--batch-size N] [--model-family auto|fiffdepth|e2e_ft|lotus_d|...]
                      [--denoising-steps N] [--ensemble-size N] [--seed N]   (Marigold)
                      [--autoencoder full|light|light_encoder|light_decoder] [--light-path DIR]
                      [--runtime auto|torch|onnxruntime|openvino] [--providers LIST]

--model also takes an export folder (fiffdepth-export); its processing resolution is then the
default.

Writes per image NAME.npy (float32 relative depth at the input size, larger = farther; for
disparity models such as Lotus-D disparity the model's disparity, larger = nearer),
NAME_depth16.png (the same scaled to 0..65535) and NAME_color.png (colourised, near = red).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def parse_args(argv):
    ap = argparse.ArgumentParser(prog='fiffdepth-predict',
                                 description='Relative depth maps of images with FiffDepth.')
    ap.add_argument('--model', default='nano',
                    help="'nano' (the built-in demonstration model, the default), a checkpoint "
                         'folder or a Hugging Face hub id')
    ap.add_argument('--input', required=True, type=Path, help='an image file or a folder')
    ap.add_argument('--output', required=True, type=Path, help='output folder')
    ap.add_argument('--processing-res', type=int, default=None,
                    help="longer side seen by the model (0 = native size; default: the model's "
                         'own default_processing_resolution, else 768; nano: 128)')
    ap.add_argument('--device', default='auto', help='auto (CUDA if available), cpu, cuda')
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument('--fp16', dest='precision', action='store_const', const='fp16',
                           help='half precision (CUDA)')
    precision.add_argument('--fp32', dest='precision', action='store_const', const='fp32',
                           help='full precision')
    precision.add_argument('--bf16', dest='precision', action='store_const', const='bf16',
                           help='an export on --runtime openvino, in bfloat16 on CPUs that have '
                                'it (about 2x faster, ~1e-2 of the range off fp32)')
    ap.add_argument('--batch-size', type=int, default=1,
                    help='images per forward pass (same-size images are batched)')
    ap.add_argument('--model-family', default='auto',
                    help="auto (detected from the checkpoint), fiffdepth, e2e_ft, lotus_d, "
                         "lotus_d_disparity or marigold")
    ap.add_argument('--denoising-steps', type=int, default=0,
                    help='Marigold: denoising steps (0 = the checkpoint default)')
    ap.add_argument('--ensemble-size', type=int, default=1,
                    help='Marigold: predictions ensembled per image')
    ap.add_argument('--seed', type=int, default=0, help='Marigold: noise seed')
    add_autoencoder_arguments(ap)
    from ..params import SPECS
    ap.add_argument('--runtime', default='auto', choices=SPECS['runtime'].choices,
                    help='auto: torch for a checkpoint, the export\'s own runtime for an export '
                         'folder (fiffdepth-export)')
    ap.add_argument('--providers', default='',
                    help="exported graphs: 'tensorrt,cuda,cpu' (ONNX Runtime) or OpenVINO "
                         "devices, in order (default: the runtime's own)")
    ap.set_defaults(precision='auto')
    args = ap.parse_args(argv)
    if args.processing_res is None:
        args.processing_res = -1              # the model's own default_processing_resolution
    elif args.processing_res < 0:
        ap.error('--processing-res must be >= 0')
    if args.batch_size < 1:
        ap.error('--batch-size must be >= 1')
    return args


def add_autoencoder_arguments(ap) -> None:
    """--autoencoder and --light-path (the parameters of the same names), shared by the tools."""
    from ..params import SPECS
    ap.add_argument('--autoencoder', default='full', choices=SPECS['autoencoder'].choices,
                    help="full (the model's VAE), light (the model folder's distilled "
                         'light_encoder/ and light_decoder/, made by fiffdepth-train stage '
                         'light_autoencoder), light_encoder or light_decoder (one half light)')
    ap.add_argument('--light-path', default='', metavar='DIR',
                    help='read the light parts from DIR instead of the model folder (a folder '
                         'with light_encoder/ and light_decoder/, or a downloaded TAESD '
                         'AutoencoderTiny folder)')


def find_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    raise FileNotFoundError(f'input {path} does not exist')


def output_names(images: list[Path]) -> dict[Path, str]:
    """NAME per image: its stem, or its file name with dots as underscores when two inputs share
    a stem (a.png and a.jpg), so that no output overwrites another."""
    stems = [p.stem for p in images]
    return {p: p.stem if stems.count(p.stem) == 1 else p.name.replace('.', '_') for p in images}


def write_outputs(out_dir: Path, stem: str, depth, disparity: bool = False) -> None:
    import cv2
    import numpy as np

    from ..conversions.colorize import colorize_depth
    np.save(out_dir / f'{stem}.npy', depth.astype(np.float32))
    cv2.imwrite(str(out_dir / f'{stem}_depth16.png'),
                np.round(np.clip(depth, 0.0, 1.0) * 65535.0).astype(np.uint16))
    # Relative depth: larger = farther, so the colour map's near end is the small values
    # (disparity, larger = nearer, is flipped for the colours only).
    shown = 1.0 - depth if disparity else depth
    cv2.imwrite(str(out_dir / f'{stem}_color.png'), colorize_depth(shown)[..., ::-1])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        images = find_images(args.input)
    except FileNotFoundError as exc:
        print(f'fiffdepth-predict: {exc}', file=sys.stderr)
        return 2
    if not images:
        print(f'fiffdepth-predict: no images ({", ".join(IMAGE_SUFFIXES)}) in {args.input}',
              file=sys.stderr)
        return 2
    import cv2
    from tqdm import tqdm

    from ..model.checkpoint import ModelLoadError
    from ..model.estimator import DepthEstimator
    try:
        estimator = DepthEstimator.from_pretrained(
            args.model, device=args.device, precision=args.precision,
            processing_res=args.processing_res, model_family=args.model_family,
            denoising_steps=args.denoising_steps, ensemble_size=args.ensemble_size,
            seed=args.seed, autoencoder=args.autoencoder, light_path=args.light_path,
            runtime=args.runtime, providers=args.providers)
    except (ModelLoadError, ValueError) as exc:
        print(f'fiffdepth-predict: {exc}', file=sys.stderr)
        return 1
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f'fiffdepth-predict: cannot create output folder {args.output}: {exc}',
              file=sys.stderr)
        return 2
    names = output_names(images)
    disparity = estimator.output_space == 'disparity'
    from ..model.runtime import model_line
    print(f'model {model_line(estimator.describe())}', file=sys.stderr)
    print(f'{estimator.family} model'
          + (': outputs are disparity (larger = nearer)' if disparity else ''), file=sys.stderr)
    failed = []
    progress = tqdm(total=len(images), unit='img', desc='fiffdepth-predict')
    for start in range(0, len(images), args.batch_size):
        chunk, pixels = [], []
        for path in images[start:start + args.batch_size]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                failed.append(path)
                progress.write(f'fiffdepth-predict: warning: skipped {path}: not a readable '
                               'image', file=sys.stderr)
                progress.update(1)
                continue
            chunk.append(path)
            pixels.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        depths = estimator.predict_batch(pixels, max_batch=args.batch_size) if pixels else []
        for path, depth in zip(chunk, depths):
            write_outputs(args.output, names[path], depth, disparity)
            progress.update(1)
    progress.close()
    done = len(images) - len(failed)
    print(f'{done} depth map(s) written to {args.output}'
          + (f'; {len(failed)} unreadable image(s) skipped' if failed else ''))
    return 0 if done else 1


if __name__ == '__main__':
    sys.exit(main())
