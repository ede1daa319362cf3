"""The coordinator's batched steps (issue 14) with in-memory relayers and committee that
take batches: per-item control flow only (the real ledgers are in tests/e2e).

Every transfer of a burst reaches the same end it would alone; a ledger refusal naming an
item fails that item only and the rest go again without it; a refusal naming no item, or an
answer about transfers the relayer was not sent, falls back to single steps; members
refusing an item refuse it alone; decisions are recorded with batch certificates and their
proofs before any leg applies them; the bridge never batch-locks an adopted transfer."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge.config import BatchingConfig, dump_toml, load_network
from bridge.coordinator.batch_certs import (
    BatchItemsRefused,
    CertifiedBatch,
    CertifiedItem,
    ledger_batch,
)
from bridge.coordinator.clients import LedgerDomain
from bridge.coordinator.db import DatabaseUnavailable
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.lease import Fenced
from bridge.coordinator.records import TransferOrigin
from bridge.coordinator.store import SqliteTransferStore
from bridge.core.batch import BatchCertificate
from bridge.core.reasons import ErrorReason
from bridge.domain.batch_certified import BatchCertified
from bridge.domain.claim_batches import RefusedItem
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import (
    BridgeReason,
    InvalidInput,
    LedgerRejected,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.ledger_batches import (
    BatchAnswerMismatch,
    BatchItem,
    BatchItemResult,
    BatchOutcome,
)
from bridge.domain.legs import Action, Leg, LegState, SignatureSet, TxOutcome
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState
from tests.support import eventually
from tests.unit.test_coordinator_driver import (
    BROKER_A,
    ISIN,
    FakeCommittee,
    FakeRelayer,
    check_kept,
    count_calls,
    final,
    lock_event,
    request,
    submit,
)

pytestmark = [pytest.mark.unit, pytest.mark.batch]


@dataclass
class BatchRelayer(FakeRelayer):
    """A FakeRelayer that also takes batches: one invocation, all items or none."""

    batches: list[tuple[Action, int]] = field(default_factory=list)
    refuse: dict[bytes, ErrorReason] = field(default_factory=dict)
    refuse_whole: int = 0  # refuse this many batches with no item named
    foreign: int = 0  # answer this many batches about another transfer
    certificates: list[BatchCertificate | None] = field(default_factory=list)
    limit: int = 100  # what GetLedgerInfo reports (0: a relayer before SubmitBatch)
    limit_asked: int = 0
    mismatch: int = 0  # answer this many batches as the gateway does a lying relayer
    shrunk_to: int = 0  # refuse batches above this many items InvalidInput (0: never)
    skip: set[bytes] = field(default_factory=set)  # applied, but answered as skipped
    txs: list[tuple[Action, str, tuple[bytes, ...]]] = field(default_factory=list)

    async def max_batch_items(self) -> int:
        self.limit_asked += 1
        return self.limit

    async def submit_batch(
        self, action: Action, items: Sequence[BatchItem], certificate: BatchCertificate | None
    ) -> BatchOutcome:
        await asyncio.sleep(0.03)  # a ledger round trip: later drivers gather meanwhile
        if self.mismatch:
            self.mismatch -= 1
            raise BatchAnswerMismatch("relayer of x answered about other transfers")
        if self.shrunk_to and len(items) > self.shrunk_to:
            raise InvalidInput(f"a batch carries at most {self.shrunk_to} items")
        self.batches.append((action, len(items)))
        self.certificates.append(certificate)
        for i, item in enumerate(items):
            reason = self.refuse.get(item.terms.transfer_id)
            if reason is not None:
                raise LedgerRejected(reason, f"item {i}", {"item": i})
        if self.refuse_whole:
            self.refuse_whole -= 1
            raise LedgerRejected(ErrorReason.INVALID_BATCH, "no item named")
        results = []
        tx = "0x" + secrets.token_hex(32)
        for item in items:
            await self.submit(action, item.terms, None, item.instruction)
            self.submitted.pop()  # counted as a batch, not as a single step
            tid = item.terms.transfer_id
            if self.foreign:
                tid = secrets.token_bytes(32)
            leg = Leg.OUTBOUND if action is Action.LOCK else Leg.INBOUND
            skipped = tid in self.skip
            results.append(
                BatchItemResult(tid, leg, LegState.LOCKED, item.terms.terms_hash, 0, skipped)
            )
        if self.foreign:
            self.foreign -= 1
        self.txs.append((action, tx, tuple(r.transfer_id for r in results if not r.skipped)))
        return BatchOutcome(tx, 2, tuple(results))


class BatchCommittee(FakeCommittee):
    """Signs batches (one fake signature per root); may refuse chosen items once."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[ClaimKind, int]] = []
        self.refuse_once: set[bytes] = set()
        self.refuse_always: set[bytes] = set()
        self.refusal_text = "target leg not prepared"

    async def certify_batch(
        self,
        kind: ClaimKind,
        terms: Sequence[TransferTerms],
        ledgers: Sequence[LedgerDomain],
        epochs: object = None,
    ) -> dict[str, CertifiedBatch]:
        self.batches.append((kind, len(terms)))
        refused = [
            RefusedItem(i, BridgeReason.CLAIM_REFUSED, True, self.refusal_text)
            for i, t in enumerate(terms)
            if t.transfer_id in self.refuse_once | self.refuse_always
        ]
        if refused:
            self.refuse_once -= {terms[r.index].transfer_id for r in refused}
            raise BatchItemsRefused(refused)
        out = {}
        for d in ledgers:
            batch = ledger_batch(d, 1, kind, terms)
            cert = BatchCertificate(1, int(kind), batch.root, batch.count, (b"\1" * 65,))
            items = tuple(CertifiedItem(t, batch.proof(_claim(d, kind, t))) for t in terms)
            out[d.name] = CertifiedBatch(d.name, cert, items)
        return out


def _claim(d: LedgerDomain, kind: ClaimKind, t: TransferTerms):  # type: ignore[no-untyped-def]
    from bridge.core.batch import BatchClaim

    return BatchClaim(
        d.network_word, d.ledger_word, d.bridge_word, 1, int(kind), t.transfer_id, t.terms_hash
    )


@pytest.fixture
async def batching(tmp_path: Path):
    (tmp_path / "network.toml").write_text(
        dump_toml(
            {
                "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "22" * 20]},
                "securities": {"isins": [ISIN]},
                "ledgers": [
                    {"id": "a", "kind": "evm", "rpc_url": "x", "bridge": "0x" + "aa" * 20,
                     "chain_id": 1, "finality_depth": 0},
                    {"id": "b", "kind": "evm", "rpc_url": "y", "bridge": "0x" + "bb" * 20,
                     "chain_id": 2, "finality_depth": 0},
                ],
                "instruction_keys": {"a": [BROKER_A.address.hex().join(("0x", ""))]},
            }
        )
    )  # fmt: skip
    network = load_network(tmp_path / "network.toml")
    store = SqliteTransferStore(tmp_path / "c.sqlite")
    relayers = {"a": BatchRelayer("a"), "b": BatchRelayer("b")}
    committee = BatchCommittee()
    c = Coordinator(
        network, store, relayers, committee, transfer_ttl=60, max_backoff=0.2,  # type: ignore[arg-type]
        sweep_every=0.1, batching=BatchingConfig(enabled=True, max_items=8, max_in_flight=1),
    )  # fmt: skip
    await c.start()
    yield c, relayers, committee, store
    await c.stop()
    store.close()


