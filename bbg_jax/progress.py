"""A text progress bar with ETA for the training loop (process 0, stderr).

On a terminal it redraws one line; in a log file it prints a line every ``every_secs``.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, start: int, every_secs: float | None = None,
                 stream: TextIO | None = None, width: int = 30):
        self.total, self.start, self.width = total, start, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_secs = every_secs if every_secs is not None else (1.0 if self.tty else 30.0)
        self.t0 = None  # set at the first completed step: excludes compilation from the rate
        self.s0 = start
        self.last_print = 0.0

    def line(self, step: int, now: float) -> str:
        frac = step / max(self.total, 1)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        text = f"step {step}/{self.total} [{bar}] {100 * frac:5.1f}%"
        if self.t0 is not None and step > self.s0:
            per_step = (now - self.t0) / (step - self.s0)
            left = per_step * (self.total - step)
            eta = datetime.timedelta(seconds=int(left))
            text += f"  {per_step:.2f} s/step  ETA {eta}"
        return text

    def update(self, step: int) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.s0 = now, step
        if now - self.last_print < self.every_secs and step != self.total:
            return
        self.last_print = now
        end = "\r" if self.tty and step != self.total else "\n"
        print(self.line(step, now), end=end, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)
