"""A Fabric client identity whose P-256 key lives in a PKCS#11 token (SoftHSM2) evaluates a
query on the real network; the same token key under a certificate from a CA the channel
does not trust is refused by the peer."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.devnet.custody import issue_client_certificate
from bridge.devnet.fabric import FabricNetwork, FabricOrg
from bridge.domain.errors import BridgeError
from bridge.keys.loader import open_p256_signer, token_session
from bridge.keys.pkcs11_token import Pkcs11P256Signer, generate_key
from bridge.ledgers.fabric.gateway import GatewayClient
from bridge.ledgers.fabric.identity import SigningIdentity
from tests.softhsm import MODULE, new_label, process_softhsm

from .conftest import DeployedChaincode

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.security, pytest.mark.hsm]


def token_identity(org: FabricOrg, cert_pem: bytes | None = None) -> SigningIdentity:
    hsm = process_softhsm()
    label = new_label("fabric")
    generate_key(token_session(MODULE, hsm.token_label, hsm.pin), label, "p256")
    signer = open_p256_signer(hsm.ref(label))
    assert isinstance(signer, Pkcs11P256Signer)
    pem = cert_pem or issue_client_certificate(org, signer.public_key, label)
    return SigningIdentity(org.msp_id, pem, signer)


def client(net: FabricNetwork, org: FabricOrg, ident: SigningIdentity) -> GatewayClient:
    # The peers require a TLS client certificate (mutual TLS); the token key signs the
    # proposals, the org user's TLS pair only opens the connection.
    return GatewayClient(
        org.peer_endpoint,
        org.tls_ca_cert,
        org.peer_host,
        ident,
        net.channel,
        tls_client_cert=org.user_tls_cert("User1"),
        tls_client_key=org.user_tls_key("User1"),
    )


def put(net: FabricNetwork, cc: str, key: str, value: str) -> None:
    net.peer_cli(
        "Org1",
        ["chaincode", "invoke", *net.orderer_args(), "-C", net.channel, "-n", cc,
         *net.endorsing_peer_args(), "-c", json.dumps({"Args": ["put", key, value]}),
         "--waitForEvent"],
        user="User1",
    )  # fmt: skip


async def test_token_identity_evaluates_a_query(
    fabric_network: FabricNetwork, kv_chaincode: DeployedChaincode
) -> None:
    net = fabric_network
    org = net.org("Org1")
    key, value = f"hsm-{secrets.token_hex(4)}", secrets.token_hex(8)
    put(net, kv_chaincode.name, key, value)
    gw = client(net, org, token_identity(org))
    try:
        assert (await gw.evaluate(kv_chaincode.name, "get", [key])).decode() == value
    finally:
        await gw.close()


async def test_token_key_under_an_untrusted_ca_is_refused(
    fabric_network: FabricNetwork, kv_chaincode: DeployedChaincode, tmp_path: Path
) -> None:
    net = fabric_network
    org = net.org("Org1")
    key, value = f"hsm-{secrets.token_hex(4)}", secrets.token_hex(8)
    put(net, kv_chaincode.name, key, value)
    # A look-alike org: same domain and MSP id, its own CA key (not in the channel config).
    rogue_ca = tmp_path / "ca"
    rogue_ca.mkdir()
    real_ca = next((org.crypto_dir / "ca").glob("*-cert.pem"))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    real = x509.load_pem_x509_certificate(real_ca.read_bytes())
    rogue = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (rogue_ca / real_ca.name).write_bytes(rogue.public_bytes(serialization.Encoding.PEM))
    (rogue_ca / "priv_sk").write_bytes(
        ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fake_org = FabricOrg(
        org.name, org.msp_id, org.domain, org.peer_port, org.chaincode_port,
        org.operations_port, tmp_path,
    )  # fmt: skip
    hsm = process_softhsm()
    label = new_label("fabric")
    generate_key(token_session(MODULE, hsm.token_label, hsm.pin), label, "p256")
    signer = open_p256_signer(hsm.ref(label))
    pem = issue_client_certificate(fake_org, signer.public_key, label)
    gw = client(net, org, SigningIdentity(org.msp_id, pem, signer))
    try:
        with pytest.raises(BridgeError) as info:
            await gw.evaluate(kv_chaincode.name, "get", [key])
        assert "access denied: channel [bridge] creator org unknown" in str(info.value)
    finally:
        await gw.close()
