"""The coordinator's side of the depository kill switch, with in-memory ledgers.

``HaltBook`` (record only what the ledger's own depository key signed, deliver in sequence,
idempotently) and the driver's gates (queue before the lock, no prepare while the target is
halted, the mint waits and COMMIT stays final, FAILED only when the deadline passed while
queued). The ledgers' enforcement itself is tested on anvil and in the chaincode tests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.engine import Coordinator
from bridge.coordinator.halts import HaltBook, OrderState, SqliteHaltStore
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected, PreconditionFailed, Unavailable
from bridge.domain.governance import (
    ZERO_WORD,
    HaltStatus,
    OrderAction,
    OrderRefused,
    SignedOrder,
    make_order,
    sign_order,
    verify_order,
)
from bridge.domain.ids import SecurityId
from bridge.domain.legs import Action, LegState, TxOutcome
from bridge.domain.signer import LocalKeySigner
from bridge.domain.transfer import TransferState
from tests.support import eventually
from tests.unit.test_coordinator_driver import (  # noqa: F401 (the fixture)
    ISIN,
    FakeRelayer,
    coordinator,
    final,
    instructed,
    request,
)

pytestmark = [pytest.mark.unit, pytest.mark.governance]

DEPOSITORY = LocalKeySigner(secrets.token_bytes(32))


@dataclass
class HaltingRelayer(FakeRelayer):
    """A fake ledger that also keeps halt flags and applies orders with the core's rule."""

    flags: dict[bytes, bool] = field(default_factory=dict)
    sequence: int = 0
    network: bytes = b""
    word: bytes = b""
    unavailable: int = 0
    applied: list[int] = field(default_factory=list)

    def halted_word(self, sec: bytes) -> bool:
        return self.flags.get(sec, False) or self.flags.get(ZERO_WORD, False)

    async def halt_status(self, security: str | None) -> HaltStatus:
        word = ZERO_WORD if security is None else SecurityId(security).word
        return HaltStatus(
            self.flags.get(word, False), self.flags.get(ZERO_WORD, False), self.sequence,
            DEPOSITORY.address,
        )  # fmt: skip

    async def apply_order(self, signed: SignedOrder) -> TxOutcome:
        if self.unavailable:
            self.unavailable -= 1
            raise Unavailable("ledger down")
        if self.sequence >= signed.order.sequence:
            return TxOutcome("", 1, True)
        try:
            verify_order(
                signed, DEPOSITORY.address, self.network, self.word, self.sequence, int(time.time())
            )
        except OrderRefused as exc:
            raise LedgerRejected(str(exc.reason), str(exc)) from None
        self.sequence = signed.order.sequence
        self.flags[signed.order.security] = signed.order.action == OrderAction.HALT
        self.applied.append(signed.order.sequence)
        return TxOutcome("0x" + secrets.token_hex(32), 1, False)

    async def submit(self, action: Action, terms: Any, cert: Any, instruction: bytes = b"") -> Any:
        # SECURITY (simulated ledger): the endpoint refuses lock, prepare and mint while halted.
        into = terms.dst_ledger == self.word
        if self.halted_word(terms.security) and (
            action in (Action.LOCK, Action.PREPARE) or (action is Action.COMMIT and into)
        ):
            raise LedgerRejected(ErrorReason.SECURITY_HALTED, "halted")
        return await super().submit(action, terms, cert, instruction)


@pytest.fixture
async def halting(coordinator, tmp_path: Path):  # noqa: F811
    c, relayers, store = coordinator
    for name in ("a", "b"):
        d = c.domains[name]
        relayers[name] = HaltingRelayer(name, network=d.network_word, word=d.ledger_word)
    c._relayers = dict(relayers)
    hstore = SqliteHaltStore(tmp_path / "h.sqlite")
    book = HaltBook(hstore, relayers, c.domains, on_change=c.wake_all, cache_s=0, retry_s=0.05)  # type: ignore[arg-type]
    c.set_halts(book)
    await book.start()
    yield c, relayers, store, book
    await book.stop()
    hstore.close()


def order(c: Coordinator, ledger: str, action: OrderAction, seq: int, **kw: Any) -> SignedOrder:
    d = c.domains[ledger]
    o = make_order(
        network=d.network_word,
        ledger=d.ledger_word,
        security=kw.pop("security", SecurityId(ISIN).word),
        action=action,
        sequence=seq,
        expiry=kw.pop("expiry", int(time.time()) + 600),
    )
    return sign_order(kw.pop("key", DEPOSITORY), o)


