"""The coordinator's driver decisions, with in-memory relayers and committee (pure logic:
the real-ledger paths are covered by tests/e2e)."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.config import NetworkConfig, dump_toml, load_network
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.records import TransferRecord, TransferRequest
from bridge.coordinator.requests import terms_for
from bridge.coordinator.store import SqliteTransferStore
from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import Conflict, InvalidInput, LedgerRejected
from bridge.domain.flow import Bucket, FlowStatus
from bridge.domain.instructions import (
    Instruction,
    InvalidInstruction,
    UnauthorisedInstructor,
    sign_instruction,
)
from bridge.domain.legs import (
    Action,
    EventPosition,
    HolderStatus,
    LedgerEvent,
    Leg,
    LegState,
    LegStatus,
    SignatureSet,
    TxOutcome,
)
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState
from tests.support import eventually

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"
HOLDER = "0x" + "11" * 20


@dataclass
class FakeRelayer:
    """A ledger as the coordinator sees it through a relayer."""

    ledger: str
    legs: dict[tuple[bytes, Leg], LegStatus] = field(default_factory=dict)
    lock_refusal: LedgerRejected | None = None
    land_lock_anyway: bool = False
    squat: bool = False
    submitted: list[Action] = field(default_factory=list)
    instructions: list[bytes] = field(default_factory=list)
    # ---- flow limits: the lane's buckets as this ledger reports and enforces them (0: none)
    outbound_capacity: int = 0
    outbound_available: int = 0
    inbound_capacity: int = 0
    inbound_available: int = 0
    window: int = 100
    locked_ids: list[bytes] = field(default_factory=list)
    not_before: int = 0  # a large-transfer delay on the LOCKED / PREPARED legs made here
    many_reads: int = 0  # ---- batch: GetLegs calls
    many_holder_reads: int = 0  # ---- batch: GetHolders calls

    async def flow_status(self, security: str, counterpart: str) -> FlowStatus:
        return FlowStatus(
            self.ledger, counterpart, security, int(time.time()),
            Bucket(self.outbound_capacity, self.outbound_available, self.window),
            Bucket(self.inbound_capacity, self.inbound_available, self.window),
            0, 0, 0, 0, 0,
        )  # fmt: skip

    def _take(self, action: Action, amount: int) -> None:
        if action is Action.LOCK and self.outbound_capacity:
            if amount > self.outbound_available:
                raise LedgerRejected(
                    ErrorReason.FLOW_LIMIT_EXCEEDED, f"available={self.outbound_available}"
                )
            self.outbound_available -= amount
        if action is Action.PREPARE and self.inbound_capacity:
            if amount > self.inbound_available:
                raise LedgerRejected(
                    ErrorReason.FLOW_LIMIT_EXCEEDED, f"available={self.inbound_available}"
                )
            self.inbound_available -= amount

    async def get_leg(self, tid: bytes, leg: Leg) -> LegStatus:
        return self.legs.get((tid, leg), LegStatus(LegState.NONE, b"\0" * 32, 0, 1))

    async def get_legs(self, tids: Sequence[bytes], leg: Leg) -> list[LegStatus]:
        self.many_reads += 1
        return [await self.get_leg(t, leg) for t in tids]

    async def holder(self, security: str, holder: str) -> HolderStatus:
        return HolderStatus(True, 10**6, 0, True, False, False)

    async def holders(self, security: str, holders: Sequence[str]) -> list[HolderStatus]:
        self.many_holder_reads += 1
        return [await self.holder(security, h) for h in holders]

    async def submit(
        self,
        action: Action,
        terms: TransferTerms,
        cert: SignatureSet | None,
        instruction: bytes = b"",
    ) -> TxOutcome:
        self.submitted.append(action)
        if action is Action.LOCK:
            self.instructions.append(instruction)
        tid, th = terms.transfer_id, terms.terms_hash
        self._take(action, terms.amount)
        if action is Action.LOCK:
            self.locked_ids.append(tid)
        if action is Action.LOCK and self.lock_refusal is not None:
            if self.land_lock_anyway:  # an earlier attempt landed; this one is refused
                self.legs[(tid, Leg.OUTBOUND)] = LegStatus(LegState.LOCKED, th, 0, 2)
            if self.squat:  # someone front-ran our lock with the same id and other terms
                other = secrets.token_bytes(32)
                self.legs[(tid, Leg.OUTBOUND)] = LegStatus(LegState.LOCKED, other, 0, 2)
            raise self.lock_refusal
        after = {
            (Action.LOCK, Leg.OUTBOUND): LegState.LOCKED,
            (Action.PREPARE, Leg.INBOUND): LegState.PREPARED,
            (Action.COMMIT, Leg.OUTBOUND): LegState.BURNED,
            (Action.COMMIT, Leg.INBOUND): LegState.MINTED,
            (Action.ABORT, Leg.OUTBOUND): LegState.RELEASED,
            (Action.ABORT, Leg.INBOUND): LegState.ABORTED,
        }
        leg = Leg.OUTBOUND if terms.src_ledger == _word(self.ledger) else Leg.INBOUND
        state = after[(action, leg)]
        held = self.not_before if state in (LegState.LOCKED, LegState.PREPARED) else 0
        self.legs[(tid, leg)] = LegStatus(state, th, 0, 2, held)
        return TxOutcome("0x" + secrets.token_hex(32), 2, False)


class FakeCommittee:
    def __init__(self) -> None:
        self.kinds: list[ClaimKind] = []

    async def certify(
        self, kind: ClaimKind, terms: TransferTerms, ledgers: list, epochs: object = None
    ) -> dict[str, SignatureSet]:
        self.kinds.append(kind)
        return {d.name: SignatureSet(1, (b"\1" * 65,)) for d in ledgers}


def _word(name: str) -> bytes:
    from bridge.domain.ids import LedgerId

    return LedgerId(name).word


def lock_event(terms: TransferTerms, height: int, index: int = 0, tx: str = "0x01") -> LedgerEvent:
    """The event of ``terms``'s outbound leg LOCKED on ledger ``a`` at (height, index)."""
    return LedgerEvent(
        "a", EventPosition(height, index), b"\0" * 32, tx, terms.transfer_id, Leg.OUTBOUND,
        LegState.LOCKED, 0, terms.terms_hash, terms,
    )  # fmt: skip


