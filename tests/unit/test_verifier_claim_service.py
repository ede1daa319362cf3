"""The verifier's SignClaim handler: ABORT towards a target outside the network file, and
COMMIT for a transfer whose instruction key was removed after it was prepared."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from bridge.core.words import evm_network_word
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, EpochWindow
from bridge.domain.errors import InvalidInput, NotFound
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Leg, LegState, LegStatus
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.rpc.convert import terms_to_pb
from bridge.v1 import verifier_pb2
from verifiers.policy import ClaimRefused, UninstructedLock
from verifiers.service import VerifierServicer
from verifiers.votes import ConflictingVote, VoteLog

pytestmark = [pytest.mark.unit, pytest.mark.security]

BROKER = LocalKeySigner(bytes([0x42]) * 32)
NETWORK = evm_network_word(31_337)


class Reader:
    """A ledger reader with fixed finalized legs (``legs[(transfer id, leg)]``)."""

    def __init__(self, name: str) -> None:
        self.ledger = LedgerId(name)
        self.kind = "evm"
        self.bridge_word = bytes(12) + secrets.token_bytes(20)
        self.legs: dict[tuple[bytes, Leg], LegStatus] = {}
        self.reads: list[tuple[bytes, Leg]] = []

    async def get_leg(self, transfer_id: bytes, leg: Leg) -> LegStatus:
        self.reads.append((transfer_id, leg))
        return self.legs.get((transfer_id, leg), LegStatus(LegState.NONE, bytes(32), 0, 5))

    async def network_word(self) -> bytes:
        return NETWORK

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        return self.epochs

    epochs: tuple[EpochWindow, ...] = ()


class Member:
    def __init__(self, tmp_path: Path, instruction_keys: frozenset[bytes]) -> None:
        self.signer = LocalKeySigner(secrets.token_bytes(32))
        self.a, self.b = Reader("a"), Reader("b")
        genesis = EpochWindow(Committee(1, 1, (self.signer.address,)), 0, None)
        self.a.epochs = self.b.epochs = (genesis,)
        self.votes = VoteLog(tmp_path / "votes.sqlite")
        self.servicer = VerifierServicer(
            self.signer,
            Committee(1, 1, (self.signer.address,)),
            {r.ledger.word: r for r in (self.a, self.b)},  # type: ignore[misc]
            self.votes,
            network_words={"a": NETWORK, "b": NETWORK},
            instruction_keys={"a": instruction_keys},
        )

    def terms(
        self, dst_ledger: bytes | None = None, dst_bridge: bytes | None = None
    ) -> TransferTerms:
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=SecurityId("KR7005930003").word,
            amount=5,
            src_ledger=self.a.ledger.word,
            src_bridge=self.a.bridge_word,
            dst_ledger=dst_ledger if dst_ledger is not None else self.b.ledger.word,
            dst_bridge=dst_bridge if dst_bridge is not None else self.b.bridge_word,
            sender=bytes(12) + b"\x51" * 20,
            recipient=bytes(12) + b"\x52" * 20,
            instructor=bytes(12) + BROKER.address,
            deadline=2_000_000_000,
        )

    def set_leg(self, reader: Reader, t: TransferTerms, leg: Leg, state: LegState) -> None:
        reader.legs[(t.transfer_id, leg)] = LegStatus(state, t.terms_hash, 0, 9)

    def sign(self, kind: ClaimKind, t: TransferTerms) -> verifier_pb2.SignClaimResponse:
        handler = VerifierServicer.SignClaim.__wrapped__  # type: ignore[attr-defined]
        request = verifier_pb2.SignClaimRequest(kind=int(kind), terms=terms_to_pb(t))  # type: ignore[arg-type]
        result: verifier_pb2.SignClaimResponse = asyncio.run(handler(self.servicer, request, None))
        return result


def unknown_targets(m: Member) -> list[tuple[TransferTerms, type[Exception]]]:
    """Terms towards a ledger not in the network file, and towards a bridge that is not
    the known ledger's endpoint, with the error LOCKED/COMMIT get for each."""
    return [
        (m.terms(dst_ledger=LedgerId("nowhere").word), NotFound),
        (m.terms(dst_bridge=bytes(12) + b"\x77" * 20), InvalidInput),
    ]