async def applied(book: HaltBook, ledger: str, seq: int) -> None:
    async def probe() -> bool:
        return any(
            r.ledger == ledger and r.signed.order.sequence == seq and r.state is OrderState.APPLIED
            for r in await book.orders()
        )

    await eventually(probe, 10, f"order {seq} applied on {ledger}", interval=0.02)


async def test_orders_are_checked_against_the_ledgers_key_and_delivered(halting) -> None:
    c, relayers, _, book = halting
    forged = order(c, "a", OrderAction.HALT, 5, key=LocalKeySigner(secrets.token_bytes(32)))
    with pytest.raises(OrderRefused) as refused:
        await book.submit(forged)
    assert refused.value.reason is ErrorReason.NOT_DEPOSITORY
    with pytest.raises(PreconditionFailed, match="OrderExpired"):
        await book.submit(order(c, "a", OrderAction.HALT, 5, expiry=int(time.time()) - 1))
    assert await book.orders() == [], "refused orders are not recorded"
    relayers["a"].unavailable = 2  # delivery waits and retries, level-triggered
    halt = order(c, "a", OrderAction.HALT, 5)
    records = await book.submit(halt)
    assert [r.state for r in records] == [OrderState.PENDING]
    await applied(book, "a", 5)
    assert relayers["a"].flags[SecurityId(ISIN).word]
    again = await book.submit(halt)  # idempotent
    assert again[0].state is OrderState.APPLIED and relayers["a"].applied == [5]
    with pytest.raises(PreconditionFailed, match="StaleOrder"):
        await book.submit(order(c, "a", OrderAction.RELEASE, 4))


async def test_orders_are_delivered_in_sequence_per_ledger(halting) -> None:
    c, relayers, _, book = halting
    relayers["b"].unavailable = 3
    await book.submit(order(c, "b", OrderAction.HALT, 10))
    await book.submit(order(c, "b", OrderAction.RELEASE, 11))
    await applied(book, "b", 11)
    assert relayers["b"].applied == [10, 11]
    assert not relayers["b"].flags[SecurityId(ISIN).word]


async def test_not_yet_locked_waits_while_halted_then_goes(halting) -> None:
    c, relayers, store, book = halting
    await book.submit(order(c, "a", OrderAction.HALT, 1))
    record, _ = await c.submit(request("h1"), instructed(c._network, request("h1")))

    async def halted_reason() -> bool:
        r = await store.get(record.transfer_id)
        return r is not None and r.reason.startswith("HALTED: ")

    await eventually(halted_reason, 10, "the HALTED reason", interval=0.02)
    got = await store.get(record.transfer_id)
    assert got is not None and got.state is TransferState.SUBMITTED
    assert Action.LOCK not in relayers["a"].submitted, "no lock is even attempted"
    assert await c.halted_on(got) == ["a"]
    await book.submit(order(c, "a", OrderAction.RELEASE, 2))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED


async def test_not_yet_locked_fails_when_its_deadline_passes_while_halted(halting) -> None:
    c, relayers, store, book = halting
    await book.submit(order(c, "a", OrderAction.HALT, 1, security=None))  # the whole ledger
    req = request("h2")
    record, _ = await c.submit(req, instructed(c._network, req, deadline=int(time.time()) + 2))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    got = await store.get(record.transfer_id)
    assert got is not None and got.reason.startswith("HALTED: ") and "nothing moved" in got.reason
    assert Action.LOCK not in relayers["a"].submitted


async def test_locked_transfer_does_not_prepare_on_a_halted_target(halting) -> None:
    c, relayers, store, book = halting
    await book.submit(order(c, "b", OrderAction.HALT, 1))
    record, _ = await c.submit(request("h3"), instructed(c._network, request("h3")))

    async def locked_waiting() -> bool:
        r = await store.get(record.transfer_id)
        return r is not None and r.state is TransferState.SOURCE_LOCKED and "HALTED" in r.reason

    await eventually(locked_waiting, 10, "locked, waiting on the halt", interval=0.02)
    assert Action.PREPARE not in relayers["b"].submitted
    await book.submit(order(c, "b", OrderAction.RELEASE, 2))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED


