"""The chaincode's organisation-bound admin, k-of-n admin changes and parking (issue 10).

Pure protocol over in-memory stores, in the style of test_fabric_chaincode_protocol.py
(whose fixtures and helpers this module reuses). Every refusal asserts the precise error and
that neither store nor event stream changed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.domain.claims import ClaimKind
from tests.unit.test_fabric_chaincode_protocol import (
    GOV,
    ISIN,
    MINTED,
    ORG_ADMINS,
    Env,
    Ledger,
    account,
    balance,
    committee_json,
    env,
    finish,
    governance,
    identity,
    in_leg,
    leg,
    p,
    prepared,
    rejects,
    supply,
    word_of,
)

__all__ = ["env"]  # the fixture, re-exported for pytest

pytestmark = [pytest.mark.unit, pytest.mark.governance]

TWO_ORGS = governance("Org1MSP", ("Org1MSP", "Org2MSP"), 2)


def org_admin(msp: str) -> str:
    """A fresh admin certificate of ``msp`` (NodeOU admin): a renewal gives another one."""
    who = identity(msp)
    ORG_ADMINS.add(who)
    return who


def two_org_ledger(env: Env) -> tuple[Ledger, str, str]:
    """A ledger whose relayers, keys and governance need Org1's and Org2's admins (k = 2)."""
    led = Ledger("fabric-g", "kstb")
    admin1, admin2 = org_admin("Org1MSP"), org_admin("Org2MSP")
    led.call(
        admin1, "Init", led.name, led.chaincode, committee_json(env.signers), led.network_hex,
        TWO_ORGS,
    )  # fmt: skip
    return led, admin1, admin2


def is_relayer(led: Ledger, who: str) -> bool:
    return bool(led.call("x:y", "IsRelayer", who)["relayer"])


def state(led: Ledger) -> Any:
    return dict(led.store.data), len(led.events)


def refused(led: Ledger, error: str, caller: str, fn: str, *args: str) -> str:
    before = state(led)
    with pytest.raises(p.ChaincodeError) as info:
        led.call(caller, fn, *args)
    assert info.value.name == error, str(info.value)
    assert state(led) == before
    return info.value.detail


# --------------------------------------------------------------------------- admin


def test_a_renewed_admin_certificate_of_the_issuer_keeps_working(env: Env) -> None:
    renewed = org_admin("Org1MSP")  # same organisation, new certificate
    holder = account()
    env.a.call(renewed, "SetEligible", ISIN.isin, holder, "true")
    env.a.call(renewed, "Issue", ISIN.isin, holder, "5")
    assert balance(env.a, holder) == 5
    out = env.a.call(renewed, "SetRelayer", identity("Org1MSP"), "true")  # k = 1
    assert out["applied"] is True


def test_another_org_admin_or_a_client_of_the_issuer_is_not_admin(env: Env) -> None:
    org2_admin = org_admin("Org2MSP")
    org1_client = identity("Org1MSP")  # NodeOU client, same organisation
    holder = account()
    for caller in (org2_admin, org1_client):
        for fn, args in (
            ("Issue", (ISIN.isin, env.alice, "1")),
            ("SetEligible", (ISIN.isin, holder, "true")),
            ("SetFrozen", (ISIN.isin, env.alice, "true")),
            ("RegisterSecurity", ("US0378331005",)),
            ("SetRelayer", (caller, "true")),
            ("SetInstructor", ("0x" + "11" * 20, "true")),
            ("SetAdmin", (governance("Org2MSP"),)),
        ):
            detail = rejects(env, env.a, "NotAdmin", caller, fn, *args)
            assert detail == f"caller={caller}"
        # review finding 9: the EVM endpoint's order, NotParked before the admin check
        rejects(env, env.a, "NotParked", caller, "ReleaseParked", "0x" + "00" * 32, holder)


def test_one_org_alone_cannot_set_a_relayer_when_k_is_2(env: Env) -> None:
    led, admin1, admin2 = two_org_ledger(env)
    relayer = identity("Org1MSP")
    first = led.call(admin1, "SetRelayer", relayer, "true")
    assert (first["applied"], first["approvals"], first["quorum"]) == (False, ["Org1MSP"], 2)
    assert not is_relayer(led, relayer)
    # The same organisation again, even with another (renewed) admin certificate: no count.
    detail = refused(led, "AlreadyApproved", org_admin("Org1MSP"), "SetRelayer", relayer, "true")
    assert detail == f"proposal={first['proposal']}, org=Org1MSP"
    refused(led, "AlreadyApproved", admin1, "ApproveAdminChange", first["proposal"])
    assert not is_relayer(led, relayer)
    # A client certificate of the other organisation cannot approve.
    refused(led, "NotAdmin", identity("Org2MSP"), "SetRelayer", relayer, "true")
    # An admin of an organisation outside the admin set cannot approve.
    refused(led, "NotAdmin", org_admin("Org3MSP"), "SetRelayer", relayer, "true")
    second = led.call(admin2, "SetRelayer", relayer, "true")
    assert second["proposal"] == first["proposal"]
    assert (second["applied"], second["approvals"]) == (True, ["Org1MSP", "Org2MSP"])
    assert is_relayer(led, relayer)
    assert led.events == []  # administration emits no leg events


def test_a_stale_or_different_proposal_does_not_apply(env: Env) -> None:
    led, admin1, admin2 = two_org_ledger(env)
    x, y = identity("Org1MSP"), identity("Org2MSP")
    px = led.call(admin1, "SetRelayer", x, "true")
    py = led.call(admin2, "SetRelayer", y, "true")  # other args: another proposal
    assert px["proposal"] != py["proposal"]
    assert not is_relayer(led, x) and not is_relayer(led, y)
    assert led.call(admin2, "Proposal", px["proposal"])["stale"] is False
    # Org2 approves X by id: it applies, which makes the open Y proposal stale.
    assert led.call(admin2, "ApproveAdminChange", px["proposal"])["applied"] is True
    assert is_relayer(led, x) and not is_relayer(led, y)
    assert led.call(admin1, "Proposal", py["proposal"])["stale"] is True
    detail = refused(led, "StaleProposal", admin1, "ApproveAdminChange", py["proposal"])
    assert detail == f"proposal={py['proposal']}, seq=0, current=1"
    assert not is_relayer(led, y)
    # Applied proposals are gone; unknown ids are refused.
    refused(led, "UnknownProposal", admin1, "ApproveAdminChange", px["proposal"])
    refused(led, "UnknownProposal", admin1, "ApproveAdminChange", "ab" * 32)
    refused(led, "InvalidArgument", admin1, "ApproveAdminChange", "AB" * 32)
    # Proposing Y again starts a fresh proposal that needs both organisations again.
    again = led.call(admin1, "SetRelayer", y, "true")
    assert again["proposal"] != py["proposal"] and again["applied"] is False
    assert led.call(admin2, "SetRelayer", y, "true")["applied"] is True
    assert is_relayer(led, y)


def test_invalid_changes_record_nothing(env: Env) -> None:
    led, admin1, _ = two_org_ledger(env)
    refused(led, "InvalidArgument", admin1, "SetRelayer", "not-an-identity", "true")
    refused(led, "InvalidArgument", admin1, "SetRelayer", identity("Org1MSP"), "yes")
    refused(led, "ZeroAddress", admin1, "SetInstructor", "0x" + "00" * 20, "true")
    refused(led, "InvalidGovernance", admin1, "SetAdmin", governance(quorum=3))
    refused(led, "InvalidArgument", admin1, "ProposeAdminChange", "Issue", "[]")
    refused(led, "InvalidArgument", admin1, "ProposeAdminChange", "SetRelayer", "{}")
    refused(led, "InvalidArgument", admin1, "ProposeAdminChange", "SetRelayer", '["a"]')


def test_instructor_keys_need_k_orgs_and_are_normalised(env: Env) -> None:
    led, admin1, admin2 = two_org_ledger(env)
    key = "0x" + "Ab" * 20
    first = led.call(admin1, "ProposeAdminChange", "SetInstructor", json.dumps([key, "true"]))
    assert first["applied"] is False and first["args"] == [key.lower(), "true"]
    assert led.call("x:y", "IsInstructor", key.lower())["instructor_registered"] is False
    # The same change in other letter case is the same proposal.
    out = led.call(admin2, "SetInstructor", key.lower(), "true")
    assert out["proposal"] == first["proposal"] and out["applied"] is True
    assert led.call("x:y", "IsInstructor", key.lower())["instructor_registered"] is True


def test_set_admin_moves_the_issuer_and_the_admin_set(env: Env) -> None:
    led, admin1, admin2 = two_org_ledger(env)
    led.call(admin1, "RegisterSecurity", ISIN.isin)
    holder = account()
    new = governance("Org2MSP", ("Org2MSP", "Org3MSP"), 1)
    assert led.call(admin1, "SetAdmin", new)["applied"] is False
    refused(led, "NotAdmin", admin2, "SetEligible", ISIN.isin, holder, "true")  # not yet
    out = led.call(admin2, "SetAdmin", new)
    assert out["applied"] is True
    assert out["governance"] == {
        "issuer": "Org2MSP",
        "admin_orgs": ["Org2MSP", "Org3MSP"],
        "quorum": 1,
        "seq": 1,
    }
    assert led.call("x:y", "Info")["governance"] == out["governance"]
    # The old issuer organisation lost its rights; the new one has them.
    refused(led, "NotAdmin", admin1, "SetEligible", ISIN.isin, holder, "true")
    refused(led, "NotAdmin", admin1, "SetRelayer", identity("Org1MSP"), "true")
    led.call(admin2, "SetEligible", ISIN.isin, holder, "true")
    org3 = org_admin("Org3MSP")
    assert led.call(org3, "SetRelayer", identity("Org3MSP"), "true")["applied"] is True  # k = 1


# --------------------------------------------------------------------------- parking


def _park(env: Env, frozen: bool = True) -> tuple[str, Any]:
    recipient = account()
    env.b.call(env.admin, "SetEligible", ISIN.isin, recipient, "true")
    t = prepared(env, amount=7, recipient=word_of(recipient))
    if frozen:
        env.b.call(env.admin, "SetFrozen", ISIN.isin, recipient, "true")
    else:
        env.b.call(env.admin, "SetEligible", ISIN.isin, recipient, "false")
    return recipient, t


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "made-ineligible"])
def test_commit_parks_units_of_a_recipient_refused_after_prepare(env: Env, frozen: bool) -> None:
    recipient, t = _park(env, frozen)
    before = supply(env.b)
    out = finish(env, env.b, ClaimKind.COMMIT, t)  # COMMIT never fails at the target
    finish(env, env.a, ClaimKind.COMMIT, t)
    reason = 3 if frozen else 2
    assert out == {"transfer_id": "0x" + t.transfer_id.hex(), **leg(MINTED, t, reason=reason)}
    assert in_leg(env, t) == leg(MINTED, t, reason=reason)
    assert env.b.events[-1][1]["reason"] == reason
    assert balance(env.b, recipient) == 0
    tid = "0x" + t.transfer_id.hex()
    parked = env.b.call("x:y", "Parked", tid)
    assert (parked["amount"], parked["reason"]) == ("7", reason)
    after = supply(env.b)
    # Parked units exist (total supply, minted in), are not escrow; prepared is released.
    assert after == {
        **before,
        "total_supply": before["total_supply"] + 7,
        "minted_in": before["minted_in"] + 7,
        "prepared": before["prepared"] - 7,
    }


def test_release_parked_only_by_the_issuer_to_an_eligible_holder_once(env: Env) -> None:
    recipient, t = _park(env)
    finish(env, env.b, ClaimKind.COMMIT, t)
    tid = "0x" + t.transfer_id.hex()
    for caller in (env.relayer, env.stranger, org_admin("Org2MSP")):
        rejects(env, env.b, "NotAdmin", caller, "ReleaseParked", tid, env.bob)
    for to, status in ((recipient, 3), (env.carol, 2), (env.dave, 3), ("0x" + "00" * 20, 5)):
        detail = rejects(env, env.b, "RecipientRefused", env.admin, "ReleaseParked", tid, to)
        assert detail == f"to={to}, status={status}"
    env.b.call(env.admin, "SetPaused", ISIN.isin, "true")
    rejects(env, env.b, "RecipientRefused", env.admin, "ReleaseParked", tid, env.bob)
    env.b.call(env.admin, "SetPaused", ISIN.isin, "false")
    rejects(env, env.b, "NotParked", env.admin, "ReleaseParked", "0x" + "07" * 32, env.bob)
    before, bob0 = supply(env.b), balance(env.b, env.bob)
    out = env.b.call(env.admin, "ReleaseParked", tid, env.bob)
    assert out == {"transfer_id": tid, "to": env.bob, "amount": "7"}
    assert balance(env.b, env.bob) == bob0 + 7
    assert supply(env.b) == before  # parked units were already in the total supply
    assert env.b.call("x:y", "Parked", tid)["amount"] == "0"
    rejects(env, env.b, "NotParked", env.admin, "ReleaseParked", tid, env.bob)  # not twice
    assert in_leg(env, t)["state"] == MINTED  # the leg itself is final


def test_a_compliant_recipient_is_paid_and_nothing_parks(env: Env) -> None:
    t = prepared(env, amount=3)
    bob0 = balance(env.b, env.bob)
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert in_leg(env, t) == leg(MINTED, t)
    assert balance(env.b, env.bob) == bob0 + 3
    assert env.b.call("x:y", "Parked", "0x" + t.transfer_id.hex())["amount"] == "0"
    rejects(
        env, env.b, "NotParked", env.admin, "ReleaseParked", "0x" + t.transfer_id.hex(), env.bob
    )


def test_gov_constant_is_the_default(env: Env) -> None:
    assert json.loads(GOV) == {"issuer": "Org1MSP", "admin_orgs": ["Org1MSP"], "quorum": 1}
