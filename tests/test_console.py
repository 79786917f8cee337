"""The console shows this project's progress and anyone's warnings; the log file keeps everything."""
import logging
import os
import sys

from absl import logging as absl_logging

from densedpo_jax import console


def _record(pathname: str, level: int = logging.INFO, msg: str = "m") -> logging.LogRecord:
  return logging.LogRecord("x", level, pathname, 1, msg, None, None)


def test_console_filter_keeps_ours_and_warnings_unless_verbose():
  ours = os.path.join(console.PACKAGE_DIR, "training", "train.py")
  library = "/usr/lib/python3/site-packages/orbax/checkpoint/checkpointer.py"
  quiet, loud = console.ConsoleFilter(0), console.ConsoleFilter(1)
  assert quiet.filter(_record(ours))
  assert not quiet.filter(_record(library))
  assert quiet.filter(_record(library, logging.WARNING))
  assert not quiet.filter(_record(library, logging.WARNING, "Given directory is read only=/x"))
  # A sibling directory whose name starts like the package is not the package.
  assert not quiet.filter(_record(console.PACKAGE_DIR + "_extra/x.py"))
  assert loud.filter(_record(library))
  assert quiet.filter(_record("/site-packages/clu/metric_writers/logging_writer.py"))  # Metrics.
  dump = _record(ours)
  setattr(dump, console.FILE_ONLY, True)
  assert not quiet.filter(dump) and loud.filter(dump)


def test_setup_sends_library_chatter_to_the_file_only(tmp_path, capfd):
  log_file = str(tmp_path / "logs" / "log.txt")
  try:
    console.setup(log_file, verbosity=0)
    handler = absl_logging.get_absl_handler()
    library = _record("/site-packages/orbax/checkpoint/x.py", msg="orbax chatter")
    ours = _record(os.path.join(console.PACKAGE_DIR, "training", "train.py"),
                   msg="step 10: loss 0.5")
    for record in (library, ours):
      logging.getLogger().handle(record)
    err = capfd.readouterr().err
    assert "step 10: loss 0.5" in err and "orbax chatter" not in err
    for h in logging.getLogger().handlers:
      h.flush()
    text = open(log_file).read()
    assert "orbax chatter" in text and "step 10: loss 0.5" in text
    # Calling setup again replaces the filter and the file handler instead of stacking them.
    console.setup(log_file, verbosity=1)
    assert sum(isinstance(f, console.ConsoleFilter) for f in handler.filters) == 1
    assert sum(getattr(h, "densedpo_log_file", False) for h in logging.getLogger().handlers) == 1
    logging.getLogger().handle(_record("/site-packages/grain/x.py", msg="grain chatter"))
    assert "grain chatter" in capfd.readouterr().err
  finally:
    console.setup(None, verbosity=1)


def test_library_output_goes_to_the_log_file_when_quiet(tmp_path, capfd):
  log_file = str(tmp_path / "log.txt")
  try:
    console.setup(log_file, verbosity=0)
    with console.library_output("tfds"):
      print("Downloading and preparing dataset")
      import sys
      sys.stderr.write("Generating splits: 50%\r")
    captured = capfd.readouterr()
    assert "Downloading" not in captured.out and "Generating" not in captured.err
    for h in logging.getLogger().handlers:
      h.flush()
    text = open(log_file).read()
    assert "tfds printed:" in text and "Downloading and preparing dataset" in text
    console.setup(log_file, verbosity=1)
    with console.library_output("tfds"):
      print("shown when verbose")
    assert "shown when verbose" in capfd.readouterr().out
  finally:
    console.setup(None, verbosity=1)


def test_a_library_traceback_stays_in_the_log_file_and_its_message_shows(tmp_path, capfd):
  log = tmp_path / "log.txt"
  console.setup(str(log), 0)
  try:
    try:
      raise ValueError("OUT_OF_RANGE: Failed to write 74233 bytes")
    except ValueError:
      info = sys.exc_info()
    library = _record("/site-packages/orbax/checkpoint/_src/futures/future.py", logging.ERROR,
                      "_SignalingThread.run() raised an exception")
    library.exc_info = info
    ours = _record(os.path.join(console.PACKAGE_DIR, "training", "train.py"), logging.ERROR, "ours")
    ours.exc_info = info
    for record in (library, ours):
      logging.getLogger().handle(record)
    console.flush()
    err = capfd.readouterr().err
    library_line = next(line for line in err.splitlines() if "_SignalingThread" in line)
    assert library_line.endswith("(traceback in the log file)")
    assert err.count("Traceback (most recent call last)") == 1  # Ours only.
    assert log.read_text().count("Traceback (most recent call last)") == 2  # Both, in full.
    # Tracebacks that libraries print from background callbacks go to the file only.
    with console.background_tracebacks_to_log():
      sys.excepthook(*info)
    console.flush()
    assert "OUT_OF_RANGE" not in capfd.readouterr().err
    assert log.read_text().count("a library printed a background traceback") == 1
  finally:
    console.setup(None, 0)


def test_a_log_file_that_cannot_be_written_says_so_once(tmp_path, capfd):
  import errno

  class FullDisk:
    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
      raise OSError(errno.ENOSPC, "No space left on device")

  handler = console.LogFileHandler(str(tmp_path / "log.txt"))
  handler.stream = FullDisk()
  for _ in range(3):
    handler.emit(_record("x.py", logging.INFO, "a record"))
  err = capfd.readouterr().err
  assert err.count("warning: cannot write the log file") == 1 and "Traceback" not in err
  assert "No space left on device" in err
