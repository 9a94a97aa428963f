"""Training progress, the one mechanism: a bar with ETA on the terminal, a one-line summary of
the losses at every logged step, and ``steps_per_sec`` in TensorBoard (process 0 only).

On a terminal the bar redraws one line and the summaries scroll above it; in a log file or a
pipe there is no bar, only the summaries (and a bare progress line when none was printed for
``quiet_secs``). Rates exclude the first step of the run (compilation).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

# The summary's fields: (metric, label, format), in this order, where the step reports them.
SUMMARY_FIELDS = (
    ("d_loss", "D", "{:.3f}"),
    ("g_loss", "G", "{:.3f}"),
    ("e_loss", "E", "{:.3f}"),
    ("online_probe_top1_train", "online probe", "{:.1%}"),
)


class Progress:
    def __init__(self, total: int, start: int, writer: Any = None,
                 stream: TextIO | None = None, width: int = 30, redraw_secs: float = 1.0,
                 quiet_secs: float = 300.0, rate_secs: float = 30.0):
        self.total, self.start, self.width = total, start, width
        self.writer = writer
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.redraw_secs, self.quiet_secs, self.rate_secs = redraw_secs, quiet_secs, rate_secs
        self.t0: float | None = None  # set at the first completed step: excludes compilation
        self.s0 = start
        self.last_print = self.last_rate = 0.0
        self.rate_mark: tuple[float, int] | None = None
        self.drawn = False  # a bar is on the terminal's current line

    # --- figures -----------------------------------------------------------------------------

    def seconds_per_step(self, step: int, now: float) -> float | None:
        if self.t0 is None or step <= self.s0:
            return None
        return (now - self.t0) / (step - self.s0)

    def _timing(self, step: int, now: float) -> str:
        per_step = self.seconds_per_step(step, now)
        if per_step is None:
            return ""
        eta = datetime.timedelta(seconds=int(per_step * (self.total - step)))
        return f"{per_step:.2f} s/step  ETA {eta}"

    def bar(self, step: int, now: float) -> str:
        frac = step / max(self.total, 1)
        filled = int(round(frac * self.width))
        text = (f"step {step}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{100 * frac:5.1f}%")
        timing = self._timing(step, now)
        return f"{text}  {timing}" if timing else text

    def summary(self, step: int, scalars: Mapping[str, float], now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        parts = [f"step {step}/{self.total}"]
        parts += [f"{label} {fmt.format(scalars[key])}" for key, label, fmt in SUMMARY_FIELDS
                  if key in scalars]
        timing = self._timing(step, now)
        return "  ".join(parts + ([timing] if timing else []))

    # --- output ------------------------------------------------------------------------------

    def _print(self, text: str, end: str = "\n") -> None:
        if self.drawn:  # clear the bar's line first
            print("\r\033[K", end="", file=self.stream)
        print(text, end=end, file=self.stream, flush=True)
        self.drawn = end == "\r"
        self.last_print = time.monotonic()
        if end == "\n":  # the run's log file keeps every line the terminal kept
            logging.getLogger(__name__).info("%s", text, extra={"file_only": True})

    def update(self, step: int) -> None:
        """After each step: redraws the bar (terminal), records the step rate (TensorBoard)."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.s0 = now, step
            self.rate_mark = (now, step)
        if self.writer is not None and now - self.last_rate >= self.rate_secs \
                and self.rate_mark and step > self.rate_mark[1]:
            t, s = self.rate_mark
            self.writer.write_scalars(step, {"steps_per_sec": (step - s) / (now - t)})
            self.rate_mark, self.last_rate = (now, step), now
        if self.tty:
            if now - self.last_print >= self.redraw_secs or step == self.total:
                self._print(self.bar(step, now), end="\r")
        elif now - self.last_print >= self.quiet_secs:
            self._print(self.bar(step, now))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """A logged step's one-line summary, kept above the bar."""
        self._print(self.summary(step, scalars))

    def message(self, text: str) -> None:
        """Any other line (an evaluation's summary), kept above the bar."""
        self._print(text)

    def close(self) -> None:
        if self.drawn:
            print(file=self.stream, flush=True)
            self.drawn = False


def evaluation_summary(step: int, metrics: Mapping[str, float], seconds: float) -> str:
    """One line per evaluation: FID, IS, the linear probes' test top-1 and the headline coupling
    diagnostics (the full set is in WORKDIR/eval/step_N/report.json)."""
    parts = []
    for name in sorted(metrics):
        value = metrics[name]
        if name.startswith(("fid_", "is_")) and not name.endswith("_std"):
            parts.append(f"{name} {value:.2f}")
        elif name.startswith("probe_top1_") and name.endswith("_test"):
            parts.append(f"{name} {value:.1%}")
        elif name in ("latent_recovery_corr_raw", "recon_agreement_pixel_raw"):
            parts.append(f"{name} {value:.3f}")
    shown = "  ".join(parts) if parts else "sheets written"
    return f"eval at step {step} ({seconds:.0f} s): {shown}"
