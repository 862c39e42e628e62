"""TLS (issue 17): a certificate authority and a server certificate for 127.0.0.1 made in the
test (``cryptography``), a real ``mixplane serve --tls-cert --tls-key``, and the real CLI
talking to it with ``MIXPLANE_CA_FILE``; a client without the authority fails at once."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mixplane.client import Client
from mixplane.client.remote import RemoteError
from mixplane.errors import ServerConfigError
from mixplane.protocol import PROTOCOL_HEADER
from mixplane.server.security import Security
from tests.conftest import COMMAND
from tests.server.conftest import TOKENS, Server, register_corpus, write_tokens

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

pytestmark = pytest.mark.integration


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA (``ca.pem``), a server certificate for 127.0.0.1 and localhost signed by it
    (``cert.pem``, key ``key.pem``), and a second, unrelated CA (``other-ca.pem``)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    out: dict[str, Path] = {}
    cas = {}
    for label in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"mixplane test {label}"))
            .issuer_name(_name(f"mixplane test {label}"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        cas[label] = (key, cert)
        out[label] = folder / f"{label}.pem"
        out[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_key, ca_cert = cas["ca"]
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca_key, hashes.SHA256())
    )
    out["cert"] = folder / "cert.pem"
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"] = folder / "key.pem"
    out["key"].write_bytes(_pem_key(key))
    out["key"].chmod(0o600)
    out["other-key"] = folder / "other-key.pem"
    out["other-key"].write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    return out


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIXPLANE_")}
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=120,
        check=False,
    )


def test_https_end_to_end_with_the_cli(tmp_path: Path, start: Callable[..., Server]) -> None:
    certs = make_certificates(tmp_path / "tls")
    home = register_corpus(tmp_path)
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start(
        home,
        "--tokens-file", str(tokens),
        "--tls-cert", str(certs["cert"]),
        "--tls-key", str(certs["key"]),
    )  # fmt: skip
    assert server.url.startswith("https://127.0.0.1:")
    token_file = tmp_path / "viewer-token"
    token_file.write_text(TOKENS["viewer"])
    # the real CLI, verifying the server with the CA from MIXPLANE_CA_FILE
    env = {"MIXPLANE_CA_FILE": str(certs["ca"]), "MIXPLANE_TOKEN_FILE": str(token_file)}
    listed = cli("--server", server.url, "ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [d["name"] for d in json.loads(listed.stdout)] == ["corpus"]
    # and with --ca-file
    flagged = cli(
        "--server", server.url, "--ca-file", str(certs["ca"]), "ls", "--json",
        env={"MIXPLANE_TOKEN_FILE": str(token_file)},
    )  # fmt: skip
    assert flagged.returncode == 0, flagged.stderr
    # the system's certificates (or another CA) do not vouch for it: refused at once, no retry
    without = {"MIXPLANE_TOKEN_FILE": str(token_file)}
    for other in (without, {**without, "MIXPLANE_CA_FILE": str(certs["other-ca"])}):
        failed = cli("--server", server.url, "ls", env=other)
        assert failed.returncode == 1
        assert "cannot verify the TLS certificate" in failed.stderr, failed.stderr
        assert "--ca-file" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    # Client.remote verifies too; the session cookie is Secure over TLS
    with Client.remote(server.url, token=TOKENS["trainer"], ca_file=certs["ca"]) as client:
        assert [d["name"] for d in client.datasets()] == ["corpus"]
    verify = ssl.create_default_context(cafile=certs["ca"])
    with httpx.Client(base_url=server.url, verify=verify, timeout=30) as browser:
        opened = browser.post(
            "/v1/session",
            headers={PROTOCOL_HEADER: "1", "Authorization": f"Bearer {TOKENS['viewer']}"},
        )
        assert opened.status_code == 200
        assert "; Secure" in opened.headers["set-cookie"]
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nothing
        httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)


def test_an_https_client_of_a_plain_server_fails_at_once(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    server = start(register_corpus(tmp_path))
    with pytest.raises(RemoteError, match="does not speak TLS"):
        Client.remote(server.url.replace("http://", "https://"), retry_for=60)
    with pytest.raises(RemoteError, match="cannot load CA file"):
        Client.remote(server.url.replace("http://", "https://"), ca_file=tmp_path / "none.pem")


def test_bad_tls_files_stop_the_start(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    with pytest.raises(ServerConfigError, match="both --tls-cert and --tls-key"):
        Security.configure(tls_cert=certs["cert"])
    with pytest.raises(ServerConfigError, match="cannot use TLS certificate"):
        Security.configure(tls_cert=certs["cert"], tls_key=certs["other-key"])
    with pytest.raises(ServerConfigError, match="does not exist"):
        Security.configure(tls_cert=tmp_path / "none.pem", tls_key=certs["key"])
    proc = subprocess.run(
        [*COMMAND, "--home", str(tmp_path / "home"), "serve", "--port", "0",
         "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["other-key"])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot use TLS" in proc.stderr


def test_warnings_at_start(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    plain = Security.configure(token_file=_token(tmp_path))
    beyond = plain.warnings(host="0.0.0.0", loopback=False)
    assert len(beyond) == 1 and "without TLS: tokens and data cross the network" in beyond[0]
    assert plain.warnings(host="127.0.0.1", loopback=True) == []
    tls = Security.configure(
        token_file=_token(tmp_path), tls_cert=certs["cert"], tls_key=certs["key"]
    )
    assert tls.warnings(host="0.0.0.0", loopback=False) == []
    certs["key"].chmod(0o644)
    assert "chmod 600" in tls.warnings(host="0.0.0.0", loopback=False)[0]
    none = Security.configure().warnings(host="127.0.0.1", loopback=True)
    assert len(none) == 1 and "anyone who can connect is admin" in none[0]


def _token(folder: Path) -> Path:
    path = folder / "token"
    path.write_text("a-long-enough-token")
    return path
