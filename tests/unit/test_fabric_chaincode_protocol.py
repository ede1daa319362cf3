"""The Fabric bridge chaincode's pure protocol (contracts/fabric/kstb_chaincode/protocol.py).

Two Fabric endpoints (``fabric-a``, ``fabric-b``) run over in-memory key-value stores; the
committee, identities and holders are generated at run time. Every rejection the EVM
contract tests check (tests/integration/test_evm_contracts.py) is mirrored here: the error
name, its detail, and that neither store nor the event stream changed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import pytest

from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import SECP256K1_N
from bridge.domain.committee import recover_signer as domain_recover
from bridge.domain.errors import InvalidCertificate
from bridge.domain.hashing import keccak256
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms

_FABRIC = Path(__file__).resolve().parents[2] / "contracts" / "fabric"
if str(_FABRIC) not in sys.path:
    sys.path.insert(0, str(_FABRIC))

from kstb_chaincode import protocol as p  # noqa: E402

pytestmark = pytest.mark.unit

ISIN = SecurityId("KR7005930003")
OTHER_ISIN = SecurityId("US0378331005")
EPOCH = 1
CHANNEL = "bridge"
OUT_NONE, LOCKED, BURNED, RELEASED = 0, 1, 2, 3
IN_NONE, PREPARED, REJECTED, EXPIRED, MINTED, ABORTED = 0, 1, 2, 3, 4, 5


def identity(msp: str) -> str:
    return p.identity_of(msp, b"-----BEGIN CERTIFICATE-----\n" + secrets.token_bytes(48))


def account() -> str:
    return "0x" + secrets.token_hex(20)


def word_of(holder: str) -> bytes:
    return bytes(12) + bytes.fromhex(holder[2:])


def governance(issuer: str = "Org1MSP", orgs: Sequence[str] = ("Org1MSP",), quorum: int = 1) -> str:
    """The Init governance argument: the issuer organisation, the admin organisations, k."""
    return json.dumps({"issuer": issuer, "admin_orgs": list(orgs), "quorum": quorum})


GOV = governance()
"""Org1 is the issuer and the only admin organisation (k = 1): the tests not about k-of-n."""

# Identities whose certificates carry the NodeOU "admin" role (organisation admins).
ORG_ADMINS: set[str] = set()


@dataclass
class Ledger:
    """One chaincode instance: its store, configuration and the events it emitted."""

    name: str
    chaincode: str
    channel: str = CHANNEL
    store: p.MemoryStore = field(default_factory=p.MemoryStore)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pin: str | None = "auto"
    """The server's pinned Init digest; "auto": whatever Init is called with (the tests that
    are not about pinning)."""
    now: int | None = 1_900_000_000
    """The proposals' timestamp (the chaincode's ledger time); None: a proposal without one."""

    @property
    def network(self) -> bytes:
        """This ledger's network word (a stand-in for its channel's genesis block hash)."""
        return hashlib.sha256(f"genesis:{self.name}:{self.channel}".encode()).digest()

    @property
    def network_hex(self) -> str:
        return "0x" + self.network.hex()

    @property
    def word(self) -> bytes:
        return LedgerId(self.name).word

    @property
    def bridge(self) -> bytes:
        """keccak256("fabric:<channel>:<chaincode>"), computed with bridge.domain's keccak."""
        return keccak256(f"fabric:{self.channel}:{self.chaincode}".encode())

    def call(self, caller: str, fn: str, *args: str) -> Any:
        roles = frozenset({"admin"}) if caller in ORG_ADMINS else frozenset({"client"})
        pin = self.pin
        if pin == "auto":
            pin = p.init_parameters_digest(list(args)) if fn == "Init" else None
        ctx = p.Context(
            caller=caller,
            channel_id=self.channel,
            chaincode_name=self.chaincode,
            caller_roles=roles,
            init_pin=pin,
            tx_time=self.now,
        )
        out = p.execute(
            self.store,
            ctx,
            fn,
            list(args),
            lambda name, payload: self.events.append((name, json.loads(payload))),
        )
        assert out == p.canonical_json(json.loads(out))
        return json.loads(out)


@dataclass
class Env:
    admin: str
    relayer: str
    stranger: str
    signers: list[LocalKeySigner]
    outsider: LocalKeySigner
    a: Ledger
    b: Ledger
    alice: str  # eligible holder on A
    bob: str  # eligible on B
    carol: str  # not eligible on B
    dave: str  # eligible but frozen on B

    def ledgers(self) -> Sequence[Ledger]:
        return (self.a, self.b)


def committee_json(
    signers: Sequence[LocalKeySigner], threshold: int = 3, epoch: int = EPOCH
) -> str:
    return json.dumps(
        {
            "epoch": epoch,
            "threshold": threshold,
            "members": ["0x" + s.address.hex() for s in signers],
        }
    )


@pytest.fixture
def env() -> Env:
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    admin, relayer, stranger = identity("Org1MSP"), identity("Org2MSP"), identity("Org1MSP")
    ORG_ADMINS.add(admin)
    e = Env(
        admin=admin,
        relayer=relayer,
        stranger=stranger,
        signers=signers,
        outsider=LocalKeySigner(secrets.token_bytes(32)),
        a=Ledger("fabric-a", "kstb"),
        b=Ledger("fabric-b", "kstb"),
        alice=account(),
        bob=account(),
        carol=account(),
        dave=account(),
    )
    for led in e.ledgers():
        led.call(
            admin, "Init", led.name, led.chaincode, committee_json(signers), led.network_hex, GOV
        )
        led.call(admin, "SetRelayer", relayer, "true")
        led.call(admin, "SetInstructor", "0x" + BROKER.address.hex(), "true")
        led.call(admin, "RegisterSecurity", ISIN.isin)
    e.a.call(admin, "SetEligible", ISIN.isin, e.alice, "true")
    e.a.call(admin, "Issue", ISIN.isin, e.alice, "10000")
    e.b.call(admin, "SetEligible", ISIN.isin, e.bob, "true")
    e.b.call(admin, "SetEligible", ISIN.isin, e.dave, "true")
    e.b.call(admin, "SetFrozen", ISIN.isin, e.dave, "true")
    for led in e.ledgers():
        assert led.events == []  # administration emits no leg events
    return e


# --------------------------------------------------------------------------- helpers


def make_terms(
    env: Env,
    *,
    amount: int = 10,
    recipient: bytes | None = None,
    sender: bytes | None = None,
    src: Ledger | None = None,
    dst: Ledger | None = None,
    security: bytes = ISIN.word,
) -> TransferTerms:
    src = src or env.a
    dst = dst or env.b
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=security,
        amount=amount,
        src_ledger=src.word,
        src_bridge=src.bridge,
        dst_ledger=dst.word,
        dst_bridge=dst.bridge,
        sender=sender if sender is not None else word_of(env.alice),
        recipient=recipient if recipient is not None else word_of(env.bob),
        instructor=bytes(12) + BROKER.address,
        deadline=2_000_000_000,
    )


def tj(t: TransferTerms, **override: Any) -> str:
    """The terms JSON argument."""
    obj: dict[str, Any] = {
        f.name: ("0x" + getattr(t, f.name).hex())
        if isinstance(getattr(t, f.name), bytes)
        else getattr(t, f.name)
        for f in fields(t)
    }
    obj["amount"] = str(t.amount)
    obj.update(override)
    return json.dumps(obj)


def sign(
    signers: Sequence[LocalKeySigner],
    on: Ledger,
    kind: ClaimKind,
    t: TransferTerms,
    epoch: int = EPOCH,
    *,
    ledger_word: bytes | None = None,
    bridge: bytes | None = None,
    network: bytes | None = None,
) -> list[bytes]:
    domain = ClaimDomain(ledger_word or on.word, bridge or on.bridge, epoch, network or on.network)
    digest = claim_digest(domain, Claim(kind, t.transfer_id, t.terms_hash))
    return [s.sign_digest(digest) for s in signers]


def cj(epoch: int, sigs: Sequence[bytes]) -> str:
    return json.dumps({"epoch": epoch, "signatures": ["0x" + s.hex() for s in sigs]})


def cert(
    env: Env,
    on: Ledger,
    kind: ClaimKind,
    t: TransferTerms,
    *,
    signers: Sequence[LocalKeySigner] | None = None,
    epoch: int = EPOCH,
) -> str:
    """A valid 3-of-4 ascending certificate for ``on``'s endpoint."""
    chosen = signers if signers is not None else env.signers[1:]
    return cj(epoch, sign(chosen, on, kind, t, epoch))


def snapshot(env: Env) -> Any:
    return [(dict(led.store.data), len(led.events)) for led in env.ledgers()]


def rejects(env: Env, on: Ledger, error: str, caller: str, fn: str, *args: str) -> str:
    """Assert the call fails with ``error`` and changes nothing; return the detail."""
    before = snapshot(env)
    with pytest.raises(p.ChaincodeError) as info:
        on.call(caller, fn, *args)
    assert info.value.name == error, str(info.value)
    assert str(info.value).startswith(f"{error}: ")
    assert snapshot(env) == before
    return info.value.detail


BROKER = LocalKeySigner(bytes([0x42]) * 32)
"""The brokerage instruction key of the tests' transfers (their ``instructor``)."""


