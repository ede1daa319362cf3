"""The coordinator's side of a committee rotation (ADR 0009): record the operator's
proposal (with the evidence against a removed member), keep the member signatures the
operator hands in once they verify, and install the certified rotation on every ledger
through its relayer, level-triggered: every pass re-reads each ledger and does what is
still missing, so a coordinator killed at any point finishes the job when it restarts.

The coordinator never asks members to sign a rotation (only the bridge operator may), so a
compromised coordinator cannot make the committee certify a committee of its choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.aio import stop_task, wait_event
from bridge.coordinator.clients import LedgerDomain
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.records import Misbehaviour
from bridge.coordinator.rotation_store import SqlRotationStore, StoredRotation
from bridge.core.reasons import ErrorReason
from bridge.domain.committee import Committee, EpochWindow, verify_vote
from bridge.domain.errors import (
    BridgeError,
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
)
from bridge.domain.legs import SignatureSet, TxOutcome
from bridge.domain.rotation import (
    CertifiedRotation,
    RotationProposal,
    RotationRefused,
    certify,
)
from bridge.logfields import LEDGER, REASON, TX, get_logger


class Installer(Protocol):
    """Installs a certified rotation on one ledger (a relayer gateway)."""

    ledger: str

    async def install_committee(
        self, proposal: RotationProposal, certificate: SignatureSet
    ) -> TxOutcome:
        """Idempotent install; LedgerRejected names the ledger's refusal."""
        ...


class EvidenceSource(Protocol):
    """The recorded misbehaviour (the transfer store)."""

    async def misbehaviour(self, limit: int, member: bytes | None = None) -> list[Misbehaviour]:
        """Incidents newest first (``member``: that member's only)."""
        ...


PROPOSED, CERTIFIED, INSTALLED, ACTIVE, OLD_EXPIRED = (
    "proposed",
    "certified",
    "installed",
    "active",
    "old-epoch-expired",
)


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """One ledger's progress: status word, the digest members sign, signatures kept."""

    ledger: str
    status: str
    digest: bytes
    signatures: int
    tx_id: str
    detail: str


@dataclass(frozen=True, slots=True)
class RotationView:
    """A rotation as the operator sees it."""

    stored: StoredRotation
    ledgers: tuple[LedgerStatus, ...]


def ledger_status(
    proposal: RotationProposal,
    certified: bool,
    installed: bool,
    windows: Sequence[EpochWindow],
    now: int,
) -> str:
    """The status word of one ledger from what it shows: proposed (no certificate yet),
    certified (not installed), installed (new epoch not active yet), active (both epochs
    verify), old-epoch-expired (only the new epoch or a later one verifies)."""
    if not installed:
        return CERTIFIED if certified else PROPOSED
    epochs = {w.committee.epoch: w for w in windows}
    new = epochs.get(proposal.next_epoch)
    if new is not None and new.active_from > now:
        return INSTALLED
    if proposal.certifying_epoch in epochs and epochs[proposal.certifying_epoch].verifies_at(now):
        return ACTIVE
    return OLD_EXPIRED


def _same(
    p: RotationProposal, members: Sequence[bytes], threshold: int, activation: int, overlap: int
) -> bool:
    return (p.members, p.threshold, p.activation, p.overlap) == (
        tuple(sorted(set(members))),
        threshold,
        activation,
        overlap,
    )


