"""Flow limits per (security, counterpart ledger) lane, as the ledgers enforce them (ADR 0010).

Each ledger keeps, per lane, an outbound and an inbound token bucket (capacity C, refilled C
per window W, computed lazily from block or transaction time) and a large-transfer allowance
per direction (capacity ``large_threshold``, refilled per ``large_delay``). The ledgers are
the authority; these types carry what an admin sets and what a reader saw, and the
arithmetic the coordinator uses to decide whether a transfer would fit now.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from bridge.domain.errors import InvalidInput

BPS = 10_000
UINT128_LIMIT = 2**128
UINT64_LIMIT = 2**64


class WaitReason(enum.IntEnum):
    """Why a transfer waits on a flow limit (values match the proto enum ``WaitReason``)."""

    NONE = 0
    SOURCE_OUTBOUND_CAPACITY = 1
    TARGET_INBOUND_CAPACITY = 2
    BEHIND_EARLIER_TRANSFER = 3
    LARGE_TRANSFER_DELAY = 4


class FlowDirection(enum.Enum):
    """Which bucket of a lane: units leaving this ledger, or arriving on it."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"


MAX_FLOW_PERIOD = 30 * 24 * 3600
"""Longest ``window`` / ``large_delay`` either ledger accepts (InvalidFlowLimit beyond):
a limit cannot park a leg longer than this (review finding 3)."""


@dataclass(frozen=True, slots=True)
class FlowLimit:
    """What the admin sets for one lane (``setFlowLimit`` / ``SetFlowLimit``).

    Guarantees on construction (InvalidInput otherwise), the ledgers' own rules: a rate limit
    iff ``window`` != 0 (then at least one capacity, or ``share_bps``, is nonzero; a capacity
    of 0 leaves that direction unlimited); ``share_bps`` in 0..10000 and, when nonzero, both
    capacities 0 (the ledger sizes them from its registered supply); a large-transfer delay
    iff ``large_threshold`` != 0, which needs ``large_delay`` != 0 and the reverse; ``window``
    and ``large_delay`` at most :data:`MAX_FLOW_PERIOD`. All zero
    removes the lane's limit.
    """

    outbound_capacity: int = 0
    inbound_capacity: int = 0
    window: int = 0
    share_bps: int = 0
    large_threshold: int = 0
    large_delay: int = 0

    def __post_init__(self) -> None:
        for name in ("outbound_capacity", "inbound_capacity", "large_threshold"):
            if not 0 <= getattr(self, name) < UINT128_LIMIT:
                raise InvalidInput(f"{name} must be in 0..2**128-1")
        for name in ("window", "large_delay"):
            if not 0 <= getattr(self, name) <= MAX_FLOW_PERIOD:
                raise InvalidInput(f"{name} must be in 0..{MAX_FLOW_PERIOD} seconds")
        if not 0 <= self.share_bps <= BPS:
            raise InvalidInput("share_bps must be in 0..10000")
        if self.share_bps and (self.outbound_capacity or self.inbound_capacity):
            raise InvalidInput("with share_bps the capacities are sized by the ledger: pass 0")
        rated = bool(self.outbound_capacity or self.inbound_capacity or self.share_bps)
        if rated != bool(self.window):
            raise InvalidInput("a rate limit needs both a window and a capacity (or share_bps)")
        if bool(self.large_threshold) != bool(self.large_delay):
            raise InvalidInput("large_threshold and large_delay go together")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One direction of a lane as read: ``capacity`` 0 means not limited."""

    capacity: int
    available: int
    window: int

    @property
    def limited(self) -> bool:
        """Whether this direction is rate-limited at all."""
        return self.capacity > 0

    @property
    def refill_per_second(self) -> float:
        """Units refilled per second (capacity / window); 0.0 when not limited."""
        return self.capacity / self.window if self.limited and self.window else 0.0

    def fits(self, amount: int) -> bool:
        """Whether ``amount`` passes this bucket now (always, when not limited)."""
        return not self.limited or amount <= self.available

    def never_fits(self, amount: int) -> bool:
        """Whether ``amount`` exceeds the capacity itself: no wait can ever let it pass."""
        return self.limited and amount > self.capacity

    def seconds_until(self, amount: int) -> int:
        """Whole seconds until refill alone lifts the bucket to ``amount`` (0 if it fits now);
        beyond the capacity this is when a drained bucket would have let that much through."""
        if self.fits(amount):
            return 0
        return math.ceil((amount - self.available) * self.window / self.capacity)


@dataclass(frozen=True, slots=True)
class FlowStatus:
    """A lane's limit and bucket levels on one ledger, read at one block (``as_of``, seconds).

    ``outbound``/``inbound`` are the rate buckets; ``large_*`` the large-transfer allowance
    (a leg beyond it gets a not-before ``large_delay`` seconds after it is locked/prepared).
    An unconfigured lane reads as all zero: unlimited.
    """

    ledger: str
    counterpart: str
    security: str
    as_of: int
    outbound: Bucket
    inbound: Bucket
    share_bps: int
    large_threshold: int
    large_delay: int
    large_outbound_available: int
    large_inbound_available: int

    @property
    def limited(self) -> bool:
        """Whether any limit (rate or delay) is configured on this lane."""
        return self.outbound.limited or self.inbound.limited or self.large_threshold > 0

    def bucket(self, direction: FlowDirection) -> Bucket:
        """The rate bucket of ``direction``."""
        return self.outbound if direction is FlowDirection.OUTBOUND else self.inbound

    @classmethod
    def from_words(
        cls, ledger: str, counterpart: str, security: str, as_of: int, words: list[int]
    ) -> FlowStatus:
        """From the endpoint's ``flowStatus`` array: [window, outCapacity, outAvailable,
        inCapacity, inAvailable, shareBps, largeThreshold, largeDelay, largeOutAvailable,
        largeInAvailable] (the chaincode's ``FlowStatus`` returns the same figures)."""
        if len(words) != 10:
            raise InvalidInput(f"flowStatus returned {len(words)} figures, expected 10")
        w = [int(x) for x in words]
        window = w[0]
        return cls(
            ledger=ledger,
            counterpart=counterpart,
            security=security,
            as_of=as_of,
            outbound=Bucket(w[1], w[2], window),
            inbound=Bucket(w[3], w[4], window),
            share_bps=w[5],
            large_threshold=w[6],
            large_delay=w[7],
            large_outbound_available=w[8],
            large_inbound_available=w[9],
        )
