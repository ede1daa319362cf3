"""The whole bridge as processes: two anvil ledgers, 4 verifiers, 2 relayers, coordinator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from bridge.devnet.client import channel
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.errors import BridgeError
from bridge.ledgers.evm import deploy
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

BLOCK_TIME = 0.5


@pytest.fixture(scope="package")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A running system shared by the e2e tests (each test uses fresh holders)."""
    with LocalSystem(tmp_path_factory.mktemp("e2e"), block_time=BLOCK_TIME, transfer_ttl=60) as s:
        yield s


class InstructingStub:
    """A TransferService client of the source ledgers' brokerages: a request without an
    instruction is signed by its source ledger's devnet brokerage key (protocol v2) before
    it is sent; one the brokerage refuses to sign (malformed) is sent as is, for the
    coordinator to refuse."""

    def __init__(self, system: LocalSystem, channel: grpc.Channel) -> None:
        self._system = system
        self._stub = transfer_pb2_grpc.TransferServiceStub(channel)

    def SubmitTransfer(
        self, request: transfer_pb2.SubmitTransferRequest, **kw: Any
    ) -> transfer_pb2.SubmitTransferResponse:
        if not request.HasField("instruction"):
            with contextlib.suppress(BridgeError):
                request = self._system.brokerage.instruct(request)
        return self._stub.SubmitTransfer(request, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)


@pytest.fixture
def stub(system: LocalSystem) -> Iterator[transfer_pb2_grpc.TransferServiceStub]:
    """A TransferService client whose submissions are instructed (see InstructingStub)."""
    with channel(system.coordinator_target) as ch:
        yield InstructingStub(system, ch)  # type: ignore[misc]


def eligible_everywhere(system: LocalSystem, address: str) -> None:
    """Make ``address`` an eligible holder on every ledger."""
    for h in system.ledgers.values():
        deploy.set_eligible(h.w3, h.admin.private_key, h.tokens[DEMO_ISIN], address, True)
