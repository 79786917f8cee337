"""What a job prints: this project's progress on the console, every library's chatter in a file.

`setup(log_file, verbosity)` (called by `main.py` before any task runs):

  console (stderr)  records logged from this package and from clu's metric writer and progress
                    report (stage lines, metrics, steps/s, ETA), except those marked
                    `extra={FILE_ONLY: True}` (the config dump); warnings and errors from
                    anything; at `--verbosity=1` or more, everything
  log_file          every record at INFO and above (Orbax, Grain, TensorFlow, JAX included)

TensorFlow's C++ start-up lines (oneDNN notices, CPU feature lists) are turned off through
`TF_CPP_MIN_LOG_LEVEL` unless the verbosity asks for them; that only acts before TensorFlow is
imported, which the tasks do lazily.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys

from absl import logging as absl_logging

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
FILE_ONLY = "densedpo_file_only"  # `logging.info(..., extra={FILE_ONLY: True})`: the file only.


_STATE = {"verbosity": 0, "log_file": None}


class JobError(Exception):
  """Mixed into errors whose message says all a user needs (what, where, what to do): a job
  ending on one prints `error: <message>` as one line and keeps the traceback in the log file.
  `hard_exit`: leave without Python's shutdown (background writers would print on)."""
  hard_exit = False
# The trainer's metric and progress lines (step, steps/s, ETA) come from clu's writers.
PROGRESS_SOURCES = (os.path.join("clu", "metric_writers", "logging_writer.py"),
                    os.path.join("clu", "periodic_actions.py"))
# Library warnings that report nothing wrong (Orbax on every read-only checkpoint manager).
CHATTER = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")


class ConsoleFilter(logging.Filter):
  """Passes this package's records and warnings (or everything at `verbosity >= 1`)."""

  def __init__(self, verbosity: int = 0):
    super().__init__()
    self.verbosity = verbosity

  def filter(self, record: logging.LogRecord) -> bool:
    if self.verbosity >= 1:
      return True
    if record.levelno >= logging.WARNING:
      return not str(record.msg).startswith(CHATTER)
    if getattr(record, FILE_ONLY, False):
      return False
    return _ours(record) or os.path.abspath(record.pathname).endswith(PROGRESS_SOURCES)


def _ours(record: logging.LogRecord) -> bool:
  return os.path.abspath(record.pathname).startswith(PACKAGE_DIR + os.sep)


class ConsoleFormatter(absl_logging.PythonFormatter):
  """absl's format; below verbosity 1 a library's traceback stays in the log file (its message
  still shows), so a failure reads as lines, not pages."""

  def format(self, record: logging.LogRecord) -> str:
    if record.exc_info and _STATE["verbosity"] < 1 and not _ours(record):
      saved = record.exc_info, record.exc_text
      record.exc_info = record.exc_text = None
      try:
        return super().format(record) + " (traceback in the log file)"
      finally:
        record.exc_info, record.exc_text = saved
    return super().format(record)


def setup(log_file: str | None, verbosity: int = 0) -> None:
  """Routes records as the module doc says. `log_file=None` keeps everything on the console's
  filter only (no file); a `gs://` path is not opened (Python's file handler writes local files)."""
  _STATE["verbosity"], _STATE["log_file"] = verbosity, None  # Set below once it is open.
  if verbosity < 1:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # absl turns `--verbosity=1` into DEBUG for every logger; the console shows chatter at 1, and
  # JAX's debug tracing only at 2 or more; -1 keeps warnings only (file included).
  absl_logging.set_verbosity(absl_logging.WARNING if verbosity < 0 else
                             absl_logging.INFO if verbosity < 2 else absl_logging.DEBUG)
  absl_logging.use_absl_handler()  # On the root logger (app.run does it too).
  handler = absl_logging.get_absl_handler()
  for f in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
    handler.removeFilter(f)
  handler.addFilter(ConsoleFilter(verbosity))
  handler.setFormatter(ConsoleFormatter())
  root = logging.getLogger()
  for h in [h for h in root.handlers if getattr(h, "densedpo_log_file", False)]:
    root.removeHandler(h)
    h.close()
  if log_file and "://" not in log_file:
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    file_handler = LogFileHandler(log_file)
    _STATE["log_file"] = log_file
    file_handler.densedpo_log_file = True
    file_handler.setFormatter(absl_logging.PythonFormatter())
    file_handler.setLevel(logging.INFO)
    root.addHandler(file_handler)


@contextlib.contextmanager
def library_output(what: str):
  """Inside, what libraries print (TFDS's progress bars and notices) goes to the log file as one
  record after the block, unless the verbosity is 1 or more."""
  if _STATE["verbosity"] >= 1:
    yield
    return
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      yield
  finally:
    text = (out.getvalue() + err.getvalue()).strip()
    if text:  # Progress bars redraw with carriage returns: keep the end.
      logging.getLogger(__name__).info("%s printed:\n%s", what, text[-4000:],
                                       extra={FILE_ONLY: True})


def flush() -> None:
  """Flushes every handler of the root logger (before a hard exit); a full disk is no error."""
  for handler in logging.getLogger().handlers:
    try:
      handler.flush()
    except OSError:
      pass
  sys.stderr.flush()


class LogFileHandler(logging.FileHandler):
  """The log file; when it cannot be written (a full disk) it says so once on stderr, in one line,
  instead of a traceback a record."""

  def handleError(self, record: logging.LogRecord) -> None:
    if not getattr(self, "warned", False):
      self.warned = True
      error = sys.exc_info()[1]
      print(f"warning: cannot write the log file {self.baseFilename} ({error}); later records are "
            "lost", file=sys.stderr, flush=True)


def log_file() -> str | None:
  """The log file `setup` opened (None before, or without one)."""
  return _STATE["log_file"]


@contextlib.contextmanager
def background_tracebacks_to_log():
  """Inside, tracebacks that libraries print from background callbacks (tensorstore's futures
  calling into Orbax's closed event loop after a failed write: dozens of them) and exceptions
  Python can only ignore go to the log file, unless the verbosity is 1 or more. Uncaught
  exceptions of the task itself are not affected: they propagate out of the block."""
  if _STATE["verbosity"] >= 1:
    yield
    return
  log = logging.getLogger(__name__)
  hooks = sys.excepthook, sys.unraisablehook

  seen = [0]

  def printed(kind, value, tb):  # The first few in full; the rest (often dozens alike) counted.
    seen[0] += 1
    if seen[0] <= 3:
      log.info("a library printed a background traceback", exc_info=(kind, value, tb),
               extra={FILE_ONLY: True})

  def ignored(unraisable):
    printed(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)

  sys.excepthook, sys.unraisablehook = printed, ignored
  try:
    yield
  finally:
    sys.excepthook, sys.unraisablehook = hooks
    if seen[0] > 3:
      log.info("%d more background tracebacks from libraries, not written", seen[0] - 3,
               extra={FILE_ONLY: True})
