"""The doctor's checks: plain functions from reported values to :class:`CheckResult` rows.

Each check compares one thing a component reported with the network file (or with another
component's view) and says OK, WARN or FAIL with both values. :func:`committee_mismatch` and
:func:`network_mismatch` are also what the daemons run at start
(:mod:`bridge.ledgers.startup`), so the doctor and the start-up refusal agree on every rule.

SECURITY: the doctor is a diagnostic. It trusts each component's account of itself except
where two accounts can be compared (a member's view of a ledger against the relayer's, every
ledger's committee against the network file); the safety rules themselves are enforced by
the ledgers and members, never by this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bridge.config import LedgerConfig, NetworkConfig
from bridge.doctor.model import (
    CheckResult,
    ComponentStatus,
    FeedAge,
    LedgerView,
    Level,
    Report,
    Thresholds,
)
from bridge.domain.committee import Committee, EpochWindow


@dataclass(frozen=True, slots=True)
class Mismatch:
    """What differs between the network file and a ledger: ``what`` (e.g. ``chain id``,
    ``committee epoch 1``), the file's value and the ledger's."""

    what: str
    expected: str
    found: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One component's answer (or the reason there is none), with the caller's clock
    before and after the call (unix seconds)."""

    component: str
    target: str
    status: ComponentStatus | None
    error: str = ""
    sent_at: float = 0.0
    received_at: float = 0.0


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def describe_committee(c: Committee) -> str:
    """``epoch E, T-of-N [0x.., ..]`` with members sorted."""
    members = ", ".join(_hex(m) for m in sorted(c.members))
    return f"epoch {c.epoch}, {c.threshold}-of-{len(c.members)} [{members}]"


def _same_committee(a: Committee, b: Committee) -> bool:
    return (a.epoch, a.threshold, sorted(a.members)) == (b.epoch, b.threshold, sorted(b.members))


def committee_mismatch(network: NetworkConfig, windows: Iterable[EpochWindow]) -> Mismatch | None:
    """Why the epochs a ledger accepts contradict the network file, or None.

    Guarantees: None only when the ledger reports at least one epoch, the file's genesis
    epoch (if still live) has exactly the file's members and threshold, no live epoch is
    older than the file's, and every member of a later live epoch is listed in the file
    (``[committee]`` or ``[[committee.later]]``).
    """
    genesis = network.committee
    known = set(genesis.members) | set(network.later_members)
    live = tuple(windows)
    if not live:
        return Mismatch("committee", describe_committee(genesis), "no epoch installed")
    for w in live:
        c = w.committee
        if c.epoch == genesis.epoch and not _same_committee(c, genesis):
            return Mismatch(
                f"committee epoch {c.epoch}", describe_committee(genesis), describe_committee(c)
            )
        if c.epoch < genesis.epoch:
            return Mismatch("committee epoch", f"{genesis.epoch} or later", describe_committee(c))
        unknown = sorted(m for m in c.members if m not in known)
        if unknown:
            return Mismatch(
                f"committee epoch {c.epoch} members",
                "members listed in [committee] or [[committee.later]]",
                "unlisted " + ", ".join(_hex(m) for m in unknown),
            )
    return None


def describe_network_word(kind: str, word: bytes) -> str:
    """An EVM network word as ``chain id N``; any other kind's as hex."""
    if kind == "evm" and len(word) == 32:
        return f"chain id {int.from_bytes(word, 'big')}"
    return _hex(word)


def network_mismatch(config: LedgerConfig, view: LedgerView) -> Mismatch | None:
    """Why the node a component reads is not ``config``'s ledger (network word, bridge
    endpoint), or None."""
    from bridge.ledgers.kinds import get_kind

    kind = get_kind(config.kind)
    expected = kind.network_word(config)
    if view.network_word != expected:
        return Mismatch(
            "network",
            describe_network_word(config.kind, expected),
            describe_network_word(config.kind, view.network_word),
        )
    bridge = kind.bridge_word(config)
    if view.bridge_word != bridge:
        # An empty word is "not reported", never "nothing to compare" (review finding 5).
        found = _hex(view.bridge_word) if view.bridge_word else "not reported"
        return Mismatch("bridge endpoint", _hex(bridge), found)
    return None


def _row(component: str, check: str, level: Level, detail: str) -> CheckResult:
    return CheckResult(component, check, level, detail)


