"""What a command prints on the terminal, and where everything else goes.

The terminal gets what a user acts on: one line per stage (``say``), the training progress bar
and its periodic summaries (``bbg_jax.progress``), warnings and errors. The INFO logs of
bbg_jax, absl, JAX, orbax, TensorFlow and TFDS go to the run's log file, ``WORKDIR/log.txt``
(process i > 0: ``log.process<i>.txt``); a workdir in an object store gets a copy of it when the
command ends (an object cannot be appended to).

``-v`` / ``--verbose`` on ``bbg_jax.main``, or ``BBG_VERBOSE=1``, puts the logs back on the
terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
import sys
import tempfile

VERBOSE_ENV = "BBG_VERBOSE"

log = logging.getLogger(__name__)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    if on:
        os.environ[VERBOSE_ENV] = "1"


class _NotForTerminal(logging.Filter):
    """What stays off the terminal: INFO and below (unless verbose), the file-only copies of
    the terminal's own lines, and TFDS' warnings about its cache bookkeeping (kept in the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        if verbose():
            return True
        if "/tensorflow_datasets/" in record.pathname and record.levelno < logging.ERROR:
            return False
        return record.levelno >= logging.WARNING


class _QuietOrbax(logging.Filter):
    """Orbax logs every file it writes at INFO; keep its warnings, drop the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


_TERMINAL_FILTER = _NotForTerminal()
_early: logging.handlers.MemoryHandler | None = None


def _terminal_handlers() -> list[logging.Handler]:
    from absl import logging as absl_logging

    handlers = [h for h in logging.getLogger().handlers
                if not isinstance(h, (_RunLogHandler, logging.handlers.MemoryHandler))]
    return handlers or [absl_logging.get_absl_handler()]


def quiet_terminal() -> None:
    """From a command's first line: INFO stays off the terminal (unless verbose) and is kept in
    memory until the run's log file opens (``RunLog``). Also keeps TensorFlow's C++ logs quiet
    where it still honours TF_CPP_MIN_LOG_LEVEL (must run before TensorFlow is imported)."""
    global _early
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for h in _terminal_handlers():
        if _TERMINAL_FILTER not in h.filters:
            h.addFilter(_TERMINAL_FILTER)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if _early is None:
        _early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        root.addHandler(_early)
    logging.captureWarnings(True)  # Python warnings into the log (shown: WARNING)


class _RunLogHandler(logging.FileHandler):
    """The run's log file; for a remote workdir a local file copied there by ``close``."""

    def __init__(self, local_path: str, remote_path=None):
        from absl import logging as absl_logging

        super().__init__(local_path, mode="a", encoding="utf-8")
        self.remote_path = remote_path
        self.setFormatter(absl_logging.PythonFormatter())
        self.addFilter(_QuietOrbax())

    def close(self) -> None:
        super().close()
        if self.remote_path is not None:
            from bbg_jax import paths

            with open(self.baseFilename, "rb") as f:
                paths.write_atomic(self.remote_path, f.read())


class RunLog:
    """The run's log file, ``WORKDIR/log.txt``: INFO and up, including what ``quiet_terminal``
    kept in memory before the workdir was known to be valid.

    ``native_to_log`` (a command in its own process, not verbose): what native libraries write
    straight to file descriptor 2 (TensorFlow's and XLA's C++ logs, which TF_CPP_MIN_LOG_LEVEL no
    longer silences) goes to the log file too, while Python's ``sys.stderr`` (the progress bar,
    ``say``, warnings, tracebacks) keeps the terminal. ``close`` undoes all of it.
    """

    def __init__(self, workdir: str, process_index: int = 0, native_to_log: bool = False):
        from bbg_jax import paths

        global _early
        quiet_terminal()
        name = "log.txt" if process_index == 0 else f"log.process{process_index}.txt"
        target = paths.path(workdir) / name
        if paths.is_remote(workdir):
            local = os.path.join(tempfile.mkdtemp(prefix="bbg_jax_log_"), name)
            if target.exists():  # a resumed run appends to the log it left
                with open(local, "wb") as f:
                    f.write(target.read_bytes())
            self.handler = _RunLogHandler(local, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.handler = _RunLogHandler(str(target))
        self.path = str(target)
        root = logging.getLogger()
        root.addHandler(self.handler)
        if _early is not None:
            _early.setTarget(self.handler)
            _early.flush()
            root.removeHandler(_early)
            _early = None
        self._saved = None
        if native_to_log and not verbose():
            self._native_into(self.handler.baseFilename)

    def _native_into(self, log_file: str) -> None:
        from absl import logging as absl_logging

        sys.stderr.flush()
        terminal = os.dup(2)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(fd, 2)
        os.close(fd)
        old_stderr = sys.stderr
        sys.stderr = open(terminal, "w", buffering=1, encoding="utf-8", errors="replace",
                          closefd=False)
        handler = absl_logging.get_absl_handler().python_handler
        old_stream = handler.stream
        handler.stream = sys.stderr
        self._saved = (terminal, old_stderr, old_stream)

    def close(self) -> None:
        if self._saved is not None:
            from absl import logging as absl_logging

            terminal, old_stderr, old_stream = self._saved
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
            sys.stderr = old_stderr
            absl_logging.get_absl_handler().python_handler.stream = old_stream
            self._saved = None
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def say(message: str, *, end: str = "\n") -> None:
    """One line for the user on the terminal (stderr), and the same line in the run's log."""
    print(message, end=end, file=sys.stderr, flush=True)
    log.info(message, extra={"file_only": True})


@contextlib.contextmanager
def into_log(name: str):
    """Text a library prints (TFDS' preparation banner and progress bars) goes to the log."""
    if verbose():
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            yield
        finally:
            text = buffer.getvalue().strip()
            if text:
                logging.getLogger(name).info("%s", text)
