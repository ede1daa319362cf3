"""Many holders per chaincode read (issue 14 item 4): the ``HolderStatuses`` codec and the
Fabric and CometBFT adapters' ``holder_statuses`` (one read per ``MAX_HOLDER_READS``
holders, in order, a malformed answer typed ``MalformedAnswer``, never a guess; single
``HolderStatus`` reads against an endpoint that predates ``HolderStatuses``). The real
chaincode answers them in tests/integration/fabric/test_fabric_batch.py."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId
from bridge.ledgers.cometbft.adapter import CometAdapter
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.ledgers.fabric.holders import REPROBE_S, HolderReads
from bridge.ledgers.many_holders import ManyHoldersReader, read_holders

pytestmark = [pytest.mark.unit, pytest.mark.batch]

ISIN = SecurityId("KR7005930003")


def status(account: str, **over: object) -> dict[str, object]:
    """A ``HolderStatus`` record; its balance is derived from the account, so an answer
    given for the wrong account is visible in the parsed value."""
    rec: dict[str, object] = {
        "registered": True,
        "balance": str(int(account[2:10], 16)),
        "receive_status": 0,
        "eligible": True,
        "frozen": False,
        "paused": False,
    }
    rec.update(over)
    return rec


def accounts(n: int) -> list[str]:
    return ["0x" + secrets.token_bytes(20).hex() for _ in range(n)]


def test_a_well_formed_answer_is_read_in_order() -> None:
    asked = accounts(3)
    answer = {"holders": [{**status(a), "holder": a.upper().replace("0X", "0x")} for a in asked]}
    got = codec.holders_from_json(answer, asked)
    assert [s.balance for s in got] == [int(a[2:10], 16) for a in asked]
    assert json.loads(codec.holders_to_json(asked)) == asked


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda recs: recs[:-1], "must list 3 holders"),
        (lambda recs: [recs[1], recs[0], recs[2]], "out of order"),
        (lambda recs: [{k: v for k, v in r.items() if k != "holder"} for r in recs], "lacks"),
        (lambda recs: [{**r, "holder": 5} for r in recs], "out of order"),
        (lambda recs: [{**r, "eligible": "yes"} for r in recs], "must be a boolean"),
        (lambda recs: "holders", "must list 3 holders"),
        (lambda recs: [*recs, recs[0]], "must list 3 holders"),
        (lambda recs: [7, *recs[1:]], "must be a JSON object, got int"),
        (lambda recs: [None, *recs[1:]], "must be a JSON object, got NoneType"),
        (lambda recs: [json.dumps(recs[0]), *recs[1:]], "must be a JSON object, got str"),
    ],
)
def test_a_short_reordered_or_malformed_answer_is_refused(mangle: Any, error: str) -> None:
    asked = accounts(3)
    recs = mangle([{**status(a), "holder": a} for a in asked])
    with pytest.raises(ValueError, match=error):
        codec.holders_from_json({"holders": recs}, asked)


class _Peer:
    """A scripted endpoint: ``HolderStatuses`` echoes each asked account (``mangle`` may
    spoil the records), ``HolderStatus`` answers one; or ``HolderStatuses`` is refused."""

    def __init__(
        self,
        mangle: Callable[[list[dict[str, object]]], object] | None = None,
        refuse: ErrorReason | None = None,
    ) -> None:
        self.mangle = mangle
        self.refuse = refuse
        self.calls: list[tuple[str, list[str]]] = []
        self.heights: list[int] = []
        self.refuse_from = 0  # HolderStatuses calls answered before ``refuse`` applies
        self.single: object = None  # replaces every HolderStatus answer when set

    def answer(self, function: str, args: list[str]) -> bytes:
        self.calls.append((function, args))
        if function == "HolderStatus":
            return json.dumps(self.single or status(args[1])).encode()
        assert function == "HolderStatuses"
        asked = sum(f == "HolderStatuses" for f, _ in self.calls)
        if self.refuse is not None and asked > self.refuse_from:
            raise LedgerRejected(self.refuse, f"{self.refuse.value}: refused")
        recs: list[dict[str, object]] = [{**status(a), "holder": a} for a in json.loads(args[1])]
        return json.dumps(self.mangle(recs) if self.mangle else {"holders": recs}).encode()

    async def evaluate(self, chaincode: str, function: str, args: list[str]) -> bytes:
        return self.answer(function, args)

    async def query(self, function: str, args: list[str], height: int) -> tuple[bytes, int]:
        self.heights.append(height)
        return self.answer(function, args), height


def _fabric(peer: _Peer, reads: HolderReads | None = None) -> FabricAdapter:
    adapter = FabricAdapter.__new__(FabricAdapter)
    adapter._client = peer  # type: ignore[assignment]
    adapter._chaincode = "bridge"
    adapter._holder_reads = reads or HolderReads()
    return adapter


def _comet(peer: _Peer, reads: HolderReads | None = None) -> CometAdapter:
    adapter = CometAdapter.__new__(CometAdapter)
    adapter._ledger = LedgerId("unit-cmt")
    adapter._client = peer  # type: ignore[assignment]
    adapter._holder_reads = reads or HolderReads()

    async def final() -> int:
        return 9

    adapter.finalized_height = final  # type: ignore[method-assign]
    return adapter


KINDS = [pytest.param(_fabric, id="fabric"), pytest.param(_comet, id="cometbft")]


def words(asked: list[str]) -> list[bytes]:
    return [bytes(12) + bytes.fromhex(a[2:]) for a in asked]


@pytest.mark.parametrize("make", KINDS)
def test_many_holders_are_one_read_per_bound_in_order(make: Callable[[_Peer], Any]) -> None:
    """Was one HolderStatus evaluate per holder (the relayer's GetHolders fell back to
    single reads: the Fabric adapter was no ManyHoldersReader)."""
    peer = _Peer()
    adapter = make(peer)
    assert isinstance(adapter, ManyHoldersReader)
    asked = accounts(2 * codec.MAX_HOLDER_READS + 5)
    got = asyncio.run(read_holders(adapter, ISIN, words(asked)))
    assert [s.balance for s in got] == [int(a[2:10], 16) for a in asked]
    assert [f for f, _ in peer.calls] == ["HolderStatuses"] * 3
    sizes = [len(json.loads(args[1])) for _, args in peer.calls]
    assert sizes == [codec.MAX_HOLDER_READS, codec.MAX_HOLDER_READS, 5]
    assert {args[0] for _, args in peer.calls} == {ISIN.isin}
    assert asyncio.run(adapter.holder_statuses(ISIN, [])) == [] and len(peer.calls) == 3


@pytest.mark.parametrize("make", KINDS)
@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda recs: {"holders": recs[:-1]}, id="short"),
        pytest.param(lambda recs: {"holders": recs[::-1]}, id="reordered"),
        pytest.param(lambda recs: {"legs": recs}, id="another-shape"),
        pytest.param(lambda recs: "text", id="not-an-object"),
        pytest.param(lambda recs: {"holders": [*recs, recs[0]]}, id="longer"),
        pytest.param(lambda recs: {"holders": [7, *recs[1:]]}, id="a-number-record"),
        pytest.param(lambda recs: {"holders": [None, *recs[1:]]}, id="a-null-record"),
        pytest.param(
            lambda recs: {"holders": [json.dumps(r) for r in recs]}, id="records-as-strings"
        ),
    ],
)
def test_a_malformed_answer_is_typed_malformed(make: Callable[[_Peer], Any], mangle: Any) -> None:
    with pytest.raises(LedgerRejected) as err:
        asyncio.run(make(_Peer(mangle)).holder_statuses(ISIN, words(accounts(3))))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER


@pytest.mark.parametrize("make", KINDS)
def test_an_endpoint_without_holder_statuses_is_read_holder_by_holder(
    make: Callable[[_Peer], Any],
) -> None:
    peer = _Peer(refuse=ErrorReason.UNKNOWN_FUNCTION)
    asked = accounts(codec.MAX_HOLDER_READS + 3)
    got = asyncio.run(make(peer).holder_statuses(ISIN, words(asked)))
    assert [s.balance for s in got] == [int(a[2:10], 16) for a in asked]
    functions = [f for f, _ in peer.calls]
    assert functions == ["HolderStatuses"] + ["HolderStatus"] * len(asked)
    assert sorted(args[1] for _, args in peer.calls[1:]) == sorted(asked)


@pytest.mark.parametrize("make", KINDS)
@pytest.mark.parametrize(
    "reason", [ErrorReason.NOT_INITIALIZED, ErrorReason.INVALID_ARGUMENT, ErrorReason.INVALID_BATCH]
)
def test_other_refusals_propagate_without_single_reads(
    make: Callable[[_Peer], Any], reason: ErrorReason
) -> None:
    peer = _Peer(refuse=reason)
    with pytest.raises(LedgerRejected) as err:
        asyncio.run(make(peer).holder_statuses(ISIN, words(accounts(2))))
    assert err.value.reason is reason
    assert [f for f, _ in peer.calls] == ["HolderStatuses"]


@pytest.mark.parametrize("make", KINDS)
def test_unknown_function_after_an_answered_chunk_is_a_refusal(
    make: Callable[..., Any],
) -> None:
    """An endpoint cannot both have and lack HolderStatuses: no single reads, no half answer."""
    peer = _Peer(refuse=ErrorReason.UNKNOWN_FUNCTION)
    peer.refuse_from = 1
    with pytest.raises(LedgerRejected) as err:
        asyncio.run(make(peer).holder_statuses(ISIN, words(accounts(codec.MAX_HOLDER_READS + 1))))
    assert err.value.reason is ErrorReason.UNKNOWN_FUNCTION
    assert [f for f, _ in peer.calls] == ["HolderStatuses"] * 2


@pytest.mark.parametrize("make", KINDS)
def test_a_malformed_single_answer_is_typed_malformed(make: Callable[..., Any]) -> None:
    """Both the fallback's single reads and holder_status itself (was a bare ValueError)."""
    peer = _Peer(refuse=ErrorReason.UNKNOWN_FUNCTION)
    peer.single = {"registered": True}
    adapter = make(peer)
    with pytest.raises(LedgerRejected) as err:
        asyncio.run(adapter.holder_statuses(ISIN, words(accounts(2))))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER
    with pytest.raises(LedgerRejected) as err:
        asyncio.run(adapter.holder_status(ISIN, words(accounts(1))[0]))
    assert err.value.reason is ErrorReason.MALFORMED_ANSWER