async def test_prepared_transfer_burns_but_the_mint_waits_and_commit_stays(halting) -> None:
    c, relayers, store, book = halting
    original = relayers["b"].submit
    seen: list[Action] = []

    async def halt_after_prepare(action: Action, terms: Any, cert: Any, ins: bytes = b"") -> Any:
        out = await original(action, terms, cert, ins)
        if action is Action.PREPARE:
            seen.append(action)
            await book.submit(order(c, "b", OrderAction.HALT, 1))
        return out

    relayers["b"].submit = halt_after_prepare  # type: ignore[method-assign]
    record, _ = await c.submit(request("h4"), instructed(c._network, request("h4")))

    async def committing_halted() -> bool:
        r = await store.get(record.transfer_id)
        return r is not None and r.state is TransferState.COMMITTING and "HALTED" in r.reason

    await eventually(committing_halted, 10, "COMMIT decided, mint waiting", interval=0.02)
    assert relayers["a"].submitted[-1] is Action.COMMIT, "the source burn goes"
    assert {s.state for s in relayers["b"].legs.values()} == {LegState.PREPARED}
    assert Action.ABORT not in relayers["a"].submitted + relayers["b"].submitted
    await book.submit(order(c, "b", OrderAction.RELEASE, 2))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert seen == [Action.PREPARE]
    assert LegState.MINTED in {s.state for s in relayers["b"].legs.values()}


# ---- review finding 5: a superseded HALT is never APPLIED ----------------------------------


@pytest.mark.security
async def test_a_superseded_halt_is_skipped_alarms_and_keeps_gating(halting) -> None:
    """The ledger's sequence passed a recorded HALT (a later RELEASE was applied straight on
    the ledger) before it was delivered: the HALT never took effect, so it must not be
    reported APPLIED; it is SKIPPED and the drivers still see its scope halted."""
    c, relayers, _, book = halting
    relayers["a"].unavailable = 10**6  # the HALT cannot be delivered for now
    halt = order(c, "a", OrderAction.HALT, 5)
    await book.submit(halt)
    release = order(c, "a", OrderAction.RELEASE, 6)
    relayers["a"].sequence = 6  # applied on the ledger by someone else
    relayers["a"].flags[release.order.security] = False
    relayers["a"].unavailable = 0

    async def skipped() -> bool:
        return [r.state for r in await book.orders()] == [OrderState.SKIPPED]

    await eventually(skipped, 10, "the HALT skipped", interval=0.02)
    assert relayers["a"].applied == [], "nothing was applied by the coordinator"
    assert await book.halted("a", SecurityId(ISIN)), "a skipped HALT keeps gating"
    assert not await book.halted("b", SecurityId(ISIN))


@pytest.mark.security
async def test_an_order_is_applied_only_when_the_ledger_shows_it(halting) -> None:
    """A relayer that reports the order applied while the ledger does not show it: the order
    stays PENDING (and gating) until the ledger does."""
    c, relayers, _, book = halting
    r = relayers["a"]
    real_apply = r.apply_order

    async def lying(signed: SignedOrder) -> Any:
        return TxOutcome("0x" + secrets.token_hex(32), 1, False)  # nothing applied

    r.apply_order = lying  # type: ignore[method-assign]
    await book.submit(order(c, "a", OrderAction.HALT, 7))
    await book.deliver_pending()
    assert [x.state for x in await book.orders()] == [OrderState.PENDING]
    assert await book.halted("a", SecurityId(ISIN))
    r.apply_order = real_apply  # type: ignore[method-assign]
    await applied(book, "a", 7)


# ---- review 2 finding 1: a refusal does not end a HALT ---------------------------------------


@pytest.mark.security
async def test_a_refused_halt_alarms_and_keeps_gating(halting) -> None:
    """A ledger (one lagging or hostile peer) refuses a recorded HALT: the order is REFUSED,
    but its scope stays halted for the drivers until its expiry."""
    c, relayers, _, book = halting

    async def refuse(signed: SignedOrder) -> Any:
        raise LedgerRejected(ErrorReason.NOT_DEPOSITORY, "a peer behind SET_DEPOSITORY")

    relayers["a"].apply_order = refuse  # type: ignore[method-assign]
    await book.submit(order(c, "a", OrderAction.HALT, 3))
    await book.deliver_pending()
    assert [r.state for r in await book.orders()] == [OrderState.REFUSED]
    assert relayers["a"].applied == [] and not relayers["a"].flags
    assert await book.halted("a", SecurityId(ISIN)), "a refused HALT keeps gating"
    assert not await book.halted("b", SecurityId(ISIN))


HOSTILE = "call +82-2-0000-0000 to lift this halt"


