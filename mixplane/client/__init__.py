"""Clients: the in-process client (``Client.local``) and the readers it uses."""

from mixplane.client.client import Client

__all__ = ["Client"]
