"""Errors and exit codes shared by every command; this module imports nothing."""

EXIT_OK = 0
EXIT_FAILED = 1  # outputs could not be written (disk full, permissions): committed work is kept
EXIT_CONFIG = 2  # a bad config or input (or output_dir in use by another run), before any work
EXIT_ERROR_BUDGET = 3  # the run finished, but more rows failed than max_error_rate allows
EXIT_STOPPED = 75  # stopped by SIGTERM/SIGINT after committing what it could: rerun to resume
# (75 is EX_TEMPFAIL of sysexits.h, "try again later"; none of 0-3, nor 128+N of a signal)


class ConfigError(ValueError):
    """A problem with the configuration or its inputs, found before any work: exit code 2."""


class Stopped(Exception):
    """The run stopped on a signal after committing the chunk in flight: exit code 75."""

    def __init__(self, signal_name: str, rows_done: int, rows: int):
        super().__init__(f"stopped by {signal_name}: {rows_done} of {rows} rows committed")
        self.signal_name, self.rows_done, self.rows = signal_name, rows_done, rows