def ins(on: Ledger, terms_json: str, signer: LocalKeySigner = BROKER) -> tuple[str, str]:
    """``Lock``'s arguments: the terms JSON and ``signer``'s instruction for exactly the
    terms it parses to on ``on``'s network ("0x" when it does not parse)."""
    try:
        t = p.parse_terms(terms_json)
    except p.ChaincodeError:
        return terms_json, "0x"
    digest = p.instruction_digest(on.network, t.terms_hash)
    return terms_json, "0x" + signer.sign_digest(digest).hex()


def lock(env: Env, t: TransferTerms) -> Any:
    return env.a.call(env.relayer, "Lock", *ins(env.a, tj(t)))


def prepare(env: Env, t: TransferTerms) -> Any:
    return env.b.call(env.relayer, "Prepare", tj(t), cert(env, env.b, ClaimKind.LOCKED, t))


def finish(env: Env, on: Ledger, kind: ClaimKind, t: TransferTerms) -> Any:
    fn = "Commit" if kind is ClaimKind.COMMIT else "Abort"
    return on.call(env.relayer, fn, tj(t), cert(env, on, kind, t))


def out_leg(env: Env, t: TransferTerms, on: Ledger | None = None) -> Any:
    return (on or env.a).call(env.stranger, "GetLeg", "0x" + t.transfer_id.hex(), "outbound")


def in_leg(env: Env, t: TransferTerms, on: Ledger | None = None) -> Any:
    return (on or env.b).call(env.stranger, "GetLeg", "0x" + t.transfer_id.hex(), "inbound")


def leg(state: int, t: TransferTerms, reason: int = 0, amount: int | None = None) -> Any:
    return {
        "state": state,
        "terms_hash": "0x" + t.terms_hash.hex(),
        "amount": str(t.amount if amount is None else amount),
        "security": "0x" + t.security.hex(),
        "reason": reason,
    }


def balance(on: Ledger, holder: str) -> int:
    return int(on.call(holder, "HolderStatus", ISIN.isin, holder)["balance"])


def supply(on: Ledger) -> dict[str, int]:
    return {k: int(v) for k, v in on.call("x:y", "Supply", ISIN.isin).items()}


def locked(env: Env, **kw: Any) -> TransferTerms:
    t = make_terms(env, **kw)
    lock(env, t)
    assert out_leg(env, t)["state"] == LOCKED
    return t


def prepared(env: Env, **kw: Any) -> TransferTerms:
    t = locked(env, **kw)
    prepare(env, t)
    assert in_leg(env, t)["state"] == PREPARED
    return t


# --------------------------------------------------------------------------- digests


def random_terms(rnd: secrets.SystemRandom) -> TransferTerms:
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=secrets.token_bytes(32),
        amount=rnd.randrange(1, 2**256),
        src_ledger=secrets.token_bytes(32),
        src_bridge=secrets.token_bytes(32),
        dst_ledger=secrets.token_bytes(32),
        dst_bridge=secrets.token_bytes(32),
        sender=secrets.token_bytes(32),
        recipient=secrets.token_bytes(32),
        instructor=b"\0" * 12 + b"\x1e" * 20,
        deadline=rnd.choice([0, 2**64 - 1, rnd.randrange(0, 2**64)]),
    )


def test_digests_are_byte_identical_to_bridge_domain() -> None:
    rnd = secrets.SystemRandom()
    for _ in range(64):
        t = random_terms(rnd)
        parsed = p.parse_terms(tj(t))
        assert parsed.transfer_id == t.transfer_id
        assert parsed.terms_hash == t.terms_hash
        assert p.transfer_id(t.src_ledger, t.src_bridge, t.sender, t.instructor, t.nonce) == (
            t.transfer_id
        )
        assert json.loads(tj(t)) == p.terms_to_json(parsed)  # the canonical form round-trips
        ledger, bridge, net = (secrets.token_bytes(32) for _ in range(3))
        epoch = rnd.choice([0, 1, 2**64 - 1, rnd.randrange(0, 2**64)])
        for kind in ClaimKind:
            expected = claim_digest(
                ClaimDomain(ledger, bridge, epoch, net), Claim(kind, t.transfer_id, t.terms_hash)
            )
            assert (
                p.claim_digest(net, ledger, bridge, epoch, int(kind), t.transfer_id, t.terms_hash)
                == expected
            )


def test_identifiers_match_bridge_domain() -> None:
    for name in ("fabric-a", "brokerage-b", "x", "a" * 63):
        assert p.ledger_word(name) == LedgerId(name).word
    for isin in ("KR7005930003", "US0378331005"):
        assert p.security_word(isin) == SecurityId(isin).word
    with pytest.raises(p.ChaincodeError, match="InvalidArgument"):
        p.security_word("KR7005930004")  # bad check digit
    assert p.bridge_word("bridge", "kstb") == p.keccak256(b"fabric:bridge:kstb")
    assert p.parse_holder("0x" + "AB" * 20) == bytes([0xAB]) * 20


def test_signature_recovery_matches_bridge_domain() -> None:
    signer = LocalKeySigner(secrets.token_bytes(32))
    for _ in range(16):
        digest = secrets.token_bytes(32)
        sig = signer.sign_digest(digest)
        assert p.recover_signer(digest, sig) == domain_recover(digest, sig) == signer.address
        high = sig[:32] + (SECP256K1_N - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
        twin = high + bytes([55 - sig[64]])
        assert p.recover_signer(digest, twin) is None
        with pytest.raises(InvalidCertificate):
            domain_recover(digest, twin)
    for bad in (b"", sig[:64], sig + b"\0", sig[:64] + b"\x1d", bytes(64) + b"\x1b"):
        assert p.recover_signer(digest, bad) is None


def test_the_endpoint_reports_its_digests(env: Env) -> None:
    t = make_terms(env)
    got = env.b.call(env.stranger, "Digests", tj(t))
    assert got == {
        "transfer_id": "0x" + t.transfer_id.hex(),
        "terms_hash": "0x" + t.terms_hash.hex(),
    }
    for kind in ClaimKind:
        out = env.b.call(
            env.stranger,
            "ClaimDigest",
            "7",
            str(int(kind)),
            "0x" + t.transfer_id.hex(),
            "0x" + t.terms_hash.hex(),
        )
        domain = ClaimDomain(env.b.word, env.b.bridge, 7, env.b.network)
        expected = claim_digest(domain, Claim(kind, t.transfer_id, t.terms_hash))
        assert out == {"digest": "0x" + expected.hex()}


# --------------------------------------------------------------------------- configuration


def test_info_committee_and_whoami(env: Env) -> None:
    info = env.a.call(env.stranger, "Info")
    assert info == {
        "ledger_word": "0x" + LedgerId("fabric-a").word.hex(),
        "bridge_word": "0x" + p.keccak256(b"fabric:bridge:kstb").hex(),
        "ledger_name": "fabric-a",
        "chaincode_name": "kstb",
        "channel_id": CHANNEL,
        "governance": {"issuer": "Org1MSP", "admin_orgs": ["Org1MSP"], "quorum": 1, "seq": 2},
        "network_word": env.a.network_hex,
    }
    assert env.a.call(env.stranger, "Committee") == json.loads(committee_json(env.signers))
    assert env.a.call(env.relayer, "WhoAmI") == {"identity": env.relayer}
    assert env.a.call(env.stranger, "IsRelayer", env.relayer)["relayer"] is True
    assert env.a.call(env.stranger, "IsRelayer", env.stranger)["relayer"] is False


def test_init_only_once_and_only_with_a_sound_committee(env: Env) -> None:
    rejects(
        env,
        env.a,
        "AlreadyInitialized",
        env.stranger,
        "Init",
        "fabric-a",
        "kstb",
        committee_json(env.signers),
        env.a.network_hex,
        GOV,
    )
    s = env.signers
    bad_committees = [
        committee_json(s, threshold=2),  # 2t <= n
        committee_json(s, threshold=0),
        committee_json(s, threshold=5),  # t > n
        committee_json(s, epoch=0),
        committee_json([s[1], s[0], s[2], s[3]]),  # not ascending
        committee_json([s[0], s[0], s[1], s[2]]),  # duplicate
        json.dumps({"epoch": 1, "threshold": 1, "members": ["0x" + "00" * 20]}),  # zero
        json.dumps({"epoch": 1, "threshold": 1, "members": []}),
        json.dumps({"epoch": 1, "threshold": 1}),
        "[]",
    ]
    for committee in bad_committees:
        fresh = Ledger("fabric-c", "kstb")
        with pytest.raises(p.ChaincodeError) as info:
            fresh.call(env.admin, "Init", "fabric-c", "kstb", committee, fresh.network_hex, GOV)
        assert info.value.name == "InvalidCommittee", committee
        assert fresh.store.data == {}
    fresh = Ledger("fabric-c", "kstb")
    for args in (("Fabric-C", "kstb"), ("fabric-c", "bad name"), ("fabric-c", "other")):
        with pytest.raises(p.ChaincodeError, match=r"^InvalidArgument: "):
            fresh.call(env.admin, "Init", *args, committee_json(s), fresh.network_hex, GOV)
    for fn, args in (("Info", ()), ("Lock", ("{}", "0x")), ("Supply", (ISIN.isin,))):
        with pytest.raises(p.ChaincodeError, match=r"^NotInitialized: "):
            fresh.call(env.admin, fn, *args)
    assert fresh.store.data == {}


def test_unknown_function_and_wrong_arity(env: Env) -> None:
    rejects(env, env.a, "UnknownFunction", env.admin, "lock", "{}", "0x")
    rejects(env, env.a, "InvalidArgument", env.admin, "Issue", ISIN.isin, env.alice)
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", "not json", "0x")
    t = make_terms(env)
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t, extra=1)))
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t, amount=5)))
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t, amount="-5")))
    rejects(
        env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t, amount=str(2**256)))
    )
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t, deadline=2**64)))
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t, nonce="0x12")))