@pytest.mark.parametrize("make", KINDS)
def test_an_endpoint_without_holder_statuses_is_probed_again_only_later(
    make: Callable[..., Any],
) -> None:
    now = [1000.0]
    peer = _Peer(refuse=ErrorReason.UNKNOWN_FUNCTION)
    adapter = make(peer, HolderReads(clock=lambda: now[0]))
    for _ in range(3):
        asyncio.run(adapter.holder_statuses(ISIN, words(accounts(2))))
    assert [f for f, _ in peer.calls].count("HolderStatuses") == 1
    assert [f for f, _ in peer.calls].count("HolderStatus") == 6
    now[0] += REPROBE_S  # the chaincode may have been upgraded meanwhile
    peer.refuse = None
    got = asyncio.run(adapter.holder_statuses(ISIN, words(accounts(2))))
    assert len(got) == 2 and [f for f, _ in peer.calls][-1] == "HolderStatuses"


def test_cometbft_reads_every_chunk_at_one_height() -> None:
    peer = _Peer()
    asyncio.run(_comet(peer).holder_statuses(ISIN, words(accounts(codec.MAX_HOLDER_READS + 1))))
    assert peer.heights == [9, 9]


def test_the_adapters_bound_is_the_chaincodes() -> None:
    from kstb_chaincode import protocol

    assert codec.MAX_HOLDER_READS == protocol.MAX_HOLDER_READS
    assert codec.MAX_LEG_READS == protocol.MAX_LEG_READS
