"""Errors and exit codes shared by every command; this module imports nothing."""

EXIT_OK = 0
EXIT_FAILED = 1  # outputs could not be written (disk full, permissions): committed work is kept
EXIT_CONFIG = 2  # a bad config or input, found before any work
EXIT_ERROR_BUDGET = 3  # the run finished, but more rows failed than max_error_rate allows


class ConfigError(ValueError):
    """A problem with the configuration or its inputs, found before any work: exit code 2."""
