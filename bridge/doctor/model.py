"""What the doctor reads from components and what each check concludes (plain values).

Nothing here touches a socket or a protobuf: :mod:`bridge.doctor.convert` builds these from
``StatusService`` answers, :mod:`bridge.doctor.checks` turns them into :class:`CheckResult`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.domain.committee import EpochWindow


class Level(enum.IntEnum):
    """A check's outcome; ordered so that the worst of several is their ``max``."""

    OK = 0
    WARN = 1
    FAIL = 2


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the doctor's table.

    Guarantees: ``component`` names what was checked (``coordinator``, ``relayer:<ledger>``,
    ``member:0x<address>``, ``ledger:<ledger>``, ``feed:<ISIN>``), ``check`` is a short fixed
    word (``reachable``, ``version``, ``network``, ``committee``, ``lag``, ``gas``,
    ``identity``, ``epochs``, ``clock``, ``feed age``) and ``detail`` says what was found
    (both values on a mismatch).
    """

    component: str
    check: str
    level: Level
    detail: str


@dataclass(frozen=True, slots=True)
class LedgerView:
    """One ledger as a component sees it through its own node (``error`` set: unread)."""

    ledger: str
    kind: str
    network_word: bytes
    bridge_word: bytes
    finalized_height: int
    scanned_height: int | None = None
    """Relayer only: the last block fully scanned and delivered (None: none yet)."""
    operator: str = ""
    gas_balance: int | None = None
    """Relayer only: its account's balance in base units (None: the kind pays no gas)."""
    epochs: tuple[EpochWindow, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class FeedAge:
    """The age of a security's newest supply attestation (None: none yet)."""

    security: str
    age_seconds: float | None


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """What one daemon reported about itself (``StatusService.GetStatus``)."""

    component: str
    version: str
    protocol_version: int
    time_unix_ms: int
    member: bytes = b""
    ledgers: tuple[LedgerView, ...] = ()
    endpoints: tuple[tuple[str, str], ...] = ()
    """Coordinator only: (role string, host:port) of every relayer and member it dials."""
    feeds: tuple[FeedAge, ...] = ()
    network_fingerprint: bytes = b""
    """:func:`bridge.doctor.fingerprint.network_fingerprint` of the component's network file."""

    def ledger(self, name: str) -> LedgerView | None:
        """The view of ledger ``name``, if the component reported one."""
        return next((v for v in self.ledgers if v.ledger == name), None)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits beyond which the doctor warns (all configurable from the CLI)."""

    max_lag_blocks: int = 20
    """Relayer scanned height, or a member's finalized height, this far behind: WARN."""
    min_gas_balance: int = 10**16
    """A relayer account below this (wei, EVM): WARN; at zero: FAIL."""
    max_clock_skew: float = 2.0
    """Seconds between a component's clock and the caller's: WARN beyond."""
    max_feed_age: float = 300.0
    """Seconds since a security's newest attestation: WARN beyond."""


@dataclass(frozen=True, slots=True)
class Report:
    """Every check's result, in the order run."""

    results: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def level(self) -> Level:
        """The worst level of any result (OK when there is none)."""
        return max((r.level for r in self.results), default=Level.OK)

    @property
    def exit_code(self) -> int:
        """0 all OK, 1 some WARN, 2 some FAIL."""
        return int(self.level)

    @staticmethod
    def of(results: Iterable[CheckResult]) -> Report:
        """A report of ``results``."""
        return Report(tuple(results))
