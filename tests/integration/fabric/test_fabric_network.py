"""The native Fabric network works end to end with a Python chaincode-as-a-service."""

from __future__ import annotations

import json
import secrets

import pytest

from bridge.devnet.fabric import FabricError, FabricNetwork

from .conftest import DeployedChaincode

pytestmark = [pytest.mark.integration, pytest.mark.fabric]


def invoke(net: FabricNetwork, cc: str, *args: str) -> str:
    """Submit a transaction endorsed by BOTH orgs' peers and wait for it to commit."""
    ctor = json.dumps({"Args": list(args)})
    return net.peer_cli(
        "Org1",
        [
            "chaincode",
            "invoke",
            *net.orderer_args(),
            "-C",
            net.channel,
            "-n",
            cc,
            *net.endorsing_peer_args(),
            "-c",
            ctor,
            "--waitForEvent",
        ],
        user="User1",
    )


def query(net: FabricNetwork, org: str, cc: str, *args: str) -> str:
    """Evaluate on ``org``'s peer; returns the chaincode's payload."""
    ctor = json.dumps({"Args": list(args)})
    out = net.peer_cli(
        org, ["chaincode", "query", "-C", net.channel, "-n", cc, "-c", ctor], user="User1"
    )
    return out.strip()


def test_network_is_up(fabric_network: FabricNetwork) -> None:
    net = fabric_network
    assert net.running
    assert set(net.pids()) == {"fabric-orderer", "fabric-peer-org1", "fabric-peer-org2"}
    assert net.msp_ids == ["Org1MSP", "Org2MSP"]
    for msp, endpoint in net.gateway_endpoints.items():
        assert endpoint.startswith("127.0.0.1:")
        assert net.tls_ca_certs[msp].is_file()
        org = net.org(msp)
        assert org.user_cert().is_file() and org.user_key().is_file()
    for org in ("Org1", "Org2"):
        assert net.channel in net.peer_cli(org, ["channel", "list"]).split()
    print(f"fabric network start: {net.last_start_seconds:.1f}s")


def test_write_then_read_with_both_orgs_endorsing(
    fabric_network: FabricNetwork, kv_chaincode: DeployedChaincode
) -> None:
    net = fabric_network
    committed = net.committed(kv_chaincode.name)
    assert committed is not None
    assert committed["approvals"] == {"Org1MSP": True, "Org2MSP": True}
    assert kv_chaincode.package_id.startswith("kv_1.0:")

    key, value = f"k-{secrets.token_hex(4)}", f"v-{secrets.token_hex(8)}"
    invoke(net, kv_chaincode.name, "put", key, value)
    assert query(net, "Org1", kv_chaincode.name, "get", key) == value
    assert query(net, "Org2", kv_chaincode.name, "get", key) == value
    print(f"ccaas deploy: {kv_chaincode.deploy_seconds:.1f}s")


def test_one_org_alone_cannot_satisfy_the_endorsement_policy(
    fabric_network: FabricNetwork, kv_chaincode: DeployedChaincode
) -> None:
    net = fabric_network
    org1 = net.org("Org1")
    ctor = json.dumps({"Args": ["put", "lonely", "x"]})
    with pytest.raises(FabricError, match="ENDORSEMENT_POLICY_FAILURE"):
        net.peer_cli(
            "Org1",
            [
                "chaincode",
                "invoke",
                *net.orderer_args(),
                "-C",
                net.channel,
                "-n",
                kv_chaincode.name,
                "--peerAddresses",
                org1.peer_endpoint,
                "--tlsRootCertFiles",
                str(org1.tls_ca_cert),
                "-c",
                ctor,
                "--waitForEvent",
            ],
            user="User1",
        )
    with pytest.raises(FabricError):
        query(net, "Org2", kv_chaincode.name, "get", "lonely")


def test_deploy_is_idempotent(
    fabric_network: FabricNetwork, kv_chaincode: DeployedChaincode
) -> None:
    again = fabric_network.deploy_ccaas(kv_chaincode.name, kv_chaincode.address)
    assert again == kv_chaincode.package_id
    committed = fabric_network.committed(kv_chaincode.name)
    assert committed is not None and committed["sequence"] == 1