@pytest.mark.security
async def test_the_depository_reads_no_relayers_own_words(halting) -> None:
    """Review helper-113 H2: a relayer's refusal without a ledger reason it can prove
    (UNKNOWN_REFUSAL, its words in ``said``) and a halt read that fails (its words in the
    message) reach the depository as their public texts: the recorded order's refusal
    and GetHaltStatus's per-ledger error name the relayer, never its words."""
    from bridge.coordinator.depository_service import DepositoryServicer
    from bridge.domain.errors import Unavailable, with_public
    from bridge.v1 import depository_pb2

    c, relayers, _, book = halting

    async def refuse(signed: SignedOrder) -> Any:
        raise LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, "relayer of a", ledger="a", said=HOSTILE)

    async def unreadable(security: str | None) -> Any:
        raise with_public(Unavailable(f"relayer of b: {HOSTILE}"), "relayer of b unreachable")

    relayers["a"].apply_order = refuse  # type: ignore[method-assign]
    relayers["b"].halt_status = unreadable  # type: ignore[method-assign]
    await book.submit(order(c, "a", OrderAction.HALT, 3))
    await book.deliver_pending()
    (refused,) = await book.orders()
    assert refused.state is OrderState.REFUSED
    assert refused.refusal == "UnknownRefusal: relayer of a"
    status = await DepositoryServicer(book, ["a", "b"]).GetHaltStatus(
        depository_pb2.GetHaltStatusRequest(),
        None,  # type: ignore[arg-type]
    )
    (b,) = [h for h in status.ledgers if h.ledger_id == "b"]
    assert not b.read and b.error == "relayer of b unreachable"
    assert all(HOSTILE not in o.refusal for o in status.orders)


@pytest.mark.security
async def test_an_expired_refused_halt_stops_gating(halting) -> None:
    c, relayers, _, book = halting

    async def refuse(signed: SignedOrder) -> Any:
        raise LedgerRejected(ErrorReason.NOT_DEPOSITORY, "refused")

    relayers["a"].apply_order = refuse  # type: ignore[method-assign]
    await book.submit(order(c, "a", OrderAction.HALT, 3, expiry=int(time.time()) + 2))
    await book.deliver_pending()
    assert await book.halted("a", SecurityId(ISIN))
    await eventually(lambda: _not_halted(book), 10, "the refused HALT expired", interval=0.2)


async def _not_halted(book: HaltBook) -> bool:
    return not await book.halted("a", SecurityId(ISIN))


@pytest.mark.security
async def test_a_refused_release_does_not_lift_a_halt(halting) -> None:
    c, relayers, _, book = halting
    await book.submit(order(c, "a", OrderAction.HALT, 3))
    await applied(book, "a", 3)
    real_apply = relayers["a"].apply_order

    async def refuse(signed: SignedOrder) -> Any:
        raise LedgerRejected(ErrorReason.NOT_DEPOSITORY, "refused")

    relayers["a"].apply_order = refuse  # type: ignore[method-assign]
    await book.submit(order(c, "a", OrderAction.RELEASE, 4))
    await book.deliver_pending()
    assert [r.state for r in await book.orders()] == [OrderState.APPLIED, OrderState.REFUSED]
    assert await book.halted("a", SecurityId(ISIN)), "a refused RELEASE lifts nothing"
    relayers["a"].apply_order = real_apply  # type: ignore[method-assign]


# ---- the gating orders, read once and again after each write (issue 14)