async def burst(c: Coordinator, n: int, prefix: str = "k") -> list[bytes]:
    records = await asyncio.gather(*(submit(c, request(f"{prefix}{i}")) for i in range(n)))
    return [r.transfer_id for r, _ in records]


async def test_a_burst_commits_in_batches(batching) -> None:
    c, relayers, committee, store = batching
    checked = check_kept(c, store)  # issue 14: each step's kept record is the stored one
    tids = await burst(c, 20)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert len(checked) == 20 * 4 and not [m for m in checked if m.startswith("MISMATCH")]
    a, b = relayers["a"], relayers["b"]
    locks = [n for act, n in a.batches if act is Action.LOCK]
    assert sum(locks) == 20 and len(locks) < 20 and max(locks) <= 8
    assert sum(n for act, n in b.batches if act is Action.PREPARE) == 20
    assert sum(n for act, n in a.batches if act is Action.COMMIT) == 20
    assert sum(n for act, n in b.batches if act is Action.COMMIT) == 20
    assert a.submitted == [] and b.submitted == []  # no single step was needed
    assert committee.kinds == []  # no single certificate either
    assert sum(n for k, n in committee.batches if k is ClaimKind.COMMIT) == 20
    # every decision holds, per ledger, its batch certificate and its own proof, and each
    # leg applied it under exactly that certificate
    for tid in tids:
        d = await store.decision(tid)
        assert d is not None and d.kind is ClaimKind.COMMIT
        assert all(isinstance(x, BatchCertified) for x in d.certificates.values())
        assert d.certificates["b"].certificate in b.certificates
    record = await store.get(tids[0])
    assert set(record.transactions) == {"lock", "prepare", "burn", "mint"}


async def test_max_items_is_bounded_by_the_ledger_kinds(batching, tmp_path: Path) -> None:
    c = batching[0]
    assert c._batcher.max_items == 8  # as configured, under EVM's 100
    wide = Coordinator(
        c._network, batching[3], {}, batching[2], transfer_ttl=60,  # type: ignore[arg-type]
        batching=BatchingConfig(enabled=True, max_items=150),
    )  # fmt: skip
    assert wide._batcher.max_items == 100


async def test_batches_respect_the_relayers_limit_and_a_relayer_without_batches(
    batching,
) -> None:
    c, relayers, committee, store = batching
    relayers["a"].limit = 3
    relayers["b"].limit = 0  # predates SubmitBatch: every step on b alone
    tids = await burst(c, 10, "limits")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert max(n for _, n in relayers["a"].batches) <= 3
    assert sum(n for act, n in relayers["a"].batches if act is Action.LOCK) == 10
    assert relayers["b"].batches == []
    assert relayers["b"].submitted.count(Action.PREPARE) == 10
    assert relayers["b"].submitted.count(Action.COMMIT) == 10
    assert relayers["a"].limit_asked == 1  # asked once, then known
    assert all(k is not ClaimKind.LOCKED for k, _ in committee.batches)  # none wasted on b
    for tid in tids:  # b's share re-certified alone, a's kept its batch certificate
        d = await store.decision(tid)
        assert isinstance(d.certificates["a"], BatchCertified)
        assert isinstance(d.certificates["b"], SignatureSet)


async def test_a_lone_transfer_is_not_delayed(batching) -> None:
    c, relayers, _, store = batching
    (tid,) = await burst(c, 1, "lone")
    assert await final(store, tid) is TransferState.COMMITTED
    assert [n for _, n in relayers["a"].batches] == [1, 1]


async def test_a_refusal_naming_an_item_fails_only_that_item(batching) -> None:
    c, relayers, _, store = batching
    a = relayers["a"]
    # the refused transfer's id is known only once submitted: refuse the lock of the third
    original = a.submit_batch
    victim: list[bytes] = []

    async def refusing(action, items, certificate):  # type: ignore[no-untyped-def]
        if action is Action.LOCK and not victim and len(items) > 2:
            victim.append(items[2].terms.transfer_id)
            a.refuse[victim[0]] = ErrorReason.INSUFFICIENT_BALANCE
        return await original(action, items, certificate)

    a.submit_batch = refusing  # type: ignore[method-assign]
    tids = await burst(c, 12)
    states = {tid: await final(store, tid) for tid in tids}
    assert victim, "a lock batch of more than two items was sent"
    assert states.pop(victim[0]) is TransferState.FAILED
    assert set(states.values()) == {TransferState.COMMITTED}
    failed = await store.get(victim[0])
    assert "InsufficientBalance" in failed.reason
    assert (victim[0], Leg.INBOUND) not in relayers["b"].legs  # nothing prepared for it
    assert a.submitted == []  # the rest went again as a batch, not one by one


async def test_a_refusal_naming_no_item_falls_back_to_single_steps(batching) -> None:
    c, relayers, _, store = batching
    relayers["a"].refuse_whole = 1
    tids = await burst(c, 6)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert Action.LOCK in relayers["a"].submitted  # single locks for the refused batch


@pytest.mark.security
async def test_an_answer_about_other_transfers_is_not_believed(batching) -> None:
    c, relayers, _, store = batching
    relayers["b"].foreign = 1  # the first PREPARE batch answers about another transfer
    tids = await burst(c, 5)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert Action.PREPARE in relayers["b"].submitted  # re-done alone, idempotently
    for tid in tids:
        # no transaction of the disbelieved answer is recorded as a prepare of these
        assert "prepare" in (await store.get(tid)).transactions


@pytest.mark.security
async def test_a_relayer_lying_about_a_batch_gets_its_items_stepped_alone(batching) -> None:
    """The gateway's BatchAnswerMismatch (an answer about other transfers, or malformed):
    those items take single steps rather than going back into a batch (review s19
    finding 2), and nothing of the lie is recorded."""
    c, relayers, _, store = batching
    relayers["a"].mismatch = 1  # the first LOCK batch
    tids = await burst(c, 5, prefix="m")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert Action.LOCK in relayers["a"].submitted  # stepped alone, idempotently
    assert relayers["a"].mismatch == 0


async def test_a_relayer_taking_fewer_items_than_it_said_is_asked_again(batching) -> None:
    """A relayer replaced by one taking fewer items refuses the larger batch InvalidInput:
    those items step alone and the limit is asked again before the next batch (review
    s19 finding 3), so batches resume at the new size."""
    c, relayers, _, store = batching
    a = relayers["a"]
    (warm,) = await burst(c, 1, prefix="warm")
    assert await final(store, warm) is TransferState.COMMITTED  # the limit (100) is known
    asked = a.limit_asked
    assert asked >= 1
    a.limit, a.shrunk_to = 2, 2
    tids = await burst(c, 12, prefix="s")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert a.limit_asked > asked
    assert c._batcher is not None and c._batcher._limits["a"][0] == 2  # learnt again
    before = len(a.batches)
    more = await burst(c, 6, prefix="t")
    for tid in more:
        assert await final(store, tid) is TransferState.COMMITTED
    assert len(a.batches) > before and all(n <= 2 for _, n in a.batches[before:])