# --------------------------------------------------------------------------- happy paths


def test_commit_path_moves_units_from_a_to_b(env: Env) -> None:
    alice0, bob0 = balance(env.a, env.alice), balance(env.b, env.bob)
    sup_a0, sup_b0 = supply(env.a), supply(env.b)
    t = make_terms(env, amount=25)
    tid = "0x" + t.transfer_id.hex()

    assert lock(env, t) == {"transfer_id": tid, **leg(LOCKED, t)}
    assert out_leg(env, t) == leg(LOCKED, t)
    assert balance(env.a, env.alice) == alice0 - 25
    assert supply(env.a) == {**sup_a0, "escrowed": sup_a0["escrowed"] + 25}
    assert env.a.events == [
        (
            "LegStateChanged",
            {"transfer_id": tid, "leg": 0, **leg(LOCKED, t), "terms": json.loads(tj(t))},
        )
    ]

    prepare(env, t)
    assert in_leg(env, t) == leg(PREPARED, t)
    assert supply(env.b) == {**sup_b0, "prepared": sup_b0["prepared"] + 25}
    assert balance(env.b, env.bob) == bob0  # prepared, not spendable

    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    assert out_leg(env, t)["state"] == BURNED
    assert in_leg(env, t)["state"] == MINTED
    assert balance(env.a, env.alice) == alice0 - 25
    assert balance(env.b, env.bob) == bob0 + 25
    assert supply(env.a) == {
        **sup_a0,
        "total_supply": sup_a0["total_supply"] - 25,
        "burned_out": sup_a0["burned_out"] + 25,
    }
    assert supply(env.b) == {
        **sup_b0,
        "total_supply": sup_b0["total_supply"] + 25,
        "minted_in": sup_b0["minted_in"] + 25,
    }
    # exactly one event per leg transaction, in order
    assert [(e["leg"], e["state"]) for _, e in env.a.events] == [(0, LOCKED), (0, BURNED)]
    assert [(e["leg"], e["state"]) for _, e in env.b.events] == [(1, PREPARED), (1, MINTED)]
    assert all("terms" not in e for _, e in env.a.events[1:] + env.b.events)
    assert env.b.events[-1] == ("LegStateChanged", {"transfer_id": tid, "leg": 1, **leg(4, t)})


def test_abort_path_releases_units_to_the_sender(env: Env) -> None:
    before = [(balance(env.a, env.alice), supply(env.a)), (balance(env.b, env.bob), supply(env.b))]
    t = prepared(env, amount=7)
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert out_leg(env, t) == leg(RELEASED, t)
    assert in_leg(env, t) == leg(ABORTED, t)
    after = [(balance(env.a, env.alice), supply(env.a)), (balance(env.b, env.bob), supply(env.b))]
    assert after == before
    assert [e["state"] for _, e in env.b.events] == [PREPARED, ABORTED]


def test_execution_is_deterministic(env: Env) -> None:
    """Two peers replaying the same calls end with byte-identical state and events."""
    twin = Ledger("fabric-a", "kstb")
    calls: list[tuple[str, str, tuple[str, ...]]] = []
    recorded = Ledger("fabric-a", "kstb")
    original_call = recorded.call

    def record(caller: str, fn: str, *args: str) -> Any:
        calls.append((caller, fn, args))
        return original_call(caller, fn, *args)

    recorded.call = record  # type: ignore[method-assign]
    recorded.call(
        env.admin,
        "Init",
        "fabric-a",
        "kstb",
        committee_json(env.signers),
        recorded.network_hex,
        GOV,
    )
    recorded.call(env.admin, "SetRelayer", env.relayer, "true")
    recorded.call(env.admin, "SetInstructor", "0x" + BROKER.address.hex(), "true")
    recorded.call(env.admin, "RegisterSecurity", ISIN.isin)
    recorded.call(env.admin, "SetEligible", ISIN.isin, env.alice, "true")
    recorded.call(env.admin, "Issue", ISIN.isin, env.alice, str(2**200))
    t = make_terms(env, amount=2**199)
    recorded.call(env.relayer, "Lock", *ins(env.a, tj(t)))
    for caller, fn, args in calls:
        twin.call(caller, fn, *args)
    assert twin.store.data == recorded.store.data
    assert twin.events == recorded.events


# --------------------------------------------------------------------------- certificates


def _prepare_rejects(env: Env, t: TransferTerms, certificate: str, error: str) -> str:
    return rejects(env, env.b, error, env.relayer, "Prepare", tj(t), certificate)


def test_corrupted_signature_recovers_a_stranger(env: Env) -> None:
    t = locked(env)
    bad = sign(env.signers[1:], env.b, ClaimKind.LOCKED, t)
    bad[0] = bad[0][:63] + bytes([bad[0][63] ^ 1]) + bad[0][64:]
    _prepare_rejects(env, t, cj(EPOCH, bad), "NotCommitteeMember")


def test_signature_with_bad_v_is_invalid(env: Env) -> None:
    t = locked(env)
    sigs = sign(env.signers[1:], env.b, ClaimKind.LOCKED, t)
    sigs[1] = sigs[1][:64] + bytes([29])
    assert _prepare_rejects(env, t, cj(EPOCH, sigs), "InvalidSignature") == "index=1"


def test_too_few_signatures(env: Env) -> None:
    t = locked(env)
    c = cert(env, env.b, ClaimKind.LOCKED, t, signers=env.signers[:2])
    assert _prepare_rejects(env, t, c, "TooFewSignatures") == "got=2, threshold=3"


def test_duplicate_signer(env: Env) -> None:
    t = locked(env)
    s = env.signers
    c = cert(env, env.b, ClaimKind.LOCKED, t, signers=[s[0], s[0], s[1]])
    assert _prepare_rejects(env, t, c, "SignersNotAscending") == "index=1"


def test_signers_not_ascending(env: Env) -> None:
    t = locked(env)
    s = env.signers
    c = cert(env, env.b, ClaimKind.LOCKED, t, signers=[s[0], s[2], s[1]])
    assert _prepare_rejects(env, t, c, "SignersNotAscending") == "index=2"


def test_non_member_signer(env: Env) -> None:
    t = locked(env)
    signers = sorted([*env.signers[:2], env.outsider], key=lambda s: s.address)
    c = cert(env, env.b, ClaimKind.LOCKED, t, signers=signers)
    detail = _prepare_rejects(env, t, c, "NotCommitteeMember")
    assert detail == "signer=0x" + env.outsider.address.hex()


def test_wrong_epoch(env: Env) -> None:
    t = locked(env)
    c = cert(env, env.b, ClaimKind.LOCKED, t, epoch=EPOCH + 1)
    assert _prepare_rejects(env, t, c, "WrongEpoch") == f"got={EPOCH + 1}, current={EPOCH}"


def test_high_s_signature_is_refused(env: Env) -> None:
    t = locked(env)
    sigs = sign(env.signers[1:], env.b, ClaimKind.LOCKED, t)
    r, s, v = sigs[0][:32], int.from_bytes(sigs[0][32:64], "big"), sigs[0][64]
    sigs[0] = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    assert _prepare_rejects(env, t, cj(EPOCH, sigs), "InvalidSignature") == "index=0"


def test_malformed_signatures(env: Env) -> None:
    t = locked(env)
    sigs = sign(env.signers[1:], env.b, ClaimKind.LOCKED, t)
    long_last = [*sigs[:2], sigs[2] + b"\0"]
    assert _prepare_rejects(env, t, cj(EPOCH, long_last), "InvalidSignature") == "index=2"
    for signatures in ("0x" + b"".join(sigs).hex(), ["zz"], ["0x1"], [1, 2, 3]):
        c = json.dumps({"epoch": EPOCH, "signatures": signatures})
        _prepare_rejects(env, t, c, "MalformedSignatures")
    # the epoch is checked first, as on the EVM
    c = json.dumps({"epoch": EPOCH + 1, "signatures": "nope"})
    _prepare_rejects(env, t, c, "WrongEpoch")
    for c in ("{}", "[]", json.dumps({"epoch": "1", "signatures": []}), "x"):
        _prepare_rejects(env, t, c, "InvalidArgument")


def test_claim_signed_for_another_ledger(env: Env) -> None:
    t = locked(env)
    # A LOCKED certificate valid on ledger A, replayed to B.
    _prepare_rejects(env, t, cert(env, env.a, ClaimKind.LOCKED, t), "NotCommitteeMember")


def test_claim_signed_for_another_chaincode_or_channel(env: Env) -> None:
    t = locked(env)
    for channel, chaincode in (("bridge", "kstb2"), ("other", "kstb")):
        twin = Ledger("fabric-b", chaincode, channel=channel)
        sigs = sign(env.signers[1:], env.b, ClaimKind.LOCKED, t, bridge=twin.bridge)
        _prepare_rejects(env, t, cj(EPOCH, sigs), "NotCommitteeMember")


