"""Where training writes its logs: TensorBoard events and ``metrics.jsonl``, local or in a bucket.

TensorBoard events are written by clu's writer, whose files go through TensorFlow's own file
layer. For a workdir in an object store the events are written to a local staging folder; at
each flush the writer's event file is closed and uploaded once, and the next events go to a new
file (an object cannot be appended to, and re-uploading a growing file, image sheets included,
at every flush would cost the whole file each time). TensorBoard reads every event file of the
folder. Every byte under the workdir goes through ``bbg_jax.paths``.

``metrics.jsonl`` (one JSON line per logged step, to compare runs without TensorBoard) is kept
in memory and rewritten whole at each flush, for the same reason; a resumed run drops the lines
of steps after the checkpoint it resumed from, so no step appears twice.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

from clu import metric_writers

from bbg_jax import paths


class _MirroredWriter:
    """A clu writer on a local staging folder; each flush closes its event file and uploads it
    (once), and the next write opens a new one."""

    def __init__(self, workdir: str):
        self._staging = tempfile.mkdtemp(prefix="bbg_jax_events_")
        self._workdir = paths.path(workdir)
        self._writer = None  # opened by the first write after a flush
        self._uploaded: set[str] = set()

    def __getattr__(self, name: str) -> Any:  # write_scalars, write_images, ...
        if self._writer is None:
            self._writer = metric_writers.create_default_writer(self._staging)
        return getattr(self._writer, name)

    def flush(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        for event_file in sorted(paths.path(self._staging).iterdir()):
            name = event_file.name
            while name in self._uploaded:  # two files of one second and process
                name += ".1"
            (self._workdir / name).write_bytes(event_file.read_bytes())
            self._uploaded.add(name)
            event_file.unlink()

    def close(self) -> None:
        self.flush()
        shutil.rmtree(self._staging, ignore_errors=True)


def create_writer(workdir: str, just_logging: bool = False):
    """clu's default writer (TensorBoard + logging) for ``workdir``, local or remote."""
    if just_logging or not paths.is_remote(workdir):
        return metric_writers.create_default_writer(str(paths.path(workdir)),
                                                    just_logging=just_logging)
    return _MirroredWriter(workdir)


class MetricsLog:
    """``WORKDIR/metrics.jsonl``: appended in memory, written whole by ``flush``."""

    def __init__(self, workdir: str, resumed_step: int):
        self.path = paths.path(workdir) / "metrics.jsonl"
        self._lines: list[str] = []
        if self.path.exists():
            self._lines = [line for line in self.path.read_text().splitlines()
                           if line and json.loads(line)["step"] <= resumed_step]

    def append(self, step: int, scalars: dict[str, float]) -> None:
        self._lines.append(json.dumps({"step": step, **scalars}))

    def flush(self) -> None:
        paths.write_atomic(self.path, "".join(line + "\n" for line in self._lines))
