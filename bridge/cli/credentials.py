"""The CLI's mutual-TLS identity: ``--tls-cert/--tls-key --network [--tls-ca]`` or
``--client-config``.

A client config file is TOML with ``network`` (the network file) and a ``[tls]`` table
(``cert_file``, ``key_file``, optional ``ca_files``). The trust roots for the server are
the CAs of the organisations the network file grants the server's role; ``--tls-ca`` /
``ca_files`` may only narrow them (see :func:`bridge.rpc.tls.client_roots`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge.config import TlsConfig, load_network, load_tls
from bridge.config_rules import check_file
from bridge.domain.errors import InvalidInput
from bridge.keys.files import is_exposed
from bridge.rpc.roles import COORDINATOR, Role
from bridge.rpc.tls import ClientIdentity


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The TLS options every command shares."""
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="client key (PEM, 0600)")
    p.add_argument(
        "--tls-ca",
        type=Path,
        action="append",
        default=[],
        help="optional: trust only this CA (must be a CA of the coordinator's organisation)",
    )
    p.add_argument(
        "--network",
        dest="client_network",
        type=Path,
        help="the network file: its organisations holding the server's role are the trust roots",
    )
    p.add_argument("--client-config", type=Path, help="TOML file with a [tls] table")


def identity(a: argparse.Namespace, peer: Role | None = None) -> ClientIdentity | None:
    """The identity the options name, toward ``peer`` (the coordinator by default); None
    when none is given (the channel then refuses plaintext unless the development flag
    is set). Raises InvalidInput on incomplete options or a key readable by others."""
    peer = peer or Role(COORDINATOR)
    if a.client_config is not None:
        # SECURITY: the trust roots come from the network file's role holders, so the schema
        # (ClientFile) requires ``network`` as well as ``[tls]``.
        _, raw = check_file("client", a.client_config)
        base = a.client_config.parent
        tls = load_tls(raw, base, str(a.client_config))
        if tls is None:
            raise InvalidInput(f"{a.client_config}: no [tls] table")
        return ClientIdentity.to(load_network(base / raw["network"]), tls, peer)
    if a.tls_cert is None and a.tls_key is None:
        return None
    if a.tls_cert is None or a.tls_key is None:
        raise InvalidInput("--tls-cert and --tls-key go together")
    network_file = getattr(a, "client_network", None) or getattr(a, "network", None)
    if network_file is None:
        raise InvalidInput(
            "--network <network file> is required with --tls-cert: only the CAs of the"
            f" organisations holding role {peer} may vouch for that server"
        )
    if is_exposed(a.tls_key, a.tls_key.stat().st_mode):
        raise InvalidInput(f"{a.tls_key} must be 0600 (not group/world readable)")
    tls = TlsConfig(a.tls_cert, a.tls_key, tuple(a.tls_ca))
    return ClientIdentity.to(load_network(network_file), tls, peer)
