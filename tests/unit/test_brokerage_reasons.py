"""Review 2 finding 6: what a brokerage reads about a transfer (the pre-check refusal and the
transfer's ``reason``) carries typed reasons and ledger names, never another holder's
balance or a ledger's free text (a Fabric peer's MSP and address, chaincode internals)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from bridge.coordinator.clients import translate
from bridge.coordinator.engine import Coordinator
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected, PreconditionFailed, Unavailable
from bridge.domain.legs import HolderStatus
from bridge.domain.transfer import TransferState
from bridge.rpc.errors import status_details
from tests.unit.test_coordinator_driver import (  # noqa: F401 (the fixture)
    coordinator,
    final,
    request,
    submit,
)

pytestmark = [pytest.mark.unit, pytest.mark.security]

PEER_TEXT = "peer0.org1.example.com:7051 (Org1MSP): chaincode Internal: KeyError 'holders/0xdead'"


async def test_the_precheck_never_reveals_the_senders_balance(coordinator) -> None:  # noqa: F811
    c, relayers, store = coordinator

    async def poor(security: str, holder: str) -> HolderStatus:
        return HolderStatus(True, 3, 0, True, False, False)

    relayers["a"].holder = poor  # type: ignore[method-assign]
    refusal = await _refused(c, store, "leak")
    assert refusal.reason is ErrorReason.INSUFFICIENT_BALANCE and refusal.ledger == "a"
    assert "3" not in str(refusal) and "5" not in str(refusal), str(refusal)


async def test_an_unreadable_recipient_ledger_is_named_not_its_relayers_text(coordinator) -> None:  # noqa: F811
    """Review helper-106 L2: the recipient's ledger is another organisation's; its relayer's
    failure text (a node's address) is not what the submitting brokerage reads."""
    c, relayers, store = coordinator

    async def down(security: str, holder: str) -> HolderStatus:
        raise Unavailable("relayer of b failed (internal): http://10.20.30.40:8545 " + PEER_TEXT)

    relayers["b"].holder = down  # type: ignore[method-assign]
    with pytest.raises(Unavailable) as exc:
        await submit(c, request("down"))
    assert str(exc.value) == "b could not be read now; retry"
    assert await store.get_by_key("a", "down") is None, "nothing recorded"


async def test_an_unreadable_lane_is_named_not_its_relayers_text(coordinator) -> None:  # noqa: F811
    """Review helper-108 L4: the same for the lane's flow limits read at admission."""
    c, relayers, store = coordinator

    async def down(security: str, counterpart: str) -> None:
        raise Unavailable("relayer of b failed (internal): http://10.20.30.40:8545 " + PEER_TEXT)

    relayers["b"].flow_status = down  # type: ignore[method-assign,assignment]
    with pytest.raises(Unavailable) as exc:
        await submit(c, request("flow-down"))
    assert str(exc.value) == "the flow limits of a -> b could not be read now; retry"
    assert await store.get_by_key("a", "flow-down") is None, "nothing recorded"


async def _refused(c: Coordinator, store: Any, key: str) -> PreconditionFailed:
    """Submit ``key`` from ledger a; it must be refused PreconditionFailed, nothing recorded."""
    with pytest.raises(PreconditionFailed) as exc:
        await submit(c, request(key))
    assert await store.get_by_key("a", key) is None, "nothing recorded"
    return exc.value


def _error_info(exc: PreconditionFailed) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert status_details(exc).details[0].Unpack(info)
    return info


async def test_a_refused_holder_read_is_typed_with_its_reason_and_ledger(coordinator) -> None:  # noqa: F811
    """A relayer refusing a holder read (the security is not issued there) reaches the
    brokerage as the typed reason and the ledger asked, in the error's ErrorInfo (no
    parsing of the text), and never the relayer's own words."""
    c, relayers, store = coordinator

    async def refused(security: str, holder: str) -> HolderStatus:
        raise LedgerRejected(ErrorReason.UNKNOWN_SECURITY, PEER_TEXT)

    relayers["b"].holder = refused  # type: ignore[method-assign]
    refusal = await _refused(c, store, "unknown-there")
    assert refusal.reason is ErrorReason.UNKNOWN_SECURITY and refusal.ledger == "b"
    assert str(refusal) == "b refused the step (UnknownSecurity)"
    info = _error_info(refusal)
    assert info.reason == "UNKNOWN_SECURITY" and info.metadata["ledger"] == "b", info
    assert info.metadata["error"] == "UnknownSecurity"
    assert "Org1MSP" not in status_details(refusal).message


async def test_both_holder_reads_refused_name_the_senders_ledger(coordinator) -> None:  # noqa: F811
    c, relayers, store = coordinator

    def refusing(reason: ErrorReason) -> Callable[[str, str], Awaitable[HolderStatus]]:
        async def refused(security: str, holder: str) -> HolderStatus:
            raise LedgerRejected(reason, PEER_TEXT)

        return refused

    relayers["a"].holder = refusing(ErrorReason.TOKEN_PAUSED)  # type: ignore[method-assign]
    relayers["b"].holder = refusing(ErrorReason.UNKNOWN_SECURITY)  # type: ignore[method-assign]
    refusal = await _refused(c, store, "both-refused")
    assert refusal.reason is ErrorReason.TOKEN_PAUSED and refusal.ledger == "a"


async def test_a_refused_lane_read_is_typed_with_its_reason_and_ledger(coordinator) -> None:  # noqa: F811
    """The same for the lane's flow limits read at admission."""
    c, relayers, store = coordinator

    async def refused(security: str, counterpart: str) -> None:
        raise LedgerRejected(ErrorReason.UNKNOWN_SECURITY, PEER_TEXT, ledger="b")

    relayers["b"].flow_status = refused  # type: ignore[method-assign,assignment]
    refusal = await _refused(c, store, "flow-refused")
    assert refusal.reason is ErrorReason.UNKNOWN_SECURITY and refusal.ledger == "b"
    assert str(refusal) == "b refused the step (UnknownSecurity)"
    assert _error_info(refusal).metadata["ledger"] == "b"


async def test_both_lane_reads_refused_name_the_sources_ledger(coordinator) -> None:  # noqa: F811
    """Review helper-137 nit: when both ends of a lane refuse, the source's refusal is the
    one reported, even when the target's relayer answers first."""
    c, relayers, store = coordinator

    async def slowly_refused(security: str, counterpart: str) -> None:
        await asyncio.sleep(0.05)  # the target's ledger refuses first
        raise LedgerRejected(ErrorReason.TOKEN_PAUSED, PEER_TEXT, ledger="a")

    async def refused(security: str, counterpart: str) -> None:
        raise LedgerRejected(ErrorReason.UNKNOWN_SECURITY, PEER_TEXT, ledger="b")

    relayers["a"].flow_status = slowly_refused  # type: ignore[method-assign,assignment]
    relayers["b"].flow_status = refused  # type: ignore[method-assign,assignment]
    refusal = await _refused(c, store, "both-lane-refused")
    assert refusal.reason is ErrorReason.TOKEN_PAUSED and refusal.ledger == "a"


async def test_a_refused_lock_reports_the_reason_not_the_ledgers_text(coordinator) -> None:  # noqa: F811
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, PEER_TEXT)
    record, _ = await submit(c, request("k-peer"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    got = await store.get(record.transfer_id)
    assert got is not None
    assert "InsufficientBalance" in got.reason
    assert "Org1MSP" not in got.reason and "KeyError" not in got.reason, got.reason


def test_waiting_reasons_are_generic_and_bounded() -> None:
    since = time.time()
    refused = Coordinator._waiting_reason(
        LedgerRejected(ErrorReason.HOLDER_FROZEN, PEER_TEXT, ledger="b"), since
    )
    assert "b refused the step (HolderFrozen)" in refused
    assert "Org1MSP" not in refused
    down = Coordinator._waiting_reason(
        Unavailable("relayer of b unreachable " + "x" * 10_000), since
    )
    assert "relayer of b unreachable" in down and len(down) < 300


@pytest.mark.parametrize(
    ("code", "public"),
    [
        (grpc.StatusCode.UNAVAILABLE, "relayer of b unreachable (unavailable)"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "relayer of b unreachable (deadline_exceeded)"),
        (grpc.StatusCode.INTERNAL, "relayer of b failed (internal)"),
        (grpc.StatusCode.UNKNOWN, "relayer of b failed (unknown)"),
    ],
)
def test_a_peers_own_words_stay_in_the_log_not_in_what_a_brokerage_reads(
    code: grpc.StatusCode, public: str
) -> None:
    """Review helper-108 L4: an unreachable or failing relayer (another organisation's) is
    named in a transfer's waiting reason and in a status a brokerage receives; its own
    message (node errors, addresses) is kept in the coordinator's log text only."""
    peer = "upstream http://10.20.30.40:8545 refused; " + PEER_TEXT
    exc = translate(
        grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=peer),
        "relayer of b",
        "b",
    )
    assert isinstance(exc, Unavailable) and "10.20.30.40" in str(exc)  # the log's text
    reason = Coordinator._waiting_reason(exc, time.time())
    assert reason.endswith(": " + public) and "10.20.30.40" not in reason
    assert status_details(exc).message == public
