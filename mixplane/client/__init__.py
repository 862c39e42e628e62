"""Clients: the in-process client (``Client.local``), the remote one (``Client.remote``), and
the streams and readers they use. Names are imported on first use, so that ``mixplane.job``
(which the streams need) and this package can import each other's modules in any order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mixplane.client.client import Client
    from mixplane.client.windows import WindowStream

__all__ = ["Client", "WindowStream"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from mixplane.client.client import Client

        return Client
    if name == "WindowStream":
        from mixplane.client.windows import WindowStream

        return WindowStream
    msg = f"module 'mixplane.client' has no attribute {name!r}"
    raise AttributeError(msg)
