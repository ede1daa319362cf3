"""A security's ``Supply`` figures at a past Fabric height, from the blocks since (pure).

A Fabric peer evaluates only its current world state, while a supply record names one
height per ledger and members read it after the proposer did (ADR 0006). ``Supply`` is a
function of few keys (ADR 0024): the security record ``security/<id>`` and counting state
``tally/<id>/state``, which only registration, pausing and counting write, and the counter
shards ``tally/<id>/<nn>``, whose field-wise sums give the figures
(:func:`bridge.core.tally.figures_of`, linear in the sums). So for a past height ``h``:

- every shard no VALID transaction after ``h`` wrote holds at ``h`` what it holds now;
- a shard written after ``h`` held, at ``h``, the value its first writer after ``h`` read.
  That read's version names the transaction (at or below ``h``) whose write set holds the
  value; Fabric committed the writer only because the version was still current, so no
  other write of the shard came between;
- the figures at ``h`` are the current ones less ``figures_of`` the shards' changes.

SECURITY: the answer is exact or refused. A write of the security record or the counting
state after ``h``, a shard written without the read that names its earlier value, or a leg's
units moved without a shard (code without the counters; the adapter also refuses a block
that commits a definition of the chaincode) is refused (InvalidInput "Fabric cannot read
supply at a past height: ...", and the coordinator proposes a fresh cut); blocks that
contradict each other are Unavailable; nothing is guessed. The blocks and the origin
transactions come from the member's own peer, the source of its current reads. Only the
chaincode writes its namespace, under the channel's endorsement policy: the feed assumes a
policy no single other organisation satisfies (as every leg does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.core.tally import COUNTER_FIELDS, SUPPLY_FIGURES, figures_of, shard_counters
from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.ids import SecurityId
from bridge.ledgers.fabric.blocks import KeyVersion, TxStateAccess
from bridge.ledgers.fabric.codec import is_amount_key, is_counter_shard_key, is_supply_key

REFUSAL = "Fabric cannot read supply at a past height"
"""How every refusal to answer a past height begins (members and tests match on the type,
InvalidInput; this names the cause for operators)."""


@dataclass(frozen=True)
class ShardChanges:
    """The counter shards of one security that VALID transactions after a past height wrote.

    ``before`` maps each such shard to the version its first writer after that height read
    (None: the shard did not exist at the height); ``now`` maps it to its last write (None:
    deleted). Shards absent from both hold now what they held at the height."""

    height: int
    before: Mapping[str, KeyVersion | None] = field(default_factory=dict)
    now: Mapping[str, bytes | None] = field(default_factory=dict)

    def origins(self) -> frozenset[KeyVersion]:
        """The transactions whose write sets hold the changed shards' values at the height."""
        return frozenset(v for v in self.before.values() if v is not None)


def shard_changes(
    security: SecurityId, height: int, accesses: Iterable[TxStateAccess]
) -> ShardChanges:
    """Collect the shard changes of ``security`` from the VALID transactions of the blocks
    after ``height``, given in ledger order. InvalidInput (REFUSAL) when one of them wrote
    the security record or its counting state, wrote a shard it did not read, or wrote a
    leg's amount key of the security without one of its shards (code without the counters:
    the shards would not hold what moved); Unavailable when a transaction is not after
    ``height`` or a read contradicts an earlier write."""
    word = security.word
    before: dict[str, KeyVersion | None] = {}
    now: dict[str, bytes | None] = {}
    last_writer: dict[str, KeyVersion] = {}
    for tx in accesses:
        if tx.block_number <= height:
            raise Unavailable(f"block {tx.block_number} is not after height {height}")
        at = KeyVersion(tx.block_number, tx.tx_number)
        legs_moved = wrote_shard = False
        for key, value in tx.writes.items():
            if not is_supply_key(key, word):
                continue
            if is_amount_key(key, word):
                # A leg's amount key (escrow, prepared, parked, burned, minted) is written
                # only with a non-zero amount, so the same transaction moves a shard; a
                # holder's record may change without its balance (eligibility, freeze).
                legs_moved = legs_moved or not key.startswith("holder/")
                continue
            if not is_counter_shard_key(key, word):
                raise InvalidInput(
                    f"{REFUSAL}: block {tx.block_number} changed {security.isin}"
                    f" after {height} ({key})"
                )
            if key not in tx.reads:
                raise InvalidInput(
                    f"{REFUSAL}: block {tx.block_number} wrote {key} without reading it,"
                    f" so its value at {height} is not known"
                )
            read = tx.reads[key]
            if key in last_writer:
                if read != last_writer[key]:  # Fabric's MVCC check forbids this
                    raise Unavailable(
                        f"block {tx.block_number} read {key} at {read}, written at"
                        f" {last_writer[key]}"
                    )
            else:
                if read is not None and read.block_number > height:
                    raise Unavailable(
                        f"block {tx.block_number} read {key} at {read}: a write after"
                        f" {height} that the blocks did not show"
                    )
                before[key] = read
            now[key] = value
            last_writer[key] = at
            wrote_shard = True
        if legs_moved and not wrote_shard:  # code without the counters wrote this block
            raise InvalidInput(
                f"{REFUSAL}: block {tx.block_number} moved units of {security.isin} after"
                f" {height} without its counters"
            )
    return ShardChanges(height=height, before=before, now=now)


def figures_at(
    figures_now: Mapping[str, int],
    changes: ShardChanges,
    origin_writes: Mapping[KeyVersion, Mapping[str, bytes | None]],
) -> dict[str, int]:
    """The figures at ``changes.height``: ``figures_now`` (read at the last block the
    changes cover) less ``figures_of`` the changed shards' current minus earlier counters.

    ``origin_writes`` maps every version of ``changes.origins()`` to that transaction's
    writes (a VALID transaction of the chaincode). Unavailable when one is missing, did not
    write the shard, holds a malformed shard record, or the result is negative."""
    delta = dict.fromkeys(COUNTER_FIELDS, 0)
    for key, version in changes.before.items():
        earlier: bytes | None = None
        if version is not None:
            writes = origin_writes.get(version)
            if writes is None or key not in writes:
                raise Unavailable(f"the transaction at {version} did not write {key}")
            earlier = writes[key]
        try:
            current, old = shard_counters(changes.now[key]), shard_counters(earlier)
        except ValueError as exc:
            raise Unavailable(f"malformed counter shard {key}: {exc}") from exc
        for name in COUNTER_FIELDS:
            delta[name] += current[name] - old[name]
    moved = figures_of(delta)
    figures = {name: figures_now[name] - moved[name] for name in SUPPLY_FIGURES}
    if any(v < 0 for v in figures.values()):
        raise Unavailable(f"negative figures at height {changes.height}: {figures}")
    return figures
