"""A Fabric security's supply at a past height, from the blocks since (past_supply).

The chaincode's pure protocol runs over a store that records, per call, what a Fabric peer
puts in the transaction's read-write set: each key's version when first read, and the
writes. Calls are grouped into blocks; every block's figures are kept. Then, for every past
height, ``past_supply`` rebuilds the figures from the final ones and the blocks since, and
must give exactly the figures ``Supply`` answered at that height. The refusals are checked
on hand-written read-write sets.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.blocks import KeyVersion, TxStateAccess
from bridge.ledgers.fabric.past_supply import REFUSAL, ShardChanges, figures_at, shard_changes
from tests.unit.test_fabric_chaincode_batch import batch_args, lock_items
from tests.unit.test_fabric_chaincode_protocol import (
    ISIN,
    OTHER_ISIN,
    Env,
    Ledger,
    account,
    env,  # noqa: F401  (the fixture)
    finish,
    lock,
    make_terms,
    p,
    prepare,
    supply,
)

pytestmark = [pytest.mark.unit, pytest.mark.batch]

SEC = ISIN.word.hex()


class RecordingStore(p.MemoryStore):
    """A MemoryStore that keeps Fabric's key versions and records one call's read-write
    set: the version of each key at its first read (None: absent) and every write. The
    state it starts from is block 0's only transaction (:meth:`genesis`)."""

    def __init__(self, data: dict[str, bytes]) -> None:
        super().__init__()
        self.data = dict(data)
        self.versions = dict.fromkeys(data, KeyVersion(0, 0))
        self.reads: dict[str, KeyVersion | None] = {}
        self.writes: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        self.reads.setdefault(key, self.versions.get(key))
        return super().get(key)

    def put(self, key: str, value: bytes) -> None:
        self.writes[key] = bytes(value)
        super().put(key, value)

    def delete(self, key: str) -> None:
        self.writes[key] = None
        super().delete(key)

    def commit(self, block: int, tx: int) -> TxStateAccess:
        """End a successful call as transaction ``tx`` of ``block``: its writes' keys now
        have that version."""
        access = TxStateAccess(block, tx, dict(self.reads), dict(self.writes))
        for key, value in self.writes.items():
            if value is None:
                self.versions.pop(key, None)
            else:
                self.versions[key] = KeyVersion(block, tx)
        self.discard()
        return access

    def genesis(self) -> TxStateAccess:
        """The transaction at (0, 0) that wrote the state the store started from."""
        return TxStateAccess(0, 0, {}, dict(self.data))

    def discard(self) -> None:
        """Forget a call that wrote nothing to the ledger (a query or a failed call)."""
        self.reads, self.writes = {}, {}


def figures_now(ledger: Ledger, store: RecordingStore) -> dict[str, int]:
    answer = supply(ledger)
    store.discard()
    return answer


