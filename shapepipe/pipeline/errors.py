"""Project exceptions.

Every error a user can cause carries a one-line message naming what is wrong
(file, section, key, value) and what was expected.
"""


class ShapePipeError(Exception):
    """Base class of the project's errors."""


class ConfigError(ShapePipeError):
    """A configuration or usage problem, detected before any job runs (exit code 2)."""


class JobError(ShapePipeError):
    """A job failed for a reason the runner could describe (bad input, missing file...)."""


class ExecutionError(JobError):
    """An external program returned a non-zero exit code."""


class JobTimeout(JobError):
    """A job exceeded the TIMEOUT of the run."""
