"""What a bag run did: counts, skips and why, anchors and scale, time. Printed at the end."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .frames import ReadStats


@dataclass
class RunStats:
    read: ReadStats = field(default_factory=ReadStats)
    processed: int = 0
    skipped: Counter = field(default_factory=Counter)        # reason -> frames
    notes: Counter = field(default_factory=Counter)          # pipeline notes -> frames
    fit_status: Counter = field(default_factory=Counter)
    metric_frames: int = 0
    # reason -> frames whose metric outputs were withheld (anchors configured, no fit)
    withheld: Counter = field(default_factory=Counter)
    anchors_used: list[int] = field(default_factory=list)    # per processed frame
    scales: list[float] = field(default_factory=list)        # per metric frame
    model_s: float = 0.0            # wall time inside the model (batched predict calls)
    # Busy time of the stages that overlap with the model (waits on queues excluded).
    stage_s: dict[str, float] = field(default_factory=lambda: {
        'read+decode': 0.0, 'finish': 0.0, 'write': 0.0})
    wall_s: float = 0.0             # from the first read to the closed output
    written: dict[str, int] = field(default_factory=dict)   # output topic -> messages
    interrupted: bool = False
    read_error: str | None = None
    copy_problems: dict[str, str] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def record_result(self, result) -> None:
        self.processed += 1
        report = result.report
        self.fit_status[report.status] += 1
        self.anchors_used.append(int(report.anchors_used))
        if result.metric:
            self.metric_frames += 1
            if math.isfinite(report.scale):
                self.scales.append(float(report.scale))
        if result.withheld:
            self.withheld[result.withheld] += 1
        for note in result.notes:
            self.notes[note] += 1


def _pct(part: float, whole: float) -> str:
    return f'{100.0 * part / whole:.0f}%' if whole else '-'


def format_summary(stats: RunStats, output: str) -> str:
    r = stats.read
    lines = ['', 'process_bag summary' + (' (INTERRUPTED by Ctrl-C)' if stats.interrupted else '')]
    lines.append(f'  frames in:   {r.images_in_window} images in the window, {r.selected} selected '
                 f'by --stride')
    lines.append(f'  processed:   {stats.processed}')
    lines.append(f'  skipped:     {stats.skipped_total}')
    for reason, n in stats.skipped.most_common():
        lines.append(f'    {n:6d}  {reason}')
    not_done = r.selected - stats.processed - stats.skipped_total
    if not_done > 0:
        lines.append(f'  not processed (interrupted): {not_done}')
    if r.corrupt:
        lines.append('  corrupt messages skipped: ' + ', '.join(
            f'{topic} {n}' for topic, n in sorted(r.corrupt.items())))
    if stats.read_error:
        lines.append(f'  WARNING: {stats.read_error}')
    if stats.notes:
        lines.append('  frame notes (frames):')
        for note, n in stats.notes.most_common(8):
            lines.append(f'    {n:6d}  {note}')
    used = [a for a in stats.anchors_used if a > 0]
    if stats.processed:
        lines.append(f'  anchors:     {len(used)} of {stats.processed} frames had anchors'
                     + (f'; per frame min {min(used)}, median {sorted(used)[len(used) // 2]}, '
                        f'max {max(used)}' if used else ''))
        status = ', '.join(f'{k} {v}' for k, v in stats.fit_status.most_common())
        lines.append(f'  scale fit:   {status}; metric frames {stats.metric_frames} '
                     f'({_pct(stats.metric_frames, stats.processed)})')
        if stats.scales:
            lines.append(f'  scale range: {min(stats.scales):.4g} .. {max(stats.scales):.4g}')
        withheld = sum(stats.withheld.values())
        if withheld:
            lines.append(f'  withheld:    {withheld} frames without a scale fit: no depth/image, '
                         'camera_info or points written for them (depth/relative and colorized '
                         'only; -p publish_without_fit:=true writes them)')
            for reason, n in stats.withheld.most_common(4):
                lines.append(f'    {n:6d}  {reason}')
        elif stats.metric_frames < stats.processed:
            lines.append('  note: frames without a metric fit carry relative depth (fixed_scale '
                         'mapping), as the node publishes them')
    fps = stats.processed / stats.wall_s if stats.wall_s > 0 else 0.0
    lines.append(f'  wall time:   {stats.wall_s:.1f} s ({fps:.2f} frames/s), model '
                 f'{stats.model_s:.1f} s ({_pct(stats.model_s, stats.wall_s)} of wall time)')
    busy = ', '.join(f'{k} {v:.1f} s' for k, v in stats.stage_s.items())
    lines.append(f'  overlapped:  {busy} (busy time of the other threads)')
    lines.append(f'  output:      {output}')
    for topic, n in stats.written.items():
        lines.append(f'    {n:6d}  {topic}')
    for topic, why in stats.copy_problems.items():
        lines.append(f'  not copied:  {topic} ({why})')
    return '\n'.join(lines)
