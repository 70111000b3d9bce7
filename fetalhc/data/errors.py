"""The one exception type of ``fetalhc.data``."""

from __future__ import annotations


class DataError(ValueError):
    """Bad dataset input: the one-line message names the file or the CSV row at fault.

    A subclass of ``ValueError``, so the command line reports it as ``Error: ...``.
    """
