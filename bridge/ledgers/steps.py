"""The step template every ledger adapter's ``submit`` follows (ADR 0014).

The skeleton used to be written once per kind: refuse on a read-only adapter, find which leg
of the transfer this ledger holds, report a step already applied (refusing other terms for
the same id), require a certificate, send, wait until final. :class:`StepTemplate` holds it
once, with default methods built on the kind's primitives (Hermes' ``ChainEndpoint`` style).
A kind implements only:

- :meth:`StepTemplate._send_step`: send this step; return a handle to wait on (or an outcome
  when a re-read shows a concurrent submission applied it);
- :meth:`StepTemplate._wait_step_final`: wait for that handle to be final;

plus its reads (``get_leg``), and may override :meth:`StepTemplate._read_leg_now` (which
state the idempotency check reads) and :meth:`StepTemplate._applied_height` (when an
already-applied step counts as final).

The governance writes (``install_committee``, ``apply_order``) follow one skeleton too,
:meth:`StepTemplate._governance_write`: refuse on a read-only adapter, read whether the
write is already applied, send, wait until final, and re-check any refusal against the
applied state. The kind implements :meth:`StepTemplate._send_write` and
:meth:`StepTemplate._wait_write_final`, and may override the reads
(:meth:`StepTemplate._write_applied`, :meth:`StepTemplate._installed_height`) and the
refusal check (:meth:`StepTemplate._confirm_write_refusal`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge.core.reasons import ErrorReason
from bridge.domain.committee import CommitteeRotation, EpochWindow
from bridge.domain.errors import LedgerRejected
from bridge.domain.governance import HaltStatus, Order
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import (
    STEP_DONE,
    Action,
    Leg,
    LegState,
    LegStatus,
    SignatureSet,
    TxOutcome,
)
from bridge.domain.terms import TransferTerms
from bridge.ledgers.addresses import AddressCodec


@dataclass(frozen=True, slots=True)
class Step:
    """One step to apply: the action, its terms and evidence, the leg it moves on this
    ledger and the leg states that mean it is applied."""

    action: Action
    terms: TransferTerms
    certificate: SignatureSet | None
    instruction: bytes
    leg: Leg
    done: frozenset[LegState]


@dataclass(frozen=True, slots=True)
class RotationWrite:
    """``install_committee``: install ``rotation.next`` with ``certificate`` (of
    ``rotation.epoch``)."""

    rotation: CommitteeRotation
    certificate: SignatureSet
    function = "RotateCommittee"


@dataclass(frozen=True, slots=True)
class OrderWrite:
    """``apply_order``: apply the depository's signed ``order``."""

    order: Order
    signature: bytes
    function = "ApplyOrder"


GovernanceWrite = RotationWrite | OrderWrite
"""A governance write: certified by the committee or signed by the depository, applied by
anyone holding an operator identity, idempotent (by rotation digest, by order sequence)."""


