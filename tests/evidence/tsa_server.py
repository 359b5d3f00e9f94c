"""A local RFC 3161 time-stamp authority for tests: OpenSSL's `ts -reply` behind an HTTP server on
loopback, with a TSA certificate made for the occasion."""

from __future__ import annotations

import datetime
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256
accuracy = secs:1
ordering = yes
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def make_tsa_certificate(directory: Path) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelshield test TSA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "tsa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "tsa.crt").write_bytes(pem)
    return pem


class LocalTSA:
    """Serve RFC 3161 on http://127.0.0.1:<port>/ until closed."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ms-tsa-")
        self.dir = Path(self._tmp.name)
        self.certificate_pem = make_tsa_certificate(self.dir)
        (self.dir / "serial").write_text("01\n")
        (self.dir / "openssl.cnf").write_text(_CONFIG.format(dir=self.dir))
        directory = self.dir
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                query = self.rfile.read(length)
                with lock:
                    (directory / "req.tsq").write_bytes(query)
                    command = ["openssl", "ts", "-reply", "-config", str(directory / "openssl.cnf")]
                    command += ["-queryfile", str(directory / "req.tsq")]
                    command += ["-out", str(directory / "resp.tsr")]
                    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
                    body = (directory / "resp.tsr").read_bytes() if result.returncode == 0 else b""
                self.send_response(200 if body else 500)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self._tmp.cleanup()
