"""Issue 12 item 2 against a real anvil endpoint: the start-up check compares the committee
the ledger accepts with the network file (typed ``LedgerMismatch`` naming the epoch and both
committees), and a daemon's status view reads the node it is connected to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bridge.config import NetworkConfig
from bridge.core.words import evm_network_word
from bridge.doctor.status import read_view
from bridge.domain.committee import Committee
from bridge.domain.ids import SecurityId
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.ledgers.startup import LedgerMismatch, check_reached
from tests.integration.conftest import CHAIN_ID, ISIN, TwoLedgers

pytestmark = [pytest.mark.integration, pytest.mark.ops, pytest.mark.security]


def network(env: TwoLedgers, committee: Committee, later: tuple[bytes, ...] = ()) -> NetworkConfig:
    return NetworkConfig(
        committee=committee,
        ledgers={env.a.name: env.a.config()},
        securities={ISIN: SecurityId(ISIN)},
        later_members=dict.fromkeys(later, ""),
    )


@pytest.fixture
async def reader(two_ledgers: TwoLedgers) -> AsyncIterator[EvmAdapter]:
    adapter = EvmAdapter(two_ledgers.a.config(), None)
    try:
        yield adapter
    finally:
        await adapter.close()


async def test_the_files_committee_passes(two_ledgers: TwoLedgers, reader: EvmAdapter) -> None:
    env = two_ledgers
    reached = await check_reached(env.a.config(), reader, network=network(env, env.committee))
    assert reached.detail.startswith(f"chain id {CHAIN_ID}, endpoint ")
    assert "; committee epoch 1, 3-of-4 [0x" in reached.detail


async def test_another_threshold_is_refused_with_both_committees(
    two_ledgers: TwoLedgers, reader: EvmAdapter
) -> None:
    env = two_ledgers
    wrong = replace(env.committee, threshold=4)
    with pytest.raises(LedgerMismatch) as err:
        await check_reached(env.a.config(), reader, network=network(env, wrong))
    assert err.value.ledger == env.a.name
    assert err.value.what == "committee epoch 1"
    assert err.value.expected.startswith("epoch 1, 4-of-4 [0x")
    assert err.value.found.startswith("epoch 1, 3-of-4 [0x")
    assert str(err.value).startswith(f"ledger {env.a.name}: committee epoch 1 mismatch: configured")


async def test_another_member_or_a_later_genesis_is_refused(
    two_ledgers: TwoLedgers, reader: EvmAdapter
) -> None:
    env = two_ledgers
    outsider = b"\x0e" * 20
    swapped = Committee(1, 3, (*env.committee.members[:3], outsider))
    with pytest.raises(LedgerMismatch) as err:
        await check_reached(env.a.config(), reader, network=network(env, swapped))
    assert err.value.what == "committee epoch 1"
    later = Committee(2, 3, env.committee.members)
    with pytest.raises(LedgerMismatch) as err:
        await check_reached(env.a.config(), reader, network=network(env, later))
    assert (err.value.what, err.value.expected) == ("committee epoch", "2 or later")


async def test_the_status_view_reads_the_node(two_ledgers: TwoLedgers, reader: EvmAdapter) -> None:
    env = two_ledgers
    view = await read_view(env.a.name, reader, scanned_height=lambda: 7, operator="op")
    assert view.error == ""
    assert view.network_word == evm_network_word(CHAIN_ID)
    assert view.bridge_word == env.a.word
    assert view.scanned_height == 7
    assert view.gas_balance is None
    assert [w.committee for w in view.epochs] == [env.committee]
    # A node that cannot be read is reported in the view, never raised.
    dead = EvmAdapter(replace(env.a.config(), rpc_url="http://127.0.0.1:9"), None)
    try:
        failed = await read_view(env.a.name, dead)
    finally:
        await dead.close()
    assert failed.error != ""
    assert failed.network_word == b""


async def test_no_endpoint_at_the_finalized_block_is_unavailable_not_a_crash(
    two_ledgers: TwoLedgers,
) -> None:
    """Review finding 8: with a finality depth reaching before the endpoint's deployment,
    the committees read at the finalized block finds no code: ``Unavailable`` (retried,
    then the daemon's exit), never an undecodable-output traceback; nothing is written."""
    from bridge.domain.errors import Unavailable

    env = two_ledgers
    deep = EvmAdapter(env.a.config(finality_depth=1_000_000), None)
    try:
        assert await deep.finalized_height() == 0
        with pytest.raises(Unavailable, match=r"no bridge endpoint on .* at height 0 yet"):
            await deep.committees()
        with pytest.raises(Unavailable):
            await check_reached(
                env.a.config(finality_depth=1_000_000),
                deep,
                reach_within=0.5,
                network=network(env, env.committee),
            )
    finally:
        await deep.close()


async def test_an_invalid_epoch_on_the_ledger_is_a_typed_refusal(
    two_ledgers: TwoLedgers, reader: EvmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 8: a later epoch the ledger reports with a threshold no committee may
    have is a LedgerMismatch (exit 3, logged), not a traceback."""
    from bridge.domain.errors import InvalidInput

    async def invalid(height: int | None = None) -> tuple[object, ...]:
        raise InvalidInput("threshold must exceed n/2 so COMMIT and ABORT quorums intersect")

    monkeypatch.setattr(reader, "committees", invalid)
    env = two_ledgers
    with pytest.raises(LedgerMismatch) as err:
        await check_reached(env.a.config(), reader, network=network(env, env.committee))
    assert err.value.what == "committee"
    assert err.value.found.startswith("threshold must exceed n/2")