class StepTemplate(ABC):
    """Default ``submit`` for a ledger adapter.

    Guarantees, for every kind: a read-only adapter sends nothing (``ReadOnly``); a step of
    a transfer that does not involve this endpoint (``WrongLedger``) or of the other leg
    (``WrongLeg``) is refused before any read; a step already applied with the same terms
    is reported ``already_applied`` with nothing sent, once final; the same transfer id
    with other terms is refused (``TermsMismatch``); a step other than LOCK needs a
    certificate (``MissingCertificate``). Only then is the step sent, and ``submit``
    returns once it is final.
    """

    # -- identity: set by the kind's constructor ----------------------------------------------
    KIND: ClassVar[str]
    """The kind's registry name (``evm``, ``fabric``, ...)."""
    _ledger: LedgerId
    _bridge_word: bytes

    @property
    def ledger(self) -> LedgerId:
        """The ledger this adapter talks to."""
        return self._ledger

    @property
    def kind(self) -> str:
        """The kind's registry name."""
        return self.KIND

    @property
    def bridge_word(self) -> bytes:
        """The endpoint's 32-byte identity (the kind's bridge word for this ledger)."""
        return self._bridge_word

    ADDRESSES: ClassVar[AddressCodec]
    """The kind's address codec (the one its ``LedgerKind`` owns)."""

    def parse_address(self, text: str) -> bytes:
        """A holder address of this kind into its 32-byte word (the kind's codec)."""
        return self.ADDRESSES.parse(text)

    def format_address(self, word: bytes) -> str:
        """A 32-byte word back to this kind's address text (the kind's codec)."""
        return self.ADDRESSES.format(word)

    # -- what the kind provides ---------------------------------------------------------------

    @property
    @abstractmethod
    def writable(self) -> bool:
        """True when the adapter holds an operator identity that may submit."""

    @abstractmethod
    async def get_leg(self, transfer_id: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        """A leg's state (see :class:`bridge.ledgers.adapter.LedgerReader`)."""

    @abstractmethod
    async def _send_step(self, step: Step) -> Any:
        """Send ``step``; return a handle for :meth:`_wait_step_final`, or a finished
        :class:`TxOutcome` (e.g. a re-read found the step applied by a concurrent submitter).
        Raise LedgerRejected with the endpoint's reason when it refuses."""

    @abstractmethod
    async def _wait_step_final(self, step: Step, handle: Any) -> TxOutcome:
        """Wait until what :meth:`_send_step` sent is final; its outcome."""

    @abstractmethod
    async def finalized_height(self) -> int:
        """The latest final height (see :class:`bridge.ledgers.adapter.LedgerReader`)."""

    @abstractmethod
    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        """The epochs that verify (see :class:`bridge.ledgers.adapter.LedgerAdapter`)."""

    @abstractmethod
    async def halt_status(self, security: SecurityId | None) -> HaltStatus:
        """The halt book (see :class:`bridge.ledgers.adapter.LedgerAdapter`)."""

    @abstractmethod
    async def _send_write(self, write: GovernanceWrite) -> Any:
        """Send ``write``; return a handle for :meth:`_wait_write_final`. Raise
        LedgerRejected with the endpoint's reason when it refuses."""

    @abstractmethod
    async def _wait_write_final(self, write: GovernanceWrite, handle: Any) -> TxOutcome:
        """Wait until what :meth:`_send_write` sent is final; its outcome (LedgerRejected
        when the ledger invalidated it)."""

    # -- defaults the kind may override -------------------------------------------------------
    async def _read_leg_now(self, transfer_id: bytes, leg: Leg) -> LegStatus:
        """The leg as the idempotency check reads it (default: :meth:`get_leg`)."""
        return await self.get_leg(transfer_id, leg)

    async def _applied_height(self, step: Step, current: LegStatus) -> int:
        """The height at which an already-applied step is final (default: where it was read,
        for kinds whose reads are final)."""
        return current.height

    def _read_only_detail(self) -> str:
        return "this adapter has no operator identity"

    local_order_expiry = False
    """True when the endpoint's clock is the transaction time its submitter chooses (Fabric's
    timestamp, ...): an order already expired by this machine's clock is then refused
    (``OrderExpired``) before it is sent."""

    async def _write_applied(self, write: GovernanceWrite) -> TxOutcome | None:
        """The outcome of ``write`` when the ledger shows it applied, else None. Default, on
        final reads: the rotation's committee is installed with its activation; the
        endpoint's order sequence is at or past the order's (this order, or a later one
        that supersedes it)."""
        if isinstance(write, RotationWrite):
            r = write.rotation
            windows = await self.committees()
            if not any(w.committee == r.next and w.active_from == r.activation for w in windows):
                return None
        elif (await self.halt_status(None)).sequence < write.order.sequence:
            return None
        return TxOutcome(tx_id="", height=await self.finalized_height(), already_applied=True)

    async def _installed_height(self, write: RotationWrite) -> int:
        """The height at which a rotation the endpoint reports already installed is final
        (default, for kinds whose reads are final: the finalized height, once the
        committees read there hold the rotation's committee).

        SECURITY: ``RotationAlreadyInstalled`` is one node's word, and the coordinator
        records a rotation installed on ``already_applied``; it is confirmed from state, and
        a node answering it for a rotation it never ran gets ``MalformedAnswer``."""
        height = await self.finalized_height()
        if not any(w.committee == write.rotation.next for w in await self.committees(height)):
            raise LedgerRejected(
                ErrorReason.MALFORMED_ANSWER,
                f"RotationAlreadyInstalled, but epoch {write.rotation.next.epoch} is not installed",
            )
        return height

    async def _confirm_write_refusal(
        self, write: GovernanceWrite, refusal: LedgerRejected, *, ordered: bool
    ) -> None:
        """Raise the refusal the caller must see for ``write`` (default: ``refusal``), or
        return when the kind's own view shows ``write`` applied. ``ordered`` is True for a
        refusal after ordering (a validation code), False for one before it."""
        raise refusal

    # -- the template ---------------------------------------------------------------------------
    def _leg_here(self, terms: TransferTerms) -> Leg:
        """The leg of ``terms`` this endpoint holds; WrongLedger when neither."""
        if terms.src_ledger == self.ledger.word and terms.src_bridge == self.bridge_word:
            return Leg.OUTBOUND
        if terms.dst_ledger == self.ledger.word and terms.dst_bridge == self.bridge_word:
            return Leg.INBOUND
        raise LedgerRejected(
            ErrorReason.WRONG_LEDGER, f"transfer does not involve ledger {self.ledger}"
        )

    async def _step_applied(self, step: Step) -> TxOutcome | None:
        """The outcome of ``step`` when the ledger already shows it applied, else None;
        TermsMismatch when the ledger holds other terms for the id."""
        current = await self._read_leg_now(step.terms.transfer_id, step.leg)
        if current.state not in step.done:
            return None
        if current.terms_hash != step.terms.terms_hash:
            raise LedgerRejected(
                ErrorReason.TERMS_MISMATCH, "the ledger holds other terms for this id"
            )
        # Applied, perhaps by an earlier attempt: report it only once it is final.
        height = await self._applied_height(step, current)
        return TxOutcome(tx_id="", height=height, already_applied=True)

    async def submit(
        self,
        action: Action,
        terms: TransferTerms,
        certificate: SignatureSet | None,
        instruction: bytes = b"",
    ) -> TxOutcome:
        """Apply ``action`` for ``terms``; idempotent; returns once the step is final."""
        # SECURITY: a read-only adapter (a member's reader) never sends.
        if not self.writable:
            raise LedgerRejected(ErrorReason.READ_ONLY, self._read_only_detail())
        leg = self._leg_here(terms)
        done = STEP_DONE.get((action, leg))
        if done is None:
            raise LedgerRejected(
                ErrorReason.WRONG_LEG, f"{action.name} does not apply to the {leg.name} leg"
            )
        step = Step(action, terms, certificate, instruction, leg, done)
        applied = await self._step_applied(step)
        if applied is not None:
            return applied
        if action is not Action.LOCK and certificate is None:
            raise LedgerRejected(
                ErrorReason.MISSING_CERTIFICATE, f"{action.name} needs a certificate"
            )
        handle = await self._send_step(step)
        if isinstance(handle, TxOutcome):
            return handle
        return await self._wait_step_final(step, handle)

    # -- governance writes ----------------------------------------------------------------------
    async def install_committee(
        self, rotation: CommitteeRotation, certificate: SignatureSet
    ) -> TxOutcome:
        """Install ``rotation.next`` certified by ``certificate``; idempotent; returns once
        final (see :class:`bridge.ledgers.adapter.LedgerAdapter`)."""
        return await self._governance_write(RotationWrite(rotation, certificate))

    async def apply_order(self, order: Order, signature: bytes) -> TxOutcome:
        """Apply the depository's ``order``; idempotent by sequence; returns once final (see
        :class:`bridge.ledgers.adapter.LedgerAdapter`)."""
        return await self._governance_write(OrderWrite(order, signature))

    async def _governance_write(self, write: GovernanceWrite) -> TxOutcome:
        """The skeleton of every governance write.

        Guarantees, for every kind: a read-only adapter sends nothing (``ReadOnly``); a
        write the ledger already shows applied is ``already_applied`` with nothing sent; an
        order expired by this machine's clock is refused unsent where the endpoint's clock is
        the submitter's (:attr:`local_order_expiry`); a refusal, before or after ordering,
        is ``already_applied`` when the endpoint says the rotation is installed or a
        re-read shows the write applied (a concurrent submitter won), and otherwise stands
        as the kind confirms it (:meth:`_confirm_write_refusal`).
        """
        # SECURITY: a read-only adapter (a member's reader) never sends.
        if not self.writable:
            raise LedgerRejected(ErrorReason.READ_ONLY, self._read_only_detail())
        applied = await self._write_applied(write)
        if applied is not None:
            return applied
        if (
            isinstance(write, OrderWrite)
            and self.local_order_expiry
            and time.time() >= write.order.expiry
        ):
            raise LedgerRejected(
                ErrorReason.ORDER_EXPIRED, f"expiry={write.order.expiry} (checked by the relayer)"
            )
        try:
            handle = await self._send_write(write)
        except LedgerRejected as refusal:
            return await self._write_refused(write, refusal, ordered=False)
        try:
            return await self._wait_write_final(write, handle)
        except LedgerRejected as refusal:
            return await self._write_refused(write, refusal, ordered=True)

    async def _write_refused(
        self, write: GovernanceWrite, refusal: LedgerRejected, *, ordered: bool
    ) -> TxOutcome:
        """``already_applied`` when the refusal or a re-read shows ``write`` applied; else
        raise the refusal the kind confirms."""
        if (
            isinstance(write, RotationWrite)
            and refusal.reason == ErrorReason.ROTATION_ALREADY_INSTALLED
        ):
            height = await self._installed_height(write)
            return TxOutcome(tx_id="", height=height, already_applied=True)
        applied = await self._write_applied(write)
        if applied is not None:
            return applied
        await self._confirm_write_refusal(write, refusal, ordered=ordered)
        # The kind's own view shows the write applied.
        return TxOutcome(tx_id="", height=await self._write_height(write), already_applied=True)

    async def _write_height(self, write: GovernanceWrite) -> int:
        if isinstance(write, RotationWrite):
            return await self._installed_height(write)
        return await self.finalized_height()