def test_claim_replayed_on_a_twin_endpoint_of_the_same_ledger(env: Env) -> None:
    """A twin chaincode (same ledger name, other chaincode name) refuses B's terms outright."""
    twin = Ledger("fabric-b", "kstb2")
    twin.call(
        env.admin,
        "Init",
        "fabric-b",
        "kstb2",
        committee_json(env.signers),
        twin.network_hex,
        GOV,
    )
    twin.call(env.admin, "SetRelayer", env.relayer, "true")
    t = locked(env)
    with pytest.raises(p.ChaincodeError, match=r"^WrongLedger: "):
        twin.call(env.relayer, "Prepare", tj(t), cert(env, env.b, ClaimKind.LOCKED, t))
    # Terms that do name the twin, with B's certificate: the digest differs.
    t2 = make_terms(env, dst=twin)
    with pytest.raises(p.ChaincodeError, match=r"^NotCommitteeMember: "):
        twin.call(env.relayer, "Prepare", tj(t2), cert(env, env.b, ClaimKind.LOCKED, t2))


def test_locked_certificate_used_as_commit(env: Env) -> None:
    t = locked(env)
    rejects(
        env,
        env.a,
        "NotCommitteeMember",
        env.relayer,
        "Commit",
        tj(t),
        cert(env, env.a, ClaimKind.LOCKED, t),
    )
    t2 = prepared(env)
    rejects(
        env,
        env.b,
        "NotCommitteeMember",
        env.relayer,
        "Commit",
        tj(t2),
        cert(env, env.b, ClaimKind.ABORT, t2),
    )


# --------------------------------------------------------------------------- replays and states


def test_replayed_commit_and_prepare(env: Env) -> None:
    t = prepared(env)
    c = cert(env, env.b, ClaimKind.LOCKED, t)
    detail = rejects(env, env.b, "BadState", env.relayer, "Prepare", tj(t), c)
    assert detail == f"transferId=0x{t.transfer_id.hex()}, state={PREPARED}"
    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    for on, state in ((env.a, BURNED), (env.b, MINTED)):
        c = cert(env, on, ClaimKind.COMMIT, t)
        detail = rejects(env, on, "BadState", env.relayer, "Commit", tj(t), c)
        assert detail.endswith(f"state={state}")


def test_lock_twice_is_refused(env: Env) -> None:
    t = locked(env)
    detail = rejects(env, env.a, "TransferExists", env.relayer, "Lock", *ins(env.a, tj(t)))
    assert detail == f"transferId=0x{t.transfer_id.hex()}"


def test_mint_without_lock_or_prepare(env: Env) -> None:
    t = make_terms(env)
    c = cert(env, env.b, ClaimKind.COMMIT, t)
    assert rejects(env, env.b, "BadState", env.relayer, "Commit", tj(t), c).endswith("state=0")
    c = cert(env, env.a, ClaimKind.COMMIT, t)  # burn without lock
    assert rejects(env, env.a, "BadState", env.relayer, "Commit", tj(t), c).endswith("state=0")