async def test_members_refusing_an_item_refuse_it_alone(batching) -> None:
    c, relayers, committee, store = batching
    b = relayers["b"]
    original = committee.certify_batch
    victim: list[bytes] = []
    rounds: list[frozenset[bytes]] = []  # every COMMIT batch asked for, in order

    async def once(kind, terms, ledgers, epochs=None):  # type: ignore[no-untyped-def]
        if kind is ClaimKind.COMMIT:
            rounds.append(frozenset(t.transfer_id for t in terms))
            if not victim and len(terms) > 1:
                victim.append(terms[1].transfer_id)
                committee.refuse_once.add(victim[0])
        return await original(kind, terms, ledgers, epochs)

    committee.certify_batch = once  # type: ignore[method-assign]
    tids = await burst(c, 8)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert victim
    # the refused batch, then the same batch without the refused item (other lanes' batches
    # may come between), then the item again on its own round
    refused = next(n for n, r in enumerate(rounds) if victim[0] in r)
    assert rounds[refused] - {victim[0]} in rounds[refused + 1 :]
    assert any(victim[0] in r for r in rounds[refused + 1 :])
    d = await store.decision(victim[0])
    assert d is not None and d.kind is ClaimKind.COMMIT
    assert sum(n for act, n in b.batches if act is Action.COMMIT) == 8


@pytest.mark.security
async def test_a_brokerage_reads_the_members_reason_not_their_words(batching) -> None:
    """Members refusing one item of a batch: the transfer waits with the item's typed
    reason as its public waiting reason; the members' own text (another organisation's
    words) is not in it. Once they sign, it commits."""
    c, _, committee, store = batching
    committee.refusal_text = "URGENT: call +82-2-0000-0000 to release your units"
    original = committee.certify_batch
    victim: list[bytes] = []

    async def refusing(kind, terms, ledgers, epochs=None):  # type: ignore[no-untyped-def]
        if kind is ClaimKind.COMMIT and not victim and len(terms) > 1:
            victim.append(terms[1].transfer_id)
            committee.refuse_always.add(victim[0])
        return await original(kind, terms, ledgers, epochs)

    committee.certify_batch = refusing  # type: ignore[method-assign]
    tids = await burst(c, 6)

    async def waiting() -> str | None:
        if not victim:
            return None
        r = await store.get(victim[0])
        return r.reason if r is not None and "committee refused" in r.reason else None

    reason = await eventually(waiting, 10, "the refused item's waiting reason", interval=0.02)
    assert "CLAIM_REFUSED" in reason and "URGENT" not in reason and "+82" not in reason
    committee.refuse_always.clear()
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED


async def test_a_batch_of_decisions_is_recorded_in_one_store_write(batching) -> None:
    """Each certified COMMIT batch is recorded by one ``record_decisions`` (one transaction),
    not one write per item; each item's decision carries its own share of its batch."""
    c, _, committee, store = batching
    writes: list[int] = []
    original = store.record_decisions

    async def counted(items):  # type: ignore[no-untyped-def]
        writes.append(len(items))
        return await original(items)

    store.record_decisions = counted  # type: ignore[method-assign]
    tids = await burst(c, 12)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert writes == [n for k, n in committee.batches if k is ClaimKind.COMMIT]
    assert sum(writes) == 12 and max(writes) > 1
    shares = [(await store.decision(tid)).certificates["a"] for tid in tids]
    assert len({(s.certificate.root, s.proof) for s in shares}) == 12  # each its own share


async def test_a_failed_decision_write_reaches_every_item_and_they_certify_again(
    batching,
) -> None:
    """The batch's decisions are written all or nothing: when the write fails, every
    certified item gets the error, none is recorded, and the drivers certify again."""
    c, _, committee, store = batching
    original = store.record_decisions
    failed: list[list[bytes]] = []

    async def fails_once(items):  # type: ignore[no-untyped-def]
        if not failed:
            failed.append([tid for tid, _ in items])
            raise DatabaseUnavailable("disk full")
        return await original(items)

    store.record_decisions = fails_once  # type: ignore[method-assign]
    tids = await burst(c, 6)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
        assert (await store.decision(tid)).kind is ClaimKind.COMMIT
    assert failed and len(failed[0]) >= 1
    # the failed batch's items were certified COMMIT twice in all
    assert sum(n for k, n in committee.batches if k is ClaimKind.COMMIT) == 6 + len(failed[0])


async def test_a_batch_records_its_transactions_in_one_store_write(batching) -> None:
    """Issue 14: the transactions of a batched step are recorded by one ``add_transactions``
    per batch (not one write per item), each item under its own step's name (burn on the
    source, mint on the target) with the batch's transaction; an item the batch skipped
    (already applied) is recorded with none."""
    c, relayers, _, store = batching
    writes: list[list[tuple[bytes, str, str]]] = []
    singles: list[str] = []
    batch_write, single_write = store.add_transactions, store.add_transaction

    async def counted(steps):  # type: ignore[no-untyped-def]
        writes.append(list(steps))
        return await batch_write(steps)

    async def single(tid, step, tx):  # type: ignore[no-untyped-def]
        singles.append(step)
        return await single_write(tid, step, tx)

    store.add_transactions = counted  # type: ignore[method-assign]
    store.add_transaction = single  # type: ignore[method-assign]
    a, b = relayers["a"], relayers["b"]
    tids = await burst(c, 12)
    a.skip.add(tids[0])  # its lock lands, answered as already applied
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    assert singles == [], "no step of a batch is recorded alone"
    moved = [(act, tx, items) for act, tx, items in a.txs + b.txs if items]
    assert len(writes) == len(moved) and max(len(w) for w in writes) > 1
    names = {(Action.LOCK, "a"): "lock", (Action.PREPARE, "b"): "prepare",
             (Action.COMMIT, "a"): "burn", (Action.COMMIT, "b"): "mint"}  # fmt: skip
    expected: dict[bytes, dict[str, str]] = {tid: {} for tid in tids}
    for ledger, relayer in (("a", a), ("b", b)):
        for act, tx, items in relayer.txs:
            for tid in items:
                expected[tid][names[(act, ledger)]] = tx
    for tid in tids:
        assert dict((await store.get(tid)).transactions) == expected[tid]
    assert "lock" not in expected[tids[0]], "a skipped item names no transaction"
    assert set(expected[tids[1]]) == {"lock", "prepare", "burn", "mint"}


async def test_a_failed_transactions_write_reaches_every_item_and_they_go_on(batching) -> None:
    """When a batch's transactions cannot be recorded, every item it moved gets the error
    (as a single step's driver does), reads its legs again and goes on: nothing is sent
    twice, and every transfer commits."""
    c, relayers, _, store = batching
    original = store.add_transactions
    failed: list[int] = []

    async def fails_once(steps):  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(len(steps))
            raise DatabaseUnavailable("disk full")
        return await original(steps)

    store.add_transactions = fails_once  # type: ignore[method-assign]
    tids = await burst(c, 6)
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    a = relayers["a"]
    assert failed and failed[0] >= 1
    assert sum(n for act, n in a.batches if act is Action.LOCK) == 6, "no lock sent twice"
    unrecorded = [tid for tid in tids if "lock" not in (await store.get(tid)).transactions]
    assert len(unrecorded) == failed[0], "the failed write's locks stay unnamed, no others"


