"""The ledger adapter for the bridge chaincode on a Hyperledger Fabric channel.

Fabric orders with a crash/Byzantine fault tolerant orderer and never forks: a block that a
peer has committed is final. So ``finalized_height()`` is the peer's height minus one (the
last committed block) and every read of committed state is a final read.

Reads go through the Gateway's Evaluate (committed world state of the gateway's peer);
events through the peer's Deliver service (full blocks, bounded ranges; only VALID
transactions count, checked against each block's TRANSACTIONS_FILTER). Writes go through
Endorse/Submit/CommitStatus and are idempotent: each step first reads the leg and sends
nothing when it is already applied with the same terms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any

from bridge.core import words as core_words
from bridge.core.batch import BatchCertificate
from bridge.core.reasons import ErrorReason
from bridge.domain.committee import EpochWindow
from bridge.domain.errors import InvalidInput, LedgerRejected, NotFound, Unavailable
from bridge.domain.flow import FlowStatus
from bridge.domain.governance import ZERO_WORD, HaltStatus, order_to_json
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import (
    Action,
    EventPosition,
    HolderStatus,
    LedgerEvent,
    Leg,
    LegStatus,
    TxOutcome,
)
from bridge.domain.supply import SupplyReading
from bridge.ledgers.bounded import gather_bounded
from bridge.ledgers.fabric import batch, codec, past_supply
from bridge.ledgers.fabric._protos import ledger_pb2
from bridge.ledgers.fabric.addresses import FabricAddressCodec
from bridge.ledgers.fabric.blocks import (
    DeliveredEvent,
    KeyVersion,
    TxStateAccess,
    block_header_hash,
    block_validated,
    definition_changed_in_block,
    state_access_in_block,
)
from bridge.ledgers.fabric.gateway import GatewayClient, PreparedTransaction
from bridge.ledgers.fabric.holders import HolderReads, read_holder_status
from bridge.ledgers.steps import GovernanceWrite, RotationWrite, Step, StepTemplate

EVENT_NAME = "LegStateChanged"
"""The chaincode event every leg transition emits."""
DELIVER_CHUNK = 500
"""Blocks per Deliver request when scanning for events."""
SUPPLY_ATTEMPTS = 5
"""Reads of ``Supply`` before giving up when every one raced a new block."""
SUPPLY_REPLAY_BLOCKS = 128
"""How far back :meth:`FabricAdapter.supply` answers by replaying the blocks since."""
ORIGIN_READS = 4
"""Deliver reads at once of the blocks that wrote a past height's counter values."""


_ADDRESSES = FabricAddressCodec()


def fabric_bridge_word(channel: str, chaincode: str) -> bytes:
    """The bridge endpoint's 32-byte identity: keccak256("fabric:" + channel + ":" + chaincode)
    (the protocol core's rule)."""
    return core_words.fabric_bridge_word(channel, chaincode)


