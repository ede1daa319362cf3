"""Supply counters (ADR 0024): the figures ``Supply`` answers from a security's counter shards.

The Fabric chaincode and the CometBFT app keep, per security, counter shards
``tally/<word>/<nn>``: canonical JSON objects mapping a counter field of COUNTER_FIELDS to a
decimal string (a field absent is 0, a record absent is all zero). ``Supply`` sums every
shard field-wise and answers :func:`figures_of` those sums. The chaincode computes its answer
with this module, and the Fabric adapter uses the same functions to answer a past height
from the shard values the blocks since then overwrote, so both read the counters alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

COUNTER_FIELDS = ("holders", "escrowed", "prepared", "parked", "burned_out", "minted_in")
"""The fields of a counter shard: the units held, escrowed by a Locked outbound leg, prepared
for a Prepared inbound leg, parked by a commit, burned by committed outbound legs and minted
by committed inbound legs (the last two cumulative)."""

SUPPLY_FIGURES = ("total_supply", "escrowed", "prepared", "burned_out", "minted_in")
"""The ``Supply`` answer's figures, in the order the adapters' codecs read them."""


def shard_counters(raw: bytes | None) -> dict[str, int]:
    """The counters of one shard record, every field of COUNTER_FIELDS present (0 when the
    record or the field is absent). ValueError for a field outside COUNTER_FIELDS or a value
    that is not a decimal integer: a record this code did not write is never read as zero."""
    counters = dict.fromkeys(COUNTER_FIELDS, 0)
    if raw is None:
        return counters
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError("a counter shard is not a JSON object")
    for field, value in record.items():
        if field not in counters or not isinstance(value, str):
            raise ValueError(f"counter shard field {field!r}={value!r} is not a counter")
        counters[field] = int(value, 10)
    return counters


def figures_of(sums: Mapping[str, int]) -> dict[str, int]:
    """The ``Supply`` figures of field-wise counter sums: ``total_supply`` is what holders
    hold plus what is escrowed or parked on the ledger; the other figures are their counter.

    Linear: ``figures_of(a)[f] - figures_of(b)[f] == figures_of(a - b)[f]`` for every
    figure, so the figures at an earlier state are the current ones less the figures of the
    counters' changes since (what the Fabric adapter relies on for a past height)."""
    return {
        "total_supply": sums["holders"] + sums["escrowed"] + sums["parked"],
        "escrowed": sums["escrowed"],
        "prepared": sums["prepared"],
        "burned_out": sums["burned_out"],
        "minted_in": sums["minted_in"],
    }
