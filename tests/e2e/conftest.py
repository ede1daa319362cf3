"""The whole bridge as processes: two anvil ledgers, 4 verifiers, 2 relayers, coordinator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.devnet.client import RoutedTransferStub
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.ledgers.evm import deploy

BLOCK_TIME = 0.5


@pytest.fixture(scope="package")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A running system shared by the e2e tests (each test uses fresh holders)."""
    with LocalSystem(tmp_path_factory.mktemp("e2e"), block_time=BLOCK_TIME, transfer_ttl=60) as s:
        yield s


@pytest.fixture
def stub(system: LocalSystem) -> Iterator[RoutedTransferStub]:
    """A TransferService client: submits as the source ledger's brokerage (mTLS), each
    request instructed by that brokerage's devnet key (protocol v2); reads as the depository."""
    routed = RoutedTransferStub(
        system, fallback_ledger=next(iter(system.ledgers)), instruct=system.brokerage.instruct
    )
    yield routed
    routed.close()


def eligible_everywhere(system: LocalSystem, address: str) -> None:
    """Make ``address`` an eligible holder on every ledger."""
    for h in system.ledgers.values():
        deploy.set_eligible(h.w3, h.admin.private_key, h.tokens[DEMO_ISIN], address, True)
