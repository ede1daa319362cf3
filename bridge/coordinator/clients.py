"""The coordinator's gRPC clients: one gateway per relayer, and the committee."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc

from bridge.coordinator.batch_certs import (
    BatchItemsRefused,
    CertifiedBatch,
    assemble_batch,
    check_items,
    ledger_batch,
)
from bridge.coordinator.records import Misbehaviour
from bridge.core import batch as core_batch
from bridge.core.reasons import ErrorReason
from bridge.domain.claim_batches import RefusedItem
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import (
    Committee,
    EpochWindow,
    assemble_certificate,
    recover_signer,
    verify_vote,
)
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
    reason_name,
    with_public,
)
from bridge.domain.flow import FlowStatus
from bridge.domain.governance import HaltStatus, SignedOrder
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.issuance import Registration
from bridge.domain.ledger_batches import BatchAnswerMismatch, BatchItem, BatchOutcome, leg_of
from bridge.domain.legs import Action, HolderStatus, Leg, LegStatus, SignatureSet, TxOutcome
from bridge.domain.rotation import RotationProposal
from bridge.domain.supply import SignedRecord, SupplyReading, SupplyRecord
from bridge.domain.terms import TransferTerms
from bridge.ledgers.bounded import gather_bounded
from bridge.logfields import PEER, REASON, SIGNER, get_logger
from bridge.rpc.batch_convert import batch_request_to_pb, outcome_from_pb
from bridge.rpc.channels import ReloadingStub
from bridge.rpc.claims_refusal import refusal_of
from bridge.rpc.convert import (
    holder_from_pb,
    leg_status_from_pb,
    signatures_to_pb,
    terms_to_pb,
)
from bridge.rpc.errors import received_error
from bridge.rpc.flow_convert import flow_status_from_pb
from bridge.rpc.halt_convert import halt_from_pb, signed_order_to_pb
from bridge.rpc.rotation_convert import proposal_to_pb, window_from_pb
from bridge.rpc.supply_convert import reading_from_pb, record_to_pb, registration_to_pb
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import (
    depository_pb2,
    flow_pb2,
    relayer_pb2,
    relayer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

MAX_LEGS_PER_CALL = 1000
"""---- batch: ids per GetLegs call (the relayer's MAX_LEGS_PER_REQUEST)."""
MAX_HOLDERS_PER_CALL = 1000
"""---- batch: holders per GetHolders call (the relayer's MAX_HOLDERS_PER_REQUEST)."""

_MEMBER_REFUSALS = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
"""The codes by which a committee member refuses what it was asked. Any other code
(unreachable, INTERNAL, UNKNOWN...) is a member that failed to answer: counted as
unreachable, by its code only (review helper-109: a crashing member's text, e.g. its node's
address, reached brokerages as a "refusal", and a crash counted as a final refusal)."""

_TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


class PeerFailed(Unavailable):
    """The peer answered INTERNAL, UNKNOWN, UNIMPLEMENTED or another code that is neither a
    refusal nor its being unreachable: it failed on this request. Retryable like any
    Unavailable, but not proof that the peer is down: the request itself may be what made it
    fail (a shared read splits on it, :class:`bridge.coordinator.holder_reads.HolderReads`)."""


MAX_MEMBER_TEXT = 200
"""Most characters of one member's own refusal text kept for this coordinator's log."""

MAX_PEER_TEXT = 512
"""Most characters of a relayer's own refusal text kept (``LedgerRejected.said``)."""


@dataclass(frozen=True, slots=True)
class MemberRefusal:
    """One committee member's refusal, as this coordinator keeps it: ``reason``, the wire
    name of the reason its status details carry (validated against the closed sets,
    ``UNKNOWN`` when they carry none or garbage), and ``text``, its own words, bounded.

    SECURITY: a member is another organisation (or a compromised one). Its words go to
    this coordinator's log only; what a brokerage or the depository may read of a refusal
    (``BridgeError.public``) is built from the typed reasons alone (:func:`refused_text`).
    """

    reason: str
    text: str


def member_refusal(resp: grpc.aio.AioRpcError) -> MemberRefusal:
    """``resp`` (a member's refusing answer) as a :class:`MemberRefusal`; never raises."""
    got = received_error(cast(Any, resp.trailing_metadata()))
    text = (resp.details() or resp.code().name)[:MAX_MEMBER_TEXT]
    return MemberRefusal(reason_name(got.reason), text)


def refused_text(refusals: Sequence[MemberRefusal]) -> tuple[str, str]:
    """The members' own words (for this log) and their typed reasons only (for a caller of
    another organisation), each deduplicated and sorted."""
    words = "; ".join(sorted({r.text for r in refusals}))
    reasons = ", ".join(sorted({r.reason for r in refusals}))
    return words, f"{len(refusals)} refused ({reasons})"


def agreed(refusals: Sequence[RefusedItem]) -> RefusedItem:
    """One item's refusal from the members that refused it (at least one): the first, with
    its reason kept only when every one of them gave that reason, else CLAIM_REFUSED.

    SECURITY: an item is refused only when more members refused it than its committee can
    spare, so at least one of them is honest when at most n - t are faulty; a typed reason
    every refuser gave is vouched for by that honest one. A reason one member chose alone
    (a lying member first to answer) never becomes the item's (review helper-113 L6)."""
    first = refusals[0]
    if all(r.reason == first.reason for r in refusals):
        return first
    retryable = any(r.retryable for r in refusals)
    return RefusedItem(first.index, BridgeReason.CLAIM_REFUSED, retryable, first.message)


def translate(exc: grpc.aio.AioRpcError, who: str, ledger: str = "") -> BridgeError:
    """Turn a gRPC failure from ``who`` into a typed domain error (ADR 0015).

    The ledger's refusal is rebuilt from the status's ``ErrorInfo`` details alone (reason,
    figures), never from the message; the message is kept only as text for this log, and
    every other error has a ``public`` text without it, only its code or typed reason (the
    peer may be another organisation's relayer: its node errors and addresses, or any
    words it chooses, stay in this log). Its ledger
    is always ``ledger``, the one the caller talks to, never the peer's claim.
    Transport codes are Unavailable whatever the details say.
    """
    code, msg = exc.code(), exc.details() or ""
    if code in _TRANSIENT:
        down = Unavailable(f"{who} unreachable ({code.name.lower()}): {msg}")
        down.public = f"{who} unreachable ({code.name.lower()})"  # SECURITY: not its text
        return down
    got = received_error(cast(Any, exc.trailing_metadata()))
    if isinstance(got.reason, ErrorReason) and code == grpc.StatusCode.FAILED_PRECONDITION:
        # SECURITY (review 2 finding 8): the ledger is the one this client talks to; a
        # peer's ErrorInfo cannot attribute its refusal to another ledger.
        # SECURITY (review helper-114 M1): the detail another organisation reads (a
        # brokerage, the depository) is rebuilt from the validated integer figures; the
        # relayer's own text (a node's revert message, addresses) is for this log only.
        shown = ", ".join(f"{k}={v}" for k, v in sorted(got.figures.items()))
        said = got.detail[:MAX_PEER_TEXT] if got.detail != shown else ""
        return LedgerRejected(got.reason, shown, got.figures, ledger, said=said)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if got.reason is BridgeReason.UNKNOWN:
            # SECURITY: a refusal without valid details is never taken as a known reason.
            # Its words for this log only: neither ErrorInfo ``detail`` nor a status
            # message carries them to another organisation (a brokerage, the depository).
            return LedgerRejected(
                ErrorReason.UNKNOWN_REFUSAL, who, ledger=ledger, said=msg[:MAX_PEER_TEXT]
            )
        # SECURITY: the peer's words for this log; its typed reason for other organisations.
        return with_public(
            PreconditionFailed(f"{who}: {msg}"), f"{who} refused ({reason_name(got.reason)})"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return with_public(InvalidInput(f"{who}: {msg}"), f"{who}: invalid argument")
    if code == grpc.StatusCode.NOT_FOUND:
        return with_public(NotFound(f"{who}: {msg}"), f"{who}: not found")
    # INTERNAL, UNKNOWN, UNIMPLEMENTED...: the peer failed on it; retry later.
    failed = PeerFailed(f"{who} failed ({code.name.lower()}): {msg}")
    failed.public = f"{who} failed ({code.name.lower()})"  # SECURITY: not its text
    return failed


class RelayerGateway:
    """Talks to one ledger's relayer; the coordinator never touches a ledger directly."""

    def __init__(
        self, ledger: str, target: str, timeout: float, identity: ClientIdentity | None = None
    ) -> None:
        self.ledger = ledger
        # SECURITY: with ``identity`` the relayer must prove role relayer:<ledger>.
        self._conn: ReloadingStub[relayer_pb2_grpc.RelayerServiceAsyncStub] = ReloadingStub(
            target, identity, relayer_pb2_grpc.RelayerServiceStub
        )
        self._timeout = timeout

    @property
    def _stub(self) -> relayer_pb2_grpc.RelayerServiceAsyncStub:
        return self._conn.get()

    def _wrong_ledger(self, named: str) -> Unavailable:
        """The relayer answered for another ledger than its own: Unavailable (retryable).
        SECURITY: the name is the peer's text: bounded in this log, not shown to another
        organisation."""
        return with_public(
            Unavailable(f"relayer of {self.ledger} answered for ledger {named[:64]!r}"),
            f"relayer of {self.ledger} answered for another ledger",
        )

    async def get_leg(self, transfer_id: bytes, leg: Leg) -> LegStatus:
        """A leg's state at the ledger's finalized height."""
        try:
            m = await self._stub.GetLeg(
                relayer_pb2.GetLegRequest(transfer_id=transfer_id, leg=int(leg)),  # type: ignore[arg-type]
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        return leg_status_from_pb(m)

    # ---- batch (issue 14 item 4)
    async def get_legs(self, transfer_ids: Sequence[bytes], leg: Leg) -> list[LegStatus]:
        """Many legs of one side at the ledger's finalized height, in order (see
        :meth:`_in_chunks`: one GetLegs per ``MAX_LEGS_PER_CALL`` ids, GetLeg each from a
        relayer that predates GetLegs). Raises like :meth:`get_leg`."""

        async def many(chunk: list[bytes]) -> Sequence[Any]:
            m = await self._stub.GetLegs(
                relayer_pb2.GetLegsRequest(transfer_ids=chunk, leg=int(leg)),  # type: ignore[arg-type]
                timeout=self._timeout,
            )
            return m.legs

        return await self._in_chunks(
            transfer_ids, MAX_LEGS_PER_CALL, many, leg_status_from_pb,
            lambda t: self.get_leg(t, leg), "legs",
        )  # fmt: skip

    async def holder(self, security: str, holder: str) -> HolderStatus:
        """A holder's standing on this ledger."""
        try:
            m = await self._stub.GetHolder(
                relayer_pb2.GetHolderRequest(security_id=security, holder=holder),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        return holder_from_pb(m)

    async def holders(self, security: str, holders: Sequence[str]) -> list[HolderStatus]:
        """Many holders' standing on this ledger, in order (see :meth:`_in_chunks`: one
        GetHolders per ``MAX_HOLDERS_PER_CALL`` holders, GetHolder each from a relayer that
        predates GetHolders). Raises like :meth:`holder`."""

        async def many(chunk: list[str]) -> Sequence[Any]:
            m = await self._stub.GetHolders(
                relayer_pb2.GetHoldersRequest(security_id=security, holders=chunk),
                timeout=self._timeout,
            )
            return m.holders

        return await self._in_chunks(
            holders, MAX_HOLDERS_PER_CALL, many, holder_from_pb,
            lambda h: self.holder(security, h), "holders",
        )  # fmt: skip

    async def _in_chunks(
        self,
        items: Sequence[I],
        size: int,
        many: Callable[[list[I]], Awaitable[Sequence[Any]]],
        convert: Callable[[Any], R],
        one: Callable[[I], Awaitable[R]],
        noun: str,
    ) -> list[R]:
        """``items`` read ``size`` at a time through ``many`` (one relayer call per chunk),
        each answer ``convert``-ed, in order. A relayer that predates the call answers
        UNIMPLEMENTED: that chunk is read through ``one`` per item, a bounded number at a
        time, so a coordinator upgraded first keeps working. Any other refusal is raised
        typed; an answer with another number of items than asked is Unavailable."""
        out: list[R] = []
        for lo in range(0, len(items), size):
            chunk = list(items[lo : lo + size])
            try:
                answers = await many(chunk)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    out.extend(await gather_bounded(one, chunk))
                    continue
                raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
            if len(answers) != len(chunk):
                raise Unavailable(
                    f"relayer of {self.ledger} answered {len(answers)} {noun} for {len(chunk)}"
                )
            out.extend(convert(x) for x in answers)
        return out

    async def supply(self, security: SecurityId) -> SupplyReading:
        """The security's figures on this ledger at its finalized height."""
        try:
            m = await self._stub.GetLedgerSupply(
                relayer_pb2.GetLedgerSupplyRequest(security_id=security.isin),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        reading = reading_from_pb(m)
        if reading.ledger != self.ledger:
            raise self._wrong_ledger(reading.ledger)
        return reading

    # ---- flow limits (ADR 0010)
    async def flow_status(self, security: str, counterpart: str) -> FlowStatus:
        """The lane (``security``, ``counterpart``) on this ledger, as its relayer reads it."""
        try:
            m = await self._stub.GetFlowStatus(
                flow_pb2.GetLaneFlowRequest(security_id=security, counterpart=counterpart),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        status = flow_status_from_pb(m)
        if status.ledger != self.ledger:
            raise self._wrong_ledger(status.ledger)
        return status

    async def submit(
        self,
        action: Action,
        terms: TransferTerms,
        certificate: SignatureSet | None,
        instruction: bytes = b"",
    ) -> TxOutcome:
        """Apply one step (idempotent on the relayer side); ``instruction``: LOCK only."""
        req = relayer_pb2.SubmitRequest(
            action=int(action),  # type: ignore[arg-type]
            terms=terms_to_pb(terms),
            instruction=instruction,
        )
        if certificate is not None:
            req.certificate.CopyFrom(signatures_to_pb(certificate))
        try:
            m = await self._stub.Submit(req, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        return TxOutcome(tx_id=m.tx_id, height=m.height, already_applied=m.already_applied)

    # ---- depository halt

    async def halt_status(self, security: str | None) -> HaltStatus:
        """The ledger's halt flags for ``security`` (None: the ledger-wide flag), finalized."""
        try:
            m = await self._stub.GetHaltStatus(
                depository_pb2.GetHaltStatusRequest(security_id=security or ""),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        if m.ledger_id != self.ledger:
            raise self._wrong_ledger(m.ledger_id)
        return halt_from_pb(m)

    async def apply_order(self, signed: SignedOrder) -> TxOutcome:
        """Submit a depository order to this ledger (idempotent by the ledger's sequence)."""
        try:
            m = await self._stub.ApplyOrder(signed_order_to_pb(signed), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        return TxOutcome(tx_id=m.tx_id, height=m.height, already_applied=m.already_applied)

    # ---- committee rotation (ADR 0009)
    async def committees(self) -> tuple[EpochWindow, ...]:
        """The epochs the ledger accepts now or will (read at finality by the relayer)."""
        try:
            m = await self._stub.GetCommittees(
                relayer_pb2.GetCommitteesRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        try:
            windows = tuple(window_from_pb(w) for w in m.epochs)
        except InvalidInput as exc:
            raise Unavailable(f"relayer of {self.ledger} sent a malformed epoch: {exc}") from None
        return tuple(sorted(windows, key=lambda w: w.committee.epoch))

    async def install_committee(
        self, proposal: RotationProposal, certificate: SignatureSet
    ) -> TxOutcome:
        """Install a certified rotation (idempotent on the ledger)."""
        req = relayer_pb2.InstallCommitteeRequest(
            proposal=proposal_to_pb(proposal), certificate=signatures_to_pb(certificate)
        )
        try:
            m = await self._stub.InstallCommittee(req, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        return TxOutcome(tx_id=m.tx_id, height=m.height, already_applied=m.already_applied)

    # ---- batched ledger steps (issue 14 item 2, ADR 0025)
    async def max_batch_items(self) -> int:
        """The most items one :meth:`submit_batch` may carry on this ledger, as its relayer
        reports it (``GetLedgerInfo``); 0 from a relayer that predates ``SubmitBatch``."""
        try:
            m = await self._stub.GetLedgerInfo(
                relayer_pb2.GetLedgerInfoRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        if m.ledger_id != self.ledger:
            raise self._wrong_ledger(m.ledger_id)
        return int(m.max_batch_items)

    async def submit_batch(
        self,
        action: Action,
        items: Sequence[BatchItem],
        certificate: core_batch.BatchCertificate | None,
    ) -> BatchOutcome:
        """Apply ``action`` to every item in one ledger invocation through the relayer and
        return once it is final, one result per item in item order (``skipped``: already
        applied, nothing moved).

        Raises as :meth:`submit`: LedgerRejected with the ledger's reason and, where one item
        caused the refusal, its index (:func:`bridge.domain.ledger_batches.refused_item`);
        InvalidInput for a request the relayer finds malformed; Unavailable for transient
        faults. SECURITY: a relayer is not trusted to report other transfers: an answer
        whose items are not exactly the sent transfer ids in order, or whose legs are not
        the ones ``action`` moves on this ledger, is BatchAnswerMismatch (an Unavailable)."""
        req = batch_request_to_pb(action, items, certificate)
        try:
            m = await self._stub.SubmitBatch(req, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, f"relayer of {self.ledger}", self.ledger) from exc
        try:
            outcome = outcome_from_pb(m)
        except InvalidInput as exc:
            raise BatchAnswerMismatch(
                f"relayer of {self.ledger} sent a malformed batch answer: {exc}"
            ) from exc
        word = LedgerId(self.ledger).word
        sent = [(i.terms.transfer_id, leg_of(action, i.terms, word)) for i in items]
        got = [(r.transfer_id, r.leg) for r in outcome.items]
        if got != sent:
            raise BatchAnswerMismatch(
                f"relayer of {self.ledger} answered a batch of {len(items)} items with"
                f" {len(got)} results that are not the sent transfers and legs in order"
            )
        return outcome

    async def close(self) -> None:
        """Close the channel."""
        await self._conn.close()


@dataclass(frozen=True, slots=True)
class LedgerDomain:
    """Where one ledger verifies claims (its network, id and bridge words)."""

    name: str
    ledger_word: bytes
    bridge_word: bytes
    network_word: bytes


MisbehaviourSink = Callable[[Misbehaviour], Awaitable[None]]


_S = TypeVar("_S", verifier_pb2.LedgerSignature, verifier_pb2.BatchRootSignature)


def _first_per_key(entries: Sequence[_S], wanted: Collection[tuple[str, int]]) -> list[_S]:
    """The entries of one member's answer worth checking: the first for each (ledger,
    epoch) this client asked for, in order; the rest are not looked at.

    SECURITY (review helper-117 #1): an answer is a member's data, up to the 4 MiB message
    limit. One member repeating an entry about 29,000 times made this client recover a
    signer (and, for a wrong digest, log and record a misbehaviour row) per copy, on the
    event loop and the database thread, at every certification: seconds of CPU and
    thousands of rows per call. A member signs each (ledger, epoch) once, so nothing valid
    is lost; the checks per answer are bounded by the keys asked for."""
    seen: set[tuple[str, int]] = set()
    out: list[_S] = []
    for entry in entries:
        key = (entry.ledger_id, entry.epoch)
        if key in wanted and key not in seen:
            seen.add(key)
            out.append(entry)
            if len(seen) == len(wanted):
                break
    return out


class CommitteeClient:
    """Gathers t-of-n certificates, checking every signature before counting it.

    A member's response that carries a signature over another digest than the one asked
    for, or an invalid signature, is not counted and is reported to ``on_misbehaviour``
    with the evidence; answers arriving after the quorum are still examined.
    """

    def __init__(
        self,
        committee: Committee,
        endpoints: Sequence[str],
        timeout: float,
        on_misbehaviour: MisbehaviourSink | None = None,
        identities: Sequence[ClientIdentity | None] | None = None,
        members: Sequence[bytes | None] | None = None,
    ) -> None:
        self.committee = committee
        # The member address behind each endpoint (None: not known): refusals are counted
        # against the committee each refusing member belongs to (certify_batch).
        addresses = list(members) if members is not None else [None] * len(endpoints)
        if len(addresses) != len(endpoints):
            raise ValueError("one member address (or None) per endpoint")
        self._member_at: dict[str, bytes | None] = dict(zip(endpoints, addresses, strict=True))
        # The members this client asks, or None when some endpoint's member is not known.
        self._asked: frozenset[bytes] | None = (
            None if None in addresses else frozenset(a for a in addresses if a is not None)
        )
        # SECURITY: with identities, the server at endpoint i must hold member role i.
        idents = list(identities) if identities is not None else [None] * len(endpoints)
        self._conns: list[ReloadingStub[verifier_pb2_grpc.VerifierServiceAsyncStub]] = [
            ReloadingStub(e, ident, verifier_pb2_grpc.VerifierServiceStub)
            for e, ident in zip(endpoints, idents, strict=True)
        ]
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._on_misbehaviour = on_misbehaviour
        self._late: set[asyncio.Task[None]] = set()
        self._log = get_logger()

    @property
    def _stubs(self) -> list[verifier_pb2_grpc.VerifierServiceAsyncStub]:
        return [c.get() for c in self._conns]

    async def _report(
        self,
        endpoint: str,
        kind: str,
        subject: str,
        detail: str,
        expected: bytes,
        signed: bytes,
        signature: bytes,
    ) -> None:
        try:
            member = recover_signer(signed, signature)
        except InvalidCertificate:
            member = b""
        incident = Misbehaviour(
            member, endpoint, kind, subject, detail, expected, signed, signature, time.time()
        )
        self._log.error(
            "committee member misbehaved",
            **{SIGNER: "0x" + member.hex(), PEER: endpoint, REASON: f"{kind}: {detail}"},
        )
        if self._on_misbehaviour is not None:
            try:
                await self._on_misbehaviour(incident)
            except Exception:
                self._log.exception("could not record misbehaviour")

    async def _ask_all(
        self,
        call: Callable[[verifier_pb2_grpc.VerifierServiceStub], Any],
        examine: Callable[[str, Any], Awaitable[None]],
    ) -> AsyncGenerator[tuple[str, Any], None]:
        """Each member's answer (or RPC error) as it arrives.

        Answers still outstanding when the caller stops iterating (a quorum was reached)
        are not cancelled: they are awaited in the background (each call has its timeout)
        and passed to ``examine``, so a member that answers last is still checked and, if
        it misbehaved, reported.
        """

        async def one(i: int) -> tuple[str, Any]:
            try:
                return self._endpoints[i], await call(self._stubs[i])
            except grpc.aio.AioRpcError as exc:
                return self._endpoints[i], exc

        tasks = {asyncio.create_task(one(i)) for i in range(len(self._stubs))}
        seen: set[asyncio.Task[tuple[str, Any]]] = set()
        try:
            while len(seen) < len(tasks):
                done, _ = await asyncio.wait(tasks - seen, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    seen.add(fut)
                    yield fut.result()
        finally:
            rest = tasks - seen
            if rest:
                drain = asyncio.create_task(self._examine_late(rest, examine))
                self._late.add(drain)
                drain.add_done_callback(self._late.discard)

    async def _examine_late(
        self,
        pending: set[asyncio.Task[tuple[str, Any]]],
        examine: Callable[[str, Any], Awaitable[None]],
    ) -> None:
        for fut in asyncio.as_completed(pending):
            endpoint, resp = await fut
            if not isinstance(resp, grpc.aio.AioRpcError):
                await examine(endpoint, resp)

    async def certify(
        self,
        kind: ClaimKind,
        terms: TransferTerms,
        ledgers: Sequence[LedgerDomain],
        epochs: Mapping[str, Sequence[Committee]] | None = None,
    ) -> Mapping[str, SignatureSet]:
        """Return a certificate per ledger, as soon as t members have validly signed for all.

        ``epochs`` names, per ledger, the committee epochs a certificate may be of, in order
        of preference (the epochs that ledger accepts now, newest active first; default: the
        network file's). A member signs under every accepted epoch it belongs to; each
        ledger's certificate is of the first epoch in that order to reach its threshold. A
        signature of an epoch not named is not counted and is no misbehaviour.
        Raises PreconditionFailed with the members' refusals when a quorum is impossible,
        Unavailable when too many members cannot be reached.
        """
        claim = Claim(kind=kind, transfer_id=terms.transfer_id, terms_hash=terms.terms_hash)
        wanted: dict[str, tuple[Committee, ...]] = {
            d.name: tuple((epochs or {}).get(d.name, ())) or (self.committee,) for d in ledgers
        }
        committees = {(n, c.epoch): c for n, cs in wanted.items() for c in cs}
        digests = {
            (d.name, c.epoch): claim_digest(
                ClaimDomain(d.ledger_word, d.bridge_word, c.epoch, d.network_word), claim
            )
            for d in ledgers
            for c in wanted[d.name]
        }
        subject = f"{kind.name} for transfer 0x{terms.transfer_id.hex()}"
        request = verifier_pb2.SignClaimRequest(kind=int(kind), terms=terms_to_pb(terms))  # type: ignore[arg-type]
        sigs: dict[tuple[str, int], list[bytes]] = {key: [] for key in digests}
        refusals: list[MemberRefusal] = []
        refusing: set[str] = set()
        unreachable: list[str] = []

        async def examine(endpoint: str, resp: verifier_pb2.SignClaimResponse) -> None:
            for s in _first_per_key(resp.signatures, sigs):
                key = (s.ledger_id, s.epoch)
                expected = digests[key]
                if s.digest != expected:
                    await self._report(
                        endpoint, "wrong-digest", subject,
                        f"signed another digest than the {kind.name} claim on {s.ledger_id}",
                        expected, s.digest, s.signature,
                    )  # fmt: skip
                    continue
                try:
                    verify_vote(committees[key], expected, s.signature)
                except InvalidCertificate as exc:
                    await self._report(
                        endpoint, "invalid-signature", subject, str(exc), expected,
                        s.digest, s.signature,
                    )  # fmt: skip
                    continue
                sigs[key].append(s.signature)

        answers = self._ask_all(
            lambda stub: stub.SignClaim(request, timeout=self._timeout), examine
        )
        async with aclosing(answers):
            async for endpoint, resp in answers:
                if isinstance(resp, grpc.aio.AioRpcError):
                    if resp.code() not in _MEMBER_REFUSALS:
                        unreachable.append(resp.code().name.lower())
                    else:
                        refusals.append(member_refusal(resp))
                        refusing.add(endpoint)
                    continue
                await examine(endpoint, resp)
                certs = self._try_assemble(digests, sigs, wanted)
                if certs is not None:
                    return certs
        need = max(c.threshold for c in committees.values())
        refused = self._beyond_spare(refusing, wanted)
        raise self._no_quorum(need, refusals, unreachable, kind.name, kind.name, refused)

    def _no_quorum(
        self,
        need: int,
        refusals: list[MemberRefusal],
        unreachable: list[str],
        refused: str,
        subject: str,
        beyond: bool,
    ) -> PreconditionFailed | Unavailable:
        """Why every member answered and no ``need`` valid signatures came of it: refused
        (PreconditionFailed) when the refusals leave a ledger without a committee that could
        still sign (``beyond``, :meth:`_beyond_spare`: review helper-109, counted per
        committee, not against every endpoint), else Unavailable while some member was
        unreachable, else too few valid signatures. The members' own words are in the
        message only; the public text names their typed reasons (:class:`MemberRefusal`)."""
        words, reasons = refused_text(refusals)
        if refusals and beyond:
            return with_public(
                PreconditionFailed(f"committee refused {refused}: {words}"),
                f"committee refused {refused}: {reasons}",
            )
        if unreachable:
            head = f"committee: {len(unreachable)} of {len(self._stubs)} members unreachable"
            return with_public(
                Unavailable(
                    f"{head}, {len(refusals)} refused; need {need}"
                    + (f" ({words})" if refusals else "")
                ),
                f"{head}; need {need}" + (f"; {reasons}" if refusals else ""),
            )
        return PreconditionFailed(f"committee did not reach {need} valid signatures for {subject}")

    async def sign_supply(
        self,
        record: SupplyRecord,
        registration: Registration,
        operator_signature: bytes,
        previous: SignedRecord | None = None,
        committee: Committee | None = None,
    ) -> tuple[bytes, ...]:
        """Return t valid member signatures over ``record``'s digest, in signer order.

        Every member re-reads the ledgers at the record's heights and signs only the same
        record. Raises PreconditionFailed when a quorum is impossible (the refusals say
        why, e.g. a Fabric block committed in between) and Unavailable when too many
        members cannot be reached.
        """
        request = verifier_pb2.SignSupplyRequest(
            record=record_to_pb(record),
            registration=registration_to_pb(registration, operator_signature),
        )
        if previous is not None:
            # The record this one chains to, certified: a member that fell behind (down
            # while the others signed, restored from a backup) continues from it.
            request.previous.CopyFrom(record_to_pb(previous.record))
            request.previous_signatures.extend(previous.signatures)
        digest = record.digest
        signing = committee or self.committee
        subject = f"supply record {record.security}#{record.sequence}"
        valid: dict[bytes, bytes] = {}
        refusals: list[MemberRefusal] = []
        unreachable = 0

        async def examine(endpoint: str, resp: verifier_pb2.SignSupplyResponse) -> None:
            if resp.digest != digest:
                await self._report(
                    endpoint, "wrong-supply-digest", subject,
                    "signed another digest than the proposed record", digest,
                    resp.digest, resp.signature,
                )  # fmt: skip
                return
            try:
                vote = verify_vote(signing, digest, resp.signature)
            except InvalidCertificate as exc:
                await self._report(
                    endpoint, "invalid-signature", subject, str(exc), digest, resp.digest,
                    resp.signature,
                )  # fmt: skip
                return
            valid.setdefault(vote.signer, vote.signature)

        answers = self._ask_all(
            lambda stub: stub.SignSupply(request, timeout=self._timeout), examine
        )
        async with aclosing(answers):
            async for endpoint, resp in answers:
                if isinstance(resp, grpc.aio.AioRpcError):
                    if resp.code() not in _MEMBER_REFUSALS:
                        unreachable += 1
                    else:
                        refusals.append(member_refusal(resp))
                    continue
                await examine(endpoint, resp)
                if len(valid) >= signing.threshold:
                    return tuple(valid[k] for k in sorted(valid))
        need = signing.threshold
        words, reasons = refused_text(refusals)
        if unreachable and len(self._stubs) - unreachable < need:
            head = f"committee: {unreachable} of {len(self._stubs)} members unreachable"
            raise with_public(
                Unavailable(head + (f" ({words})" if refusals else "")),
                head + (f"; {reasons}" if refusals else ""),
            )
        head = f"committee did not sign supply record {record.security}#{record.sequence}: "
        raise with_public(
            PreconditionFailed(head + (words or "too few valid signatures")),
            head + (reasons if refusals else "too few valid signatures"),
        )

    def _try_assemble(
        self,
        digests: Mapping[tuple[str, int], bytes],
        sigs: Mapping[tuple[str, int], list[bytes]],
        wanted: Mapping[str, Sequence[Committee]],
    ) -> dict[str, SignatureSet] | None:
        """A certificate per ledger, each of the first epoch in preference order that has
        t valid signatures; None while a ledger has none."""
        out: dict[str, SignatureSet] = {}
        for name, preference in wanted.items():
            for committee in preference:
                key = (name, committee.epoch)
                try:
                    cert = assemble_certificate(committee, digests[key], sigs[key])
                except InvalidCertificate:
                    continue
                out[name] = SignatureSet(cert.epoch, tuple(v.signature for v in cert.votes))
                break
            else:
                return None
        return out

    # ---- batched certificates (issue 14 item 3, ADR 0025) -----------------------------
    async def certify_batch(
        self,
        kind: ClaimKind,
        terms: Sequence[TransferTerms],
        ledgers: Sequence[LedgerDomain],
        epochs: Mapping[str, Sequence[Committee]] | None = None,
    ) -> Mapping[str, CertifiedBatch]:
        """Return, per ledger, a batch certificate over the ``kind`` claims of every item of
        ``terms`` (one ledger pair, distinct transfers) with each item's proof, as soon as
        t members have validly signed the same root for every ledger.

        ``ledgers`` and ``epochs`` as :meth:`certify`. Every member signature is counted
        only over the root digest this client computes itself from ``terms`` (the tree is
        deterministic: leaves sorted), so a member signing another root, count or digest
        is reported as misbehaving and not counted; the certificate (t signers ascending,
        one root) and every item's proof are checked with the endpoints' own rules before
        they are returned (:func:`bridge.coordinator.batch_certs.check_items`).
        Raises BatchItemsRefused when the members' refusals make a quorum impossible and
        they named items: it lists only the items so many members refused that fewer than
        t could sign them (index, the first refuser's reason), or none when no item was
        refused by that many (the batch then goes one item at a time). PreconditionFailed
        for other refusals, Unavailable when too many members cannot be reached,
        InvalidInput for a malformed batch (no item, a transfer twice).

        SECURITY (review helper-107): an item is dropped for the refusals of more than
        ``n - t`` members, never for one member's word: one member refusing every item
        (below the threshold, faulty or hostile) beside an honest refusal of one item
        drops that item, not the batch. Review helper-108: ``n`` and ``t`` are those of each
        committee a ledger accepts (the endpoints also reach members of other epochs): an
        item is refused when, for some ledger, every committee it accepts has more
        refusing members than its size less its threshold (:meth:`_beyond_spare`).
        """
        wanted: dict[str, tuple[Committee, ...]] = {
            d.name: tuple((epochs or {}).get(d.name, ())) or (self.committee,) for d in ledgers
        }
        domains = {d.name: d for d in ledgers}
        committees = {(n, c.epoch): c for n, cs in wanted.items() for c in cs}
        batches = {
            (d.name, c.epoch): ledger_batch(d, c.epoch, kind, terms)
            for d in ledgers
            for c in wanted[d.name]
        }
        subject = f"{kind.name} batch of {len(terms)} transfers"
        request = verifier_pb2.SignClaimsRequest(
            kind=int(kind),  # type: ignore[arg-type]
            items=[terms_to_pb(t) for t in terms],
        )
        sigs: dict[tuple[str, int], list[bytes]] = {key: [] for key in batches}
        refused: dict[int, list[RefusedItem]] = {}  # per item index, each member's refusal
        refusers: dict[int, set[str]] = {}  # per item index, the endpoints that refused it
        refusing: set[str] = set()
        refusals: list[MemberRefusal] = []
        unreachable: list[str] = []

        async def examine(endpoint: str, resp: verifier_pb2.SignClaimsResponse) -> None:
            for s in _first_per_key(resp.signatures, sigs):
                key = (s.ledger_id, s.epoch)
                b = batches[key]
                if (s.root, s.count, s.digest) != (b.root, b.count, b.digest):
                    await self._report(
                        endpoint, "wrong-batch-digest", subject,
                        f"signed another batch root than the {kind.name} batch on {s.ledger_id}",
                        b.digest, s.digest, s.signature,
                    )  # fmt: skip
                    continue
                try:
                    verify_vote(committees[key], b.digest, s.signature)
                except InvalidCertificate as exc:
                    await self._report(
                        endpoint, "invalid-signature", subject, str(exc), b.digest,
                        s.digest, s.signature,
                    )  # fmt: skip
                    continue
                sigs[key].append(s.signature)

        def assembled() -> dict[str, CertifiedBatch] | None:
            out: dict[str, CertifiedBatch] = {}
            for name, preference in wanted.items():
                for committee in preference:
                    key = (name, committee.epoch)
                    try:
                        cert = assemble_batch(committee, batches[key], sigs[key])
                    except InvalidCertificate:
                        continue
                    out[name] = check_items(domains[name], committee, batches[key], cert, terms)
                    break
                else:
                    return None
            return out

        answers = self._ask_all(
            lambda stub: stub.SignClaims(request, timeout=self._timeout), examine
        )
        async with aclosing(answers):
            async for endpoint, resp in answers:
                if isinstance(resp, grpc.aio.AioRpcError):
                    if resp.code() not in _MEMBER_REFUSALS:
                        unreachable.append(resp.code().name.lower())
                        continue
                    refusals.append(member_refusal(resp))
                    # SECURITY: a member's list is data; it can name only items of this
                    # batch (refused_items drops anything beyond it).
                    refusing.add(endpoint)
                    named = {item.index: item for item in refusal_of(resp, len(terms))}
                    for index, item in named.items():
                        refused.setdefault(index, []).append(item)
                        refusers.setdefault(index, set()).add(endpoint)
                    continue
                await examine(endpoint, resp)
                certs = assembled()
                if certs is not None:
                    return certs
        need = max(c.threshold for c in committees.values())
        refused_all = self._beyond_spare(refusing, wanted)
        if refused and refused_all:
            raise BatchItemsRefused(
                agreed(items) for i, items in refused.items()
                if self._beyond_spare(refusers[i], wanted)
            )  # fmt: skip
        raise self._no_quorum(need, refusals, unreachable, f"the {subject}", subject, refused_all)

    def _beyond_spare(self, refusers: set[str], wanted: Mapping[str, Sequence[Committee]]) -> bool:
        """Whether refusals by the members at ``refusers`` leave some ledger of ``wanted``
        without a committee that could still reach its threshold: each committee can
        absorb as many refusals by its own members as it has members this client asks
        (members without an endpoint sign nothing) less its threshold. With an
        endpoint whose member is not known, every refusal counts against every committee,
        and the committees' largest threshold against all the endpoints (the rule before
        member addresses were known: never fewer refusals absorbed than members asked)."""
        asked = self._asked  # a member without an endpoint signs nothing
        if asked is None:
            need = max(c.threshold for cs in wanted.values() for c in cs)
            return len(refusers) > len(self._endpoints) - need
        who = {self._member_at[e] for e in refusers}
        return any(
            all(
                len(who & set(c.members)) > len(asked & set(c.members)) - c.threshold
                for c in preference
            )
            for preference in wanted.values()
        )

    # ----

    async def close(self) -> None:
        """Stop examining late answers and close every channel."""
        for t in list(self._late):
            t.cancel()
        for c in self._conns:
            await c.close()
