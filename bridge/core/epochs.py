"""Committee epochs on a ledger endpoint: which installed epochs verify, and rotation rules.

One rule for every endpoint (``BridgeEndpoint.sol`` implements the same, in the same order;
the Fabric chaincode runs this module's vendored copy). See ADR 0008.

- An endpoint stores every epoch it installed: the initial one (``active_from`` 0, no end)
  and each one installed by :func:`check_rotation` + :func:`rotated_windows`.
- Only the LATEST installed epoch and the one before it can verify. The latest verifies from
  its ``active_from`` on (EPOCH_NOT_ACTIVE before), the previous one while ``now <
  active_until`` (WRONG_EPOCH from then on), anything else never (WRONG_EPOCH). So at most two
  epochs verify at any time, and a rotation ends the one before the previous epoch at once.
- ``now`` is the ledger's time: ``block.timestamp`` on EVM, the transaction timestamp on
  Fabric (see ADR 0008 for what that is worth). It is asked for (``clock``) only when a rule
  needs it, so an endpoint that never rotated needs no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .reasons import ErrorReason, ProtocolError

MAX_OVERLAP = 30 * 24 * 3600
"""Longest overlap (seconds) a rotation may ask for: the old epoch's keys stay usable that long."""
MAX_ACTIVATION_DELAY = 30 * 24 * 3600
"""Latest activation a rotation may name, in seconds after its installation."""
NO_ROTATION = bytes(32)
"""The ``rotation`` digest recorded for the initial epoch (installed by Init/constructor)."""

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class InstalledEpoch:
    """One epoch as an endpoint stores it.

    Verifies for ``active_from <= now`` and, when ``active_until`` is set, ``now <
    active_until`` (exclusive end). ``rotation`` is the rotation digest that installed it
    (:data:`NO_ROTATION` for the initial epoch): a replay is recognised by it.
    """

    epoch: int
    threshold: int
    members: tuple[bytes, ...]
    active_from: int
    active_until: int | None
    rotation: bytes


def check_committee(threshold: int, members: Sequence[bytes]) -> None:
    """INVALID_COMMITTEE unless 1 <= t <= n, 2t > n, t < 256 and the members are nonzero
    20-byte addresses in strictly ascending order (so distinct)."""
    n = len(members)
    if type(threshold) is not int or not 1 <= threshold <= min(n, 255) or 2 * threshold <= n:
        raise ProtocolError(
            ErrorReason.INVALID_COMMITTEE, f"threshold={threshold!r} needs 1 <= t <= n, 2t > n"
        )
    previous = bytes(20)
    for i, member in enumerate(members):
        if not isinstance(member, bytes) or len(member) != 20 or member <= previous:
            raise ProtocolError(
                ErrorReason.INVALID_COMMITTEE,
                f"members must be nonzero, strictly ascending addresses (index={i})",
            )
        previous = member


def verifying_epoch(
    epoch: int, clock: Clock, latest: InstalledEpoch, previous: InstalledEpoch | None
) -> InstalledEpoch:
    """The installed epoch a certificate of ``epoch`` is checked against, if it verifies now.

    Raises EPOCH_NOT_ACTIVE for the latest epoch before its activation, WRONG_EPOCH for the
    previous epoch once its window ended and for every other epoch.
    """
    if epoch == latest.epoch:
        if latest.active_from > 0 and clock() < latest.active_from:
            raise ProtocolError(
                ErrorReason.EPOCH_NOT_ACTIVE,
                f"epoch={epoch}, activation={latest.active_from}",
            )
        return latest
    if (
        previous is not None
        and epoch == previous.epoch
        and (previous.active_until is None or clock() < previous.active_until)
    ):
        return previous
    raise ProtocolError(ErrorReason.WRONG_EPOCH, f"got={epoch}, current={latest.epoch}")


def check_rotation(
    clock: Clock,
    latest: InstalledEpoch,
    installed_next: InstalledEpoch | None,
    digest: bytes,
    epoch: int,
    next_epoch: int,
    threshold: int,
    members: Sequence[bytes],
    activation: int,
    overlap: int,
) -> None:
    """Everything a rotation must satisfy before its certificate is checked, in order.

    ``installed_next`` is what the endpoint holds for ``next_epoch`` (None: nothing) and
    ``digest`` the rotation's digest. Raises, in this order: ROTATION_ALREADY_INSTALLED (this
    very rotation is installed: a replay), EPOCH_ALREADY_INSTALLED (``next_epoch`` holds
    another committee), INVALID_ROTATION (``next_epoch != epoch + 1``), WRONG_EPOCH
    (``epoch`` is not the latest installed epoch), EPOCH_NOT_ACTIVE (it is, but not active
    yet), INVALID_ROTATION (overlap not in 1..MAX_OVERLAP, activation later than
    MAX_ACTIVATION_DELAY from now), INVALID_COMMITTEE (:func:`check_committee`). The
    certificate itself is then checked by ``check_certificate`` against ``latest`` over
    ``digest``.
    """
    if installed_next is not None:
        if installed_next.rotation == digest:
            raise ProtocolError(ErrorReason.ROTATION_ALREADY_INSTALLED, f"nextEpoch={next_epoch}")
        raise ProtocolError(ErrorReason.EPOCH_ALREADY_INSTALLED, f"nextEpoch={next_epoch}")
    if next_epoch != epoch + 1:
        raise ProtocolError(
            ErrorReason.INVALID_ROTATION, f"nextEpoch={next_epoch} must be epoch+1={epoch + 1}"
        )
    if epoch != latest.epoch:
        raise ProtocolError(ErrorReason.WRONG_EPOCH, f"got={epoch}, current={latest.epoch}")
    now = clock()
    if now < latest.active_from:
        raise ProtocolError(
            ErrorReason.EPOCH_NOT_ACTIVE, f"epoch={epoch}, activation={latest.active_from}"
        )
    if not 0 < overlap <= MAX_OVERLAP:
        raise ProtocolError(
            ErrorReason.INVALID_ROTATION, f"overlap={overlap} not in 1..{MAX_OVERLAP}"
        )
    if activation > now + MAX_ACTIVATION_DELAY:
        raise ProtocolError(
            ErrorReason.INVALID_ROTATION,
            f"activation={activation} later than now+{MAX_ACTIVATION_DELAY}",
        )
    check_committee(threshold, members)


def rotated_windows(now: int, activation: int, overlap: int) -> int:
    """The end (exclusive) of the rotating epoch's window: ``max(activation, now) + overlap``.

    The new epoch verifies from ``activation`` on (no end); the epoch before the rotating one
    stops at once (only the latest two verify).
    """
    return max(activation, now) + overlap