def check_reachable(reading: Reading) -> CheckResult:
    """FAIL when the component did not answer (with the transport's reason)."""
    if reading.status is None:
        return _row(reading.component, "reachable", Level.FAIL, reading.error or "no answer")
    return _row(reading.component, "reachable", Level.OK, reading.target)


def check_version(
    component: str, status: ComponentStatus, version: str, protocol: int
) -> CheckResult:
    """FAIL on another protocol version (digests would not match); WARN on another build."""
    got = f"{status.component} {status.version}, protocol {status.protocol_version}"
    if status.protocol_version != protocol:
        return _row(component, "version", Level.FAIL, f"{got}; this client speaks {protocol}")
    if status.version != version:
        return _row(component, "version", Level.WARN, f"{got}; this client is {version}")
    return _row(component, "version", Level.OK, got)


def check_network_file(component: str, status: ComponentStatus, expected: bytes) -> CheckResult:
    """FAIL when the component runs with a network file of another meaning than the
    caller's (:func:`bridge.doctor.fingerprint.network_fingerprint`): it trusts another
    committee, ledgers or organisations; WARN when it does not say (an older build)."""
    if not status.network_fingerprint:
        return _row(component, "network file", Level.WARN, "fingerprint not reported")
    if status.network_fingerprint != expected:
        return _row(
            component,
            "network file",
            Level.FAIL,
            f"another network file: fingerprint {_hex(status.network_fingerprint)[:18]}…,"
            f" this file's {_hex(expected)[:18]}…",
        )
    return _row(component, "network file", Level.OK, f"same as this file's {_hex(expected)[:18]}…")


def check_clock(
    component: str, reading: Reading, status: ComponentStatus, t: Thresholds
) -> CheckResult:
    """WARN when the component's clock differs from the caller's by more than
    ``t.max_clock_skew`` beyond the call's own round-trip uncertainty."""
    mid = (reading.sent_at + reading.received_at) / 2
    uncertainty = (reading.received_at - reading.sent_at) / 2
    skew = status.time_unix_ms / 1000 - mid
    detail = f"{skew:+.3f} s (±{uncertainty:.3f} s)"
    if abs(skew) - uncertainty > t.max_clock_skew:
        return _row(component, "clock", Level.WARN, detail + f", limit {t.max_clock_skew} s")
    return _row(component, "clock", Level.OK, detail)


def check_network(component: str, config: LedgerConfig, view: LedgerView) -> CheckResult:
    """FAIL when the component's node is another network or endpoint than the file's."""
    m = network_mismatch(config, view)
    if m is not None:
        return _row(
            component,
            "network",
            Level.FAIL,
            f"{config.id.name}: {m.what}: file {m.expected}, node {m.found}",
        )
    word = describe_network_word(config.kind, view.network_word)
    return _row(component, "network", Level.OK, f"{config.id.name}: {word}")


def check_committee(ledger: str, network: NetworkConfig, view: LedgerView) -> CheckResult:
    """FAIL when the ledger's live epochs contradict the file (:func:`committee_mismatch`)."""
    component = f"ledger:{ledger}"
    m = committee_mismatch(network, view.epochs)
    if m is not None:
        return _row(
            component, "committee", Level.FAIL, f"{m.what}: file {m.expected}, ledger {m.found}"
        )
    live = ", ".join(
        f"{w.committee.epoch} ({w.committee.threshold}-of-{len(w.committee.members)})"
        for w in view.epochs
    )
    return _row(component, "committee", Level.OK, f"epochs {live}")


def check_lag(component: str, view: LedgerView, t: Thresholds) -> CheckResult:
    """FAIL on a negative height; WARN when the relayer has scanned nothing yet or is more
    than ``t.max_lag_blocks`` behind its ledger's finalized height."""
    heights = (view.finalized_height, view.scanned_height)
    if any(h is not None and h < 0 for h in heights):
        return _row(component, "lag", Level.FAIL, f"impossible heights {heights}")
    if view.scanned_height is None:
        return _row(
            component, "lag", Level.WARN, f"nothing scanned yet, head {view.finalized_height}"
        )
    lag = max(0, view.finalized_height - view.scanned_height)
    detail = f"scanned {view.scanned_height}, head {view.finalized_height}, lag {lag} blocks"
    if lag > t.max_lag_blocks:
        return _row(component, "lag", Level.WARN, detail + f" > {t.max_lag_blocks}")
    return _row(component, "lag", Level.OK, detail)


