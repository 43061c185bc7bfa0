"""User-facing dataset errors. Each carries a one-line message that says what to do.

The preparation scripts print ``error: <message>`` and exit with status 2 for these (no
traceback); anything else is a bug and keeps its traceback.
"""


class DatasetError(Exception):
    """Base class of every user-facing dataset error."""


class DatasetNotFoundError(DatasetError):
    """A registered dataset's prepared folder is missing or empty."""


class PrepareError(DatasetError):
    """Raw data missing, unreadable, or with label values outside the expected range."""


class DownloadError(DatasetError):
    """A download or archive extraction failed (network, size or checksum mismatch)."""


class DatasetFileError(DatasetError, ValueError):
    """An image or label file of a dataset cannot be read (corrupt, truncated, missing) or does
    not fit its pair, found while training or evaluating; the message names the file."""
