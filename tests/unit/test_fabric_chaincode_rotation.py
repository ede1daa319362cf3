"""Committee rotation in the Fabric chaincode's pure protocol (ADR 0008).

The same rules and errors as tests/integration/test_evm_rotation.py, over an in-memory store
with a settable transaction time (the chaincode's ledger time is the transaction timestamp).
A claim is checked with ``Abort`` of an inbound leg that does not exist (a tombstone). Every
refusal leaves the store and the event stream untouched.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.core import epochs
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, CommitteeRotation
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric import codec

_FABRIC = Path(__file__).resolve().parents[2] / "contracts" / "fabric"
if str(_FABRIC) not in sys.path:
    sys.path.insert(0, str(_FABRIC))

from kstb_chaincode import protocol as p  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.governance]

HOUR = 3600
T0 = 1_800_000_000
CHANNEL = "bridge"


def keys(n: int) -> list[LocalKeySigner]:
    return sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(n)), key=lambda s: s.address
    )


def identity(msp: str) -> str:
    return p.identity_of(msp, b"-----BEGIN CERTIFICATE-----\n" + secrets.token_bytes(48))


@dataclass
class Ledger:
    name: str = "fabric-r"
    chaincode: str = "kstb"
    now: int | None = T0
    peer_clock: int | None = None
    store: p.MemoryStore = field(default_factory=p.MemoryStore)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def network(self) -> bytes:
        return hashlib.sha256(f"genesis:{self.name}".encode()).digest()

    @property
    def bridge(self) -> bytes:
        return p.bridge_word(CHANNEL, self.chaincode)

    def domain(self, **kw: Any) -> ClaimDomain:
        args = {
            "ledger": LedgerId(self.name).word,
            "contract": self.bridge,
            "epoch": 0,
            "network": self.network,
        }
        args.update(kw)
        return ClaimDomain(**args)

    def call(self, caller: str, fn: str, *args: str, roles: frozenset[str] = frozenset()) -> Any:
        pin = p.init_parameters_digest(list(args)) if fn == "Init" else None
        ctx = p.Context(
            caller=caller,
            channel_id=CHANNEL,
            chaincode_name=self.chaincode,
            caller_roles=roles,
            init_pin=pin,
            tx_time=self.now,
            local_time=self.peer_clock,
        )
        out = p.execute(
            self.store,
            ctx,
            fn,
            list(args),
            lambda name, payload: self.events.append((name, json.loads(payload))),
        )
        return json.loads(out)


@dataclass
class Env:
    ledger: Ledger
    admin: str
    relayer: str
    anyone: str
    e1: list[LocalKeySigner]


@pytest.fixture
def env() -> Env:
    on = Ledger()
    admin, relayer, anyone = identity("Org1MSP"), identity("Org2MSP"), identity("Org3MSP")
    e1 = keys(4)
    committee = json.dumps(
        {"epoch": 1, "threshold": 3, "members": ["0x" + s.address.hex() for s in e1]}
    )
    on.call(
        admin,
        "Init",
        on.name,
        on.chaincode,
        committee,
        "0x" + on.network.hex(),
        admin,
        roles=frozenset({"admin"}),
    )
    on.call(admin, "SetRelayer", relayer, "true")
    return Env(on, admin, relayer, anyone, e1)


def rotation(
    epoch: int, members: Sequence[LocalKeySigner], activation: int, overlap: int = HOUR
) -> CommitteeRotation:
    nxt = Committee(epoch + 1, 3, tuple(s.address for s in members))
    return CommitteeRotation(epoch=epoch, next=nxt, activation=activation, overlap=overlap)


def cert_json(digest: bytes, signers: Sequence[LocalKeySigner], epoch: int) -> str:
    return json.dumps(
        {"epoch": epoch, "signatures": ["0x" + s.sign_digest(digest).hex() for s in signers]}
    )


def rotate_args(
    on: Ledger,
    r: CommitteeRotation,
    signers: Sequence[LocalKeySigner],
    cert_epoch: int | None = None,
    **dom: Any,
) -> tuple[str, str]:
    digest = r.digest(on.domain(**dom))
    return codec.rotation_to_json(r), cert_json(
        digest, signers, r.epoch if cert_epoch is None else cert_epoch
    )


def raw_args(on: Ledger, signers: Sequence[LocalKeySigner], **fields: Any) -> tuple[str, str]:
    """Arguments the domain types would refuse to build (malformed committees)."""
    members = fields["members"]
    digest = p.rotation_digest(
        on.network, LedgerId(on.name).word, on.bridge, fields["epoch"], fields["next_epoch"],
        fields["threshold"], members, fields["activation"], fields["overlap"],
    )  # fmt: skip
    obj = {**fields, "members": ["0x" + m.hex() for m in members]}
    return json.dumps(obj), cert_json(digest, signers, fields["epoch"])


def rotate(env: Env, r: CommitteeRotation, signers: Sequence[LocalKeySigner]) -> Any:
    return env.ledger.call(env.anyone, "RotateCommittee", *rotate_args(env.ledger, r, signers))


def refused(env: Env, error: str, args: tuple[str, str]) -> str:
    on = env.ledger
    before = (dict(on.store.data), len(on.events))
    with pytest.raises(p.ChaincodeError) as info:
        on.call(env.anyone, "RotateCommittee", *args)
    assert info.value.name == error, str(info.value)
    assert (dict(on.store.data), len(on.events)) == before
    return info.value.detail


def claim(env: Env, epoch: int, signers: Sequence[LocalKeySigner]) -> str | None:
    """Abort a fresh inbound leg with a certificate of ``epoch``: None when it verified."""
    on = env.ledger
    word = bytes(12) + secrets.token_bytes(20)
    t = TransferTerms(
        nonce=secrets.token_bytes(32),
        security=SecurityId("KR7005930003").word,
        amount=1,
        src_ledger=LedgerId("elsewhere").word,
        src_bridge=bytes(32),
        dst_ledger=LedgerId(on.name).word,
        dst_bridge=on.bridge,
        sender=word,
        recipient=word,
        instructor=word,
        deadline=2**40,
    )
    digest = claim_digest(
        on.domain(epoch=epoch), Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash)
    )
    before = dict(on.store.data)
    try:
        on.call(env.relayer, "Abort", codec.terms_to_json(t), cert_json(digest, signers[:3], epoch))
    except p.ChaincodeError as exc:
        assert dict(on.store.data) == before
        return exc.name
    return None


def windows(env: Env) -> list[tuple[int, int, int | None]]:
    got = codec.committees_from_json(json.dumps(env.ledger.call(env.anyone, "Committees")))
    return [(w.committee.epoch, w.active_from, w.active_until) for w in got]


# --------------------------------------------------------------------------- the rule


def test_rotation_overlap_then_only_the_new_epoch(env: Env) -> None:
    on, old, new = env.ledger, env.e1, keys(4)
    assert windows(env) == [(1, 0, None)]
    r = rotation(1, new, activation=T0 + 100)
    out = rotate(env, r, old[1:])
    until = T0 + 100 + HOUR
    assert out["active_until_old"] == until
    assert on.events[-1] == (
        "CommitteeRotated",
        {"epoch": 1, "next_epoch": 2, "activation": T0 + 100, "active_until_old": until},
    )
    assert windows(env) == [(1, 0, until), (2, T0 + 100, None)]
    assert on.call(env.anyone, "Committee")["epoch"] == 2, "Committee is the latest"
    assert claim(env, 1, old) is None
    assert claim(env, 2, new) == "EpochNotActive"
    on.now = T0 + 100
    assert claim(env, 1, old) is None
    assert claim(env, 2, new) is None
    assert claim(env, 2, old) == "NotCommitteeMember"
    on.now = until - 1
    assert claim(env, 1, old) is None
    on.now = until
    assert claim(env, 1, old) == "WrongEpoch"
    assert claim(env, 2, new) is None
    assert windows(env) == [(2, T0 + 100, None)]
    # Replay: the precise refusal, nothing changes.
    refused(env, "RotationAlreadyInstalled", rotate_args(on, r, old[1:]))
    other = rotation(1, keys(4), activation=T0)
    refused(env, "EpochAlreadyInstalled", rotate_args(on, other, old[1:]))


def test_a_rotation_during_the_overlap_ends_the_oldest_epoch_at_once(env: Env) -> None:
    e1, e2, e3 = env.e1, keys(4), keys(4)
    rotate(env, rotation(1, e2, activation=0, overlap=10 * HOUR), e1[:3])
    assert claim(env, 1, e1) is None
    rotate(env, rotation(2, e3, activation=0), e2[:3])
    assert claim(env, 1, e1) == "WrongEpoch", "at most two epochs verify"
    assert claim(env, 2, e2) is None
    assert claim(env, 3, e3) is None
    assert [w[0] for w in windows(env)] == [2, 3]


def test_an_unrotated_endpoint_needs_no_clock(env: Env) -> None:
    env.ledger.now = None
    assert claim(env, 1, env.e1) is None
    assert claim(env, 2, env.e1) == "WrongEpoch"


# --------------------------------------------------------------------------- refusals


def test_rotation_refusals(env: Env) -> None:
    on, e1, new = env.ledger, env.e1, keys(4)
    good = rotation(1, new, activation=T0)
    refused(env, "TooFewSignatures", rotate_args(on, good, e1[:2]))
    refused(env, "SignersNotAscending", rotate_args(on, good, e1[2::-1]))
    strangers = sorted([e1[0], e1[1], keys(1)[0]], key=lambda s: s.address)
    refused(env, "NotCommitteeMember", rotate_args(on, good, strangers))
    refused(env, "NotCommitteeMember", rotate_args(on, good, new[:3]))
    refused(env, "NotCommitteeMember", rotate_args(on, good, e1[:3], network=b"\x01" * 32))
    refused(env, "NotCommitteeMember", rotate_args(on, good, e1[:3], ledger=LedgerId("x").word))
    refused(env, "NotCommitteeMember", rotate_args(on, good, e1[:3], contract=b"\x02" * 32))
    refused(env, "WrongEpoch", rotate_args(on, good, e1[:3], cert_epoch=2))
    rotation_json, _ = rotate_args(on, good, e1[:3])
    refused(env, "MalformedSignatures", (rotation_json, '{"epoch": 1, "signatures": "0x"}'))
    members = [s.address for s in new]
    base = {"epoch": 1, "next_epoch": 2, "threshold": 3, "members": members,
            "activation": T0, "overlap": HOUR}  # fmt: skip
    for bad in (
        {"threshold": 2},  # 2t = n
        {"threshold": 5},  # t > n
        {"threshold": 0, "members": []},
        {"members": [members[1], members[0], *members[2:]]},  # descending
        {"members": [bytes(20), *members[1:]]},  # zero member
        {"members": [*members[:3], members[2]]},  # duplicate
    ):
        refused(env, "InvalidCommittee", raw_args(on, e1[:3], **{**base, **bad}))
    for bad in (
        {"next_epoch": 3},
        {"overlap": 0},
        {"overlap": epochs.MAX_OVERLAP + 1},
        {"activation": T0 + epochs.MAX_ACTIVATION_DELAY + 1},
    ):
        refused(env, "InvalidRotation", raw_args(on, e1[:3], **{**base, **bad}))
    refused(env, "WrongEpoch", raw_args(on, e1[:3], **{**base, "epoch": 2, "next_epoch": 3}))
    refused(
        env, "EpochAlreadyInstalled", raw_args(on, e1[:3], **{**base, "epoch": 0, "next_epoch": 1})
    )
    # Malformed arguments are InvalidArgument.
    refused(env, "InvalidArgument", ('{"epoch": 1}', '{"epoch": 1, "signatures": []}'))
    refused(env, "InvalidArgument", ("[", '{"epoch": 1, "signatures": []}'))
    bad_member = json.dumps({**base, "members": ["0x12"] * 4})
    refused(env, "InvalidArgument", (bad_member, '{"epoch": 1, "signatures": []}'))
    # Nothing moved: the good rotation still installs, once.
    rotate(env, good, e1[:3])
    refused(env, "RotationAlreadyInstalled", rotate_args(on, good, e1[:3]))


def test_stale_epochs_cannot_rotate(env: Env) -> None:
    on, e1, e2, e3 = env.ledger, env.e1, keys(4), keys(4)
    rotate(env, rotation(1, e2, activation=T0 + 200), e1[:3])
    r3 = rotation(2, e3, activation=T0 + 300)
    refused(env, "EpochNotActive", rotate_args(on, r3, e2[:3]))
    on.now = T0 + 200
    assert claim(env, 1, e1) is None, "epoch 1 is inside its overlap"
    refused(env, "WrongEpoch", rotate_args(on, r3, e1[:3], cert_epoch=1))
    on.now = T0 + 200 + HOUR
    assert claim(env, 1, e1) == "WrongEpoch"
    refused(env, "WrongEpoch", rotate_args(on, r3, e1[:3], cert_epoch=1))
    rotate(env, r3, e2[:3])
    assert [w[0] for w in windows(env)] == [2, 3]


def test_the_transaction_time_is_required_and_bounded(env: Env) -> None:
    """The ledger time is the transaction timestamp; a rotation needs it, and an endorser
    refuses one more than MAX_TX_SKEW from its own clock."""
    on = env.ledger
    r = rotation(1, keys(4), activation=T0)
    on.now = None
    refused(env, "InvalidArgument", rotate_args(on, r, env.e1[:3]))
    on.now, on.peer_clock = T0, T0 + p.MAX_TX_SKEW + 1
    refused(env, "TransactionTimeSkewed", rotate_args(on, r, env.e1[:3]))
    on.peer_clock = T0 + p.MAX_TX_SKEW
    rotate(env, r, env.e1[:3])
