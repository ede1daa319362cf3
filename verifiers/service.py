"""The verifier's gRPC service: check the ledgers, record the vote, sign per ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence

from bridge.core.batch import BatchClaim, build_batch
from bridge.core.reasons import ErrorReason
from bridge.domain.claim_batches import ClaimsRefused, RefusedItem
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, EpochWindow, recover_signer
from bridge.domain.errors import (
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
)
from bridge.domain.ids import SecurityId
from bridge.domain.issuance import Registration, verify_instruction
from bridge.domain.legs import Leg, LegState, LegStatus
from bridge.domain.rotation import (
    RotationBounds,
    RotationRefused,
    check_proposal,
    member_epochs,
)
from bridge.domain.signer import Signer
from bridge.domain.supply import SignedRecord, SupplyReading, SupplyRecord, make_record
from bridge.domain.terms import TransferTerms
from bridge.ledgers.adapter import LedgerReader
from bridge.ledgers.kinds import holder_direct_locks
from bridge.ledgers.many_legs import read_legs
from bridge.logfields import SECURITY, SEQUENCE, STATE, TRANSFER, get_logger
from bridge.rpc.claims_refusal import refused_item, with_item_refusals
from bridge.rpc.convert import terms_from_pb
from bridge.rpc.errors import Context, grpc_errors
from bridge.rpc.rotation_convert import proposal_from_pb
from bridge.rpc.supply_convert import record_from_pb, registration_from_pb
from bridge.v1 import verifier_pb2, verifier_pb2_grpc
from verifiers.metrics import observed
from verifiers.policy import (
    check_abort_unknown_target,
    check_claim,
    check_commit_delay,
    is_instructed,
    outcome_applied,
)
from verifiers.rotation_log import RotationLog
from verifiers.supply_log import PendingAnchor, SupplyAnchorInvalid, SupplyLog, SupplyRefused
from verifiers.votes import Vote, VoteLog, VotesRefused

CATCH_UP_S = 2.0
"""How long a member waits for its own node to reach a proposed supply height."""

MAX_ANCHOR_SIGNATURES = 512
"""More signatures than any committee can have (2t > n and t < 256 bound n by 509)."""

EPOCHS_TTL_S = 1.0
"""How long a member reuses its read of a ledger's accepted committee epochs."""


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    """Signs only what this member's own finalized reads of both ledgers support."""

    def __init__(
        self,
        signer: Signer,
        committee: Committee,
        readers: Mapping[bytes, LedgerReader],
        votes: VoteLog,
        supply_log: SupplyLog | None = None,
        supply_operators: Collection[bytes] = (),
        max_clock_skew: float = 60.0,
        max_height_lag: int = 64,
        *,
        network_words: Mapping[str, bytes] | None = None,
        instruction_keys: Mapping[str, frozenset[bytes]] | None = None,
        later_members: Collection[bytes] = (),
        rotations: RotationLog | None = None,
        rotation_bounds: RotationBounds | None = None,
        max_batch_claims: int = 1000,
    ) -> None:
        self._signer = signer
        self._max_batch_claims = max_batch_claims  # ---- batched certificates (ADR 0025)
        # ---- committee rotation (ADR 0009): ``committee`` is the network file's epoch (the
        # trust anchor); the epochs this member signs under are read from each ledger.
        self._rotations = rotations
        # SECURITY (review finding 1): the only keys this member ever signs a rotation to.
        self._known_members = frozenset(committee.members) | frozenset(later_members)
        self._rotation_bounds = rotation_bounds or RotationBounds()
        self._epoch_cache: dict[str, tuple[float, tuple[EpochWindow, ...]]] = {}
        # Protocol v2: per ledger name, the network word of the network file (what this
        # member's own node must be on) and the registered instruction keys.
        self._network_words = dict(network_words or {})
        self._verified_networks: dict[str, bytes] = {}
        self._instruction_keys = dict(instruction_keys or {})
        self._supply_log = supply_log
        self._operators = frozenset(supply_operators)
        self._max_skew_ms = int(max_clock_skew * 1000)
        self._max_lag = max_height_lag
        self._readers_by_name = {r.ledger.name: r for r in readers.values()}
        self._committee = committee
        self._readers = dict(readers)
        self._votes = votes
        self._log = get_logger(signer="0x" + signer.address.hex())
        if not committee.is_member(signer.address) and signer.address not in later_members:
            raise InvalidInput(
                f"key 0x{signer.address.hex()} is not in committee epoch {committee.epoch}"
                " nor among the network file's later members"
            )

    @grpc_errors
    async def GetIdentity(
        self, request: verifier_pb2.GetIdentityRequest, context: Context
    ) -> verifier_pb2.VerifierIdentity:
        """This member's address and epoch."""
        mine = [c.epoch for c in await self._known_epochs() if c.is_member(self._signer.address)]
        return verifier_pb2.VerifierIdentity(
            address=self._signer.address, epoch=max(mine, default=self._committee.epoch)
        )

    # ---- committee rotation (ADR 0009) ------------------------------------------------
    async def _windows(self, reader: LedgerReader, fresh: bool = False) -> tuple[EpochWindow, ...]:
        """The epochs ``reader``'s ledger accepts now or will, from this member's own read
        (reused for :data:`EPOCHS_TTL_S`; ``fresh`` reads again)."""
        name = reader.ledger.name
        now = time.monotonic()
        cached = self._epoch_cache.get(name)
        if cached is not None and not fresh and now - cached[0] < EPOCHS_TTL_S:
            return cached[1]
        windows = tuple(await reader.committees())
        self._epoch_cache[name] = (now, windows)
        return windows

    async def _signing_epochs(self, reader: LedgerReader) -> tuple[Committee, ...]:
        """The epochs this member signs ``reader``'s claims under: every epoch the ledger
        accepts (now or later) that has this member, newest first.

        SECURITY: read from the member's own node, never from the caller, so a member
        removed by a rotation stops signing for a ledger once that ledger no longer
        accepts its epoch, and a new member signs only once its epoch is installed.
        """
        mine = member_epochs(await self._windows(reader), self._signer.address)
        if not mine:
            raise PreconditionFailed(
                f"this member is in no committee epoch ledger {reader.ledger.name} accepts"
            )
        return mine

    async def _known_epochs(self) -> list[Committee]:
        """The genesis epoch and every epoch some watched ledger accepts."""
        known = {self._committee.epoch: self._committee}
        for reader in self._readers.values():
            for w in await self._windows(reader):
                known.setdefault(w.committee.epoch, w.committee)
        return [known[e] for e in sorted(known)]

    async def _supply_committee(self, epoch: int) -> Committee:
        """The committee of ``epoch`` if this member belongs to it and a watched ledger
        accepts it now (the genesis epoch when this member watches no ledger); else
        SupplyRefused. An epoch retired by a rotation signs no new record."""
        accepted: dict[int, Committee] = {}
        for reader in self._readers.values():
            for w in await self._windows(reader):
                accepted.setdefault(w.committee.epoch, w.committee)
        if not self._readers:
            accepted[self._committee.epoch] = self._committee
        c = accepted.get(epoch)
        if c is None or not c.is_member(self._signer.address):
            raise SupplyRefused(f"record epoch {epoch} is not an accepted epoch of this member")
        return c

    @grpc_errors
    @observed("rotation")  # ---- observability: refusals logged and counted
    async def SignRotation(
        self, request: verifier_pb2.SignRotationRequest, context: Context
    ) -> verifier_pb2.SignRotationResponse:
        """Certify the proposed rotation for each named ledger (this member is in the
        certifying epoch), or consent to it (this member is a NEW member of the proposal),
        after checking it on that ledger through this member's own reader.

        SECURITY: every member of the proposal must be in this member's network file
        (genesis committee or ``[[committee.later]]``), so a caller cannot rotate to keys
        of its own. For every ledger first (nothing is signed unless all pass): the next
        epoch is that ledger's latest installed epoch + 1; activation and overlap are in
        this member's bounds. A certifying member also requires each new member's consent
        (its signature over that ledger's rotation digest: the key exists and agrees);
        only then does the rotation vote log record the proposal (one committee per next
        epoch, ever, fsync'd) before any signature is made. A consent certifies nothing
        (the signer is not in the certifying epoch) and is tagged ``epoch = next_epoch``.
        """
        if self._rotations is None:
            raise PreconditionFailed("this member has no rotation vote log configured")
        proposal = proposal_from_pb(request.proposal)
        if not request.ledger_ids:
            raise InvalidInput("name at least one ledger to sign the rotation for")
        unknown = [m for m in proposal.members if m not in self._known_members]
        if unknown:
            raise RotationRefused(
                "members not in this member's network file (genesis committee or"
                " [[committee.later]]): " + ", ".join("0x" + m.hex() for m in unknown)
            )
        readers = []
        for name in dict.fromkeys(request.ledger_ids):
            reader = self._readers_by_name.get(name)
            if reader is None:
                raise NotFound(f"ledger {name} is not a ledger this member watches")
            readers.append(reader)
        now = time.time()
        me = self._signer.address
        certifying: list[Committee] = []
        for reader in readers:
            windows = await self._windows(reader, fresh=True)
            consenting = me in proposal.members and not any(
                w.committee.epoch == proposal.certifying_epoch and w.committee.is_member(me)
                for w in windows
            )
            try:
                certifying.append(
                    check_proposal(
                        proposal,
                        windows,
                        self._rotation_bounds,
                        now,
                        None if consenting else me,
                    )
                )
            except RotationRefused as exc:
                raise RotationRefused(f"{reader.ledger.name}: {exc}") from None
        digests = [
            proposal.digest(await self._network_word(r), r.ledger.word, r.bridge_word)
            for r in readers
        ]
        consent_only = all(not c.is_member(me) for c in certifying)
        if not consent_only:
            if any(not c.is_member(me) for c in certifying):
                raise RotationRefused("this member certifies on some named ledgers only")
            for reader, committee, digest in zip(readers, certifying, digests, strict=True):
                self._check_consents(
                    request, reader.ledger.name, committee, proposal.members, digest
                )
            self._rotations.record(proposal)
        out = verifier_pb2.SignRotationResponse(signer=me)
        for reader, digest in zip(readers, digests, strict=True):
            out.signatures.append(
                verifier_pb2.LedgerSignature(
                    ledger_id=reader.ledger.name,
                    epoch=proposal.next_epoch if consent_only else proposal.certifying_epoch,
                    digest=digest,
                    signature=self._signer.sign_digest(digest),
                )
            )
        self._log.info(
            "rotation consented" if consent_only else "rotation signed",
            next_epoch=proposal.next_epoch,
        )
        return out

    @staticmethod
    def _check_consents(
        request: verifier_pb2.SignRotationRequest,
        ledger: str,
        certifying: Committee,
        members: tuple[bytes, ...],
        digest: bytes,
    ) -> None:
        """Raise RotationRefused unless every member of ``members`` outside ``certifying``
        signed ``digest`` (ledger ``ledger``) among ``request.consents``."""
        consented: set[bytes] = set()
        for c in request.consents:
            if c.ledger_id != ledger or c.digest != digest:
                continue
            try:
                consented.add(recover_signer(digest, c.signature))
            except InvalidCertificate:
                continue
        missing = [m for m in members if not certifying.is_member(m) and m not in consented]
        if missing:
            raise RotationRefused(
                f"{ledger}: no consent over the rotation digest from new members "
                + ", ".join("0x" + m.hex() for m in missing)
            )

    # ----

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

    async def _network_word(self, reader: LedgerReader) -> bytes:
        """The network word to sign ``reader``'s claims with, once this member's own node
        has been seen on that network.

        SECURITY: a member signs only for the network the network file names, and only
        after its own node reported the same (EVM chain id, Fabric genesis block hash), so
        its signatures cannot be used on a deployment that reused names and keys.
        """
        name = reader.ledger.name
        verified = self._verified_networks.get(name)
        if verified is not None:
            return verified
        expected = self._network_words.get(name)
        if expected is None:
            raise PreconditionFailed(f"no network word configured for ledger {name}")
        actual = await reader.network_word()
        if actual != expected:
            raise PreconditionFailed(
                f"this member's node for ledger {name} is on network 0x{actual.hex()}, the"
                f" network file names 0x{expected.hex()}: refusing to sign"
            )
        self._verified_networks[name] = actual
        return actual

    @grpc_errors
    @observed("claim")  # ---- observability: refusals logged and counted
    async def SignClaim(
        self, request: verifier_pb2.SignClaimRequest, context: Context
    ) -> verifier_pb2.SignClaimResponse:
        """Sign LOCKED for the target, or COMMIT/ABORT for both ledgers, if the ledgers agree."""
        kind = _claim_kind(request.kind)
        terms = terms_from_pb(request.terms)
        src, dst = self._route(kind, terms)
        tid, th = terms.transfer_id, terms.terms_hash
        confirmed = await self._check_item(kind, terms, (tid, th), src, dst)
        if kind is not ClaimKind.LOCKED:
            self._votes.record(tid, kind, th, confirmed=confirmed)
        return await self._sign(kind, tid, th, _signing_ledgers(kind, src, dst))

    def _route(
        self, kind: ClaimKind, terms: TransferTerms
    ) -> tuple[LedgerReader, LedgerReader | None]:
        """The readers of ``terms``' source and target ledgers; the target is None for an
        ABORT towards a target this member does not know (NotFound / InvalidInput for any
        other claim, or an unknown source)."""
        src = self._reader(terms.src_ledger, terms.src_bridge, "source")
        try:
            dst = self._reader(terms.dst_ledger, terms.dst_bridge, "target")
        except (NotFound, InvalidInput):
            if kind is not ClaimKind.ABORT:
                raise
            return src, None
        return src, dst

    async def _check_item(
        self,
        kind: ClaimKind,
        terms: TransferTerms,
        key: tuple[bytes, bytes],
        src: LedgerReader,
        dst: LedgerReader | None,
    ) -> bool:
        """Return if this member may sign ``kind`` for ``terms`` by its own finalized reads
        of both legs (:meth:`_judge`), else raise the refusal. Records nothing.

        ``key``: ``terms``' transfer id and terms hash (computed once by the caller).
        ``dst`` None: an ABORT towards an unknown target.
        """
        tid = key[0]
        if dst is None:
            source = await src.get_leg(tid, Leg.OUTBOUND)
            return self._judge(kind, terms, key, src, source, None)
        source, target = await asyncio.gather(
            src.get_leg(tid, Leg.OUTBOUND), dst.get_leg(tid, Leg.INBOUND)
        )
        return self._judge(kind, terms, key, src, source, target)

    def _judge(
        self,
        kind: ClaimKind,
        terms: TransferTerms,
        key: tuple[bytes, bytes],
        src: LedgerReader,
        source: LegStatus,
        target: LegStatus | None,
    ) -> bool:
        """Return if this member may sign ``kind`` for ``terms`` given the finalized legs
        it read itself (:mod:`verifiers.policy`), else raise the refusal. The ONE per-item
        rule of SignClaim and SignClaims; reads and records nothing.

        Returns whether a ledger already shows the decision applied (the vote log's
        ``confirmed``). ``target`` None: an ABORT towards an unknown target.
        """
        th = key[1]
        if target is None:
            # SECURITY: a target this member does not know was never certified LOCKED by
            # it (nor by any member with the same network file): the source lock can only
            # be released. Signed for the source ledger alone; recorded in the vote log.
            check_abort_unknown_target(th, source)
            return source.state is LegState.RELEASED
        instructed = is_instructed(
            self._instruction_keys.get(src.ledger.name, frozenset()),
            holder_direct_locks(src.kind),
            terms.sender,
            terms.instructor,
        )
        check_claim(kind, th, source, target, instructed=instructed)
        if kind is ClaimKind.COMMIT:  # ---- flow limits: a large transfer's delay
            check_commit_delay(source, target, time.time())
        return outcome_applied(kind, source, target)

    # ---- batched certificates (issue 14, ADR 0025) -------------------------------------
    @grpc_errors
    @with_item_refusals
    @observed("claims")  # refusals logged and counted like SignClaim's
    async def SignClaims(
        self, request: verifier_pb2.SignClaimsRequest, context: Context
    ) -> verifier_pb2.SignClaimsResponse:
        """Sign one batch root per ledger and epoch over the claims of many transfers, if
        this member would sign every item alone (:meth:`sign_claims`)."""
        kind = _claim_kind(request.kind)
        count = len(request.items)
        if not 0 < count <= self._max_batch_claims:
            raise InvalidInput(f"a batch carries 1 to {self._max_batch_claims} items, not {count}")
        items: list[TransferTerms] = []
        for i, pb in enumerate(request.items):
            try:
                items.append(terms_from_pb(pb))
            except InvalidInput as exc:
                raise InvalidInput(f"item {i}: {exc}") from None
        return await self.sign_claims(kind, items)

    async def sign_claims(
        self, kind: ClaimKind, items: Sequence[TransferTerms]
    ) -> verifier_pb2.SignClaimsResponse:
        """Check every item exactly as SignClaim does, then record and sign all or nothing.

        Guarantees, in order: 1 to ``max_batch_claims`` items (InvalidInput), distinct
        transfer ids (InvalidInput naming the duplicates), one source ledger and endpoint
        and one target ledger and endpoint for all (InvalidInput); the ledgers resolved
        as SignClaim resolves them. Then every item is checked by SignClaim's rule
        (:meth:`_judge`) on legs this member read itself at finality, each side of the
        batch in as few ledger calls as its kind allows (:meth:`_read_legs`); any
        refusal refuses the batch (ClaimsRefused listing EVERY refused item by index
        with SignClaim's reason), nothing signed, nothing recorded. For COMMIT/ABORT
        every item's decision is then recorded in ONE vote-log transaction (a conflict
        with an earlier decision refuses the batch the same way, nothing recorded) before
        any signature is made. A replayed batch re-records nothing and signs the same
        root again.

        SECURITY: the per-item rule is SignClaim's own function, so a batch never
        certifies what the member would refuse alone, and the vote log's COMMIT/ABORT
        exclusivity holds per item whether it was signed alone or in any batch.
        """
        if not 0 < len(items) <= self._max_batch_claims:
            raise InvalidInput(
                f"a batch carries 1 to {self._max_batch_claims} items, not {len(items)}"
            )
        keys = [(t.transfer_id, t.terms_hash) for t in items]  # each hashed once
        first_seen: dict[bytes, int] = {}
        duplicates: list[str] = []
        for i, (tid, _) in enumerate(keys):
            if tid in first_seen:
                duplicates.append(f"item {i} repeats item {first_seen[tid]}")
            first_seen.setdefault(tid, i)
        if duplicates:
            raise InvalidInput("duplicate transfer ids in the batch: " + ", ".join(duplicates))
        pair = _ledger_pair(items[0])
        mixed = [i for i, t in enumerate(items) if _ledger_pair(t) != pair]
        if mixed:
            raise InvalidInput(
                "every item of a batch has item 0's source and target ledgers and endpoints;"
                f" items {mixed[:10]} do not"
            )
        src, dst = self._route(kind, items[0])
        sources, targets = await self._read_legs(keys, src, dst)
        outcomes: list[bool | RefusedItem] = []
        for i, terms in enumerate(items):
            try:
                target = None if targets is None else targets[i]
                outcomes.append(self._judge(kind, terms, keys[i], src, sources[i], target))
            except PreconditionFailed as exc:
                outcomes.append(refused_item(i, exc))
        refused = [o for o in outcomes if isinstance(o, RefusedItem)]
        if refused:
            raise ClaimsRefused(refused)
        if kind is not ClaimKind.LOCKED:
            try:
                self._votes.record_many(
                    [
                        Vote(tid, kind, th, confirmed=bool(o))
                        for (tid, th), o in zip(keys, outcomes, strict=True)
                    ]
                )
            except VotesRefused as exc:
                raise ClaimsRefused([refused_item(i, e) for i, e in exc.refused.items()]) from None
        return await self._sign_batch(kind, keys, _signing_ledgers(kind, src, dst))

    @staticmethod
    async def _read_legs(
        keys: Sequence[tuple[bytes, bytes]], src: LedgerReader, dst: LedgerReader | None
    ) -> tuple[list[LegStatus], list[LegStatus] | None]:
        """The source (outbound) and target (inbound) legs of every transfer in ``keys``,
        in order, each at (at least) its ledger's finalized height, as :meth:`_check_item`
        reads one: one ``get_legs`` per side and chunk where the kind answers many (one lens
        call on EVM, one ``Legs`` evaluate per chunk on Fabric, not two evaluates per leg),
        else a bounded number of single reads. A failed read fails the request, typed as it
        came; an answer of another length is ``LedgerRejected(MALFORMED_ANSWER)``, as the
        kinds' codecs type a malformed answer (never a leg judged for another transfer)."""
        tids = [tid for tid, _ in keys]
        if dst is None:
            sources, targets = await read_legs(src, tids, Leg.OUTBOUND), None
        else:
            sources, targets = await asyncio.gather(
                read_legs(src, tids, Leg.OUTBOUND), read_legs(dst, tids, Leg.INBOUND)
            )
        for side, legs in (("source", sources), ("target", targets)):
            if legs is not None and len(legs) != len(tids):
                raise LedgerRejected(
                    ErrorReason.MALFORMED_ANSWER,
                    f"{side} ledger answered {len(legs)} legs for {len(tids)}",
                )
        return sources, targets

    async def _signing_domains(
        self, ledgers: list[LedgerReader]
    ) -> list[tuple[LedgerReader, ClaimDomain]]:
        """Every claim domain this member signs under for ``ledgers``, in order: each
        ledger's own endpoint and verified network word, under each epoch it signs in there
        (a key in both epochs of an overlap signs under each; the coordinator takes the
        epoch the ledger prefers)."""
        epochs = [await self._signing_epochs(reader) for reader in ledgers]
        out = []
        for reader, committees in zip(ledgers, epochs, strict=True):
            network = await self._network_word(reader)
            for committee in committees:
                domain = ClaimDomain(
                    reader.ledger.word, reader.bridge_word, committee.epoch, network
                )
                out.append((reader, domain))
        return out

    async def _sign_batch(
        self, kind: ClaimKind, keys: Sequence[tuple[bytes, bytes]], ledgers: list[LedgerReader]
    ) -> verifier_pb2.SignClaimsResponse:
        """This member's signatures over the batch root digest of the claims about ``keys``
        (transfer id, terms hash) for each of ``ledgers`` and each epoch it signs under
        there (ADR 0025)."""
        out = verifier_pb2.SignClaimsResponse(signer=self._signer.address)
        for reader, domain in await self._signing_domains(ledgers):
            batch = build_batch(
                [
                    BatchClaim(
                        domain.network,
                        domain.ledger,
                        domain.contract,
                        domain.epoch,
                        int(kind),
                        tid,
                        th,
                    )
                    for tid, th in keys
                ]
            )
            digest = batch.digest
            out.signatures.append(
                verifier_pb2.BatchRootSignature(
                    ledger_id=reader.ledger.name,
                    epoch=domain.epoch,
                    root=batch.root,
                    count=batch.count,
                    digest=digest,
                    signature=self._signer.sign_digest(digest),
                )
            )
        self._log.info("claims signed", count=len(keys), **{STATE: kind.name})
        return out

    # ----

    async def _sign(
        self, kind: ClaimKind, tid: bytes, th: bytes, ledgers: list[LedgerReader]
    ) -> verifier_pb2.SignClaimResponse:
        """This member's signatures over the claim for each of ``ledgers`` (each with the
        ledger's own claim domain and verified network word)."""
        claim = Claim(kind=kind, transfer_id=tid, terms_hash=th)
        out = verifier_pb2.SignClaimResponse(signer=self._signer.address)
        for reader, domain in await self._signing_domains(ledgers):
            digest = claim_digest(domain, claim)
            out.signatures.append(
                verifier_pb2.LedgerSignature(
                    ledger_id=reader.ledger.name,
                    epoch=domain.epoch,
                    digest=digest,
                    signature=self._signer.sign_digest(digest),
                )
            )
        self._log.info("claim signed", **{TRANSFER: "0x" + tid.hex(), STATE: kind.name})
        return out

    @grpc_errors
    @observed("supply")  # ---- observability: refusals logged and counted
    async def SignSupply(
        self, request: verifier_pb2.SignSupplyRequest, context: Context
    ) -> verifier_pb2.SignSupplyResponse:
        """Sign a supply record if this member's own reads at its heights rebuild it exactly.

        Checks, in order: the registration is signed by a supply operator and is the one
        the record names; the record covers exactly the registered ledgers and no watched
        ledger where the security exists is left out; it is fresh; every ledger reads the
        same figures and block hash at the record's height; the record, rebuilt from those
        reads, has the same digest; and it extends the chain this member signed without
        anything going back (``verifiers/supply_log.py``: sequence = last + 1 over the last
        digest, the tip again, sequence 1 first, or after a committee-certified
        ``previous`` record). An anchor with more signatures than the committee has
        members is refused first; otherwise its signatures are recovered only when the chain
        rule needs it, after every other check, at most t distinct ones. A refusal records
        nothing.
        """
        if self._supply_log is None:
            raise PreconditionFailed("this member does not attest supply")
        proposed = record_from_pb(request.record)
        anchor = await self._anchor(request)
        registration, op_sig = registration_from_pb(request.registration)
        self._check_registration(proposed, registration, op_sig)
        now_ms = int(time.time() * 1000)
        if abs(now_ms - proposed.produced_at_ms) > self._max_skew_ms:
            raise SupplyRefused("record timestamp is too far from this member's clock")
        committee = await self._supply_committee(proposed.epoch)
        security = SecurityId(proposed.security)
        mine = await asyncio.gather(
            *(self._read_at(security, r) for r in proposed.readings),
            *(
                self._check_absent(security, name)
                for name in self._readers_by_name
                if name not in dict(registration.totals)
            ),
        )
        readings = [r for r in mine if r is not None]
        rebuilt = make_record(
            security=proposed.security,
            sequence=proposed.sequence,
            previous_hash=proposed.previous_hash,
            epoch=committee.epoch,
            produced_at_ms=proposed.produced_at_ms,
            readings=readings,
            registered=dict(registration.totals),
            registration_version=registration.version,
            partition=proposed.partition,
        )
        if rebuilt.digest != proposed.digest:
            raise SupplyRefused("the record's identity figures do not follow from its readings")
        self._supply_log.check_and_record(rebuilt, anchor)
        signature = self._signer.sign_digest(rebuilt.digest)
        self._log.info(
            "supply record signed",
            **{SECURITY: proposed.security, SEQUENCE: proposed.sequence},
        )
        return verifier_pb2.SignSupplyResponse(
            signer=self._signer.address, digest=rebuilt.digest, signature=signature
        )

    async def _anchor(self, request: verifier_pb2.SignSupplyRequest) -> PendingAnchor | None:
        """The request's ``previous`` record with its signatures, checked only if needed.

        More signatures than the committee has members are refused here, before anything
        else is read; the signatures themselves are recovered by the supply log only when
        the chain rule needs the anchor (a gap or a diverged tip), after every other check.
        """
        if not request.HasField("previous"):
            return None
        # The largest committee this member knows of, without reading a ledger (the genesis
        # and the epochs last read): an oversized anchor costs no read and no recovery.
        n = max(
            len(w.committee.members)
            for windows in [(EpochWindow(self._committee, 0, None),)]
            + [cached for _, cached in self._epoch_cache.values()]
            for w in windows
        )
        # SECURITY: cheap refusal first, so an oversized request costs no recovery at all:
        # against the largest committee known without a read; only a count within
        # MAX_ANCHOR_SIGNATURES above it makes this member read the ledgers' epochs first.
        count = len(request.previous_signatures)
        known: dict[int, Committee] = {}
        if n < count <= MAX_ANCHOR_SIGNATURES:
            # A committee this member has not read yet may be larger: read, then decide.
            known = {c.epoch: c for c in await self._known_epochs()}
            n = max([n, *(len(c.members) for c in known.values())])
        if count > n:
            raise SupplyAnchorInvalid(
                f"the anchor carries {count} signatures, the committee has {n} members"
            )
        previous = record_from_pb(request.previous)
        known = known or {c.epoch: c for c in await self._known_epochs()}
        if previous.epoch not in known:
            raise SupplyAnchorInvalid(f"the anchor's epoch {previous.epoch} is not known here")
        # SECURITY: the anchor lets this member skip ahead, so it must carry t of n member
        # signatures (of its own epoch, one this member reads on a ledger) over its
        # recomputed digest; the coordinator's word is not enough.
        return PendingAnchor(
            SignedRecord(previous, tuple(bytes(s) for s in request.previous_signatures)),
            known[previous.epoch],
        )

    def _check_registration(
        self, record: SupplyRecord, registration: Registration, signature: bytes
    ) -> None:
        verify_instruction(self._operators, registration, signature)
        if registration.security != record.security:
            raise SupplyRefused("the registration is for another security")
        if registration.version != record.registration_version:
            raise SupplyRefused(
                f"record names registration version {record.registration_version},"
                f" the registration sent is version {registration.version}"
            )
        if registration.totals != record.registered:
            raise SupplyRefused("record's registered figures are not the registration's")
        assert self._supply_log is not None
        floor = self._supply_log.registration_version(record.security)
        if registration.version < floor:
            raise SupplyRefused(
                f"registration version {registration.version} is older than version {floor}"
                " this member already attested"
            )
        ledgers = [r.ledger for r in record.readings]
        if ledgers != [name for name, _ in registration.totals]:
            raise SupplyRefused("record must read exactly the ledgers the registration names")
        for name in ledgers:
            if name not in self._readers_by_name:
                raise NotFound(f"ledger {name} is not a ledger this member watches")

    async def _read_at(self, security: SecurityId, proposed: SupplyReading) -> SupplyReading:
        reader = self._readers_by_name[proposed.ledger]
        final = await reader.finalized_height()
        # This member's node may be a block behind the coordinator's: give it a moment.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CATCH_UP_S
        while proposed.height > final and loop.time() < give_up:
            await asyncio.sleep(0.05)
            final = await reader.finalized_height()
        if proposed.height > final:
            raise SupplyRefused(
                f"{proposed.ledger}: height {proposed.height} is not final here yet ({final})"
            )
        if final - proposed.height > self._max_lag:
            raise SupplyRefused(
                f"{proposed.ledger}: height {proposed.height} is {final - proposed.height}"
                f" blocks old (at most {self._max_lag})"
            )
        try:
            mine = await reader.supply(security, proposed.height)
        except InvalidInput as exc:  # e.g. Fabric committed a block since the proposal
            raise SupplyRefused(
                f"{proposed.ledger}: cannot read at {proposed.height}: {exc}"
            ) from None
        if mine != proposed:
            raise SupplyRefused(
                f"{proposed.ledger} at height {proposed.height} reads differently here"
                + ("" if mine.block_hash == proposed.block_hash else " (other block hash)")
            )
        return mine

    async def _check_absent(self, security: SecurityId, ledger: str) -> None:
        try:
            await self._readers_by_name[ledger].supply(security)
        except NotFound:
            return
        raise SupplyRefused(
            f"{security.isin} exists on {ledger}, which the registration leaves out"
        )


def _claim_kind(value: int) -> ClaimKind:
    """The request's claim kind; InvalidInput for anything but LOCKED, COMMIT or ABORT."""
    try:
        return ClaimKind(value)
    except ValueError:
        raise InvalidInput("kind must be LOCKED, COMMIT or ABORT") from None


def _signing_ledgers(
    kind: ClaimKind, src: LedgerReader, dst: LedgerReader | None
) -> list[LedgerReader]:
    """The ledgers a claim is signed for: LOCKED the target; COMMIT and ABORT both (the
    source alone for an ABORT towards an unknown target)."""
    if dst is None:
        return [src]
    return [dst] if kind is ClaimKind.LOCKED else [src, dst]


def _ledger_pair(terms: TransferTerms) -> tuple[bytes, bytes, bytes, bytes]:
    """What every item of one batch shares: source and target ledger and endpoint."""
    return (terms.src_ledger, terms.src_bridge, terms.dst_ledger, terms.dst_bridge)