def test_every_past_height_reads_what_supply_answered_then(env: Env) -> None:  # noqa: F811
    """Random issues, redemptions, locks (single and batched), commits and aborts (single and
    batched), prepares, and issues of another security, 1-4 per block on two ledgers; the
    figures rebuilt for every past height equal ``Supply``'s answer at that height."""
    rng = random.Random(20261206)
    holders = [env.alice]
    env.a.call(env.admin, "RegisterSecurity", OTHER_ISIN.isin)
    for _ in range(5):
        holder = account()
        env.a.call(env.admin, "SetEligible", ISIN.isin, holder, "true")
        env.a.call(env.admin, "SetEligible", OTHER_ISIN.isin, holder, "true")
        holders.append(holder)
    stores = {}
    for ledger in env.ledgers():
        stores[ledger.name] = ledger.store = RecordingStore(ledger.store.data)
    history = {name: [store.genesis()] for name, store in stores.items()}
    figures: dict[str, dict[int, dict[str, int]]] = {
        led.name: {0: figures_now(led, stores[led.name])} for led in env.ledgers()
    }
    locked: list[TransferTerms] = []
    prepared: list[TransferTerms] = []
    ops = ["issue", "redeem", "other", "lock", "lock_batch", "finish", "finish_batch",
           "prepare", "end"]  # fmt: skip

    def op_call(op: str) -> tuple[Ledger, Callable[[], object], Callable[[], None]] | None:
        """The ledger, the call and what to note once it committed; None: not possible now."""
        holder = rng.choice(holders)
        if op == "issue":
            return env.a, lambda: env.a.call(env.admin, "Issue", ISIN.isin, holder, "7"), noop
        if op == "redeem":
            return env.a, lambda: env.a.call(env.admin, "Redeem", ISIN.isin, holder, "2"), noop
        if op == "other":
            return env.a, lambda: env.a.call(env.admin, "Issue", OTHER_ISIN.isin, holder, "3"), noop
        if op in ("lock", "lock_batch"):
            ts = [make_terms(env, amount=rng.randint(1, 9)) for _ in range(rng.randint(1, 3))]
            if op == "lock":
                return env.a, lambda: lock(env, ts[0]), lambda: locked.append(ts[0])
            run = lambda: env.a.call(env.relayer, "LockBatch", lock_items(env.a, ts))  # noqa: E731
            return env.a, run, lambda: locked.extend(ts)
        if op in ("finish", "finish_batch") and locked:
            ts = rng.sample(locked, min(len(locked), 1 if op == "finish" else 3))
            kind = rng.choice([ClaimKind.COMMIT, ClaimKind.ABORT])
            done = lambda: [locked.remove(t) for t in ts] and None  # noqa: E731
            if op == "finish":
                return env.a, lambda: finish(env, env.a, kind, ts[0]), done
            fn = "CommitBatch" if kind is ClaimKind.COMMIT else "AbortBatch"
            args = batch_args(env, env.a, kind, ts)
            return env.a, lambda: env.a.call(env.relayer, fn, *args), done
        if op == "prepare" and locked:
            t = rng.choice(locked)
            return env.b, lambda: prepare(env, t), lambda: prepared.append(t)
        if op == "end" and prepared:
            t = prepared.pop(rng.randrange(len(prepared)))
            kind = rng.choice([ClaimKind.COMMIT, ClaimKind.ABORT])
            return env.b, lambda: finish(env, env.b, kind, t), noop
        return None

    applied = 0
    for block in range(1, 41):
        for tx in range(rng.randint(1, 4)):
            planned = op_call(rng.choice(ops))
            if planned is None:
                continue
            on, run, note = planned
            store = stores[on.name]
            try:
                run()
            except p.ChaincodeError:
                store.discard()  # refused: no write reaches the ledger
                continue
            history[on.name].append(store.commit(block, tx))
            note()
            applied += 1
        for led in env.ledgers():
            figures[led.name][block] = figures_now(led, stores[led.name])
    assert applied > 60, applied

    checked = 0
    for led in env.ledgers():
        txs = history[led.name]
        final = figures[led.name][40]
        writes = {KeyVersion(tx.block_number, tx.tx_number): tx.writes for tx in txs}
        shards = {k for tx in txs for k in tx.writes if k.startswith(f"tally/{SEC}/")}
        assert len(shards) > 3, "several counter shards moved"
        for height in range(40):
            after = [tx for tx in txs if tx.block_number > height]
            changes = shard_changes(ISIN, height, after)
            assert changes.origins() <= set(writes)
            assert all(v.block_number <= height for v in changes.origins())
            assert figures_at(final, changes, writes) == figures[led.name][height], height
            checked += 1
    assert checked == 80
    assert figures[env.a.name][0] != figures[env.a.name][40]
    assert figures[env.b.name][0] != figures[env.b.name][40]


def noop() -> None:
    """Nothing to note."""


# --------------------------------------------------------------------------- refusals

