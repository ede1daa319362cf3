"""The CLI's mutual-TLS identity: ``--tls-cert/--tls-key/--tls-ca`` or ``--client-config``.

A client config file is TOML with a ``[tls]`` table (``cert_file``, ``key_file``, optional
``ca_files``) and optionally ``network`` (the network file, whose organisations holding
the coordinator role then supply the trust roots).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from bridge.config import TlsConfig, load_network, load_tls
from bridge.domain.errors import InvalidInput
from bridge.rpc.roles import COORDINATOR, Role
from bridge.rpc.tls import ClientIdentity


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The TLS options every command shares."""
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="client key (PEM, 0600)")
    p.add_argument(
        "--tls-ca", type=Path, action="append", default=[], help="CA for the coordinator"
    )
    p.add_argument("--client-config", type=Path, help="TOML file with a [tls] table")


def identity(a: argparse.Namespace, peer: Role | None = None) -> ClientIdentity | None:
    """The identity the options name, toward ``peer`` (the coordinator by default); None
    when none is given (the channel then refuses plaintext unless the development flag
    is set). Raises InvalidInput on incomplete options or a key readable by others."""
    peer = peer or Role(COORDINATOR)
    if a.client_config is not None:
        with open(a.client_config, "rb") as fh:
            raw = tomllib.load(fh)
        base = a.client_config.parent
        tls = load_tls(raw, base, str(a.client_config))
        if tls is None:
            raise InvalidInput(f"{a.client_config}: no [tls] table")
        network = load_network(base / raw["network"]) if "network" in raw else None
        return ClientIdentity.to(network, tls, peer)
    if a.tls_cert is None and a.tls_key is None:
        return None
    if a.tls_cert is None or a.tls_key is None or not a.tls_ca:
        raise InvalidInput("--tls-cert, --tls-key and --tls-ca go together")
    if a.tls_key.stat().st_mode & 0o077:
        raise InvalidInput(f"{a.tls_key} must be 0600 (not group/world readable)")
    return ClientIdentity.to(None, TlsConfig(a.tls_cert, a.tls_key, tuple(a.tls_ca)), peer)