def _terms(c: Coordinator, n: int) -> TransferTerms:
    a, b = c.domains["a"], c.domains["b"]
    return TransferTerms(
        nonce=n.to_bytes(32, "big"), security=ISIN.encode().ljust(32, b"\0"), amount=1,
        src_ledger=a.ledger_word, src_bridge=a.bridge_word, dst_ledger=b.ledger_word,
        dst_bridge=b.bridge_word, sender=bytes(12) + b"\x11" * 20,
        recipient=bytes(12) + b"\x22" * 20, instructor=bytes(12) + b"\x33" * 20,
        deadline=2**40,
    )  # fmt: skip


async def test_a_failed_record_reaches_only_the_items_the_transaction_moved(batching) -> None:
    """Attacker review L3: an item the batch skipped (already applied) had nothing to
    record and keeps its answer; each moved item gets the write's error."""
    c, relayers, _, store = batching
    items = [BatchItem(_terms(c, n)) for n in range(3)]
    relayers["a"].skip.add(items[1].terms.transfer_id)
    failure = DatabaseUnavailable("disk full")

    async def fails(steps):  # type: ignore[no-untyped-def]
        raise failure

    store.add_transactions = fails  # type: ignore[method-assign]
    answers = await c._batcher._submit("a", Action.LOCK, items, None)  # type: ignore[union-attr]
    assert answers[0] is failure and answers[2] is failure
    skipped = answers[1]
    assert isinstance(skipped, TxOutcome) and skipped.already_applied and skipped.tx_id == ""


@pytest.mark.ha
async def test_a_fenced_record_leaves_the_chunks_not_yet_sent_unsent(batching) -> None:
    """Attacker review L4: once a chunk's record is refused NOT_LEADER (the store fenced
    this coordinator out of its lease), the chunks of the batch not yet sent are not sent;
    every item gets the same answer."""
    c, relayers, _, store = batching
    a = relayers["a"]
    a.limit = 2  # chunks of 2 items
    fenced = Fenced("coord-a", 1, 2, "coord-b")
    writes: list[int] = []

    async def fences(steps):  # type: ignore[no-untyped-def]
        writes.append(len(steps))
        raise fenced

    store.add_transactions = fences  # type: ignore[method-assign]
    items = [BatchItem(_terms(c, n)) for n in range(5)]
    answers = await c._batcher._submit("a", Action.LOCK, items, None)  # type: ignore[union-attr]
    assert a.batches == [(Action.LOCK, 2)], "one chunk sent; the other two never"
    assert writes == [2]
    assert all(answer is fenced for answer in answers)


@pytest.mark.security
async def test_an_adopted_transfer_is_never_batch_locked(batching) -> None:
    c, _, _, store = batching
    (tid,) = await burst(c, 1, "adopted")
    record = dataclasses.replace(await store.get(tid), origin=TransferOrigin.ADOPTED)
    with pytest.raises(PreconditionFailed, match="adopted"):
        await c._batcher.lock(record)