class RotationManager:
    """Proposals, certification and level-triggered installation of rotations."""

    def __init__(
        self,
        store: SqlRotationStore,
        evidence: EvidenceSource,
        installers: Mapping[str, Installer],
        epochs: EpochTracker,
        domains: Mapping[str, LedgerDomain],
        poll: float = 2.0,
        reachable: Collection[bytes] | None = None,
    ) -> None:
        self._store = store
        self._evidence = evidence
        self._installers = dict(installers)
        self._epochs = epochs
        self._domains = dict(domains)
        self._poll = poll
        # The members the coordinator has an endpoint for (None: not checked).
        self._reachable = None if reachable is None else frozenset(reachable)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger()

    # -- operator calls --------------------------------------------------------------------
    async def propose(
        self,
        members: Sequence[bytes],
        threshold: int,
        activation: int,
        overlap: int,
        remove_member: bytes = b"",
    ) -> RotationView:
        """Record the rotation to the epoch after the latest one installed on every ledger.

        Refused (RotationRefused) when the ledgers disagree on their latest epoch, or when
        ``remove_member`` is not a member of that epoch, is still among ``members``, or has
        no recorded misbehaviour (whose evidence is then attached to the proposal).
        Idempotent for the same proposal, also once it is installed (the latest epoch then
        is its own); Conflict for another one of the same epoch.
        """
        latest: dict[str, Committee] = {}
        for name in self._domains:
            windows = await self._epochs.windows(name, fresh=True)
            latest[name] = max(windows, key=lambda w: w.committee.epoch).committee
        current = {c.epoch for c in latest.values()}
        if len(current) != 1:
            raise RotationRefused(
                "the ledgers disagree on their latest epoch: "
                + ", ".join(f"{n} {c.epoch}" for n, c in sorted(latest.items()))
            )
        committee = next(iter(latest.values()))
        existing = await self._store.get(committee.epoch)
        if existing is not None and _same(
            existing.proposal, members, threshold, activation, overlap
        ):
            # The operator re-ran the command after it was installed: the same rotation.
            return await self.view(committee.epoch)
        if existing is not None and not all(x.installed for x in existing.ledgers):
            raise RotationRefused(f"the rotation to epoch {committee.epoch} is still installing")
        proposal = RotationProposal(
            next_epoch=committee.epoch + 1,
            threshold=threshold,
            members=tuple(sorted(set(members))),
            activation=activation,
            overlap=overlap,
        )
        if len(proposal.members) != len(members):
            raise InvalidInput("next members must be distinct")
        if self._reachable is not None:
            # An epoch whose members the coordinator cannot ask could never certify a
            # transfer once the old epoch ends: refuse it before anyone signs it.
            unknown = [m for m in proposal.members if m not in self._reachable]
            if unknown:
                raise RotationRefused(
                    "no verifier endpoint is configured for "
                    + ", ".join("0x" + m.hex() for m in unknown)
                    + " (add it to [[committee.later]] of the network file)"
                )
        evidence: tuple[Misbehaviour, ...] = ()
        if remove_member:
            if len(remove_member) != 20:
                raise InvalidInput("remove_member is a 20-byte address")
            who = "0x" + remove_member.hex()
            if not committee.is_member(remove_member):
                raise RotationRefused(f"{who} is not a member of epoch {committee.epoch}")
            if remove_member in proposal.members:
                raise RotationRefused(f"{who} is to be removed but is among the next members")
            evidence = tuple(await self._evidence.misbehaviour(1000, remove_member))
            if not evidence:
                raise RotationRefused(f"no misbehaviour of {who} is recorded")
        created = await self._store.propose(
            proposal, sorted(self._domains), remove_member, evidence
        )
        if created:
            self._log.warning(
                "committee rotation proposed",
                next_epoch=proposal.next_epoch,
                removed=("0x" + remove_member.hex()) if remove_member else "",
                evidence=len(evidence),
            )
        return await self.view(proposal.next_epoch)

    async def certify(
        self, next_epoch: int, signatures: Sequence[tuple[str, int, bytes]]
    ) -> RotationView:
        """Keep member signatures ``(ledger, epoch, signature)`` for the rotation to
        ``next_epoch``; with t for a ledger, its certificate is assembled and installed.

        SECURITY: every signature must recover to a member of the certifying epoch as that
        ledger reports it, over that ledger's rotation digest; one that does not refuses the
        whole call (InvalidCertificate) and nothing is kept.
        """
        stored = await self._stored(next_epoch)
        proposal = stored.proposal
        by_ledger: dict[str, list[tuple[bytes, bytes]]] = {}
        certifying: dict[str, Committee] = {}
        for ledger, epoch, signature in signatures:
            if ledger not in self._domains:
                raise InvalidInput(f"unknown ledger {ledger!r}")
            if epoch != proposal.certifying_epoch:
                raise InvalidInput(
                    f"{ledger}: signature of epoch {epoch}, epoch {next_epoch} is certified"
                    f" by epoch {proposal.certifying_epoch}"
                )
            if ledger not in certifying:
                certifying[ledger] = await self._certifying(ledger, proposal)
            vote = verify_vote(certifying[ledger], self._digest(ledger, proposal), signature)
            by_ledger.setdefault(ledger, []).append((vote.signer, vote.signature))
        for ledger, votes in by_ledger.items():
            await self._store.add_signatures(next_epoch, ledger, votes)
            with contextlib.suppress(InvalidCertificate):
                cert = certify(
                    certifying[ledger],
                    proposal,
                    self._digest(ledger, proposal),
                    await self._store.signatures(next_epoch, ledger),
                )
                await self._store.set_certificate(
                    next_epoch, ledger, SignatureSet(proposal.certifying_epoch, cert)
                )
        self._wake.set()
        return await self.view(next_epoch)

    async def view(self, next_epoch: int) -> RotationView:
        """The rotation with each ledger's status, as the ledgers show it now."""
        stored = await self._stored(next_epoch)
        now = int(time.time())
        out = []
        for x in stored.ledgers:
            try:
                windows: Sequence[EpochWindow] = await self._epochs.windows(x.ledger)
            except BridgeError:
                windows = ()
            status = ledger_status(
                stored.proposal, x.certificate is not None, x.installed, windows, now
            )
            out.append(
                LedgerStatus(
                    x.ledger,
                    status,
                    self._digest(x.ledger, stored.proposal),
                    x.signatures,
                    x.tx_id,
                    x.detail,
                )
            )
        return RotationView(stored, tuple(out))

    async def recent(self, limit: int) -> list[RotationView]:
        """Recorded rotations, newest first."""
        return [await self.view(e) for e in await self._store.epochs(limit)]

    async def chain(self, from_epoch: int) -> list[CertifiedRotation]:
        """Per epoch after ``from_epoch``, one ledger's certified rotation (first by name):
        what a depository verifies from its anchor (each by t of the epoch before)."""
        out = []
        for epoch in sorted(await self._store.epochs()):
            if epoch <= from_epoch:
                continue
            stored = await self._stored(epoch)
            for x in stored.ledgers:
                if x.certificate is not None and x.installed:
                    d = self._domains[x.ledger]
                    out.append(
                        CertifiedRotation(
                            x.ledger, d.network_word, d.ledger_word, d.bridge_word,
                            stored.proposal, x.certificate.signatures,
                        )
                    )  # fmt: skip
                    break
        return out

    # -- installation ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the installation loop (it resumes whatever is recorded but not installed)."""
        self._task = asyncio.create_task(self._run(), name="rotations")

    async def stop(self) -> None:
        """Stop the loop (its work is durable)."""
        if self._task is not None:
            await stop_task(self._task)  # the caller's own cancel is never swallowed

    async def _run(self) -> None:
        while True:
            try:
                await self.install_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("rotation pass failed")
            self._wake.clear()
            await wait_event(self._wake, self._poll)

    async def install_pending(self) -> None:
        """One level-triggered pass: for every recorded rotation and ledger not yet shown
        installed, read the ledger; mark it installed if it shows the new epoch (or a later
        one), else install the certificate if there is one."""
        for epoch in await self._store.pending():
            stored = await self._stored(epoch)
            for x in stored.ledgers:
                if x.installed:
                    continue
                try:
                    await self._install_one(stored.proposal, x.ledger, x.certificate)
                except BridgeError as exc:
                    await self._store.set_detail(epoch, x.ledger, str(exc))
                    self._log.warning(
                        "rotation waits", next_epoch=epoch, **{LEDGER: x.ledger, REASON: str(exc)}
                    )

    async def _install_one(
        self, proposal: RotationProposal, ledger: str, certificate: SignatureSet | None
    ) -> None:
        windows = await self._epochs.windows(ledger, fresh=True)
        latest = max(windows, key=lambda w: w.committee.epoch).committee
        if latest.epoch > proposal.next_epoch or latest == proposal.committee:
            await self._store.set_installed(proposal.next_epoch, ledger, "")
            return
        if latest.epoch == proposal.next_epoch:
            await self._store.set_detail(
                proposal.next_epoch, ledger, "another committee is installed for this epoch"
            )
            return
        if certificate is None:
            return
        try:
            out = await self._installers[ledger].install_committee(proposal, certificate)
        except LedgerRejected as exc:
            if exc.reason != ErrorReason.ROTATION_ALREADY_INSTALLED:
                raise
            out = TxOutcome(tx_id="", height=0, already_applied=True)
        await self._store.set_installed(proposal.next_epoch, ledger, out.tx_id)
        self._epochs.invalidate(ledger)
        self._log.warning(
            "committee rotation installed",
            next_epoch=proposal.next_epoch,
            **{LEDGER: ledger, TX: out.tx_id},
        )

    # -- helpers -----------------------------------------------------------------------------
    async def _stored(self, next_epoch: int) -> StoredRotation:
        stored = await self._store.get(next_epoch)
        if stored is None:
            raise NotFound(f"no rotation is proposed for epoch {next_epoch}")
        return stored

    def _digest(self, ledger: str, proposal: RotationProposal) -> bytes:
        d = self._domains[ledger]
        return proposal.digest(d.network_word, d.ledger_word, d.bridge_word)

    async def _certifying(self, ledger: str, proposal: RotationProposal) -> Committee:
        for w in await self._epochs.windows(ledger, fresh=True):
            if w.committee.epoch == proposal.certifying_epoch:
                return w.committee
        raise RotationRefused(
            f"{ledger} no longer accepts epoch {proposal.certifying_epoch}, which certifies"
            f" epoch {proposal.next_epoch}"
        )
