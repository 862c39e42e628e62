"""The server's security configuration: tokens, data roots and TLS, read and checked at start.

``Security.configure`` turns ``mixplane serve``'s options into checked values, or raises
``ServerConfigError`` with one line naming the file or option (the server then does not start,
binds nothing and opens no catalog):

- ``--tokens-file F`` (role-scoped tokens, ``auth.read_tokens_file``) or ``--token-file F``
  (one admin token); without either the server has no tokens, which ``bind_address`` allows on
  loopback only.
- ``--data-root DIR|URI`` (``roots.DataRoots``). Without one, registration through the server
  is refused (403) when it has tokens, and unconfined on a loopback server without tokens (the
  behaviour before roots existed; ``warnings`` says so at start).
- ``--tls-cert F --tls-key F`` (both or neither), loaded once here so a wrong key or an
  unreadable file is a start-up error rather than uvicorn's traceback. A key file that other
  users can read is warned about.

``warnings`` lists what an operator should hear at start: no TLS beyond loopback (tokens cross
the network in clear text), no token (anyone who can connect is admin), unconfined
registration.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mixplane.errors import ServerConfigError
from mixplane.server.auth import Credentials, read_token, read_tokens_file
from mixplane.server.roots import DataRoots


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSFiles:
    """A certificate chain and its private key (PEM files), checked by ``load``."""

    cert: Path
    key: Path

    def load(self) -> ssl.SSLContext:
        """A server context over the files; a file that cannot be read or a key that does not
        fit the certificate is a ``ServerConfigError``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            msg = f"TLS file {exc.filename} does not exist; check --tls-cert and --tls-key"
            raise ServerConfigError(msg) from None
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            msg = (
                f"cannot use TLS certificate {self.cert} with key {self.key} ({reason}); give "
                "the PEM certificate chain and its unencrypted private key"
            )
            raise ServerConfigError(msg) from None
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """Who may connect (``credentials``; None: no tokens), where registration may read
    (``roots``; None: anywhere, loopback without tokens only) and TLS (None: plain HTTP)."""

    credentials: Credentials | None = None
    roots: DataRoots | None = None
    tls: TLSFiles | None = None

    @classmethod
    def configure(
        cls,
        *,
        token_file: str | Path | None = None,
        tokens_file: str | Path | None = None,
        data_roots: Sequence[str] = (),
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> Security:
        if token_file is not None and tokens_file is not None:
            msg = (
                "give --tokens-file (tokens with roles) or --token-file (one admin token), not "
                "both; an admin entry in the tokens file does what --token-file does"
            )
            raise ServerConfigError(msg)
        credentials = None
        if tokens_file is not None:
            credentials = read_tokens_file(tokens_file)
        elif token_file is not None:
            credentials = Credentials.single(read_token(token_file))
        roots = DataRoots.parse(data_roots) if data_roots else None
        if roots is None and credentials is not None:
            roots = DataRoots()  # registration refused until roots are given
        if (tls_cert is None) != (tls_key is None):
            msg = "give both --tls-cert and --tls-key (PEM files), or neither"
            raise ServerConfigError(msg)
        tls = None
        if tls_cert is not None and tls_key is not None:
            tls = TLSFiles(cert=Path(tls_cert), key=Path(tls_key))
            tls.load()
        return cls(credentials=credentials, roots=roots, tls=tls)

    def warnings(self, *, host: str, loopback: bool) -> list[str]:
        """What the operator should hear at start (see the module)."""
        out = []
        if not loopback and self.tls is None:
            out.append(
                f"listening on {host} beyond loopback without TLS: tokens and data cross the "
                "network in clear text; pass --tls-cert and --tls-key (or put a TLS proxy in front)"
            )
        if self.credentials is None:
            unconfined = self.roots is None
            out.append(
                "serving without a token: anyone who can connect is admin"
                + (", and registration reads any file this user can read" if unconfined else "")
                + "; pass --tokens-file"
                + (" and --data-root" if unconfined else "")
            )
        if self.tls is not None and os.name == "posix":
            mode = stat.S_IMODE(self.tls.key.stat().st_mode)
            if mode & 0o077:
                out.append(f"TLS key {self.tls.key} has mode {mode:04o}; chmod 600 it")
        return out
