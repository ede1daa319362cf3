"""Roles, principals, the rule table, certificate authentication, network-file
organisations and the audit log (pure logic; certificates made by the devnet PKI)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bridge.config import dump_toml, load_network, load_relayer
from bridge.devnet.pki import DevPki
from bridge.domain.errors import InvalidInput
from bridge.rpc.audit import AuditLog, AuditRecord
from bridge.rpc.authn import Authenticator, Unauthenticated
from bridge.rpc.roles import Principal, Role, parse_role
from bridge.rpc.rules import ANY_AUTHENTICATED, RULES, role_allowed
from bridge.v1 import (
    depository_pb2,
    events_pb2,
    operator_pb2,
    relayer_pb2,
    status_pb2,  # ---- doctor (issue 12)
    supply_pb2,
    transfer_pb2,
    verifier_pb2,
)
from tests.unit.test_config import MEMBERS, network_data

pytestmark = [pytest.mark.unit, pytest.mark.security]

A, B = "brokerage-a", "brokerage-b"
PROTO_MODULES = (
    depository_pb2,  # ---- depository halt
    events_pb2,
    operator_pb2,
    relayer_pb2,
    status_pb2,  # ---- doctor (issue 12)
    supply_pb2,
    transfer_pb2,
    verifier_pb2,
)


def test_every_proto_module_with_a_service_is_checked() -> None:
    # ---- doctor (issue 12): a new .proto file cannot slip past the rule checks below.
    import importlib
    import pkgutil

    import bridge.v1

    with_services = {
        name
        for info in pkgutil.iter_modules(bridge.v1.__path__)
        if (name := info.name).endswith("_pb2")
        and importlib.import_module(f"bridge.v1.{name}").DESCRIPTOR.services_by_name
    }
    assert with_services <= {m.__name__.rsplit(".", 1)[1] for m in PROTO_MODULES}


def proto_methods() -> list[str]:
    """Every RPC method declared in proto/, read from the compiled descriptors."""
    out = []
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return out


# -- the rule table ----------------------------------------------------------------------------


def test_every_rpc_in_proto_has_a_rule() -> None:
    methods = proto_methods()
    assert len(methods) >= 22
    missing = [m for m in methods if m not in RULES]
    assert not missing, f"RPCs without an authorisation rule: {missing}"


def test_no_rule_for_a_method_that_does_not_exist() -> None:
    known = set(proto_methods()) | {m for m in RULES if not m.startswith("/bridge.")}
    assert set(RULES) <= known, "stale rules"


# Committee rotation (ADR 0009): the operator asks members to sign a rotation (the
# coordinator may not), and the installed epochs are readable by members and the operator.
_ROTATION_RULES = {
    "/bridge.v1.VerifierService/SignRotation": {"bridge-operator"},
    "/bridge.v1.RelayerService/GetCommittees": {
        "coordinator",
        "bridge-operator",
        "member",
        "depository",
    },
    "/bridge.v1.RelayerService/InstallCommittee": {"coordinator", "bridge-operator"},
}


def test_only_the_coordinator_drives_relayers_and_the_committee() -> None:
    for method, rule in RULES.items():
        if method in _ROTATION_RULES:
            continue
        if "/bridge.v1.RelayerService/" in method or "/bridge.v1.VerifierService/" in method:
            assert rule.roles == {"coordinator"}, method


@pytest.mark.governance
def test_rotation_rules() -> None:
    """SECURITY: only the bridge operator makes members sign a rotation (never the
    coordinator, which could otherwise have the committee certify keys of its choosing)."""
    for method, roles in _ROTATION_RULES.items():
        assert RULES[method].roles == roles, method
    for name in ("ProposeRotation", "CertifyRotation", "GetRotation", "ListRotations"):
        assert RULES[f"/bridge.v1.OperatorService/{name}"].roles == {"bridge-operator"}
    assert RULES["/bridge.v1.SupplyService/GetCommitteeChain"].roles == {
        "depository",
        "supply-operator",
    }


def test_only_health_and_reflection_are_open_to_every_authenticated_caller() -> None:
    open_ = {m for m, r in RULES.items() if ANY_AUTHENTICATED in r.roles}
    assert open_ == {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("/bridge.v1.TransferService/SubmitTransfer", {"brokerage"}),
        ("/bridge.v1.LedgerEventSink/DeliverEvents", {"relayer"}),
        ("/bridge.v1.SupplyService/RegisterIssuance", {"supply-operator"}),
        ("/bridge.v1.SupplyService/ReleaseHold", {"supply-operator"}),
        ("/bridge.v1.SupplyService/StreamAttestations", {"depository", "supply-operator"}),
        ("/bridge.v1.OperatorService/AbortTransfer", {"bridge-operator"}),
        (
            "/bridge.v1.TransferService/ListTransfers",
            {"brokerage", "depository", "bridge-operator"},
        ),
        # review findings 3, 9: nothing reads a status as the coordinator
        ("/bridge.v1.StatusService/GetStatus", {"depository", "bridge-operator"}),
    ],
)
def test_role_table(method: str, allowed: set[str]) -> None:
    rule = RULES[method]
    for kind in ("brokerage", "relayer", "member", "coordinator", "depository",
                 "supply-operator", "bridge-operator"):  # fmt: skip
        scope = {"brokerage": A, "relayer": A, "member": MEMBERS[0].lower()}.get(kind, "")
        p = Principal("org", kind, scope)
        assert role_allowed(rule, p) == (kind in allowed), (method, kind)


async def test_brokerage_submits_only_from_its_own_ledger() -> None:
    check = RULES["/bridge.v1.TransferService/SubmitTransfer"].scope
    assert check is not None
    mine = Principal(A, "brokerage", A)
    assert await check(mine, transfer_pb2.SubmitTransferRequest(source_ledger=A), None) is None
    why = await check(mine, transfer_pb2.SubmitTransferRequest(source_ledger=B), None)
    assert why == (f"brokerage:{A} may submit only transfers whose source ledger is {A}, not '{B}'")


async def test_relayer_delivers_only_its_own_ledgers_events() -> None:
    check = RULES["/bridge.v1.LedgerEventSink/DeliverEvents"].scope
    assert check is not None
    relayer = Principal(A, "relayer", A)
    assert await check(relayer, events_pb2.DeliverEventsRequest(ledger_id=A), None) is None
    why = await check(relayer, events_pb2.DeliverEventsRequest(ledger_id=B), None)
    assert why == f"relayer:{A} may deliver events of ledger {A} only, not '{B}'"


async def test_brokerage_reads_only_transfers_of_its_ledger() -> None:
    check = RULES["/bridge.v1.TransferService/GetTransfer"].scope
    assert check is not None
    ours, theirs, missing = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    table = {ours: (A, B), theirs: (B, "brokerage-c")}

    async def lookup(tid: bytes) -> tuple[str, str] | None:
        return table.get(tid)

    def req(tid: bytes) -> transfer_pb2.GetTransferRequest:
        return transfer_pb2.GetTransferRequest(transfer_id="0x" + tid.hex())

    a = Principal(A, "brokerage", A)
    assert await check(a, req(ours), lookup) is None
    assert await check(a, req(theirs), lookup) == (
        f"transfer 0x{theirs.hex()} is not a transfer of brokerage:{A}"
    )
    # An unknown id is refused the same way (no existence oracle).
    assert await check(a, req(missing), lookup) == (
        f"transfer 0x{missing.hex()} is not a transfer of brokerage:{A}"
    )
    # The depository reads everything; a malformed id is left to the handler's validation.
    assert await check(Principal("depository", "depository"), req(theirs), lookup) is None
    bad = transfer_pb2.GetTransferRequest(transfer_id="0x12")
    assert await check(a, bad, lookup) is None


# -- roles and principals ----------------------------------------------------------------------


def test_parse_roles() -> None:
    assert parse_role("coordinator") == Role("coordinator")
    assert parse_role(f"brokerage:{A}") == Role("brokerage", A)
    assert parse_role(f"member:{MEMBERS[0]}") == Role("member", MEMBERS[0].lower())
    assert str(parse_role(f"relayer:{B}")) == f"relayer:{B}"
    assert parse_role(f"relayer:{B}").server_name == f"{B}.relayer.kstb-role"
    assert parse_role("coordinator").server_name == "coordinator.kstb-role"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("admin", "unknown role 'admin'"),
        ("brokerage", "needs a scope"),
        ("brokerage:", "ledger id ''"),
        ("brokerage:Bad_Name", "ledger id 'Bad_Name'"),
        ("coordinator:x", "takes no scope"),
        ("member:0x1234", "not a member address"),
        ("", "unknown role ''"),
    ],
)
def test_malformed_roles_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_role(text)


# -- certificates to principals ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki(tmp_path_factory.mktemp("pki"))
    pki.organisation("bridge-operator", ["coordinator", "bridge-operator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    pki.organisation(A, [f"brokerage:{A}", f"relayer:{A}"])
    pki.issue(A, f"brokerage:{A}", f"brokerage-{A}")
    pki.organisation(B, [f"brokerage:{B}"])
    pki.issue(B, f"brokerage:{B}", f"brokerage-{B}")
    return pki


def network_with(pki: DevPki, base: Path) -> Path:
    data = network_data()
    data["organisations"] = [
        {
            **e,
            "ca": str(pki.cas[e["id"]].ca_file),
            "revoked_file": str(pki.cas[e["id"]].revoked_file),
        }  # type: ignore[index]
        for e in pki.network_entries(pki.root)
    ]
    path = base / "network.toml"
    path.write_text(dump_toml(data))
    return path


def test_a_certificate_maps_to_its_principal(pki: DevPki, tmp_path: Path) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cert = pki.cert_for(f"brokerage:{A}")
    p = authn.principal(cert.cert_file.read_bytes())
    assert p == Principal(A, "brokerage", A, f"brokerage-{A}", cert.fingerprint)
    c = authn.principal(pki.cert_for("coordinator").cert_file.read_bytes())
    assert (c.org, c.role, c.scope) == ("bridge-operator", "coordinator", "")


def test_refused_certificates(pki: DevPki, tmp_path: Path) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cases = {
        # brokerage-b's CA issues a certificate claiming brokerage-a's role
        "does not hold role": pki.issue_extra(B, f"brokerage:{A}", "sneaky"),
        # right role, but Subject O names another organisation than the issuing CA's
        "names organisation 'brokerage-a' but brokerage-b's CA": pki.issue_extra(
            B, f"brokerage:{B}", "mislabelled", as_org=A
        ),
        "not issued by any organisation's CA": pki.issue_unknown_ca(A, f"brokerage:{A}", "x"),
        "outside its validity period": pki.issue_expired(A, f"brokerage:{A}", "old"),
    }
    for why, cert in cases.items():
        with pytest.raises(Unauthenticated, match=why):
            authn.principal(cert.cert_file.read_bytes())
    with pytest.raises(Unauthenticated, match=r"not a valid X\.509"):
        authn.principal(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_revocation_is_reloaded_from_disk(pki: DevPki, tmp_path: Path) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    victim = pki.issue_extra(A, f"relayer:{A}", "to-revoke")
    assert authn.principal(victim.cert_file.read_bytes()).role == "relayer"
    pki.revoke(victim)
    with pytest.raises(Unauthenticated, match="is revoked"):
        authn.principal(victim.cert_file.read_bytes())
    # other certificates of the organisation stay valid
    assert (
        authn.principal(pki.cert_for(f"brokerage:{A}").cert_file.read_bytes()).role == "brokerage"
    )


# -- [[organisations]] and [tls] -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, r"organisations\[0\]\.extra: unknown key"),
        ({"roles": ["brokerage:brokerage-z"]}, "names an unknown ledger"),
        ({"roles": ["member:0x" + "ab" * 20]}, "is not a committee member"),
        ({"roles": ["superuser"]}, "unknown role"),
        ({"roles": []}, r"organisations\[0\]\.roles: must have at least 1 item"),
        ({"ca": "missing.pem"}, "is not readable"),
        ({"id": "Bad Org"}, r"organisations\[0\]\.id: must match pattern"),
    ],
)
def test_bad_organisations_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    data = network_data()
    data["organisations"] = [{"id": "org-a", "ca": "ca.pem", "roles": [f"brokerage:{A}"], **change}]
    path = tmp_path / "network.toml"
    path.write_text(dump_toml(data))
    with pytest.raises(InvalidInput, match=message):
        load_network(path)


def test_duplicate_organisations_and_sole_roles_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    data = network_data()
    org = {"id": "org-a", "ca": "ca.pem", "roles": ["coordinator"]}
    data["organisations"] = [org, org]
    (tmp_path / "network.toml").write_text(dump_toml(data))
    with pytest.raises(InvalidInput, match="configured twice"):
        load_network(tmp_path / "network.toml")
    data["organisations"] = [org, {**org, "id": "org-b"}]
    (tmp_path / "network.toml").write_text(dump_toml(data))
    with pytest.raises(InvalidInput, match="already held by org-a"):
        load_network(tmp_path / "network.toml")


def test_organisations_parse(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    data = network_data()
    data["organisations"] = [
        {"id": "org-a", "ca": "ca.pem", "roles": [f"brokerage:{A}", f"relayer:{A}"]},
        {"id": "member-0", "ca": "ca.pem", "roles": [f"member:{MEMBERS[0]}"]},
    ]
    (tmp_path / "network.toml").write_text(dump_toml(data))
    net = load_network(tmp_path / "network.toml")
    assert net.organisations["org-a"].roles == {Role("brokerage", A), Role("relayer", A)}
    assert net.organisations["org-a"].ca_file == tmp_path / "ca.pem"
    assert [o.id for o in net.holders_of(Role("member", MEMBERS[0].lower()))] == ["member-0"]


def test_tls_key_must_be_0600_and_keys_known(tmp_path: Path) -> None:
    (tmp_path / "network.toml").write_text(dump_toml(network_data()))
    key = tmp_path / "tls.key"
    key.write_text("k")
    os.chmod(key, 0o644)
    relayer = {
        "network": "network.toml",
        "ledger": A,
        "listen": "127.0.0.1:1",
        "coordinator": "127.0.0.1:2",
        "key_file": "k",
        "state_db": "s",
        "tls": {"cert_file": "tls.pem", "key_file": "tls.key"},
    }
    (tmp_path / "relayer.toml").write_text(dump_toml(relayer))
    with pytest.raises(InvalidInput, match="must be 0600"):
        load_relayer(tmp_path / "relayer.toml")
    os.chmod(key, 0o600)
    cfg = load_relayer(tmp_path / "relayer.toml")
    assert cfg.tls is not None and cfg.tls.key_file == key
    relayer["tls"] = {"cert_file": "tls.pem", "key_file": "tls.key", "verify": False}
    (tmp_path / "relayer.toml").write_text(dump_toml(relayer))
    with pytest.raises(InvalidInput, match=r"tls\.verify: unknown key"):
        load_relayer(tmp_path / "relayer.toml")


# -- the audit log -----------------------------------------------------------------------------------


def test_audit_log_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "x.jsonl"
    path.parent.mkdir()
    path.write_text('{"earlier": true}\n')
    log = AuditLog(path)
    rec = AuditRecord(1.0, A, f"brokerage:{A}", "cn", "ff", "ipv4:127.0.0.1:1", "/m", "0x01",
                      False, "why")  # fmt: skip
    log.record(rec)
    log.record(rec)
    log.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": True}, "nothing already written is lost"
    assert [json.loads(x)["reason"] for x in lines[1:]] == ["why", "why"]
    assert json.loads(lines[1])["allowed"] is False
    fresh = tmp_path / "fresh.jsonl"
    AuditLog(fresh).close()
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_audit_record_fields_are_asdicts() -> None:
    """The audit line's fields (written on every RPC) are exactly ``asdict``'s: every
    field, by name, in declaration order, values unchanged."""
    rec = AuditRecord(2.5, A, "member", "cn", "ff", "ipv6:[::1]:9", "/m", "", True, "")
    assert rec.as_fields() == dataclasses.asdict(rec)
    assert list(rec.as_fields()) == [f.name for f in dataclasses.fields(AuditRecord)]


# ---- depository halt


@pytest.mark.governance
def test_only_the_depository_submits_halt_orders() -> None:
    assert RULES["/bridge.v1.DepositoryService/SubmitHaltOrder"].roles == {"depository"}
    assert RULES["/bridge.v1.DepositoryService/GetHaltStatus"].roles == {
        "depository",
        "bridge-operator",
    }
    for method in ("ApplyOrder", "GetHaltStatus"):
        assert RULES[f"/bridge.v1.RelayerService/{method}"].roles == {"coordinator"}
