"""Warnings a job gives once per process (``SizingWarning``: its token shares are approximate).

They go through ``warnings`` (the CLI prints each as one ``warning:`` line on stderr; Python
code can filter them or turn them into errors), not through logging.
"""

from __future__ import annotations

import warnings

from mixplane.errors import SizingWarning

_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A ``SizingWarning``, once per message in this process."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, SizingWarning, stacklevel=4)
