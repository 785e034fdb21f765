"""What a many-bag run shows: one progress bar for all bags, and the per-bag table at the end."""
from __future__ import annotations

import sys
import time

from .jobs import DONE, BagOutcome


class FleetBar:
    """One bar: frames done of the frames expected so far (each bag's image count is known once
    it starts; bags not started are estimated at the mean), bags done, frames/s and ETA.
    ``set_state(frames_done, expected_by_bag, bags_done)`` takes absolute numbers, so it can be
    fed from a Ray progress snapshot or from this process."""

    def __init__(self, bags: int, disabled: bool = False, file=sys.stderr):
        self.bags = bags
        self.bar = None
        self.t0 = time.perf_counter()
        if not disabled:
            from tqdm import tqdm
            tty = file.isatty()
            self.bar = tqdm(total=None, unit='frame', desc='process_bags', file=file,
                            dynamic_ncols=tty, mininterval=0.2 if tty else 2.0,
                            smoothing=0.1)

    def set_state(self, frames_done: int, expected: list[int], bags_done: int) -> None:
        if self.bar is None:
            return
        known = [e for e in expected if e]
        if known:
            mean = sum(known) / len(known)
            total = int(sum(known) + mean * max(self.bags - len(expected), 0))
            self.bar.total = max(total, frames_done)
        self.bar.n = frames_done
        self.bar.set_postfix_str(f'bags {bags_done}/{self.bags}', refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_table(outcomes: list[BagOutcome], wall_s: float) -> str:
    rows = [('bag', 'status', 'frames', 'metric', 'skipped', 'wall s', 'errors / notes')]
    for o in outcomes:
        note = o.error or o.warning
        rows.append((o.name, o.status, str(o.frames), str(o.metric_frames), str(o.skipped),
                     f'{o.wall_s:.1f}', note))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ['', 'process_bags summary']
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [
            r[i].rjust(widths[i]) for i in range(2, 6)] + [r[6]]
        lines.append('  ' + '  '.join(cells).rstrip())
    done = [o for o in outcomes if o.status == DONE]
    frames = sum(o.frames for o in done)
    by_status: dict[str, int] = {}
    for o in outcomes:
        by_status[o.status] = by_status.get(o.status, 0) + 1
    lines.append('  ' + ', '.join(f'{n} {s}' for s, n in by_status.items())
                 + f'; {frames} frames in {wall_s:.1f} s'
                 + (f' ({frames / wall_s:.2f} frames/s)' if wall_s > 0 else ''))
    return '\n'.join(lines)
