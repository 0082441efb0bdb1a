"""A throwaway certificate authority and a server certificate for 127.0.0.1, ::1 and localhost, for TLS on loopback.

Made with `trustme` (a test dependency, pinned in requirements.txt). `LoopbackCertificates().server_context()` is what a
test server wraps its sockets with; `write_ca(path)` writes the CA in PEM, for SSL_CERT_FILE; `write_server_pem(path)`
writes the server's key and certificate chain, for a server in another process (`FrontEndProcess(port, path)`).
"""

import ssl
from pathlib import Path

import trustme

# The names the server certificate is valid for: every way a test reaches a loopback server.
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


class LoopbackCertificates:
    """A new test CA and a server certificate it signed for LOOPBACK_NAMES. Two instances do not trust each other,
    which is how a test gets an untrusted certificate."""

    def __init__(self) -> None:
        self._authority = trustme.CA()
        self._server = self._authority.issue_cert(*LOOPBACK_NAMES)

    def server_context(self) -> ssl.SSLContext:
        """A server-side SSLContext holding the certificate and its key."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with self._server.private_key_and_cert_chain_pem.tempfile() as path:
            context.load_cert_chain(path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side SSLContext that trusts this CA only (host names checked)."""
        context = ssl.create_default_context(cafile=None)
        context.load_verify_locations(cadata=self.ca_pem().decode("ascii"))
        return context

    def ca_pem(self) -> bytes:
        """The CA certificate in PEM."""
        return self._authority.cert_pem.bytes()

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate in PEM to `path` (for SSL_CERT_FILE) and return `path`."""
        path.write_bytes(self.ca_pem())
        return path

    def write_server_pem(self, path: Path) -> Path:
        """Write the server's private key and certificate chain in one PEM file (a certfile that holds its key) to
        `path` and return `path`."""
        self._server.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path
