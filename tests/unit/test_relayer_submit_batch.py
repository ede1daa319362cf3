"""``RelayerService.SubmitBatch`` and ``RelayerGateway.submit_batch`` over real gRPC (loopback,
plaintext: the subject is the call; mTLS, authorisation and real ledgers are in
``tests/integration/test_relayer_submit_batch.py``): request validation, the per-(action,
transfer) locks shared with ``Submit``, retries, refusals with their item, and the gateway's
refusal of an answer about other transfers or legs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import grpc
import pytest

from bridge.coordinator.clients import RelayerGateway
from bridge.core import batch as core
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import InvalidInput, LedgerRejected, Unavailable
from bridge.domain.ids import LedgerId
from bridge.domain.ledger_batches import (
    BatchAnswerMismatch,
    BatchItem,
    BatchItemResult,
    BatchOutcome,
    leg_of,
    refused_item,
)
from bridge.domain.legs import Action, Leg, LegState, SignatureSet, TxOutcome
from bridge.domain.terms import TransferTerms
from bridge.ledgers.adapter import LedgerAdapter
from bridge.rpc.batch_convert import batch_request_to_pb, outcome_to_pb
from bridge.v1 import relayer_pb2, relayer_pb2_grpc
from relayers.service import RelayerServicer

pytestmark = [pytest.mark.unit, pytest.mark.batch]

HERE = LedgerId("ledger-a")
THERE = LedgerId("ledger-b")
MAX = 5


def terms(src: LedgerId = HERE, dst: LedgerId = THERE) -> TransferTerms:
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=b"KR7005930003".ljust(32, b"\0"),
        amount=1,
        src_ledger=src.word,
        src_bridge=b"\x01" * 32,
        dst_ledger=dst.word,
        dst_bridge=b"\x02" * 32,
        sender=b"\x03" * 32,
        recipient=b"\x04" * 32,
        instructor=b"\x05" * 32,
        deadline=2**40,
    )


CERT = core.BatchCertificate(1, 2, b"\x09" * 32, 3, (b"\x01" * 65,) * 3)


def outcome_for(action: Action, items: Sequence[BatchItem]) -> BatchOutcome:
    results = tuple(
        BatchItemResult(
            i.terms.transfer_id,
            leg_of(action, i.terms, HERE.word),
            LegState.BURNED,
            i.terms.terms_hash,
            0,
            False,
        )
        for i in items
    )
    return BatchOutcome("0xabc", 7, results)


class FakeAdapter:
    """Applies every batch after ``hold`` (an event the test may keep clear); records the
    calls and which transfers were in flight together."""

    ledger = HERE
    max_batch_items = MAX

    def __init__(self) -> None:
        self.calls: list[tuple[Action, list[bytes]]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.in_flight: set[bytes] = set()
        self.overlaps = 0
        self.fail: list[BaseException] = []

    async def _run(self, ids: list[bytes]) -> None:
        if self.in_flight & set(ids):
            self.overlaps += 1
        self.in_flight |= set(ids)
        self.started.set()
        try:
            await self.hold.wait()
            if self.fail:
                raise self.fail.pop(0)
        finally:
            self.in_flight -= set(ids)

    async def submit_batch(
        self, action: Action, items: Sequence[BatchItem], certificate: core.BatchCertificate | None
    ) -> BatchOutcome:
        ids = [i.terms.transfer_id for i in items]
        self.calls.append((action, ids))
        await self._run(ids)
        return outcome_for(action, items)

    async def submit(
        self,
        action: Action,
        t: TransferTerms,
        certificate: SignatureSet | None,
        instruction: bytes = b"",
    ) -> TxOutcome:
        self.calls.append((action, [t.transfer_id]))
        await self._run([t.transfer_id])
        return TxOutcome("0xdef", 8, False)


Serve = Callable[[relayer_pb2_grpc.RelayerServiceServicer], Awaitable[tuple[grpc.aio.Server, int]]]


@pytest.fixture(autouse=True)
def plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT", "1")


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[grpc.aio.Server] = []

    async def start(
        servicer: relayer_pb2_grpc.RelayerServiceServicer,
    ) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        relayer_pb2_grpc.add_RelayerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return server, port

    yield start
    for s in servers:
        await s.stop(None)


async def gateway_of(serve: Serve, adapter: FakeAdapter, attempts: int = 3) -> RelayerGateway:
    _, port = await serve(RelayerServicer(cast(LedgerAdapter, adapter), submit_attempts=attempts))
    return RelayerGateway(HERE.name, f"127.0.0.1:{port}", 10.0)


def lock_items(n: int) -> list[BatchItem]:
    return [BatchItem(terms(), instruction=b"\x11" * 65) for _ in range(n)]


# --------------------------------------------------------------------------- the happy path


async def test_a_batch_round_trips_in_order(serve: Serve) -> None:
    adapter = FakeAdapter()
    gw = await gateway_of(serve, adapter)
    items = [BatchItem(terms(), proof=(b"\x07" * 32,)) for _ in range(3)]
    got = await gw.submit_batch(Action.COMMIT, items, CERT)
    assert got == outcome_for(Action.COMMIT, items)
    assert adapter.calls == [(Action.COMMIT, [i.terms.transfer_id for i in items])]
    await gw.close()


# --------------------------------------------------------------------------- validation


def _request(action: int, items: Sequence[relayer_pb2.BatchStepItem], cert: bool) -> Any:
    req = relayer_pb2.SubmitBatchRequest(action=action, items=list(items))  # type: ignore[arg-type]
    if cert:
        req.certificate.CopyFrom(batch_request_to_pb(Action.COMMIT, [], CERT).certificate)
    return req


def _item(t: TransferTerms | None = None, **kw: Any) -> relayer_pb2.BatchStepItem:
    m = batch_request_to_pb(Action.LOCK, [BatchItem(t or terms())], None).items[0]
    for k, v in kw.items():
        if k == "proof":
            m.proof.extend(v)
        else:
            setattr(m, k, v)
    return m


def _bad_cert(**fields: Any) -> Any:
    req = _request(Action.COMMIT, [_item()], True)
    for k, v in fields.items():
        if k == "signatures":
            del req.certificate.signatures[:]
            req.certificate.signatures.extend(v)
        else:
            setattr(req.certificate, k, v)
    return req


SAME = terms()
MALFORMED: dict[str, tuple[Any, str]] = {
    "no item": (_request(Action.LOCK, [], False), f"1 to {MAX} items"),
    "too many": (_request(Action.LOCK, [_item() for _ in range(MAX + 1)], False), f"1 to {MAX}"),
    "unspecified action": (_request(0, [_item()], False), "LOCK, PREPARE, COMMIT, ABORT"),
    "mark expired": (_request(Action.MARK_EXPIRED, [_item()], True), "LOCK, PREPARE"),
    "unknown action": (_request(9, [_item()], False), "LOCK, PREPARE, COMMIT, ABORT"),
    "lock with a certificate": (_request(Action.LOCK, [_item()], True), "takes no certificate"),
    "commit without": (_request(Action.COMMIT, [_item()], False), "needs a batch certificate"),
    "instruction on commit": (
        _request(Action.COMMIT, [_item(instruction=b"\x01" * 65)], True),
        "items[0].instruction applies to LOCK only",
    ),
    "long instruction": (
        _request(Action.LOCK, [_item(), _item(instruction=b"\x01" * 66)], False),
        "items[1].instruction must be at most 65 bytes",
    ),
    "proof on lock": (_request(Action.LOCK, [_item(proof=[b"\x01" * 32])], False), "LOCK"),
    "short proof element": (
        _request(Action.ABORT, [_item(proof=[b"\x01" * 32, b"\x01" * 31])], True),
        "items[0].proof elements must be 32 bytes",
    ),
    "long proof": (
        _request(Action.PREPARE, [_item(proof=[b"\x01" * 32] * (core.MAX_PROOF_LENGTH + 1))], True),
        "at most 32 hashes",
    ),
    "a transfer twice": (
        _request(Action.LOCK, [_item(SAME), _item(), _item(SAME)], False),
        "items[2] repeats transfer",
    ),
    "no terms": (_request(Action.LOCK, [relayer_pb2.BatchStepItem()], False), "terms is required"),
    "short root": (_bad_cert(root=b"\x01" * 31), "certificate.root must be 32 bytes"),
    "unknown kind": (_bad_cert(kind=7), "certificate.kind 7"),
    "short signature": (_bad_cert(signatures=[b"\x01" * 64]), "65 bytes each"),
    "no signature": (_bad_cert(signatures=[]), "65 bytes each"),
}


@pytest.mark.security
@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_requests_are_invalid_arguments_and_reach_no_ledger(
    serve: Serve, name: str
) -> None:
    request, message = MALFORMED[name]
    adapter = FakeAdapter()
    _, port = await serve(RelayerServicer(cast(LedgerAdapter, adapter)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await relayer_pb2_grpc.RelayerServiceStub(ch).SubmitBatch(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert adapter.calls == []


async def test_a_batch_the_kind_cannot_carry_is_an_invalid_argument(serve: Serve) -> None:
    adapter = FakeAdapter()
    adapter.fail.append(ValueError("a LockBatch of 2 items needs about 70000 bytes"))
    gw = await gateway_of(serve, adapter)
    with pytest.raises(InvalidInput, match="70000 bytes"):
        await gw.submit_batch(Action.LOCK, lock_items(2), None)
    assert len(adapter.calls) == 1, "not retried"


# --------------------------------------------------------------------------- refusals, retries


async def test_a_refusal_travels_with_its_reason_and_item(serve: Serve) -> None:
    adapter = FakeAdapter()
    adapter.fail.append(
        LedgerRejected(ErrorReason.INVALID_INSTRUCTION, "forged", {"item": 2}, HERE.name)
    )
    gw = await gateway_of(serve, adapter)
    with pytest.raises(LedgerRejected) as info:
        await gw.submit_batch(Action.LOCK, lock_items(4), None)
    assert info.value.reason is ErrorReason.INVALID_INSTRUCTION
    assert refused_item(info.value) == 2 and info.value.ledger == HERE.name
    assert len(adapter.calls) == 1, "a refusal is not retried"


async def test_transient_faults_are_retried(serve: Serve) -> None:
    adapter = FakeAdapter()
    adapter.fail += [Unavailable("node away"), Unavailable("node away")]
    gw = await gateway_of(serve, adapter, attempts=3)
    items = lock_items(2)
    assert (await gw.submit_batch(Action.LOCK, items, None)).applied == 2
    assert len(adapter.calls) == 3


async def test_transient_faults_beyond_the_attempts_are_unavailable(serve: Serve) -> None:
    adapter = FakeAdapter()
    adapter.fail += [Unavailable("node away")] * 2
    gw = await gateway_of(serve, adapter, attempts=2)
    with pytest.raises(Unavailable):
        await gw.submit_batch(Action.LOCK, lock_items(1), None)


# --------------------------------------------------------------------------- locks


@pytest.mark.security
async def test_a_batch_and_a_single_step_of_one_transfer_never_run_together(serve: Serve) -> None:
    adapter = FakeAdapter()
    adapter.hold.clear()
    gw = await gateway_of(serve, adapter)
    items = lock_items(3)
    batch = asyncio.create_task(gw.submit_batch(Action.LOCK, items, None))
    await asyncio.wait_for(adapter.started.wait(), 10)
    single = asyncio.create_task(gw.submit(Action.LOCK, items[1].terms, None, b"\x11" * 65))
    other = asyncio.create_task(gw.submit(Action.LOCK, terms(), None, b"\x11" * 65))
    await asyncio.sleep(0.2)
    assert len(adapter.calls) == 2, "the single step of another transfer runs; this one waits"
    adapter.hold.set()
    await asyncio.gather(batch, single, other)
    assert adapter.overlaps == 0 and len(adapter.calls) == 3
    assert adapter.calls[-1] == (Action.LOCK, [items[1].terms.transfer_id])


@pytest.mark.security
async def test_overlapping_batches_in_opposite_orders_do_not_deadlock(serve: Serve) -> None:
    adapter = FakeAdapter()
    gw = await gateway_of(serve, adapter)
    items = lock_items(MAX)
    runs = [gw.submit_batch(Action.LOCK, items if k % 2 else items[::-1], None) for k in range(6)]
    done = await asyncio.wait_for(asyncio.gather(*runs), 10)
    assert len(done) == 6 and adapter.overlaps == 0


# --------------------------------------------------------------------------- the gateway's check


class Liar(relayer_pb2_grpc.RelayerServiceServicer):
    """Answers every SubmitBatch with ``rewrite`` applied to the honest outcome."""

    def __init__(self, rewrite: Callable[[BatchOutcome], BatchOutcome]) -> None:
        self.rewrite = rewrite

    async def SubmitBatch(
        self, request: relayer_pb2.SubmitBatchRequest, context: Any
    ) -> relayer_pb2.SubmitBatchResponse:
        from bridge.rpc.batch_convert import batch_request_from_pb

        req = batch_request_from_pb(request, 100)
        return outcome_to_pb(self.rewrite(outcome_for(req.action, req.items)))


def _swap(o: BatchOutcome) -> BatchOutcome:
    return replace(o, items=(o.items[1], o.items[0], *o.items[2:]))


def _other(o: BatchOutcome) -> BatchOutcome:
    return replace(o, items=(replace(o.items[0], transfer_id=b"\x66" * 32), *o.items[1:]))


def _leg(o: BatchOutcome) -> BatchOutcome:
    return replace(o, items=(replace(o.items[0], leg=Leg.INBOUND), *o.items[1:]))


def _short(o: BatchOutcome) -> BatchOutcome:
    return replace(o, items=o.items[:-1])


def _extra(o: BatchOutcome) -> BatchOutcome:
    return replace(o, items=(*o.items, replace(o.items[0], transfer_id=b"\x67" * 32)))


def _bad_hash(o: BatchOutcome) -> BatchOutcome:
    return replace(o, items=(replace(o.items[0], terms_hash=b"\x01"), *o.items[1:]))


@pytest.mark.security
@pytest.mark.parametrize("lie", [_swap, _other, _leg, _short, _extra, _bad_hash])
async def test_an_answer_about_other_transfers_or_legs_is_unavailable(
    serve: Serve, lie: Callable[[BatchOutcome], BatchOutcome]
) -> None:
    _, port = await serve(Liar(lie))
    gw = RelayerGateway(HERE.name, f"127.0.0.1:{port}", 10.0)
    # COMMIT on the source ledger moves the outbound legs; a relayer naming the inbound is lying.
    items = [BatchItem(terms(), proof=(b"\x07" * 32,)) for _ in range(3)]
    with pytest.raises(BatchAnswerMismatch):  # an Unavailable the batcher steps alone
        await gw.submit_batch(Action.COMMIT, items, CERT)
    await gw.close()


async def test_the_honest_answer_names_the_legs_the_action_moves(serve: Serve) -> None:
    _, port = await serve(Liar(lambda o: o))
    gw = RelayerGateway(HERE.name, f"127.0.0.1:{port}", 10.0)
    inbound = [BatchItem(terms(src=THERE, dst=HERE), proof=(b"\x07" * 32,)) for _ in range(2)]
    got = await gw.submit_batch(Action.ABORT, inbound, CERT)
    assert {r.leg for r in got.items} == {Leg.INBOUND}
    got = await gw.submit_batch(Action.LOCK, lock_items(2), None)
    assert {r.leg for r in got.items} == {Leg.OUTBOUND}
    await gw.close()
