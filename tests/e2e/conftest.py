"""The whole bridge as processes: two anvil ledgers, 4 verifiers, 2 relayers, coordinator."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.ledgers.evm import deploy
from bridge.v1 import transfer_pb2_grpc

BLOCK_TIME = 0.5


@pytest.fixture(scope="package")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A running system shared by the e2e tests (each test uses fresh holders)."""
    with LocalSystem(tmp_path_factory.mktemp("e2e"), block_time=BLOCK_TIME, transfer_ttl=60) as s:
        yield s


@pytest.fixture
def stub(system: LocalSystem) -> Iterator[transfer_pb2_grpc.TransferServiceStub]:
    """A TransferService client."""
    with grpc.insecure_channel(system.coordinator_target) as channel:
        yield transfer_pb2_grpc.TransferServiceStub(channel)


def eligible_everywhere(system: LocalSystem, address: str) -> None:
    """Make ``address`` an eligible holder on every ledger."""
    for h in system.ledgers.values():
        deploy.set_eligible(h.w3, h.admin.private_key, h.tokens[DEMO_ISIN], address, True)
