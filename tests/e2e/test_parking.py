"""End to end: a recipient frozen after its leg was prepared is not paid; the units park.

The freeze must land after the prepare and before the commit. To make that ordering
deterministic the test stops brokerage-b's block production while the transfer runs, mines
the block holding the relayer's prepare by hand, then the block holding the issuer's freeze
(relayer B is held meanwhile, so its mint cannot join that block), and only then lets the
ledger produce blocks again. Anvil's RPC takes whole seconds there, so it cannot restore the
0.5 s blocks of the package's shared system: the test runs on a system of its own (module
scope) and leaves the shared one untouched.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LedgerHandle, LocalSystem
from bridge.domain.ids import SecurityId
from bridge.ledgers.evm import deploy
from bridge.v1 import transfer_pb2 as S
from tests.e2e.conftest import BLOCK_TIME, eligible_everywhere

pytestmark = [pytest.mark.e2e, pytest.mark.governance]

A, B = "brokerage-a", "brokerage-b"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """This module's own system (overrides the package's shared one, also for ``stub``):
    the test changes brokerage-b's block production, which cannot be restored exactly."""
    with LocalSystem(tmp_path_factory.mktemp("parking"), block_time=BLOCK_TIME,
                     transfer_ttl=60) as s:  # fmt: skip
        yield s


def _figures(h: LedgerHandle) -> dict[str, int]:
    names = ("total_supply", "escrowed", "prepared", "burned_out", "minted_in")
    values = h.endpoint.functions.supplyOf(SecurityId(DEMO_ISIN).word).call()
    return dict(zip(names, (int(v) for v in values), strict=True))


def _net_issued(h: LedgerHandle) -> int:
    f = _figures(h)
    return f["total_supply"] + f["burned_out"] - f["minted_in"]


def _pending_to(h: LedgerHandle, address: str) -> bool:
    """Whether the ledger's mempool holds a transaction to ``address``."""
    content: dict[str, Any] = h.node.rpc("txpool_content", [])
    return any(
        str(tx.get("to") or "").lower() == address.lower()
        for by_nonce in content.get("pending", {}).values()
        for tx in by_nonce.values()
    )


def _until(check: Any, limit_s: float, what: str) -> None:
    give_up = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > give_up:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_recipient_frozen_after_prepare_parks_the_units(system: LocalSystem, stub) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, holder.address)
    recipient = DevAccount.generate()
    b.set_eligible(DEMO_ISIN, recipient.address)
    supply = a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN)
    issued = (_net_issued(a), _net_issued(b))
    token_b = b.tokens[DEMO_ISIN]
    relayer_b = system.processes[f"relayer-{B}"]

    b.node.rpc("evm_setIntervalMining", [0])
    try:
        resp = stub.SubmitTransfer(
            S.SubmitTransferRequest(
                idempotency_key=str(uuid.uuid4()),
                security_id=DEMO_ISIN,
                source_ledger=A,
                target_ledger=B,
                sender=holder.address,
                recipient=recipient.address,
                amount="30",
            ),
            timeout=30,
        )
        tid_hex = resp.transfer.transfer_id
        tid = bytes.fromhex(tid_hex[2:])
        # The relayer's prepare waits in brokerage-b's mempool: mine it alone. Relayer B is
        # held (SIGSTOP) until the freeze is mined, so its mint cannot share the freeze's
        # block however fast the committee certifies COMMIT.
        _until(lambda: _pending_to(b, b.endpoint.address), 60, "no prepare submitted")
        relayer_b.pause()
        b.node.rpc("evm_mine", [])
        assert b.endpoint.functions.inbound(tid).call()[0] == 1  # Prepared
        # Then the issuer freezes the recipient, in the next block.
        freeze = threading.Thread(
            target=deploy.set_frozen,
            args=(b.w3, b.admin.private_key, token_b, recipient.address, True),
        )
        freeze.start()
        _until(lambda: _pending_to(b, token_b.address), 30, "no freeze submitted")
        b.node.rpc("evm_mine", [])
        freeze.join(timeout=30)
        assert token_b.functions.isFrozen(recipient.address).call()
        assert b.endpoint.functions.inbound(tid).call()[0] == 1  # still only Prepared
        assert not _pending_to(b, b.endpoint.address)  # no mint yet
    finally:
        relayer_b.resume()
        b.node.rpc("evm_setIntervalMining", [1])  # whole seconds only: this module's system

    updates = list(stub.WatchTransfer(S.WatchTransferRequest(transfer_id=tid_hex), timeout=120))
    assert updates[-1].state == S.TRANSFER_STATE_COMMITTED  # COMMIT stands
    got = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid_hex), timeout=10)
    assert (got.state, got.parked, got.parked_reason) == (S.TRANSFER_STATE_COMMITTED, True, 3)
    assert "parked" in got.reason and "frozen" in got.reason, got.reason
    # The target leg is Minted with reason 3; the recipient received nothing.
    state, _, amount, _, reason = b.endpoint.functions.inbound(tid).call()
    assert (state, amount, reason) == (4, 30, 3)
    assert b.balance(DEMO_ISIN, recipient.address) == 0
    assert a.balance(DEMO_ISIN, holder.address) == 70
    assert b.parked(tid) == 30
    # Conservation is exact: nothing created or destroyed, no ledger issued anything, and the
    # parked units are part of brokerage-b's supply but not escrow.
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply
    assert (_net_issued(a), _net_issued(b)) == issued
    assert a.escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == 0
    assert _figures(b)["prepared"] == 0

    # The issuer delivers the parked units to an eligible holder; once.
    b.release_parked(tid, holder.address)
    assert b.balance(DEMO_ISIN, holder.address) == 30
    assert b.parked(tid) == 0
    assert a.total_supply(DEMO_ISIN) + b.total_supply(DEMO_ISIN) == supply
    with pytest.raises(deploy.TxReverted) as info:
        b.release_parked(tid, holder.address)
    assert info.value.error_name == "NotParked"
