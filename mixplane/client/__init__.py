"""Clients: the in-process client (``Client.local``) and the readers it uses."""

from mixplane.client.client import Client
from mixplane.client.windows import WindowStream

__all__ = ["Client", "WindowStream"]
