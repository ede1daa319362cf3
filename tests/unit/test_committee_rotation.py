"""Committee rotation in the domain and the core's epoch rules (ADR 0008)."""

from __future__ import annotations

import json

import pytest

from bridge.core import epochs
from bridge.core.digests import rotation_digest
from bridge.core.reasons import ErrorReason, ProtocolError
from bridge.domain.claims import ClaimDomain
from bridge.domain.committee import Committee, CommitteeRotation, EpochWindow
from bridge.domain.errors import InvalidInput

pytestmark = [pytest.mark.unit, pytest.mark.governance]

A, B, C, D = (bytes([i]) * 20 for i in (1, 2, 3, 4))
DOMAIN = ClaimDomain(ledger=b"\x11" * 32, contract=b"\x22" * 32, epoch=9, network=b"\x33" * 32)


def rotation(**kw: object) -> CommitteeRotation:
    args: dict[str, object] = {
        "epoch": 1,
        "next": Committee(epoch=2, threshold=2, members=(A, B, C)),
        "activation": 100,
        "overlap": 60,
    }
    args.update(kw)
    return CommitteeRotation(**args)  # type: ignore[arg-type]


def test_rotation_digest_is_the_cores() -> None:
    r = rotation()
    assert r.digest(DOMAIN) == rotation_digest(
        DOMAIN.network, DOMAIN.ledger, DOMAIN.contract, 1, 2, 2, [A, B, C], 100, 60
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"next": Committee(epoch=3, threshold=2, members=(A, B, C))}, "epoch \\+ 1"),
        ({"next": Committee(epoch=2, threshold=2, members=(B, A, C))}, "ascending"),
        ({"overlap": 0}, "overlap"),
        ({"overlap": epochs.MAX_OVERLAP + 1}, "overlap"),
        ({"activation": -1}, "activation"),
        ({"epoch": 0, "next": Committee(epoch=1, threshold=1, members=(A,))}, "epoch"),
    ],
)
def test_rotation_refuses_malformed(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        rotation(**kw)


def test_epoch_window() -> None:
    w = EpochWindow(Committee(1, 1, (A,)), active_from=10, active_until=20)
    assert [w.verifies_at(t) for t in (9, 10, 19, 20)] == [False, True, True, False]
    assert EpochWindow(Committee(1, 1, (A,)), 0, None).verifies_at(2**63)


def installed(epoch: int, start: int = 0, until: int | None = None) -> epochs.InstalledEpoch:
    return epochs.InstalledEpoch(epoch, 2, (A, B, C), start, until, epochs.NO_ROTATION)


def reason(call: object) -> ErrorReason:
    with pytest.raises(ProtocolError) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def test_verifying_epoch() -> None:
    latest, prev = installed(5, start=100), installed(4, until=150)
    assert epochs.verifying_epoch(5, lambda: 100, latest, prev) is latest
    assert epochs.verifying_epoch(4, lambda: 149, latest, prev) is prev
    assert reason(lambda: epochs.verifying_epoch(5, lambda: 99, latest, prev)) is (
        ErrorReason.EPOCH_NOT_ACTIVE
    )
    assert reason(lambda: epochs.verifying_epoch(4, lambda: 150, latest, prev)) is (
        ErrorReason.WRONG_EPOCH
    )
    for stale_or_future in (3, 6):
        assert reason(
            lambda e=stale_or_future: epochs.verifying_epoch(e, lambda: 120, latest, prev)
        ) is (  # type: ignore[misc]
            ErrorReason.WRONG_EPOCH
        )

    def no_clock() -> int:
        raise AssertionError("an epoch without a window needs no clock")

    assert epochs.verifying_epoch(1, no_clock, installed(1), None).epoch == 1


def test_check_rotation_order() -> None:
    latest = installed(5, start=100)
    digest = b"\x01" * 32

    def check(**kw: object) -> ErrorReason | None:
        args: dict[str, object] = {
            "clock": lambda: 200,
            "latest": latest,
            "installed_next": None,
            "digest": digest,
            "epoch": 5,
            "next_epoch": 6,
            "threshold": 2,
            "members": [A, B, C],
            "activation": 300,
            "overlap": 60,
        }
        args.update(kw)
        try:
            epochs.check_rotation(**args)  # type: ignore[arg-type]
        except ProtocolError as exc:
            return exc.reason
        return None

    same = epochs.InstalledEpoch(6, 2, (A, B, C), 300, None, digest)
    other = epochs.InstalledEpoch(6, 2, (A, B, C), 300, None, b"\x02" * 32)
    assert check() is None
    assert check(installed_next=same) is ErrorReason.ROTATION_ALREADY_INSTALLED
    assert check(installed_next=other) is ErrorReason.EPOCH_ALREADY_INSTALLED
    assert check(next_epoch=7) is ErrorReason.INVALID_ROTATION
    assert check(epoch=4, next_epoch=5) is ErrorReason.WRONG_EPOCH
    assert check(epoch=6, next_epoch=7) is ErrorReason.WRONG_EPOCH
    assert check(clock=lambda: 99) is ErrorReason.EPOCH_NOT_ACTIVE
    assert check(overlap=0) is ErrorReason.INVALID_ROTATION
    assert check(overlap=epochs.MAX_OVERLAP + 1) is ErrorReason.INVALID_ROTATION
    assert check(activation=200 + epochs.MAX_ACTIVATION_DELAY + 1) is ErrorReason.INVALID_ROTATION
    assert check(threshold=1) is ErrorReason.INVALID_COMMITTEE  # 2t <= n
    assert check(threshold=4) is ErrorReason.INVALID_COMMITTEE  # t > n
    assert check(members=[B, A, C]) is ErrorReason.INVALID_COMMITTEE
    assert check(members=[bytes(20), A, B]) is ErrorReason.INVALID_COMMITTEE
    assert epochs.rotated_windows(200, 300, 60) == 360
    assert epochs.rotated_windows(400, 300, 60) == 460


# ---- the Fabric adapter's formats and error mapping


def test_rotation_json_and_committees_json() -> None:
    from bridge.ledgers.fabric import codec

    r = rotation()
    obj = json.loads(codec.rotation_to_json(r))
    assert obj == {
        "epoch": 1,
        "next_epoch": 2,
        "threshold": 2,
        "members": ["0x" + m.hex() for m in (A, B, C)],
        "activation": 100,
        "overlap": 60,
    }
    answer = {
        "committees": [
            {"epoch": 1, "threshold": 1, "members": ["0x" + A.hex()], "active_from": 0,
             "active_until": 160},
            {"epoch": 2, "threshold": 2, "members": ["0x" + m.hex() for m in (A, B, C)],
             "active_from": 100, "active_until": None},
        ]
    }  # fmt: skip
    got = codec.committees_from_json(json.dumps(answer))
    assert got == (
        EpochWindow(Committee(1, 1, (A,)), 0, 160),
        EpochWindow(r.next, 100, None),
    )
    for bad in (
        {},
        {"committees": {}},
        {"committees": [{"epoch": 1}]},
        {"committees": [{**answer["committees"][0], "members": ["0x12"]}]},
        {"committees": [{**answer["committees"][0], "active_until": -1}]},
        {"committees": [{**answer["committees"][0], "threshold": 0}]},
    ):
        with pytest.raises(ValueError, match=r"committee|must"):
            codec.committees_from_json(json.dumps(bad))


def test_a_skewed_endorser_clock_is_transient() -> None:
    from bridge.domain.errors import LedgerRejected, Unavailable
    from bridge.ledgers.fabric.gateway import chaincode_failure

    def cc(name: str, detail: str) -> str:
        body = json.dumps({"reason": name, "detail": detail, "figures": {}})
        return f"chaincode response 500, {name}: {body}"

    skewed = chaincode_failure(cc("TransactionTimeSkewed", "txTime=1"))
    assert isinstance(skewed, Unavailable) and not isinstance(skewed, LedgerRejected)
    refused = chaincode_failure(cc("EpochNotActive", "epoch=2"))
    assert isinstance(refused, LedgerRejected) and refused.reason == "EpochNotActive"