async def test_a_single_decision_is_applied_alone_and_a_batch_one_in_a_batch(batching) -> None:
    """Decisions recorded before batching (SignatureSet) still apply through the single
    step; the batched path is only for batch certificates."""
    c, relayers, committee, store = batching
    committee.certify_batch = None  # type: ignore[assignment]  # any batch certify would crash

    async def no_batches(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise PreconditionFailed("members refuse batches today")

    committee.certify_batch = no_batches  # type: ignore[assignment]
    tids = await burst(c, 3, "single")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
        d = await store.decision(tid)
        assert all(isinstance(x, SignatureSet) for x in d.certificates.values())
    assert relayers["a"].submitted.count(Action.COMMIT) == 3  # applied alone
    assert ClaimKind.COMMIT in committee.kinds


def test_batch_limits_match_the_ledger_kinds() -> None:
    from bridge.coordinator.step_batches import BATCH_LIMITS
    from bridge.ledgers.evm.adapter import MAX_EVM_BATCH_ITEMS
    from bridge.ledgers.fabric.batch import MAX_BATCH_ITEMS

    assert BATCH_LIMITS["evm"] == MAX_EVM_BATCH_ITEMS
    assert BATCH_LIMITS["fabric"] == MAX_BATCH_ITEMS
    assert BATCH_LIMITS["cometbft"] <= MAX_BATCH_ITEMS


class FakeEpochs:
    """The epochs each ledger accepts: always the network file's committee."""

    def __init__(self, committee: object) -> None:
        self.committee = committee
        self.invalidated: list[str] = []

    async def accepted(self, ledgers: list[str]) -> dict[str, tuple[object, ...]]:
        return {n: (self.committee,) for n in ledgers}

    def invalidate(self, ledger: str) -> None:
        self.invalidated.append(ledger)


async def test_a_batch_certificate_refused_for_its_epoch_is_replaced_by_a_single_one(
    batching,
) -> None:
    """The target refuses the COMMIT batch's epoch (a rotation passed): the decision's kind
    stays, its batch certificate for that ledger is swapped for a single-claim one under
    the epoch the ledger accepts, and the single step applies it."""
    c, relayers, committee, store = batching
    epochs = FakeEpochs(c._network.committee)
    c._ctx.epochs = epochs
    b = relayers["b"]
    original = b.submit_batch

    async def refuse_commit_batches(action, items, certificate):  # type: ignore[no-untyped-def]
        if action is Action.COMMIT:
            raise LedgerRejected(ErrorReason.WRONG_EPOCH, "epoch=1")
        return await original(action, items, certificate)

    b.submit_batch = refuse_commit_batches  # type: ignore[method-assign]
    checked = check_kept(c, store)  # a re-certified decision is not kept with its old one
    tids = await burst(c, 3, "epoch")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
        d = await store.decision(tid)
        assert d is not None and d.kind is ClaimKind.COMMIT
        assert isinstance(d.certificates["a"], BatchCertified)  # the source took its batch
        assert isinstance(d.certificates["b"], SignatureSet)  # re-certified alone
    assert checked and not [m for m in checked if m.startswith("MISMATCH")]
    assert "b" in epochs.invalidated
    assert b.submitted.count(Action.COMMIT) == 3  # the mints were single steps
    assert committee.kinds.count(ClaimKind.COMMIT) == 3


@pytest.mark.security
async def test_an_uninstructed_lock_is_never_batch_certified_locked(batching) -> None:
    """SECURITY: an adopted lock whose instructor has no authority over the source's
    accounts gets an ABORT batch certificate (its escrow released), never a LOCKED one."""
    from bridge.domain.ids import LedgerId
    from bridge.domain.legs import LegStatus

    c, relayers, committee, store = batching
    seen: list[tuple[ClaimKind, list[bytes]]] = []
    original = committee.certify_batch

    async def spy(kind, terms, ledgers, epochs=None):  # type: ignore[no-untyped-def]
        seen.append((kind, [t.transfer_id for t in terms]))
        return await original(kind, terms, ledgers, epochs)

    committee.certify_batch = spy  # type: ignore[method-assign]
    word = lambda n: LedgerId(n).word  # noqa: E731
    holder = b"\0" * 12 + b"\x11" * 20
    terms = TransferTerms(
        secrets.token_bytes(32), ISIN.encode().ljust(32, b"\0"), 3, word("a"),
        b"\0" * 12 + b"\xaa" * 20, word("b"), b"\0" * 12 + b"\xbb" * 20, holder, holder,
        b"\0" * 12 + b"\x66" * 20,  # an instructor no brokerage key of ledger a matches
        2**40,
    )  # fmt: skip
    relayers["a"].legs[(terms.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, terms.terms_hash, 0, 4
    )
    event = lock_event(terms, 4, tx="0x02")
    await c.on_events("a", [event], 4)
    assert await final(store, terms.transfer_id) is TransferState.ABORTED
    kinds = {k for k, tids in seen if terms.transfer_id in tids}
    assert kinds == {ClaimKind.ABORT}
    assert (terms.transfer_id, Leg.INBOUND) not in relayers["b"].legs or relayers["b"].legs[
        (terms.transfer_id, Leg.INBOUND)
    ].state is not LegState.PREPARED


# ---- coalesced leg reads (issue 14 item 4)


async def test_a_burst_reads_its_legs_in_coalesced_calls(batching) -> None:
    """With batching on, the drivers' per-step leg reads go out as GetLegs calls carrying
    many transfers: far fewer relayer reads than transfers times steps, and not one
    single-leg read by a driver."""
    c, relayers, _, store = batching
    a, b = relayers["a"], relayers["b"]
    single = count_calls(relayers, "get_leg")
    tids = await burst(c, 20, prefix="r")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    # Each transfer takes five steps (lock, prepare, certify, apply, done); two read both
    # legs: the first step of a transfer just recorded, the prepare after a lock just
    # landed, and the step applying a decision just certified take the legs as known
    # (Stepper.note_new, _remember). So 2 reads a transfer and side, >= 40 (a retried step
    # reads again), not the >= 100 of five.
    print("GetLegs calls:", a.many_reads, b.many_reads)
    assert 0 < a.many_reads < 60 and 0 < b.many_reads < 60, (a.many_reads, b.many_reads)
    # get_leg is now only called by the fakes' own get_legs (once per transfer and read).
    assert 40 <= single["a"] < 100 and 40 <= single["b"] < 100, single


async def test_leg_reads_answer_each_transfer_its_own_leg(tmp_path: Path) -> None:
    """LegReads: the same transfer twice in one read is asked once; each caller gets its
    own transfer's leg; a failed read fails every caller it carried; a read arriving
    while one is in flight is not answered from it."""
    from bridge.coordinator.leg_reads import LegReads
    from bridge.domain.errors import Unavailable
    from bridge.domain.legs import LegStatus

    asked: list[list[bytes]] = []
    gate = asyncio.Event()

    class Relayer:
        fail = False

        async def get_legs(self, tids: Sequence[bytes], leg: Leg) -> list[LegStatus]:
            asked.append(list(tids))
            await gate.wait()
            if self.fail:
                raise Unavailable("relayer down")
            return [LegStatus(LegState.LOCKED, t, 0, len(asked)) for t in tids]

    relayer = Relayer()

    reads = LegReads(SimpleNamespace(relayers={"a": relayer}), max_in_flight=1)  # type: ignore[arg-type]
    t1, t2 = b"\1" * 32, b"\2" * 32
    first = asyncio.create_task(reads.get_leg("a", t1, Leg.OUTBOUND))
    await asyncio.sleep(0)
    later = [asyncio.create_task(reads.get_leg("a", t, Leg.OUTBOUND)) for t in (t1, t2, t1)]
    await asyncio.sleep(0.01)
    assert asked == [[t1]]  # the later reads wait for a read of their own
    gate.set()
    assert (await first).terms_hash == t1 and (await first).height == 1
    answers = await asyncio.gather(*later)
    assert asked == [[t1], [t1, t2]]
    assert [s.terms_hash for s in answers] == [t1, t2, t1]
    assert all(s.height == 2 for s in answers)  # read after the first one was asked
    relayer.fail = True
    failing = [asyncio.create_task(reads.get_leg("a", t, Leg.OUTBOUND)) for t in (t1, t2)]
    for task in failing:
        with pytest.raises(Unavailable):
            await task
    await reads.close()


async def test_leg_reads_get_both_queues_each_side_in_its_own_read() -> None:
    """LegReads.get_both: the outbound leg on the source and the inbound leg on the target,
    each read with its ledger and side's other callers (no task each); a caller cancelled
    before the reads went out leaves nothing of its own in them."""
    from bridge.coordinator.leg_reads import LegReads
    from bridge.domain.legs import LegStatus

    asked: list[tuple[str, Leg, list[bytes]]] = []
    gate = asyncio.Event()

    class Relayer:
        def __init__(self, name: str) -> None:
            self.name = name

        async def get_legs(self, tids: Sequence[bytes], leg: Leg) -> list[LegStatus]:
            asked.append((self.name, leg, list(tids)))
            await gate.wait()
            state = LegState.LOCKED if leg is Leg.OUTBOUND else LegState.PREPARED
            return [LegStatus(state, t, 0, 7) for t in tids]

    ctx = SimpleNamespace(relayers={"a": Relayer("a"), "b": Relayer("b")})
    reads = LegReads(ctx, max_in_flight=1)  # type: ignore[arg-type]
    t1, t2, t3 = b"\1" * 32, b"\2" * 32, b"\3" * 32
    first = asyncio.create_task(reads.get_both(t1, "a", "b"))
    await asyncio.sleep(0.01)
    assert sorted(asked) == [("a", Leg.OUTBOUND, [t1]), ("b", Leg.INBOUND, [t1])]
    behind = [asyncio.create_task(reads.get_both(t, "a", "b")) for t in (t2, t3)]
    await asyncio.sleep(0.01)
    behind[0].cancel()  # its two reads had not gone out: neither carries it
    await asyncio.sleep(0.01)
    gate.set()
    source, target = await first
    assert (source.state, source.terms_hash) == (LegState.LOCKED, t1)
    assert (target.state, target.terms_hash) == (LegState.PREPARED, t1)
    source, target = await behind[1]
    assert (source.terms_hash, target.terms_hash) == (t3, t3)
    with pytest.raises(asyncio.CancelledError):
        await behind[0]
    assert sorted(asked[2:]) == [("a", Leg.OUTBOUND, [t3]), ("b", Leg.INBOUND, [t3])]
    await reads.close()


async def test_a_burst_shares_its_lane_reads(batching) -> None:
    """With batching on, the flow-limit reads of a burst (each transfer reads both ends of
    its lane at admission and again before its lock) share GetFlowStatus calls: far fewer
    than four per transfer, and every transfer still commits."""
    c, relayers, _, store = batching
    calls = {"a": 0, "b": 0}
    for name, relayer in relayers.items():
        original = relayer.flow_status

        async def counted(security: str, counterpart: str, _o=original, _n=name) -> object:  # type: ignore[no-untyped-def]
            calls[_n] += 1
            await asyncio.sleep(0.005)  # a relayer round trip, so reads overlap
            return await _o(security, counterpart)

        relayer.flow_status = counted  # type: ignore[method-assign]
    tids = await burst(c, 20, prefix="f")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    # Unshared: 20 transfers x (admission + gate) = 40 reads of each ledger.
    assert 0 < calls["a"] < 30 and 0 < calls["b"] < 30, calls


async def test_lane_reads_are_never_answered_by_a_read_older_than_the_call() -> None:
    """FlowLimits with coalescing: a read arriving while one is in flight waits for a read
    of its own (it sees a capacity lowered meanwhile); reads of another lane or ledger are
    never shared; a failed read fails every caller it carried, and nothing more."""
    import time as _time

    from bridge.coordinator.flow_limits import FlowLimits
    from bridge.coordinator.records import TransferRequest
    from bridge.domain.errors import Unavailable
    from bridge.domain.flow import Bucket, FlowStatus

    asked: list[tuple[str, str, str]] = []
    gate = asyncio.Event()
    both_started = asyncio.Event()

    class Relayer:
        def __init__(self, ledger: str) -> None:
            self.ledger = ledger
            self.capacity = 100
            self.fail = False

        async def flow_status(self, security: str, counterpart: str) -> FlowStatus:
            asked.append((self.ledger, security, counterpart))
            if len(asked) == 2:
                both_started.set()
            capacity = self.capacity  # the level when the read starts
            await gate.wait()
            if self.fail:
                raise Unavailable("relayer down")
            return FlowStatus(
                self.ledger, counterpart, security, int(_time.time()),
                Bucket(capacity, capacity, 60), Bucket(0, 0, 60), 0, 0, 0, 0, 0,
            )  # fmt: skip

    a, b = Relayer("a"), Relayer("b")
    flow = FlowLimits(SimpleNamespace(relayers={"a": a, "b": b}, max_backoff=10.0), max_in_flight=1)  # type: ignore[arg-type]

    def request(security: str) -> TransferRequest:
        return TransferRequest("k", security, "a", "b", "0x" + "11" * 20, "0x" + "22" * 20, 1)

    first = asyncio.create_task(flow.lane_status(request("S1")))
    await asyncio.wait_for(both_started.wait(), 5)  # both ends of the first read
    a.capacity = 50  # lowered after the first read started
    later = [asyncio.create_task(flow.lane_status(request("S1"))) for _ in range(5)]
    other = asyncio.create_task(flow.lane_status(request("S2")))
    await asyncio.sleep(0.01)
    assert sorted(asked) == [("a", "S1", "b"), ("a", "S2", "b"), ("b", "S1", "a"), ("b", "S2", "a")]
    gate.set()
    assert (await first)[0].outbound.capacity == 100
    answers = await asyncio.gather(*later)
    assert all(src.outbound.capacity == 50 for src, _ in answers)  # read after they asked
    assert (await other)[0].security == "S2" and (await other)[1].security == "S2"
    assert len(asked) == 6  # the five later callers shared one read per ledger
    a.fail = True
    failing = [asyncio.create_task(flow.lane_status(request("S1"))) for _ in range(3)]
    for task in failing:
        with pytest.raises(Unavailable):
            await task
    assert len(asked) == 8
    await flow.close()


# ---- coalesced holder reads (issue 14 item 4)


async def test_a_burst_shares_its_holder_reads(batching) -> None:
    """With batching on, admission's holder reads (the sender on the source, the recipient
    on the target, for every transfer) go out as GetHolders calls carrying many
    admissions: far fewer calls than transfers, not one GetHolder, and every transfer
    still commits."""
    from bridge.domain.legs import HolderStatus

    c, relayers, _, store = batching
    calls = {"a": 0, "b": 0}
    for name, relayer in relayers.items():

        async def single(security: str, holder: str) -> HolderStatus:
            raise AssertionError("admission read a holder alone")

        async def many(security: str, holders: Sequence[str], _n=name) -> list[HolderStatus]:  # type: ignore[no-untyped-def]
            calls[_n] += 1
            await asyncio.sleep(0.005)  # a relayer round trip, so reads overlap
            return [HolderStatus(True, 10**6, 0, True, False, False) for _ in holders]

        relayer.holder = single  # type: ignore[method-assign]
        relayer.holders = many  # type: ignore[method-assign]
    tids = await burst(c, 20, prefix="h")
    for tid in tids:
        assert await final(store, tid) is TransferState.COMMITTED
    # Unshared: one read of each ledger per transfer, 20 each.
    assert 0 < calls["a"] < 10 and 0 < calls["b"] < 10, calls


async def test_a_burst_shares_its_key_lookups_and_each_keeps_its_own_answer(batching) -> None:
    """With batching on, admission's idempotency-key lookups go out as store reads
    carrying many admissions (far fewer than submissions), and each submission is answered
    as alone: a retry of a recorded transfer is that transfer (not new), a key reused for
    another request is a Conflict recording nothing, fresh keys are new."""
    from bridge.domain.errors import Conflict

    c, _, _, store = batching
    first = await burst(c, 10, prefix="r")
    reads: list[int] = []
    real = store.get_by_keys

    async def counted(ledger: str, keys: Sequence[str]):  # type: ignore[no-untyped-def]
        reads.append(len(keys))
        return await real(ledger, keys)

    store.get_by_keys = counted  # type: ignore[method-assign]
    other = dataclasses.replace(request("r3"), amount=6)  # r3 taken by another request
    outcomes = await asyncio.gather(
        *(submit(c, request(f"r{i}")) for i in range(10)),  # retries
        *(submit(c, request(f"n{i}")) for i in range(10)),  # new
        submit(c, other),
        return_exceptions=True,
    )
    retries, fresh, conflict = outcomes[:10], outcomes[10:20], outcomes[20]
    assert [(r.transfer_id, new) for r, new in retries] == [(t, False) for t in first]  # type: ignore[union-attr,misc]
    assert all(new for _, new in fresh)  # type: ignore[misc]
    assert isinstance(conflict, Conflict)
    # Unshared: 21 reads of one key each. Shared: 20 distinct keys in a few reads (a key
    # asked twice in one read is asked once).
    assert 20 <= sum(reads) <= 21 and len(reads) < 10, reads
    kept = await store.get_by_key("a", "r3")  # the conflicting request recorded nothing
    assert kept is not None and kept.transfer_id == first[3] and kept.request == request("r3")


async def test_holder_reads_answer_each_holder_its_own_standing() -> None:
    """HolderReads: a read arriving while one is in flight waits for a read of its own;
    the same holder twice in one read is asked once; ledgers and securities are never
    shared; an unreachable ledger fails every caller of its read; any other refusal of a
    shared read is never shared: each holder is read alone and only its own caller is
    refused (one brokerage's holder cannot refuse another's transfer)."""
    from bridge.coordinator.holder_reads import HolderReads
    from bridge.domain.errors import Unavailable
    from bridge.domain.legs import HolderStatus

    asked: list[tuple[str, str, list[str]]] = []
    gate = asyncio.Event()
    POISON = "0xpoison"

    class Relayer:
        fail: Exception | None = None

        def __init__(self, ledger: str) -> None:
            self.ledger = ledger
            self.singles: list[str] = []

        async def holders(self, security: str, holders: Sequence[str]) -> list[HolderStatus]:
            asked.append((self.ledger, security, list(holders)))
            await gate.wait()
            if self.fail is not None:
                raise self.fail
            if POISON in holders:
                raise LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, "one holder's refusal")
            return [HolderStatus(True, len(asked), 0, True, False, False) for _ in holders]

        async def holder(self, security: str, holder: str) -> HolderStatus:
            self.singles.append(holder)
            if holder == POISON:
                raise LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, "one holder's refusal")
            return HolderStatus(True, 7, 0, True, False, False)

    relayers = {"a": Relayer("a"), "b": Relayer("b")}
    reads = HolderReads(SimpleNamespace(relayers=relayers), max_in_flight=1)  # type: ignore[arg-type]
    first = asyncio.create_task(reads.holder("a", ISIN, "0x1"))
    await asyncio.sleep(0)
    later = [asyncio.create_task(reads.holder("a", ISIN, h)) for h in ("0x1", "0x2", "0x1")]
    other = [
        asyncio.create_task(reads.holder("b", ISIN, "0x1")),
        asyncio.create_task(reads.holder("a", "KR7000660001", "0x1")),
    ]
    await asyncio.sleep(0.01)
    assert sorted(asked) == sorted(
        [("a", ISIN, ["0x1"]), ("b", ISIN, ["0x1"]), ("a", "KR7000660001", ["0x1"])]
    )  # the later reads of ("a", ISIN) wait for a read of their own
    gate.set()
    assert (await first).balance <= 3
    answers = await asyncio.gather(*later)
    await asyncio.gather(*other)
    assert asked[-1] == ("a", ISIN, ["0x1", "0x2"])
    assert {s.balance for s in answers} == {4}  # one read, made after the first was asked

    # One holder's refusal: read again alone, only its caller refused.
    mixed = [asyncio.create_task(reads.holder("a", ISIN, h)) for h in ("0x3", POISON, "0x4")]
    results = await asyncio.gather(*mixed, return_exceptions=True)
    assert isinstance(results[1], LedgerRejected)
    assert [r.balance for r in (results[0], results[2])] == [7, 7]  # type: ignore[union-attr]
    assert sorted(relayers["a"].singles) == sorted(["0x3", POISON, "0x4"])

    # The relayer failing on the call (INTERNAL): maybe one holder's doing, so each is read
    # alone (review helper-106: a crafted holder must not fail other brokerages' reads).
    from bridge.coordinator.clients import PeerFailed

    relayers["a"].fail = PeerFailed("relayer of a failed (internal): ...")
    relayers["a"].singles.clear()
    crashed = [asyncio.create_task(reads.holder("a", ISIN, h)) for h in ("0x7", POISON, "0x8")]
    results = await asyncio.gather(*crashed, return_exceptions=True)
    assert isinstance(results[1], LedgerRejected)
    assert [r.balance for r in (results[0], results[2])] == [7, 7]  # type: ignore[union-attr]
    assert sorted(relayers["a"].singles) == sorted(["0x7", POISON, "0x8"])

    # The ledger unreachable: every caller of that read gets it, nothing is read alone.
    relayers["a"].fail = Unavailable("relayer down")
    relayers["a"].singles.clear()
    failing = [asyncio.create_task(reads.holder("a", ISIN, h)) for h in ("0x5", "0x6")]
    for task in failing:
        with pytest.raises(Unavailable):
            await task
    assert relayers["a"].singles == []
    await reads.close()