class _CountingStore(SqliteHaltStore):
    """The real SQLite halt store, counting the gating reads and able to hold one read
    back until released (to race it against a write)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gating_reads = 0
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()
        self.fail_set_state = False

    async def orders(
        self, ledger: str | None = None, pending_only: bool = False, gating: bool = False
    ) -> list[Any]:
        got = await super().orders(ledger, pending_only, gating)
        if gating:
            self.gating_reads += 1
            if self.hold is not None:
                hold, self.hold = self.hold, None
                self.held.set()
                await hold.wait()  # answers what it read before the write
        return got

    async def set_state(self, *args: Any, **kwargs: Any) -> None:
        await super().set_state(*args, **kwargs)
        if self.fail_set_state:
            raise Unavailable("the database went away after the commit")


@pytest.fixture
async def counted(coordinator, tmp_path: Path):  # noqa: F811
    c, relayers, _ = coordinator
    for name in ("a", "b"):
        d = c.domains[name]
        relayers[name] = HaltingRelayer(name, network=d.network_word, word=d.ledger_word)
    hstore = _CountingStore(tmp_path / "h.sqlite")
    book = HaltBook(hstore, relayers, c.domains, cache_s=0, retry_s=3600)  # type: ignore[arg-type]
    yield c, relayers, hstore, book
    await book.stop()
    hstore.close()


@pytest.mark.security
async def test_gating_orders_are_read_once_then_again_after_each_write(counted) -> None:
    """A driver's halt gate reads the orders once per ledger while the book runs; a HALT
    recorded gates from the very next call, and so does each later state change."""
    c, relayers, hstore, book = counted
    sec = SecurityId(ISIN)
    await book.start()
    assert not await book.halted("a", sec) and not await book.halted("a", sec)
    assert not await book.halted("b", sec)
    assert hstore.gating_reads == 2, "one read per ledger, then kept"
    await book.submit(order(c, "a", OrderAction.HALT, 7))
    assert await book.halted("a", sec), "a recorded HALT gates at once (no lifetime to wait)"
    assert hstore.gating_reads == 3
    await applied(book, "a", 7)  # delivered in the background: no longer a gating order
    assert relayers["a"].applied == [7]
    read = hstore.gating_reads
    assert await book.halted("a", sec), "the ledger's status halts it now"
    assert hstore.gating_reads == read + 1, "read again after the APPLIED write"
    relayers["a"].flags.clear()  # the ledger shows it released (cache_s=0: read each time)
    assert not await book.halted("a", sec), "an APPLIED order no longer gates"
    assert hstore.gating_reads == read + 1, "and the orders are kept again"


@pytest.mark.security
async def test_a_gating_read_racing_a_write_is_not_kept(counted) -> None:
    """A read that began before a HALT was recorded answers its caller what it read, but
    is not kept: the next call reads again and sees the HALT."""
    c, _, hstore, book = counted
    sec = SecurityId(ISIN)
    await book.start()
    hstore.hold = asyncio.Event()
    release = hstore.hold
    early = asyncio.create_task(book.halted("a", sec))
    await hstore.held.wait()  # the read is done, its answer not yet returned
    await book.submit(order(c, "a", OrderAction.HALT, 3))
    release.set()
    assert not await early, "the racing read answers what it read"
    assert await book.halted("a", sec), "and is not kept: the HALT gates"


@pytest.mark.security
async def test_a_failed_order_write_still_forgets_the_gating_orders(counted) -> None:
    """A write whose answer was lost (it may have committed) starts a new generation too."""
    c, relayers, hstore, book = counted
    sec = SecurityId(ISIN)

    async def refuse(signed: SignedOrder) -> Any:
        raise LedgerRejected(ErrorReason.ORDER_EXPIRED, "expired on the ledger")

    relayers["a"].apply_order = refuse  # type: ignore[method-assign]
    hstore.fail_set_state = True
    await book.submit(order(c, "a", OrderAction.HALT, 3))  # before start: not delivered
    book._keep_gating = True  # the book runs, without its delivery loop racing this test
    assert await book.halted("a", sec)
    with pytest.raises(Unavailable):
        await book.deliver_pending()  # EXPIRED committed, then the answer failed
    hstore.fail_set_state = False
    assert [r.state for r in await book.orders()] == [OrderState.EXPIRED]
    assert not await book.halted("a", sec), "an EXPIRED order no longer gates"


async def test_gating_orders_are_read_every_time_unless_the_book_runs(counted) -> None:
    """Before ``start`` (a standby's book) and after ``stop`` nothing is kept."""
    _, _, hstore, book = counted
    sec = SecurityId(ISIN)
    await book.halted("a", sec)
    await book.halted("a", sec)
    assert hstore.gating_reads == 2
    await book.start()
    await book.halted("a", sec)
    await book.halted("a", sec)
    assert hstore.gating_reads == 3
    await book.stop()
    await book.halted("a", sec)
    assert hstore.gating_reads == 4


@pytest.mark.security
async def test_kept_orders_are_not_used_once_leadership_may_be_gone(counted, tmp_path) -> None:
    """Attacker review M1: database reads are not fenced, so a leader stalled past its term
    must not answer from the orders it kept; a HALT a new leader recorded in the shared
    store gates this book's drivers as soon as ``leading()`` says the lease may be gone."""
    c, relayers, hstore, _ = counted
    leading = [True]
    book = HaltBook(
        hstore, relayers, c.domains, cache_s=0, retry_s=3600, leading=lambda: leading[0]
    )  # type: ignore[arg-type]
    sec = SecurityId(ISIN)
    await book.start()
    try:
        assert not await book.halted("a", sec)
        assert not await book.halted("a", sec)
        assert hstore.gating_reads == 1, "kept while leading"
        other = SqliteHaltStore(tmp_path / "h.sqlite")  # the new leader, same database
        try:
            new_leader = HaltBook(other, relayers, c.domains)  # type: ignore[arg-type]
            await new_leader.submit(order(c, "a", OrderAction.HALT, 4))
        finally:
            other.close()
        assert not await book.halted("a", sec), "kept: this book has not written anything"
        leading[0] = False  # the lease keeper's window has passed
        assert await book.halted("a", sec), "read from the store: the new leader's HALT"
        assert await book.halted("a", sec)
        assert hstore.gating_reads == 3, "nothing kept while leadership is in doubt"
    finally:
        await book.stop()