def check_gas(component: str, view: LedgerView, t: Thresholds) -> CheckResult:
    """FAIL at a zero or negative balance, WARN below ``t.min_gas_balance``; OK for kinds
    without gas."""
    if view.gas_balance is None and not view.operator:
        # Only the bridge operator is told a relayer's account and balance.
        return _row(component, "gas", Level.WARN, "not disclosed to this caller")
    if view.gas_balance is None:
        return _row(component, "gas", Level.OK, "this ledger kind charges no gas")
    detail = f"{view.operator} holds {view.gas_balance} wei"
    if view.gas_balance <= 0:
        return _row(component, "gas", Level.FAIL, detail)
    if view.gas_balance < t.min_gas_balance:
        return _row(component, "gas", Level.WARN, detail + f" < {t.min_gas_balance}")
    return _row(component, "gas", Level.OK, detail)


def check_identity(component: str, expected: bytes, status: ComponentStatus) -> CheckResult:
    """FAIL when the member at this endpoint signs with another key than the file names."""
    if status.component != "verifier" or status.member != expected:
        found = f"{status.component} {_hex(status.member)}" if status.member else status.component
        return _row(
            component, "identity", Level.FAIL, f"expected member {_hex(expected)}, found {found}"
        )
    return _row(component, "identity", Level.OK, f"member {_hex(expected)}")


def _epoch_numbers(windows: Iterable[EpochWindow]) -> tuple[int, ...]:
    return tuple(sorted(w.committee.epoch for w in windows))


def _committees(windows: Iterable[EpochWindow]) -> dict[int, tuple[int, tuple[bytes, ...]]]:
    return {
        w.committee.epoch: (w.committee.threshold, tuple(sorted(w.committee.members)))
        for w in windows
    }


def _describe(c: tuple[int, tuple[bytes, ...]]) -> str:
    return f"{c[0]}-of-{len(c[1])} [{', '.join(_hex(m) for m in c[1])}]"


def check_member_view(
    component: str,
    member: bytes,
    network: NetworkConfig,
    config: LedgerConfig,
    view: LedgerView | None,
    reference: LedgerView | None,
    t: Thresholds,
) -> CheckResult:
    """One member's view of one ledger. FAIL: it does not read the ledger, reads another
    network, sees committees that contradict the file (:func:`committee_mismatch`), or sees
    another committee than the relayer (other members or threshold for the same epoch, or
    other epochs at the same height); WARN: its node is more than ``t.max_lag_blocks``
    behind the relayer's, it sees other epochs at another height (a rotation in flight),
    or a genesis member belongs to no live epoch."""
    check = f"view {config.id.name}"
    if view is None:
        return _row(component, check, Level.FAIL, "the member does not watch this ledger")
    if view.error:
        return _row(component, check, Level.FAIL, f"cannot read: {view.error}")
    m = network_mismatch(config, view) or committee_mismatch(network, view.epochs)
    if m is not None:
        return _row(component, check, Level.FAIL, f"{m.what}: file {m.expected}, node {m.found}")
    mine = _epoch_numbers(w for w in view.epochs if w.committee.is_member(member))
    detail = f"height {view.finalized_height}, member of epochs {list(mine)}"
    if reference is not None and reference.error == "":
        behind = reference.finalized_height - view.finalized_height
        ours, theirs = _committees(view.epochs), _committees(reference.epochs)
        for epoch in sorted(ours.keys() & theirs.keys()):
            if ours[epoch] != theirs[epoch]:
                # SECURITY: one epoch, two committees: one node lies or is another ledger;
                # never a matter of lag (review finding 5).
                return _row(
                    component,
                    check,
                    Level.FAIL,
                    f"epoch {epoch}: the member sees {_describe(ours[epoch])},"
                    f" the relayer {_describe(theirs[epoch])}",
                )
        if behind > t.max_lag_blocks:
            return _row(
                component,
                check,
                Level.WARN,
                f"lagging: node at height {view.finalized_height}, relayer's at"
                f" {reference.finalized_height} ({behind} blocks behind > {t.max_lag_blocks})",
            )
        if ours.keys() != theirs.keys():
            # At one height two nodes of one ledger agree; at different heights (either
            # ahead: answers are cached for seconds) a rotation may be in flight.
            why = f" (heights differ by {behind}: rotation in flight?)" if behind else ""
            return _row(
                component,
                check,
                Level.WARN if behind else Level.FAIL,
                f"sees epochs {sorted(ours)}, the relayer {sorted(theirs)}{why}",
            )
    if not mine and network.committee.is_member(member):
        return _row(component, check, Level.WARN, detail + " (in no live epoch: rotated out?)")
    return _row(component, check, Level.OK, detail)


