"""Quiet by default: TensorFlow's C++ start-up lines and the known warnings of dependencies are
kept out of a normal run; log_level=debug shows everything again. No TensorFlow at import."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings

from pipeline import USER_TF_LOG_LEVEL  # before `import pipeline` set its default

TF_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
# TensorFlow's C++ (absl) log lines: I0000 00:00:1795714748.414560 7013 cudart_stub.cc:31] ...
CPP_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
KNOWN_WARNINGS = [  # (message regex, category): harmless notices of Keras and TensorFlow
    (r"The structure of `inputs` doesn't match the expected structure", UserWarning),
    (r"Skipping variable loading for optimizer", UserWarning),
    (r"Compiled the loaded model, but the compiled metrics have yet to be built", UserWarning),
    (r"Do not pass an `input_shape`/`input_dim` argument to a layer", UserWarning),
    (r"`build\(\)` was called on layer", UserWarning),
    (r".*", DeprecationWarning),
    (r".*", FutureWarning),
]
QUIET_LOGGERS = ("absl", "tensorflow", "h5py", "PIL")  # their Python loggers: errors only


CONSOLE = {"console": True}  # log.info(..., extra=CONSOLE): a line the console shows too


class ConsoleFilter(logging.Filter):
    """The console's share of the log (conf/config.yaml's hydra.job_logging): warnings and
    errors, and the few info lines marked with extra=CONSOLE (the model line, resuming, the
    demo build); everything with log_level=debug. The log file keeps every info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.WARNING
            or getattr(record, "console", False)
            or logging.getLogger().isEnabledFor(logging.DEBUG)
        )


def setup(level: str) -> None:
    """Before TensorFlow is imported: quiet (info) or everything (debug)."""
    if level == "debug":
        if USER_TF_LOG_LEVEL is None:
            os.environ[TF_LEVEL] = "0"
        logging.getLogger().setLevel(logging.DEBUG)
        return
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if USER_TF_LOG_LEVEL is None:  # the user's own level is theirs, start-up lines included
        os.environ[TF_LEVEL] = "3"  # C++ INFO, WARNING and ERROR lines (FATAL still shows)
        import_tensorflow()


def import_tensorflow() -> None:
    """Import TensorFlow with the C file descriptor 2 captured: the lines its libraries print
    before absl's logging starts (which TF_CPP_MIN_LOG_LEVEL does not reach) are dropped, any
    other line is passed on, and an import error still shows in full."""
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): import as it is
        import tensorflow  # noqa: F401  here: the whole point of this function

        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401  here: TensorFlow loads under the capture
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            _pass_on(capture.read().decode("utf-8", "replace"))


def _pass_on(text: str) -> None:
    """Write the captured lines that are not TensorFlow's C++ start-up chatter to stderr."""
    kept = [
        line
        for line in text.splitlines()
        if line.strip() and not CPP_LINE.match(line) and not line.startswith(ABSL_PREAMBLE)
    ]
    if kept:
        print("\n".join(kept), file=sys.stderr)
