"""Errors that ftlib raises on purpose.

Every error a learner can cause (a malformed data file, an unknown model size, a
download that fails) is an `FtlibError` with a message that names the file, the
entry and the field. The CLI prints that message alone, without a traceback.

Not in a notebook: the types of the errors notebooks show (notebook 01 catches a
DataError); they carry the message, nothing else.
"""


class FtlibError(Exception):
    """Base class: an error with a message meant for a person, not a traceback."""


class DataError(FtlibError, ValueError):
    """A data file or entry is not what the chapter's format expects."""


class DownloadError(FtlibError, OSError):
    """A download failed, or what arrived is not what was expected."""


class ConfigError(FtlibError, ValueError):
    """An argument or configuration value is out of range or unknown."""