async def test_a_split_holder_read_reads_a_few_holders_at_a_time() -> None:
    """Review helper-109: a shared read the relayer failed on is split into single reads at
    most READ_CONCURRENCY at a time (not hundreds at once on a relayer that just failed);
    every caller still gets its own answer."""
    from bridge.coordinator.clients import PeerFailed
    from bridge.coordinator.holder_reads import HolderReads
    from bridge.domain.legs import HolderStatus
    from bridge.ledgers.bounded import READ_CONCURRENCY

    in_flight = most = 0
    gate = asyncio.Event()

    class Relayer:
        async def holders(self, security: str, holders: Sequence[str]) -> list[HolderStatus]:
            await gate.wait()
            if len(holders) == 1:
                return [await self.holder(security, holders[0])]
            raise PeerFailed("relayer of a failed (internal)")

        async def holder(self, security: str, holder: str) -> HolderStatus:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            return HolderStatus(True, int(holder[2:]), 0, True, False, False)

    reads = HolderReads(SimpleNamespace(relayers={"a": Relayer()}), max_in_flight=1)  # type: ignore[arg-type]
    first = asyncio.create_task(reads.holder("a", ISIN, "0x0"))
    await asyncio.sleep(0)
    many = [asyncio.create_task(reads.holder("a", ISIN, f"0x{i}")) for i in range(1, 101)]
    await asyncio.sleep(0.01)
    gate.set()
    answers = await asyncio.gather(first, *many)
    assert [a.balance for a in answers] == list(range(101))
    assert 1 < most <= READ_CONCURRENCY, most
    await reads.close()


