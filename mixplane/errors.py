"""One exception tree for mixplane.

Every error a user can cause is a ``MixplaneError``. Subclasses also inherit the matching builtin
(``KeyError``, ``ValueError``, ``OSError``) so generic handlers keep working. Messages are
lower-case, name the offending value, and say what to do.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: What code reading a malformed decoded document (a state, a snapshot) raises where its shape
#: is not checked value by value; loaders turn these into a ``StateError`` naming the document.
MALFORMED = (
    KeyError,
    TypeError,
    ValueError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


def shown(value: Any) -> str:
    """A value a user gave, for a message: a short repr, safe for values nested thousands deep
    or megabytes long."""
    return reprlib.repr(value)


class MixplaneError(Exception):
    """Base class of every error mixplane raises on purpose."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        """The message on one line (text quoted from a parser or a file may hold breaks)."""
        return " ".join(str(self.args[0]).splitlines()) if self.args else ""


class CatalogError(MixplaneError):
    """A problem with the catalog database or its contents."""


class SchemaVersionError(CatalogError, RuntimeError):
    """The catalog file was written by a newer mixplane, or cannot be migrated."""


class DatasetNotFoundError(CatalogError, KeyError):
    """A dataset name that the catalog does not hold."""


class DatasetExistsError(CatalogError, ValueError):
    """Registering a name that is taken, without ``replace=True``."""


class RegistrationError(CatalogError, ValueError):
    """Registration could not complete; the catalog is left exactly as before."""


class MalformedRecordError(RegistrationError):
    """A record that cannot be read; names the file and the line (JSONL) or row (Parquet)."""

    def __init__(self, message: str, *, path: str, location: str | None = None) -> None:
        where = f"{path}:{location}" if location else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.location = location


class PropertyError(CatalogError, ValueError):
    """An unknown property, or a value of the wrong type for a property."""


class FileChangedError(CatalogError, OSError):
    """A registered file was modified or removed after registration."""


class QueryError(MixplaneError, ValueError):
    """A filter that cannot be compiled: unknown property, type mismatch, bad operator."""


class FilterSyntaxError(QueryError):
    """A filter given as text that does not parse; names the position."""


class MixtureError(MixplaneError, ValueError):
    """A mixture that is invalid or does not fit the query result."""


class PlanError(MixplaneError, ValueError):
    """A job that cannot be planned: bad topology, budget, schedule or policy."""


class StateError(MixplaneError, ValueError):
    """Saved state that does not fit: other version, job, catalog or query; says what differs."""


class JobNotFoundError(MixplaneError, KeyError):
    """A job id the server (or client) does not hold."""


class JobConflictError(MixplaneError, ValueError):
    """Another job definition under a job id that is taken."""


class AlgorithmOptionError(MixplaneError, ValueError):
    """An option or prior a mixing algorithm cannot work with; names the option."""


class DependencyError(MixplaneError, ImportError):
    """An optional dependency is missing; the message says which extra to install."""


class MixplaneWarning(UserWarning):
    """Base class of mixplane's warnings: something works, but not as well as it could."""


class SizingWarning(MixplaneWarning):
    """A token-budgeted job sized without its tokenizer: its token shares are approximate."""


class ServerConfigError(MixplaneError, ValueError):
    """The server's configuration cannot be used (tokens file, data roots, TLS files); names
    the file or option and the fix. The server refuses to start."""


class AccessDeniedError(MixplaneError, PermissionError):
    """A request the server's access rules refuse: a path outside the data roots, or
    registration on a server without data roots (HTTP 403)."""
