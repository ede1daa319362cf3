"""End to end over the CometBFT kind: the whole system as processes, with an EVM ledger, a
native Fabric network and a CometBFT chain running the KSTB application (ADR 0018).

One lane to and from each other kind (EVM -> CometBFT -> Fabric -> CometBFT -> EVM), and the
depository's verified supply feed carrying a figure for the security on the CometBFT chain.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.devnet.client import RoutedTransferStub
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.supply_client import FeedVerifier, SupplyFeed
from bridge.v1 import transfer_pb2 as S
from tests.conformance.kind_cometbft import require_cometbft

pytestmark = [pytest.mark.e2e, pytest.mark.fabric, pytest.mark.cometbft, pytest.mark.supply]

EVM, FAB, CMT = "brokerage-a", "brokerage-f", "brokerage-c"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    require_cometbft()
    with LocalSystem(
        Path(tmp_path_factory.mktemp("cometbft-lanes")),
        ledger_names=((EVM, 31001),),
        fabric_ledger_names=(FAB,),
        extra_ledgers=((CMT, "cometbft"),),
        block_time=0.5,
        transfer_ttl=90,
        supply_heartbeat=2.0,
    ) as s:
        yield s


def _submit(system: LocalSystem, holder: str, amount: int, src: str, dst: str) -> str:
    return system.submit(
        S.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()),
            security_id=DEMO_ISIN,
            source_ledger=src,
            target_ledger=dst,
            sender=holder,
            recipient=holder,
            amount=str(amount),
        ),
        limit_s=30,
    )


def _final(stub: RoutedTransferStub, tid: str) -> int:
    states = [
        u.state for u in stub.WatchTransfer(S.WatchTransferRequest(transfer_id=tid), timeout=180)
    ]
    return states[-1]


def _total(system: LocalSystem) -> int:
    return sum(system.handle(n).total_supply(DEMO_ISIN) for n in system.all_ledgers)


def test_units_move_to_and_from_cometbft_and_the_feed_covers_it(system: LocalSystem) -> None:
    evm, fab, cmt = (system.handle(n) for n in (EVM, FAB, CMT))
    holder = evm.make_holder(DEMO_ISIN, 100)
    for h in (fab, cmt):
        h.set_eligible(DEMO_ISIN, holder.address)
    before = _total(system)
    stub = RoutedTransferStub(system, fallback_ledger=EVM, instruct=system.brokerage.instruct)
    try:
        for src, dst, units in ((EVM, CMT, 60), (CMT, FAB, 25), (FAB, CMT, 10), (CMT, EVM, 15)):
            tid = _submit(system, holder.address, units, src, dst)
            assert _final(stub, tid) == S.TRANSFER_STATE_COMMITTED, (src, dst)
    finally:
        stub.close()
    balances = [h.balance(DEMO_ISIN, holder.address) for h in (evm, fab, cmt)]
    assert balances == [55, 15, 30]
    assert _total(system) == before
    assert cmt.escrowed(DEMO_ISIN) == 0

    async def attested() -> dict[str, int]:
        """The figures of the last DEMO_ISIN record, every record of the feed verified in
        order (signatures and hash chain) as the depository does."""
        assert system.committee is not None
        feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
        try:
            for _ in range(30):
                verifier = FeedVerifier(system.committee)
                end = max(a.feed_sequence for a in await feed.latest())
                figures: dict[str, int] = {}
                async with asyncio.timeout(60):
                    async for a in feed.stream("", 1):
                        assert verifier.check(a).ok, a.feed_sequence
                        record = a.signed.record
                        if record.security == DEMO_ISIN:
                            figures = {r.ledger: r.total_supply for r in record.readings}
                        if a.feed_sequence >= end:
                            break
                if figures.get(CMT) == 30:
                    return figures
                await asyncio.sleep(2)
        finally:
            await feed.close()
        raise AssertionError("no verified attestation with the CometBFT chain's figure")

    start = time.monotonic()
    figures = asyncio.run(attested())
    assert set(figures) == {EVM, FAB, CMT}, figures
    assert time.monotonic() - start < 90
