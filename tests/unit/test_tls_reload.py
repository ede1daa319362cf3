"""Certificate files replaced on disk: picked up when whole, ignored while torn."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import TlsConfig
from bridge.devnet.pki import DevPki
from bridge.rpc.roles import Role
from bridge.rpc.tls import ClientIdentity, ServerCredentialSource, TornFiles, pair_matches

pytestmark = [pytest.mark.unit, pytest.mark.security]


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    return pki


def test_server_credentials_reload_only_whole_pairs(pki: DevPki) -> None:
    cert = pki.cert_for("coordinator")
    source = ServerCredentialSource(
        TlsConfig(cert.cert_file, cert.key_file), [pki.cas["bridge-operator"].ca_file]
    )
    assert source._fetch() is None, "unchanged files: keep the configuration"
    old_cert = cert.cert_file.read_bytes()
    pki.rotate("coordinator")
    cert.cert_file.write_bytes(old_cert)  # torn: new key, old certificate
    assert not pair_matches(cert.cert_file.read_bytes(), cert.key_file.read_bytes())
    assert source._fetch() is None, "a torn pair is not served"
    pki.rotate("coordinator")  # a whole new pair
    assert pair_matches(cert.cert_file.read_bytes(), cert.key_file.read_bytes())
    assert source._fetch() is not None, "the new pair is served"
    assert source._fetch() is None, "and only once"


def test_client_credentials_refuse_a_torn_pair(pki: DevPki) -> None:
    cert = pki.cert_for("coordinator")
    ident = ClientIdentity(
        TlsConfig(cert.cert_file, cert.key_file),
        (pki.cas["bridge-operator"].ca_file,),
        Role("coordinator"),
    )
    ident.credentials()
    stamp = ident.stamp()
    old_cert = cert.cert_file.read_bytes()
    pki.rotate("coordinator")
    assert ident.stamp() != stamp, "a replaced file changes the stamp"
    ident.credentials()
    cert.cert_file.write_bytes(old_cert)
    with pytest.raises(TornFiles):
        ident.credentials()
    assert ident.options() == [("grpc.ssl_target_name_override", "coordinator.kstb-role")]