SHARD = f"tally/{SEC}/07"
OTHER_SHARD = f"tally/{SEC}/2a"
FIGURES = {"total_supply": 100, "escrowed": 10, "prepared": 5, "burned_out": 3, "minted_in": 2}


def counters(**fields: int) -> bytes:
    return p.canonical_json({k: str(v) for k, v in fields.items()})


def tx(block: int, n: int, reads: dict, writes: dict) -> TxStateAccess:
    return TxStateAccess(block, n, reads, writes)


def test_only_the_counter_shards_move_the_figures() -> None:
    """Amount keys, another security's keys and other chaincode state do not count; a shard
    absent at the height counts from zero and a deleted one is zero now."""
    created = f"tally/{SEC}/3f"
    txs = [
        tx(
            11,
            0,
            {SHARD: KeyVersion(9, 2), f"holder/{SEC}/ab": KeyVersion(3, 0)},
            {SHARD: counters(holders=40), f"holder/{SEC}/ab": b"{}", "relayer/x": b"1"},
        ),
        tx(
            11,
            3,
            {SHARD: KeyVersion(11, 0), created: None},
            {SHARD: counters(holders=45, escrowed=5), created: counters(prepared=2)},
        ),
        tx(12, 0, {OTHER_SHARD: KeyVersion(4, 1)}, {OTHER_SHARD: None}),
        tx(12, 1, {}, {f"tally/{OTHER_ISIN.word.hex()}/07": b"{}", f"holder/{SEC}/01": b"{}"}),
    ]
    changes = shard_changes(ISIN, 10, txs)
    assert changes.before == {SHARD: KeyVersion(9, 2), created: None, OTHER_SHARD: KeyVersion(4, 1)}
    assert (
        changes.now[SHARD] == counters(holders=45, escrowed=5) and changes.now[OTHER_SHARD] is None
    )
    origins = {
        KeyVersion(9, 2): {SHARD: counters(holders=30, escrowed=1)},
        KeyVersion(4, 1): {OTHER_SHARD: counters(burned_out=1, parked=2)},
    }
    # holders +15, escrowed +4, prepared +2, burned_out -1, parked -2
    assert figures_at(FIGURES, changes, origins) == {
        "total_supply": 100 - 15 - 4 + 2,
        "escrowed": 6,
        "prepared": 3,
        "burned_out": 4,
        "minted_in": 2,
    }


@pytest.mark.security
@pytest.mark.parametrize(
    ("written", "what"),
    [
        (f"security/{SEC}", f"security/{SEC}"),  # a pause, a registration
        (f"tally/{SEC}/state", f"tally/{SEC}/state"),  # a recount
        (f"tally/{SEC}/7", f"tally/{SEC}/7"),  # not a shard this code reads as one
    ],
)
def test_a_write_that_changes_more_than_the_counters_is_refused(written: str, what: str) -> None:
    txs = [
        tx(11, 0, {SHARD: KeyVersion(9, 0)}, {SHARD: counters(holders=1)}),
        tx(12, 4, {written: KeyVersion(2, 0)}, {written: b"{}"}),
    ]
    with pytest.raises(InvalidInput) as exc:
        shard_changes(ISIN, 10, txs)
    assert str(exc.value) == f"{REFUSAL}: block 12 changed {ISIN.isin} after 10 ({what})"


@pytest.mark.security
def test_a_shard_written_without_its_read_is_refused() -> None:
    """A blind write leaves the shard's earlier value unknown: never assumed."""
    txs = [tx(11, 0, {OTHER_SHARD: KeyVersion(9, 0)}, {SHARD: counters(holders=1)})]
    with pytest.raises(InvalidInput, match=f"{REFUSAL}: block 11 wrote {SHARD} without"):
        shard_changes(ISIN, 10, txs)


