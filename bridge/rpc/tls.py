"""Mutual-TLS credentials for every bridge server and client, reloaded from disk.

Servers require a client certificate chaining to one of the network's organisation CAs
(``require_client_auth``); clients present theirs and check the server against the CAs of
the organisations that hold the role they meant to reach, and against that role's server
name (:attr:`bridge.rpc.roles.Role.server_name`, carried in the server's SAN).

Certificates, keys and CA files are re-read when they change on disk: the server through
gRPC's dynamic credentials (the fetcher runs at each new handshake), clients by building a
new channel when their files change (:class:`bridge.rpc.channels.ReloadingChannel`).

Plaintext is refused unless :data:`INSECURE_ENV` is set to ``1``; then a loud warning is
logged at every start. gRPC Python exposes no setting for the minimum TLS version: its
BoringSSL negotiates TLS 1.3 with every current peer and still completes a TLS 1.2
handshake, on which the interceptor then refuses every call
(:func:`bridge.rpc.authn.require_tls13`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.config import NetworkConfig, TlsConfig
from bridge.domain.errors import InvalidInput
from bridge.logfields import get_logger
from bridge.rpc.roles import Role

INSECURE_ENV = "KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT"
"""Set to ``1`` to run without TLS (development only; every start logs a warning)."""


class PlaintextRefused(InvalidInput):
    """A daemon or client was configured without TLS and the development flag is not set."""


def plaintext_allowed(component: str) -> bool:
    """True when the development flag is set (and then warns loudly); False otherwise."""
    if os.environ.get(INSECURE_ENV) != "1":
        return False
    get_logger().warning(
        "INSECURE: plaintext gRPC without authentication; never use this outside development",
        component=component,
        flag=INSECURE_ENV,
    )
    return True


def require_tls(tls: TlsConfig | None, component: str) -> TlsConfig | None:
    """``tls``, or None when the development flag allows plaintext; else PlaintextRefused."""
    if tls is not None:
        return tls
    if plaintext_allowed(component):
        return None
    raise PlaintextRefused(
        f"{component}: no [tls] table; plaintext gRPC is refused unless {INSECURE_ENV}=1"
    )


def _stamp(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) per file, so any replacement is noticed."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """True when the certificate is for the private key (a rotation caught between the two
    renames is not taken)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TornFiles(ValueError):
    """Certificate and key on disk do not belong together (mid-rotation); try again."""


def _read_roots(paths: Sequence[Path]) -> bytes:
    roots = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in paths)
    if not roots.strip():
        raise InvalidInput("no trust roots configured (no organisations, no tls.ca_files)")
    return roots


def server_roots(network: NetworkConfig, tls: TlsConfig) -> tuple[Path, ...]:
    """CA files a server accepts clients from: ``tls.ca_files``, else every organisation's."""
    if tls.ca_files:
        return tls.ca_files
    return tuple(sorted({o.ca_file for o in network.organisations.values()}))


def client_roots(network: NetworkConfig | None, tls: TlsConfig, peer: Role) -> tuple[Path, ...]:
    """CA files a client trusts for a server in role ``peer``: the CAs of the organisations
    the network file grants that role, or ``tls.ca_files`` when every certificate in them
    is one of those CAs.

    SECURITY: a client checks the server's role only through its SAN, and gRPC Python shows
    a client nothing else of the server's certificate; so any CA it trusts could mint a
    certificate for any role. Only the role holders' CAs may therefore be trusted: the
    network file is required, and a ``ca_files`` entry naming any other CA (a bundle of
    every organisation's CA, say) is refused (InvalidInput).
    """
    if network is None:
        raise InvalidInput(
            f"a client needs the network file (--network, or network = ... in its config):"
            f" only the CAs of organisations holding role {peer} may vouch for that server"
        )
    holders = network.holders_of(peer)
    if not holders:
        raise InvalidInput(f"no organisation holds role {peer} in the network file")
    own = tuple(sorted({o.ca_file for o in holders}))
    if not tls.ca_files:
        return own
    allowed = {c.public_bytes(serialization.Encoding.DER) for c in _certificates(own)}
    for path in tls.ca_files:
        for cert in _certificates((path,)):
            if cert.public_bytes(serialization.Encoding.DER) not in allowed:
                raise InvalidInput(
                    f"{path}: CA {cert.subject.rfc4514_string()!r} belongs to no organisation"
                    f" holding role {peer}; a client may trust only those organisations' CAs"
                    f" ({', '.join(sorted(o.id for o in holders))})"
                )
    return tls.ca_files


def _certificates(paths: Sequence[Path]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for path in paths:
        try:
            out += x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise InvalidInput(f"CA file {path} is not readable: {exc.strerror}") from None
        except ValueError:
            raise InvalidInput(f"CA file {path} holds no valid certificate") from None
    return out


class ServerCredentialSource:
    """Builds a server's mTLS credentials and re-reads its files whenever they change.

    Guarantees: every handshake uses the certificate, key and client trust roots as on disk
    at (or after) the previous change; a file caught half-written is retried at the next
    handshake while the last good configuration stays in force.
    """

    def __init__(self, tls: TlsConfig, roots: Sequence[Path]) -> None:
        self._tls = tls
        self._roots = tuple(roots)
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self._initial = self._load()

    @property
    def _paths(self) -> tuple[Path, ...]:
        return (self._tls.cert_file, self._tls.key_file, *self._roots)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        key, cert = self._tls.key_file.read_bytes(), self._tls.cert_file.read_bytes()
        if not pair_matches(cert, key):
            raise TornFiles(f"{self._tls.cert_file} does not match {self._tls.key_file}")
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=_read_roots(self._roots)
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake: a new configuration, or None (unchanged)."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            try:
                config = self._load()
            except Exception as exc:  # keep serving with the last good files
                get_logger().warning("tls files unreadable; keeping the previous", error=repr(exc))
                return None
            self._stamp = stamp
            get_logger().info("tls server certificate reloaded", cert=str(self._tls.cert_file))
            return config

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials requiring a client certificate."""
        fetch: Any = self._fetch  # grpc-stubs omit that the fetcher may return None
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetch, require_client_authentication=True
        )


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """What a client needs to open an mTLS channel to one server role.

    ``roots`` are the CA files that may vouch for the server; ``peer`` is the role it must
    hold (checked through its certificate's SAN).
    """

    tls: TlsConfig
    roots: tuple[Path, ...]
    peer: Role

    @classmethod
    def to(cls, network: NetworkConfig | None, tls: TlsConfig, peer: Role) -> ClientIdentity:
        """The identity for reaching a server in role ``peer`` of ``network``."""
        return cls(tls, client_roots(network, tls, peer), peer)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file the credentials are built from."""
        return (self.tls.cert_file, self.tls.key_file, *self.roots)

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        """A value that changes whenever one of :attr:`paths` is replaced."""
        return _stamp(self.paths)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now; TornFiles mid-rotation."""
        key, cert = self.tls.key_file.read_bytes(), self.tls.cert_file.read_bytes()
        if not pair_matches(cert, key):
            raise TornFiles(f"{self.tls.cert_file} does not match {self.tls.key_file}")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_roots(self.roots), private_key=key, certificate_chain=cert
        )

    def options(self) -> list[tuple[str, str | int]]:
        """Channel options: the server name the peer's certificate must carry."""
        return [("grpc.ssl_target_name_override", self.peer.server_name)]
