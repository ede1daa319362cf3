"""The verifier's gRPC service: check the ledgers, record the vote, sign per ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee
from bridge.domain.errors import InvalidInput, NotFound
from bridge.domain.legs import Leg
from bridge.domain.signer import Signer
from bridge.ledgers.adapter import LedgerReader
from bridge.logfields import STATE, TRANSFER, get_logger
from bridge.rpc.convert import terms_from_pb
from bridge.rpc.errors import Context, grpc_errors
from bridge.v1 import verifier_pb2, verifier_pb2_grpc
from verifiers.policy import check_claim
from verifiers.votes import VoteLog


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    """Signs only what this member's own finalized reads of both ledgers support."""

    def __init__(
        self,
        signer: Signer,
        committee: Committee,
        readers: Mapping[bytes, LedgerReader],
        votes: VoteLog,
    ) -> None:
        self._signer = signer
        self._committee = committee
        self._readers = dict(readers)
        self._votes = votes
        self._log = get_logger(signer="0x" + signer.address.hex())
        if not committee.is_member(signer.address):
            raise InvalidInput(
                f"key 0x{signer.address.hex()} is not in committee epoch {committee.epoch}"
            )

    @grpc_errors
    async def GetIdentity(
        self, request: verifier_pb2.GetIdentityRequest, context: Context
    ) -> verifier_pb2.VerifierIdentity:
        """This member's address and epoch."""
        return verifier_pb2.VerifierIdentity(
            address=self._signer.address, epoch=self._committee.epoch
        )

    def _reader(self, ledger_word: bytes, bridge_word: bytes, side: str) -> LedgerReader:
        reader = self._readers.get(ledger_word)
        if reader is None:
            raise NotFound(
                f"{side} ledger 0x{ledger_word.hex()} is not a ledger this member watches"
            )
        if reader.bridge_word != bridge_word:
            raise InvalidInput(
                f"{side} bridge is not the bridge endpoint of ledger {reader.ledger}"
            )
        return reader

    @grpc_errors
    async def SignClaim(
        self, request: verifier_pb2.SignClaimRequest, context: Context
    ) -> verifier_pb2.SignClaimResponse:
        """Sign LOCKED for the target, or COMMIT/ABORT for both ledgers, if the ledgers agree."""
        try:
            kind = ClaimKind(request.kind)
        except ValueError:
            raise InvalidInput("kind must be LOCKED, COMMIT or ABORT") from None
        terms = terms_from_pb(request.terms)
        src = self._reader(terms.src_ledger, terms.src_bridge, "source")
        dst = self._reader(terms.dst_ledger, terms.dst_bridge, "target")
        tid, th = terms.transfer_id, terms.terms_hash
        source, target = await asyncio.gather(
            src.get_leg(tid, Leg.OUTBOUND), dst.get_leg(tid, Leg.INBOUND)
        )
        check_claim(kind, th, source, target)
        if kind is not ClaimKind.LOCKED:
            self._votes.record(tid, kind, th)
        ledgers = [dst] if kind is ClaimKind.LOCKED else [src, dst]
        claim = Claim(kind=kind, transfer_id=tid, terms_hash=th)
        out = verifier_pb2.SignClaimResponse(signer=self._signer.address)
        for reader in ledgers:
            domain = ClaimDomain(reader.ledger.word, reader.bridge_word, self._committee.epoch)
            digest = claim_digest(domain, claim)
            out.signatures.append(
                verifier_pb2.LedgerSignature(
                    ledger_id=reader.ledger.name,
                    epoch=self._committee.epoch,
                    digest=digest,
                    signature=self._signer.sign_digest(digest),
                )
            )
        self._log.info("claim signed", **{TRANSFER: "0x" + tid.hex(), STATE: kind.name})
        return out
