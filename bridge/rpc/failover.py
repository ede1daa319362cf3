"""Clients of active/passive coordinators (ADR 0017): several addresses, fail over.

A client is configured with every coordinator's address. It calls one; when the call fails
UNAVAILABLE (the coordinator is down, hung, or a standby answering NOT_LEADER), it moves to
the next address, or to the leader a standby named when that address is one of the
configured ones, and retries with tenacity. ONLY idempotent calls are retried: reads,
``SubmitTransfer`` (idempotent by its key), ``DeliverEvents`` (deduplicated). Streams resume
after the last position the caller saw (``WatchTransfer.after_sequence``,
``StreamAttestations.from_sequence``), so a failover shows no gap and no duplicate.

SECURITY: the ``leader`` a standby names is a hint, never followed outside the configured
addresses (a compromised standby cannot steer clients to a server of its choosing), and every
coordinator's certificate is checked for the coordinator role whichever address is used.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from bridge.domain.errors import BridgeReason, InvalidInput
from bridge.rpc.channels import sync_channel
from bridge.rpc.errors import received_error
from bridge.rpc.tls import ClientIdentity

T = TypeVar("T")

FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes after which an idempotent call is tried again on another coordinator."""


def parse_targets(value: str | Sequence[str]) -> tuple[str, ...]:
    """Coordinator addresses from ``"h1:p1,h2:p2"`` or a list; at least one, no duplicate."""
    items = value.split(",") if isinstance(value, str) else list(value)
    targets = tuple(t.strip() for t in items if t.strip())
    if not targets:
        raise InvalidInput("at least one coordinator address is needed")
    if len(set(targets)) != len(targets):
        raise InvalidInput(f"a coordinator address is listed twice: {', '.join(targets)}")
    return targets


FAILOVER_REASONS = frozenset(
    {BridgeReason.NOT_LEADER, BridgeReason.DATABASE_UNAVAILABLE, BridgeReason.UNKNOWN}
)
"""Reasons (with a code of :data:`FAILOVER_CODES`) that say THIS coordinator cannot serve
now: a standby, one whose database failed the call, or no reason at all."""


def should_fail_over(exc: BaseException) -> bool:
    """True for a failed call another coordinator may serve: UNAVAILABLE or a deadline
    (the coordinator is down or hung: no bridge reason in the status), NOT_LEADER, or
    DATABASE_UNAVAILABLE (this coordinator's database failed the call: the next address is
    tried, and a standby there answers NOT_LEADER naming the leader, tried again after the
    backoff, by then reconnected or replaced). A bridge-level refusal from the leader (a
    ledger unavailable, HALTED) is its answer and is not failed over."""
    if not isinstance(exc, grpc.RpcError):
        return False
    call: Any = exc
    if call.code() not in FAILOVER_CODES:
        return False
    return received_error(call.trailing_metadata()).reason in FAILOVER_REASONS


def leader_hint(exc: BaseException) -> str:
    """The leader address a standby's NOT_LEADER names ('' none or another failure)."""
    if not isinstance(exc, grpc.RpcError):
        return ""
    call: Any = exc
    got = received_error(call.trailing_metadata())
    return got.leader if got.reason is BridgeReason.NOT_LEADER else ""


class TargetRing:
    """The configured addresses and the one in use. GUARANTEES: :meth:`after_failure` moves
    to the named leader only when it is configured, else to the next address in turn."""

    def __init__(self, targets: Sequence[str]) -> None:
        self.targets = parse_targets(targets)
        self._index = 0

    @property
    def current(self) -> str:
        """The address to call now."""
        return self.targets[self._index]

    def after_failure(self, exc: BaseException) -> str:
        """Pick the next address after ``exc`` and return it."""
        hint = leader_hint(exc)
        if hint and hint in self.targets and hint != self.current:
            self._index = self.targets.index(hint)
        else:
            self._index = (self._index + 1) % len(self.targets)
        return self.current


def serving_target(
    targets: Sequence[str], identity: ClientIdentity | None, timeout: float = 3.0
) -> str:
    """The first address whose gRPC health is SERVING (the leader: standbys report
    NOT_SERVING), else the first address (its call then fails precisely)."""
    ring = parse_targets(targets)
    if len(ring) == 1:
        return ring[0]
    for target in ring:
        channel = sync_channel(target, identity)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return target
        except grpc.RpcError:
            continue
        finally:
            channel.close()
    return ring[0]


class SyncFailover:
    """Synchronous calls to whichever coordinator leads (the CLI, scripts, tests).

    ``call(fn)`` runs ``fn(channel)`` on the current coordinator and, when it fails over
    (see :func:`should_fail_over`), on the next one, for up to ``give_up_after`` seconds.
    Use it for idempotent calls only."""

    def __init__(
        self,
        targets: Sequence[str] | str,
        identity: ClientIdentity | None,
        give_up_after: float = 60.0,
    ) -> None:
        self.ring = TargetRing(parse_targets(targets))
        self._identity = identity
        self._give_up_after = give_up_after
        self._channel: grpc.Channel | None = None
        self._channel_target = ""

    def channel(self) -> grpc.Channel:
        """The channel to the current coordinator."""
        if self._channel is None or self._channel_target != self.ring.current:
            if self._channel is not None:
                self._channel.close()
            self._channel = sync_channel(self.ring.current, self._identity)
            self._channel_target = self.ring.current
        return self._channel

    def call(self, fn: Callable[[grpc.Channel], T]) -> T:
        """``fn(channel)``, failed over and retried (idempotent calls only; with a single
        address, called once)."""
        if len(self.ring.targets) == 1:
            return fn(self.channel())
        for attempt in Retrying(
            retry=retry_if_exception(should_fail_over),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            stop=stop_after_delay(self._give_up_after),
            before_sleep=lambda state: self._after(state.outcome),
            reraise=True,
        ):
            with attempt:
                return fn(self.channel())
        raise AssertionError("unreachable")  # pragma: no cover

    def follow(self, fn: Callable[[grpc.Channel, Callable[[], None]], T]) -> T:
        """A server stream ``fn(channel, progressed)`` failed over and resumed like
        :meth:`call`, but given up only after ``give_up_after`` seconds WITHOUT progress:
        ``fn`` calls ``progressed()`` on every message it receives (HA review finding 6:
        a watch older than the timeout still fails over). ``fn`` must resume where it left
        off (e.g. ``after_sequence``); with a single address, called once."""
        if len(self.ring.targets) == 1:
            return fn(self.channel(), lambda: None)
        last = time.monotonic()

        def progressed() -> None:
            nonlocal last
            last = time.monotonic()

        def silent_too_long(_: Any) -> bool:
            return time.monotonic() - last >= self._give_up_after

        for attempt in Retrying(
            retry=retry_if_exception(should_fail_over),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            stop=silent_too_long,
            before_sleep=lambda state: self._after(state.outcome),
            reraise=True,
        ):
            with attempt:
                return fn(self.channel(), progressed)
        raise AssertionError("unreachable")  # pragma: no cover

    def _after(self, outcome: Any) -> None:
        if outcome is not None and outcome.failed:
            self.ring.after_failure(outcome.exception())

    def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def round_robin(targets: Sequence[str]) -> itertools.cycle[str]:
    """Every address in turn, forever (a stream's reconnect loop)."""
    return itertools.cycle(parse_targets(targets))