def test_release_after_burn_and_abort_after_mint(env: Env) -> None:
    t = prepared(env)
    finish(env, env.b, ClaimKind.COMMIT, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    for on, state in ((env.a, BURNED), (env.b, MINTED)):
        c = cert(env, on, ClaimKind.ABORT, t)
        detail = rejects(env, on, "BadState", env.relayer, "Abort", tj(t), c)
        assert detail.endswith(f"state={state}")


def test_commit_after_abort_is_refused(env: Env) -> None:
    t = prepared(env)
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    for on, state in ((env.a, RELEASED), (env.b, ABORTED)):
        c = cert(env, on, ClaimKind.COMMIT, t)
        detail = rejects(env, on, "BadState", env.relayer, "Commit", tj(t), c)
        assert detail.endswith(f"state={state}")


def test_commit_with_different_terms_for_the_same_id(env: Env) -> None:
    t = locked(env, amount=5)
    forged = TransferTerms(**{**{f.name: getattr(t, f.name) for f in fields(t)}, "amount": 500})
    assert forged.transfer_id == t.transfer_id
    c = cert(env, env.a, ClaimKind.COMMIT, forged)
    rejects(env, env.a, "TermsMismatch", env.relayer, "Commit", tj(forged), c)
    t2 = prepared(env, amount=5)
    forged2 = TransferTerms(**{**{f.name: getattr(t2, f.name) for f in fields(t2)}, "amount": 6})
    for kind, fn in ((ClaimKind.COMMIT, "Commit"), (ClaimKind.ABORT, "Abort")):
        c = cert(env, env.b, kind, forged2)
        rejects(env, env.b, "TermsMismatch", env.relayer, fn, tj(forged2), c)


def test_abort_before_prepare_leaves_a_tombstone(env: Env) -> None:
    t = locked(env)
    finish(env, env.b, ClaimKind.ABORT, t)
    assert in_leg(env, t) == leg(ABORTED, t)
    c = cert(env, env.b, ClaimKind.LOCKED, t)
    detail = rejects(env, env.b, "BadState", env.relayer, "Prepare", tj(t), c)
    assert detail.endswith(f"state={ABORTED}")
    finish(env, env.a, ClaimKind.ABORT, t)
    assert out_leg(env, t)["state"] == RELEASED


@pytest.mark.governance
def test_mark_expired_needs_the_deadline_passed_and_loses_or_wins_by_order(env: Env) -> None:
    t = locked(env)
    c = cert(env, env.b, ClaimKind.LOCKED, t)
    # Review finding 8: the ledger time (proposal timestamp) must be past the deadline.
    env.b.now = t.deadline
    detail = rejects(env, env.b, "NotExpired", env.relayer, "MarkExpired", tj(t), c)
    assert detail == f"deadline={t.deadline}, nowTs={t.deadline}"
    env.b.now = t.deadline + 1
    env.b.call(env.relayer, "MarkExpired", tj(t), c)
    assert in_leg(env, t) == leg(EXPIRED, t)
    assert env.b.events[-1][1]["state"] == EXPIRED
    assert rejects(env, env.b, "BadState", env.relayer, "Prepare", tj(t), c).endswith("state=3")
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert (out_leg(env, t)["state"], in_leg(env, t)["state"]) == (RELEASED, ABORTED)

    t2 = prepared(env)  # prepared first: the marker loses
    c2 = cert(env, env.b, ClaimKind.LOCKED, t2)
    rejects(env, env.b, "BadState", env.relayer, "MarkExpired", tj(t2), c2)
    t3 = locked(env)  # the marker needs a LOCKED certificate
    c3 = cert(env, env.b, ClaimKind.COMMIT, t3)
    rejects(env, env.b, "NotCommitteeMember", env.relayer, "MarkExpired", tj(t3), c3)


# --------------------------------------------------------------------------- compliance


def _rejected_then_aborted(env: Env, t: TransferTerms, reason: int) -> None:
    sup_b, alice = supply(env.b), balance(env.a, env.alice)
    prepare(env, t)
    assert in_leg(env, t) == leg(REJECTED, t, reason=reason)
    assert env.b.events[-1][1]["reason"] == reason
    assert supply(env.b) == sup_b  # a rejection prepares nothing
    finish(env, env.b, ClaimKind.ABORT, t)
    finish(env, env.a, ClaimKind.ABORT, t)
    assert in_leg(env, t) == leg(ABORTED, t, reason=reason)
    assert out_leg(env, t)["state"] == RELEASED
    assert balance(env.a, env.alice) == alice + t.amount


def test_ineligible_recipient_is_rejected_and_the_abort_releases(env: Env) -> None:
    _rejected_then_aborted(env, locked(env, recipient=word_of(env.carol)), reason=2)


def test_frozen_recipient_is_rejected(env: Env) -> None:
    _rejected_then_aborted(env, locked(env, recipient=word_of(env.dave)), reason=3)


def test_recipient_that_is_not_an_account_is_rejected(env: Env) -> None:
    _rejected_then_aborted(env, locked(env, recipient=b"\x01" * 32), reason=5)
    _rejected_then_aborted(env, locked(env, recipient=bytes(32)), reason=5)


def test_unknown_security_on_the_target_is_rejected(env: Env) -> None:
    env.a.call(env.admin, "RegisterSecurity", OTHER_ISIN.isin)
    env.a.call(env.admin, "SetEligible", OTHER_ISIN.isin, env.alice, "true")
    env.a.call(env.admin, "Issue", OTHER_ISIN.isin, env.alice, "100")
    t = make_terms(env, security=OTHER_ISIN.word)
    lock(env, t)
    prepare(env, t)
    assert in_leg(env, t) == leg(REJECTED, t, reason=1)


def test_paused_token(env: Env) -> None:
    t = make_terms(env)
    env.a.call(env.admin, "SetPaused", ISIN.isin, "true")
    detail = rejects(env, env.a, "TokenPaused", env.relayer, "Lock", *ins(env.a, tj(t)))
    assert detail == "securityId=0x" + ISIN.word.hex()
    rejects(env, env.a, "TokenPaused", env.admin, "Issue", ISIN.isin, env.alice, "1")
    env.a.call(env.admin, "SetPaused", ISIN.isin, "false")

    t = locked(env)
    env.b.call(env.admin, "SetPaused", ISIN.isin, "true")
    status = env.b.call(env.stranger, "HolderStatus", ISIN.isin, env.bob)
    assert (status["receive_status"], status["paused"]) == (4, True)
    _rejected_then_aborted(env, t, reason=4)


def test_frozen_or_ineligible_sender_cannot_lock(env: Env) -> None:
    t = make_terms(env)
    env.a.call(env.admin, "SetFrozen", ISIN.isin, env.alice, "true")
    detail = rejects(env, env.a, "HolderFrozen", env.relayer, "Lock", *ins(env.a, tj(t)))
    assert detail == f"holder={env.alice.lower()}"
    env.a.call(env.admin, "SetFrozen", ISIN.isin, env.alice, "false")
    env.a.call(env.admin, "SetEligible", ISIN.isin, env.alice, "false")
    rejects(env, env.a, "HolderNotEligible", env.relayer, "Lock", *ins(env.a, tj(t)))
    env.a.call(env.admin, "SetEligible", ISIN.isin, env.alice, "true")
    lock(env, t)


def test_lock_beyond_the_balance(env: Env) -> None:
    have = balance(env.a, env.alice)
    t = make_terms(env, amount=have + 1)
    detail = rejects(env, env.a, "InsufficientBalance", env.relayer, "Lock", *ins(env.a, tj(t)))
    assert detail == f"holder={env.alice}, balance={have}, needed={have + 1}"


# --------------------------------------------------------------------------- roles


def test_non_relayer_cannot_move_legs(env: Env) -> None:
    t = locked(env)
    calls = [
        (env.a, "Lock", ins(env.a, tj(make_terms(env)))),
        (env.b, "Prepare", (tj(t), cert(env, env.b, ClaimKind.LOCKED, t))),
        (env.b, "MarkExpired", (tj(t), cert(env, env.b, ClaimKind.LOCKED, t))),
        (env.a, "Commit", (tj(t), cert(env, env.a, ClaimKind.COMMIT, t))),
        (env.a, "Abort", (tj(t), cert(env, env.a, ClaimKind.ABORT, t))),
    ]
    for on, fn, args in calls:
        for caller in (env.stranger, env.admin):
            assert rejects(env, on, "NotRelayer", caller, fn, *args) == f"caller={caller}"
    # a disabled relayer is no relayer
    env.b.call(env.admin, "SetRelayer", env.relayer, "false")
    rejects(env, env.b, "NotRelayer", env.relayer, "Prepare", *calls[1][2])


def test_non_admin_cannot_administer(env: Env) -> None:
    for caller in (env.relayer, env.stranger):
        for fn, args in (
            ("SetRelayer", (caller, "true")),
            ("RegisterSecurity", (OTHER_ISIN.isin,)),
            ("SetEligible", (ISIN.isin, env.carol, "true")),
            ("SetFrozen", (ISIN.isin, env.alice, "true")),
            ("SetPaused", (ISIN.isin, "true")),
            ("Issue", (ISIN.isin, env.alice, "1")),
            ("Redeem", (ISIN.isin, env.alice, "1")),
        ):
            assert rejects(env, env.a, "NotAdmin", caller, fn, *args) == f"caller={caller}"


# --------------------------------------------------------------------------- lock checks


def test_lock_for_the_wrong_source_ledger(env: Env) -> None:
    # source ledger B with this endpoint's bridge word (same channel and chaincode name)
    wrong_ledger = make_terms(env, src=Ledger("fabric-b", "kstb"), dst=env.a)
    wrong_bridge = make_terms(env, src=Ledger("fabric-a", "kstb2"))
    for t in (wrong_ledger, wrong_bridge):
        rejects(env, env.a, "WrongLedger", env.relayer, "Lock", *ins(env.a, tj(t)))
    # the target may not be this ledger (TransferTerms itself refuses that, so build the JSON)
    t = make_terms(env)
    to_itself = tj(t, dst_ledger="0x" + env.a.word.hex(), dst_bridge="0x" + "22" * 32)
    rejects(env, env.a, "WrongLedger", env.relayer, "Lock", *ins(env.a, to_itself))
    # and legs addressed to neither side of this endpoint
    t = make_terms(env, src=Ledger("fabric-x", "kstb"), dst=Ledger("fabric-y", "kstb"))
    for fn, kind in (("Commit", ClaimKind.COMMIT), ("Abort", ClaimKind.ABORT)):
        rejects(env, env.a, "WrongLedger", env.relayer, fn, tj(t), cert(env, env.a, kind, t))
    rejects(
        env,
        env.a,
        "WrongLedger",
        env.relayer,
        "Prepare",
        tj(t),
        cert(env, env.a, ClaimKind.LOCKED, t),
    )


def test_lock_at_or_after_its_deadline_is_refused(env: Env) -> None:
    """As the EVM endpoint's ``DeadlinePassed``: an instruction authorises a lock only before
    the deadline its brokerage signed, by the ledger time (the proposal timestamp); at the
    deadline itself already refused, nothing escrowed; a second before, locked."""
    t = make_terms(env)
    alice0 = balance(env.a, env.alice)
    env.a.now = t.deadline
    with pytest.raises(p.ChaincodeError) as info:
        env.a.call(env.relayer, "Lock", *ins(env.a, tj(t)))
    assert (info.value.name, info.value.figures) == (
        "DeadlinePassed",
        {"deadline": t.deadline, "nowTs": t.deadline},
    )
    env.a.now = t.deadline + 1
    detail = rejects(env, env.a, "DeadlinePassed", env.relayer, "Lock", *ins(env.a, tj(t)))
    assert detail == f"deadline={t.deadline}, nowTs={t.deadline + 1}"
    assert out_leg(env, t)["state"] == OUT_NONE and balance(env.a, env.alice) == alice0
    env.a.now = None  # a proposal without a timestamp cannot show the deadline is ahead
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", *ins(env.a, tj(t)))
    env.a.now = t.deadline - 1
    env.a.call(env.relayer, "Lock", *ins(env.a, tj(t)))
    assert balance(env.a, env.alice) == alice0 - t.amount


def test_lock_of_zero_amount_or_unknown_security_or_invalid_sender(env: Env) -> None:
    t = make_terms(env)
    assert (
        rejects(env, env.a, "ZeroAmount", env.relayer, "Lock", *ins(env.a, tj(t, amount="0")))
        == "amount=0"
    )
    c = cert(env, env.b, ClaimKind.LOCKED, t)
    rejects(env, env.b, "ZeroAmount", env.relayer, "Prepare", tj(t, amount="0"), c)
    t = make_terms(env, security=OTHER_ISIN.word)
    rejects(env, env.a, "UnknownSecurity", env.relayer, "Lock", *ins(env.a, tj(t)))
    t = make_terms(env)
    for sender in ("0x" + "01" * 32, "0x" + "00" * 32):
        rejects(env, env.a, "InvalidSender", env.relayer, "Lock", *ins(env.a, tj(t, sender=sender)))


# --------------------------------------------------------------------------- token admin


def test_issue_redeem_and_holder_status(env: Env) -> None:
    a, admin = env.a, env.admin
    rejects(env, a, "HolderNotEligible", admin, "Issue", ISIN.isin, env.carol, "1")
    rejects(env, a, "ZeroAmount", admin, "Issue", ISIN.isin, env.alice, "0")
    rejects(env, a, "ZeroAddress", admin, "Issue", ISIN.isin, "0x" + "00" * 20, "1")
    rejects(env, a, "UnknownSecurity", admin, "Issue", OTHER_ISIN.isin, env.alice, "1")
    rejects(env, a, "InvalidArgument", admin, "Issue", "NOTANISIN", env.alice, "1")
    rejects(env, a, "InvalidArgument", admin, "Issue", ISIN.isin, "0x1234", "1")
    rejects(env, a, "InvalidArgument", admin, "SetFrozen", ISIN.isin, env.alice, "yes")
    rejects(env, a, "SecurityAlreadyRegistered", admin, "RegisterSecurity", ISIN.isin)
    rejects(env, a, "InvalidArgument", admin, "SetRelayer", "not-an-identity", "true")
    rejects(env, a, "Overflow", admin, "Issue", ISIN.isin, env.alice, str(2**256 - 1))
    have = balance(a, env.alice)
    detail = rejects(
        env, a, "InsufficientBalance", admin, "Redeem", ISIN.isin, env.alice, str(have + 1)
    )
    assert detail == f"holder={env.alice}, balance={have}, needed={have + 1}"

    upper = "0x" + env.alice[2:].upper()  # case-insensitive, printed lowercase
    status = a.call(admin, "Redeem", ISIN.isin, upper, "100")
    assert status == {
        "registered": True,
        "balance": str(have - 100),
        "receive_status": 0,
        "eligible": True,
        "frozen": False,
        "paused": False,
    }
    assert supply(a)["total_supply"] == have - 100
    assert a.call(env.stranger, "HolderStatus", OTHER_ISIN.isin, env.alice) == {
        "registered": False,
        "balance": "0",
        "receive_status": 1,
        "eligible": False,
        "frozen": False,
        "paused": False,
    }
    rejects(env, a, "UnknownSecurity", env.stranger, "Supply", OTHER_ISIN.isin)
    frozen = env.b.call(env.stranger, "HolderStatus", ISIN.isin, env.dave)
    assert (frozen["receive_status"], frozen["frozen"]) == (3, True)
    assert env.b.call(env.stranger, "HolderStatus", ISIN.isin, env.carol)["receive_status"] == 2
    assert a.events == []


class TracingStore(p.MemoryStore):
    """Records the keys each call reads and writes (Fabric's read/write sets)."""

    def __init__(self, data: dict[str, bytes]) -> None:
        super().__init__()
        self.data = data
        self.reads: set[str] = set()
        self.writes: set[str] = set()

    def get(self, key: str) -> bytes | None:
        self.reads.add(key)
        return super().get(key)

    def put(self, key: str, value: bytes) -> None:
        self.writes.add(key)
        super().put(key, value)

    def delete(self, key: str) -> None:
        self.writes.add(key)
        super().delete(key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        raise AssertionError("transactions must not range-read (phantom conflicts)")


def shard_of(word_hex: str) -> str:
    """The supply-counter shard a transaction picks from its first amount key (ADR 0024)."""
    return f"{int(word_hex[:2], 16) % p.TALLY_SHARDS:02x}"


def other_shard_account(*others: str) -> str:
    """A fresh holder whose counter shard differs from every one of ``others``' shards."""
    while True:
        a = account()
        if shard_of(a[2:]) not in {shard_of(o[2:]) for o in others}:
            return a


def other_shard_terms(env: Env, than: TransferTerms, **kwargs: Any) -> TransferTerms:
    """Terms (fresh nonce) whose transfer id's counter shard differs from ``than``'s."""
    while True:
        t = make_terms(env, **kwargs)
        if shard_of(t.transfer_id.hex()) != shard_of(than.transfer_id.hex()):
            return t


def test_leg_transactions_of_one_security_do_not_conflict(env: Env) -> None:
    """No hot keys: two transfers of different holders in one block would not MVCC-conflict
    (neither writes a key the other reads or writes) when their supply-counter shards
    differ (ADR 0024: a 1/TALLY_SHARDS chance that they do not)."""
    # a second sender on A, a second recipient on B
    erin, fred = other_shard_account(env.alice), account()
    env.a.call(env.admin, "SetEligible", ISIN.isin, erin, "true")
    env.a.call(env.admin, "Issue", ISIN.isin, erin, "50")
    env.b.call(env.admin, "SetEligible", ISIN.isin, fred, "true")
    t1 = make_terms(env)
    # the sender is part of the transfer id: the shard is drawn with it
    t2 = other_shard_terms(env, t1, recipient=word_of(fred), sender=word_of(erin))

    def traced(on: Ledger, fn: str, *args: str) -> TracingStore:
        store = TracingStore(on.store.data)
        ctx = p.Context(
            caller=env.relayer, channel_id=on.channel, chaincode_name=on.chaincode, tx_time=on.now
        )
        p.execute(store, ctx, fn, list(args), lambda *_: None)
        return store

    for step in (
        lambda t: traced(env.a, "Lock", *ins(env.a, tj(t))),
        lambda t: traced(env.b, "Prepare", tj(t), cert(env, env.b, ClaimKind.LOCKED, t)),
        lambda t: traced(env.b, "Commit", tj(t), cert(env, env.b, ClaimKind.COMMIT, t)),
        lambda t: traced(env.a, "Commit", tj(t), cert(env, env.a, ClaimKind.COMMIT, t)),
    ):
        s1, s2 = step(t1), step(t2)
        assert not s1.writes & (s2.reads | s2.writes)
        assert not s2.writes & (s1.reads | s1.writes)
    assert supply(env.a)["escrowed"] == 0 and supply(env.b)["prepared"] == 0


def test_only_an_organisation_admin_can_initialise(env: Env) -> None:
    """A channel member racing to call Init first must not become the endpoint's admin."""
    fresh = Ledger("fabric-z", "kstb")
    for who in (env.stranger, env.relayer):
        with pytest.raises(p.ChaincodeError) as exc:
            fresh.call(
                who,
                "Init",
                fresh.name,
                fresh.chaincode,
                committee_json(env.signers),
                fresh.network_hex,
                GOV,
            )
        assert exc.value.name == "NotAdmin"
    assert fresh.store.get("config") is None
    info = fresh.call(
        env.admin,
        "Init",
        fresh.name,
        fresh.chaincode,
        committee_json(env.signers),
        fresh.network_hex,
        GOV,
    )
    assert info["governance"]["issuer"] == "Org1MSP"


# --------------------------------------------------------------------------- supply counters


def net_issued(on: Ledger) -> int:
    """``total_supply + burned_out - minted_in``: what was issued here outside the bridge."""
    s = supply(on)
    return s["total_supply"] + s["burned_out"] - s["minted_in"]


def counters(on: Ledger) -> tuple[int, int]:
    s = supply(on)
    return s["burned_out"], s["minted_in"]


def test_supply_reports_cumulative_counters_as_decimal_strings(env: Env) -> None:
    raw = env.a.call(env.stranger, "Supply", ISIN.isin)
    assert raw == {
        "total_supply": "10000",
        "escrowed": "0",
        "prepared": "0",
        "burned_out": "0",
        "minted_in": "0",
    }
    detail = rejects(env, env.a, "UnknownSecurity", env.stranger, "Supply", OTHER_ISIN.isin)
    assert detail == "securityId=0x" + OTHER_ISIN.word.hex()
    rejects(env, env.a, "InvalidArgument", env.stranger, "Supply", "NOTANISIN")


def test_counters_move_exactly_with_each_commit(env: Env) -> None:
    assert (net_issued(env.a), net_issued(env.b)) == (10_000, 0)
    t = make_terms(env, amount=25)
    lock(env, t)
    assert counters(env.a) == (0, 0) and counters(env.b) == (0, 0)
    prepare(env, t)
    assert counters(env.a) == (0, 0) and counters(env.b) == (0, 0)
    finish(env, env.b, ClaimKind.COMMIT, t)  # the target may commit first
    assert counters(env.b) == (0, 25) and counters(env.a) == (0, 0)
    assert net_issued(env.b) == 0
    finish(env, env.a, ClaimKind.COMMIT, t)
    assert counters(env.a) == (25, 0) and counters(env.b) == (0, 25)
    assert (net_issued(env.a), net_issued(env.b)) == (10_000, 0)
    # one permanent entry per committed leg, keyed by the transfer
    sec, tid = ISIN.word.hex(), t.transfer_id.hex()
    assert env.a.store.get(f"burned/{sec}/{tid}") == b"25"
    assert env.b.store.get(f"minted/{sec}/{tid}") == b"25"
    # a replayed commit is refused and counts nothing twice
    rejects(
        env, env.a, "BadState", env.relayer, "Commit", tj(t), cert(env, env.a, ClaimKind.COMMIT, t)
    )
    rejects(
        env, env.b, "BadState", env.relayer, "Commit", tj(t), cert(env, env.b, ClaimKind.COMMIT, t)
    )

    # A second transfer sums with the first; the way back B -> A counts on the other side.
    t2 = make_terms(env, amount=7)
    lock(env, t2)
    prepare(env, t2)
    finish(env, env.a, ClaimKind.COMMIT, t2)
    finish(env, env.b, ClaimKind.COMMIT, t2)
    assert counters(env.a) == (32, 0) and counters(env.b) == (0, 32)
    back = dataclass_replace(
        make_terms(env, amount=4, src=env.b, dst=env.a, recipient=word_of(env.alice)),
        sender=word_of(env.bob),
    )
    env.b.call(env.relayer, "Lock", *ins(env.b, tj(back)))
    env.a.call(env.relayer, "Prepare", tj(back), cert(env, env.a, ClaimKind.LOCKED, back))
    finish(env, env.b, ClaimKind.COMMIT, back)
    finish(env, env.a, ClaimKind.COMMIT, back)
    assert counters(env.a) == (32, 4) and counters(env.b) == (4, 32)
    assert (net_issued(env.a), net_issued(env.b)) == (10_000, 0)
    in_transit = sum(
        s["escrowed"] + s["burned_out"] - s["minted_in"] for s in (supply(env.a), supply(env.b))
    )
    assert in_transit == 0  # every transfer finished on both sides


def test_counters_do_not_move_on_abort_release_reject_or_expiry(env: Env) -> None:
    before = (supply(env.a), supply(env.b))
    aborted = prepared(env, amount=7)  # Prepared -> Aborted, Locked -> Released
    finish(env, env.b, ClaimKind.ABORT, aborted)
    finish(env, env.a, ClaimKind.ABORT, aborted)
    rejected = locked(env, recipient=word_of(env.carol), amount=3)  # Rejected -> Aborted
    prepare(env, rejected)
    assert in_leg(env, rejected)["state"] == REJECTED
    finish(env, env.b, ClaimKind.ABORT, rejected)
    finish(env, env.a, ClaimKind.ABORT, rejected)
    expired = locked(env, amount=2)  # Expired -> Aborted
    env.b.now = expired.deadline + 1
    env.b.call(env.relayer, "MarkExpired", tj(expired), cert(env, env.b, ClaimKind.LOCKED, expired))
    finish(env, env.b, ClaimKind.ABORT, expired)
    finish(env, env.a, ClaimKind.ABORT, expired)
    tomb = locked(env, amount=1)  # None -> Aborted (tombstone)
    finish(env, env.b, ClaimKind.ABORT, tomb)
    finish(env, env.a, ClaimKind.ABORT, tomb)
    assert (supply(env.a), supply(env.b)) == before
    assert not any(
        k.startswith(("burned/", "minted/")) for led in env.ledgers() for k in led.store.data
    )


def test_issue_outside_the_bridge_changes_net_issued_by_exactly_that(env: Env) -> None:
    t = prepared(env, amount=40)
    finish(env, env.a, ClaimKind.COMMIT, t)  # committed on A, still prepared on B
    assert (net_issued(env.a), net_issued(env.b)) == (10_000, 0)
    env.b.call(env.admin, "Issue", ISIN.isin, env.bob, "11")
    assert (net_issued(env.a), net_issued(env.b)) == (10_000, 11)
    env.a.call(env.admin, "Redeem", ISIN.isin, env.alice, "6")
    assert (net_issued(env.a), net_issued(env.b)) == (9_994, 11)
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert (net_issued(env.a), net_issued(env.b)) == (9_994, 11)


def test_counters_are_per_security(env: Env) -> None:
    env.a.call(env.admin, "RegisterSecurity", OTHER_ISIN.isin)
    env.b.call(env.admin, "RegisterSecurity", OTHER_ISIN.isin)
    env.a.call(env.admin, "SetEligible", OTHER_ISIN.isin, env.alice, "true")
    env.a.call(env.admin, "Issue", OTHER_ISIN.isin, env.alice, "9")
    env.b.call(env.admin, "SetEligible", OTHER_ISIN.isin, env.bob, "true")
    t = make_terms(env, amount=9, security=OTHER_ISIN.word)
    lock(env, t)
    prepare(env, t)
    finish(env, env.a, ClaimKind.COMMIT, t)
    finish(env, env.b, ClaimKind.COMMIT, t)
    assert counters(env.a) == (0, 0) and counters(env.b) == (0, 0)
    other = {k: int(v) for k, v in env.a.call("x:y", "Supply", OTHER_ISIN.isin).items()}
    assert (other["total_supply"], other["burned_out"], other["minted_in"]) == (0, 9, 0)


def test_two_transfers_of_one_security_touch_disjoint_keys_even_when_they_commit(
    env: Env,
) -> None:
    """The burned/minted entries are per-transfer keys and the supply counters sharded:
    committing (or aborting) two transfers of one security in different shards in one block
    writes no key the other reads or writes, and each commit writes exactly its own leg,
    index and burned/minted entries, its one counter shard (plus the recipient holder on
    mint)."""
    erin, fred = account(), account()
    env.a.call(env.admin, "SetEligible", ISIN.isin, erin, "true")
    env.a.call(env.admin, "Issue", ISIN.isin, erin, "50")
    env.b.call(env.admin, "SetEligible", ISIN.isin, fred, "true")
    sec = ISIN.word.hex()

    def traced(on: Ledger, fn: str, *args: str) -> TracingStore:
        store = TracingStore(on.store.data)
        ctx = p.Context(
            caller=env.relayer, channel_id=on.channel, chaincode_name=on.chaincode, tx_time=on.now
        )
        p.execute(store, ctx, fn, list(args), lambda *_: None)
        return store

    def pair(kind: ClaimKind) -> tuple[TransferTerms, TransferTerms]:
        t1 = make_terms(env, amount=3)
        # the sender is part of the transfer id: the shard is drawn with it
        t2 = other_shard_terms(env, t1, amount=4, recipient=word_of(fred), sender=word_of(erin))
        for t in (t1, t2):
            traced(env.a, "Lock", *ins(env.a, tj(t)))
            traced(env.b, "Prepare", tj(t), cert(env, env.b, ClaimKind.LOCKED, t))
        fn = "Commit" if kind is ClaimKind.COMMIT else "Abort"
        for on in (env.b, env.a):
            s1 = traced(on, fn, tj(t1), cert(env, on, kind, t1))
            s2 = traced(on, fn, tj(t2), cert(env, on, kind, t2))
            assert not s1.writes & (s2.reads | s2.writes)
            assert not s2.writes & (s1.reads | s1.writes)
            if kind is ClaimKind.COMMIT:
                for s, t in ((s1, t1), (s2, t2)):
                    tid = t.transfer_id.hex()
                    if on is env.a:
                        expected = {f"out/{tid}", f"escrow/{sec}/{tid}", f"burned/{sec}/{tid}"}
                        expected.add(f"tally/{sec}/{shard_of(tid)}")
                    else:
                        recipient = t.recipient[12:].hex()
                        expected = {
                            f"in/{tid}",
                            f"prepared/{sec}/{tid}",
                            f"minted/{sec}/{tid}",
                            f"holder/{sec}/{recipient}",
                            f"tally/{sec}/{shard_of(tid)}",
                        }
                    assert s.writes == expected
        return t1, t2

    pair(ClaimKind.COMMIT)
    assert counters(env.a) == (7, 0) and counters(env.b) == (0, 7)
    pair(ClaimKind.ABORT)
    assert counters(env.a) == (7, 0) and counters(env.b) == (0, 7)


class _RecordingStore(p.MemoryStore):
    """A store that notes every key read and every prefix scanned."""

    def __init__(self, data: dict[str, bytes]) -> None:
        super().__init__()
        self.data = dict(data)
        self.gets: list[str] = []
        self.scans: list[str] = []

    def get(self, key: str) -> bytes | None:
        self.gets.append(key)
        return super().get(key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        self.scans.append(prefix)
        return super().scan(prefix)


def test_supply_reads_only_the_keys_the_adapter_replays(env: Env) -> None:
    """FabricAdapter.supply rebuilds a past height from the blocks since (past_supply): every
    key ``Supply`` reads (besides the write-once ``config``) must be the security record, its
    counting state or a counter shard, or a change could go unseen."""
    from bridge.ledgers.fabric.codec import is_amount_key, is_counter_shard_key, is_supply_key

    sec = ISIN.word.hex()

    t = make_terms(env, amount=25)
    lock(env, t)
    prepare(env, t)
    finish(env, env.b, ClaimKind.COMMIT, t)
    for ledger in env.ledgers():
        store = _RecordingStore(ledger.store.data)
        ctx = p.Context(
            caller=env.stranger,
            channel_id=ledger.channel,
            chaincode_name=ledger.chaincode,
            caller_roles=frozenset({"client"}),
        )
        p.execute(store, ctx, "Supply", [ISIN.isin], lambda name, payload: None)
        # ADR 0024: point reads of the counters only, no range read (the peer caps those).
        assert not store.scans, "Supply must not scan key ranges"
        assert any(key.startswith(f"tally/{ISIN.word.hex()}/") for key in store.gets)
        assert len(store.gets) <= p.TALLY_SHARDS + 4, store.gets
        for key in store.gets:
            assert key == "config" or is_supply_key(key, ISIN.word), key
            # past_supply rebuilds a past height from the shards alone and refuses any
            # write of the security record or the counting state: Supply reads no amount key.
            assert not is_amount_key(key, ISIN.word), key
            assert key in ("config", f"security/{sec}", f"tally/{sec}/state") or (
                is_counter_shard_key(key, ISIN.word)
            ), key
        for prefix in store.scans:
            assert prefix.endswith("/") and is_supply_key(prefix + "00", ISIN.word), prefix
        # ... and every key the security's transfers wrote is one of them.
        for key in ledger.store.data:
            if ISIN.word.hex() in key:
                assert is_supply_key(key, ISIN.word), key


# --------------------------------------------------------------------------- protocol v2


@pytest.mark.security
def test_lock_needs_the_instructors_signature(env: Env) -> None:
    t = make_terms(env)
    stranger = LocalKeySigner(bytes([0x43]) * 32)
    good_json, good = ins(env.a, tj(t))
    other = make_terms(env)  # another nonce: other terms
    cases = [
        ("MissingInstruction", "0x"),
        ("InvalidInstruction", ins(env.a, tj(t), stranger)[1]),  # forged
        ("InvalidInstruction", ins(env.a, tj(other))[1]),  # signed for other terms
        ("InvalidInstruction", ins(env.b, tj(t))[1]),  # signed for another network
        ("InvalidInstruction", good[:-2] + "00"),  # bad v
        ("InvalidInstruction", good[:-2]),  # truncated
    ]
    before = balance(env.a, env.alice)
    for error, instruction in cases:
        rejects(env, env.a, error, env.relayer, "Lock", good_json, instruction)
    rejects(env, env.a, "InvalidArgument", env.relayer, "Lock", good_json, "not hex")
    assert balance(env.a, env.alice) == before
    assert out_leg(env, t)["state"] == OUT_NONE
    env.a.call(env.relayer, "Lock", good_json, good)
    assert out_leg(env, t)["state"] == LOCKED
    assert env.a.call(env.stranger, "InstructionDigest", good_json) == {
        "digest": "0x" + p.instruction_digest(env.a.network, t.terms_hash).hex()
    }


@pytest.mark.security
def test_a_relayer_cannot_squat_a_brokerages_transfer_id(env: Env) -> None:
    """The id binds sender and instructor: other terms with the same nonce get another id."""
    t = make_terms(env)
    squat = dataclass_replace(t, recipient=word_of(env.carol), instructor=bytes(12) + b"\x99" * 20)
    assert squat.transfer_id != t.transfer_id
    same_id_other_terms = dataclass_replace(t, recipient=word_of(env.carol))
    assert same_id_other_terms.transfer_id == t.transfer_id
    # An unregistered key cannot instruct at all.
    rejects(env, env.a, "UnknownInstructor", env.relayer, "Lock", tj(squat), ins(env.a, tj(t))[1])
    env.a.call(env.admin, "SetInstructor", "0x" + "99" * 20, "true")
    # Only the instructor can sign for the id, and it signs its own terms only.
    rejects(env, env.a, "InvalidInstruction", env.relayer, "Lock", tj(squat), ins(env.a, tj(t))[1])
    lock(env, t)
    assert out_leg(env, t)["terms_hash"] == "0x" + t.terms_hash.hex()


@pytest.mark.security
def test_claim_signed_for_another_network_is_refused(env: Env) -> None:
    t = locked(env)
    staging = hashlib.sha256(b"a staging channel that reused names and keys").digest()
    sigs = sign(env.signers[1:], env.b, ClaimKind.LOCKED, t, network=staging)
    _prepare_rejects(env, t, cj(EPOCH, sigs), "NotCommitteeMember")


@pytest.mark.security
def test_init_only_with_the_pinned_parameters(env: Env) -> None:
    s = env.signers
    args = ["fabric-p", "kstb", committee_json(s)]
    pinned = Ledger("fabric-p", "kstb")
    agreed = [*args, pinned.network_hex, GOV]
    pinned.pin = p.init_parameters_digest(agreed)
    rogue_committee = [LocalKeySigner(bytes([i]) * 32) for i in (0x51, 0x52, 0x53)]
    rogue_committee.sort(key=lambda k: k.address)
    for bad in (
        ["fabric-p", "kstb", committee_json(rogue_committee, threshold=2), *agreed[3:]],
        [*args, "0x" + "ee" * 32, GOV],  # another network
        ["fabric-q", "kstb", committee_json(s), *agreed[3:]],
        [*args, pinned.network_hex, governance("Org2MSP")],  # another issuer
    ):
        with pytest.raises(p.ChaincodeError, match=r"^WrongInitParameters: ") as info:
            pinned.call(env.admin, "Init", *bad)
        assert "pinned=" + pinned.pin in info.value.detail
        assert pinned.store.data == {}
    unpinned = Ledger("fabric-p", "kstb", pin=None)
    with pytest.raises(p.ChaincodeError, match=r"^WrongInitParameters: .*no pinned"):
        unpinned.call(env.admin, "Init", *agreed)
    assert unpinned.store.data == {}
    zero = [*args, "0x" + "00" * 32, GOV]
    zero_ledger = Ledger("fabric-p", "kstb", pin=p.init_parameters_digest(zero))
    with pytest.raises(p.ChaincodeError, match=r"^InvalidArgument: network word"):
        zero_ledger.call(env.admin, "Init", *zero)
    info = pinned.call(env.admin, "Init", *agreed)
    assert info["network_word"] == pinned.network_hex


@pytest.mark.security
def test_a_relayer_lock_needs_a_registered_instructor(env: Env) -> None:
    """A relayer naming its own (validly signing) key as instructor, towards a ledger nobody
    knows, escrows nothing: the key is not in the endpoint's registry."""
    own = LocalKeySigner(secrets.token_bytes(32))
    nowhere = Ledger("nowhere", "kstb")
    t = dataclass_replace(make_terms(env, dst=nowhere), instructor=bytes(12) + own.address)
    key = "0x" + own.address.hex()
    assert env.a.call(env.stranger, "IsInstructor", key)["instructor_registered"] is False
    detail = rejects(env, env.a, "UnknownInstructor", env.relayer, "Lock", *ins(env.a, tj(t), own))
    assert detail == "instructor=0x" + t.instructor.hex()
    assert out_leg(env, t)["state"] == OUT_NONE
    # Not even an empty instruction gets further than MissingInstruction.
    rejects(env, env.a, "MissingInstruction", env.relayer, "Lock", tj(t), "0x")


@pytest.mark.security
def test_only_the_admin_registers_instructors_and_removal_takes_effect(env: Env) -> None:
    signer = LocalKeySigner(secrets.token_bytes(32))
    key = "0x" + signer.address.hex()
    for caller in (env.relayer, env.stranger):
        rejects(env, env.a, "NotAdmin", caller, "SetInstructor", key, "true")
    for bad in ("0x1234", key[2:], key.upper(), key + "00", "0x" + "g" * 40):
        rejects(env, env.a, "InvalidArgument", env.admin, "SetInstructor", bad, "true")
        with pytest.raises(p.ChaincodeError, match=r"^InvalidArgument: "):
            env.a.call(env.stranger, "IsInstructor", bad)
    rejects(env, env.a, "InvalidArgument", env.admin, "SetInstructor", key, "yes")
    rejects(env, env.a, "ZeroAddress", env.admin, "SetInstructor", "0x" + "00" * 20, "true")
    assert env.a.call(env.stranger, "IsInstructor", key)["instructor_registered"] is False
    out = env.a.call(env.admin, "SetInstructor", key, "true")
    assert (out["instructor"], out["enabled"], out["applied"]) == (key, True, True)
    assert env.a.events == []  # administration emits no leg events
    assert env.a.call(env.stranger, "IsInstructor", key)["instructor_registered"] is True
    t = dataclass_replace(make_terms(env), instructor=bytes(12) + signer.address)
    env.a.call(env.relayer, "Lock", *ins(env.a, tj(t), signer))
    assert out_leg(env, t)["state"] == LOCKED
    env.a.call(env.admin, "SetInstructor", key, "false")
    later = dataclass_replace(make_terms(env), instructor=bytes(12) + signer.address)
    rejects(env, env.a, "UnknownInstructor", env.relayer, "Lock", *ins(env.a, tj(later), signer))
    # A lock made while the key was registered still finishes.
    finish(env, env.a, ClaimKind.ABORT, t)
    assert out_leg(env, t)["state"] == RELEASED


@pytest.mark.security
def test_a_holder_key_does_not_instruct_unless_registered(env: Env) -> None:
    """Fabric holders do not instruct their own locks (the committee's rule too): a lock
    signed by the sender's own key is refused unless that key is a registered one."""
    holder = LocalKeySigner(secrets.token_bytes(32))
    address = "0x" + holder.address.hex()
    env.a.call(env.admin, "SetEligible", ISIN.isin, address, "true")
    env.a.call(env.admin, "Issue", ISIN.isin, address, "50")
    own = bytes(12) + holder.address
    t = dataclass_replace(make_terms(env), sender=own, instructor=own)
    rejects(env, env.a, "UnknownInstructor", env.relayer, "Lock", *ins(env.a, tj(t), holder))
    assert balance(env.a, address) == 50


@pytest.mark.security
def test_only_an_admin_of_a_pinned_organisation_can_initialise(env: Env) -> None:
    """Another organisation's admin sending Init first with the (public) pinned arguments
    is refused; naming its own organisation changes the arguments (not the pinned ones)."""
    other_admin = identity("Org2MSP")
    ORG_ADMINS.add(other_admin)
    fresh = Ledger("fabric-r", "kstb")
    agreed = [fresh.name, fresh.chaincode, committee_json(env.signers), fresh.network_hex]
    fresh.pin = p.init_parameters_digest([*agreed, GOV])
    with pytest.raises(p.ChaincodeError) as info:
        fresh.call(other_admin, "Init", *agreed, GOV)
    assert info.value.name == "NotAdmin"
    assert info.value.detail == f"caller={other_admin} is no admin of a pinned organisation"
    assert fresh.store.data == {} and fresh.events == []
    with pytest.raises(p.ChaincodeError, match=r"^WrongInitParameters: "):
        fresh.call(other_admin, "Init", *agreed, governance("Org2MSP", ["Org2MSP"]))
    assert fresh.store.data == {}
    assert fresh.call(env.admin, "Init", *agreed, GOV)["governance"]["issuer"] == "Org1MSP"
    with pytest.raises(p.ChaincodeError, match=r"^NotAdmin: "):
        fresh.call(other_admin, "SetRelayer", other_admin, "true")


@pytest.mark.security
def test_init_governance_must_be_sound(env: Env) -> None:
    fresh = Ledger("fabric-s", "kstb")
    args = [fresh.name, fresh.chaincode, committee_json(env.signers), fresh.network_hex]
    for bad in (
        "",
        "[]",
        json.dumps({"issuer": "Org1MSP", "admin_orgs": ["Org1MSP"]}),
        governance(orgs=[]),
        governance(orgs=["Org2MSP", "Org1MSP"]),  # not ascending
        governance(orgs=["Org1MSP", "Org1MSP"]),  # duplicate
        governance(quorum=0),
        governance(quorum=2),  # k > n
        governance(issuer="Org1 MSP"),
        governance(orgs=["Org1MSP:x"]),
        json.dumps({"issuer": "Org1MSP", "admin_orgs": ["Org1MSP"], "quorum": True}),
    ):
        with pytest.raises(p.ChaincodeError, match=r"^(InvalidGovernance|InvalidArgument): "):
            fresh.call(env.admin, "Init", *args, bad)
        assert fresh.store.data == {}
    with pytest.raises(p.ChaincodeError, match=r"^InvalidArgument: Init takes 5 arguments"):
        fresh.call(env.admin, "Init", *args)
