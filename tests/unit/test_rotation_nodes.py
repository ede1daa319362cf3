"""Committee rotation on the nodes (ADR 0009): the member's rotation checks and vote log,
signing claims under the epochs a ledger accepts, the coordinator's re-certification of a
refused decision, the rotation manager and the depository's chain of rotations.

Pure logic with in-memory ledgers (the ledgers' own rules are tested by the ledger side;
the real-ledger path is tests/e2e/test_rotation.py).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.clients import LedgerDomain
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.records import Misbehaviour
from bridge.coordinator.rotation import (
    ACTIVE,
    CERTIFIED,
    INSTALLED,
    OLD_EXPIRED,
    PROPOSED,
    RotationManager,
    ledger_status,
)
from bridge.coordinator.rotation_store import SqliteRotationStore
from bridge.coordinator.store import SqliteTransferStore
from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee, EpochWindow
from bridge.domain.errors import (
    Conflict,
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Action, Leg, LegState, SignatureSet, TxOutcome
from bridge.domain.rotation import (
    CertifiedRotation,
    RotationBounds,
    RotationProposal,
    RotationRefused,
    chain_committees,
    check_proposal,
    member_epochs,
    preferred_epoch,
)
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState
from bridge.rpc.rotation_convert import proposal_to_pb
from bridge.supply_client import FeedVerifier
from bridge.v1 import verifier_pb2, verifier_pb2_grpc
from tests.support import eventually
from tests.unit.test_coordinator_driver import (
    ISIN,
    FakeRelayer,
    final,
    network_file,
    request,
    submit,
)
from tests.unit.test_verifier_claim_service import NETWORK, Member
from verifiers.policy import ClaimRefused
from verifiers.rotation_log import ConflictingRotation, RotationLog
from verifiers.service import VerifierServicer

pytestmark = [pytest.mark.unit, pytest.mark.governance]


def keys(n: int) -> list[LocalKeySigner]:
    """n signers in ascending address order."""
    return sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(n)), key=lambda k: k.address
    )


def committee_of(epoch: int, signers: list[LocalKeySigner], t: int) -> Committee:
    return Committee(epoch, t, tuple(sorted(s.address for s in signers)))


def proposal(signers: list[LocalKeySigner], t: int, epoch: int = 2, **kw: int) -> RotationProposal:
    args = {"activation": 0, "overlap": 60}
    args.update(kw)
    return RotationProposal(epoch, t, tuple(sorted(s.address for s in signers)), **args)


# ---- proposals ---------------------------------------------------------------------------


def test_proposal_needs_a_sound_committee() -> None:
    a, b, c = keys(3)
    with pytest.raises(InvalidInput, match="n/2"):
        proposal([a, b], 1)  # 2t > n fails
    with pytest.raises(InvalidInput, match="ascending"):
        RotationProposal(2, 2, (c.address, a.address, b.address), 0, 60)
    with pytest.raises(InvalidInput, match=r"distinct|ascending"):
        RotationProposal(2, 2, (a.address, a.address, b.address), 0, 60)
    with pytest.raises(InvalidInput, match="overlap"):
        proposal([a, b, c], 2, overlap=0)
    with pytest.raises(InvalidInput, match="genesis"):
        proposal([a, b, c], 2, epoch=1)


def test_check_proposal_reads_the_next_epoch_from_the_ledger() -> None:
    old, new = keys(3), keys(3)
    installed = (EpochWindow(committee_of(1, old, 2), 0, None),)
    bounds = RotationBounds(min_overlap=10, max_overlap=100, max_activation_delay=1000)
    now = time.time()
    assert check_proposal(proposal(new, 2), installed, bounds, now, old[0].address).epoch == 1
    # SECURITY: a stale or skipped epoch, a non-member signer, bounds.
    with pytest.raises(RotationRefused, match="latest installed epoch 1"):
        check_proposal(proposal(new, 2, epoch=3), installed, bounds, now)
    with pytest.raises(RotationRefused, match="not a member of epoch 1"):
        check_proposal(proposal(new, 2), installed, bounds, now, new[0].address)
    with pytest.raises(RotationRefused, match="overlap"):
        check_proposal(proposal(new, 2, overlap=5), installed, bounds, now)
    with pytest.raises(RotationRefused, match="ahead"):
        check_proposal(proposal(new, 2, activation=int(now) + 5000), installed, bounds, now)
    with pytest.raises(RotationRefused, match="no installed"):
        check_proposal(proposal(new, 2), (), bounds, now)


def test_preferred_and_member_epochs() -> None:
    old, new = keys(3), keys(3)
    shared = old[0]
    e1 = committee_of(1, old, 2)
    e2 = committee_of(2, [shared, *new[:2]], 2)
    now = int(time.time())
    overlap = (EpochWindow(e1, 0, now + 100), EpochWindow(e2, now - 100, None))
    assert preferred_epoch(overlap, now) == e2
    # Just activated: the older epoch is still preferred (ledger clocks lag).
    fresh = (EpochWindow(e1, 0, now + 100), EpochWindow(e2, now - 1, None))
    assert preferred_epoch(fresh, now) == e1
    assert preferred_epoch((EpochWindow(e2, now - 1, None),), now) == e2
    with pytest.raises(RotationRefused):
        preferred_epoch((EpochWindow(e2, now + 50, None),), now)
    assert member_epochs(overlap, shared.address) == (e2, e1)
    assert member_epochs(overlap, new[0].address) == (e2,)
    assert member_epochs(overlap, old[1].address) == (e1,)


# ---- the member's rotation vote log ------------------------------------------------------


def test_rotation_log_one_committee_per_epoch(tmp_path: Path) -> None:
    a, b = keys(3), keys(3)
    log = RotationLog(tmp_path / "v.sqlite")
    log.record(proposal(a, 2))
    log.record(proposal(a, 2))  # the same again (another ledger, a retry)
    with pytest.raises(ConflictingRotation):
        log.record(proposal(b, 2))
    with pytest.raises(ConflictingRotation):
        log.record(proposal(a, 2, overlap=61))  # any other field is another proposal
    assert log.signed(2) == proposal(a, 2).fingerprint
    log.record(proposal(b, 2, epoch=3))
    log.close()


def _record_then_die(path: str, members: list[bytes]) -> None:
    RotationLog(Path(path)).record(RotationProposal(2, 2, tuple(members), 0, 60))
    os.kill(os.getpid(), signal.SIGKILL)


def test_rotation_log_survives_kill_9(tmp_path: Path) -> None:
    a, b = keys(3), keys(3)
    path = tmp_path / "v.sqlite"
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_record_then_die, args=(str(path), [k.address for k in a]))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    log = RotationLog(path)
    with pytest.raises(ConflictingRotation):
        log.record(proposal(b, 2))
    log.record(proposal(a, 2))
    log.close()


# ---- the member signs rotations and claims under the accepted epochs -----------------------


class RotMember(Member):
    """A member whose ledgers both show ``windows``."""

    def __init__(
        self,
        tmp_path: Path,
        signer: LocalKeySigner,
        windows: tuple[EpochWindow, ...],
        later: list[LocalKeySigner] | None = None,
    ) -> None:
        super().__init__(tmp_path, frozenset())
        self.signer = signer
        self.a.epochs = self.b.epochs = windows
        self.rotations = RotationLog(tmp_path / "rot.sqlite")
        self.servicer = VerifierServicer(
            signer,
            windows[0].committee,
            {r.ledger.word: r for r in (self.a, self.b)},  # type: ignore[misc]
            self.votes,
            network_words={"a": NETWORK, "b": NETWORK},
            instruction_keys={"a": frozenset({self.terms().instructor[12:]})},
            later_members=[signer.address, *(k.address for k in later or [])],
            rotations=self.rotations,
        )

    def consents(
        self, p: RotationProposal, ledgers: list[str], signers: list[LocalKeySigner]
    ) -> list[verifier_pb2.LedgerSignature]:
        """Each of ``signers``' signature over each ledger's rotation digest."""
        readers = {"a": self.a, "b": self.b}
        out = []
        for name in ledgers:
            r = readers[name]
            d = p.digest(NETWORK, r.ledger.word, r.bridge_word)
            for k in signers:
                out.append(
                    verifier_pb2.LedgerSignature(
                        ledger_id=name, epoch=p.next_epoch, digest=d, signature=k.sign_digest(d)
                    )
                )
        return out

    def sign_rotation(
        self,
        p: RotationProposal,
        ledgers: list[str],
        consents: list[verifier_pb2.LedgerSignature] | None = None,
    ) -> verifier_pb2.SignRotationResponse:
        handler = VerifierServicer.SignRotation.__wrapped__  # type: ignore[attr-defined]
        req = verifier_pb2.SignRotationRequest(
            proposal=proposal_to_pb(p), ledger_ids=ledgers, consents=consents or []
        )
        out: verifier_pb2.SignRotationResponse = asyncio.run(handler(self.servicer, req, None))
        return out


def test_member_signs_a_rotation_per_ledger_after_its_own_read(tmp_path: Path) -> None:
    old, new, other = keys(3), keys(3), keys(3)
    e1 = committee_of(1, old, 2)
    m = RotMember(tmp_path, old[0], (EpochWindow(e1, 0, None),), later=[*new, *other])
    p = proposal(new, 2)
    resp = m.sign_rotation(p, ["a", "b"], m.consents(p, ["a", "b"], new))
    assert [s.ledger_id for s in resp.signatures] == ["a", "b"]
    for s, reader in zip(resp.signatures, (m.a, m.b), strict=True):
        assert s.epoch == 1
        assert s.digest == p.digest(NETWORK, reader.ledger.word, reader.bridge_word)
    # the same proposal again is fine; another committee for epoch 2 never, on any ledger
    m.sign_rotation(p, ["b"], m.consents(p, ["b"], new))
    q = proposal(other, 2)
    with pytest.raises(ConflictingRotation):
        m.sign_rotation(q, ["a"], m.consents(q, ["a"], other))


@pytest.mark.security
def test_member_refuses_a_rotation_to_keys_outside_its_network_file(tmp_path: Path) -> None:
    """Review finding 1: the bridge operator alone cannot rotate to keys of its own. Even
    with the rogue keys' own consents, a member refuses keys its network file does not name
    (genesis committee or [[committee.later]]), and records nothing."""
    old, rogue = keys(3), keys(3)
    m = RotMember(tmp_path, old[0], (EpochWindow(committee_of(1, old, 2), 0, None),))
    p = proposal(rogue, 2)
    with pytest.raises(RotationRefused, match=r"not in this member.s network file"):
        m.sign_rotation(p, ["a", "b"], m.consents(p, ["a", "b"], rogue))
    assert m.rotations.signed(2) is None, "a refusal records nothing"


@pytest.mark.security
def test_member_requires_every_new_members_consent_over_each_digest(tmp_path: Path) -> None:
    """Known new members must each sign the rotation digest of every named ledger; a
    missing, wrong-ledger, wrong-digest or forged consent is refused and nothing recorded."""
    old, new = keys(3), keys(2)
    m = RotMember(tmp_path, old[0], (EpochWindow(committee_of(1, old, 2), 0, None),), later=new)
    p = proposal([old[0], *new], 2)  # old[0] continues: only the two new keys consent
    with pytest.raises(RotationRefused, match="no consent"):
        m.sign_rotation(p, ["a"])
    with pytest.raises(RotationRefused, match="no consent"):
        m.sign_rotation(p, ["a", "b"], m.consents(p, ["a"], new))  # none for b
    with pytest.raises(RotationRefused, match="no consent"):
        m.sign_rotation(p, ["a"], m.consents(p, ["a"], new[:1]))  # one missing
    forged = m.consents(p, ["a"], [new[0], old[1]])  # old[1] signs in new[1]'s place
    with pytest.raises(RotationRefused, match="0x" + new[1].address.hex()):
        m.sign_rotation(p, ["a"], forged)
    wrong = m.consents(proposal([old[0], *new], 2, overlap=61), ["a"], new)
    with pytest.raises(RotationRefused, match="no consent"):
        m.sign_rotation(p, ["a"], wrong)
    assert m.rotations.signed(2) is None, "a refusal records nothing"
    resp = m.sign_rotation(p, ["a", "b"], m.consents(p, ["a", "b"], new))
    assert [s.epoch for s in resp.signatures] == [1, 1]


def test_a_new_member_consents_without_certifying(tmp_path: Path) -> None:
    """A new member asked for a proposal naming it signs each ledger's rotation digest
    tagged ``epoch = next_epoch`` (a consent, recorded nowhere); one not named refuses."""
    old, new = keys(3), keys(3)
    e1 = committee_of(1, old, 2)
    m = RotMember(tmp_path, new[0], (EpochWindow(e1, 0, None),), later=new)
    p = proposal(new, 2)
    resp = m.sign_rotation(p, ["a", "b"])
    assert [(s.ledger_id, s.epoch) for s in resp.signatures] == [("a", 2), ("b", 2)]
    for s, reader in zip(resp.signatures, (m.a, m.b), strict=True):
        assert s.digest == p.digest(NETWORK, reader.ledger.word, reader.bridge_word)
    assert m.rotations.signed(2) is None
    with pytest.raises(RotationRefused, match="not a member of epoch 1"):
        m.sign_rotation(proposal([*old[:2], new[1]], 2), ["a"])


def test_member_refuses_stale_epoch_unknown_ledger_and_non_members(tmp_path: Path) -> None:
    old, new, more = keys(3), keys(3), keys(3)
    e1, e2 = committee_of(1, old, 2), committee_of(2, new, 2)
    now = int(time.time())
    windows = (EpochWindow(e1, 0, now + 50), EpochWindow(e2, now, None))
    m = RotMember(tmp_path, old[0], windows, later=[*new, *more])
    # epoch 2 is installed already: a proposal for epoch 2 again is stale, 3 needs epoch 2's
    with pytest.raises(RotationRefused, match="latest installed epoch 2"):
        m.sign_rotation(proposal(more, 2), ["a"])
    with pytest.raises(RotationRefused, match="not a member of epoch 2"):
        m.sign_rotation(proposal(more, 2, epoch=3), ["a"])
    with pytest.raises(NotFound):
        m.sign_rotation(proposal(more, 2, epoch=3), ["nowhere"])
    assert m.rotations.signed(3) is None, "a refusal records nothing"


def test_claims_are_signed_under_every_accepted_epoch_of_the_member(tmp_path: Path) -> None:
    old, new = keys(3), keys(2)
    shared = old[0]
    e1 = committee_of(1, old, 2)
    e2 = committee_of(2, [shared, *new], 2)
    now = int(time.time())
    windows = (EpochWindow(e1, 0, now + 60), EpochWindow(e2, now - 10, None))
    m = RotMember(tmp_path, shared, windows)
    t = m.terms()
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    resp = m.sign(ClaimKind.LOCKED, t)
    assert sorted(s.epoch for s in resp.signatures) == [1, 2]
    # After the overlap the ledger accepts epoch 2 only: a removed member stops signing,
    # a new one signs under epoch 2 only.
    removed = RotMember(tmp_path / "r", old[1], (EpochWindow(e2, now - 100, None),))
    t = removed.terms()
    removed.set_leg(removed.a, t, Leg.OUTBOUND, LegState.LOCKED)
    with pytest.raises(PreconditionFailed, match="in no committee epoch"):
        removed.sign(ClaimKind.LOCKED, t)
    fresh = RotMember(tmp_path / "n", new[0], (EpochWindow(e2, now - 100, None),))
    t = fresh.terms()
    fresh.set_leg(fresh.a, t, Leg.OUTBOUND, LegState.LOCKED)
    assert [s.epoch for s in fresh.sign(ClaimKind.LOCKED, t).signatures] == [2]


@pytest.mark.security
def test_a_new_epoch_member_without_a_vote_log_refuses_the_conflicting_claim(
    tmp_path: Path,
) -> None:
    """A member of epoch n+1 has no record of epoch n's votes. The state-based policy keeps
    COMMIT and ABORT exclusive anyway: ABORT is never signed while the target is PREPARED or
    MINTED or the source BURNED, and COMMIT only while the target is PREPARED/MINTED."""
    new = keys(3)
    e2 = committee_of(2, new, 2)
    m = RotMember(tmp_path, new[0], (EpochWindow(e2, 0, None),))
    t = m.terms()
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    assert m.votes.decision(t.transfer_id) is None
    with pytest.raises(ClaimRefused, match="prepared transfer commits"):
        m.sign(ClaimKind.ABORT, t)
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.BURNED)
    m.set_leg(m.b, t, Leg.INBOUND, LegState.NONE)
    with pytest.raises(ClaimRefused):
        m.sign(ClaimKind.ABORT, t)
    assert m.votes.decision(t.transfer_id) is None, "nothing recorded for a refusal"
    t2 = m.terms()
    m.set_leg(m.a, t2, Leg.OUTBOUND, LegState.LOCKED)
    m.set_leg(m.b, t2, Leg.INBOUND, LegState.REJECTED)
    with pytest.raises(ClaimRefused):
        m.sign(ClaimKind.COMMIT, t2)


# ---- the coordinator re-certifies a refused decision under the new epoch ------------------


@dataclass
class EpochRelayer(FakeRelayer):
    """A fake ledger that verifies only the epochs in ``accepted`` and reports windows."""

    windows: tuple[EpochWindow, ...] = ()
    accepted: set[int] = field(default_factory=lambda: {1})
    hold_commit: bool = False

    async def committees(self) -> tuple[EpochWindow, ...]:
        return self.windows

    async def submit(
        self,
        action: Action,
        terms: TransferTerms,
        cert: SignatureSet | None,
        instruction: bytes = b"",
    ) -> TxOutcome:
        if action is Action.COMMIT and self.hold_commit:
            raise Unavailable("node down")
        if cert is not None and cert.epoch not in self.accepted:
            raise LedgerRejected(ErrorReason.WRONG_EPOCH, f"got={cert.epoch}")
        return await super().submit(action, terms, cert, instruction)


class EpochCommittee:
    """Certifies under whatever epoch it is asked for; remembers each request."""

    def __init__(self) -> None:
        self.calls: list[tuple[ClaimKind, dict[str, int]]] = []

    async def certify(self, kind, terms, ledgers, epochs=None):  # type: ignore[no-untyped-def]
        wanted = {d.name: (epochs[d.name][0].epoch if epochs else 1) for d in ledgers}
        self.calls.append((kind, wanted))
        return {name: SignatureSet(e, (bytes([e]) * 65,)) for name, e in wanted.items()}


async def test_refused_decision_is_recertified_under_the_new_epoch_and_never_changes(
    tmp_path: Path,
) -> None:
    network = network_file(tmp_path)
    old, new = keys(1), keys(1)
    e1, e2 = committee_of(1, old, 1), committee_of(2, new, 1)
    now = int(time.time())
    relayers = {
        "a": EpochRelayer("a", windows=(EpochWindow(e1, 0, None),)),
        "b": EpochRelayer("b", windows=(EpochWindow(e1, 0, None),), hold_commit=True),
    }
    store = SqliteTransferStore(tmp_path / "r.sqlite")
    committee = EpochCommittee()
    tracker = EpochTracker(e1, relayers, ttl=0.0)  # type: ignore[arg-type]
    c = Coordinator(network, store, relayers, committee, transfer_ttl=60, max_backoff=0.2,  # type: ignore[arg-type]
                    sweep_every=0.1, epochs=tracker)  # fmt: skip
    await c.start()
    try:
        record, _ = await submit(c, request("rot-1"))
        tid = record.transfer_id

        async def decided() -> bool:
            d = await store.decision(tid)
            return (
                d is not None
                and relayers["a"].legs.get((tid, Leg.OUTBOUND)) is not None
                and (relayers["a"].legs[(tid, Leg.OUTBOUND)].state is LegState.BURNED)
            )

        await eventually(decided, 10, "COMMIT decided and burned on a")
        before = await store.decision(tid)
        assert before is not None and before.kind is ClaimKind.COMMIT
        assert {n: s.epoch for n, s in before.certificates.items()} == {"a": 1, "b": 1}
        # The rotation to epoch 2 is installed on b and its overlap is over: b refuses
        # epoch 1 from now on (WrongEpoch).
        relayers["b"].windows = (EpochWindow(e2, now - 100, None),)
        relayers["b"].accepted = {2}
        relayers["b"].hold_commit = False
        assert await final(store, tid) is TransferState.COMMITTED
        after = await store.decision(tid)
        assert after is not None
        assert after.kind is before.kind and after.cause == before.cause
        assert after.certificates["a"] == before.certificates["a"]
        assert after.certificates["b"].epoch == 2
        commits = [w for k, w in committee.calls if k is ClaimKind.COMMIT]
        assert commits == [{"a": 1, "b": 1}, {"b": 2}], "only b's certificate was gathered again"
        assert relayers["b"].legs[(tid, Leg.INBOUND)].state is LegState.MINTED
    finally:
        await c.stop()
        store.close()


async def test_recertify_never_changes_the_decision_kind(tmp_path: Path) -> None:
    from bridge.coordinator.records import Decision

    store = SqliteTransferStore(tmp_path / "s.sqlite")
    tid = secrets.token_bytes(32)
    first = Decision(ClaimKind.ABORT, {"a": SignatureSet(1, (b"\1" * 65,))}, "why")
    await store.record_decision(tid, first)
    # SECURITY: a certificate of another kind is never swapped in.
    assert not await store.recertify(tid, ClaimKind.COMMIT, "a", SignatureSet(2, (b"\2" * 65,)))
    assert not await store.recertify(tid, ClaimKind.ABORT, "zz", SignatureSet(2, (b"\2" * 65,)))
    assert await store.decision(tid) == first
    assert await store.recertify(tid, ClaimKind.ABORT, "a", SignatureSet(2, (b"\2" * 65,)))
    got = await store.decision(tid)
    assert got is not None and got.kind is ClaimKind.ABORT and got.cause == "why"
    assert got.certificates["a"].epoch == 2
    store.close()


# ---- the rotation manager ------------------------------------------------------------------


@dataclass
class Ledger:
    """A fake ledger for the manager: windows, installs and refusals."""

    ledger: str
    windows: tuple[EpochWindow, ...]
    installs: list[int] = field(default_factory=list)
    refuse: LedgerRejected | None = None

    async def committees(self) -> tuple[EpochWindow, ...]:
        return self.windows

    async def install_committee(self, p: RotationProposal, cert: SignatureSet) -> TxOutcome:
        if self.refuse is not None:
            raise self.refuse
        self.installs.append(p.next_epoch)
        self.windows = (
            EpochWindow(
                self.windows[-1].committee, self.windows[-1].active_from, int(time.time()) + 60
            ),
            EpochWindow(p.committee, p.activation, None),
        )
        return TxOutcome("0x" + secrets.token_hex(32), 7, False)


class Evidence:
    def __init__(self, items: list[Misbehaviour]) -> None:
        self.items = items

    async def misbehaviour(self, limit: int, member: bytes | None = None) -> list[Misbehaviour]:
        return [m for m in self.items if member is None or m.member == member][:limit]


def domains() -> dict[str, LedgerDomain]:
    return {
        n: LedgerDomain(n, LedgerId(n).word, bytes(12) + bytes([i]) * 20, bytes([i]) * 32)
        for i, n in ((1, "a"), (2, "b"))
    }


def manager(
    tmp_path: Path, ledgers: dict[str, Ledger], evidence: list[Misbehaviour]
) -> RotationManager:
    genesis = ledgers["a"].windows[0].committee
    tracker = EpochTracker(genesis, ledgers, ttl=0.0)  # type: ignore[arg-type]
    return RotationManager(
        SqliteRotationStore(tmp_path / "c.sqlite"), Evidence(evidence), ledgers, tracker, domains()
    )


def incident(member: bytes) -> Misbehaviour:
    return Misbehaviour(member, "m:1", "wrong-digest", "ABORT for transfer 0x..", "signed another",
                        b"\1" * 32, b"\2" * 32, b"\3" * 65, time.time())  # fmt: skip


async def test_manager_proposes_with_evidence_certifies_and_installs(tmp_path: Path) -> None:
    old = keys(3)
    bad = old[2]
    e1 = committee_of(1, old, 2)
    ledgers = {n: Ledger(n, (EpochWindow(e1, 0, None),)) for n in ("a", "b")}
    m = manager(tmp_path, ledgers, [incident(bad.address)])
    next_members = [k.address for k in old[:2]] + [k.address for k in keys(1)]
    # SECURITY: removing needs evidence, and the removed member must not stay.
    without = manager(tmp_path / "x", ledgers, [])
    with pytest.raises(RotationRefused, match="no misbehaviour"):
        await without.propose(next_members, 2, 0, 60, bad.address)
    with pytest.raises(RotationRefused, match="among the next members"):
        await m.propose([bad.address, *next_members[:2]], 2, 0, 60, bad.address)
    view = await m.propose(next_members, 2, 0, 60, bad.address)
    assert view.stored.proposal.next_epoch == 2
    assert view.stored.removed_member == bad.address
    assert [e.member for e in view.stored.evidence] == [bad.address]
    assert {x.status for x in view.ledgers} == {PROPOSED}
    assert (await m.propose(next_members, 2, 0, 60, bad.address)).stored == view.stored
    with pytest.raises(Conflict):
        await m.propose(next_members, 2, 0, 61, bad.address)
    p = view.stored.proposal
    digests = {x.ledger: x.digest for x in view.ledgers}
    # A forged signature (not a member of epoch 1) refuses the whole call; nothing kept.
    outsider = keys(1)[0]
    with pytest.raises(InvalidCertificate):
        await m.certify(2, [("a", 1, old[0].sign_digest(digests["a"])),
                            ("a", 1, outsider.sign_digest(digests["a"]))])  # fmt: skip
    assert all(x.signatures == 0 for x in (await m.view(2)).ledgers)
    with pytest.raises(InvalidInput, match="epoch"):
        await m.certify(2, [("a", 2, old[0].sign_digest(digests["a"]))])
    # A signature over another ledger's digest does not recover to a member for this one.
    with pytest.raises(InvalidCertificate):
        await m.certify(2, [("a", 1, old[0].sign_digest(digests["b"]))])
    view = await m.certify(2, [("a", 1, k.sign_digest(digests["a"])) for k in old[:2]])
    assert {x.ledger: x.status for x in view.ledgers} == {"a": CERTIFIED, "b": PROPOSED}
    await m.install_pending()
    assert ledgers["a"].installs == [2] and ledgers["b"].installs == []
    view = await m.certify(2, [("b", 1, k.sign_digest(digests["b"])) for k in old[1:]])
    await m.install_pending()
    await m.install_pending()  # level-triggered: nothing twice
    assert ledgers["b"].installs == [2] and ledgers["a"].installs == [2]
    view = await m.view(2)
    assert {x.status for x in view.ledgers} == {ACTIVE}
    chain = await m.chain(1)
    assert [c.proposal for c in chain] == [p]
    assert chain_committees(e1, chain)[2] == p.committee


async def test_manager_resumes_after_a_crash_and_reads_installs_back(tmp_path: Path) -> None:
    old = keys(3)
    e1 = committee_of(1, old, 2)
    ledgers = {n: Ledger(n, (EpochWindow(e1, 0, None),)) for n in ("a", "b")}
    m = manager(tmp_path, ledgers, [])
    view = await m.propose([k.address for k in keys(3)], 2, 0, 60)
    sigs = [(x.ledger, 1, k.sign_digest(x.digest)) for x in view.ledgers for k in old[:2]]
    await m.certify(2, sigs)
    # The ledger installed it (say by the previous coordinator, killed before it recorded).
    await ledgers["a"].install_committee(view.stored.proposal, SignatureSet(1, ()))
    ledgers["b"].refuse = LedgerRejected(ErrorReason.ROTATION_ALREADY_INSTALLED, "replay")
    m2 = manager(tmp_path, ledgers, [])  # a restarted coordinator over the same file
    await m2.install_pending()
    assert ledgers["a"].installs == [2], "read back from the ledger, not sent again"
    assert all(x.tx_id == "" or x.status for x in (await m2.view(2)).ledgers)
    assert await m2._store.pending() == []
    ledgers["b"].refuse = None


async def test_manager_refuses_when_ledgers_disagree(tmp_path: Path) -> None:
    old, new = keys(3), keys(3)
    e1, e2 = committee_of(1, old, 2), committee_of(2, new, 2)
    ledgers = {
        "a": Ledger("a", (EpochWindow(e1, 0, None),)),
        "b": Ledger("b", (EpochWindow(e2, 0, None),)),
    }
    m = manager(tmp_path, ledgers, [])
    with pytest.raises(RotationRefused, match="disagree"):
        await m.propose([k.address for k in keys(3)], 2, 0, 60)


def test_ledger_status_words() -> None:
    old, new = keys(3), keys(3)
    p = proposal(new, 2)
    e1, e2 = committee_of(1, old, 2), p.committee
    now = 1000
    assert ledger_status(p, False, False, (), now) == PROPOSED
    assert ledger_status(p, True, False, (), now) == CERTIFIED
    assert (
        ledger_status(p, True, True, (EpochWindow(e1, 0, 2000), EpochWindow(e2, 1500, None)), now)
        == INSTALLED
    )
    assert (
        ledger_status(p, True, True, (EpochWindow(e1, 0, 2000), EpochWindow(e2, 900, None)), now)
        == ACTIVE
    )
    assert ledger_status(p, True, True, (EpochWindow(e2, 900, None),), now) == OLD_EXPIRED


# ---- the depository's chain ------------------------------------------------------------------


def certified(
    prev: list[LocalKeySigner], p: RotationProposal, signers: list[LocalKeySigner]
) -> CertifiedRotation:
    words = (b"\1" * 32, LedgerId("a").word, b"\2" * 32)
    digest = p.digest(*words)
    sigs = tuple(s.sign_digest(digest) for s in sorted(signers, key=lambda k: k.address))
    return CertifiedRotation("a", *words, p, sigs)


def test_feed_verifier_follows_a_certified_chain_and_refuses_a_forged_one() -> None:
    g, n2, n3 = keys(3), keys(3), keys(3)
    anchor = committee_of(1, g, 2)
    p2, p3 = proposal(n2, 2), proposal(n3, 2, epoch=3)
    good = [certified(g, p2, g[:2]), certified(n2, p3, n2[1:])]
    v = FeedVerifier(anchor)
    assert v.add_chain(good) == [2, 3]
    assert v.epochs[3] == p3.committee
    # Forged: epoch 3 "certified" by outsiders, or epoch 2 by only one genesis member, or a
    # gap (no epoch 2); each refused outright and nothing added.
    for forged in (
        [certified(g, p2, g[:2]), certified(n2, p3, keys(2))],
        [certified(g, p2, g[:1])],
        [certified(n2, p3, n2[:2])],
    ):
        fresh = FeedVerifier(anchor)
        with pytest.raises(InvalidCertificate):
            fresh.add_chain(forged)
        assert set(fresh.epochs) == {1}
    # A second, different committee for an accepted epoch is refused.
    other = proposal(keys(3), 2)
    with pytest.raises(InvalidCertificate):
        v.add_chain([certified(g, other, g[:2])])
    assert v.epochs[2] == p2.committee


@pytest.mark.security
def test_a_forked_chain_from_retired_keys_is_refused_against_a_ledgers_epochs() -> None:
    """Review finding 4: a coordinator holding t retired genesis keys certifies a fork
    (epoch 2 of its own keys). The chain verifies from the anchor, but a ledger read not
    through the coordinator shows another epoch 2: refused; the honest chain passes, and a
    chain whose tip the ledger does not accept is refused too."""
    from bridge.supply_client import check_chain_on_ledger, follow_epoch

    g, n2, rogue = keys(3), keys(3), keys(3)
    anchor = committee_of(1, g, 2)
    p2 = proposal(n2, 2)
    ledger = (EpochWindow(committee_of(1, g, 2), 0, 2000), EpochWindow(p2.committee, 1000, None))
    honest = [certified(g, p2, g[:2])]
    fork = [certified(g, proposal(rogue, 2), g[:2])]
    check_chain_on_ledger(anchor, honest, ledger)
    with pytest.raises(InvalidCertificate, match="another committee"):
        check_chain_on_ledger(anchor, fork, ledger)
    with pytest.raises(InvalidCertificate, match="not one the ledger accepts"):
        check_chain_on_ledger(anchor, honest, ledger[:1])

    class Feed:
        async def committee_chain(self, from_epoch: int) -> list[CertifiedRotation]:
            return fork

    async def confirm() -> tuple[EpochWindow, ...]:
        return ledger

    @dataclass
    class Att:
        signed: Any

    @dataclass
    class Rec:
        record: Any

    @dataclass
    class R:
        epoch: int

    v = FeedVerifier(anchor)
    att = Att(Rec(R(2)))
    asyncio.run(follow_epoch(Feed(), v, att, confirm))  # type: ignore[arg-type]
    assert set(v.epochs) == {1}, "the fork added nothing"
    asyncio.run(follow_epoch(Feed(), v, att))  # type: ignore[arg-type]
    assert v.epochs[2] == proposal(rogue, 2).committee, "without a second source it passes"


# ---- the operator's CLI keeps only each member's own signature over the right digest --------


class _Answer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, key: LocalKeySigner, digest: bytes, epoch: int = 1) -> None:
        self.key, self.digest, self.epoch = key, digest, epoch

    def SignRotation(self, request, context):  # type: ignore[no-untyped-def]
        return verifier_pb2.SignRotationResponse(
            signer=self.key.address,
            signatures=[
                verifier_pb2.LedgerSignature(
                    ledger_id="a", epoch=self.epoch, digest=self.digest,
                    signature=self.key.sign_digest(self.digest),
                )
            ],
        )  # fmt: skip


def test_gather_signatures_drops_what_is_not_the_members_own(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from concurrent import futures

    import grpc

    from bridge.cli.rotation import gather_signatures
    from bridge.rpc.tls import INSECURE_ENV

    monkeypatch.setenv(INSECURE_ENV, "1")
    members = keys(4)
    digest = secrets.token_bytes(32)
    answers = [
        _Answer(members[0], digest),  # good
        _Answer(members[1], secrets.token_bytes(32)),  # another digest
        _Answer(keys(1)[0], digest),  # someone else's key behind member 2's endpoint
        _Answer(members[3], digest, epoch=3),  # wrong epoch (2 is a consent, skipped)
    ]
    servers, endpoints = [], {}
    for m, answer in zip(members, answers, strict=True):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(answer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        endpoints[m.address] = f"127.0.0.1:{port}"
    try:
        p = proposal(keys(3), 2)
        sigs, refusals = gather_signatures(
            proposal_to_pb(p), {"a": digest}, endpoints, lambda role: None, timeout=5
        )
    finally:
        for server in servers:
            server.stop(0)
    assert [s.signature for s in sigs] == [members[0].sign_digest(digest)]
    assert len(refusals) == 3


async def test_manager_refuses_members_it_cannot_reach(tmp_path: Path) -> None:
    old = keys(3)
    e1 = committee_of(1, old, 2)
    ledgers = {n: Ledger(n, (EpochWindow(e1, 0, None),)) for n in ("a", "b")}
    tracker = EpochTracker(e1, ledgers, ttl=0.0)  # type: ignore[arg-type]
    stranger = keys(1)[0]
    m = RotationManager(
        SqliteRotationStore(tmp_path / "c.sqlite"), Evidence([]), ledgers, tracker, domains(),
        reachable={k.address for k in old},
    )  # fmt: skip
    with pytest.raises(RotationRefused, match="no verifier endpoint"):
        await m.propose([*(k.address for k in old[:2]), stranger.address], 2, 0, 60)
    view = await m.propose([k.address for k in old], 2, 0, 60)
    assert view.stored.proposal.next_epoch == 2


def test_feed_verifier_accepts_rotations_of_its_own_endpoints_only() -> None:
    """SECURITY: a member key reused on a staging deployment could certify another
    committee there; the depository counts rotations of the network file's endpoints only."""
    g, n2 = keys(3), keys(3)
    anchor = committee_of(1, g, 2)
    staging = certified(g, proposal(n2, 2), g[:2])  # words of a ledger "a" elsewhere
    ours = (rb"\9" * 32, LedgerId("a").word, b"\2" * 32)
    v = FeedVerifier(anchor, endpoints=frozenset({ours}))
    with pytest.raises(InvalidCertificate, match="not in the network file"):
        v.add_chain([staging])
    assert set(v.epochs) == {1}
    v2 = FeedVerifier(
        anchor, endpoints=frozenset({(staging.network, staging.ledger, staging.bridge)})
    )
    assert v2.add_chain([staging]) == [2]


