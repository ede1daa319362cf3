"""The doctor's checks as plain functions (issue 12 item 2): every rule's OK and its
WARN/FAIL, the exit code, the status conversion at the gRPC boundary, and the rendering."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bridge.cli.doctor import MAX_CELL, render_json, render_table
from bridge.config import LedgerConfig, NetworkConfig
from bridge.core.words import evm_network_word
from bridge.doctor.checks import (
    Reading,
    check_clock,
    check_feed,
    check_gas,
    check_lag,
    check_network,
    check_version,
    committee_mismatch,
    evaluate,
    member_component,
)
from bridge.doctor.convert import status_from_pb, status_to_pb
from bridge.doctor.fingerprint import network_fingerprint
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
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word

pytestmark = [pytest.mark.unit, pytest.mark.ops]

MEMBERS = tuple(bytes([i]) * 20 for i in range(1, 5))
LATER = b"\x09" * 20
OUTSIDER = b"\x0e" * 20
GENESIS = Committee(1, 3, MEMBERS)
A = "brokerage-a"
BRIDGE = "0x00000000000000000000000000000000000000AA"
ISIN = "KR5701ES0016"
T = Thresholds()


def ledger(chain_id: int = 31001) -> LedgerConfig:
    return LedgerConfig(LedgerId(A), "evm", "http://127.0.0.1:1", BRIDGE, chain_id, 0, 1.0)


NETWORK = NetworkConfig(
    committee=GENESIS,
    ledgers={A: ledger()},
    securities={ISIN: SecurityId(ISIN)},
    later_members={LATER: "127.0.0.1:9"},
)


FINGERPRINT = network_fingerprint(NETWORK)


def window(c: Committee, until: int | None = None) -> EpochWindow:
    return EpochWindow(c, 0, until)


def view(**changes: object) -> LedgerView:
    base = LedgerView(
        ledger=A,
        kind="evm",
        network_word=evm_network_word(31001),
        bridge_word=evm_address_word(BRIDGE),
        finalized_height=100,
        scanned_height=100,
        operator="0xrelayer",
        gas_balance=10**18,
        epochs=(window(GENESIS),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def status(component: str, **changes: object) -> ComponentStatus:
    base = ComponentStatus(component, "0.1.0", 2, 1_000_000, network_fingerprint=FINGERPRINT)
    return replace(base, **changes)  # type: ignore[arg-type]


def reading(component: str, s: ComponentStatus | None, error: str = "") -> Reading:
    return Reading(component, "127.0.0.1:1", s, error, 1000.0, 1000.0)


def healthy() -> dict[str, Reading]:
    out = {
        "coordinator": reading("coordinator", status("coordinator", feeds=(FeedAge(ISIN, 3.0),))),
        f"relayer:{A}": reading(f"relayer:{A}", status("relayer", ledgers=(view(),))),
    }
    for m in (*MEMBERS, LATER):
        member_view = view(scanned_height=None, operator="", gas_balance=None)
        out[member_component(m)] = reading(
            member_component(m), status("verifier", member=m, ledgers=(member_view,))
        )
    return out


def rows_not_ok(report: Report) -> list[tuple[str, str, Level]]:
    return [(r.component, r.check, r.level) for r in report.results if r.level != Level.OK]


def test_a_healthy_deployment_is_all_ok() -> None:
    report = evaluate(NETWORK, healthy(), "0.1.0", 2, T)
    assert rows_not_ok(report) == []
    assert report.exit_code == 0
    # One reachable row per expected component: coordinator, relayer, 4 + 1 later members.
    assert sum(r.check == "reachable" for r in report.results) == 7
    assert sum(r.check == "network file" for r in report.results) == 7


# -- committee ---------------------------------------------------------------------------


def test_committee_equal_in_any_member_order_matches() -> None:
    assert committee_mismatch(NETWORK, [window(Committee(1, 3, MEMBERS[::-1]))]) is None


@pytest.mark.parametrize(
    ("windows", "what", "found"),
    [
        ([], "committee", "no epoch installed"),
        ([window(Committee(1, 4, MEMBERS))], "committee epoch 1", "epoch 1, 4-of-4 ["),
        (
            [window(Committee(1, 3, (*MEMBERS[:3], OUTSIDER)))],
            "committee epoch 1",
            "epoch 1, 3-of-4 [",
        ),
        (
            [window(Committee(2, 3, (*MEMBERS[:3], OUTSIDER)))],
            "committee epoch 2 members",
            "unlisted 0x" + OUTSIDER.hex(),
        ),
    ],
    ids=["none-installed", "threshold", "genesis-member", "later-unlisted"],
)
def test_committee_mismatches(windows: list[EpochWindow], what: str, found: str) -> None:
    m = committee_mismatch(NETWORK, windows)
    assert m is not None
    assert m.what == what
    assert m.found.startswith(found)


def test_an_epoch_older_than_the_files_is_a_mismatch() -> None:
    network = replace(NETWORK, committee=Committee(2, 3, MEMBERS))
    m = committee_mismatch(network, [window(GENESIS)])
    assert m is not None
    assert (m.what, m.expected) == ("committee epoch", "2 or later")


def test_a_later_epoch_of_listed_members_matches() -> None:
    later = Committee(2, 3, (*MEMBERS[:3], LATER))
    assert committee_mismatch(NETWORK, [window(GENESIS, 50), window(later)]) is None


def test_evaluate_fails_a_ledger_whose_committee_differs() -> None:
    readings = healthy()
    bad = view(epochs=(window(Committee(1, 4, MEMBERS)),))
    readings[f"relayer:{A}"] = reading(f"relayer:{A}", status("relayer", ledgers=(bad,)))
    report = evaluate(NETWORK, readings, "0.1.0", 2, T)
    assert (f"ledger:{A}", "committee", Level.FAIL) in rows_not_ok(report)
    assert report.exit_code == 2


# -- network, relayer ----------------------------------------------------------------------


def test_evaluate_fails_another_chain_and_another_endpoint() -> None:
    readings = healthy()
    wrong = view(network_word=evm_network_word(31337))
    readings[f"relayer:{A}"] = reading(f"relayer:{A}", status("relayer", ledgers=(wrong,)))
    rows = {(r.component, r.check): r for r in evaluate(NETWORK, readings, "0.1.0", 2, T).results}
    net = rows[(f"relayer:{A}", "network")]
    assert net.level == Level.FAIL
    assert net.detail == f"{A}: network: file chain id 31001, node chain id 31337"
    other = view(bridge_word=b"\x01" * 32)
    readings[f"relayer:{A}"] = reading(f"relayer:{A}", status("relayer", ledgers=(other,)))
    rows = {(r.component, r.check): r for r in evaluate(NETWORK, readings, "0.1.0", 2, T).results}
    assert rows[(f"relayer:{A}", "network")].detail.startswith(f"{A}: bridge endpoint: file 0x")


def test_missing_and_unreachable_components_fail() -> None:
    readings = healthy()
    del readings[member_component(LATER)]
    readings[f"relayer:{A}"] = reading(f"relayer:{A}", None, "UNAVAILABLE [UNKNOWN]: refused")
    report = evaluate(NETWORK, readings, "0.1.0", 2, T)
    by = {(r.component, r.check): r for r in report.results}
    # A later member not in any live epoch is not needed yet: WARN, not FAIL.
    later = by[(member_component(LATER), "reachable")]
    assert (later.level, later.detail) == (Level.WARN, "no endpoint known (later member)")
    del readings[member_component(MEMBERS[0])]
    by = {(r.component, r.check): r for r in evaluate(NETWORK, readings, "0.1.0", 2, T).results}
    gone = by[(member_component(MEMBERS[0]), "reachable")]
    assert (gone.level, gone.detail) == (Level.FAIL, "no endpoint known")
    assert by[(f"relayer:{A}", "reachable")].detail.startswith("UNAVAILABLE")
    assert report.exit_code == 2
    # No committee row without the relayer's view; members' views are still checked.
    assert (f"ledger:{A}", "committee") not in by
    assert by[(member_component(MEMBERS[1]), f"view {A}")].level == Level.OK


def test_lag_gas_and_nothing_scanned() -> None:
    assert check_lag("r", view(scanned_height=80), T).level == Level.OK
    assert check_lag("r", view(scanned_height=79), T).level == Level.WARN
    assert check_lag("r", view(scanned_height=None), T).detail.startswith("nothing scanned yet")
    assert check_gas("r", view(gas_balance=0), T).level == Level.FAIL
    assert check_gas("r", view(gas_balance=10**16 - 1), T).level == Level.WARN
    assert check_gas("r", view(gas_balance=10**16), T).level == Level.OK
    assert check_gas("r", view(gas_balance=None), T).level == Level.OK
    # The depository is not told a relayer's account or balance: no false OK (finding 9).
    withheld = check_gas("r", view(gas_balance=None, operator=""), T)
    assert (withheld.level, withheld.detail) == (Level.WARN, "not disclosed to this caller")


# -- network file ------------------------------------------------------------------------


def test_the_fingerprint_is_the_files_meaning_not_its_host() -> None:
    here = replace(NETWORK, ledgers={A: replace(ledger(), rpc_url="https://node.example:8545")})
    assert network_fingerprint(here) == FINGERPRINT
    reordered = replace(NETWORK, committee=Committee(1, 3, MEMBERS[::-1]))
    assert network_fingerprint(reordered) == FINGERPRINT
    for other in (
        replace(NETWORK, committee=Committee(1, 4, MEMBERS)),
        replace(NETWORK, ledgers={A: ledger(chain_id=1)}),
        replace(NETWORK, later_members={}),
        replace(NETWORK, instruction_keys={A: frozenset({OUTSIDER})}),
    ):
        assert network_fingerprint(other) != FINGERPRINT


@pytest.mark.security
def test_a_component_with_another_network_file_fails() -> None:
    readings = healthy()
    relayer = readings[f"relayer:{A}"].status
    assert relayer is not None
    readings[f"relayer:{A}"] = reading(
        f"relayer:{A}", replace(relayer, network_fingerprint=b"\x01" * 32)
    )
    readings["coordinator"] = reading(
        "coordinator", replace(status("coordinator"), network_fingerprint=b"")
    )
    report = evaluate(NETWORK, readings, "0.1.0", 2, T)
    by = {(r.component, r.check): r for r in report.results if r.check == "network file"}
    assert by[(f"relayer:{A}", "network file")].detail.startswith(
        "another network file: fingerprint 0x0101"
    )
    assert by[(f"relayer:{A}", "network file")].level == Level.FAIL  # review finding 5
    assert by[("coordinator", "network file")].detail == "fingerprint not reported"
    assert by[("coordinator", "network file")].level == Level.WARN
    assert by[(member_component(LATER), "network file")].level == Level.OK
    assert report.exit_code == 2


# -- version, clock, feed ------------------------------------------------------------------


def test_version_protocol_fails_build_warns() -> None:
    assert check_version("c", status("relayer", protocol_version=1), "0.1.0", 2).level == Level.FAIL
    assert check_version("c", status("relayer", version="0.2.0"), "0.1.0", 2).level == Level.WARN
    assert check_version("c", status("relayer"), "0.1.0", 2).level == Level.OK


def test_clock_skew_beyond_the_round_trip_warns() -> None:
    r = Reading("c", "t", None, "", 1000.0, 1001.0)  # midpoint 1000.5, uncertainty 0.5
    assert check_clock("c", r, status("relayer", time_unix_ms=1_002_900), T).level == Level.OK
    assert check_clock("c", r, status("relayer", time_unix_ms=1_003_100), T).level == Level.WARN
    assert check_clock("c", r, status("relayer", time_unix_ms=997_900), T).level == Level.WARN


def test_feed_missing_or_old_warns() -> None:
    assert check_feed(None, ISIN, T).detail == "no attestation published yet"
    assert check_feed(FeedAge(ISIN, None), ISIN, T).level == Level.WARN
    assert check_feed(FeedAge(ISIN, 301.0), ISIN, T).level == Level.WARN
    assert check_feed(FeedAge(ISIN, 299.0), ISIN, T).level == Level.OK


# -- members -------------------------------------------------------------------------------


def _member_rows(readings: dict[str, Reading], m: bytes) -> dict[str, CheckResult]:
    report = evaluate(NETWORK, readings, "0.1.0", 2, Thresholds(max_lag_blocks=5))
    return {r.check: r for r in report.results if r.component == member_component(m)}


def test_member_identity_lag_epochs_and_rotated_out() -> None:
    m = MEMBERS[1]
    readings = healthy()
    # Another key behind this member's endpoint.
    readings[member_component(m)] = reading(
        member_component(m), status("verifier", member=OUTSIDER, ledgers=(view(),))
    )
    assert _member_rows(readings, m)["identity"].level == Level.FAIL
    # Its node lags the relayer's.
    readings[member_component(m)] = reading(
        member_component(m), status("verifier", member=m, ledgers=(view(finalized_height=94),))
    )
    row = _member_rows(readings, m)[f"view {A}"]
    assert (row.level, row.detail) == (
        Level.WARN,
        "lagging: node at height 94, relayer's at 100 (6 blocks behind > 5)",
    )
    # It sees other epochs than the relayer.
    later = Committee(2, 3, (*MEMBERS[:3], LATER))
    readings[member_component(m)] = reading(
        member_component(m),
        status("verifier", member=m, ledgers=(view(epochs=(window(GENESIS), window(later))),)),
    )
    row = _member_rows(readings, m)[f"view {A}"]
    assert (row.level, row.detail) == (Level.FAIL, "sees epochs [1, 2], the relayer [1]")
    # ... while its node is behind: a rotation in flight.
    readings[member_component(m)] = reading(
        member_component(m),
        status(
            "verifier",
            member=m,
            ledgers=(view(finalized_height=98, epochs=(window(GENESIS), window(later))),),
        ),
    )
    row = _member_rows(readings, m)[f"view {A}"]
    assert row.level == Level.WARN
    assert row.detail.endswith("(heights differ by 2: rotation in flight?)")
    # A genesis member in no live epoch (rotated out but still running).
    rotated = Committee(2, 3, (MEMBERS[0], MEMBERS[2], MEMBERS[3], LATER))
    readings = healthy()
    for name in (f"relayer:{A}", member_component(m)):
        s = readings[name].status
        assert s is not None
        readings[name] = reading(
            name, replace(s, ledgers=(replace(s.ledgers[0], epochs=(window(rotated),)),))
        )
    row = _member_rows(readings, m)[f"view {A}"]
    assert row.level == Level.WARN
    assert "in no live epoch" in row.detail
    # A member that cannot read the ledger, or does not watch it at all.
    readings[member_component(m)] = reading(
        member_component(m), status("verifier", member=m, ledgers=(view(error="Unavailable"),))
    )
    assert _member_rows(readings, m)[f"view {A}"].detail == "cannot read: Unavailable"
    readings[member_component(m)] = reading(member_component(m), status("verifier", member=m))
    assert _member_rows(readings, m)[f"view {A}"].level == Level.FAIL


# -- report, conversion, rendering ---------------------------------------------------------


def test_exit_code_is_the_worst_level() -> None:
    ok = CheckResult("c", "x", Level.OK, "")
    warn = CheckResult("c", "y", Level.WARN, "")
    fail = CheckResult("c", "z", Level.FAIL, "")
    assert Report.of([]).exit_code == 0
    assert Report.of([ok, warn]).exit_code == 1
    assert Report.of([warn, fail, ok]).exit_code == 2


def test_status_survives_the_wire() -> None:
    s = status(
        "coordinator",
        member=MEMBERS[0],
        ledgers=(view(), view(scanned_height=None, gas_balance=None, error="x")),
        endpoints=(("relayer:brokerage-a", "127.0.0.1:1"),),
        feeds=(FeedAge(ISIN, 1.5), FeedAge("US0378331005", None)),
    )
    assert status_from_pb(status_to_pb(s)) == s


def test_table_and_json() -> None:
    report = Report.of(
        [
            CheckResult("coordinator", "reachable", Level.OK, "127.0.0.1:1"),
            CheckResult(f"relayer:{A}", "lag", Level.WARN, "lag 30 blocks"),
        ]
    )
    lines = render_table(report).splitlines()
    assert lines[0].split() == ["COMPONENT", "CHECK", "STATUS", "DETAIL"]
    assert lines[2].split()[:3] == [f"relayer:{A}", "lag", "WARN"]
    assert lines[-1] == "WARN: 1 ok, 1 warn, 0 fail"
    out = json.loads(render_json(report))
    assert (out["status"], out["exit_code"]) == ("WARN", 1)
    assert out["checks"][1] == {
        "component": f"relayer:{A}",
        "check": "lag",
        "status": "WARN",
        "detail": "lag 30 blocks",
    }


def test_the_table_never_passes_control_characters_through() -> None:
    # SECURITY: a compromised component's text (here an error with an escape sequence and a
    # newline) cannot drive the operator's terminal or forge table rows.
    hostile = CheckResult(f"relayer:{A}", "reachable", Level.FAIL, "\x1b[2J\nOK row" + "x" * 999)
    text = render_table(Report.of([hostile]))
    assert "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 3  # header, the row, the summary
    assert "?[2J?OK row" in lines[1]
    assert lines[1].endswith("…")
    assert len(lines[1].split("FAIL", 1)[1].lstrip()) == MAX_CELL
    assert json.loads(render_json(Report.of([hostile])))["checks"][0]["detail"].startswith("\x1b")


def test_a_later_member_in_a_live_epoch_without_endpoint_fails() -> None:
    readings = healthy()
    del readings[member_component(LATER)]
    later = Committee(2, 3, (*MEMBERS[:3], LATER))
    relayer = readings[f"relayer:{A}"].status
    assert relayer is not None
    readings[f"relayer:{A}"] = reading(
        f"relayer:{A}",
        replace(relayer, ledgers=(view(epochs=(window(GENESIS, 50), window(later))),)),
    )
    report = evaluate(NETWORK, readings, "0.1.0", 2, T)
    gone = next(r for r in report.results if r.component == member_component(LATER))
    assert (gone.check, gone.level) == ("reachable", Level.FAIL)


# -- review finding 5: no false OK ---------------------------------------------------------


@pytest.mark.security
def test_a_member_seeing_another_committee_of_the_same_epoch_fails() -> None:
    """Epoch numbers agreeing is not enough: the members (or threshold) of an epoch the
    member's node reports must be the relayer's, else FAIL (not WARN)."""
    m = MEMBERS[1]
    later = Committee(2, 3, (*MEMBERS[:3], LATER))
    forged = Committee(2, 3, (*MEMBERS[:3], MEMBERS[3]))
    readings = healthy()
    relayer = readings[f"relayer:{A}"].status
    assert relayer is not None
    readings[f"relayer:{A}"] = reading(
        f"relayer:{A}",
        replace(relayer, ledgers=(view(epochs=(window(GENESIS), window(later))),)),
    )
    readings[member_component(m)] = reading(
        member_component(m),
        status("verifier", member=m, ledgers=(view(epochs=(window(GENESIS), window(forged))),)),
    )
    row = _member_rows(readings, m)[f"view {A}"]
    assert row.level == Level.FAIL and row.detail.startswith("epoch 2: the member sees 3-of-4")
    # A genesis epoch other than the file's, seen by a member alone, fails against the file.
    readings = healthy()
    other = Committee(1, 2, MEMBERS[:3])
    readings[member_component(m)] = reading(
        member_component(m),
        status("verifier", member=m, ledgers=(view(epochs=(window(other),)),)),
    )
    row = _member_rows(readings, m)[f"view {A}"]
    assert row.level == Level.FAIL and row.detail.startswith("committee epoch 1: file")


@pytest.mark.security
@pytest.mark.parametrize("age", [float("nan"), float("inf"), -1.0])
def test_an_impossible_feed_age_fails(age: float) -> None:
    row = check_feed(FeedAge(ISIN, age), ISIN, T)
    assert (row.level, row.detail) == (Level.FAIL, f"impossible age {age!r}")


@pytest.mark.security
def test_negative_gas_and_heights_fail_and_an_unreported_bridge_fails() -> None:
    assert check_gas("r", view(gas_balance=-1), T).level == Level.FAIL
    assert check_lag("r", view(scanned_height=-1), T).level == Level.FAIL
    assert check_lag("r", view(finalized_height=-5), T).level == Level.FAIL
    row = check_network("r", ledger(), view(bridge_word=b""))
    assert row.level == Level.FAIL and row.detail.endswith("node not reported")


# -- review finding 4: the doctor dials only what the file expects ------------------------


@pytest.mark.security
def test_the_doctor_dials_only_the_files_components() -> None:
    from bridge.doctor.collect import endpoints_to_read

    named = status(
        "coordinator",
        endpoints=(
            ("coordinator", "evil.example:1"),
            (f"relayer:{A}", "10.0.0.7:7201"),
            ("relayer:elsewhere", "evil.example:2"),
            ("member:0x" + MEMBERS[0].hex().upper(), "10.0.0.11:7101"),
            (member_component(OUTSIDER), "evil.example:3"),
            ("member:nonsense", "evil.example:4"),
            ("bridge-operator", "evil.example:5"),
        ),
    )
    targets = endpoints_to_read(NETWORK, reading("coordinator", named), {})
    assert targets == {
        f"relayer:{A}": "10.0.0.7:7201",
        member_component(MEMBERS[0]): "10.0.0.11:7101",
        member_component(LATER): "127.0.0.1:9",
    }
    with pytest.raises(InvalidInput, match="not a relayer or member of the network file"):
        endpoints_to_read(NETWORK, reading("coordinator", named), {"coordinator": "x:1"})
