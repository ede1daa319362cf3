"""``bridge.ledgers.many_legs.read_legs``: one call per chunk where the kind answers many
legs, bounded concurrent single reads otherwise, always in the request's order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from bridge.domain.legs import Leg, LegState, LegStatus
from bridge.ledgers.adapter import LedgerReader
from bridge.ledgers.many_legs import READ_CONCURRENCY, read_legs

pytestmark = [pytest.mark.unit, pytest.mark.batch]


def status(tid: bytes) -> LegStatus:
    return LegStatus(LegState.LOCKED, tid, tid[0], 7)


class Single:
    """A kind with single reads only; counts the reads in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0

    async def get_leg(self, tid: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.001 * (5 - tid[0] % 5))  # finish out of order
        self.in_flight -= 1
        return status(tid)


class Many(Single):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def get_legs(
        self, tids: Sequence[bytes], leg: Leg, height: int | None = None
    ) -> list[LegStatus]:
        self.calls.append(len(tids))
        return [status(t) for t in tids]


IDS = [bytes([i]) * 32 for i in range(40)]


def test_single_reads_are_bounded_and_ordered() -> None:
    reader = Single()
    got = asyncio.run(read_legs(cast(LedgerReader, reader), IDS, Leg.OUTBOUND))
    assert got == [status(t) for t in IDS]
    assert 1 < reader.peak <= READ_CONCURRENCY


def test_a_many_leg_reader_is_used() -> None:
    reader = Many()
    got = asyncio.run(read_legs(cast(Any, reader), IDS, Leg.INBOUND))
    assert got == [status(t) for t in IDS]
    assert reader.calls == [40] and reader.peak == 0


def test_every_many_leg_reader_has_the_one_signature() -> None:
    """``read_legs`` picks any adapter with a ``get_legs`` (a runtime-checkable Protocol only
    checks the name), so every kind's ``get_legs`` must take the Protocol's parameters."""
    import inspect

    from bridge.ledgers.cometbft.adapter import CometAdapter
    from bridge.ledgers.evm.adapter import EvmAdapter
    from bridge.ledgers.fabric.adapter import FabricAdapter
    from bridge.ledgers.many_legs import ManyLegsReader

    expected = list(inspect.signature(ManyLegsReader.get_legs).parameters)
    for kind in (EvmAdapter, FabricAdapter, CometAdapter):
        assert list(inspect.signature(kind.get_legs).parameters) == expected, kind.__name__