@pytest.mark.security
@pytest.mark.parametrize(
    ("txs", "message"),
    [
        # the second writer read a version other than the first writer's write
        (
            [
                tx(11, 0, {SHARD: KeyVersion(9, 0)}, {SHARD: counters(holders=1)}),
                tx(12, 0, {SHARD: KeyVersion(9, 0)}, {SHARD: counters(holders=2)}),
            ],
            "written at",
        ),
        # the first writer after the height read a version after it
        (
            [tx(12, 0, {SHARD: KeyVersion(11, 1)}, {SHARD: counters(holders=2)})],
            "did not show",
        ),
        # a transaction at the height itself is not one of the blocks after it
        ([tx(10, 0, {SHARD: None}, {SHARD: counters(holders=2)})], "is not after height 10"),
    ],
)
def test_read_sets_that_contradict_the_blocks_are_unavailable(
    txs: list[TxStateAccess], message: str
) -> None:
    with pytest.raises(Unavailable, match=message):
        shard_changes(ISIN, 10, txs)


@pytest.mark.security
def test_origins_that_do_not_hold_the_value_are_unavailable() -> None:
    changes = shard_changes(
        ISIN, 10, [tx(11, 0, {SHARD: KeyVersion(9, 2)}, {SHARD: counters(holders=10)})]
    )
    assert changes.origins() == {KeyVersion(9, 2)}
    with pytest.raises(Unavailable, match="did not write"):
        figures_at(FIGURES, changes, {})
    with pytest.raises(Unavailable, match="did not write"):
        figures_at(FIGURES, changes, {KeyVersion(9, 2): {OTHER_SHARD: counters(holders=1)}})
    with pytest.raises(Unavailable, match="negative figures"):  # 100 - (10 - (-200))
        figures_at(FIGURES, changes, {KeyVersion(9, 2): {SHARD: counters(holders=-200)}})
    with pytest.raises(Unavailable, match=r"malformed counter shard .*not a counter"):
        figures_at(FIGURES, changes, {KeyVersion(9, 2): {SHARD: b'{"forged": "1"}'}})
    with pytest.raises(Unavailable, match="not a JSON object"):
        figures_at(FIGURES, changes, {KeyVersion(9, 2): {SHARD: json.dumps([1]).encode()}})
    # the origin's value itself
    assert figures_at(FIGURES, changes, {KeyVersion(9, 2): {SHARD: counters(holders=4)}}) == {
        **FIGURES,
        "total_supply": 94,
    }


@pytest.mark.security
def test_units_moved_without_the_counters_are_refused() -> None:
    """A leg's amount key written without one of the security's shards: code without the
    counters wrote the block (a downgrade), so the shards do not hold what moved. A holder's
    record alone (eligibility, freeze) moves no unit and is no reason to refuse."""
    for family in ("escrow", "prepared", "parked", "burned", "minted"):
        key = f"{family}/{SEC}/01"
        txs = [tx(11, 2, {key: None}, {key: b"5"})]
        with pytest.raises(InvalidInput) as exc:
            shard_changes(ISIN, 10, txs)
        assert str(exc.value) == (
            f"{REFUSAL}: block 11 moved units of {ISIN.isin} after 10 without its counters"
        )
        other = f"tally/{OTHER_ISIN.word.hex()}/07"  # another security's shard does not count
        with pytest.raises(InvalidInput, match="without its counters"):
            shard_changes(ISIN, 10, [tx(11, 2, {other: None}, {key: b"5", other: b"{}"})])
        with_shard = tx(11, 2, {SHARD: None}, {key: b"5", SHARD: counters(escrowed=5)})
        assert shard_changes(ISIN, 10, [with_shard]).now == {SHARD: counters(escrowed=5)}
    eligibility = tx(11, 0, {f"holder/{SEC}/ab": None}, {f"holder/{SEC}/ab": b"{}"})
    assert shard_changes(ISIN, 10, [eligibility]) == ShardChanges(height=10)
