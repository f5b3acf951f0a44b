"""TLS for the https ports: one server ``ssl.SSLContext``, checked before any port opens.

``server_context`` builds the context the lean front end (``trio.SSLStream``)
and Hypercorn share, from ``certificate_file`` and ``private_key_file``: TLS
1.2 or newer, HTTP/1.1 the only ALPN protocol, no compression. It refuses,
with a ``ConfigError`` that names the file and the fix, a private key that
group or others may read, an encrypted key (there is no one to type its
passphrase), a file that is missing or unreadable, a file that holds no PEM
certificate or key, and a key that does not belong to the certificate.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat

from supervisor.config import ConfigError, ServerConfig

__all__ = ["server_context"]

log = logging.getLogger("supervisor.http")

_ALPN = ["http/1.1"]  # both front ends speak HTTP/1.1; the guard is written for it


def server_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server side TLS context for the https ports; None when no port is https.

    Raises:
        ConfigError: the certificate or the key cannot be used (the message says why
            and how to fix it).
    """
    if not config.tls_addresses:
        if (config.certificate_file or config.private_key_file) and not (
            config.grpc and config.grpc_tls
        ):
            log.warning(
                "certificate_file and private_key_file are set but no address is https://: "
                "every port serves plain http"
            )
        return None
    _check_key_mode(config.private_key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(_ALPN)
    _load_chain(context, config.certificate_file, config.private_key_file)
    return context


def _check_key_mode(path: str) -> None:
    """Refuse a private key file that group or others may read (or one that is missing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"private_key_file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"private_key_file {path}: not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"private_key_file {path} may be read by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): a private key must be the owner's alone; "
            f"fix it with: chmod 600 {path}"
        )


def _load_chain(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """Load the certificate chain and its key, turning OpenSSL's errors into advice."""
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        asked.append(True)  # the key is encrypted: refuse it instead of prompting
        return b""

    try:
        context.load_cert_chain(certificate, key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(_why(exc, certificate, key, encrypted=bool(asked))) from None
    except OSError as exc:
        which = "certificate_file" if _unreadable(certificate) else "private_key_file"
        path = certificate if which == "certificate_file" else key
        raise ConfigError(f"{which} {path}: {exc.strerror or exc}") from None


def _unreadable(path: str) -> bool:
    return not (os.path.isfile(path) and os.access(path, os.R_OK))


def _why(exc: ssl.SSLError, certificate: str, key: str, *, encrypted: bool) -> str:
    """What an ``SSLError`` from ``load_cert_chain`` means for the user."""
    if encrypted:
        return (
            f"private_key_file {key} is encrypted with a passphrase, which the server "
            f"cannot ask for: decrypt it (openssl pkey -in {key} -out KEY.pem) and keep "
            "the result at mode 0600"
        )
    if exc.reason == "KEY_VALUES_MISMATCH":
        return (
            f"private_key_file {key} is not the key of certificate_file {certificate}: "
            "give the key the certificate was issued for"
        )
    return (
        f"certificate_file {certificate} and private_key_file {key} must be a PEM "
        f"certificate (chain) and its PEM private key: {exc.reason or exc}"
    )
