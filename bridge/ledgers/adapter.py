"""The one interface every ledger kind implements (EVM now, Fabric next).

Daemons depend only on these Protocols and pick an implementation from configuration.
Every read is at the ledger's *finalized* height: nothing a caller sees can be reverted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bridge.core.batch import BatchCertificate
from bridge.domain.committee import CommitteeRotation, EpochWindow
from bridge.domain.flow import FlowStatus
from bridge.domain.governance import HaltStatus, Order
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.ledger_batches import BatchItem, BatchOutcome
from bridge.domain.legs import (
    Action,
    EventPosition,
    HolderStatus,
    LedgerEvent,
    Leg,
    LegStatus,
    SignatureSet,
    TxOutcome,
)
from bridge.domain.supply import SupplyReading
from bridge.domain.terms import TransferTerms


class LedgerReader(Protocol):
    """Read-only, finality-aware access to one ledger's bridge endpoint (no keys needed)."""

    @property
    def ledger(self) -> LedgerId:
        """The ledger this adapter talks to."""
        ...

    @property
    def kind(self) -> str:
        """The ledger kind, e.g. ``evm``."""
        ...

    @property
    def bridge_word(self) -> bytes:
        """The bridge endpoint's identity as a 32-byte word (what digests bind)."""
        ...

    def parse_address(self, text: str) -> bytes:
        """Parse a holder address in this ledger's native format into a 32-byte word.

        Raises InvalidInput with a precise message for anything malformed.
        """
        ...

    def format_address(self, word: bytes) -> str:
        """Inverse of :meth:`parse_address`."""
        ...

    async def finalized_height(self) -> int:
        """The highest block that can no longer be reverted."""
        ...

    async def events(self, after: EventPosition | None, up_to_height: int) -> list[LedgerEvent]:
        """Every bridge event after ``after`` up to ``up_to_height`` inclusive, in ledger order.

        ``up_to_height`` must not exceed :meth:`finalized_height`.
        """
        ...

    async def network_word(self) -> bytes:
        """The network word of the node this reader is connected to, as read from it (EVM:
        ``eth_chainId`` as a word; Fabric: the channel's genesis block hash)."""
        ...

    async def get_leg(self, transfer_id: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        """A leg's state at ``height`` (default: the finalized height); for a LOCKED outbound
        or PREPARED inbound leg also its large-transfer ``not_before`` (ADR 0010)."""
        ...

    async def holder_status(self, security: SecurityId, holder: bytes) -> HolderStatus:
        """A holder's balance and standing at the finalized height."""
        ...

    async def supply(self, security: SecurityId, height: int | None = None) -> SupplyReading:
        """The security's supply figures on this ledger at one finalized height.

        ``height`` defaults to the finalized height; the reading carries that height and the
        hash of its block, and every figure is the state as of that block. A height above the
        finalized height, or one the ledger kind cannot read, raises InvalidInput; a security
        not registered with the bridge endpoint raises NotFound.
        """
        ...

    # ---- committee rotation

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        """Every installed epoch that verifies at ``height`` or will later, ascending by epoch.

        ``height`` defaults to the finalized height; "now" is that block's time. At most two
        windows (ADR 0008): the latest installed epoch (which may not be active yet) and,
        while its overlap lasts, the one before it.
        """
        ...

    # ---- flow limits (ADR 0010)
    async def flow_status(self, security: SecurityId, counterpart: LedgerId) -> FlowStatus:
        """The flow limit of the lane (``security``, ``counterpart``) on this ledger and what
        its buckets hold (all zero: not limited). A scheduling hint: the ledger enforces the
        limit at lock and prepare whatever a reader saw."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    # ---- depository halt

    async def halt_status(self, security: SecurityId | None) -> HaltStatus:
        """What the endpoint enforces for ``security`` (None: only the ledger-wide flag is
        meaningful), read from committed (finalized) state."""
        ...


class LedgerAdapter(LedgerReader, Protocol):
    """A LedgerReader that can also apply protocol steps with the operator's identity."""

    @property
    def operator(self) -> str:
        """The operator account transactions are sent from."""
        ...

    async def submit(
        self,
        action: Action,
        terms: TransferTerms,
        certificate: SignatureSet | None,
        instruction: bytes = b"",
    ) -> TxOutcome:
        """Apply one step and wait until it is included and final.

        ``instruction`` (LOCK only, protocol v2) is the instructor's signature the ledger
        checks before it escrows anything.

        Idempotent: when the step is already applied with the same terms the result has
        ``already_applied`` set and nothing is sent. A step the ledger refuses raises
        LedgerRejected naming the contract's reason; transient faults raise Unavailable.
        """
        ...

    # ---- batched ledger steps (issue 14 item 2, ADR 0025)
    @property
    def max_batch_items(self) -> int:
        """The most items one :meth:`submit_batch` carries on this kind (the relayer's
        bound for ``SubmitBatch``)."""
        ...

    async def submit_batch(
        self,
        action: Action,
        items: Sequence[BatchItem],
        certificate: BatchCertificate | None = None,
    ) -> BatchOutcome:
        """Apply ``action`` (LOCK, PREPARE, COMMIT or ABORT) to every item in ONE ledger
        invocation and return once it is final, one result per item in item order: the leg
        the action moves, its state and terms hash, and ``skipped`` for an item already
        where the action puts it (a replay: nothing moves, so a retried batch is safe).

        LOCK takes each item's instruction and no certificate; the other actions take each
        item's inclusion proof under ONE batch certificate of the matching claim kind. A
        refusal refuses the whole invocation, nothing applied: LedgerRejected with the
        ledger's ErrorReason and, where one item caused it, that item's index as the
        integer figure ``item`` (:func:`bridge.domain.ledger_batches.refused_item`).
        Transient faults raise Unavailable; ValueError, before anything is sent, for a
        batch the kind cannot carry (outside 1..:attr:`max_batch_items`, too large for one
        transaction, a certificate where none belongs or none where one does). A read-only
        adapter raises LedgerRejected(ReadOnly).
        """
        ...

    # ---- committee rotation

    async def install_committee(
        self, rotation: CommitteeRotation, certificate: SignatureSet
    ) -> TxOutcome:
        """Install ``rotation.next`` with a certificate of ``rotation.epoch`` over
        ``rotation.digest(...)`` for this endpoint, and wait until it is final.

        Anyone may submit (the certificate is the authority). Idempotent: when this very
        rotation is already installed the result has ``already_applied`` set and nothing is
        sent. A rotation the ledger refuses raises LedgerRejected with the ErrorReason value
        (EpochAlreadyInstalled for a different committee already installed for that epoch,
        WrongEpoch, EpochNotActive, InvalidRotation, InvalidCommittee, or a certificate
        error); transient faults raise Unavailable.
        """
        ...

    # ---- depository halt

    async def apply_order(self, order: Order, signature: bytes) -> TxOutcome:
        """Submit a depository order and wait until it is final.

        Idempotent: when the endpoint's last applied sequence is already ``>=`` the order's
        (this order, or a later one that supersedes it), nothing is sent and
        ``already_applied`` is set. A refusal by the endpoint raises LedgerRejected with its
        reason (NotDepository, StaleOrder, OrderExpired, ...); transient faults Unavailable.
        """
        ...
