"""A real HTTPS server on 127.0.0.1 for download tests (self-signed certificate, no mocks).

Importable from every test directory (tests/ is on sys.path via conftest). The client side
trusts the certificate through the ``ssl.SSLContext`` this returns, or, for a subprocess,
through OpenSSL's standard ``SSL_CERT_FILE`` pointing at :attr:`Served.cafile`.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for IP 127.0.0.1 (EC P-256, valid one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-swarm test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Served:
    url: str  # https://127.0.0.1:PORT (or http:// when tls=False)
    cafile: Path | None  # the certificate to trust (None for plain http)
    client_context: ssl.SSLContext | None  # trusts exactly that certificate


@contextlib.contextmanager
def serve(
    handler: type[http.server.BaseHTTPRequestHandler], directory: Path, *, tls: bool = True
) -> Iterator[Served]:
    """Run ``handler`` on 127.0.0.1 (TLS with a fresh self-signed cert unless ``tls=False``)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    cafile = None
    client = None
    if tls:
        cafile, keyfile = self_signed_cert(directory)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(cafile, keyfile)
        srv.socket = sctx.wrap_socket(srv.socket, server_side=True)
        client = ssl.create_default_context(cafile=str(cafile))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    scheme = "https" if tls else "http"
    try:
        yield Served(f"{scheme}://127.0.0.1:{srv.server_address[1]}", cafile, client)
    finally:
        srv.shutdown()
        srv.server_close()
