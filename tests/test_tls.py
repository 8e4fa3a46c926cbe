"""`python -m server` over https with `[server] tls_cert`/`tls_key`, and a clear exit when they cannot load."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from server.config import ServerConfig
from server.testing.servers import server_process, wait_ready

# Server processes of its own: run alone, after the rest (`make test`).
pytestmark = pytest.mark.heavy

QUICK = {"STYLIZE_ENGINE_WARMUP": "false"}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as `openssl req -x509` would make for a LAN address."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stylize")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_the_server_serves_https_with_the_configured_certificate(data_dir: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = QUICK | {"STYLIZE_SERVER_TLS_CERT": str(cert), "STYLIZE_SERVER_TLS_KEY": str(key)}
    trusting = ssl.create_default_context(cafile=str(cert))
    async with (
        server_process(data_dir, tmp_path / "server.log", env=env) as running,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as http,
    ):
        assert running.url.startswith("https://")
        await wait_ready(http, running.url)
        async with http.get(f"{running.url}/") as response:
            assert response.status == 200
            assert 'id="output"' in await response.text()
        async with http.get(f"{running.url}/api/client-config?token=not-for-the-log") as response:
            assert response.status == 200
        # The page's own origin is https: the same host and port over http is another site.
        for origin, status in ((running.url, 200), (running.url.replace("https://", "http://"), 403)):
            async with http.post(
                f"{running.url}/api/strength", json={"strength": 0.3}, headers={"Origin": origin}
            ) as r:
                assert r.status == status, origin
        # Plain http on the same port gets no page.
        plain = running.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{plain}/health") as response:
                await response.read()
    log = (tmp_path / "server.log").read_text()
    assert '"GET /api/client-config?token=***" 200' in log, "the access log names the request without the token"
    assert "not-for-the-log" not in log


async def test_a_certificate_that_cannot_load_stops_the_server_with_the_reason(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = QUICK | {"STYLIZE_SERVER_TLS_CERT": str(tmp_path / "missing.pem")}
    async with server_process(data_dir, log, env=env) as running:
        async with asyncio.timeout(60):
            assert await running.process.wait() == 2
    assert "cannot load the TLS certificate" in log.read_text()


def test_a_key_without_a_certificate_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="tls_key is set without tls_cert"):
        ServerConfig(tls_key="key.pem")