def holder_lock(
    relayers: dict[str, FakeRelayer],
    instructor: bytes,
    height: int,
    index: int = 0,
    tx: str = "0x01",
) -> tuple[TransferTerms, LedgerEvent]:
    """A lock of 3 units on ledger ``a`` towards ``b`` made on the ledger itself (not through
    this coordinator) by ``instructor`` (an address), shown LOCKED by relayer ``a`` at
    ``height``; its terms and its event."""
    terms = TransferTerms(
        secrets.token_bytes(32), ISIN.encode().ljust(32, b"\0"), 3, _word("a"),
        b"\0" * 12 + b"\xaa" * 20, _word("b"), b"\0" * 12 + b"\xbb" * 20,
        b"\0" * 12 + b"\x11" * 20, b"\0" * 12 + b"\x12" * 20, b"\0" * 12 + instructor,
        int(time.time()) + 60,
    )  # fmt: skip
    relayers["a"].legs[(terms.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, terms.terms_hash, 0, height
    )
    return terms, lock_event(terms, height, index, tx)


def network_file(tmp_path: Path, ids: Sequence[str] = ("a", "b")) -> NetworkConfig:
    """EVM ledgers ``ids`` (one letter each; bridges 0xaa.., 0xbb..; chain ids 1, 2...), a committee
    of one, BROKER_A instructing transfers out of a; written to ``tmp_path`` and loaded."""
    ledgers = [
        {"id": n, "kind": "evm", "rpc_url": n, "bridge": "0x" + n * 40, "chain_id": i,
         "finality_depth": 0}
        for i, n in enumerate(ids, start=1)
    ]  # fmt: skip
    (tmp_path / "network.toml").write_text(
        dump_toml(
            {
                "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "22" * 20]},
                "securities": {"isins": [ISIN]},
                "ledgers": ledgers,
                "instruction_keys": {"a": ["0x" + BROKER_A.address.hex()]},
            }
        )
    )
    return load_network(tmp_path / "network.toml")


@pytest.fixture
async def coordinator(tmp_path: Path):
    network = network_file(tmp_path)
    store = SqliteTransferStore(tmp_path / "c.sqlite")
    relayers = {"a": FakeRelayer("a"), "b": FakeRelayer("b")}
    # A fake bucket changes at once (an admin's raise): queued transfers re-read it as
    # often as max_backoff, not toward their own estimate (QUEUE_RECHECK_MAX_S).
    c = Coordinator(network, store, relayers, FakeCommittee(), transfer_ttl=60, max_backoff=0.2,  # type: ignore[arg-type]
                    sweep_every=0.1, queue_recheck_max=0.2)  # fmt: skip
    await c.start()
    yield c, relayers, store
    await c.stop()
    store.close()


def request(key: str = "k1") -> TransferRequest:
    return TransferRequest(key, ISIN, "a", "b", HOLDER, HOLDER, 5)


BROKER_A = LocalKeySigner(bytes([7]) * 32)


def instructed(
    network: NetworkConfig,
    req: TransferRequest,
    signer: LocalKeySigner = BROKER_A,
    deadline: int | None = None,
    nonce: bytes | None = None,
) -> Instruction:
    """The instruction the brokerage of ``req``'s source ledger signs for it."""
    unsigned = Instruction(
        nonce=nonce or hashlib.sha256(req.idempotency_key.encode()).digest(),
        deadline=deadline or int(time.time()) + 50,
        instructor=signer.address,
        signature=bytes(65),
    )
    terms = terms_for(network, req, unsigned)
    network_word = network.ledgers[req.source_ledger].network_word
    return dataclasses.replace(unsigned, signature=sign_instruction(signer, network_word, terms))


async def submit(c: Coordinator, req: TransferRequest) -> tuple[TransferRecord, bool]:
    return await c.submit(req, instructed(c._network, req))


async def final(store: SqliteTransferStore, tid: bytes) -> TransferState:
    async def probe() -> TransferState | None:
        r = await store.get(tid)
        return r.state if r is not None and r.state.terminal else None

    return await eventually(probe, 10, "a terminal state", interval=0.02)


async def test_happy_path_commits(coordinator) -> None:
    c, relayers, store = coordinator
    record, created = await submit(c, request())
    assert created
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert relayers["a"].submitted == [Action.LOCK, Action.COMMIT]
    assert relayers["b"].submitted == [Action.PREPARE, Action.COMMIT]


@pytest.mark.batch
@pytest.mark.security
async def test_an_authentication_made_for_another_request_is_never_reused(coordinator) -> None:
    """A batch item's instruction is authenticated once (``authorise_submit``, so a refusal
    there is known to come before authentication) and handed to ``check_submit``; handed
    with another request or instruction, it is ignored and this one's own is checked: a
    forged instruction is refused whatever authentication comes with it."""
    c, _, _ = coordinator
    genuine = request("auth-1")
    auth = c.authorise_submit(genuine, instructed(c._network, genuine))
    admitted = await c.check_submit(genuine, auth.instruction, auth)
    assert admitted.record.terms == auth.terms and not admitted.recorded
    other = request("auth-2")
    good = instructed(c._network, other)
    forged = dataclasses.replace(good, signature=good.signature[:5] + b"\x00" + good.signature[6:])
    with pytest.raises(InvalidInstruction):
        await c.check_submit(other, forged, auth)  # another request's authentication
    with pytest.raises(InvalidInstruction):
        await c.check_submit(genuine, forged, auth)  # another instruction
    with pytest.raises(InvalidInstruction):
        c.authorise_submit(other, forged)
    assert (
        await c.check_submit(other, good, auth)
    ).record.terms.transfer_id != auth.terms.transfer_id


@pytest.mark.batch  # issue 14: a batch's checked items recorded in one transaction
async def test_checked_submissions_are_recorded_together_and_each_gets_its_driver(
    coordinator,
) -> None:
    """``record_submits`` stores new items in one transaction, in order, spawns a driver for
    each new one, returns a retry's record as it is, and confines a Conflict (the same
    instruction under another key) to its item."""
    c, _, store = coordinator
    # The retry carries the recorded instruction itself: one made again later could take
    # another deadline (``int(time.time()) + 50`` across a second boundary), a Conflict.
    first = instructed(c._network, request("old"))
    old, _ = await c.submit(request("old"), first)
    assert await final(store, old.transfer_id) is TransferState.COMMITTED  # no writes after
    reqs = [request(f"new-{n}") for n in range(3)]
    admitted = [await c.check_submit(r, instructed(c._network, r)) for r in reqs]
    retry = await c.check_submit(request("old"), first)
    assert retry.recorded
    thief = dataclasses.replace(
        admitted[1],
        record=dataclasses.replace(
            admitted[1].record,
            request=dataclasses.replace(admitted[1].record.request, idempotency_key="thief"),
        ),
    )  # item 1's instruction under another key, recorded after item 1 in the same call
    commits = store._db.commits
    outcomes = await c.record_submits([admitted[0], retry, admitted[1], thief, admitted[2]])
    assert store._db.commits == commits + 1
    assert isinstance(outcomes[3], Conflict)
    assert outcomes[1] == (retry.record, False) and retry.record.transfer_id == old.transfer_id
    new = [outcomes[0], outcomes[2], outcomes[4]]
    assert all(not isinstance(o, Conflict) and o[1] for o in new)
    for o in new:
        assert not isinstance(o, Conflict)
        assert await final(store, o[0].transfer_id) is TransferState.COMMITTED
    assert await store.get_by_key("a", "thief") is None


def count_calls(relayers: dict[str, FakeRelayer], method: str) -> dict[str, int]:
    """Count each fake relayer's calls of the async ``method`` (wrapped in place): its
    single-leg reads (``get_leg``, which the coalesced reads call too), its lane reads
    (``flow_status``)."""
    calls = {name: 0 for name in relayers}
    for name, relayer in relayers.items():
        original = getattr(relayer, method)

        async def counted(*args: object, _o=original, _n=name) -> object:  # type: ignore[no-untyped-def]
            calls[_n] += 1
            return await _o(*args)

        setattr(relayer, method, counted)
    return calls


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_known_legs_spare_the_reads_of_a_new_transfer_and_of_a_fresh_decision(
    coordinator,
) -> None:
    """Issue 14 item 4: a transfer this coordinator has just recorded takes its first step
    (the lock) without reading the legs, the prepare after the lock it has just landed takes
    the lock as known, and the step applying a decision it has just certified takes the legs
    read before certifying: 2 reads a side (before certifying, and at the end), not one per
    step (5)."""
    c, relayers, store = coordinator
    reads = count_calls(relayers, "get_leg")
    record, _ = await submit(c, request())
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert relayers["a"].submitted == [Action.LOCK, Action.COMMIT]
    assert relayers["b"].submitted == [Action.PREPARE, Action.COMMIT]
    assert reads == {"a": 2, "b": 2}
    assert c._stepper._known == {}, "each known pair is used by the very next step"


@pytest.mark.batch  # issue 14: records known without a read
async def test_the_decision_is_read_only_by_a_step_that_did_not_keep_it(coordinator) -> None:
    """The step that records a decision keeps it (and the record with its kind) for the
    step applying it, which keeps it for the step finding the transfer COMMITTED: none of
    them reads it. After a failed step the retry reads the record and the decision once."""

    c, relayers, store = coordinator
    original = store.decision
    answers: list[object] = []

    async def counted(tid: bytes) -> object:
        got = await original(tid)
        answers.append(got)
        return got

    store.decision = counted  # type: ignore[method-assign]
    record, _ = await submit(c, request())
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert answers == []
    fail = fail_submit_once(relayers["b"], Action.COMMIT)
    record, _ = await submit(c, request("retried"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert not fail, "the mint failed once"
    assert len(answers) == 1, "the retried APPLY read it; the step after it kept it"
    assert all(a is not None and a.kind is ClaimKind.COMMIT for a in answers)  # type: ignore[attr-defined]


def fail_submit_once(relayer: FakeRelayer, action: Action) -> dict[str, bool]:
    """Make ``relayer``'s next submit of ``action`` raise Unavailable (a relayer
    restarting), once; the returned flag is emptied when that happened."""
    from bridge.domain.errors import Unavailable

    original = relayer.submit
    pending = {"once": True}

    async def fails_once(act: Action, *args: object) -> TxOutcome:
        if act is action and pending.pop("once", False):
            raise Unavailable(f"relayer {relayer.ledger} restarting")
        return await original(act, *args)  # type: ignore[arg-type]

    relayer.submit = fails_once  # type: ignore[method-assign]
    return pending


def check_kept(
    c: Coordinator, store: SqliteTransferStore, used: list[str] | None = None
) -> list[str]:
    """Make every step of ``c``'s drivers compare the record and decision it keeps for the
    next step with the store's own (all but ``transactions``, which may lag), at the end of
    the step and again when the next step takes it (``used``, when given, gets one entry
    per kept record taken); returns the list of kept records compared at the end of a step,
    with a mismatch's description instead where one was found (at either time). The lists
    are appended to as steps run."""
    checked: list[str] = []
    original = c._drivers._advance
    original_read = c._drivers._read

    async def read(tid: bytes) -> TransferRecord | None:
        kept = c._stepper._kept.get(tid)
        got = await original_read(tid)
        if kept is not None:
            stored = await store.get(tid)
            assert got is kept.record and stored is not None
            mine = dataclasses.replace(got, transactions={})
            if mine != dataclasses.replace(stored, transactions={}):
                checked.append(f"MISMATCH at use {mine} != {stored}")
            if used is not None:
                used.append(got.state.name)
        return got

    c._drivers._read = read  # type: ignore[method-assign]

    async def advance(record: TransferRecord) -> bool:
        done = await original(record)
        kept = c._stepper._kept.get(record.transfer_id)
        if kept is None:
            return done
        assert not done, "a terminal step keeps nothing"
        stored = await store.get(record.transfer_id)
        assert stored is not None
        mine = dataclasses.replace(kept.record, transactions={})
        theirs = dataclasses.replace(stored, transactions={})
        ok = mine == theirs
        if kept.decision is not None:
            ok = ok and kept.decision == await store.decision(record.transfer_id)
        checked.append(kept.record.state.name if ok else f"MISMATCH {mine} != {theirs}")
        return done

    c._drivers._advance = advance  # type: ignore[method-assign]
    return checked


@pytest.mark.batch  # issue 14: records known without a read
async def test_kept_records_equal_the_stored_ones_at_every_step(coordinator) -> None:
    """The oracle: after every step that keeps a record for the next one, that record (and
    its decision) equals what the store holds, through a commit, an ABORT of an
    uninstructed adopted lock, a lane queue and a failed step."""
    from bridge.domain.errors import Unavailable

    c, relayers, store = coordinator
    used: list[str] = []
    checked = check_kept(c, store, used)
    record, _ = await submit(c, request("plain"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert checked == ["SUBMITTED", "SOURCE_LOCKED", "TARGET_PREPARED", "COMMITTING"]
    assert used == ["SUBMITTED", "SUBMITTED", "SOURCE_LOCKED", "TARGET_PREPARED", "COMMITTING"]
    # an adopted lock nobody instructed: released, never prepared
    rogue = LocalKeySigner(secrets.token_bytes(32))
    terms, event = holder_lock(relayers, rogue.address, 3)
    assert await c.on_events("a", [event], 3) == 1
    assert await final(store, terms.transfer_id) is TransferState.ABORTED
    # a lane that queues the transfer first, then a prepare that fails once
    a, b = relayers["a"], relayers["b"]
    a.outbound_capacity, a.outbound_available = 10, 3
    fail = fail_submit_once(b, Action.PREPARE)
    record, _ = await submit(c, request("queued"))

    async def queued() -> bool:
        got = await store.get(record.transfer_id)
        return got is not None and got.state is TransferState.QUEUED

    await eventually(queued, 5, "queued on the lane", interval=0.02)
    a.outbound_available = 10
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert not fail, "the prepare failed once"
    # a lock that fails once, and a legs read that fails once (the step after the prepare
    # reads both legs before anything else): each retried step reads, nothing stale is used
    a.outbound_capacity = 0
    locks = fail_submit_once(a, Action.LOCK)
    original_leg = b.get_leg
    fails = {"leg": True}

    async def leg_fails_once(tid: bytes, leg: Leg) -> LegStatus:
        if leg is Leg.INBOUND and fails.pop("leg", False):
            raise Unavailable("relayer b restarting")
        return await original_leg(tid, leg)

    b.get_leg = leg_fails_once  # type: ignore[method-assign]
    record, _ = await submit(c, request("retried"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert not fails and not locks, "the lock and a leg read failed once"
    mismatches = [m for m in checked if m.startswith("MISMATCH")]
    assert mismatches == []
    assert len(checked) >= 4 + 2 + 3 + 3, checked
    assert c._stepper._kept == {} and c._stepper._handed == {}


@pytest.mark.batch  # issue 14: records known without a read
async def test_a_step_that_wrote_no_state_keeps_a_record_only_without_a_flow_wait(
    coordinator,
) -> None:
    """A step that wrote no state returns the record it was given, which does not show a
    flow wait the flow limits cleared before the state write: such a record is not kept,
    and the next step reads. A record the state write returned is kept whatever its wait."""
    from bridge.domain.flow import WaitReason

    c, _, store = coordinator
    record, _ = await submit(c, request("waits"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    stepper, tid = c._stepper, record.transfer_id
    waiting = dataclasses.replace(record, wait_reason=WaitReason.LARGE_TRANSFER_DELAY)
    stepper._keep(waiting, waiting, None)
    assert tid not in stepper._kept
    stepper._keep(record, record, None)
    assert stepper._kept[tid].record is record
    stepper._kept.clear()
    written = dataclasses.replace(waiting, reason="written")
    stepper._keep(waiting, written, None)
    assert stepper._kept[tid].record is written
    stepper._kept.clear()
    # a decision recorded by a step that wrote no state: the same rule, then its kind shown
    decided = await store.decision(tid)
    assert decided is not None
    undecided = dataclasses.replace(waiting, decision=None)
    stepper._keep(undecided, undecided, decided)
    assert tid not in stepper._kept
    plain = dataclasses.replace(record, decision=None)
    stepper._keep(plain, plain, decided)
    assert stepper._kept[tid].record.decision is ClaimKind.COMMIT
    assert stepper._kept[tid].decision is decided
    stepper._kept.clear()


@pytest.mark.batch  # issue 14: records known without a read
async def test_a_fresh_transfer_reads_no_record_in_its_driver(coordinator) -> None:
    """Each step takes the record its last step left (the first, the one admission
    stored): a transfer that commits without a failed step reads its record 0 times in its
    driver, not once per step (5)."""
    c, _, store = coordinator
    reads: list[bytes] = []
    original = store.get

    async def counted(tid: bytes) -> object:
        reads.append(tid)
        return await original(tid)

    store.get = counted  # type: ignore[method-assign]
    await submit(c, request("fresh"))

    async def committed() -> bool:
        return (await store.count_by_state()).get(TransferState.COMMITTED, 0) == 1

    await eventually(committed, 10, "committed", interval=0.02)
    assert reads == []
    assert c._stepper._kept == {}, "a terminal step keeps nothing"


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_transfer_recorded_long_after_its_checks_reads_before_the_lock(
    coordinator,
) -> None:
    """SECURITY: admission's reads stand in for the first step's only while fresh
    (ADMISSION_FRESH_S). A batch item recorded after a slow sibling's check reads both legs
    and the lane again before its lock, so the target still answered just before escrow."""
    from bridge.coordinator.admission import ADMISSION_FRESH_S

    c, relayers, store = coordinator
    reads, flows = count_calls(relayers, "get_leg"), count_calls(relayers, "flow_status")
    req = request("late")
    admitted = await c.check_submit(req, instructed(c._network, req))
    late = dataclasses.replace(admitted, checked_at=time.monotonic() - ADMISSION_FRESH_S - 1)
    record, created = await c.record_submit(late)
    assert created
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert reads == {"a": 3, "b": 3}, "the lock step read both legs first"
    assert flows == {"a": 2, "b": 2}, "the gate read the lane again"


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_failed_step_leaves_no_known_legs_behind(coordinator) -> None:
    """The known pair (and the kept record) is taken before the step's first await: a step
    that fails (the target's relayer unavailable once for the mint, here) is retried with
    reads, however long the outage lasted."""

    c, relayers, store = coordinator
    reads = count_calls(relayers, "get_leg")
    failing = fail_submit_once(relayers["b"], Action.COMMIT)
    record, _ = await submit(c, request("store-blip"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert not failing
    assert reads == {"a": 3, "b": 3}, "the retried APPLY step read the legs"
    assert c._stepper._known == {}
    assert c._stepper._kept == {}


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_lock_is_taken_as_known_only_towards_an_untouched_target(coordinator) -> None:
    """The lock's known pair serves the prepare only: when the target already showed a leg
    (here PREPARED before any lock, as a lying relayer could report it), the step after the
    lock reads both legs, so certifying COMMIT never uses a source leg it did not read (its
    large-transfer notBefore)."""
    from bridge.coordinator.admission import ADMISSION_FRESH_S

    c, relayers, store = coordinator
    reads = count_calls(relayers, "get_leg")
    req = request("target-first")
    admitted = await c.check_submit(req, instructed(c._network, req))
    terms = admitted.record.terms
    relayers["b"].legs[(terms.transfer_id, Leg.INBOUND)] = LegStatus(
        LegState.PREPARED, terms.terms_hash, 0, 1
    )
    late = dataclasses.replace(admitted, checked_at=time.monotonic() - ADMISSION_FRESH_S - 1)
    record, _ = await c.record_submit(late)  # late: the lock step reads the legs
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert reads == {"a": 3, "b": 3}, "lock step, after the lock, and at the end"


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_lock_reported_already_applied_is_read_before_the_prepare(coordinator) -> None:
    """Only a lock this coordinator has just landed is taken as known: one the ledger
    reports already applied (an earlier attempt, or someone else's under the same id) is
    read before anything else is done for the transfer."""
    c, relayers, store = coordinator
    reads = count_calls(relayers, "get_leg")
    a = relayers["a"]
    original_submit = a.submit

    async def lock_already_applied(action: Action, *args: object) -> TxOutcome:
        out = await original_submit(action, *args)  # type: ignore[arg-type]
        return dataclasses.replace(out, already_applied=action is Action.LOCK)

    a.submit = lock_already_applied  # type: ignore[method-assign]
    record, _ = await submit(c, request("applied"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert reads == {"a": 3, "b": 3}, "the prepare step read both legs first"


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_new_transfer_whose_id_is_already_taken_reads_after_the_refused_lock(
    coordinator,
) -> None:
    """The one case where 'just recorded, so both legs are NONE' is wrong: the id is already
    locked on the source under other terms. The lock taken on that assumption is refused by
    the ledger; the driver then reads the leg and fails the transfer, moving nothing."""
    c, relayers, store = coordinator
    req = request("taken")
    instruction = instructed(c._network, req)
    tid = terms_for(c._network, req, instruction).transfer_id
    relayers["a"].legs[(tid, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, secrets.token_bytes(32), 0, 1
    )
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.TRANSFER_EXISTS, "id taken")
    record, created = await c.submit(req, instruction)
    assert created and record.transfer_id == tid
    assert await final(store, tid) is TransferState.FAILED
    got = await store.get(tid)
    assert got is not None and "held on a by other terms" in got.reason
    assert relayers["a"].submitted == [Action.LOCK], "one lock, refused, then a read"
    assert relayers["b"].submitted == []


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_stop_ends_the_sweep_too(coordinator) -> None:
    """Supervisor.stop waits for its sweep as for the drivers (it was only cancelled)."""
    c, _, _ = coordinator
    sweep = c._drivers._supervisor
    assert sweep is not None and not sweep.done()
    await c.stop()
    assert sweep.done()
    await c.start()


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_stopping_forgets_the_known_legs(coordinator) -> None:
    """Another coordinator may move the transfers while this one is stopped (a lost lease),
    so nothing assumed before the stop is used after it."""
    c, _, store = coordinator
    record, _ = await submit(c, request("stopped"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    c._stepper.note_new(record)
    assert c._stepper._known and c._stepper._kept
    await c._stepper.record_for_step(record.transfer_id)  # handed to a step never run
    assert c._stepper._handed and not c._stepper._kept
    await c.stop()
    assert c._stepper._known == {} and c._stepper._kept == {} and c._stepper._handed == {}
    await c.start()


async def test_transfer_id_held_by_other_terms_fails_without_moving_anything(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.TRANSFER_EXISTS, "front-run")
    relayers["a"].squat = True
    record, _ = await submit(c, request())
    assert await final(store, record.transfer_id) is TransferState.FAILED
    got = await store.get(record.transfer_id)
    assert got is not None
    assert "held on a by other terms" in got.reason
    assert relayers["b"].submitted == [], "nothing certified or prepared for the squatted id"


async def test_definitive_refusal_is_rechecked_against_the_ledger(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.DEADLINE_PASSED, "deadline=1")
    relayers["a"].land_lock_anyway = True
    record, _ = await submit(c, request("k2"))

    async def locked() -> bool:
        r = await store.get(record.transfer_id)
        return r is not None and r.state is not TransferState.SUBMITTED

    await eventually(locked, 10, "the lock to be found", interval=0.02)
    got = await store.get(record.transfer_id)
    assert got is not None
    assert got.state is not TransferState.FAILED, "an earlier lock landed: not FAILED"


async def test_definitive_refusal_with_nothing_locked_fails(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await submit(c, request("k3"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    got = await store.get(record.transfer_id)
    assert got is not None
    assert "InsufficientBalance" in got.reason


async def test_lock_towards_an_unknown_bridge_is_not_adopted(coordinator) -> None:
    c, relayers, store = coordinator
    terms = TransferTerms(
        secrets.token_bytes(32), ISIN.encode().ljust(32, b"\0"), 3, _word("a"), b"\0" * 12 + b"\xaa" * 20,
        _word("b"), b"\0" * 12 + b"\xcc" * 20, b"\0" * 12 + b"\x11" * 20, b"\0" * 12 + b"\x11" * 20, b"\0" * 12 + b"\x11" * 20, 2**40,
    )  # fmt: skip
    event = lock_event(terms, 3)
    assert await c.on_events("a", [event], 3) == 1
    assert await store.get(terms.transfer_id) is None
    good = TransferTerms(
        terms.nonce, terms.security, 3, terms.src_ledger, terms.src_bridge, terms.dst_ledger,
        b"\0" * 12 + b"\xbb" * 20, terms.sender, terms.recipient, terms.instructor, terms.deadline,
    )  # fmt: skip
    adopted = lock_event(good, 4, tx="0x02")
    relayers["a"].legs[(good.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, good.terms_hash, 0, 4
    )  # adopted only once the ledger shows the lock (tests/unit/test_event_intake.py)
    await c.on_events("a", [adopted], 4)
    assert await store.get(good.transfer_id) is not None
    assert await c.on_events("a", [adopted], 4) == 0, "re-delivery is deduplicated"


async def test_a_lock_landing_after_failed_is_found_by_the_supervisor(coordinator) -> None:
    """The lock was refused, then an earlier attempt lands and its event is never seen:
    the supervisor's sweep re-reads the source leg and drives the transfer to an end."""
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await submit(c, request("k4"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    relayers["a"].lock_refusal = None
    relayers["a"].legs[(record.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, record.terms.terms_hash, 0, 3
    )

    async def committed() -> bool:
        r = await store.get(record.transfer_id)
        return r is not None and r.state is TransferState.COMMITTED

    await eventually(committed, 10, "the late lock committed", interval=0.05)
    assert relayers["b"].submitted == [Action.PREPARE, Action.COMMIT]
    assert relayers["a"].many_reads >= 1  # ---- batch: the sweep reads legs per ledger


async def test_a_lock_with_other_terms_after_failed_is_not_adopted(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await submit(c, request("k5"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    relayers["a"].legs[(record.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, secrets.token_bytes(32), 0, 3
    )
    await c._recheck_failed()  # what a sweep does
    got = await store.get(record.transfer_id)
    assert got is not None
    assert got.state is TransferState.FAILED, "other terms are never driven as ours"
    assert relayers["b"].submitted == []


# -- protocol v2: the coordinator checks the brokerage's instruction before recording --------


@pytest.mark.security
async def test_instructed_terms_are_the_brokerages(coordinator) -> None:
    c, relayers, store = coordinator
    req = request("v2-1")
    instruction = instructed(c._network, req)
    record, created = await c.submit(req, instruction)
    assert created
    assert record.terms.nonce == instruction.nonce
    assert record.terms.deadline == instruction.deadline
    assert record.terms.instructor == b"\0" * 12 + BROKER_A.address
    assert record.instruction == instruction.signature
    stored = await store.get(record.transfer_id)
    assert stored is not None and stored.instruction == instruction.signature
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert relayers["a"].instructions == [instruction.signature], "the LOCK carries it"


@pytest.mark.security
@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        ("stranger", UnauthorisedInstructor, "not an instruction key registered for ledger a"),
        ("forged", InvalidInstruction, "InvalidInstruction: signed by 0x"),
        ("other_terms", InvalidInstruction, "InvalidInstruction: signed by 0x"),
        ("deadline_far", InvalidInput, "more than transfer_ttl=60s ahead"),
        ("deadline_past", InvalidInput, "instruction.deadline has passed"),
    ],
)
async def test_bad_instructions_are_refused_before_anything_is_recorded(
    coordinator, mutate: str, error: type[Exception], match: str
) -> None:
    c, relayers, store = coordinator
    req = request(f"bad-{mutate}")
    good = instructed(c._network, req)
    stranger = LocalKeySigner(bytes([9]) * 32)
    bad = {
        "stranger": lambda: instructed(c._network, req, signer=stranger),
        "forged": lambda: dataclasses.replace(
            good, signature=instructed(c._network, req, signer=stranger).signature
        ),
        "other_terms": lambda: dataclasses.replace(
            good,
            signature=instructed(
                c._network, dataclasses.replace(req, amount=req.amount + 1)
            ).signature,
        ),
        "deadline_far": lambda: instructed(c._network, req, deadline=int(time.time()) + 500),
        "deadline_past": lambda: instructed(c._network, req, deadline=int(time.time()) - 1),
    }[mutate]()
    with pytest.raises(error, match=match):
        await c.submit(req, bad)
    assert await store.get_by_key(req.source_ledger, req.idempotency_key) is None, (
        "nothing recorded"
    )
    assert relayers["a"].submitted == [], "nothing sent to any ledger"


@pytest.mark.security
async def test_idempotency_key_reused_with_another_instruction_is_a_conflict(
    coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _, store = coordinator
    req = request("v2-conflict")
    signed = instructed(c._network, req)
    first, _ = await c.submit(req, signed)
    again, created = await c.submit(req, signed)
    assert not created and again.transfer_id == first.transfer_id
    other = instructed(c._network, req, nonce=b"\x42" * 32)
    with pytest.raises(Conflict, match="other instructed terms"):
        await c.submit(req, other)
    forged = dataclasses.replace(
        instructed(c._network, req),
        signature=instructed(c._network, req, nonce=b"\x43" * 32).signature,
    )
    with pytest.raises(InvalidInstruction):
        await c.submit(req, forged)
    await final(store, first.transfer_id)
    # The same request retried after its deadline: still the recorded transfer.
    later = time.time() + 3600
    monkeypatch.setattr("bridge.coordinator.engine.time.time", lambda: later)
    record, created = await c.submit(req, signed)
    assert not created and record.transfer_id == first.transfer_id


@pytest.mark.security
@pytest.mark.parametrize("instructed", [False, True])
async def test_an_uninstructed_lock_is_released_never_prepared(coordinator, instructed) -> None:
    """A lock whose instructor has no authority (a rogue relayer's, say) is adopted from its
    event and driven to ABORT: the committee is never asked for LOCKED, the target never
    prepares, the escrow goes back to the holder."""
    c, relayers, store = coordinator
    rogue = LocalKeySigner(secrets.token_bytes(32))
    instructor = BROKER_A.address if instructed else rogue.address
    terms, event = holder_lock(relayers, instructor, 3)
    tid = terms.transfer_id
    assert await c.on_events("a", [event], 3) == 1
    committee = c._committee
    if instructed:
        assert await final(store, tid) is TransferState.COMMITTED
        assert committee.kinds[0] is ClaimKind.LOCKED
        return
    assert await final(store, tid) is TransferState.ABORTED
    assert committee.kinds == [ClaimKind.ABORT], "never LOCKED"
    assert relayers["b"].submitted == [Action.ABORT], "the target is tombstoned, not prepared"
    assert relayers["a"].submitted == [Action.ABORT], "the escrow is released"
    assert relayers["a"].legs[(tid, Leg.OUTBOUND)].state is LegState.RELEASED


@pytest.mark.security
@pytest.mark.parametrize("same_request", [True, False])
async def test_a_key_in_use_is_not_revealed_to_a_caller_without_a_valid_instruction(
    coordinator, same_request: bool
) -> None:
    # Review finding 7: the key was looked up before the instruction was checked, so a
    # stranger learnt which keys were in use (Conflict vs PERMISSION_DENIED).
    c, _, store = coordinator
    req = request("victim-key")
    first, _ = await submit(c, req)
    assert await final(store, first.transfer_id) is TransferState.COMMITTED  # no writes after
    probe = req if same_request else dataclasses.replace(req, amount=req.amount + 1)
    stranger = LocalKeySigner(bytes([9]) * 32)
    with pytest.raises(UnauthorisedInstructor, match="not an instruction key registered"):
        await c.submit(probe, instructed(c._network, probe, signer=stranger))
    assert await store.get_by_key("a", "victim-key") == await store.get(first.transfer_id)


@pytest.mark.security
async def test_the_same_instruction_under_another_key_is_a_conflict(coordinator) -> None:
    # Review finding 8: this crashed with INTERNAL (an assert in the store).
    c, _, store = coordinator
    req = request("first-key")
    signed = instructed(c._network, req)
    first, _ = await c.submit(req, signed)
    renamed = dataclasses.replace(req, idempotency_key="second-key")
    with pytest.raises(Conflict, match=f"transfer 0x{first.transfer_id.hex()} .*another"):
        await c.submit(renamed, signed)
    assert await store.get_by_key("a", "second-key") is None, "nothing recorded"
    history = await store.history(first.transfer_id, 0)
    assert history[0].detail == "accepted"
