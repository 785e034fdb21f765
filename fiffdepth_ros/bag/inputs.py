"""Many inputs -> one job per recording, each with its output bag under an output root.

An input item is a recording (a rosbag2 folder with metadata.yaml, a ``.mcap`` / ``.db3`` file,
a ROS 1 ``.bag`` file), a folder holding recordings (searched recursively; a bag folder is not
searched inside), a glob (``/data/2026-*/*.mcap``, ``**`` allowed) or ``@LIST``: a text file
with one such item per line (blank lines and ``#`` comments ignored, relative paths taken from
the list file's folder). Each recording's output is ``OUTPUT_ROOT/<its name>``, the name being
the folder's name or the file's name without its suffix; two recordings with one name are an
error (their outputs would collide), not a silent overwrite.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from .reader import ROS1_SUFFIX, SINGLE_FILE_SUFFIXES

RECORDING_SUFFIXES = SINGLE_FILE_SUFFIXES + (ROS1_SUFFIX,)


class InputError(ValueError):
    """An input item names nothing to process, or two outputs would collide."""


@dataclass(frozen=True)
class BagJob:
    name: str               # the output bag's name (folder under the output root)
    input: Path             # the recording
    output: Path            # OUTPUT_ROOT / name


def is_recording(path: Path) -> bool:
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.is_file() and path.suffix in RECORDING_SUFFIXES


def recording_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _inside_bag_folder(path: Path) -> bool:
    """The storage file of a rosbag2 folder (x/x_0.mcap beside x/metadata.yaml): the folder is
    the recording, not the file."""
    return path.is_file() and (path.parent / 'metadata.yaml').is_file()


def _search_folder(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if (here / 'metadata.yaml').is_file() and here != folder:
            found.append(here)
            dirs.clear()                       # a bag folder is one recording
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        found.extend(here / f for f in files if Path(f).suffix in RECORDING_SUFFIXES)
    return sorted(found)                       # path order, whatever the filesystem's order


def _expand_item(item: str, base: Path | None, seen_lists: set) -> list[Path]:
    if item.startswith('@'):
        return _read_list(Path(item[1:]) if base is None else base / item[1:], seen_lists)
    path = Path(item) if base is None or Path(item).is_absolute() else base / item
    if glob.has_magic(item):
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        found = [m for m in matches if is_recording(m) and not _inside_bag_folder(m)]
        if not found:
            raise InputError(f"'{item}' matches no recording (rosbag2 folder, "
                             f"{' / '.join(RECORDING_SUFFIXES)} file)")
        return found
    if not path.exists():
        raise InputError(f'input {path} does not exist')
    if is_recording(path):
        return [path]
    if path.is_dir():
        found = _search_folder(path)
        if not found:
            raise InputError(f'folder {path} holds no recording (rosbag2 folder with '
                             f"metadata.yaml, {' / '.join(RECORDING_SUFFIXES)} file)")
        return found
    raise InputError(f"input {path} is not a recording: expected a rosbag2 folder, a "
                     f"{' / '.join(RECORDING_SUFFIXES)} file, a folder of them, a glob or "
                     '@LIST (a text file listing them)')


def _read_list(list_file: Path, seen_lists: set) -> list[Path]:
    key = list_file.resolve()
    if key in seen_lists:
        raise InputError(f'list file {list_file} includes itself')
    seen_lists.add(key)
    try:
        lines = list_file.read_text().splitlines()
    except OSError as exc:
        raise InputError(f'cannot read list file {list_file}: {exc.strerror or exc}') from None
    found = []
    for line in lines:
        line = line.split('#', 1)[0].strip()
        if line:
            found.extend(_expand_item(line, list_file.parent, seen_lists))
    return found


def expand_inputs(items: list[str], output_root: str | Path) -> list[BagJob]:
    """One job per recording, in the order given (duplicates of one recording dropped)."""
    root = Path(output_root)
    jobs: list[BagJob] = []
    by_name: dict[str, Path] = {}
    seen: set[Path] = set()
    for item in items:
        for path in _expand_item(str(item), None, set()):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            name = recording_name(path)
            if name in by_name:
                raise InputError(f"recordings {by_name[name]} and {path} would both write "
                                 f"{root / name}; give them distinct names")
            by_name[name] = path
            jobs.append(BagJob(name, path, root / name))
    if not jobs:
        raise InputError('no input recording given')
    return jobs
