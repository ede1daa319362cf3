"""The relayer's gRPC service: ledger queries and idempotent protocol steps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from bridge.domain.errors import InvalidInput, Unavailable
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.ledger_batches import BatchOutcome
from bridge.domain.legs import Action, TxOutcome
from bridge.ledgers.adapter import LedgerAdapter
from bridge.ledgers.many_holders import read_holders
from bridge.ledgers.many_legs import read_legs
from bridge.logfields import ACTION, COUNT, ERROR, LEDGER, TRANSFER, TX, get_logger
from bridge.rpc.batch_convert import batch_request_from_pb, outcome_to_pb
from bridge.rpc.convert import (
    holder_to_pb,
    leg_from_pb,
    leg_status_to_pb,
    signatures_from_pb,
    terms_from_pb,
)
from bridge.rpc.errors import Context, grpc_errors
from bridge.rpc.flow_convert import flow_status_to_pb
from bridge.rpc.halt_convert import halt_to_pb, signed_order_from_pb
from bridge.rpc.rotation_convert import proposal_from_pb, window_to_pb
from bridge.rpc.supply_convert import reading_to_pb
from bridge.v1 import depository_pb2, flow_pb2, relayer_pb2, relayer_pb2_grpc, supply_pb2

R = TypeVar("R")

MAX_LEGS_PER_REQUEST = 1000
"""---- batch: the most legs one GetLegs answers (its cost: 5 evaluates on Fabric)."""
MAX_HOLDERS_PER_REQUEST = 1000
"""---- batch: the most holders one GetHolders answers (EVM: 4 lens calls)."""


class KeyedLock:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold the lock for ``key``."""
        lock, users = self._entries.get(key, (asyncio.Lock(), 0))
        self._entries[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._entries[key]
            if users == 1:
                del self._entries[key]
            else:
                self._entries[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._entries)


class RelayerServicer(relayer_pb2_grpc.RelayerServiceServicer):
    """Serves one ledger through its adapter; concurrent identical steps are serialised."""

    def __init__(self, adapter: LedgerAdapter, submit_attempts: int = 5) -> None:
        self._adapter = adapter
        self._locks = KeyedLock()
        self._attempts = submit_attempts
        self._log = get_logger(**{LEDGER: adapter.ledger.name})

    @property
    def error_ledger(self) -> str:
        """The ledger named in the ErrorInfo of this service's ledger refusals (ADR 0015)."""
        return str(self._adapter.ledger)

    async def _applied(self, key: Hashable, call: Callable[[], Awaitable[TxOutcome]]) -> TxOutcome:
        """``call`` (an idempotent ledger write) under the per-``key`` lock, retried on
        transient faults (Unavailable) with exponential backoff, ``submit_attempts`` times."""
        async with self._locks.hold(key):
            return await self._retried(call)

    async def _retried(self, call: Callable[[], Awaitable[R]]) -> R:
        """``call`` retried on Unavailable with exponential backoff, ``submit_attempts``
        times; the last fault is raised."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=3),
            before_sleep=self._log_retry,
            reraise=True,
        )

        async def attempt() -> R:  # a coroutine function, so tenacity awaits it
            return await call()

        return await retrying(attempt)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._log.warning(
            "step failed transiently, retrying",
            **{ERROR: str(exc)[:300], COUNT: state.attempt_number},
        )

    @grpc_errors
    async def GetLedgerInfo(
        self, request: relayer_pb2.GetLedgerInfoRequest, context: Context
    ) -> relayer_pb2.LedgerInfo:
        """The ledger's identity and finalized height, and the most items one
        ``SubmitBatch`` carries on it."""
        return relayer_pb2.LedgerInfo(
            ledger_id=self._adapter.ledger.name,
            kind=self._adapter.kind,
            bridge=self._adapter.bridge_word,
            finalized_height=await self._adapter.finalized_height(),
            operator=self._adapter.operator,
            max_batch_items=self._adapter.max_batch_items,
        )

    @grpc_errors
    async def GetLeg(
        self, request: relayer_pb2.GetLegRequest, context: Context
    ) -> relayer_pb2.LegStatus:
        """A leg's state at the finalized height."""
        if len(request.transfer_id) != 32:
            raise InvalidInput("transfer_id must be 32 bytes")
        status = await self._adapter.get_leg(request.transfer_id, leg_from_pb(request.leg))
        return leg_status_to_pb(status)

    # ---- batch (issue 14 item 4)
    @grpc_errors
    async def GetLegs(
        self, request: relayer_pb2.GetLegsRequest, context: Context
    ) -> relayer_pb2.GetLegsResponse:
        """Many legs of one side at the finalized height, in the request's order, in as
        few ledger calls as the kind allows (``many_legs.read_legs``). INVALID_ARGUMENT for
        no id, more than MAX_LEGS_PER_REQUEST, or an id that is not 32 bytes."""
        ids = list(request.transfer_ids)
        if not 1 <= len(ids) <= MAX_LEGS_PER_REQUEST:
            raise InvalidInput(f"transfer_ids must hold 1 to {MAX_LEGS_PER_REQUEST} ids")
        if any(len(t) != 32 for t in ids):
            raise InvalidInput("every transfer_id must be 32 bytes")
        legs = await read_legs(self._adapter, ids, leg_from_pb(request.leg))
        return relayer_pb2.GetLegsResponse(legs=[leg_status_to_pb(s) for s in legs])

    @grpc_errors
    async def GetHolder(
        self, request: relayer_pb2.GetHolderRequest, context: Context
    ) -> relayer_pb2.HolderStatus:
        """A holder's balance and standing for one security."""
        security = SecurityId(request.security_id)
        holder = self._adapter.parse_address(request.holder)
        return holder_to_pb(await self._adapter.holder_status(security, holder))

    @grpc_errors
    async def GetHolders(
        self, request: relayer_pb2.GetHoldersRequest, context: Context
    ) -> relayer_pb2.GetHoldersResponse:
        """Many holders' standing for one security, each as :meth:`GetHolder` reads it, in
        the request's order, in as few ledger calls as the kind allows
        (``many_holders.read_holders``). INVALID_ARGUMENT for no holder, more than
        MAX_HOLDERS_PER_REQUEST, or one the ledger cannot parse (nothing is read then)."""
        if not 1 <= len(request.holders) <= MAX_HOLDERS_PER_REQUEST:
            raise InvalidInput(f"holders must hold 1 to {MAX_HOLDERS_PER_REQUEST} holders")
        security = SecurityId(request.security_id)
        words = [self._adapter.parse_address(h) for h in request.holders]
        statuses = await read_holders(self._adapter, security, words)
        return relayer_pb2.GetHoldersResponse(holders=[holder_to_pb(s) for s in statuses])

    @grpc_errors
    async def GetLedgerSupply(
        self, request: relayer_pb2.GetLedgerSupplyRequest, context: Context
    ) -> supply_pb2.LedgerSupply:
        """One security's supply figures at the finalized height (or the one asked for)."""
        security = SecurityId(request.security_id)
        reading = await self._adapter.supply(security, request.height or None)
        return reading_to_pb(reading)

    # ---- flow limits (ADR 0010)
    @grpc_errors
    async def GetFlowStatus(
        self, request: flow_pb2.GetLaneFlowRequest, context: Context
    ) -> flow_pb2.FlowStatus:
        """The lane (security, counterpart) on this ledger: limit and bucket levels."""
        security = SecurityId(request.security_id)
        counterpart = LedgerId(request.counterpart)
        return flow_status_to_pb(await self._adapter.flow_status(security, counterpart))

    @grpc_errors
    async def Submit(
        self, request: relayer_pb2.SubmitRequest, context: Context
    ) -> relayer_pb2.SubmitResponse:
        """Apply one step; retried on transient ledger faults because every step is idempotent."""
        try:
            action = Action(request.action)
        except ValueError:
            raise InvalidInput(
                "action must be one of LOCK, PREPARE, MARK_EXPIRED, COMMIT, ABORT"
            ) from None
        terms = terms_from_pb(request.terms)
        cert = signatures_from_pb(request.certificate) if request.HasField("certificate") else None
        if request.instruction and action is not Action.LOCK:
            raise InvalidInput("instruction applies to LOCK only")
        if len(request.instruction) > 65:
            raise InvalidInput("instruction must be at most 65 bytes")
        outcome = await self._applied(
            (int(action), terms.transfer_id),
            lambda: self._adapter.submit(action, terms, cert, bytes(request.instruction)),
        )
        self._log.info(
            "step applied" if not outcome.already_applied else "step already applied",
            **{ACTION: action.name, TRANSFER: "0x" + terms.transfer_id.hex(), TX: outcome.tx_id},
        )
        return _submit_response(outcome)

    # ---- batched ledger steps (issue 14 item 2, ADR 0025)
    @grpc_errors
    async def SubmitBatch(
        self, request: relayer_pb2.SubmitBatchRequest, context: Context
    ) -> relayer_pb2.SubmitBatchResponse:
        """Apply one action to many transfers in one ledger invocation and answer every
        item's leg once it is final.

        INVALID_ARGUMENT for a malformed request (:func:`batch_request_from_pb`, at most the
        adapter's ``max_batch_items``) or one the adapter refuses to build (a CometBFT
        transaction above its size limit). SECURITY: holds the per-(action, transfer) lock
        :meth:`Submit` holds for every item, acquired in transfer-id order, so a batch and
        concurrent single steps (or another batch) of the same transfers are serialised and
        never deadlock. Transient faults are retried: an item a lost attempt applied is
        ``skipped`` on the retry, so a retry moves nothing twice."""
        batch = batch_request_from_pb(request, self._adapter.max_batch_items)
        action, items, cert = batch.action, batch.items, batch.certificate

        async def apply() -> BatchOutcome:
            try:
                return await self._adapter.submit_batch(action, items, cert)
            except ValueError as exc:  # the kind cannot carry this batch in one invocation
                raise InvalidInput(str(exc)) from None

        async with contextlib.AsyncExitStack() as held:
            for tid in sorted(i.terms.transfer_id for i in items):
                await held.enter_async_context(self._locks.hold((int(action), tid)))
            outcome = await self._retried(apply)
        self._log.info(
            "batch applied",
            **{ACTION: action.name, COUNT: len(items), TX: outcome.tx_id},
            applied=outcome.applied,
        )
        return outcome_to_pb(outcome)

    # ---- depository halt

    @grpc_errors
    async def ApplyOrder(
        self, request: depository_pb2.SignedDepositoryOrder, context: Context
    ) -> relayer_pb2.SubmitResponse:
        """Submit a depository order to this ledger; retried on transient faults (the
        adapter's call is idempotent by the ledger's order sequence). The relayer checks
        nothing the ledger does not: the signature is the authority."""
        signed = signed_order_from_pb(request)
        outcome = await self._applied(
            ("order",), lambda: self._adapter.apply_order(signed.order, signed.signature)
        )
        self._log.info(
            "depository order applied" if not outcome.already_applied else "order already applied",
            **{ACTION: f"order:{signed.order.action}:{signed.order.sequence}", TX: outcome.tx_id},
        )
        return _submit_response(outcome)

    @grpc_errors
    async def GetHaltStatus(
        self, request: depository_pb2.GetHaltStatusRequest, context: Context
    ) -> depository_pb2.LedgerHalt:
        """The ledger's halt flags for one security (or the ledger-wide flag), finalized."""
        security = SecurityId(request.security_id) if request.security_id else None
        status = await self._adapter.halt_status(security)
        return halt_to_pb(self._adapter.ledger.name, status)

    # ---- committee rotation (ADR 0009) ------------------------------------------------
    @grpc_errors
    async def GetCommittees(
        self, request: relayer_pb2.GetCommitteesRequest, context: Context
    ) -> relayer_pb2.Committees:
        """The epochs the endpoint accepts now or will, ascending, at the finalized height."""
        windows = await self._adapter.committees()
        return relayer_pb2.Committees(epochs=[window_to_pb(w) for w in windows])

    @grpc_errors
    async def InstallCommittee(
        self, request: relayer_pb2.InstallCommitteeRequest, context: Context
    ) -> relayer_pb2.SubmitResponse:
        """Install a certified rotation; retried on transient faults (the ledger call is
        idempotent: an installed rotation returns ``already_applied``). The ledger checks
        the certificate; a refusal is FAILED_PRECONDITION naming the ledger's reason."""
        proposal = proposal_from_pb(request.proposal)
        if not request.HasField("certificate"):
            raise InvalidInput("certificate is required")
        cert = signatures_from_pb(request.certificate)
        if cert.epoch != proposal.certifying_epoch:
            raise InvalidInput(
                f"certificate epoch {cert.epoch} does not certify epoch {proposal.next_epoch}"
            )
        outcome = await self._applied(
            ("rotation", proposal.next_epoch),
            lambda: self._adapter.install_committee(proposal.as_rotation(), cert),
        )
        self._log.info(
            "committee installed" if not outcome.already_applied else "committee already installed",
            next_epoch=proposal.next_epoch,
            **{TX: outcome.tx_id},
        )
        return _submit_response(outcome)


def _submit_response(outcome: TxOutcome) -> relayer_pb2.SubmitResponse:
    """A ledger write's outcome as the API message."""
    return relayer_pb2.SubmitResponse(
        tx_id=outcome.tx_id, height=outcome.height, already_applied=outcome.already_applied
    )