def check_feed(feed: FeedAge | None, security: str, t: Thresholds) -> CheckResult:
    """WARN when a security has no attestation yet or its newest is older than
    ``t.max_feed_age`` seconds."""
    component = f"feed:{security}"
    if feed is None or feed.age_seconds is None:
        return _row(component, "feed age", Level.WARN, "no attestation published yet")
    if not math.isfinite(feed.age_seconds) or feed.age_seconds < 0:
        # Never a healthy age: a broken clock or a forged answer (review finding 5).
        return _row(component, "feed age", Level.FAIL, f"impossible age {feed.age_seconds!r}")
    detail = f"newest attestation {feed.age_seconds:.1f} s old"
    if feed.age_seconds > t.max_feed_age:
        return _row(component, "feed age", Level.WARN, detail + f" > {t.max_feed_age} s")
    return _row(component, "feed age", Level.OK, detail)


def member_component(member: bytes) -> str:
    """The component name of a member (``member:0x<address>``)."""
    return f"member:{_hex(member)}"


def evaluate(
    network: NetworkConfig,
    readings: Mapping[str, Reading],
    version: str,
    protocol: int,
    t: Thresholds,
    fingerprint: bytes | None = None,
) -> Report:
    """Every check over ``readings`` (keyed by component name: ``coordinator``,
    ``relayer:<ledger>``, ``member:0x<address>``) against ``network``.

    Guarantees: one ``reachable`` row per expected component (the coordinator, one relayer
    per ledger, every member of the file's genesis committee and ``[[committee.later]]``),
    FAIL for one with no reading (WARN for a later member no relayer reports in a live
    epoch yet: it is not needed before its rotation); the other rows only for components
    that answered. ``fingerprint`` is the network file's (computed from ``network`` when
    None).
    """
    if fingerprint is None:
        from bridge.doctor.fingerprint import network_fingerprint

        fingerprint = network_fingerprint(network)
    rows: list[CheckResult] = []
    relayers = [f"relayer:{name}" for name in network.ledgers]
    members = sorted(set(network.committee.members) | set(network.later_members))
    needed = set(network.committee.members) | {
        m
        for name in network.ledgers
        if (r := readings.get(f"relayer:{name}")) is not None and r.status is not None
        for v in r.status.ledgers
        for w in v.epochs
        for m in w.committee.members
    }
    expected = ["coordinator", *relayers, *(member_component(m) for m in members)]
    for component in expected:
        reading = readings.get(component)
        if reading is None:
            waiting = component.startswith("member:") and all(
                member_component(m) != component for m in needed
            )
            if waiting:
                rows.append(
                    _row(component, "reachable", Level.WARN, "no endpoint known (later member)")
                )
            else:
                rows.append(_row(component, "reachable", Level.FAIL, "no endpoint known"))
            continue
        rows.append(check_reachable(reading))
        if reading.status is not None:
            rows.append(check_version(component, reading.status, version, protocol))
            rows.append(check_network_file(component, reading.status, fingerprint))
            rows.append(check_clock(component, reading, reading.status, t))
    views: dict[str, LedgerView] = {}
    for name, config in network.ledgers.items():
        reading = readings.get(f"relayer:{name}")
        if reading is None or reading.status is None:
            continue
        component = f"relayer:{name}"
        view = reading.status.ledger(name)
        if view is None or view.error:
            why = "no view of its ledger" if view is None else f"cannot read: {view.error}"
            rows.append(_row(component, "network", Level.FAIL, why))
            continue
        views[name] = view
        rows.append(check_network(component, config, view))
        rows.append(check_committee(name, network, view))
        rows.append(check_lag(component, view, t))
        rows.append(check_gas(component, view, t))
    for member in members:
        component = member_component(member)
        reading = readings.get(component)
        if reading is None or reading.status is None:
            continue
        rows.append(check_identity(component, member, reading.status))
        for name, config in network.ledgers.items():
            rows.append(
                check_member_view(
                    component,
                    member,
                    network,
                    config,
                    reading.status.ledger(name),
                    views.get(name),
                    t,
                )
            )
    coordinator = readings.get("coordinator")
    if coordinator is not None and coordinator.status is not None:
        feeds = {f.security: f for f in coordinator.status.feeds}
        for security in network.securities:
            rows.append(check_feed(feeds.get(security), security, t))
    return Report.of(rows)
