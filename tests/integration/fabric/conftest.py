"""Fixtures for the native Fabric network (see bridge/devnet/fabric/).

``fabric_network`` starts one network per test session in a temporary dir and stops it by
pid at the end; ``kv_chaincode`` deploys the Python CCaaS chaincode in kv_chaincode.py on it;
``bridge_chaincode`` serves the bridge chaincode under the test module's ``CHAINCODE`` name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.devnet.fabric import FabricNetwork, chaincode_python
from bridge.devnet.fabric_bridge import start_bridge_chaincode
from bridge.devnet.processes import ManagedProcess, free_port

CHAINCODE_SOURCE = Path(__file__).with_name("kv_chaincode.py")


@dataclass
class DeployedChaincode:
    """A CCaaS chaincode committed on the channel and its running server."""

    name: str
    package_id: str
    address: str
    process: ManagedProcess
    deploy_seconds: float


@pytest.fixture(scope="session")
def fabric_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNetwork]:
    """A started FabricNetwork (orderer + Org1/Org2 peers, channel ``bridge``)."""
    net = FabricNetwork(tmp_path_factory.mktemp("fabric"))
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="session")
def kv_chaincode(fabric_network: FabricNetwork) -> Iterator[DeployedChaincode]:
    """kv_chaincode.py deployed as ``kv`` (both orgs must endorse) and served on a free port."""
    python = chaincode_python()
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    package_id = fabric_network.deploy_ccaas("kv", address)
    proc = ManagedProcess(
        name="chaincode-kv",
        argv=[str(python), str(CHAINCODE_SOURCE)],
        log_path=fabric_network.logs_dir / "chaincode-kv.log",
        env={"CHAINCODE_ID": package_id, "CHAINCODE_SERVER_ADDRESS": address},
    ).start()
    try:
        proc.wait_port(int(address.rsplit(":", 1)[1]), timeout=30)
        yield DeployedChaincode("kv", package_id, address, proc, time.monotonic() - started)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def bridge_chaincode(
    fabric_network: FabricNetwork, request: pytest.FixtureRequest
) -> Iterator[ManagedProcess]:
    """The bridge chaincode deployed (both orgs endorse) as the requesting module's
    ``CHAINCODE`` and served from this interpreter, one instance per module."""
    proc = start_bridge_chaincode(fabric_network, request.module.CHAINCODE)
    try:
        yield proc
    finally:
        proc.stop()