async def test_a_split_holder_read_is_bounded_by_one_budget() -> None:
    """Review helper-117 #4: a relayer fails the shared read and lets single reads hang.
    Before, the split read every holder alone (8 at a time, each up to a call timeout):
    ceil(500 / 8) call timeouts on the key, every admission on it waiting behind. Now the
    singles share one budget: those answered keep their answers, the others are
    Unavailable (retry) when it runs out, and the key is free again."""
    from bridge.coordinator.clients import PeerFailed
    from bridge.coordinator.holder_reads import HolderReads
    from bridge.domain.errors import Unavailable
    from bridge.domain.legs import HolderStatus

    class Relayer:
        async def holders(self, security: str, holders: Sequence[str]) -> list[HolderStatus]:
            raise PeerFailed("relayer of a failed (internal)")

        async def holder(self, security: str, holder: str) -> HolderStatus:
            if holder != "0x1":
                await asyncio.sleep(3600)  # hangs (a call timeout would end it, 30 s)
            return HolderStatus(True, 1, 0, True, False, False)

    reads = HolderReads(SimpleNamespace(relayers={"a": Relayer()}), max_in_flight=1,  # type: ignore[arg-type]
                        alone_budget_s=0.2)  # fmt: skip
    # 40 hanging holders, 8 at a time: without the budget this never ends (wait_for fails).
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(reads.holder("a", ISIN, f"0x{i}") for i in range(1, 41)), return_exceptions=True
        ),
        timeout=10,
    )
    assert isinstance(answers[0], HolderStatus) and answers[0].balance == 1
    assert all(isinstance(a, Unavailable) for a in answers[1:])
    assert "did not answer the holders' reads in time" in str(answers[1])
    await reads.close()


