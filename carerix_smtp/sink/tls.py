"""The sink's server-side TLS: your certificate and key, or a generated one.

TLS
    ``tls="implicit"`` speaks TLS from the first byte; ``tls="starttls"`` offers
    STARTTLS.  Without ``cert_file``/``key_file`` a trustme CA and a certificate
    for localhost, 127.0.0.1 and ::1 are generated; ``ca_file`` is the CA's PEM
    for clients to verify.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

from carerix_smtp.errors import SinkStartError, UsageError
from carerix_smtp.sink.config import SinkConfig
from carerix_smtp.sink.store import write_atomic


class ServerTls:
    """The server context of one sink and, for a generated certificate, its CA (the
    PEM in a temporary directory until :meth:`cleanup`, or in ``ca_out``)."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.tmp_dir: Path | None = None
        self.ca_file: Path | None = None
        self.ca_pem: bytes | None = None

    def load(self, config: SinkConfig) -> ssl.SSLContext:
        """Make the server context (kept as :attr:`context`) for ``config``."""
        self.context = self._make_server_context(config)
        return self.context

    def _make_server_context(self, config: SinkConfig) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if config.cert_file is not None and config.key_file is not None:
            try:
                ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(
                    f"sink: cannot load certificate {config.cert_file} with key "
                    f"{config.key_file}: {exc}"
                ) from None
            return ctx
        import trustme  # only needed for a generated certificate

        ca = trustme.CA()
        ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(ctx)
        self.ca_pem = ca.cert_pem.bytes()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="cxsmtp-sink-"))
        self.ca_file = self.tmp_dir / "ca.pem"
        self.ca_file.write_bytes(self.ca_pem)
        if config.ca_out is not None:
            try:
                write_atomic(config.ca_out, self.ca_pem, fsync=False)
            except OSError as exc:
                self.cleanup()
                raise SinkStartError(
                    f"sink: cannot write the CA certificate to {config.ca_out}: {exc.strerror}"
                ) from None
            self.ca_file = config.ca_out
        return ctx

    def cleanup(self) -> None:
        """Remove the temporary directory of a generated CA (ca_out stays)."""
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            if self.ca_file is not None and self.ca_file.parent == self.tmp_dir:
                self.ca_file = None
            self.tmp_dir = None
