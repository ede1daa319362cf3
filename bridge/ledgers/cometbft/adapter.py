"""The ledger adapter for the KSTB application on a CometBFT chain (ADR 0018).

CometBFT has instant finality: a committed block is final, so ``finalized_height`` is the
latest committed block and every ABCI query (answered from committed state at a height) is
a final read. The application keeps every height's state, so reads at a past height are
exact. Steps go through the submit template: send = sign and broadcast (CheckTx), wait
final = the transaction committed in a block; a refusal is the result code's ErrorReason.
The endpoint speaks the chaincode protocol's JSON formats (``bridge.ledgers.fabric.codec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.aio import stop_task
from bridge.config import LedgerConfig
from bridge.core.batch import BatchCertificate
from bridge.core.reasons import ErrorReason
from bridge.domain.committee import EpochWindow
from bridge.domain.errors import InvalidInput, LedgerRejected, NotFound
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
from bridge.ledgers.cometbft.envelope import MAX_TX_BYTES
from bridge.ledgers.cometbft.heads import NewBlockHeaders, websocket_connector, websocket_url
from bridge.ledgers.cometbft.kind import CometAddressCodec
from bridge.ledgers.cometbft.rpc import CometClient, TxEvent, refusal
from bridge.ledgers.fabric import batch as fabric_batch
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric.holders import HolderReads, read_holder_status
from bridge.ledgers.heads import HeadSubscription, HeadWatch
from bridge.ledgers.steps import GovernanceWrite, RotationWrite, Step, StepTemplate

EVENT_NAME = "LegStateChanged"
ENVELOPE_OVERHEAD = 1024
"""---- batch: bytes an envelope adds to its arguments' JSON (body fields, signature), with
margin: a batch is refused locally when its arguments leave less than this below
``MAX_TX_BYTES``."""
CATCH_UP_S = 5.0
"""How long a read at a height this node has not committed yet waits for it."""
META_PAGE = 20
"""Block metas per ``blockchain`` call (CometBFT's maximum)."""
_ADDRESSES = CometAddressCodec()


class CometAdapter(StepTemplate):
    """LedgerAdapter over one node's JSON-RPC; writable when the client holds a signer."""

    KIND = "cometbft"
    max_batch_items = fabric_batch.MAX_BATCH_ITEMS
    """The most items one ``submit_batch`` carries (the application's bound); the 64 KiB
    transaction limit is checked per batch and usually binds first (about 50 items)."""
    ADDRESSES = _ADDRESSES

    def __init__(self, config: LedgerConfig, client: CometClient) -> None:
        from bridge.ledgers.kinds import get_kind

        self._ledger = config.id
        self._client = client
        self._bridge_word = get_kind("cometbft").bridge_word(config)
        self._holder_reads = HolderReads()
        # ---- pushed blocks (issue 14 item 4): the relayer's watcher waits for the next block
        self._heads = HeadWatch(
            client.latest_height, max(0.05, min(0.25, config.block_interval / 10))
        )
        self._head_sub: HeadSubscription | None = None
        with contextlib.suppress(ValueError):  # not http(s): no WebSocket to derive, polling
            self._head_sub = HeadSubscription(
                websocket_connector(websocket_url(config.rpc_url)),
                self._heads,
                NewBlockHeaders(config.channel),
                silence_s=max(3.0, 3 * config.block_interval),
                ledger=config.id.name,
            )
        self._head_sub_task: asyncio.Task[None] | None = None

    # -- identity -------------------------------------------------------------------------
    @property
    def operator(self) -> str:
        """The signer's endpoint identity (``key:<account id>``), or empty (read-only)."""
        return f"key:{self._client.account}" if self._client.account else ""

    @property
    def writable(self) -> bool:
        """True with a signer."""
        return bool(self._client.account)

    @property
    def client(self) -> CometClient:
        """The node client (closed by :meth:`close`)."""
        return self._client

    # -- reads --------------------------------------------------------------------------------
    async def _view(self, function: str, args: list[str], height: int | None = None) -> bytes:
        value, _ = await self._client.query(function, args, height or 0)
        return value

    async def endpoint_info(self) -> dict[str, object]:
        """The endpoint's ``Info`` (ledger name, chain id, app name, words, governance)."""
        info = json.loads(await self._view("Info", []))
        if not isinstance(info, dict):
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, "Info is not an object")
        return info

    async def network_word(self) -> bytes:
        """The network word the chain's endpoint holds (its genesis pinned it)."""
        info = await self.endpoint_info()
        return codec.word_from_json(info.get("network_word"), "network_word")

    async def finalized_height(self) -> int:
        """The latest committed block (CometBFT commits are final)."""
        return await self._client.latest_height()

    async def wait_new_head(self, above: int, timeout_s: float) -> int | None:
        """The first committed height above ``above`` that an ``abci_info`` read returned, or
        None after ``timeout_s`` (the relayer's watcher waits here instead of polling).

        The node's ``NewBlockHeader`` events (its ``/websocket``, subscribed on first use)
        wake the shared read; while the subscription is down (no WebSocket, a silent or
        lost session) the height is polled every block interval / 10 (0.05 to 0.25 s)."""
        if (
            self._head_sub is not None
            and not self._head_sub.refused  # another chain: polled for good, logged once
            and (self._head_sub_task is None or self._head_sub_task.done())
        ):
            self._head_sub_task = asyncio.ensure_future(self._head_sub.run())
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            return await self._heads.wait_above(above, deadline)
        except TimeoutError:
            return None

    async def _final_at_least(self, height: int | None) -> int:
        """The finalized height, once it reaches ``height`` (a node other than the one that
        reported ``height`` may be a block behind: wait up to CATCH_UP_S); InvalidInput when
        it does not."""
        final = await self.finalized_height()
        deadline = time.monotonic() + CATCH_UP_S
        while height is not None and height > final:
            if time.monotonic() > deadline:
                raise InvalidInput(f"height {height} is not finalized on {self._ledger}")
            await asyncio.sleep(0.1)
            final = await self.finalized_height()
        return final

    async def events(self, after: EventPosition | None, up_to_height: int) -> list[LedgerEvent]:
        """Every ``LegStateChanged`` after ``after`` through ``up_to_height``, in order.

        Positions are (height, index of the transaction in its block); only successful
        transactions carry events. Blocks are listed in pages of META_PAGE metas and only
        blocks with transactions are read (``block_results``). A payload that does not
        parse raises ValueError (the caller must not skip past it)."""
        lo = max(1, after.height if after is not None else 1)
        out: list[LedgerEvent] = []
        while lo <= up_to_height:
            hi = min(up_to_height, lo + META_PAGE - 1)
            for height, block_hash, n_txs in await self._client.block_metas(lo, hi):
                if not n_txs:
                    continue
                shift = 0
                for ev in await self._client.block_events(height):
                    # ---- batch: a LegStatesChanged event carries many legs
                    legs = fabric_batch.leg_payloads(ev.name, ev.payload)
                    for k, payload in enumerate(legs):
                        position = EventPosition(ev.height, ev.index + shift + k)
                        if after is None or position > after:
                            out.append(self._event(position, block_hash, ev, payload))
                    shift += max(0, len(legs) - 1)
            lo = hi + 1
        return out

    def _event(
        self, position: EventPosition, block_hash: bytes, ev: TxEvent, payload: Mapping[str, Any]
    ) -> LedgerEvent:
        return codec.leg_event_from_json(
            payload,
            ledger=self._ledger.name,
            position=position,
            block_hash=block_hash,
            tx_id=ev.tx_hash,
        )

    async def get_leg(self, transfer_id: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        """The leg's state at ``height`` (default: the latest committed block), exact; read
        as :meth:`get_legs` reads a list of one (one ``Legs`` query carrying the state and
        the not-before; a malformed answer is ``LedgerRejected(MALFORMED_ANSWER)``)."""
        (status,) = await self.get_legs([transfer_id], leg, height)
        return status

    # ---- batch (issue 14 item 4): many legs per query
    async def get_legs(
        self, transfer_ids: Sequence[bytes], leg: Leg, height: int | None = None
    ) -> list[LegStatus]:
        """The legs of ``transfer_ids`` (one ``leg`` side) at ``height`` (default: the
        latest committed block), exact and in order, as :meth:`get_leg` reads each, in one
        ``Legs`` query per ``codec.MAX_LEG_READS`` ids. A malformed answer is
        ``LedgerRejected(MalformedAnswer)``."""
        final = await self._final_at_least(height)
        at = height if height is not None else final
        out: list[LegStatus] = []
        for lo in range(0, len(transfer_ids), codec.MAX_LEG_READS):
            chunk = transfer_ids[lo : lo + codec.MAX_LEG_READS]
            raw = await self._view(
                "Legs", [codec.leg_name(leg), codec.transfer_ids_to_json(chunk)], at
            )
            try:
                out.extend(codec.legs_from_json(raw, chunk, leg, at))
            except ValueError as exc:
                raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"Legs: {exc}") from exc
        return out

    async def holder_status(self, security: SecurityId, holder: bytes) -> HolderStatus:
        """Registration, balance and standing at the latest committed block."""
        return await read_holder_status(self._view, security, self.format_address(holder))

    async def holder_statuses(
        self, security: SecurityId, holders: Sequence[bytes]
    ) -> list[HolderStatus]:
        """Each of ``holders`` as :meth:`holder_status` reads it, in order
        (:class:`bridge.ledgers.many_holders.ManyHoldersReader`): one ``HolderStatuses``
        query per ``codec.MAX_HOLDER_READS`` holders, all at one height
        (:class:`bridge.ledgers.fabric.holders.HolderReads`)."""
        accounts = [self.format_address(h) for h in holders]
        at = await self.finalized_height()  # every chunk at one height

        async def view(function: str, args: list[str]) -> bytes:
            return await self._view(function, args, at)

        return await self._holder_reads.read(view, security, accounts)

    async def supply(self, security: SecurityId, height: int | None = None) -> SupplyReading:
        """The ``Supply`` figures as of block ``height`` (default: the latest), exactly (the
        application keeps every height's state), with that block's hash."""
        final = await self._final_at_least(height)
        at = height if height is not None else final
        try:
            raw, read = await self._client.query("Supply", [security.isin], at)
        except LedgerRejected as exc:
            if exc.reason is ErrorReason.UNKNOWN_SECURITY:
                raise NotFound(
                    f"security {security.isin} is not registered on {self._ledger}"
                ) from exc
            raise
        figures = codec.supply_from_json(raw)
        return SupplyReading(
            ledger=self._ledger.name,
            height=read,
            block_hash=await self._client.block_hash(read),
            total_supply=figures["total_supply"],
            escrowed=figures["escrowed"],
            prepared=figures["prepared"],
            burned_out=figures["burned_out"],
            minted_in=figures["minted_in"],
        )

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        """The endpoint's ``Committees`` at ``height`` ("now" = that block's time)."""
        final = await self._final_at_least(height)
        raw = await self._view("Committees", [], height if height is not None else final)
        try:
            return codec.committees_from_json(raw)
        except ValueError as exc:
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"Committees: {exc}") from exc

    async def flow_status(self, security: SecurityId, counterpart: LedgerId) -> FlowStatus:
        """The lane's flow limit and buckets as of the latest block's time."""
        raw = await self._view("FlowStatus", [security.isin, counterpart.name])
        try:
            as_of, figures = codec.flow_status_from_json(raw)
        except ValueError as exc:
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"FlowStatus: {exc}") from exc
        return FlowStatus.from_words(
            self._ledger.name, counterpart.name, security.isin, as_of, figures
        )

    async def halt_status(self, security: SecurityId | None) -> HaltStatus:
        """The endpoint's ``HaltStatus`` (committed state)."""
        word = ZERO_WORD if security is None else security.word
        return codec.halt_status_from_json(await self._view("HaltStatus", [codec.word_hex(word)]))

    # -- writes: the step template ---------------------------------------------------------
    async def _send_step(self, step: Step) -> str:
        """Sign and broadcast the step's call; its transaction hash."""
        args = [codec.terms_to_json(step.terms)]
        if step.action is Action.LOCK:
            args.append("0x" + step.instruction.hex())
        else:
            assert step.certificate is not None
            args.append(codec.certificate_to_json(step.certificate))
        return await self._client.send(codec.STEP_FUNCTIONS[step.action], args)

    async def _wait_step_final(self, step: Step, handle: str) -> TxOutcome:
        """Wait until the transaction is committed (final). A refusal raises its code's
        ErrorReason, unless a re-read shows a concurrent submission applied the step."""
        done = await self._client.committed(handle)
        if done.code:
            applied = await self._step_applied(step)
            if applied is not None:
                return applied
            raise refusal(done.code, done.log, self._ledger.name)
        return TxOutcome(tx_id=handle, height=done.height, already_applied=False)

    # ---- batch (issue 14 items 2-3): many steps in one transaction
    async def submit_batch(
        self,
        action: Action,
        items: Sequence[fabric_batch.BatchItem],
        certificate: BatchCertificate | None = None,
    ) -> fabric_batch.BatchOutcome:
        """Apply ``action`` to every item in ONE transaction (the endpoint protocol's
        batched functions, as on Fabric: ``bridge.ledgers.fabric.batch``) and return once
        it is committed (final), with each item's leg and whether it was skipped (a
        replay). A refusal refuses the whole transaction: ``LedgerRejected`` with its
        reason and, where one item caused it, the figure ``item``. ValueError, before
        anything is sent, for a batch whose transaction would exceed the envelope's
        ``MAX_TX_BYTES`` (64 KiB: about 50 items, 1.25 kB each once escaped in the
        envelope; the chaincode's 200-item bound is Fabric's)."""
        # SECURITY: a read-only adapter (a member's reader) never sends.
        if not self.writable:
            raise LedgerRejected(ErrorReason.READ_ONLY, self._read_only_detail())
        function = fabric_batch.BATCH_FUNCTIONS[action]
        args = fabric_batch.arguments(action, items, certificate)
        size = len(json.dumps(args, separators=(",", ":"))) + ENVELOPE_OVERHEAD
        if size > MAX_TX_BYTES:  # the node would refuse it MALFORMED: never send it
            raise ValueError(
                f"{self._ledger}: a {function} of {len(items)} items needs about {size} bytes,"
                f" above the {MAX_TX_BYTES}-byte transaction limit; send fewer items"
            )
        done = await self._client.committed(await self._client.send(function, args))
        if done.code:
            raise refusal(done.code, done.log, self._ledger.name)
        try:
            results = fabric_batch.results_from_json(done.data, action, items, self._ledger.word)
        except ValueError as exc:
            raise LedgerRejected(ErrorReason.MALFORMED_ANSWER, f"{function}: {exc}") from exc
        return fabric_batch.BatchOutcome(done.tx_hash, done.height, results)

    # -- governance writes: the template's skeleton (bridge.ledgers.steps) -------------------
    local_order_expiry = True
    """The application checks an order's expiry against the block time (ADR 0008)."""

    async def _send_write(self, write: GovernanceWrite) -> str:
        """Sign and broadcast ``RotateCommittee`` or ``ApplyOrder``; the transaction hash."""
        if isinstance(write, RotationWrite):
            args = [
                codec.rotation_to_json(write.rotation),
                codec.certificate_to_json(write.certificate),
            ]
        else:
            args = [
                json.dumps(order_to_json(write.order), sort_keys=True, separators=(",", ":")),
                "0x" + write.signature.hex(),
            ]
        return await self._client.send(write.function, args)

    async def _wait_write_final(self, write: GovernanceWrite, handle: str) -> TxOutcome:
        """Wait until the transaction is committed (final); a refusal raises its code's
        ErrorReason (the template re-checks it against the applied state)."""
        done = await self._client.committed(handle)
        if done.code:
            raise refusal(done.code, done.log, self._ledger.name)
        return TxOutcome(tx_id=done.tx_hash, height=done.height, already_applied=False)

    async def close(self) -> None:
        """Stop the block subscription and the shared read; close the node client."""
        task, self._head_sub_task = self._head_sub_task, None
        if task is not None:
            await stop_task(task)
        await self._heads.close()
        await self._client.close()
