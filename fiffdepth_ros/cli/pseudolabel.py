"""fiffdepth-pseudolabel: run the teacher once over the real training images.

    fiffdepth-pseudolabel --teacher HUB_ID_OR_DIR --images DIR_OR_SHARDS --out DIR
                          [--batch-size 8] [--input-size 518] [--device auto] [--workers 2]

--images is a folder of images or webdataset .tar shards (a folder of them, a glob or a brace
pattern such as 'laion/{00000..00199}.tar'). Resumable: images already labelled are skipped.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from ..training.pseudolabel import DEFAULT_TEACHER
    ap = argparse.ArgumentParser(prog='fiffdepth-pseudolabel',
                                 description='Depth Anything predictions for FiffDepth training.')
    ap.add_argument('--teacher', default=DEFAULT_TEACHER,
                    help=f'Depth Anything checkpoint folder or hub id (default {DEFAULT_TEACHER})')
    ap.add_argument('--images', required=True, nargs='+',
                    help='image folder, or webdataset shards (folder, glob, brace pattern)')
    ap.add_argument('--out', required=True, help='output folder (the pseudo-label cache)')
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--input-size', type=int, default=518,
                    help="teacher input: shorter side (multiple of 14; Depth Anything's 518)")
    ap.add_argument('--device', default='auto')
    ap.add_argument('--workers', type=int, default=2, help='image decoding processes')
    ap.add_argument('--no-progress', action='store_true')
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.input_size < 14:
        ap.error('--batch-size must be >= 1 and --input-size >= 14')
    from ..training.data.common import DataError
    from ..training.pseudolabel import TeacherError, run_pseudolabel
    images = args.images[0] if len(args.images) == 1 else args.images
    try:
        counts = run_pseudolabel(args.teacher, images, args.out, args.batch_size,
                                 args.input_size, args.device, args.workers,
                                 progress=not args.no_progress)
    except (DataError, TeacherError, ValueError) as exc:
        print(f'fiffdepth-pseudolabel: error: {exc}', file=sys.stderr)
        return 2
    print(f"fiffdepth-pseudolabel: {counts['labelled']} labelled, "
          f"{counts['already_done']} already done, {counts['images']} images in {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