class FabricAdapter(StepTemplate):
    """LedgerAdapter for the bridge chaincode ``chaincode`` on ``client``'s channel.

    ``operator`` names the submitting identity in logs and outcomes (use
    :meth:`SigningIdentity.chaincode_identity`, the form the chaincode's relayer list holds);
    an empty operator makes the adapter read-only (:meth:`submit` refuses with ``ReadOnly``),
    although Fabric needs a client identity even to read.
    """

    KIND = "fabric"
    max_batch_items = batch.MAX_BATCH_ITEMS
    """The most items one ``submit_batch`` carries (the chaincode's bound)."""
    ADDRESSES = _ADDRESSES

    def __init__(
        self, ledger: LedgerId, client: GatewayClient, chaincode: str, operator: str = ""
    ) -> None:
        if not chaincode:
            raise InvalidInput("a chaincode name is required")
        self._ledger = ledger
        self._client = client
        self._chaincode = chaincode
        self._operator = operator
        self._bridge_word = fabric_bridge_word(client.channel, chaincode)
        self._holder_reads = HolderReads()

    # -- identity ----------------------------------------------------------------------
    @property
    def operator(self) -> str:
        """The submitting identity's name, or empty for a read-only adapter."""
        return self._operator

    @property
    def chaincode(self) -> str:
        """The bridge chaincode's name on the channel."""
        return self._chaincode

    @property
    def client(self) -> GatewayClient:
        """The Gateway client (shared; closed by :meth:`close`)."""
        return self._client

    # -- reads ---------------------------------------------------------------------------
    async def network_word(self) -> bytes:
        """The channel's genesis block hash, read through this adapter's peer (Deliver)."""
        return await self._client.genesis_hash()

    async def endpoint_info(self) -> dict[str, str]:
        """The chaincode's ``Info`` on the client's channel: ``ledger_name``,
        ``channel_id``, ``chaincode_name``, ``ledger_word``, ``bridge_word`` (strings), and
        ``governance`` (issuer, admin organisations, quorum, sequence) as canonical JSON.

        Raises ``LedgerRejected`` (``NotInitialized``, ...) as the chaincode answers.
        """
        raw = await self._client.evaluate(self._chaincode, "Info", [])
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"Info answered {raw[:200]!r}")
        return {
            str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in info.items()
        }

    async def finalized_height(self) -> int:
        """The last committed block (Fabric commits are final): chain height minus one."""
        return max(0, await self._client.block_height() - 1)

    async def wait_new_head(self, above: int, timeout_s: float) -> int | None:
        """A finalized height above ``above``, or None after ``timeout_s`` (the relayer's
        watcher waits here instead of polling; issue 14 item 4). The height is read first:
        when it is already above, it is the answer; otherwise the peer is asked for block
        ``above + 1`` and answers when it commits it (Fabric commits are final).

        Raises ``PermissionDenied`` when the peer refuses this identity the filtered Deliver
        (the channel's ``event/FilteredBlock`` ACL): the watcher then polls instead."""
        final = await self.finalized_height()
        if final > above:
            return final
        return above + 1 if await self._client.wait_block(above + 1, timeout_s) else None

    async def events(self, after: EventPosition | None, up_to_height: int) -> list[LedgerEvent]:
        """Every ``LegStateChanged`` event after ``after`` through block ``up_to_height``.

        Positions are (block number, ordinal of the chaincode's event among the block's VALID
        transactions); events of transactions that failed validation are never returned.
        Complete and duplicate-free for any ``after``: resuming from the last returned
        position yields exactly the events that follow it. ``up_to_height`` must not exceed
        :meth:`finalized_height`. A payload that does not parse raises ValueError (the caller
        must not skip past it).
        """
        start = after.height if after is not None else 0
        out: list[LedgerEvent] = []
        lo = start
        while lo <= up_to_height:
            hi = min(up_to_height, lo + DELIVER_CHUNK - 1)
            block, shift = -1, 0
            for delivered in await self._client.block_events(self._chaincode, lo, hi):
                if delivered.block_number != block:
                    block, shift = delivered.block_number, 0
                # ---- batch: a LegStatesChanged event carries many legs (batch.leg_payloads)
                legs = batch.leg_payloads(delivered.event_name, delivered.payload)
                for k, payload in enumerate(legs):
                    position = EventPosition(block, delivered.ordinal + shift + k)
                    if after is None or position > after:
                        out.append(self._event(position, delivered, payload))
                shift += max(0, len(legs) - 1)
            lo = hi + 1
        return out

    def _event(
        self, position: EventPosition, delivered: DeliveredEvent, payload: Mapping[str, Any]
    ) -> LedgerEvent:
        return codec.leg_event_from_json(
            payload,
            ledger=self._ledger.name,
            position=position,
            block_hash=delivered.block_hash,
            tx_id=delivered.tx_id,
        )

    async def get_leg(self, transfer_id: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        """A leg's latest committed state (final: Fabric never reverts a commit).

        Fabric cannot read state as of a past block: ``height``, when given, is only echoed as
        the reported height. Without it the finalized height is read *before* the state, so
        the state includes every block up to the reported height (and possibly later ones).
        Read as :meth:`get_legs` reads a list of one: one ``Legs`` evaluate carrying the
        state and the not-before, and a malformed answer is
        ``LedgerRejected(MALFORMED_ANSWER)``.
        """
        (status,) = await self.get_legs([transfer_id], leg, height)
        return status

    # ---- batch (issue 14 item 4): many legs per evaluate
    async def get_legs(
        self, transfer_ids: Sequence[bytes], leg: Leg, height: int | None = None
    ) -> list[LegStatus]:
        """The legs of ``transfer_ids`` (one ``leg`` side), in order, as :meth:`get_leg`
        reads each (state, terms hash, reason, not-before), in one ``Legs`` evaluate per
        ``codec.MAX_LEG_READS`` ids instead of two evaluates per id. Every chunk is read
        after the finalized height is taken, so each leg includes at least every block up
        to the reported height (as :meth:`get_leg`). A malformed answer is
        ``LedgerRejected(MalformedAnswer)``."""
        at = height if height is not None else await self.finalized_height()
        out: list[LegStatus] = []
        for lo in range(0, len(transfer_ids), codec.MAX_LEG_READS):
            chunk = transfer_ids[lo : lo + codec.MAX_LEG_READS]
            raw = await self._client.evaluate(
                self._chaincode, "Legs", [codec.leg_name(leg), codec.transfer_ids_to_json(chunk)]
            )
            try:
                out.extend(codec.legs_from_json(raw, chunk, leg, at))
            except ValueError as exc:
                raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"Legs: {exc}") from exc
        return out

    async def holder_status(self, security: SecurityId, holder: bytes) -> HolderStatus:
        """Registration, balance, receive status, eligibility, freeze and pause (committed).

        ``holder`` must be a Fabric address word (12 zero bytes + 20); InvalidInput otherwise.
        """
        return await read_holder_status(self._evaluate, security, self.format_address(holder))

    async def holder_statuses(
        self, security: SecurityId, holders: Sequence[bytes]
    ) -> list[HolderStatus]:
        """Each of ``holders`` as :meth:`holder_status` reads it, in order
        (:class:`bridge.ledgers.many_holders.ManyHoldersReader`): one ``HolderStatuses``
        evaluate per ``codec.MAX_HOLDER_READS`` holders
        (:class:`bridge.ledgers.fabric.holders.HolderReads`)."""
        accounts = [self.format_address(h) for h in holders]
        return await self._holder_reads.read(self._evaluate, security, accounts)

    async def _evaluate(self, function: str, args: list[str]) -> bytes:
        return await self._client.evaluate(self._chaincode, function, args)

    async def supply(self, security: SecurityId, height: int | None = None) -> SupplyReading:
        """The ``Supply`` figures at the finalized height, with that block's header hash.

        Fabric cannot read state as of a past block, so this reads the chain info (height and
        the last block's hash), evaluates ``Supply``, and reads the chain info again; when a
        block was committed in between it tries again (``SUPPLY_ATTEMPTS`` times, then
        Unavailable). The peer updates its state database and its block height under one
        lock, so equal heights around the query mean the figures are those of that block.
        (All three reads go to the gateway's peer, like :meth:`finalized_height`.)

        A past ``height`` (at most SUPPLY_REPLAY_BLOCKS back) is answered exactly from the
        current figures and the blocks after it (:mod:`bridge.ledgers.fabric.past_supply`):
        the counter shards those blocks' VALID transactions wrote are taken back to the
        values they had at ``height``, read from the transactions that wrote them, with
        ``height``'s header hash. When a block after it registered, paused or recounted the
        security, committed a definition of the chaincode or moved units without the
        counters, or further back, InvalidInput ("Fabric cannot read supply at a past
        height: ..."); blocks that do not add up are Unavailable; a height not yet finalized
        is InvalidInput too. An unregistered security raises NotFound.
        """
        for _ in range(SUPPLY_ATTEMPTS):
            chain_height, block_hash = await self._chain_info()
            final = max(0, chain_height - 1)
            if height is not None and height < final - SUPPLY_REPLAY_BLOCKS:
                raise InvalidInput(
                    f"Fabric cannot read supply at a past height: {height} is more than"
                    f" {SUPPLY_REPLAY_BLOCKS} blocks behind {final}"
                )
            if height is not None and height > final:
                raise InvalidInput(f"height {height} is not finalized on {self._ledger}")
            try:
                raw = await self._client.evaluate(self._chaincode, "Supply", [security.isin])
            except LedgerRejected as exc:
                if exc.reason is ErrorReason.UNKNOWN_SECURITY:
                    raise NotFound(
                        f"security {security.isin} is not registered on {self._ledger}"
                    ) from exc
                raise
            after, _ = await self._chain_info()
            if after != chain_height:
                continue
            figures = codec.supply_from_json(raw)
            at = final
            if height is not None and height < final:
                block_hash, figures = await self._past_figures(
                    security, height, final, block_hash, figures
                )
                at = height
            elif len(block_hash) != 32:  # a peer that does not report it: read the header
                block_hash = await self._block_hash(final)
            return SupplyReading(
                ledger=self._ledger.name,
                height=at,
                block_hash=block_hash,
                total_supply=figures["total_supply"],
                escrowed=figures["escrowed"],
                prepared=figures["prepared"],
                burned_out=figures["burned_out"],
                minted_in=figures["minted_in"],
            )
        raise Unavailable(
            f"{self._ledger}: a block was committed during each of {SUPPLY_ATTEMPTS} supply reads"
        )

    # ---- flow limits (ADR 0010)
    async def flow_status(self, security: SecurityId, counterpart: LedgerId) -> FlowStatus:
        """The chaincode's ``FlowStatus`` for the lane (``security``, ``counterpart``), as the
        gateway peer's chaincode server computes it now (``as_of``: that server's clock).
        Fabric cannot evaluate at a past block: this is the current state, a hint for
        scheduling; Lock and Prepare decide. A lane without a limit reads as all zero."""
        raw = await self._client.evaluate(
            self._chaincode, "FlowStatus", [security.isin, counterpart.name]
        )
        try:
            as_of, figures = codec.flow_status_from_json(raw)
        except ValueError as exc:
            raise Unavailable(f"{self._ledger}: malformed FlowStatus answer: {exc}") from exc
        return FlowStatus.from_words(
            self._ledger.name, counterpart.name, security.isin, as_of, figures
        )

    async def _chain_info(self) -> tuple[int, bytes]:
        """The channel height and the header hash of its last block, read together."""
        raw = await self._client.evaluate("qscc", "GetChainInfo", [self._client.channel])
        info = ledger_pb2.BlockchainInfo.FromString(raw)
        return int(info.height), bytes(info.currentBlockHash)

    async def _past_figures(
        self,
        security: SecurityId,
        height: int,
        final: int,
        final_hash: bytes,
        figures_now: Mapping[str, int],
    ) -> tuple[bytes, dict[str, int]]:
        """Block ``height``'s header hash and ``security``'s figures at it, from
        ``figures_now`` (read at ``final``, whose header hash is ``final_hash``), the reads and
        writes of blocks ``height + 1 .. final`` and the transactions that wrote the changed
        shards' earlier values (:mod:`bridge.ledgers.fabric.past_supply`). InvalidInput when
        the height cannot be answered exactly (a block after it registered, paused or
        recounted the security, committed a definition of the chaincode, or moved units
        without the counters); Unavailable when the blocks do not add up (a block missing or
        not validated, ``final`` not the block the figures were read at, a read set that
        contradicts them)."""
        word = security.word
        shards = partial(codec.is_counter_shard_key, security=word)
        block_hash = b""
        accesses: list[TxStateAccess] = []
        at_height: list[TxStateAccess] = []
        delivered = False
        try:
            async with aclosing(self._client.blocks(height, final)) as blocks:
                async for block in blocks:
                    number = int(block.header.number)
                    if not block_validated(block):  # cannot tell which writes count
                        raise Unavailable(
                            f"{self._ledger}: block {number} carries no validity flags"
                        )
                    if number == height:
                        block_hash = block_header_hash(block.header)
                        at_height = state_access_in_block(block, self._chaincode, shards)
                        continue
                    if definition_changed_in_block(block, self._chaincode):
                        raise InvalidInput(
                            f"{past_supply.REFUSAL}: block {number} committed a definition of"
                            f" {self._chaincode} after {height}"
                        )
                    accesses += state_access_in_block(
                        block, self._chaincode, partial(codec.is_supply_key, security=word)
                    )
                    if number == final:
                        if len(final_hash) == 32 and block_header_hash(block.header) != final_hash:
                            raise Unavailable(
                                f"{self._ledger}: block {final} delivered is not the block the"
                                " supply was read at"
                            )
                        delivered = True
                        break
        except ValueError as exc:  # a transaction the parser cannot order
            raise Unavailable(f"{self._ledger}: {exc}") from exc
        if not delivered or not block_hash:
            raise Unavailable(f"{self._ledger}: blocks {height}..{final} were not delivered")
        changes = past_supply.shard_changes(security, height, accesses)
        origins = sorted({v.block_number for v in changes.origins()} - {height})
        try:
            blocks_read = await gather_bounded(self._read_block, origins, ORIGIN_READS)
            origin_txs = at_height + [
                tx for b in blocks_read for tx in state_access_in_block(b, self._chaincode, shards)
            ]
        except ValueError as exc:
            raise Unavailable(f"{self._ledger}: {exc}") from exc
        origin_writes = {KeyVersion(tx.block_number, tx.tx_number): tx.writes for tx in origin_txs}
        return block_hash, past_supply.figures_at(figures_now, changes, origin_writes)

    async def _read_block(self, number: int) -> Any:
        """Block ``number``, read through Deliver."""
        async with aclosing(self._client.blocks(number, number)) as blocks:
            async for block in blocks:
                return block
        raise Unavailable(f"{self._ledger}: block {number} was not delivered")

    async def _block_hash(self, number: int) -> bytes:
        """The header hash of block ``number``, read through Deliver."""
        return block_header_hash((await self._read_block(number)).header)

    # -- writes --------------------------------------------------------------------------
    # ---- the step template (bridge.ledgers.steps): send, wait final
    @property
    def writable(self) -> bool:
        """True with an operator identity."""
        return bool(self._operator)

    async def _send_step(self, step: Step) -> TxOutcome:
        """Endorse, order and wait for a VALID commit (final on Fabric).

        A refusal by the chaincode raises LedgerRejected with the chaincode's error name,
        unless a re-read shows that a concurrent submission applied the step meanwhile (then
        ``already_applied``) or the gateway's own peer would accept it (an endorsing peer
        lags: Unavailable). Transport faults and read conflicts raise Unavailable; a retry
        is safe.
        """
        action = step.action
        args = [codec.terms_to_json(step.terms)]
        if action is Action.LOCK:
            args.append("0x" + step.instruction.hex())
        else:
            assert step.certificate is not None
            args.append(codec.certificate_to_json(step.certificate))
        try:
            prepared = await self._client.endorse(
                self._chaincode, codec.STEP_FUNCTIONS[action], args
            )
        except LedgerRejected as refusal:  # the chaincode refused on some endorser's state
            applied = await self._step_applied(step)
            if applied is not None:
                return applied
            await self._confirm_refusal(action, args, refusal)
            raise
        try:
            result = await self._client.submit_prepared(prepared)
        except LedgerRejected:  # ordered, then invalidated (a validation code)
            applied = await self._step_applied(step)
            if applied is not None:
                return applied
            raise
        return TxOutcome(tx_id=result.tx_id, height=result.block_number, already_applied=False)

    async def _wait_step_final(self, step: Step, handle: TxOutcome) -> TxOutcome:
        """Nothing to wait for: the submit returned after the commit, which is final."""
        return handle

    async def _confirm_refusal(
        self, action: Action, args: list[str], refusal: LedgerRejected
    ) -> None:
        """Raise Unavailable unless the gateway's own peer refuses ``action`` too.

        Every org's peer endorses a submission, and a submit returns once the gateway's
        peer has committed: another org's peer may still be a block behind and refuse on
        state this adapter has already read (a balance just minted, say). Callers treat a
        refusal as the ledger's decision (a refused lock fails its transfer), so a refusal
        that the reading peer does not share is reported as retryable instead. Only for
        refusals at endorsement: a validation code after ordering is not a peer's view.
        """
        try:
            await self._client.evaluate(self._chaincode, codec.STEP_FUNCTIONS[action], args)
        except LedgerRejected:
            return  # the ledger's decision, as far as this adapter can see
        raise Unavailable(
            f"{self._ledger}: {action.name} refused by an endorsing peer ({refusal}) but"
            " accepted by the gateway's peer; another peer is behind, retry"
        ) from refusal

    # ---- batch (issue 14 items 2-3): many steps in one invocation
    async def submit_batch(
        self,
        action: Action,
        items: Sequence[batch.BatchItem],
        certificate: BatchCertificate | None = None,
    ) -> batch.BatchOutcome:
        """Apply ``action`` to every item in ONE chaincode invocation (``LockBatch``, or
        ``PrepareBatch``/``CommitBatch``/``AbortBatch`` under one batch certificate) and
        return once it committed VALID (final), with each item's leg and whether it was
        skipped (already applied: a replay is safe and moves nothing).

        Refusals refuse the whole invocation, nothing applied: ``LedgerRejected`` with the
        chaincode's reason (``InvalidBatchProof``, ``DuplicateBatchItem``,
        ``WrongBatchKind``, ``InvalidBatch``, a certificate reason, or an item's own step
        refusal), the item's index as the figure ``item`` where one item caused it
        (:func:`batch.refused_item`); as for single steps, a refusal at endorsement that
        the gateway's own peer does not share is ``Unavailable`` (a peer lags). Read
        conflicts are ``Unavailable`` (``TransactionInvalid``): send the batch again.
        ValueError for a batch outside 1..MAX_BATCH_ITEMS or a certificate where none
        belongs (or none where one does)."""
        # SECURITY: a read-only adapter (a member's reader) never sends.
        if not self.writable:
            raise LedgerRejected(ErrorReason.READ_ONLY, self._read_only_detail())
        function = batch.BATCH_FUNCTIONS[action]
        args = batch.arguments(action, items, certificate)
        try:
            prepared = await self._client.endorse(self._chaincode, function, args)
        except LedgerRejected as refusal:
            try:
                await self._client.evaluate(self._chaincode, function, args)
            except LedgerRejected:
                raise refusal from None
            raise Unavailable(
                f"{self._ledger}: {function} refused by an endorsing peer ({refusal}) but"
                " accepted by the gateway's peer; another peer is behind, retry"
            ) from refusal
        result = await self._client.submit_prepared(prepared)
        try:
            results = batch.results_from_json(prepared.result, action, items, self._ledger.word)
        except ValueError as exc:
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"{function}: {exc}") from exc
        return batch.BatchOutcome(result.tx_id, result.block_number, results)

    # ---- committee rotation

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        """The chaincode's ``Committees`` view (latest committed state): the latest installed
        epoch and, while its window lasts, the previous one, ascending by epoch. "Now" is the
        query's transaction timestamp (this client's clock, see ADR 0008); Fabric cannot read
        a past height, so ``height`` is only checked (InvalidInput above the finalized
        height), like :meth:`get_leg` reads the latest state for any past height."""
        if height is not None and height > await self.finalized_height():
            raise InvalidInput(f"height {height} is not finalized on {self._ledger}")
        raw = await self._client.evaluate(self._chaincode, "Committees", [])
        try:
            return codec.committees_from_json(raw)
        except ValueError as exc:
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"Committees: {exc}") from exc

    # ---- depository halt

    async def halt_status(self, security: SecurityId | None) -> HaltStatus:
        """The chaincode's ``HaltStatus`` (committed state: final on Fabric)."""
        word = ZERO_WORD if security is None else security.word
        raw = await self._client.evaluate(self._chaincode, "HaltStatus", [codec.word_hex(word)])
        return codec.halt_status_from_json(raw)

    # ---- governance writes: the template's skeleton (bridge.ledgers.steps)
    local_order_expiry = True
    """The chaincode checks an order's expiry against the transaction time (ADR 0008)."""

    def _write_args(self, write: GovernanceWrite) -> list[str]:
        if isinstance(write, RotationWrite):
            return [
                codec.rotation_to_json(write.rotation),
                codec.certificate_to_json(write.certificate),
            ]
        return [
            json.dumps(order_to_json(write.order), sort_keys=True, separators=(",", ":")),
            "0x" + write.signature.hex(),
        ]

    async def _send_write(self, write: GovernanceWrite) -> PreparedTransaction:
        """Endorse ``RotateCommittee(rotation, certificate)`` or ``ApplyOrder(order JSON,
        signature)`` on every org's peer."""
        return await self._client.endorse(self._chaincode, write.function, self._write_args(write))

    async def _wait_write_final(
        self, write: GovernanceWrite, handle: PreparedTransaction
    ) -> TxOutcome:
        """Order the endorsed transaction and wait for a VALID commit (final on Fabric)."""
        result = await self._client.submit_prepared(handle)
        return TxOutcome(tx_id=result.tx_id, height=result.block_number, already_applied=False)

    async def _confirm_write_refusal(
        self, write: GovernanceWrite, refusal: LedgerRejected, *, ordered: bool
    ) -> None:
        """Ask the gateway's own peer: return when it shows the rotation installed; raise
        its own refusal when it refuses too (the original ``refusal`` after ordering: a
        validation code); Unavailable when it would accept a write refused at endorsement.

        SECURITY (review 2 finding 1): a refusal is final for the caller (the halt book, a
        rotation), and the endorsement error may come from any org's peer (one still behind
        a SET_DEPOSITORY or a rotation, or a hostile one). Only the gateway's own peer, the
        one this adapter reads, may decide that a governance write is refused."""
        try:
            await self._client.evaluate(self._chaincode, write.function, self._write_args(write))
        except LedgerRejected as own:
            if own.reason == ErrorReason.ROTATION_ALREADY_INSTALLED:
                return
            if ordered:
                raise refusal from None
            raise own from refusal
        if ordered:
            raise refusal
        raise Unavailable(
            f"{self._ledger}: {write.function} refused by an endorsing peer ({refusal}) but"
            " accepted by the gateway's peer; another peer is behind, retry"
        ) from refusal

    async def close(self) -> None:
        """Close the Gateway client's connection."""
        await self._client.close()
