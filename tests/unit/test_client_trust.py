"""Clients trust only the CAs of the organisations holding the role they dial (review
finding 6): the network file is required and a CA bundle naming another organisation's CA
is refused, in daemons' client identities and in the CLI alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import credentials
from bridge.cli.main import build_parser
from bridge.config import TlsConfig, dump_toml, load_network
from bridge.devnet.pki import DevPki
from bridge.domain.errors import InvalidInput
from bridge.rpc.roles import Role
from bridge.rpc.tls import client_roots
from tests.unit.test_authorisation import A, network_with
from tests.unit.test_authorisation_interceptor import make_pki

pytestmark = [pytest.mark.unit, pytest.mark.security]

COORDINATOR = Role("coordinator")


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return make_pki(tmp_path / "pki")


def test_a_client_without_the_network_file_is_refused(pki: DevPki) -> None:
    cert = pki.cert_for(f"brokerage:{A}")
    tls = TlsConfig(cert.cert_file, cert.key_file, (pki.cas["bridge-operator"].ca_file,))
    with pytest.raises(InvalidInput, match="a client needs the network file"):
        client_roots(None, tls, COORDINATOR)


def test_trust_roots_are_the_role_holders_cas(pki: DevPki, tmp_path: Path) -> None:
    network = load_network(network_with(pki, tmp_path))
    cert = pki.cert_for(f"brokerage:{A}")
    operator_ca = pki.cas["bridge-operator"].ca_file
    tls = TlsConfig(cert.cert_file, cert.key_file)
    assert client_roots(network, tls, COORDINATOR) == (operator_ca,)
    narrowed = TlsConfig(cert.cert_file, cert.key_file, (operator_ca,))
    assert client_roots(network, narrowed, COORDINATOR) == (operator_ca,)


def test_a_ca_bundle_with_another_organisations_ca_is_refused(pki: DevPki, tmp_path: Path) -> None:
    # brokerage-a's CA could mint a certificate with SAN coordinator.kstb-role.
    network = load_network(network_with(pki, tmp_path))
    bundle = tmp_path / "bridge-cas.pem"
    bundle.write_bytes(b"".join(ca.ca_file.read_bytes() for ca in pki.cas.values()))
    cert = pki.cert_for(f"brokerage:{A}")
    tls = TlsConfig(cert.cert_file, cert.key_file, (bundle,))
    with pytest.raises(InvalidInput, match="belongs to no organisation holding role coordinator"):
        client_roots(network, tls, COORDINATOR)


def _cli(*argv: str) -> object:
    return credentials.identity(build_parser().parse_args([*argv, "transfer", "get", "0x00"]))


def test_the_cli_requires_the_network_file(pki: DevPki, tmp_path: Path) -> None:
    network_file = network_with(pki, tmp_path)
    cert = pki.cert_for(f"brokerage:{A}")
    flags = ["--tls-cert", str(cert.cert_file), "--tls-key", str(cert.key_file)]
    operator_ca = str(pki.cas["bridge-operator"].ca_file)
    with pytest.raises(InvalidInput, match="--network <network file> is required"):
        _cli(*flags, "--tls-ca", operator_ca)
    ident = _cli(*flags, "--network", str(network_file))
    assert ident is not None and ident.roots == (pki.cas["bridge-operator"].ca_file,)
    with pytest.raises(InvalidInput, match="belongs to no organisation holding role"):
        _cli(*flags, "--network", str(network_file), "--tls-ca", str(pki.cas[A].ca_file))


def test_a_client_config_requires_the_network_file(pki: DevPki, tmp_path: Path) -> None:
    network_file = network_with(pki, tmp_path)
    cert = pki.cert_for(f"brokerage:{A}")
    config = tmp_path / "client.toml"
    tls = {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
    config.write_text(dump_toml({"tls": tls}))
    with pytest.raises(InvalidInput, match="network: missing required key"):
        _cli("--client-config", str(config))
    config.write_text(dump_toml({"network": str(network_file), "tls": tls}))
    ident = _cli("--client-config", str(config))
    assert ident is not None and ident.roots == (pki.cas["bridge-operator"].ca_file,)
