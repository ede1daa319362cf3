"""The batch API's hardening (issue 14, batchfix), each defect with its negative test, on
a real coordinator engine (in-memory relayers and committee), the real TransferService
behind the real authorisation interceptor on a real gRPC server over mutual TLS (devnet
PKI), and a real store: a SQLite file or PostgreSQL.

1. Two concurrent SubmitTransfers with one batch id: exactly one runs the items; the other
   answers the first's results (same items) or ALREADY_EXISTS (other items, none run).
2. An item refused for a transient reason (the eligibility read timing out) is RETRYABLE,
   not recorded as final; a replay re-evaluates those items only, final refusals stay.
3. WatchBatch is bounded: per caller (RESOURCE_EXHAUSTED), one item update per message
   (or, asked for, a bounded group of them), the store read in pages (no per-item watcher
   task), and it still reports every item.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from bridge.config import BatchingConfig, NetworkConfig, TlsConfig, dump_toml, load_network
from bridge.coordinator.batches import BatchQuota, SqlBatchStore
from bridge.coordinator.db import Database, open_database
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.requests import terms_for
from bridge.coordinator.service import TransferServicer
from bridge.coordinator.store import SqlTransferStore
from bridge.core.reasons import ErrorReason
from bridge.devnet.pki import DevPki
from bridge.domain.errors import Unavailable
from bridge.domain.instructions import Instruction, sign_instruction
from bridge.domain.legs import HolderStatus
from bridge.domain.signer import LocalKeySigner
from bridge.rpc.audit import AuditLog
from bridge.rpc.authn import Authenticator
from bridge.rpc.authz import AuthorisationInterceptor
from bridge.rpc.convert import instruction_to_pb
from bridge.rpc.roles import Role
from bridge.rpc.tls import ClientIdentity, ServerCredentialSource, server_roots
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.postgres import fresh_pg_url, pg_database, postgres_cluster
from tests.support import eventually
from tests.unit.test_coordinator_driver import ISIN, FakeCommittee, FakeRelayer

pytestmark = [pytest.mark.integration, pytest.mark.batch, pytest.mark.security]
__all__ = ["fresh_pg_url", "pg_database", "postgres_cluster"]  # the PostgreSQL fixtures

OUT = S.BatchItemOutcome
BROKER_A = LocalKeySigner(bytes([7]) * 32)
SENDER = "0x" + "11" * 20
FROZEN = "0x" + "33" * 20  # a sender the ledger reports frozen: a final refusal
FLAKY = "0x" + "44" * 20  # a sender whose standing read times out the first time


class SlowRelayer(FakeRelayer):
    """A ledger whose holder reads take a moment (so concurrent batches overlap), one of
    whose holders is frozen, and whose read of another times out once (UNAVAILABLE)."""

    def __init__(self, ledger: str) -> None:
        super().__init__(ledger)
        self.flaky_failures = 0
        self.reads: Counter[str] = Counter()
        self.open = asyncio.Event()  # cleared: every transaction waits (transfers stay open)
        self.open.set()
        self.reading = asyncio.Event()  # cleared: every holder read waits (a batch runs on)
        self.reading.set()

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        await self.open.wait()
        return await super().submit(*args, **kwargs)

    async def holder(self, security: str, holder: str) -> HolderStatus:
        self.reads[holder] += 1
        await self.reading.wait()
        await asyncio.sleep(0.01)
        if holder == FLAKY and self.flaky_failures > 0:
            self.flaky_failures -= 1
            raise Unavailable(f"ledger {self.ledger}: eth_call timed out reading the holder")
        if holder == FROZEN:
            return HolderStatus(True, 10**6, 0, True, True, False)
        return HolderStatus(True, 10**6, 0, True, False, False)


@dataclass
class Served:
    stub: transfer_pb2_grpc.TransferServiceStub
    other_stub: transfer_pb2_grpc.TransferServiceStub  # a second certificate of brokerage a
    coordinator: Coordinator
    network: NetworkConfig
    relayers: dict[str, SlowRelayer]
    submitted: Counter[str]  # Coordinator.check_submit calls per idempotency key
    store: SqlTransferStore
    batches: SqlBatchStore
    audit_file: Path


def _network(pki: DevPki, base: Path) -> NetworkConfig:
    path = base / "network.toml"
    path.write_text(
        dump_toml(
            {
                "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "22" * 20]},
                "securities": {"isins": [ISIN]},
                "ledgers": [
                    {
                        "id": "a",
                        "kind": "evm",
                        "rpc_url": "x",
                        "bridge": "0x" + "aa" * 20,
                        "chain_id": 1,
                        "finality_depth": 0,
                    },
                    {
                        "id": "b",
                        "kind": "evm",
                        "rpc_url": "y",
                        "bridge": "0x" + "bb" * 20,
                        "chain_id": 2,
                        "finality_depth": 0,
                    },
                ],
                "instruction_keys": {"a": ["0x" + BROKER_A.address.hex()]},
                "organisations": pki.network_entries(base),
            }
        )
    )
    return load_network(path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The coordinator's database, migrated: a SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        db = open_database(tmp_path / "coordinator.sqlite")
    else:
        db = open_database(request.getfixturevalue("fresh_pg_url"))
    yield db
    db.close()


@pytest.fixture
async def served(
    request: pytest.FixtureRequest, tmp_path: Path, database: Database
) -> AsyncIterator[Served]:
    """The served coordinator; ``request.param`` (indirect), a dict, may hold its batch
    store's ``quota``, its ``max_unfinished_per_ledger``, ``batching``, ``rpc_timeout`` and
    ``sweep_every``."""
    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    pki.organisation("a", ["brokerage:a"])
    pki.issue("a", "brokerage:a", "brokerage-a")
    second = pki.issue_extra("a", "brokerage:a", "brokerage-a-2")
    network = _network(pki, tmp_path)
    store = SqlTransferStore(database)
    param: dict[str, Any] = getattr(request, "param", {})
    batches = SqlBatchStore(database, param.get("quota"))
    relayers = {"a": SlowRelayer("a"), "b": SlowRelayer("b")}
    coordinator = Coordinator(network, store, relayers, FakeCommittee(), transfer_ttl=60,  # type: ignore[arg-type]
                              max_backoff=0.2, sweep_every=param.get("sweep_every", 0.1),
                              max_unfinished_per_ledger=param.get("max_unfinished_per_ledger"),
                              batching=param.get("batching"),
                              rpc_timeout=param.get("rpc_timeout", 30.0))  # fmt: skip
    submitted: Counter[str] = Counter()
    check = coordinator.check_submit  # a batch item's submission starts with its checks

    async def counting(req: Any, instruction: Any, auth: Any = None) -> Any:
        submitted[req.idempotency_key] += 1
        return await check(req, instruction, auth)

    coordinator.check_submit = counting  # type: ignore[method-assign]
    await coordinator.start()
    audit = AuditLog(tmp_path / "audit.jsonl")

    async def ledgers_of(tid: bytes) -> tuple[str, str] | None:  # as the daemon's
        record = await store.get(tid)
        return (
            None if record is None else (record.request.source_ledger, record.request.target_ledger)
        )

    authz = AuthorisationInterceptor(Authenticator(network), audit, ledgers_of)
    server = grpc.aio.server(interceptors=[authz])
    servicer = TransferServicer(
        network,
        coordinator,
        store,
        batches,
        max_batch_watches=2,
        max_running_batches=1,
        audit=audit,
        max_transfer_watches=2,
    )
    transfer_pb2_grpc.add_TransferServiceServicer_to_server(servicer, server)
    cert = pki.cert_for("coordinator")
    tls = TlsConfig(cert.cert_file, cert.key_file)
    port = server.add_secure_port(
        "127.0.0.1:0", ServerCredentialSource(tls, server_roots(network, tls)).credentials()
    )
    await server.start()

    def channel(name: str) -> grpc.aio.Channel:
        c = pki.cert_for(name) if name == "brokerage:a" else second
        ident = ClientIdentity(
            TlsConfig(c.cert_file, c.key_file),
            (pki.cas["bridge-operator"].ca_file,),
            Role("coordinator"),
        )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{port}", ident.credentials(), options=ident.options()
        )

    async with channel("brokerage:a") as ch, channel("brokerage-a-2") as ch2:
        yield Served(
            transfer_pb2_grpc.TransferServiceStub(ch),
            transfer_pb2_grpc.TransferServiceStub(ch2),
            coordinator,
            network,
            relayers,
            submitted,
            store,
            batches,
            tmp_path / "audit.jsonl",
        )
    for relayer in relayers.values():
        relayer.open.set()
        relayer.reading.set()
    await server.stop(0)
    await coordinator.stop()
    audit.close()
    batches.close()
    store.close()


def item(
    served: Served,
    key: str,
    *,
    sender: str = SENDER,
    amount: int = 5,
    deadline: int | None = None,
) -> S.SubmitTransferRequest:
    """A well-formed item from ledger a, instructed by brokerage a's registered key
    (its deadline 50 s from now unless given)."""
    from bridge.coordinator.records import TransferRequest

    req = TransferRequest(key, ISIN, "a", "b", sender, SENDER, amount)
    unsigned = Instruction(
        nonce=hashlib.sha256(key.encode()).digest(),
        deadline=int(time.time()) + 50 if deadline is None else deadline,
        instructor=BROKER_A.address,
        signature=bytes(65),
    )
    terms = terms_for(served.network, req, unsigned)
    word = served.network.ledgers["a"].network_word
    signed = dataclasses.replace(unsigned, signature=sign_instruction(BROKER_A, word, terms))
    return S.SubmitTransferRequest(
        idempotency_key=key,
        security_id=ISIN,
        source_ledger="a",
        target_ledger="b",
        sender=sender,
        recipient=SENDER,
        amount=str(amount),
        instruction=instruction_to_pb(signed),
    )


def batch(batch_id: str, items: list[S.SubmitTransferRequest]) -> S.SubmitTransfersRequest:
    return S.SubmitTransfersRequest(batch_id=batch_id, source_ledger="a", items=items)


def outcomes(resp: S.SubmitTransfersResponse) -> list[int]:
    return [r.outcome for r in resp.results]


# ---- defect 1: concurrent copies of one batch id


async def test_two_concurrent_copies_of_a_batch_run_its_items_once(served: Served) -> None:
    items = [item(served, f"c-{i}") for i in range(8)]
    request = batch("day-1", items)
    first, second = await asyncio.gather(
        served.stub.SubmitTransfers(request, timeout=30),
        served.other_stub.SubmitTransfers(request, timeout=30),
    )
    # Exactly one call ran the items: each key reached the engine once, not twice.
    assert served.submitted == Counter({f"c-{i}": 1 for i in range(8)})
    assert sorted([first.created, second.created]) == [False, True]
    assert outcomes(first) == outcomes(second) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 8
    assert [r.transfer.transfer_id for r in first.results] == [
        r.transfer.transfer_id for r in second.results
    ]


async def test_a_concurrent_batch_with_other_items_under_the_same_id_runs_nothing(
    served: Served,
) -> None:
    mine = batch("day-2", [item(served, f"m-{i}") for i in range(6)])
    theirs = batch("day-2", [item(served, f"t-{i}") for i in range(6)])
    results = await asyncio.gather(
        served.stub.SubmitTransfers(mine, timeout=30),
        served.other_stub.SubmitTransfers(theirs, timeout=30),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, S.SubmitTransfersResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert lost[0].code() == grpc.StatusCode.ALREADY_EXISTS
    status = rpc_status.from_call(lost[0])  # type: ignore[arg-type]
    assert status is not None and "already used with other items" in status.message
    winner = "m" if won[0].results[0].idempotency_key.startswith("m-") else "t"
    loser = "t" if winner == "m" else "m"
    # The losing request's items never reached the engine, and nothing of them is stored.
    assert all(not k.startswith(loser) for k in served.submitted), served.submitted
    assert served.submitted == Counter({f"{winner}-{i}": 1 for i in range(6)})
    for i in range(6):
        assert await served.store.get_by_key("a", f"{loser}-{i}") is None
    # And after the winner has answered, the other request stays refused, still running nothing.
    again = theirs if winner == "m" else mine
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SubmitTransfers(again, timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert sum(served.submitted.values()) == 6


async def test_running_batches_are_bounded_per_source_ledger(served: Served) -> None:
    """max_running_batches = 1 here. A batch keeps running when its caller gives up, so a
    second batch of the ledger while one runs is RESOURCE_EXHAUSTED before anything is
    reserved or submitted; a replay of the running one waits for it instead."""
    served.relayers["a"].reading.clear()  # the first batch's holder reads hang
    first = batch("day-6", [item(served, "x-0"), item(served, "x-1")])
    running = asyncio.ensure_future(served.stub.SubmitTransfers(first, timeout=30))

    async def started() -> bool:
        return served.submitted["x-0"] == 1

    await eventually(started, 10, "the first batch running")
    second = batch("day-7", [item(served, "y-0")])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.other_stub.SubmitTransfers(second, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None and "max_running_batches" in status.message
    assert await served.batches.get("a", "day-7") is None and served.submitted["y-0"] == 0
    replay = asyncio.ensure_future(served.other_stub.SubmitTransfers(first, timeout=30))
    served.relayers["a"].reading.set()
    one, two = await asyncio.gather(running, replay)
    assert outcomes(one) == outcomes(two) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 2
    assert served.submitted["x-0"] == served.submitted["x-1"] == 1
    done = await served.stub.SubmitTransfers(second, timeout=30)
    assert done.created and outcomes(done) == [OUT.BATCH_ITEM_OUTCOME_CREATED]


@pytest.mark.parametrize(
    "served", [{"quota": BatchQuota(items_per_day=1000, refused_per_day=6)}], indirect=True
)
async def test_a_brokerage_past_its_refused_items_quota_records_no_new_batch(
    served: Served,
) -> None:
    """Threat model, "batch rows": items refused on their own input (here a forged
    signature, items naming another ledger, and a signed instruction replayed under a new
    key, expired or not: review helper-111 M1) are stored with their batch, so they are
    held to a daily quota per source ledger. Items refused for a transient
    reason (the recipient's ledger unreadable: another organisation's relayer) are not
    counted (review helper-110 H1). Past the quota, the brokerage's next batch id is
    RESOURCE_EXHAUSTED naming the setting, with nothing reserved or submitted, while a
    replay of its recorded batch still answers the same results."""
    served.relayers["a"].flaky_failures = 2  # the sender's standing read times out twice
    ledgers_word = batch(
        "quota-0",
        [
            item(served, "t-0", sender=FLAKY),
            item(served, "t-1", sender=FLAKY),
            item(served, "t-2", sender=FROZEN),  # the ledger's refusal: not counted either
        ],
    )
    got = await served.stub.SubmitTransfers(ledgers_word, timeout=30)
    assert outcomes(got) == [OUT.BATCH_ITEM_OUTCOME_RETRYABLE] * 2 + [
        OUT.BATCH_ITEM_OUTCOME_REFUSED
    ]
    forged = item(served, "q-1")
    signature = bytearray(forged.instruction.signature)
    signature[5] ^= 1
    forged.instruction.signature = bytes(signature)
    others = [item(served, f"q-{i}") for i in (2, 3)]
    for it in others:
        it.source_ledger = "b"
    replayed = item(served, "q-0")
    replayed.idempotency_key = "q-0-again"  # q-0's signed instruction under a new key
    first = batch("quota-1", [item(served, "q-0"), forged, *others, replayed])
    got = await served.stub.SubmitTransfers(first, timeout=30)
    refused = [OUT.BATCH_ITEM_OUTCOME_REFUSED] * 4
    assert outcomes(got) == [OUT.BATCH_ITEM_OUTCOME_CREATED, *refused]
    assert got.results[4].error.code == "ALREADY_EXISTS"
    # An instruction signed with a deadline now passed, replayed under a new key.
    old = item(served, "q-5", deadline=int(time.time()) + 1)
    await asyncio.sleep(1.5)
    late = await served.stub.SubmitTransfers(batch("quota-1b", [old]), timeout=30)
    assert outcomes(late) == [OUT.BATCH_ITEM_OUTCOME_REFUSED]
    assert "deadline has passed" in late.results[0].error.message
    # Review helper-112: q-0's instruction again, now that q-0 is recorded, is refused from
    # the coordinator's records before any ledger is read (whatever the ledgers would say).
    reads = sum(r.reads.total() for r in served.relayers.values())
    again = item(served, "q-0")
    again.idempotency_key = "q-0-third"
    third = await served.stub.SubmitTransfers(batch("quota-1c", [again]), timeout=30)
    assert outcomes(third) == [OUT.BATCH_ITEM_OUTCOME_REFUSED]
    assert third.results[0].error.code == "ALREADY_EXISTS"
    assert sum(r.reads.total() for r in served.relayers.values()) == reads
    nxt = batch("quota-2", [item(served, "q-9")])
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await served.other_stub.SubmitTransfers(nxt, timeout=30)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(exhausted.value)  # type: ignore[arg-type]
    assert status is not None
    assert "recorded 6 items refused on their own input in the last 24 h" in status.message
    assert "(max_refused_batch_items_per_day 6)" in status.message
    assert await served.batches.get("a", "quota-2") is None and served.submitted["q-9"] == 0
    replay = await served.stub.SubmitTransfers(first, timeout=30)
    assert outcomes(replay) == outcomes(got) and not replay.created
    assert served.submitted["q-0"] == 1


@pytest.mark.parametrize("served", [{"max_unfinished_per_ledger": 3}], indirect=True)
async def test_a_ledger_past_its_unfinished_bound_records_no_new_transfer(served: Served) -> None:
    """Threat model, "coordinator resources": a brokerage may submit as many transfers as
    its holders' balances cover, each checked alone. Past ``max_unfinished_per_ledger``
    unfinished transfers from its ledger, a new one is RESOURCE_EXHAUSTED (retryable; a
    batch item RETRYABLE) before any ledger is read, and nothing is recorded; a retry of a
    recorded transfer is still answered; once transfers finish, new ones are taken. The
    sweep's count from the store stands in for the memory a restarted process lacks."""
    for relayer in served.relayers.values():
        relayer.open.clear()  # every lock waits: the transfers stay unfinished
    items = [item(served, f"u-{i}") for i in range(3)]
    first = await served.stub.SubmitTransfers(batch("cap-1", items), timeout=30)
    assert outcomes(first) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 3
    reads = sum(r.reads.total() for r in served.relayers.values())

    async def refused_alone(key: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as exhausted:
            await served.stub.SubmitTransfer(item(served, key), timeout=30)
        assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(exhausted.value)  # type: ignore[arg-type]
        assert status is not None
        assert "(max_unfinished_per_ledger 3)" in status.message
        assert await served.store.get_by_key("a", key) is None

    await refused_alone("u-3")
    later = batch("cap-2", [item(served, "u-4"), item(served, "u-5")])
    second = await served.stub.SubmitTransfers(later, timeout=30)
    assert outcomes(second) == [OUT.BATCH_ITEM_OUTCOME_RETRYABLE] * 2
    for result in second.results:
        assert result.error.code == "RESOURCE_EXHAUSTED"
        assert result.error.metadata["retryable"] == "true"
    assert await served.store.get_by_key("a", "u-4") is None
    assert sum(r.reads.total() for r in served.relayers.values()) == reads  # no ledger read
    # A retry of a recorded transfer is answered, not refused.
    retry = await served.stub.SubmitTransfer(items[0], timeout=30)  # the same signed request
    recorded = await served.store.get_by_key("a", "u-0")
    assert not retry.created and recorded is not None
    assert retry.transfer.transfer_id == "0x" + recorded.transfer_id.hex()
    # A process that has not counted (restarted): the sweep's count from the store.
    served.coordinator._ctx.unfinished.recount({})
    await eventually(
        lambda: asyncio.sleep(0, served.coordinator._ctx.unfinished.of("a") == 3),
        5,
        "the sweep's count of ledger a's unfinished transfers",
    )
    await refused_alone("u-3")
    # Once they finish, new transfers are taken.
    for relayer in served.relayers.values():
        relayer.open.set()
    for i in range(3):
        await eventually(lambda i=i: _terminal(served, f"u-{i}"), 30, f"transfer u-{i} terminal")
    again = await served.stub.SubmitTransfers(later, timeout=30)  # the batch's replay
    assert outcomes(again) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 2


@pytest.mark.parametrize(
    "served",
    [{"batching": BatchingConfig(enabled=True, max_in_flight=1), "rpc_timeout": 0.3}],
    indirect=True,
)
async def test_the_holder_split_budget_is_the_configured_call_timeout(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split of a failed shared holder read (review helper-117 #4) runs within one
    budget; it was the constant 30 s, whatever ``rpc_timeout`` the coordinator's file set.
    With 0.3 s configured, a relayer that fails the shared read and lets single reads hang
    gives the batch's items RETRYABLE well inside the client's 10 s deadline; with the
    constant the call ran out of its own deadline first. (The first item's read goes out
    alone and fails as its own; the next two share a read, which is split.)"""
    from bridge.coordinator.clients import PeerFailed

    holders_of, holder_of = SlowRelayer.holders, SlowRelayer.holder

    async def failing(self: SlowRelayer, security: str, holders: Any) -> Any:
        if self.ledger != "a":  # the recipient's ledger answers
            return await holders_of(self, security, holders)
        await asyncio.sleep(0.2)  # the other items' reads queue behind the first one
        raise PeerFailed("relayer of a failed (internal)")

    async def hanging(self: SlowRelayer, security: str, holder: str) -> Any:
        if self.ledger != "a":
            return await holder_of(self, security, holder)
        await asyncio.sleep(3600)
        raise AssertionError("the budget did not end the single read")

    monkeypatch.setattr(SlowRelayer, "holders", failing)
    monkeypatch.setattr(SlowRelayer, "holder", hanging)
    senders = ["0x" + f"{n}" * 40 for n in (5, 6, 7)]
    items = [item(served, f"budget-{i}", sender=s) for i, s in enumerate(senders)]
    answer = await served.stub.SubmitTransfers(batch("budget", items), timeout=10)
    assert outcomes(answer) == [OUT.BATCH_ITEM_OUTCOME_RETRYABLE] * 3
    assert all(r.error.code == "UNAVAILABLE" for r in answer.results)
    for i in range(3):
        assert await served.store.get_by_key("a", f"budget-{i}") is None


@pytest.mark.parametrize(
    "served", [{"max_unfinished_per_ledger": 3, "sweep_every": 3600.0}], indirect=True
)
async def test_concurrent_submissions_do_not_pass_the_unfinished_bound_together(
    served: Served,
) -> None:
    """Review helper-120 H1: the bound was checked before the ledger reads and counted
    after the write, so 60 concurrent calls all passed a bound of 3. Now room is taken
    just before each write: of 20 concurrent calls (held together at their holder reads),
    exactly 3 are recorded and the rest are RESOURCE_EXHAUSTED with nothing recorded. No
    sweep runs here (``sweep_every`` is an hour), so the room that comes back once those 3
    finish is the engine's own count of their ends (``EngineContext.set_state``)."""
    for relayer in served.relayers.values():
        relayer.open.clear()  # the recorded transfers stay unfinished
        relayer.reading.clear()  # every admission waits at its holder reads
    items = [item(served, f"c-{i}", sender="0x" + f"{i + 10:040x}") for i in range(20)]
    calls = [asyncio.ensure_future(served.stub.SubmitTransfer(i, timeout=30)) for i in items]
    await eventually(
        lambda: asyncio.sleep(0, sum(served.relayers["a"].reads.values()) >= 20),
        10,
        "every admission at its holder reads",
    )
    for relayer in served.relayers.values():
        relayer.reading.set()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    created = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(created) == 3 and len(refused) == 17, answers
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    recorded = [await served.store.get_by_key("a", f"c-{i}") for i in range(20)]
    assert sum(r is not None for r in recorded) == 3
    # Their ends give the room back, without a sweep.
    for relayer in served.relayers.values():
        relayer.open.set()
    for i, record in enumerate(recorded):
        if record is not None:
            await eventually(lambda i=i: _terminal(served, f"c-{i}"), 30, f"c-{i} terminal")
    for relayer in served.relayers.values():
        relayer.open.clear()  # the next ones stay unfinished (none gives its room back)
    later = await served.stub.SubmitTransfers(
        batch("cap-c", [item(served, f"d-{i}") for i in range(4)]), timeout=30
    )
    assert outcomes(later) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 3 + [
        OUT.BATCH_ITEM_OUTCOME_RETRYABLE
    ]


async def _terminal(served: Served, key: str) -> bool:
    record = await served.store.get_by_key("a", key)
    return record is not None and record.state.terminal


# ---- review s18 F4: what a batch stores is bounded and validated; a replay is cheap


async def test_a_malformed_item_key_refuses_the_batch_and_stores_nothing(served: Served) -> None:
    for bad in ("k" * 129, "with space", "ctrl\x07", ""):
        items = [item(served, "ok-1"), item(served, "ok-2")]
        items[1].idempotency_key = bad  # the instruction no longer matters: refused first
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.SubmitTransfers(batch("day-8", items), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "items[1].idempotency_key" in (refused.value.details() or "")
        assert await served.batches.get("a", "day-8") is None
        assert sum(served.submitted.values()) == 0


async def test_a_batch_of_denied_items_writes_one_audit_record(served: Served) -> None:
    """Review helper-106 M2: 299 items naming another ledger and a forged instruction are
    one denied audit record (per reason: the count, the first indexes, a message), not 300;
    review helper-109: the forgery is named beside them, not hidden behind them."""
    items = [item(served, f"h-{i}") for i in range(301)]
    for it in items[1:300]:
        it.source_ledger = "b"
    forged = bytearray(items[300].instruction.signature)
    forged[5] ^= 1
    items[300].instruction.signature = bytes(forged)
    before = len(served.audit_file.read_text().splitlines())
    got = await served.stub.SubmitTransfers(batch("day-11", items), timeout=30)
    refused = [OUT.BATCH_ITEM_OUTCOME_REFUSED] * 300
    assert outcomes(got) == [OUT.BATCH_ITEM_OUTCOME_CREATED, *refused]
    forged_reason = got.results[300].error.reason
    assert got.results[300].error.code == "PERMISSION_DENIED" != forged_reason
    records = [json.loads(x) for x in served.audit_file.read_text().splitlines()[before:]]
    denied = [r for r in records if "#item[" in r["method"]]
    assert len(denied) == 1 and denied[0]["method"].endswith("SubmitTransfers#item[1]")
    reason = denied[0]["reason"]
    assert reason.startswith("batch 'day-11': 300 items denied; ")
    assert "PERMISSION_DENIED: 299 (items 1, 2, " in reason
    assert " and 267 more; item 1: " in reason
    assert f"{forged_reason}: 1 (items 300; item 300: " in reason


async def test_a_refused_item_stores_a_bounded_message_and_a_replay_reads_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = item(served, "f-1")
    foreign.source_ledger = "z" * 100_000  # refused PERMISSION_DENIED, never validated
    items = [item(served, f"g-{i}") for i in range(5)] + [foreign]
    request = batch("day-9", items)
    first = await served.stub.SubmitTransfers(request, timeout=30)
    denied = first.results[5]
    assert denied.outcome == OUT.BATCH_ITEM_OUTCOME_REFUSED
    assert denied.error.code == "PERMISSION_DENIED" and len(denied.error.message) <= 512
    stored = await served.batches.get("a", "day-9")
    assert stored is not None
    assert sum(len(r.error.message) for r in stored.results if r.error) <= 512
    # Review s18 F10: the item's denial is an audited authorisation decision.
    records = [json.loads(x) for x in served.audit_file.read_text().splitlines()]
    denied = [r for r in records if r["method"].endswith("SubmitTransfers#item[5]")]
    assert len(denied) == 1 and denied[0]["allowed"] is False
    assert denied[0]["org"] == "a"
    assert denied[0]["reason"].startswith("batch 'day-9': 1 items denied; ")
    assert ": 1 (items 5; item 5: " in denied[0]["reason"]
    # A replay answers from one paged read of the transfers, not one read per item.
    reads: list[int] = []
    get_many = SqlTransferStore.get_many

    async def counted(self: SqlTransferStore, tids: Any) -> Any:
        reads.append(len(tids))
        return await get_many(self, tids)

    async def refused_get(self: SqlTransferStore, tid: bytes) -> Any:
        raise AssertionError("a replay read a transfer on its own")

    monkeypatch.setattr(SqlTransferStore, "get_many", counted)
    monkeypatch.setattr(SqlTransferStore, "get", refused_get)
    replay = await served.stub.SubmitTransfers(request, timeout=30)
    assert reads == [5] and outcomes(replay) == outcomes(first)


# ---- defect 2: a transient refusal is not a final result


async def test_a_transient_item_is_retryable_and_only_it_is_re_evaluated(served: Served) -> None:
    src = served.relayers["a"]
    src.flaky_failures = 1  # the eligibility read of FLAKY times out once
    items = [
        item(served, "r-ok"),
        item(served, "r-flaky", sender=FLAKY),
        item(served, "r-frozen", sender=FROZEN),
        item(served, "r-ok-2"),
    ]
    request = batch("day-3", items)
    first = await served.stub.SubmitTransfers(request, timeout=30)
    assert first.created
    assert outcomes(first) == [
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_RETRYABLE,
        OUT.BATCH_ITEM_OUTCOME_REFUSED,
        OUT.BATCH_ITEM_OUTCOME_CREATED,
    ]
    flaky, frozen = first.results[1], first.results[2]
    assert (flaky.error.code, flaky.error.reason) == ("UNAVAILABLE", "UNAVAILABLE")
    assert flaky.error.metadata["retryable"] == "true" and not flaky.HasField("transfer")
    assert (frozen.error.code, frozen.error.reason) == (
        "FAILED_PRECONDITION",
        ErrorReason.HOLDER_FROZEN.name,
    )
    assert frozen.error.metadata["retryable"] == "false"
    assert await served.store.get_by_key("a", "r-flaky") is None  # nothing recorded for it
    assert served.submitted == Counter({"r-ok": 1, "r-flaky": 1, "r-frozen": 1, "r-ok-2": 1})

    # The replay re-evaluates the retryable item only: it is created now; the final refusal
    # stays as recorded (the frozen sender is not even read again), the others are EXISTING
    # in the answer but never re-submitted.
    frozen_reads = src.reads[FROZEN]
    replay = await served.stub.SubmitTransfers(request, timeout=30)
    assert not replay.created
    assert outcomes(replay) == [
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_CREATED,
        OUT.BATCH_ITEM_OUTCOME_REFUSED,
        OUT.BATCH_ITEM_OUTCOME_CREATED,
    ]
    assert replay.results[2].error == frozen.error
    assert served.submitted == Counter({"r-ok": 1, "r-flaky": 2, "r-frozen": 1, "r-ok-2": 1})
    assert src.reads[FROZEN] == frozen_reads
    assert await served.store.get_by_key("a", "r-flaky") is not None
    # A third replay has nothing left to re-evaluate and answers the record.
    third = await served.stub.SubmitTransfers(request, timeout=30)
    assert outcomes(third) == outcomes(replay)
    assert sum(served.submitted.values()) == 5


# ---- defect 3: WatchBatch bounds


async def _first_message(call: Any) -> S.WatchBatchResponse:
    async for message in call:
        return message  # type: ignore[no-any-return]
    raise AssertionError("the stream ended without a message")


async def test_watch_batch_streams_are_bounded_per_caller(served: Served) -> None:
    """max_batch_watches = 2 here: the caller's third stream is RESOURCE_EXHAUSTED (with
    another certificate of the same organisation too); once one ends, one more is allowed."""
    served.relayers["a"].open.clear()  # no lock lands: the transfers stay unfinished
    items = [item(served, "w-0"), item(served, "w-1")]
    await served.stub.SubmitTransfers(batch("day-4", items), timeout=30)
    watch = S.WatchBatchRequest(batch_id="day-4", source_ledger="a")
    one = served.stub.WatchBatch(watch, timeout=30)
    two = served.other_stub.WatchBatch(watch, timeout=30)
    await _first_message(one)
    await _first_message(two)
    # Both streams now count against organisation a (brokerage role).
    third = served.stub.WatchBatch(watch, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _first_message(third)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None and "max_batch_watches" in status.message
    one.cancel()
    two.cancel()

    async def admitted() -> bool:
        call = served.stub.WatchBatch(watch, timeout=30)
        try:
            await _first_message(call)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return False
        finally:
            call.cancel()

    assert await eventually(admitted, 10, "a stream admitted once the others ended")


async def test_watch_transfer_streams_are_bounded_per_caller(served: Served) -> None:
    """max_transfer_watches = 2 here: a brokerage's third WatchTransfer (from its second
    certificate too) is RESOURCE_EXHAUSTED naming the setting, and the slot comes back when
    a stream is cancelled (review s18: WatchTransfer had no per-caller bound)."""
    served.relayers["a"].open.clear()  # no lock lands: the transfer stays unfinished
    done = await served.stub.SubmitTransfers(batch("day-w", [item(served, "t-0")]), timeout=30)
    watch = S.WatchTransferRequest(transfer_id=done.results[0].transfer.transfer_id)
    one = served.stub.WatchTransfer(watch, timeout=30)
    two = served.other_stub.WatchTransfer(watch, timeout=30)
    await _first_message(one)
    await _first_message(two)
    third = served.stub.WatchTransfer(watch, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _first_message(third)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None and "max_transfer_watches" in status.message
    one.cancel()

    async def admitted() -> bool:
        call = served.stub.WatchTransfer(watch, timeout=30)
        try:
            await _first_message(call)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return False
        finally:
            call.cancel()

    assert await eventually(admitted, 10, "a stream admitted once another ended")
    two.cancel()


def _in_stream() -> bool:
    """Called from the WatchBatch stream (its generator is on the await chain), not from a
    driver or another handler."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_watch_batch":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


async def test_watch_batch_reports_every_item_in_pages_without_a_task_per_item(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch larger than one page: every item's updates arrive, each message carries
    one item's update, the store is read page by page (never more than a page's rows per
    read) and the stream starts no watcher per item."""
    import bridge.coordinator.service as service

    monkeypatch.setattr(service, "WATCH_PAGE_ITEMS", 4)
    monkeypatch.setattr(service, "WATCH_PAGE_ROWS", 7)
    # No sweep but the first pass (review helper-119 M2): a page stopped at its row limit is
    # read again at the next pass, or the stream stalls past the call's timeout.
    monkeypatch.setattr(service, "WATCH_IDLE_S", 3600.0)
    n = 10
    items = [item(served, f"p-{i}") for i in range(n)] + [item(served, "p-f", sender=FROZEN)]
    await served.stub.SubmitTransfers(batch("day-5", items), timeout=30)
    reads: list[tuple[int, int]] = []
    store = SqlBatchStore.updates

    async def counted(self: SqlBatchStore, cursors: Any, limit: int) -> Any:
        rows = await store(self, cursors, limit)
        reads.append((len(cursors), len(rows)))
        return rows

    monkeypatch.setattr(SqlBatchStore, "updates", counted)
    record_reads: list[tuple[str, int]] = []  # the transfers' reads of the stream
    get_many, get = SqlTransferStore.get_many, SqlTransferStore.get

    async def many(self: SqlTransferStore, tids: Any) -> Any:
        if _in_stream():
            record_reads.append(("get_many", len(tids)))
        return await get_many(self, tids)

    async def one(self: SqlTransferStore, tid: bytes) -> Any:
        if _in_stream():
            record_reads.append(("get", 1))
        return await get(self, tid)

    monkeypatch.setattr(SqlTransferStore, "get_many", many)
    monkeypatch.setattr(SqlTransferStore, "get", one)
    from bridge.coordinator.coalesce import FLUSH_TASK_NAME

    def stream_tasks() -> int:
        """The tasks of the gRPC service and its interceptors (a watcher per item would be
        one of them); the drivers' own tasks (gathers, coalesced flushes) come and go with
        the transfers' steps and are not the stream's."""
        count = 0
        for t in asyncio.all_tasks():
            code = getattr(t.get_coro(), "cr_code", None)
            where = code.co_filename if code is not None else ""
            if t.get_name() != FLUSH_TASK_NAME and where.endswith(
                ("coordinator/service.py", "rpc/authz.py", "obs/rpc.py")
            ):
                count += 1
        return count

    tasks_before = stream_tasks()
    seen: dict[int, list[int]] = {}
    errors: list[int] = []
    async for message in served.stub.WatchBatch(
        S.WatchBatchRequest(batch_id="day-5", source_ledger="a"), timeout=60
    ):
        assert len(message.SerializeToString()) < 4096  # one item's update per message
        if message.HasField("error"):
            errors.append(message.index)
            continue
        seen.setdefault(message.index, []).append(message.update.sequence)
        assert stream_tasks() <= tasks_before + 8  # no task per item
    assert errors == [n]
    assert sorted(seen) == list(range(n))
    for sequences in seen.values():
        assert sequences == list(range(1, len(sequences) + 1))  # in order, no gap, no repeat
    assert all(c <= 4 and r <= 7 for c, r in reads), reads
    # the updates' transfers are read once per page of updates, never once per update
    assert record_reads and all(kind == "get_many" for kind, _ in record_reads), record_reads
    assert len(record_reads) <= len(reads)
    assert sum(len(v) for v in seen.values()) > len(record_reads)
    for i in range(n):
        record = await served.store.get_by_key("a", f"p-{i}")
        assert record is not None and record.state.terminal
    # Resuming after the last sequence of every item ends at once with nothing new, and
    # reads no transfer (nothing is sent).
    record_reads.clear()
    after = [seen[i][-1] for i in range(n)] + [1]
    resumed = [
        m
        async for m in served.stub.WatchBatch(
            S.WatchBatchRequest(batch_id="day-5", source_ledger="a", after_sequence=after),
            timeout=30,
        )
    ]
    assert resumed == []
    assert record_reads == []


async def test_a_wake_reads_only_the_items_announced_and_a_sweep_finds_the_rest(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-117 #5: a wake of a WatchBatch stream read every unfinished item again,
    so each state change of any item cost a probe of the whole batch (page by page). Now a
    wake reads the items announced as changed; every ``WATCH_IDLE_S`` the stream reads all of
    them, which reports an update that was never announced."""
    import bridge.coordinator.service as service

    monkeypatch.setattr(service, "WATCH_PAGE_ITEMS", 4)
    monkeypatch.setattr(service, "WATCH_IDLE_S", 3600.0)  # no sweep but the first pass
    n = 12
    for relayer in served.relayers.values():
        relayer.open.clear()  # every lock waits: the transfers stay open
    await served.stub.SubmitTransfers(
        batch("day-w", [item(served, f"w-{i}") for i in range(n)]), timeout=30
    )
    tids = []
    for i in range(n):
        record = await served.store.get_by_key("a", f"w-{i}")
        assert record is not None
        tids.append(record.transfer_id)
    reads: list[int] = []  # cursors per store read of the stream
    store = SqlBatchStore.updates

    async def counted(self: SqlBatchStore, cursors: Any, limit: int) -> Any:
        reads.append(len(cursors))
        return await store(self, cursors, limit)

    monkeypatch.setattr(SqlBatchStore, "updates", counted)
    last: dict[int, int] = {}

    async def follow(call: Any) -> None:
        async for message in call:
            if not message.HasField("error"):
                last[message.index] = message.update.sequence

    async def caught_up() -> bool:
        for i, tid in enumerate(tids):
            history = await served.store.history(tid, 0)
            if not history or last.get(i) != history[-1].sequence:
                return False
        return True

    watching = asyncio.create_task(
        follow(served.stub.WatchBatch(S.WatchBatchRequest(batch_id="day-w", source_ledger="a")))
    )
    try:
        await eventually(caught_up, 10, "every item's updates so far reported")
        assert sum(reads) >= n  # the first pass reads every item
        await asyncio.sleep(0.3)
        reads.clear()
        served.coordinator._ctx.notify(tids[5])  # one item announced
        await eventually(lambda: asyncio.sleep(0, reads), 5, "the announced item read")
        await asyncio.sleep(0.3)
        assert reads == [1], reads  # that item alone, once (it was n, in pages of 4)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    # A second stream (a fresh client) while one item's announcements are lost: the
    # periodic sweep reports its updates all the same, in order, up to its terminal one.
    monkeypatch.setattr(service, "WATCH_IDLE_S", 0.3)
    from bridge.coordinator.context import EngineContext

    notify = EngineContext.notify

    def losing(ctx: EngineContext, tid: bytes) -> None:
        if tid != tids[7]:
            notify(ctx, tid)

    monkeypatch.setattr(EngineContext, "notify", losing)
    seen: dict[int, list[int]] = {}
    call = served.stub.WatchBatch(
        S.WatchBatchRequest(batch_id="day-w", source_ledger="a"), timeout=60
    )
    async for message in call:
        assert not message.HasField("error"), message
        seen.setdefault(message.index, []).append(message.update.sequence)
        if len(seen) == 1:  # the stream's first pass is done: now the items move
            for relayer in served.relayers.values():
                relayer.open.set()
    assert sorted(seen) == list(range(n))
    for i, tid in enumerate(tids):
        history = await served.store.history(tid, 0)
        assert history[-1].state.terminal
        assert seen[i] == [u.sequence for u in history]  # every update, in order, once


def _reports(messages: list[S.WatchBatchResponse], grouped: bool) -> list[tuple[Any, ...]]:
    """Every report of a watch, in stream order, whichever way the messages carry them."""
    out = []
    for m in messages:
        if grouped:
            assert not m.HasField("update") and not m.HasField("error") and m.index == 0
            assert len(m.items) >= 1  # never an empty message
        else:
            assert len(m.items) == 0
        for r in m.items if grouped else [m]:
            update = (r.update.sequence, r.update.state) if r.HasField("update") else None
            error = r.error.reason if r.HasField("error") else None
            out.append((r.index, r.idempotency_key, update, error))
    return out


async def _watched(served: Served, request: S.WatchBatchRequest) -> list[S.WatchBatchResponse]:
    return [m async for m in served.stub.WatchBatch(request, timeout=60)]


async def test_watch_batch_groups_reports_when_asked_and_reports_the_same(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_items_per_message > 1: each message carries up to that many reports in
    ``items`` (its own fields unset), a page's reports together, never an empty message;
    the reports, their order and the resume rule are those of one report per message."""
    import bridge.coordinator.service as service

    monkeypatch.setattr(service, "WATCH_PAGE_ITEMS", 4)
    monkeypatch.setattr(service, "WATCH_PAGE_ROWS", 7)
    n = 10
    refused = [item(served, f"gf-{i}", sender=FROZEN) for i in range(3)]
    items = [item(served, f"g-{i}") for i in range(n)] + refused
    await served.stub.SubmitTransfers(batch("day-g", items), timeout=30)
    # Watched live, grouped by 3: every item reported, in order, no gap, no repeat.
    live = await _watched(
        served, S.WatchBatchRequest(batch_id="day-g", source_ledger="a", max_items_per_message=3)
    )
    reports = _reports(live, grouped=True)
    assert all(len(m.items) <= 3 for m in live)
    assert len(live) < len(reports)  # grouped: fewer messages than reports
    assert [r[0] for r in reports[:3]] == [n, n + 1, n + 2]  # the refusals first, together
    assert len(live[0].items) == 3 and all(r[3] == "HOLDER_FROZEN" for r in reports[:3])
    seen: dict[int, list[int]] = {}
    for index, key, update, _error in reports[3:]:
        assert key == f"g-{index}" and update is not None
        seen.setdefault(index, []).append(update[0])
    assert sorted(seen) == list(range(n))
    assert all(s == list(range(1, len(s) + 1)) for s in seen.values())
    # Watched again after the end: the same reports one per message and grouped (one page
    # per message when the group is large enough; a value past the cap is taken as it).
    single = _reports(
        await _watched(served, S.WatchBatchRequest(batch_id="day-g", source_ledger="a")), False
    )
    grouped = await _watched(
        served,
        S.WatchBatchRequest(batch_id="day-g", source_ledger="a", max_items_per_message=2**32 - 1),
    )
    assert _reports(grouped, grouped=True) == single
    # The live watch saw the same reports (interleaved as they happened).
    assert sorted(r for r in single if r[2]) == sorted(r for r in reports if r[2])
    assert max(len(m.items) for m in grouped) > 3 and all(len(m.items) <= 7 for m in grouped)
    # max_items_per_message 1 is one report per message, as 0 is.
    one = await _watched(
        served, S.WatchBatchRequest(batch_id="day-g", source_ledger="a", max_items_per_message=1)
    )
    assert _reports(one, grouped=False) == single
    # Resumed after every item's last update, grouped: the refusals are not reported again
    # (their entries are not 0) and the stream ends with nothing.
    after = [seen[i][-1] for i in range(n)] + [1, 1, 1]
    resumed = await _watched(
        served,
        S.WatchBatchRequest(
            batch_id="day-g", source_ledger="a", after_sequence=after, max_items_per_message=50
        ),
    )
    assert resumed == []
    # Resumed half way: exactly the reports after each item's cursor.
    half = [seen[i][len(seen[i]) // 2 - 1] if len(seen[i]) > 1 else 0 for i in range(n)] + [1] * 3
    rest = _reports(
        await _watched(
            served,
            S.WatchBatchRequest(
                batch_id="day-g", source_ledger="a", after_sequence=half, max_items_per_message=5
            ),
        ),
        grouped=True,
    )
    expected = [r for r in single if r[2] is not None and r[2][0] > half[r[0]]]
    assert rest == expected


async def test_a_grouped_watch_message_is_bounded_in_bytes_and_by_the_cap(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grouped message holds at most WATCH_GROUP_BYTES of reports (a report alone may be
    larger: then it goes alone) and at most WATCH_GROUP_MAX reports, whatever was asked."""
    import bridge.coordinator.service as service

    frozen = [item(served, f"b-f{i}", sender=FROZEN) for i in range(4)]
    items = [item(served, f"b-{i}") for i in range(4)] + frozen
    await served.stub.SubmitTransfers(batch("day-b", items), timeout=30)

    async def all_terminal() -> bool:
        records = [await served.store.get_by_key("a", f"b-{i}") for i in range(4)]
        return all(r is not None and r.state.terminal for r in records)

    await eventually(all_terminal, 30, "every item terminal")
    request = S.WatchBatchRequest(batch_id="day-b", source_ledger="a", max_items_per_message=100)
    whole = await _watched(served, request)
    monkeypatch.setattr(service, "WATCH_GROUP_BYTES", 1)  # smaller than any report
    alone = await _watched(served, request)
    assert all(len(m.items) == 1 for m in alone)
    assert _reports(alone, grouped=True) == _reports(whole, grouped=True)
    assert len(alone) == len(_reports(whole, grouped=True)) > len(whole)
    size = max(m.items[0].ByteSize() for m in alone)
    bound = 2 * size + 16  # two of the largest reports fit
    monkeypatch.setattr(service, "WATCH_GROUP_BYTES", bound)
    pairs = await _watched(served, request)
    assert max(len(m.items) for m in pairs) >= 2
    assert all(sum(i.ByteSize() + 8 for i in m.items) <= bound for m in pairs)
    assert len(pairs) > len(whole)  # the bound split what one message held
    assert _reports(pairs, grouped=True) == _reports(whole, grouped=True)
    monkeypatch.setattr(service, "WATCH_GROUP_BYTES", 1 << 20)
    monkeypatch.setattr(service, "WATCH_GROUP_MAX", 3)
    capped = await _watched(served, request)
    assert max(len(m.items) for m in capped) == 3
    assert _reports(capped, grouped=True) == _reports(whole, grouped=True)
    # The four refusals come first, split by the cap (3, then 1), each reported once.
    assert [len(m.items) for m in capped[:2]] == [3, 1]
    assert [r[0] for m in capped[:2] for r in _reports([m], grouped=True)] == [4, 5, 6, 7]


# ---- issue 14: concurrent admission, recorded in item order


async def test_a_batch_is_checked_concurrently_and_recorded_in_item_order(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items' ledger reads overlap (here a later item's read answers first), yet the store
    records them in batch order (the sequence a lane's flow-limit queue serves in), with
    one check per item and a refusal confined to its item."""
    n = 20
    senders = ["0x" + f"{0x50 + i:02x}" * 20 for i in range(n)]
    delay = {s: 0.004 * (n - i) for i, s in enumerate(senders)}
    base = SlowRelayer.holder
    state = {"running": 0, "most": 0}

    async def overlapping(self: SlowRelayer, security: str, holder: str) -> HolderStatus:
        state["running"] += 1
        state["most"] = max(state["most"], state["running"])
        try:
            await asyncio.sleep(delay.get(holder, 0.0))
            return await base(self, security, holder)
        finally:
            state["running"] -= 1

    monkeypatch.setattr(SlowRelayer, "holder", overlapping)
    items = [item(served, f"o-{i}", sender=s) for i, s in enumerate(senders)]
    items[7] = item(served, "o-7", sender=FROZEN)
    resp = await served.stub.SubmitTransfers(batch("day-order", items), timeout=60)
    expect = [OUT.BATCH_ITEM_OUTCOME_CREATED] * n
    expect[7] = OUT.BATCH_ITEM_OUTCOME_REFUSED
    assert outcomes(resp) == expect
    assert state["most"] > 2  # the checks overlapped
    assert served.submitted == Counter({f"o-{i}": 1 for i in range(n)})
    recorded, _ = await served.store.list_transfers(None, None, 100, 0)
    assert [r.request.idempotency_key for r in recorded] == [f"o-{i}" for i in range(n) if i != 7]
    created = [r.created_at for r in recorded]
    assert created == sorted(created)


# ---- one unreadable item (issue 14: a batch is never all-or-nothing across items)


async def test_an_unreadable_history_row_fails_only_its_items_report(served: Served) -> None:
    """Review helper-116 L5: a ``transfer_updates`` row whose state this release does not
    know (damaged, or written by a newer release) made every read of the page fail, so the
    whole WatchBatch failed INTERNAL. Now that item alone is reported INTERNAL once, after
    its readable updates, and no longer followed; the others go on to their end. A client
    that already has that row resumes past it and gets the item's later updates."""
    request = batch("day-h", [item(served, f"h-{i}") for i in range(3)])
    first = await served.stub.SubmitTransfers(request, timeout=30)
    assert outcomes(first) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 3
    for i in range(3):
        await eventually(lambda i=i: _terminal(served, f"h-{i}"), 30, f"transfer h-{i} terminal")
    bad = bytes.fromhex(first.results[1].transfer.transfer_id[2:])
    history = await served.store.history(bad, 0)
    assert len(history) >= 3

    async def set_second_state(value: int) -> None:
        def run(db: Any) -> None:
            db.execute(
                "UPDATE transfer_updates SET state = ? WHERE transfer_id = ? AND sequence = 2",
                (value, bad),
            )

        await served.store._db.write(run)

    await set_second_state(99)  # no TransferState has it
    reports = _reports(
        await _watched(served, S.WatchBatchRequest(batch_id="day-h", source_ledger="a")), False
    )
    mine = [r for r in reports if r[0] == 1]
    assert [(r[2][0] if r[2] else None, r[3]) for r in mine] == [(1, None), (None, "INTERNAL")]
    for index in (0, 2):
        theirs = [r[2] for r in reports if r[0] == index]
        assert theirs[-1][1] == S.TRANSFER_STATE_COMMITTED
        assert [u[0] for u in theirs] == list(range(1, len(theirs) + 1))
    # A client that has the bad row (it was readable when sent): passed over, not an error.
    resumed = _reports(
        await _watched(
            served,
            S.WatchBatchRequest(batch_id="day-h", source_ledger="a", after_sequence=[99, 2, 99]),
        ),
        False,
    )
    assert [(r[0], r[2][0], r[3]) for r in resumed] == [(1, u.sequence, None) for u in history[2:]]
    assert resumed[-1][2][1] == S.TRANSFER_STATE_COMMITTED
    await set_second_state(int(history[1].state))  # the operator's repair
    repaired = _reports(
        await _watched(served, S.WatchBatchRequest(batch_id="day-h", source_ledger="a")), False
    )
    assert [r[2][0] for r in repaired if r[0] == 1] == [u.sequence for u in history]


async def test_an_unreadable_item_fails_only_its_own_result_and_report(served: Served) -> None:
    """One item's stored transfer row cannot be parsed (damaged, or of a newer release).
    Before, the batch's replayed answer and its WatchBatch failed as a whole (INTERNAL):
    a brokerage learned nothing of its other items. Now that item alone carries the error
    (INTERNAL, a public text naming the transfer, never the row's content; its outcome as
    recorded, no transfer), the others are answered and watched to their end, and once the
    operator repaired the row a replay answers it and a watch resumes it to COMMITTED."""
    from tests.unit.test_unreadable_rows import damage

    served.relayers["a"].open.clear()  # the transfers stay open while the row is damaged
    request = batch("day-u", [item(served, f"u-{i}") for i in range(3)])
    first = await served.stub.SubmitTransfers(request, timeout=30)
    assert outcomes(first) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 3
    bad = bytes.fromhex(first.results[1].transfer.transfer_id[2:])

    def request_column(db: Any) -> str:
        return str(db.execute("SELECT request FROM transfers WHERE transfer_id = ?", (bad,))
                   .fetchone()[0])  # fmt: skip

    original = await served.store._db.read(request_column)
    await damage(served.store, bad, "request", '{"not": json')

    replay = await served.stub.SubmitTransfers(request, timeout=30)
    assert outcomes(replay) == [OUT.BATCH_ITEM_OUTCOME_CREATED] * 3, "the outcomes stand"
    assert [r.HasField("transfer") for r in replay.results] == [True, False, True]
    assert [r.HasField("error") for r in replay.results] == [False, True, False]
    error = replay.results[1].error
    assert (error.code, error.reason) == ("INTERNAL", "INTERNAL")
    public = f"transfer 0x{bad.hex()}: its record cannot be read now; the coordinator's operator is alerted"
    assert error.message == public, "the transfer id only, nothing of the row"
    # Review helper-116 M3: INTERNAL alone would say retryable, which a batch client reads
    # as "nothing recorded, submit again": this transfer exists.
    assert dict(error.metadata) == {"retryable": "false", "recorded": "true"}
    assert [r.transfer.transfer_id for r in replay.results[::2]] == [
        r.transfer.transfer_id for r in first.results[::2]
    ]

    served.relayers["a"].open.set()
    messages = await _watched(
        served, S.WatchBatchRequest(batch_id="day-u", source_ledger="a", max_items_per_message=8)
    )
    reports = _reports(messages, grouped=True)
    assert [r for r in reports if r[3] is not None] == [(1, "u-1", None, "INTERNAL")]
    (watched_error,) = [i.error for m in messages for i in m.items if i.HasField("error")]
    assert watched_error == error
    last: dict[int, tuple[int, int]] = {}
    for index, _, update, _ in reports:
        if update is not None:
            assert index != 1, "no update of the unreadable item follows its error"
            last[index] = update
    assert sorted(last) == [0, 2]
    assert all(state == S.TRANSFER_STATE_COMMITTED for _, state in last.values())

    # Review helper-116 M1: a client that already has the item's last update (or a row
    # broken after it was sent): nothing of it is read with an update, and its driver no
    # longer moves it; the stream still reports it and ends.
    def last_sequence(db: Any) -> int:
        return int(db.execute("SELECT MAX(sequence) FROM transfer_updates WHERE transfer_id = ?",
                              (bad,)).fetchone()[0])  # fmt: skip

    up_to_date = [last[0][0], await served.store._db.read(last_sequence), last[2][0]]
    caught_up = await asyncio.wait_for(
        _watched(
            served,
            S.WatchBatchRequest(batch_id="day-u", source_ledger="a", after_sequence=up_to_date),
        ),
        timeout=20,
    )
    assert _reports(caught_up, grouped=False) == [(1, "u-1", None, "INTERNAL")]

    await damage(served.store, bad, "request", original)  # the operator's repair
    repaired = await served.stub.SubmitTransfers(request, timeout=30)
    assert [r.HasField("error") for r in repaired.results] == [False] * 3
    assert repaired.results[1].transfer.transfer_id == "0x" + bad.hex()
    after = [last[0][0], 0, last[2][0]]
    resumed = _reports(
        await _watched(
            served,
            S.WatchBatchRequest(batch_id="day-u", source_ledger="a", after_sequence=after),
        ),
        grouped=False,
    )
    assert {index for index, *_ in resumed} == {1}, "the others' updates are not sent again"
    assert resumed[-1][2][1] == S.TRANSFER_STATE_COMMITTED and resumed[-1][3] is None
    assert served.store.unreadable.count == 0
