"""The verifier's durable supply log: it never signs a record that undoes one it signed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.domain.errors import PreconditionFailed
from bridge.domain.supply import GENESIS_HASH, SupplyReading, SupplyRecord, make_record
from verifiers.supply_log import SupplyLog, SupplyRefused

pytestmark = pytest.mark.unit

ISIN = "KR5701ES0016"
OTHER_ISIN = "US0378331005"
T0 = 1_700_000_000_000


def rec(
    sequence: int,
    heights: dict[str, int],
    version: int = 1,
    *,
    security: str = ISIN,
    produced_at_ms: int = T0,
    supply: int = 1000,
) -> SupplyRecord:
    readings = [
        SupplyReading(name, h, bytes([h % 256]) * 32, supply if name == "a" else 0, 0, 0, 0, 0)
        for name, h in heights.items()
    ]
    registered = {name: (supply if name == "a" else 0) for name in heights}
    return make_record(
        security,
        sequence,
        GENESIS_HASH,
        1,
        produced_at_ms,
        readings,
        registered,
        registration_version=version,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "supply.sqlite"  # parent created by SupplyLog


@pytest.fixture
def log(db_path: Path) -> Iterator[SupplyLog]:
    s = SupplyLog(db_path)
    yield s
    s.close()


def test_refusal_is_a_precondition_failure() -> None:
    assert issubclass(SupplyRefused, PreconditionFailed)


def test_fresh_log_knows_no_version(log: SupplyLog, db_path: Path) -> None:
    assert db_path.exists()
    assert log.registration_version(ISIN) == 0


def test_advancing_records_are_accepted(log: SupplyLog) -> None:
    log.check_and_record(rec(1, {"a": 10, "b": 20}, version=1))
    log.check_and_record(rec(2, {"a": 10, "b": 21}, version=1))
    log.check_and_record(rec(3, {"a": 11, "b": 21}, version=2))
    log.check_and_record(rec(7, {"a": 11, "b": 21}, version=2))  # gaps are the chain's business
    assert log.registration_version(ISIN) == 2


def test_re_signing_the_identical_record_is_allowed(log: SupplyLog) -> None:
    r = rec(4, {"a": 10, "b": 20}, version=3)
    log.check_and_record(r)
    log.check_and_record(r)
    log.check_and_record(rec(4, {"a": 10, "b": 20}, version=3))  # equal, rebuilt
    assert log.registration_version(ISIN) == 3
    # And what was recorded is that record: a lower height is still refused afterwards.
    with pytest.raises(SupplyRefused, match="height 19 is below height 20"):
        log.check_and_record(rec(5, {"a": 10, "b": 19}, version=3))


def test_same_sequence_other_digest_allowed_when_nothing_goes_back(log: SupplyLog) -> None:
    first = rec(4, {"a": 10, "b": 20}, version=2, produced_at_ms=T0)
    log.check_and_record(first)
    # The coordinator re-proposes its tip after a crash: a fresh timestamp, equal heights.
    retimed = rec(4, {"a": 10, "b": 20}, version=2, produced_at_ms=T0 + 5000)
    assert retimed.digest != first.digest
    log.check_and_record(retimed)
    # Or a later cut and a newer registration.
    later = rec(4, {"a": 12, "b": 25}, version=3, produced_at_ms=T0 + 9000)
    log.check_and_record(later)
    assert log.registration_version(ISIN) == 3


def test_same_sequence_other_digest_refused_when_a_height_goes_back(log: SupplyLog) -> None:
    log.check_and_record(rec(4, {"a": 10, "b": 20}))
    with pytest.raises(
        SupplyRefused, match=rf"^{ISIN}#4: a height 9 is below height 10 already attested$"
    ):
        log.check_and_record(rec(4, {"a": 9, "b": 20}, produced_at_ms=T0 + 1))


def test_same_sequence_other_digest_refused_when_the_version_goes_back(log: SupplyLog) -> None:
    log.check_and_record(rec(4, {"a": 10}, version=5))
    with pytest.raises(
        SupplyRefused,
        match=rf"^{ISIN}#4: registration version 4 is older than version 5 already attested$",
    ):
        log.check_and_record(rec(4, {"a": 10}, version=4))


def test_a_lower_sequence_is_refused(log: SupplyLog) -> None:
    log.check_and_record(rec(5, {"a": 10}))
    with pytest.raises(
        SupplyRefused, match=rf"^{ISIN}#4: already signed sequence 5 of this security$"
    ):
        log.check_and_record(rec(4, {"a": 10}))
    # Even with higher heights and a newer version.
    with pytest.raises(SupplyRefused, match="already signed sequence 5"):
        log.check_and_record(rec(1, {"a": 99}, version=9))


@pytest.mark.parametrize("ledger", ["a", "b", "c"])
def test_a_lower_height_on_any_ledger_is_refused(log: SupplyLog, ledger: str) -> None:
    heights = {"a": 10, "b": 20, "c": 30}
    log.check_and_record(rec(1, heights))
    lowered = {name: h + 5 for name, h in heights.items()}
    lowered[ledger] = heights[ledger] - 1
    with pytest.raises(
        SupplyRefused,
        match=rf"^{ISIN}#2: {ledger} height {heights[ledger] - 1} is below height {heights[ledger]}",
    ):
        log.check_and_record(rec(2, lowered))


def test_a_new_ledger_has_no_height_to_go_back_from(log: SupplyLog) -> None:
    log.check_and_record(rec(1, {"a": 10}))
    log.check_and_record(rec(2, {"a": 10, "z": 1}))
    with pytest.raises(SupplyRefused, match="z height 0 is below height 1"):
        log.check_and_record(rec(3, {"a": 10, "z": 0}))


def test_an_older_registration_version_is_refused(log: SupplyLog) -> None:
    log.check_and_record(rec(1, {"a": 10}, version=3))
    with pytest.raises(
        SupplyRefused, match=rf"^{ISIN}#2: registration version 2 is older than version 3"
    ):
        log.check_and_record(rec(2, {"a": 11}, version=2))
    assert log.registration_version(ISIN) == 3


def test_a_refusal_records_nothing(log: SupplyLog) -> None:
    log.check_and_record(rec(3, {"a": 10}, version=2))
    with pytest.raises(SupplyRefused):
        log.check_and_record(rec(4, {"a": 9}, version=7))
    assert log.registration_version(ISIN) == 2
    # The refused record's height 9 was not stored: 10 is still the floor.
    with pytest.raises(SupplyRefused, match="a height 9 is below height 10"):
        log.check_and_record(rec(4, {"a": 9}, version=2))
    log.check_and_record(rec(4, {"a": 10}, version=2))


def test_securities_are_independent(log: SupplyLog) -> None:
    log.check_and_record(rec(9, {"a": 100}, version=4))
    log.check_and_record(rec(1, {"a": 1}, version=1, security=OTHER_ISIN))
    assert log.registration_version(ISIN) == 4
    assert log.registration_version(OTHER_ISIN) == 1
    log.check_and_record(rec(2, {"a": 2}, version=1, security=OTHER_ISIN))
    with pytest.raises(SupplyRefused, match=f"^{OTHER_ISIN}#1: already signed sequence 2"):
        log.check_and_record(rec(1, {"a": 3}, security=OTHER_ISIN))
    # ISIN's floor is untouched by the other security's records.
    with pytest.raises(SupplyRefused, match=f"^{ISIN}#8: already signed sequence 9"):
        log.check_and_record(rec(8, {"a": 100}, version=4))


def test_refusals_survive_reopening(db_path: Path) -> None:
    first = SupplyLog(db_path)
    first.check_and_record(rec(5, {"a": 10, "b": 20}, version=3))
    first.close()

    again = SupplyLog(db_path)
    try:
        assert again.registration_version(ISIN) == 3
        with pytest.raises(SupplyRefused, match="already signed sequence 5"):
            again.check_and_record(rec(4, {"a": 10, "b": 20}, version=3))
        with pytest.raises(SupplyRefused, match="b height 19 is below height 20"):
            again.check_and_record(rec(6, {"a": 10, "b": 19}, version=3))
        with pytest.raises(SupplyRefused, match="registration version 2 is older than version 3"):
            again.check_and_record(rec(6, {"a": 10, "b": 20}, version=2))
        # The identical record is still allowed after a restart (re-proposed tip).
        again.check_and_record(rec(5, {"a": 10, "b": 20}, version=3))
        again.check_and_record(rec(6, {"a": 11, "b": 20}, version=4))
    finally:
        again.close()

    third = SupplyLog(db_path)
    try:
        assert third.registration_version(ISIN) == 4
        with pytest.raises(SupplyRefused, match="already signed sequence 6"):
            third.check_and_record(rec(5, {"a": 10, "b": 20}, version=3))
    finally:
        third.close()


def test_registration_version_reports_the_highest_attested(log: SupplyLog) -> None:
    assert log.registration_version(ISIN) == 0
    log.check_and_record(rec(1, {"a": 1}, version=1))
    assert log.registration_version(ISIN) == 1
    log.check_and_record(rec(2, {"a": 1}, version=1))
    assert log.registration_version(ISIN) == 1
    log.check_and_record(rec(3, {"a": 1}, version=6))
    assert log.registration_version(ISIN) == 6
    with pytest.raises(SupplyRefused):
        log.check_and_record(rec(4, {"a": 1}, version=5))
    assert log.registration_version(ISIN) == 6
    assert log.registration_version(OTHER_ISIN) == 0


def test_a_ledger_left_out_keeps_its_height_floor(log: SupplyLog) -> None:
    """A record that does not read ledger b must not erase what was attested for b."""
    log.check_and_record(rec(1, {"a": 10, "b": 10}))
    log.check_and_record(rec(2, {"a": 11}, version=2))
    with pytest.raises(SupplyRefused, match="b height 5 is below height 10"):
        log.check_and_record(rec(3, {"a": 12, "b": 5}, version=3))
    log.check_and_record(rec(3, {"a": 12, "b": 10}, version=3))