async def test_one_holder_failing_the_shared_read_is_found_by_halves() -> None:
    """Review helper-118 #6: a holder that makes the relayer fail the shared read (a
    brokerage's crafted holder) is found by reading the others in halves: about
    2 x log2(n) shared reads, not n single ones, so every other holder is answered
    quickly even over a slow link; the crafted one gets its own error."""
    from bridge.coordinator.clients import PeerFailed
    from bridge.coordinator.holder_reads import HolderReads
    from bridge.domain.legs import HolderStatus

    shared: list[int] = []
    singles: list[str] = []

    class Relayer:
        async def holders(self, security: str, holders: Sequence[str]) -> list[HolderStatus]:
            shared.append(len(holders))
            await asyncio.sleep(0.005)  # a slow link
            if "0xbad" in holders:
                raise PeerFailed("relayer of a failed (internal)")
            return [HolderStatus(True, len(h), 0, True, False, False) for h in holders]

        async def holder(self, security: str, holder: str) -> HolderStatus:
            singles.append(holder)
            if holder == "0xbad":
                raise PeerFailed("relayer of a failed (internal)")
            return HolderStatus(True, len(holder), 0, True, False, False)

    reads = HolderReads(SimpleNamespace(relayers={"a": Relayer()}), max_in_flight=1)  # type: ignore[arg-type]
    names = [f"0x{i:03x}" for i in range(499)] + ["0xbad"]
    first = asyncio.create_task(reads.holder("a", ISIN, "0xfirst"))
    await asyncio.sleep(0)
    answers = await asyncio.gather(
        *(reads.holder("a", ISIN, n) for n in names), return_exceptions=True
    )
    await first
    assert isinstance(answers[-1], PeerFailed)
    assert all(isinstance(a, HolderStatus) for a in answers[:-1])
    assert "0xbad" in singles and len(singles) <= 2, singles  # it and its last sibling
    assert len(shared) <= 2 + 2 * 9, shared  # the shared read, then halves
    await reads.close()


async def test_leg_reads_behind_a_running_one_wait_read_linger_for_more() -> None:
    """``[batching] read_linger_ms``: a read with none of its key in flight goes out at
    once; reads arriving behind it, a few milliseconds apart (drivers woken by one batched
    step), share one read after the linger instead of splitting into small ones."""
    from bridge.coordinator.leg_reads import LegReads
    from bridge.domain.legs import LegStatus

    async def asked_with(linger_ms: float) -> list[list[bytes]]:
        asked: list[list[bytes]] = []
        gate = asyncio.Event()

        class Relayer:
            async def get_legs(self, tids: Sequence[bytes], leg: Leg) -> list[LegStatus]:
                asked.append(list(tids))
                await gate.wait()
                return [LegStatus(LegState.LOCKED, t, 0, 1) for t in tids]

        ctx = SimpleNamespace(relayers={"a": Relayer()})
        reads = LegReads(ctx, max_in_flight=2, linger_ms=linger_ms)  # type: ignore[arg-type]
        t1, t2, t3, t4 = (bytes([i]) * 32 for i in range(1, 5))
        tasks = [asyncio.create_task(reads.get_leg("a", t1, Leg.OUTBOUND))]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert asked == [[t1]], "the first read waited"
        for t in (t2, t3, t4):
            tasks.append(asyncio.create_task(reads.get_leg("a", t, Leg.OUTBOUND)))
            await asyncio.sleep(0.015)
        await asyncio.sleep(0.1)
        gate.set()
        answers = await asyncio.gather(*tasks)
        assert [s.terms_hash for s in answers] == [t1, t2, t3, t4]
        await reads.close()
        return asked

    b = [bytes([i]) * 32 for i in range(1, 5)]
    assert await asked_with(80.0) == [[b[0]], [b[1], b[2], b[3]]]
    without = await asked_with(0.0)
    assert without[:2] == [[b[0]], [b[1]]] and len(without) == 3


async def test_read_linger_reaches_every_coalesced_read(batching) -> None:
    """The coordinator gives ``read_linger_ms`` to its leg, lane-limit and holder reads
    (default 20 ms), and only them: the steps keep ``linger_ms``."""
    c = batching[0]
    for linger, config in (
        (0.02, BatchingConfig(enabled=True)),
        (0.035, BatchingConfig(enabled=True, read_linger_ms=35, linger_ms=5)),
    ):
        coord = Coordinator(
            c._network, batching[3], {}, batching[2], transfer_ttl=60,  # type: ignore[arg-type]
            batching=config,
        )  # fmt: skip
        lingers = [coord._reads._reads._linger, coord._holders._reads._linger]
        assert [*lingers, coord._flow._reads._linger] == [linger] * 3
        assert coord._batcher._locks._linger == config.linger_ms / 1000


async def test_admission_reads_both_holders_together_and_names_a_failed_ledger(batching) -> None:
    """With batching, admission reads the sender's and the recipient's standing through the
    coalesced holder reads, a future each: a ledger that cannot be read is named without
    its relayer's text, a refusal is its ledger and its reason's name only (typed as the
    error's reason), both failing name the sender's
    ledger, and nothing is recorded for any of them."""
    c, relayers, _, store = batching
    text = "relayer of b failed (internal): http://10.20.30.40:8545 peer0.org1 Org1MSP"

    async def down(*_: object) -> None:
        raise Unavailable(text)

    async def refused(*_: object) -> None:
        raise LedgerRejected(ErrorReason.UNKNOWN_SECURITY, text)

    for name in ("holder", "holders"):
        setattr(relayers["b"], name, down)
    with pytest.raises(Unavailable) as unreadable:
        await submit(c, request("b-down"))
    assert str(unreadable.value) == "b could not be read now; retry"
    for name in ("holder", "holders"):
        setattr(relayers["b"], name, refused)
    with pytest.raises(PreconditionFailed) as refusal:
        await submit(c, request("b-refuses"))
    assert str(refusal.value) == "b refused the step (UnknownSecurity)"
    assert refusal.value.reason is ErrorReason.UNKNOWN_SECURITY and refusal.value.ledger == "b"

    async def slowly_down(*_: object) -> None:
        await asyncio.sleep(0.05)  # the recipient's ledger fails first
        raise Unavailable(text)

    for name in ("holder", "holders"):
        setattr(relayers["a"], name, slowly_down)
        setattr(relayers["b"], name, down)
    with pytest.raises(Unavailable) as both:
        await submit(c, request("both-down"))
    assert str(both.value) == "a could not be read now; retry"
    for key in ("b-down", "b-refuses", "both-down"):
        assert await store.get_by_key("a", key) is None, key


async def test_admission_while_the_holder_reads_close_is_told_to_retry(batching) -> None:
    """Review helper-135 L1: a submission reaching admission while its coalesced holder
    reads are closing (the coordinator stopping) is UNAVAILABLE naming the ledger, as any
    unread standing is; nothing is recorded."""
    c, relayers, _, store = batching
    reading = asyncio.Event()

    async def hanging(*_: object) -> None:
        reading.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.2)  # close() waits for this flush meanwhile

    relayers["a"].holders = hanging  # type: ignore[method-assign,assignment]
    first = asyncio.create_task(submit(c, request("in-flight")))
    await reading.wait()
    closing = asyncio.create_task(c._holders.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    with pytest.raises(Unavailable) as exc:
        await submit(c, request("while-closing"))
    assert str(exc.value) == "a could not be read now; retry"
    await closing
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await store.get_by_key("a", "while-closing") is None


async def test_admission_names_a_lane_it_cannot_read_through_coalesced_reads(batching) -> None:
    """The lane's flow limits, read on both ledgers together (a future each): an unreadable
    one is named without its relayer's text, and nothing is recorded."""
    c, relayers, _, store = batching

    async def down(*_: object) -> None:
        raise Unavailable("relayer of b failed (internal): http://10.20.30.40:8545")

    relayers["b"].flow_status = down  # type: ignore[method-assign,assignment]
    with pytest.raises(Unavailable) as exc:
        await submit(c, request("lane-down"))
    assert str(exc.value) == "the flow limits of a -> b could not be read now; retry"
    assert await store.get_by_key("a", "lane-down") is None