def test_abort_towards_an_unknown_target_is_signed_for_the_source_only(tmp_path: Path) -> None:
    m = Member(tmp_path, frozenset())  # an uninstructed lock (the finding's rogue relayer)
    for t, error in unknown_targets(m):
        m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
        for kind in (ClaimKind.LOCKED, ClaimKind.COMMIT):
            with pytest.raises(error):
                m.sign(kind, t)
        assert m.votes.decision(t.transfer_id) is None
        out = m.sign(ClaimKind.ABORT, t)
        assert [s.ledger_id for s in out.signatures] == ["a"]
        digest = claim_digest(
            ClaimDomain(m.a.ledger.word, m.a.bridge_word, 1, NETWORK),
            Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash),
        )
        assert out.signatures[0].digest == digest
        assert out.signatures[0].signature == m.signer.sign_digest(digest)
        assert m.votes.decision(t.transfer_id) is ClaimKind.ABORT
        with pytest.raises(ConflictingVote):
            m.votes.record(t.transfer_id, ClaimKind.COMMIT, t.terms_hash)
        # Released already: the same ABORT again (idempotent).
        m.set_leg(m.a, t, Leg.OUTBOUND, LegState.RELEASED)
        assert len(m.sign(ClaimKind.ABORT, t).signatures) == 1


def test_abort_towards_an_unknown_target_needs_this_lock(tmp_path: Path) -> None:
    """Negative: nothing to abort (NONE), a burned source, or a source leg holding other
    terms under the id: refused, and no vote recorded."""
    m = Member(tmp_path, frozenset({BROKER.address}))
    t, _ = unknown_targets(m)[0]
    with pytest.raises(ClaimRefused, match="source leg is NONE at height 5: nothing to abort"):
        m.sign(ClaimKind.ABORT, t)
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.BURNED)
    with pytest.raises(ClaimRefused, match="source leg is BURNED"):
        m.sign(ClaimKind.ABORT, t)
    m.a.legs[(t.transfer_id, Leg.OUTBOUND)] = LegStatus(LegState.LOCKED, b"\x01" * 32, 0, 9)
    with pytest.raises(ClaimRefused, match="source leg holds different terms"):
        m.sign(ClaimKind.ABORT, t)
    assert m.votes.decision(t.transfer_id) is None


def test_an_unknown_target_does_not_bypass_a_commit_vote(tmp_path: Path) -> None:
    m = Member(tmp_path, frozenset({BROKER.address}))
    t, _ = unknown_targets(m)[0]
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    m.votes.record(t.transfer_id, ClaimKind.COMMIT, t.terms_hash)
    with pytest.raises(ConflictingVote, match="already signed COMMIT"):
        m.sign(ClaimKind.ABORT, t)


def test_an_unknown_source_is_still_refused(tmp_path: Path) -> None:
    m = Member(tmp_path, frozenset({BROKER.address}))
    t = m.terms()
    t = TransferTerms(
        **{**{f: getattr(t, f) for f in t.__dataclass_fields__}, "src_ledger": LedgerId("x").word}
    )
    with pytest.raises(NotFound, match="source ledger"):
        m.sign(ClaimKind.ABORT, t)


def test_commit_after_the_instruction_key_was_removed_is_signed(tmp_path: Path) -> None:
    """The key was removed from the network file while the transfer was PREPARED: COMMIT is
    still signed (the PREPARED target proves t members certified the instructed lock), and
    ABORT stays refused, so the transfer finishes instead of being stuck."""
    m = Member(tmp_path, frozenset())  # BROKER no longer registered
    t = m.terms()
    m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    with pytest.raises(UninstructedLock):
        m.sign(ClaimKind.LOCKED, t)
    with pytest.raises(UninstructedLock):
        m.sign(ClaimKind.COMMIT, t)  # target not prepared: no certificate proves the lock
    m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    with pytest.raises(ClaimRefused, match="a prepared transfer commits"):
        m.sign(ClaimKind.ABORT, t)
    assert m.votes.decision(t.transfer_id) is None
    out = m.sign(ClaimKind.COMMIT, t)
    assert [s.ledger_id for s in out.signatures] == ["a", "b"]
    assert m.votes.decision(t.transfer_id) is ClaimKind.COMMIT
