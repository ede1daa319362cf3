"""The coordinator's driver decisions, with in-memory relayers and committee (pure logic:
the real-ledger paths are covered by tests/e2e)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.config import dump_toml, load_network
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.records import TransferRequest
from bridge.coordinator.store import SqliteTransferStore
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
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

    async def get_leg(self, tid: bytes, leg: Leg) -> LegStatus:
        return self.legs.get((tid, leg), LegStatus(LegState.NONE, b"\0" * 32, 0, 1))

    async def holder(self, security: str, holder: str) -> HolderStatus:
        return HolderStatus(True, 10**6, 0, True, False, False)

    async def submit(
        self, action: Action, terms: TransferTerms, cert: SignatureSet | None
    ) -> TxOutcome:
        self.submitted.append(action)
        tid, th = terms.transfer_id, terms.terms_hash
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
        }
        leg = Leg.OUTBOUND if terms.src_ledger == _word(self.ledger) else Leg.INBOUND
        self.legs[(tid, leg)] = LegStatus(after[(action, leg)], th, 0, 2)
        return TxOutcome("0x" + secrets.token_hex(32), 2, False)


class FakeCommittee:
    async def certify(
        self, kind: ClaimKind, terms: TransferTerms, ledgers: list
    ) -> dict[str, SignatureSet]:
        return {d.name: SignatureSet(1, (b"\1" * 65,)) for d in ledgers}


def _word(name: str) -> bytes:
    from bridge.domain.ids import LedgerId

    return LedgerId(name).word


@pytest.fixture
async def coordinator(tmp_path: Path):
    (tmp_path / "network.toml").write_text(
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
                    },
                    {
                        "id": "b",
                        "kind": "evm",
                        "rpc_url": "y",
                        "bridge": "0x" + "bb" * 20,
                        "chain_id": 2,
                    },
                ],
            }
        )
    )
    network = load_network(tmp_path / "network.toml")
    store = SqliteTransferStore(tmp_path / "c.sqlite")
    relayers = {"a": FakeRelayer("a"), "b": FakeRelayer("b")}
    c = Coordinator(network, store, relayers, FakeCommittee(), transfer_ttl=60, max_backoff=0.2,  # type: ignore[arg-type]
                    sweep_every=0.1)  # fmt: skip
    await c.start()
    yield c, relayers, store
    await c.stop()
    store.close()


def request(key: str = "k1") -> TransferRequest:
    return TransferRequest(key, ISIN, "a", "b", HOLDER, HOLDER, 5)


async def final(store: SqliteTransferStore, tid: bytes) -> TransferState:
    async def probe() -> TransferState | None:
        r = await store.get(tid)
        return r.state if r is not None and r.state.terminal else None

    return await eventually(probe, 10, "a terminal state", interval=0.02)


async def test_happy_path_commits(coordinator) -> None:
    c, relayers, store = coordinator
    record, created = await c.submit(request())
    assert created
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    assert relayers["a"].submitted == [Action.LOCK, Action.COMMIT]
    assert relayers["b"].submitted == [Action.PREPARE, Action.COMMIT]


async def test_transfer_id_held_by_other_terms_fails_without_moving_anything(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected("TransferExists", "front-run")
    relayers["a"].squat = True
    record, _ = await c.submit(request())
    assert await final(store, record.transfer_id) is TransferState.FAILED
    got = await store.get(record.transfer_id)
    assert got is not None
    assert "held on a by other terms" in got.reason
    assert relayers["b"].submitted == [], "nothing certified or prepared for the squatted id"


async def test_definitive_refusal_is_rechecked_against_the_ledger(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected("DeadlinePassed", "deadline=1")
    relayers["a"].land_lock_anyway = True
    record, _ = await c.submit(request("k2"))

    async def locked() -> bool:
        r = await store.get(record.transfer_id)
        return r is not None and r.state is not TransferState.SUBMITTED

    await eventually(locked, 10, "the lock to be found", interval=0.02)
    got = await store.get(record.transfer_id)
    assert got is not None
    assert got.state is not TransferState.FAILED, "an earlier lock landed: not FAILED"


async def test_definitive_refusal_with_nothing_locked_fails(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected("InsufficientBalance", "balance=1")
    record, _ = await c.submit(request("k3"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    got = await store.get(record.transfer_id)
    assert got is not None
    assert "InsufficientBalance" in got.reason


async def test_lock_towards_an_unknown_bridge_is_not_adopted(coordinator) -> None:
    c, relayers, store = coordinator
    terms = TransferTerms(
        secrets.token_bytes(32), ISIN.encode().ljust(32, b"\0"), 3, _word("a"), b"\0" * 12 + b"\xaa" * 20,
        _word("b"), b"\0" * 12 + b"\xcc" * 20, b"\0" * 12 + b"\x11" * 20, b"\0" * 12 + b"\x11" * 20, 2**40,
    )  # fmt: skip
    event = LedgerEvent(
        "a", EventPosition(3, 0), b"\0" * 32, "0x01", terms.transfer_id, Leg.OUTBOUND,
        LegState.LOCKED, 0, terms.terms_hash, terms,
    )  # fmt: skip
    assert await c.on_events("a", [event], 3) == 1
    assert await store.get(terms.transfer_id) is None
    good = TransferTerms(
        terms.nonce, terms.security, 3, terms.src_ledger, terms.src_bridge, terms.dst_ledger,
        b"\0" * 12 + b"\xbb" * 20, terms.sender, terms.recipient, terms.deadline,
    )  # fmt: skip
    adopted = LedgerEvent(
        "a", EventPosition(4, 0), b"\0" * 32, "0x02", good.transfer_id, Leg.OUTBOUND,
        LegState.LOCKED, 0, good.terms_hash, good,
    )  # fmt: skip
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
    relayers["a"].lock_refusal = LedgerRejected("InsufficientBalance", "balance=1")
    record, _ = await c.submit(request("k4"))
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


async def test_a_lock_with_other_terms_after_failed_is_not_adopted(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected("InsufficientBalance", "balance=1")
    record, _ = await c.submit(request("k5"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    relayers["a"].legs[(record.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, secrets.token_bytes(32), 0, 3
    )
    await c._recheck_failed()  # what a sweep does
    got = await store.get(record.transfer_id)
    assert got is not None
    assert got.state is TransferState.FAILED, "other terms are never driven as ours"
    assert relayers["b"].submitted == []
