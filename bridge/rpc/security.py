"""Assembles a daemon's transport security from its configuration: mTLS server
credentials, the authorisation interceptor and the audit log, or (development only)
plaintext with every call audited as unauthenticated."""

from __future__ import annotations

from pathlib import Path

from bridge.config import NetworkConfig, TlsConfig
from bridge.rpc.audit import AuditLog
from bridge.rpc.authn import Authenticator
from bridge.rpc.authz import AuthorisationInterceptor
from bridge.rpc.roles import Role
from bridge.rpc.rules import TransferLedgers
from bridge.rpc.server import ServerSecurity
from bridge.rpc.tls import ClientIdentity, ServerCredentialSource, require_tls, server_roots


def server_security(
    component: str,
    network: NetworkConfig,
    tls: TlsConfig | None,
    audit_log: Path | None,
    transfer_ledgers: TransferLedgers | None = None,
) -> tuple[ServerSecurity, AuditLog]:
    """The server side: mutual TLS + authorisation, or PlaintextRefused unless the
    development flag is set. Returns the audit log too (the caller closes it)."""
    audit = AuditLog(audit_log)
    tls = require_tls(tls, component)
    if tls is None:
        return ServerSecurity(None, AuthorisationInterceptor(None, audit, transfer_ledgers)), audit
    source = ServerCredentialSource(tls, server_roots(network, tls))
    interceptor = AuthorisationInterceptor(Authenticator(network), audit, transfer_ledgers)
    return ServerSecurity(source.credentials(), interceptor), audit


def client_identity(
    network: NetworkConfig | None, tls: TlsConfig | None, peer: Role
) -> ClientIdentity | None:
    """The identity for calling a server in role ``peer`` (None: development plaintext,
    which the channel itself refuses unless the flag is set)."""
    if tls is None:
        return None
    return ClientIdentity.to(network, tls, peer)