# ---- the coordinator's committee client takes the first accepted epoch to reach t ------------


class _ClaimSigner(verifier_pb2_grpc.VerifierServiceServicer):
    """Signs a claim under the given epochs for ledger "a" (what a member does)."""

    def __init__(self, key: LocalKeySigner, domain: LedgerDomain, epochs: list[int]) -> None:
        self.key, self.domain, self.epochs = key, domain, epochs

    async def SignClaim(self, request, context):  # type: ignore[no-untyped-def]
        from bridge.domain.claims import Claim, ClaimDomain, claim_digest
        from bridge.rpc.convert import terms_from_pb

        t = terms_from_pb(request.terms)
        claim = Claim(ClaimKind(request.kind), t.transfer_id, t.terms_hash)
        out = verifier_pb2.SignClaimResponse(signer=self.key.address)
        for e in self.epochs:
            d = self.domain
            digest = claim_digest(
                ClaimDomain(d.ledger_word, d.bridge_word, e, d.network_word), claim
            )
            out.signatures.append(
                verifier_pb2.LedgerSignature(
                    ledger_id="a", epoch=e, digest=digest, signature=self.key.sign_digest(digest)
                )
            )
        return out


async def test_committee_client_takes_the_first_accepted_epoch_to_reach_t(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import grpc

    from bridge.coordinator.clients import CommitteeClient
    from bridge.rpc.tls import INSECURE_ENV

    monkeypatch.setenv(INSECURE_ENV, "1")
    k = keys(4)
    e1 = committee_of(1, k[:3], 2)
    e2 = committee_of(2, [k[0], k[1], k[3]], 2)
    domain = domains()["a"]
    # k0 and k1 are in both epochs; k2 (only epoch 1) and k3 (only epoch 2, its cache
    # not showing epoch 2 yet: it signs nothing) -- and an epoch 3 nobody accepts.
    plans: dict[int, list[int]] = {0: [2, 1], 1: [2, 1, 3], 2: [], 3: []}
    servers, endpoints = [], []
    for i, epochs in plans.items():
        server = grpc.aio.server()
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(
            _ClaimSigner(k[i], domain, epochs), server
        )
        endpoints.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        servers.append(server)
    incidents: list[Misbehaviour] = []

    async def sink(m: Misbehaviour) -> None:
        incidents.append(m)

    client = CommitteeClient(e1, endpoints, 5.0, sink)
    try:
        from bridge.domain.ids import SecurityId

        word = bytes(12) + b"\x11" * 20
        terms = TransferTerms(
            nonce=secrets.token_bytes(32), security=SecurityId(ISIN).word, amount=1,
            src_ledger=LedgerId("b").word, src_bridge=bytes(32), dst_ledger=domain.ledger_word,
            dst_bridge=domain.bridge_word, sender=word, recipient=word, instructor=word,
            deadline=2**40,
        )  # fmt: skip
        certs = await client.certify(ClaimKind.LOCKED, terms, [domain], {"a": (e2, e1)})
        # k0 and k1 complete both epochs at once: the preferred (newest) one is taken.
        assert certs["a"].epoch == 2
        assert len(certs["a"].signatures) == 2
        # Only epoch 1 can reach t when k0 signs epoch 1 only: the older accepted epoch.
        plans[0].remove(2)
        plans[2].append(1)
        certs = await client.certify(ClaimKind.LOCKED, terms, [domain], {"a": (e2, e1)})
        assert certs["a"].epoch == 1
        await asyncio.sleep(0.2)  # late answers examined
        assert incidents == [], "a signature of an epoch not accepted is no misbehaviour"
    finally:
        await client.close()
        for server in servers:
            await server.stop(0)


@pytest.mark.security
def test_feed_verifier_never_goes_back_to_a_retired_epoch() -> None:
    """After a verified rotation the retired epoch's keys (perhaps leaked) cannot extend a
    feed: a record of an older epoch than the security's last one is refused, and so is a
    record of a superseded epoch produced after that epoch's overlap window."""
    from bridge.domain.supply import GENESIS_HASH, make_record
    from tests.unit.test_supply_feed import attest, reading, sign

    g, n2 = keys(3), keys(3)
    anchor = committee_of(1, g, 2)
    v = FeedVerifier(anchor)
    assert v.add_chain([certified(g, proposal(n2, 2, overlap=60), g[:2])]) == [2]
    now_ms = int(time.time() * 1000)
    cut = ([reading("a", 10)], {"a": 10})

    def rec(security: str, seq: int, prev: bytes, epoch: int, at_ms: int):  # type: ignore[no-untyped-def]
        return make_record(security, seq, prev, epoch, at_ms, *cut, registration_version=1)

    r1 = rec(ISIN, 1, GENESIS_HASH, 1, now_ms - 10_000)
    assert v.check(attest(sign(r1, g[:2]), 1)).ok
    r2 = rec(ISIN, 2, r1.digest, 2, now_ms)
    assert v.check(attest(sign(r2, n2[:2]), 2)).ok
    r3 = rec(ISIN, 3, r2.digest, 1, now_ms)
    verdict = v.check(attest(sign(r3, g[:2]), 3))
    assert verdict.failures == (
        f"record {ISIN}#3: signed under epoch 1, after a record of epoch 2",
    )
    other = "US0378331005"
    late = rec(other, 1, GENESIS_HASH, 1, now_ms + 3_600_000)
    verdict = v.check(attest(sign(late, g[:2]), 4))
    assert verdict.failures == (
        f"record {other}#1: signed under epoch 1, produced after that epoch's overlap window ended",
    )
    assert v.last[ISIN] == r2 and other not in v.last


# ---- the relayer serves the ledger's epochs and installs certified rotations --------------


class _RotAdapter:
    """The part of a ledger adapter the relayer's rotation calls use."""

    def __init__(self, windows: tuple[EpochWindow, ...]) -> None:
        self.ledger = LedgerId("a")
        self.windows = windows
        self.installed: list[tuple[object, SignatureSet]] = []
        self.transient = 1

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        return self.windows

    async def install_committee(self, rotation: object, cert: SignatureSet) -> TxOutcome:
        if self.transient:
            self.transient -= 1
            raise Unavailable("node busy")
        self.installed.append((rotation, cert))
        return TxOutcome("0xabc", 9, False)


async def test_relayer_serves_epochs_and_installs_rotations() -> None:
    from bridge.rpc.convert import signatures_to_pb
    from bridge.v1 import relayer_pb2
    from relayers.service import RelayerServicer

    old, new = keys(3), keys(3)
    e1 = committee_of(1, old, 2)
    now = int(time.time())
    adapter = _RotAdapter(
        (EpochWindow(e1, 0, now + 60), EpochWindow(proposal(new, 2).committee, now, None))
    )
    relayer = RelayerServicer(adapter)  # type: ignore[arg-type]
    got = await RelayerServicer.GetCommittees.__wrapped__(
        relayer, relayer_pb2.GetCommitteesRequest(), None
    )  # type: ignore[attr-defined]
    assert [(e.epoch, e.open_ended, e.active_until) for e in got.epochs] == [
        (1, False, now + 60),
        (2, True, 0),
    ]
    p = proposal(keys(3), 2, epoch=3)
    install = RelayerServicer.InstallCommittee.__wrapped__  # type: ignore[attr-defined]
    good = SignatureSet(2, (b"\1" * 65, b"\2" * 65))
    # Malformed: no certificate, a certificate of another epoch than the certifying one.
    with pytest.raises(InvalidInput, match="certificate is required"):
        await install(
            relayer, relayer_pb2.InstallCommitteeRequest(proposal=proposal_to_pb(p)), None
        )
    with pytest.raises(InvalidInput, match="does not certify"):
        await install(relayer, relayer_pb2.InstallCommitteeRequest(
            proposal=proposal_to_pb(p), certificate=signatures_to_pb(SignatureSet(1, good.signatures))), None)  # fmt: skip
    assert adapter.installed == []
    out = await install(relayer, relayer_pb2.InstallCommitteeRequest(
        proposal=proposal_to_pb(p), certificate=signatures_to_pb(good)), None)  # fmt: skip
    assert out.tx_id == "0xabc"
    ((rotation, cert),) = adapter.installed
    assert rotation == p.as_rotation() and cert == good, "retried once after the transient fault"
