"""The ledger adapter for EVM chains (anvil, Hyperledger Besu, Kaia) over JSON-RPC.

Finality is modelled by ``finality_depth`` (0 for BFT chains with immediate finality).
Writes go through one :class:`NonceManager` per key and are idempotent: each step first
checks the leg's state and sends nothing when the step was already applied.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from eth_abi.exceptions import DecodingError
from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractCustomError,
    ContractLogicError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import RPCEndpoint

from bridge.aio import retrieve, stop_task
from bridge.config import LedgerConfig
from bridge.core.batch import BatchCertificate
from bridge.core.reasons import ErrorReason
from bridge.core.words import evm_network_word
from bridge.domain.committee import Committee, CommitteeRotation, EpochWindow
from bridge.domain.errors import BridgeError, InvalidInput, LedgerRejected, NotFound, Unavailable
from bridge.domain.flow import FlowStatus
from bridge.domain.governance import ZERO_WORD, HaltStatus, order_abi_tuple
from bridge.domain.hashing import keccak256
from bridge.domain.ids import (
    LedgerId,
    SecurityId,
    evm_address_word,
    word_to_evm_address,
)
from bridge.domain.ledger_batches import (
    BATCHED_ACTIONS,
    BatchItem,
    BatchItemResult,
    BatchOutcome,
    leg_of,
)
from bridge.domain.legs import (
    STEP_DONE,
    Action,
    EventPosition,
    HolderStatus,
    LedgerEvent,
    Leg,
    LegState,
    LegStatus,
    TxOutcome,
    leg_state_from_ledger,
)
from bridge.domain.signer import LocalKeySigner, Signer
from bridge.domain.supply import SupplyReading
from bridge.domain.terms import TransferTerms
from bridge.keys.evm_tx import sign_transaction
from bridge.ledgers.bounded import gather_bounded
from bridge.ledgers.evm.addresses import EvmAddressCodec
from bridge.ledgers.evm.artifacts import load_bytecode
from bridge.ledgers.evm.batch import BatchStep, batch_results, lock_call, step_call
from bridge.ledgers.evm.calls import ContractCalls
from bridge.ledgers.evm.heads import NewHeads, websocket_connector
from bridge.ledgers.evm.nonces import NonceManager
from bridge.ledgers.evm.profiles import fee_fields, needs, profile_of
from bridge.ledgers.evm.provider import SessionProvider
from bridge.ledgers.evm.quantities import MAX_HEAD, quantity
from bridge.ledgers.evm.reads import Batcher, FeeCache, FreshRead, read_at_block
from bridge.ledgers.evm.revert import refusal
from bridge.ledgers.evm.transport import EvmTransport, NodeConnectionRefused, check_node_trust
from bridge.ledgers.heads import HeadSubscription, HeadWatch
from bridge.ledgers.steps import GovernanceWrite, OrderWrite, RotationWrite, Step, StepTemplate
from bridge.logfields import LEDGER, get_logger

PYTHON_RECURSION_LIMIT = 1000
"""The interpreter's default recursion limit, restored when this module is imported."""

# SECURITY (review s23): importing web3 imports py_ecc, which raises the interpreter's
# recursion limit to 100,000 for its own arithmetic (unused here). With it, json.loads of a
# deeply nested answer from any node or peer (a CometBFT node's WebSocket, an HTTP body)
# overflows the C stack and kills the whole process (a member reading another
# organisation's ledger) instead of raising RecursionError, which every reader handles.
sys.setrecursionlimit(PYTHON_RECURSION_LIMIT)

T = TypeVar("T")
_LOG_CHUNK = 2_000
_GAS_HEADROOM = 1.25
"""A transaction's gas limit over the gas ``eth_estimateGas`` says it needs."""
_SIMULATED_GAS = range(21_000, 1 << 32)
"""The gas an ``eth_createAccessList`` answer may report: from a plain transfer's intrinsic
gas to far above any block's limit; anything else is asked of ``eth_estimateGas``."""
_USED_GAS_HEADROOM = 1.25
"""A transaction's gas limit over the gas its ``eth_createAccessList`` simulation used
(``EvmAdapter._gas_limit``): the same margin as over an estimate, which was 0.8% above the
figure used for a 50-item ``lockBatch`` on anvil."""
_METHOD_MISSING = frozenset({-32601, -32004})
"""JSON-RPC error codes of a method the node does not have: "method not found" (JSON-RPC
2.0) and "method not supported" (EIP-1474)."""
_NONCE_ERRORS = ("nonce too low", "already known", "nonce too high", "replacement transaction")

_FUNCTION = {
    Action.LOCK: "lock",
    Action.PREPARE: "prepare",
    Action.MARK_EXPIRED: "markExpired",
    Action.COMMIT: "commit",
    Action.ABORT: "abort",
}


def _call_key(fn: Any) -> bytes:
    """A contract call's key: the keccak of its calldata (``BoundCall.calldata``)."""
    return keccak256(bytes.fromhex(str(fn.calldata())[2:]))


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientError | ConnectionError | asyncio.TimeoutError | OSError)


_MAX_TRACKED = 4096
"""Sent transactions remembered for retries; the oldest are forgotten first."""
LOST_AFTER_BLOCKS = 3
"""New blocks without a receipt after which a wait for a sent transaction asks each block
whether the node still holds it (a transaction usually mines in the next block; a full
block's queue takes a few)."""

MAX_EVM_BATCH_ITEMS = 100
"""The most items one batched EVM transaction carries (``submit_batch``).

Measured on anvil (``tests/integration/test_evm_batch_gas.py``, table in ADR 0025): the
heaviest step, ``lockBatch`` (token transfer into escrow, instruction signature check), costs
about 115k gas per item and 11.57M for 100 items; ``prepareBatch`` 11.06M, ``commitBatch``
4.26M (mint) / 3.80M (burn), ``abortBatch`` 3.38M. 100 items stay under 40% of a 30M block
gas limit, so a batch is never refused for size and leaves room in its block for others."""

_BATCH_LEVEL = frozenset(
    {
        ErrorReason.INVALID_BATCH,
        ErrorReason.WRONG_BATCH_KIND,
        ErrorReason.WRONG_EPOCH,
        ErrorReason.EPOCH_NOT_ACTIVE,
        ErrorReason.TOO_FEW_SIGNATURES,
        ErrorReason.MALFORMED_SIGNATURES,
        ErrorReason.INVALID_SIGNATURE,
        ErrorReason.SIGNERS_NOT_ASCENDING,
        ErrorReason.NOT_COMMITTEE_MEMBER,
        ErrorReason.NOT_RELAYER,
        ErrorReason.UNKNOWN_REFUSAL,
    }
)
"""Refusals of a batched call as a whole (its certificate, its shape, the caller): no
item is named. Every other refusal is some item's own step refusal."""
_ITEM_NAMED = frozenset({ErrorReason.INVALID_BATCH_PROOF, ErrorReason.DUPLICATE_BATCH_ITEM})
"""Refusals whose ABI argument ``index`` is the item's index."""

# ---- read lens and shared reads (issue 14 item 4)
LENS_MAX_ITEMS = 256
"""``BridgeLens.MAX_ITEMS``: the most legs or securities one lens call reads."""
_FINAL = -1
_LATEST = -2
"""Heights a batched read resolves itself: the finalized block, the latest block."""
_LENS_RETRY_S = 30.0
"""After a lens check failed (no code yet, other code), reads go leg by leg this long."""
_BLOCKS_CACHED = 256
EARLIER_LENSES: dict[bytes, str] = {
    bytes.fromhex("750a6f77a7e148e12c469cab98b9ff8da35586362186965614f52f21bbc535dc"): (
        "without holdersOf (committed before 2026-12-03)"
    ),
}
"""keccak256 of the runtime code of earlier committed ``BridgeLens`` versions, trusted like
the current one for what they have (legs, supply, one holder): SECURITY: the hash of the
exact code, as binding as comparing it. A node running one is read as before its upgrade;
holders go through the token's own views until the lens is redeployed."""
LegKey = tuple[int, bytes, Leg]
SupplyKey = tuple[int, bytes]
SupplyAnswer = tuple[int, "tuple[int, ...] | Exception"]
"""The block read and its five supply figures, or the refusal for that security."""
HolderKey = tuple[int, str, str]
"""A holder read: the block, the token's address and the holder's."""


class TransactionReverted(Unavailable):
    """A transaction that passed its simulation reverted when mined (the state changed in
    between). Retryable like any Unavailable: re-reading the leg decides what happens next;
    a batch names the item it now fails at instead (``EvmAdapter.submit_batch``)."""


class EvmAdapter(StepTemplate):
    """LedgerAdapter for one EVM bridge endpoint; reads need no key, writes need a key.

    The sending account is a :class:`~bridge.domain.signer.Signer` (``signer``: keystore or
    PKCS#11 token) or, for the devnet and tests, a raw ``private_key`` wrapped in one; every
    transaction is signed through it (:func:`bridge.keys.evm_tx.sign_transaction`).
    """

    KIND = "evm"
    max_batch_items = MAX_EVM_BATCH_ITEMS
    """The most items one ``submit_batch`` transaction carries."""
    ADDRESSES = EvmAddressCodec()

    def __init__(
        self,
        config: LedgerConfig,
        private_key: bytes | None = None,
        confirm_s: float = 120.0,
        *,
        signer: Signer | None = None,
        transport: EvmTransport | None = None,
    ) -> None:
        self._cfg = config
        self._profile = profile_of(config.settings)
        self._confirm_s = confirm_s
        # How the node is reached: its TLS CA and the bearer token (none: plain settings).
        self._transport = transport if transport is not None else EvmTransport()
        # SECURITY: leg states read over plain http (or from a server only public roots
        # vouch for) can be forged on the path; refused unless the development flag is set.
        check_node_trust(str(config.id), config.rpc_url, self._transport.tls_ca)
        if self._transport.token is not None and self._transport.tls_ca is None:
            raise NodeConnectionRefused(
                f"ledger {config.id}: a token is never sent to a node not verified by tls_ca"
            )
        self._session: aiohttp.ClientSession | None = None
        # One keep-alive connection pool per adapter, posted to directly (SessionProvider).
        self._provider = SessionProvider(config.rpc_url, self._http_session)
        # SECURITY: no CCIP read (EIP-3668). web3 follows an ``OffchainLookup`` revert by
        # fetching the URLs the revert names and calling back with the answer: a lying node
        # could make this process send HTTP requests wherever it likes. Nothing here reads
        # off chain, so such a revert is a plain refusal (review s21).
        self._provider.global_ccip_read_enabled = False
        # No default middleware: every transaction field is set explicitly, results are
        # read by key, and web3's validation middleware would add two eth_chainId calls
        # to every eth_call (the chain id is configuration here).
        self._w3 = AsyncWeb3(self._provider, middleware=[])
        self._bridge_address = word_to_evm_address(evm_address_word(config.bridge))
        self._ledger = config.id
        self._bridge_word = evm_address_word(self._bridge_address)
        # Calls encoded with selectors and types worked out once (calls.py; issue 14).
        self._bridge = ContractCalls(self._w3, "BridgeEndpoint", self._bridge_address)
        self._token_calls: dict[str, ContractCalls] = {}
        if private_key is not None and signer is not None:
            raise InvalidInput("give the EVM adapter a private key or a signer, not both")
        self._signer: Signer | None = (
            LocalKeySigner(private_key) if private_key is not None else signer
        )
        self._sender: ChecksumAddress | None = (
            to_checksum_address(self._signer.address) if self._signer is not None else None
        )
        self._nonces = NonceManager(self._pending_count)
        # The last transaction sent per (action, transfer id), until it is final: a retried
        # step waits for it while the node still holds it instead of sending another one.
        self._sent: OrderedDict[tuple[Action, bytes], bytes] = OrderedDict()
        # The same per batch (action, concatenated transfer ids), until it is final.
        self._sent_batches: OrderedDict[tuple[Action, bytes], bytes] = OrderedDict()
        self._tokens: dict[str, str] = {}
        # The last rotateCommittee sent per new epoch, until it is final (as ``_sent``).
        self._sent_rotations: dict[int, bytes] = {}
        self._poll = max(0.05, min(0.25, config.block_interval / 10))
        # ---- read lens and shared reads (issue 14 item 4)
        self._log = get_logger(**{LEDGER: config.id.name})
        self._head_read: FreshRead[int] = FreshRead(self._fetch_head)
        self._heads = HeadWatch(self._fetch_head, self._poll)
        self._head_sub: HeadSubscription | None = None
        self._head_sub_task: asyncio.Task[None] | None = None
        ws_url = getattr(config.settings, "ws_url", None)
        # SECURITY: only with the network file's own rpc_url: an overridden rpc_url is the
        # member's node, and the network file's ws_url would name someone else's.
        if (
            isinstance(ws_url, str)
            and ws_url
            and config.rpc_url == getattr(config.settings, "rpc_url", config.rpc_url)
        ):
            self._head_sub = HeadSubscription(
                websocket_connector(
                    ws_url, self._transport.ssl_context(), self._transport.headers()
                ),
                self._heads,
                NewHeads(config.chain_id),
                silence_s=max(1.0, 3 * config.block_interval),
                ledger=config.id.name,
            )
        self._fee_cache = FeeCache()
        lens = getattr(config.settings, "lens", None)
        self._lens = (
            ContractCalls(self._w3, "BridgeLens", lens) if isinstance(lens, str) and lens else None
        )
        self._lens_ok = False
        self._lens_holders = False  # the lens has holdersOf (not an earlier one)
        self._lens_live = False
        self._lens_retry_at = 0.0
        self._lens_check = asyncio.Lock()
        self._legs: Batcher[LegKey, LegStatus | Exception] = Batcher(
            self._read_legs, LENS_MAX_ITEMS
        )
        self._supplies: Batcher[SupplyKey, SupplyAnswer] = Batcher(
            self._read_supplies, LENS_MAX_ITEMS
        )
        self._holders: Batcher[HolderKey, HolderStatus | Exception] = Batcher(
            self._read_holders, LENS_MAX_ITEMS
        )
        self._blocks: OrderedDict[int, tuple[bytes, int]] = OrderedDict()
        # ---- gas sizing (issue 14): a send is simulated once (eth_createAccessList) while
        # that sizes transactions well; False for good once the node lacks the method or a
        # transaction so sized ran out of gas (then eth_estimateGas, as before).
        self._size_by_access_list = True
        self._sized_by_access_list: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        """Per transaction sized by its access-list simulation, the gas limit it was sent with
        and its call's key (the keccak of its calldata)."""
        self._reverted_sized: OrderedDict[bytes, int] = OrderedDict()
        """Transactions sized by their access-list simulation that reverted without using
        all their gas, with the limit they were sent with (:meth:`_reverted_batch`)."""
        self._check_sizing: OrderedDict[bytes, None] = OrderedDict()
        """Calls (by key) whose access-list-sized transaction reverted: their next sizing asks
        ``eth_estimateGas`` as well (:meth:`_gas_limit`)."""
        self._sent_above: OrderedDict[bytes, int] = OrderedDict()
        """Per sent transaction, the last head seen before it was sent."""

    # -- identity ----------------------------------------------------------------------
    @property
    def operator(self) -> str:
        """The sending account, or empty for a read-only adapter."""
        return str(self._sender) if self._sender is not None else ""

    # -- reads ---------------------------------------------------------------------------
    async def _rpc(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one web3 call, shielded from the caller's cancellation: a cancelled caller
        stops waiting while the call runs to completion (bounded by the HTTP timeout) in the
        background, so a request is never abandoned half-sent or half-read (which would also
        close a keep-alive TLS connection, and cost a new handshake)."""
        task = asyncio.ensure_future(self._rpc_unshielded(what, call))
        task.add_done_callback(retrieve)
        return await asyncio.shield(task)

    def _http_session(self) -> aiohttp.ClientSession:
        """The adapter's one HTTP session to its node, created on first use (in the loop)."""
        if self._session is None:
            self._session = self._transport.session(limit=32, timeout_s=10)
        return self._session

    async def _rpc_unshielded(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except Exception as exc:
            if _is_transient(exc):
                raise Unavailable(f"ledger {self.ledger} unreachable during {what}: {exc}") from exc
            raise

    async def network_word(self) -> bytes:
        """``bytes32(eth_chainId)`` as this adapter's node reports it."""
        chain_id = await self._rpc("eth_chainId", lambda: self._w3.eth.chain_id)
        return evm_network_word(int(chain_id))

    async def finalized_height(self) -> int:
        """Latest block minus the configured finality depth, from an ``eth_blockNumber``
        sent after this call (concurrent callers share it: :class:`FreshRead`)."""
        return max(0, await self._head_read.get() - self._cfg.finality_depth)

    def start_head_subscription(self) -> None:
        """Start the ``newHeads`` subscription if ``ws_url`` is configured (idempotent;
        needs a running loop). Without it, or while it is down, heads are polled."""
        if (
            self._head_sub is not None
            and not self._head_sub.refused  # another chain: polled for good, logged once
            and (self._head_sub_task is None or self._head_sub_task.done())
        ):
            self._head_sub_task = asyncio.ensure_future(self._head_sub.run())

    async def wait_new_head(self, above: int, timeout_s: float) -> int | None:
        """The first head above ``above`` that an ``eth_blockNumber`` read returned (woken by
        a pushed head, or by the shared poll), or None after ``timeout_s``. Starts the
        subscription if configured."""
        self.start_head_subscription()
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            return await self._heads.wait_above(above, deadline)
        except TimeoutError:
            return None

    async def _fetch_head(self) -> int:
        """``eth_blockNumber``, read raw (issue 14: web3's request manager and formatters
        were 8 % of a member under load for this one number). Unavailable for an answer
        that is not a quantity, as for a node error: the head is read again."""
        answer = await self._read_raw("eth_blockNumber", ())
        try:
            head = quantity(answer)
            if head > MAX_HEAD:  # SECURITY: never a head that would stick (observe keeps
                raise ValueError(f"a head beyond 2**63 - 1: {answer!r}"[:200])  # the highest)
        except ValueError as exc:
            raise Unavailable(f"ledger {self.ledger}: eth_blockNumber answered {exc}") from exc
        self._heads.observe(head)
        return head

    async def events(self, after: EventPosition | None, up_to_height: int) -> list[LedgerEvent]:
        """Bridge leg transitions after ``after`` through ``up_to_height``, in ledger order."""
        start = after.height if after is not None else 0
        out: list[LedgerEvent] = []
        locked_terms: dict[bytes, TransferTerms] = {}
        leg_event = self._bridge.events.LegStateChanged()
        locked_event = self._bridge.events.TransferLocked()
        locked_topic = HexBytes(locked_event.topic)
        topics = [[leg_event.topic, locked_event.topic]]
        lo = start
        while lo <= up_to_height:
            hi = min(up_to_height, lo + _LOG_CHUNK - 1)
            logs = await self._get_logs(lo, hi, topics)
            seen: set[EventPosition] = set()
            blocks: dict[int, bytes] = {}
            for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                if str(log["address"]).lower() != self._bridge_address.lower():
                    continue  # only the endpoint's own logs (a node ignoring the filter)
                # SECURITY: a log outside the blocks asked for, or without the topic the
                # filter named, is a node's error: never delivered, never checkpointed past.
                if not lo <= int(log["blockNumber"]) <= hi or not log["topics"]:
                    raise LedgerRejected(
                        ErrorReason.MALFORMED_ANSWER,
                        f"eth_getLogs {lo}..{hi} answered a log of block {log['blockNumber']}"
                        f" with {len(log['topics'])} topics",
                        ledger=str(self.ledger),
                    )
                pos = EventPosition(int(log["blockNumber"]), int(log["logIndex"]))
                # SECURITY: one log per position, one hash per block: a node answering
                # otherwise would have a position's event decided by the order it sent.
                block_hash = bytes(log["blockHash"])
                if pos in seen or blocks.setdefault(pos.height, block_hash) != block_hash:
                    raise LedgerRejected(
                        ErrorReason.MALFORMED_ANSWER,
                        f"eth_getLogs {lo}..{hi} answered two logs at {pos} or two hashes"
                        f" for block {pos.height}",
                        ledger=str(self.ledger),
                    )
                seen.add(pos)
                topic0 = bytes(log["topics"][0])
                try:
                    if topic0 == locked_topic:
                        decoded = locked_event.process_log(log)
                        terms = _terms_from_event(decoded["args"]["terms"])
                        locked_terms[bytes(decoded["args"]["transferId"])] = terms
                        continue
                    if after is not None and pos <= after:
                        continue
                    args = leg_event.process_log(log)["args"]
                except (Web3Exception, DecodingError) as exc:
                    raise LedgerRejected(
                        ErrorReason.MALFORMED_ANSWER,
                        f"an endpoint log of block {pos.height} does not decode: {exc}",
                        ledger=str(self.ledger),
                    ) from exc
                leg = Leg.OUTBOUND if int(args["leg"]) == 0 else Leg.INBOUND
                state = leg_state_from_ledger(leg, int(args["state"]))
                tid = bytes(args["transferId"])
                out.append(
                    LedgerEvent(
                        ledger=self.ledger.name,
                        position=pos,
                        block_hash=block_hash,
                        tx_id="0x" + bytes(log["transactionHash"]).hex(),
                        transfer_id=tid,
                        leg=leg,
                        state=state,
                        reason=int(args["reason"]),
                        terms_hash=bytes(args["termsHash"]),
                        terms=locked_terms.get(tid) if state is LegState.LOCKED else None,
                    )
                )
            lo = hi + 1
        return out

    async def _get_logs(self, lo: int, hi: int, topics: Any) -> list[Any]:
        """``eth_getLogs`` of the endpoint for blocks ``lo..hi``: each log with its block
        number and index as ints, its topics and hashes as bytes (:func:`_log_fields`).

        Sent without web3's request and result formatters (issue 14: they checksummed every
        log's address and mapped every field, about a twentieth of a relayer's CPU under
        load). LedgerRejected(MALFORMED_ANSWER) for an answer that is not a list of logs."""
        params = {
            "address": self._bridge_address,
            "fromBlock": hex(lo),
            "toBlock": hex(hi),
            "topics": topics,
        }
        answer: Any = await self._read_raw("eth_getLogs", (params,))
        try:
            if not isinstance(answer, list):
                raise TypeError(f"a {type(answer).__name__}, not a list")
            return [_log_fields(log) for log in answer]
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerRejected(
                ErrorReason.MALFORMED_ANSWER,
                f"eth_getLogs {lo}..{hi}: malformed answer: {exc!r}"[:400],
                ledger=str(self.ledger),
            ) from exc

    async def get_leg(self, transfer_id: bytes, leg: Leg, height: int | None = None) -> LegStatus:
        """A leg's state at ``height`` (default: finalized).

        With a lens, concurrent reads (of any transfers, by any callers in this process) go
        in one ``eth_call`` per height, after one shared ``eth_blockNumber`` (none with
        finality depth 0: the lens reports the block it read); each answer is what
        :meth:`_get_leg_single` would read at that height."""
        if self._lens is None:
            return await self._get_leg_single(transfer_id, leg, height)
        key = (_FINAL if height is None else height, transfer_id, leg)
        return _raised(await self._legs.get(key))

    async def get_legs(
        self, transfer_ids: Sequence[bytes], leg: Leg, height: int | None = None
    ) -> list[LegStatus]:
        """The ``leg`` side of every transfer in ``transfer_ids`` at ``height`` (default:
        finalized), in order (:class:`bridge.ledgers.many_legs.ManyLegsReader`): one lens
        call per :data:`LENS_MAX_ITEMS` legs when a lens is configured, else leg by leg, a
        bounded number at a time (``READ_CONCURRENCY``: a batch of 1,000 is not 1,000 reads
        at once on the node's connection pool)."""
        if self._lens is None:
            return await gather_bounded(
                lambda t: self._get_leg_single(t, leg, height), transfer_ids
            )
        at = _FINAL if height is None else height
        return [_raised(v) for v in await self._legs.get_many([(at, t, leg) for t in transfer_ids])]

    async def _get_leg_single(
        self, transfer_id: bytes, leg: Leg, height: int | None = None
    ) -> LegStatus:
        """One leg through the endpoint's own views (``outbound``/``inbound``, then
        ``notBefore`` for a locked or prepared leg)."""
        at = height if height is not None else await self.finalized_height()
        fn = (
            self._bridge.functions.outbound
            if leg is Leg.OUTBOUND
            else self._bridge.functions.inbound
        )
        res = await self._rpc("leg query", lambda: fn(transfer_id).call(block_identifier=at))
        reason = int(res[4]) if leg is Leg.INBOUND else 0
        state = leg_state_from_ledger(leg, int(res[0]))
        not_before = 0
        if state in (LegState.LOCKED, LegState.PREPARED):  # ---- flow limits: a delay?
            nb = self._bridge.functions.notBefore(transfer_id)
            pair = await self._rpc("notBefore", lambda: nb.call(block_identifier=at))
            not_before = int(pair[0] if leg is Leg.OUTBOUND else pair[1])
        return LegStatus(
            state=state,
            terms_hash=bytes(res[1]),
            reason=reason,
            height=at,
            not_before=not_before,
        )

    # ---- read lens (issue 14 item 4)
    async def _lens_usable(self) -> bool:
        """True once the configured lens's code is the committed ``BridgeLens`` (or an
        earlier committed version, :data:`EARLIER_LENSES`: then without its holder reads).

        SECURITY: the lens answers for the endpoint, so an address holding other code (a
        typo, a hostile deployment) could forge every leg a relayer or member reads. Its code
        is compared once with what the node itself builds from the committed artifact
        (``eth_call`` of the creation code returns the runtime code); until it matches, every
        read goes to the endpoint's own views, and the check is retried after
        :data:`_LENS_RETRY_S` (a lens deployed after the node was first asked)."""
        if self._lens is None:
            return False
        if self._lens_ok:
            return True
        loop = asyncio.get_running_loop()
        async with self._lens_check:
            if self._lens_ok or loop.time() < self._lens_retry_at:
                return self._lens_ok
            lens = self._lens.address
            code = await self._rpc("eth_getCode", lambda: self._w3.eth.get_code(lens))
            creation = HexStr("0x" + load_bytecode("BridgeLens").hex())
            built = await self._rpc("eth_call", lambda: self._w3.eth.call({"data": creation}))
            current = bool(code) and bytes(code) == bytes(built)
            earlier = bool(code) and not current and keccak256(bytes(code)) in EARLIER_LENSES
            self._lens_ok = current or earlier
            self._lens_holders = current
            if earlier:
                self._log.warning(
                    "the configured lens is an earlier BridgeLens; holders are read through"
                    " the token's views until it is redeployed",
                    lens=str(lens),
                    version=EARLIER_LENSES[keccak256(bytes(code))],
                )
            if self._lens_ok and self._cfg.finality_depth == 0:
                self._lens_live = await self._reports_latest_block()
            if not self._lens_ok:
                self._lens_retry_at = loop.time() + _LENS_RETRY_S
                self._log.error(
                    "the configured lens is not the committed BridgeLens; reading leg by leg",
                    lens=str(lens),
                    has_code=bool(code),
                )
            return self._lens_ok

    async def _reports_latest_block(self) -> bool:
        """Whether a lens call at ``latest`` reports the block it read: between two
        ``eth_blockNumber`` answers around it. SECURITY: a node whose ``block.number`` in
        ``eth_call`` is another block's (a pending block) would date every live read wrongly;
        such a node gets the ``eth_blockNumber`` before every read instead."""
        assert self._lens is not None
        fn = self._lens.functions.legsOf(self._bridge.address, [], [])
        before = await self._fetch_head()
        number, _ = await self._rpc("legsOf", lambda: fn.call(block_identifier="latest"))
        after = await self._fetch_head()
        live = before <= int(number) <= after
        if not live:
            self._log.warning(
                "the node's eth_call at latest reports another block number; reading the head"
                " before every read",
                before=before,
                reported=int(number),
                after=after,
            )
        return live

    def _resolve(self, spec: int, latest: int | None) -> int:
        if spec == _LATEST:
            assert latest is not None
            return latest
        if spec == _FINAL:
            assert latest is not None
            return max(0, latest - self._cfg.finality_depth)
        return spec

    async def _heights(self, specs: list[int]) -> list[int]:
        """Each height spec resolved, from one ``eth_blockNumber`` sent after every caller
        of the batch asked (so as fresh as each caller's own read)."""
        latest = await self._head_read.get() if any(h < 0 for h in specs) else None
        return [self._resolve(h, latest) for h in specs]

    async def _live(self) -> bool:
        """True when a read at the finalized height may be one lens call at ``latest``
        (which reports its own block number), saving the ``eth_blockNumber``: finality depth
        0 (the latest block is final) and a lens whose node reports block numbers as
        checked in :meth:`_lens_usable`."""
        return self._cfg.finality_depth == 0 and await self._lens_usable() and self._lens_live

    async def _specs(self, specs: list[int]) -> list[int | None]:
        """Height specs resolved for one batch: None means "latest, as the lens reports it"
        (:meth:`_live`); otherwise heights from one ``eth_blockNumber`` sent after every
        caller of the batch asked (so as fresh as each caller's own read)."""
        if await self._live():
            return [None if h < 0 else h for h in specs]
        return list(await self._heights(specs))

    async def _read_legs(self, keys: list[LegKey]) -> list[LegStatus | Exception]:
        """The batch behind :meth:`get_leg`: one ``legsOf`` per height."""
        groups: dict[int | None, list[int]] = {}
        for i, h in enumerate(await self._specs([k[0] for k in keys])):
            groups.setdefault(h, []).append(i)
        out: list[LegStatus | Exception] = [Unavailable("unread")] * len(keys)
        answers = await asyncio.gather(
            *(self._legs_at(h, [keys[i][1:] for i in ix]) for h, ix in groups.items())
        )
        for ix, statuses in zip(groups.values(), answers, strict=True):
            for i, status in zip(ix, statuses, strict=True):
                out[i] = status
        return out

    async def _legs_at(
        self, at: int | None, legs: list[tuple[bytes, Leg]]
    ) -> list[LegStatus | Exception]:
        """``legs`` at block ``at`` (None: the latest, which is final here)."""
        if await self._lens_usable():
            assert self._lens is not None
            fn = self._lens.functions.legsOf(
                self._bridge.address,
                [t for t, _ in legs],
                [0 if leg is Leg.OUTBOUND else 1 for _, leg in legs],  # the endpoint's numbering
            )
            try:
                read, (views,) = await self._lens_read("legsOf", fn, at)
            except (BadFunctionCallOutput, ContractCustomError, ContractLogicError):
                pass  # no lens (or endpoint) at that older block: the endpoint's own views
            else:
                if at is None:
                    self._heads.observe(read)  # the latest block, as the node just said
                return [
                    _leg_from_view(leg, v, read) for (_, leg), v in zip(legs, views, strict=True)
                ]
        height = at if at is not None else await self._head_read.get()

        async def single(item: tuple[bytes, Leg]) -> LegStatus | Exception:
            try:
                return await self._get_leg_single(item[0], item[1], height)
            except Exception as exc:  # each leg answers for itself, as the lens would
                return exc

        return await gather_bounded(single, legs)

    async def _lens_read(self, what: str, fn: Any, at: int | None) -> tuple[int, Sequence[Any]]:
        """One lens view ``fn`` at block ``at`` (None: the latest): the block it read and the
        rest of its answer, never another block's (:func:`read_at_block`: a node that
        answers for another block is asked again, then Unavailable)."""
        block: Any = "latest" if at is None else at
        return await read_at_block(
            lambda: self._rpc(what, lambda: fn.call(block_identifier=block)),
            at,
            ledger=str(self.ledger),
        )

    async def _read_supplies(self, keys: list[SupplyKey]) -> list[SupplyAnswer]:
        """The batch behind :meth:`supply`: one ``suppliesOf`` per height; each item is the
        block read and the five figures, or the refusal :meth:`supply` raises for it."""
        groups: dict[int | None, list[int]] = {}
        for i, h in enumerate(await self._specs([k[0] for k in keys])):
            groups.setdefault(h, []).append(i)
        out: list[SupplyAnswer] = [(0, Unavailable("unread"))] * len(keys)
        for h, ix in groups.items():
            for i, r in zip(ix, await self._supplies_at(h, [keys[i][1] for i in ix]), strict=True):
                out[i] = r
        return out

    async def _supplies_at(self, at: int | None, words: list[bytes]) -> list[SupplyAnswer]:
        assert self._lens is not None
        fn = self._lens.functions.suppliesOf(self._bridge.address, words)
        try:
            read, (views,) = await self._lens_read("suppliesOf", fn, at)
        except (BadFunctionCallOutput, ContractCustomError, ContractLogicError):
            # No lens (or no endpoint) at that block: the endpoint's own view, item by item.
            height = at if at is not None else await self._head_read.get()
            results = await asyncio.gather(
                *(self._supply_single(w, height) for w in words), return_exceptions=True
            )
            return [(height, _as_result(r)) for r in results]
        if at is None:
            self._heads.observe(read)
        out: list[SupplyAnswer] = []
        for v in views:
            ok, data, figures = bool(v[0]), bytes(v[1]), tuple(int(x) for x in v[2:7])
            out.append((read, figures if ok else self._refusal_from(data)))
        return out

    def _refusal_from(self, data: bytes) -> Exception:
        """A ``supplyOf`` revert's data as the single read reports it."""
        return (
            refusal(data, str(self.ledger))
            if data
            else LedgerRejected(
                ErrorReason.UNKNOWN_REFUSAL,
                "supplyOf reverted without data",
                ledger=str(self.ledger),
            )
        )

    async def _supply_single(self, word: bytes, at: int) -> tuple[int, ...]:
        fn = self._bridge.functions.supplyOf(word)
        try:
            res = await self._rpc("supplyOf", lambda: fn.call(block_identifier=at))
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._rejection(exc) from exc
        except BadFunctionCallOutput as exc:  # no code at the endpoint's address yet
            raise _NoEndpoint() from exc
        return tuple(int(x) for x in res[:5])

    async def _block_at(self, at: int) -> tuple[bytes, int]:
        """``(hash, timestamp)`` of block ``at``, which the caller has read as final.

        SECURITY: cached by number only for final blocks (the caller's height is at or
        below the finalized one), so it is exactly as stable as the finality depth already
        assumes for every read at that height."""
        cached = self._blocks.get(at)
        if cached is not None:
            return cached
        block = await self._rpc("eth_getBlockByNumber", lambda: self._w3.eth.get_block(at))
        entry = (bytes(block["hash"]), int(block["timestamp"]))
        if int(block["number"]) == at:
            self._blocks[at] = entry
            while len(self._blocks) > _BLOCKS_CACHED:
                self._blocks.popitem(last=False)
        return entry

    async def _token(self, security: SecurityId, at: int) -> str | None:
        cached = self._tokens.get(security.isin)
        if cached is not None:
            return cached
        addr = await self._rpc(
            "tokenOf",
            lambda: self._bridge.functions.tokenOf(security.word).call(block_identifier=at),
        )
        if int(addr, 16) == 0:
            return None
        self._tokens[security.isin] = str(addr)
        return str(addr)

    async def holder_status(self, security: SecurityId, holder: bytes) -> HolderStatus:
        """Balance, eligibility, freeze and pause at the finalized height.

        With a lens, concurrent reads (of any holders of any tokens, by any callers in this
        process) at one height go in one ``holdersOf`` per token (issue 14 item 4); each
        answer is what the token's own five views return at that height."""
        (status,) = await self.holder_statuses(security, [holder])
        return status

    async def holder_statuses(
        self, security: SecurityId, holders: Sequence[bytes]
    ) -> list[HolderStatus]:
        """Each of ``holders`` as :meth:`holder_status` reads it, in order
        (:class:`bridge.ledgers.many_holders.ManyHoldersReader`), all at one finalized
        height: with a lens, one ``holdersOf`` per :data:`LENS_MAX_ITEMS` holders (no task
        per holder, the call's holders joining other callers' in the next batch); without,
        the token's views a bounded number of holders at a time (review helper-133 L8)."""
        if not holders:
            return []
        at = await self.finalized_height()
        token_addr = await self._token(security, at)
        if token_addr is None:
            return [HolderStatus(False, 0, 1, False, False, False) for _ in holders]
        whos = [word_to_evm_address(h) for h in holders]
        if self._lens is None:
            return await self._holders_at(at, token_addr, whos)
        return [
            _raised(v) for v in await self._holders.get_many([(at, token_addr, w) for w in whos])
        ]

    async def _read_holders(self, keys: list[HolderKey]) -> list[HolderStatus | Exception]:
        """The batch behind :meth:`holder_status`: one ``holdersOf`` per (height, token)."""
        groups: dict[tuple[int, str], list[int]] = {}
        for i, (at, token_addr, _) in enumerate(keys):
            groups.setdefault((at, token_addr), []).append(i)
        answers = await asyncio.gather(
            *(self._holders_at(at, t, [keys[i][2] for i in ix]) for (at, t), ix in groups.items()),
            return_exceptions=True,
        )
        out: list[HolderStatus | Exception] = [Unavailable("unread")] * len(keys)
        for ix, answer in zip(groups.values(), answers, strict=True):
            for n, i in enumerate(ix):
                out[i] = _as_result(answer) if isinstance(answer, BaseException) else answer[n]
        return out

    async def _holders_at(self, at: int, token_addr: str, holders: list[str]) -> list[HolderStatus]:
        """``holders`` on the token at ``token_addr`` at block ``at``: one lens call when the
        lens is usable, else the token's own views holder by holder, a bounded number at a
        time."""
        if await self._lens_usable() and self._lens_holders:
            assert self._lens is not None
            fn = self._lens.functions.holdersOf(token_addr, holders)
            try:
                _, (paused, views) = await self._lens_read("holdersOf", fn, at)
            except (BadFunctionCallOutput, ContractCustomError, ContractLogicError):
                pass  # no lens at that block (or one before holdersOf): the token's views
            else:
                if len(views) != len(holders):
                    raise Unavailable(
                        f"ledger {self.ledger}: holdersOf answered {len(views)} holders"
                        f" for {len(holders)}"
                    )
                return [
                    HolderStatus(True, int(b), int(st), bool(el), bool(fr), bool(paused))
                    for b, st, el, fr in views
                ]
        token = self._token_calls.get(token_addr)
        if token is None:
            token = self._token_calls[token_addr] = ContractCalls(
                self._w3, "SecurityToken", token_addr
            )
        f = token.functions

        async def one(who: str) -> HolderStatus:
            balance, status, eligible, frozen, paused = await self._rpc(
                "holder query",
                lambda: asyncio.gather(
                    f.balanceOf(who).call(block_identifier=at),
                    f.receiveStatus(who).call(block_identifier=at),
                    f.isEligible(who).call(block_identifier=at),
                    f.isFrozen(who).call(block_identifier=at),
                    f.paused().call(block_identifier=at),
                ),
            )
            return HolderStatus(
                True, int(balance), int(status), bool(eligible), bool(frozen), bool(paused)
            )

        return await gather_bounded(one, holders)

    async def supply(self, security: SecurityId, height: int | None = None) -> SupplyReading:
        """``supplyOf(security)`` as of block ``height`` (default: finalized) and its hash.

        Both the call and the block lookup name the block by number; with a finality depth
        that covers the chain's reorganisations the pair is of one block. InvalidInput for a
        height above the finalized one; NotFound when the security is not registered (or the
        endpoint did not exist yet) at that height.
        """
        spec = _FINAL
        if height is not None or not await self._live():
            final = await self.finalized_height()
            at = spec = final if height is None else height
            if not 0 <= at <= final:
                raise InvalidInput(
                    f"height {at} is not finalized on {self.ledger} (final: {final})"
                )
        res: tuple[int, ...] | Exception
        try:
            if await self._lens_usable():  # ---- read lens: concurrent reads in one call
                at, res = await self._supplies.get((spec, security.word))
            else:
                res = await self._supply_single(security.word, at)
            figures = _raised(res)
        except LedgerRejected as exc:
            if exc.reason is ErrorReason.UNKNOWN_SECURITY:
                raise NotFound(
                    f"security {security.isin} is not registered on {self.ledger} at {at}"
                ) from exc
            raise
        except _NoEndpoint as exc:
            raise NotFound(f"no bridge endpoint on {self.ledger} at height {at}") from exc
        block_hash, _ = await self._block_at(at)
        return SupplyReading(
            ledger=self.ledger.name,
            height=at,
            block_hash=block_hash,
            total_supply=int(figures[0]),
            escrowed=int(figures[1]),
            prepared=int(figures[2]),
            burned_out=int(figures[3]),
            minted_in=int(figures[4]),
        )

    # ---- flow limits (ADR 0010)
    async def flow_status(self, security: SecurityId, counterpart: LedgerId) -> FlowStatus:
        """``flowStatus(security, counterpart)`` at the finalized height; the figures are the
        buckets as of that block's timestamp (``as_of``). A lane without a limit reads as
        all zero (unlimited). A hint for scheduling: the endpoint decides at lock/prepare."""
        at = await self.finalized_height()
        fn = self._bridge.functions.flowStatus(security.word, counterpart.word)
        words = await self._rpc("flowStatus", lambda: fn.call(block_identifier=at))
        _, timestamp = await self._block_at(at)
        return FlowStatus.from_words(
            self.ledger.name,
            counterpart.name,
            security.isin,
            timestamp,
            [int(x) for x in words],
        )

    # -- writes --------------------------------------------------------------------------
    async def _pending_count(self) -> int:
        assert self._sender is not None
        addr = self._sender
        return int(
            await self._rpc("nonce", lambda: self._w3.eth.get_transaction_count(addr, "pending"))
        )

    # ---- the step template (bridge.ledgers.steps): send, wait final
    @property
    def writable(self) -> bool:
        """True with an operator key."""
        return self._signer is not None

    def _read_only_detail(self) -> str:
        return "this adapter has no operator key"

    async def _read_leg_now(self, transfer_id: bytes, leg: Leg) -> LegStatus:
        """At the latest block: a step mined but not yet final is already applied."""
        if self._lens is None:
            return await self.get_leg(transfer_id, leg, height=await self._latest())
        return _raised(await self._legs.get((_LATEST, transfer_id, leg)))

    async def _applied_height(self, step: Step, current: LegStatus) -> int:
        """Wait until the leg shows the step at the finalized height."""
        return await self._await_leg_final(step.terms.transfer_id, step.leg, step.done)

    async def _send_step(self, step: Step) -> bytes:
        """Send the step's transaction, or (SECURITY of funds: no second transaction that
        would revert and cost gas) reuse an earlier attempt's still pending on the node."""
        args: list[Any] = [step.terms.as_abi_tuple()]
        if step.action is Action.LOCK:
            args.append(step.instruction)
        elif step.certificate is not None:
            args.append((step.certificate.epoch, b"".join(step.certificate.signatures)))
        key = (step.action, step.terms.transfer_id)
        earlier = self._sent.get(key)
        if earlier is not None and await self._is_pending(earlier):
            return earlier
        fn = getattr(self._bridge.functions, _FUNCTION[step.action])(*args)
        tx_hash = await self._send(fn)
        self._sent[key] = tx_hash
        while len(self._sent) > _MAX_TRACKED:
            self._sent.popitem(last=False)
        return tx_hash

    async def _wait_step_final(self, step: Step, handle: bytes) -> TxOutcome:
        """Wait for the transaction's block to be final.

        A step whose earlier attempt's transaction is still pending on the node (a stalled
        ledger, a caller that gave up waiting) waits for that transaction rather than
        sending a second one."""
        height = await self._await_final(handle, self._confirm_s)
        self._sent.pop((step.action, step.terms.transfer_id), None)
        return TxOutcome(tx_id="0x" + handle.hex(), height=height, already_applied=False)

    # ---- batched ledger steps (issue 14 item 2, ADR 0025)
    async def submit_batch(
        self,
        action: Action,
        items: Sequence[BatchItem],
        certificate: BatchCertificate | None = None,
    ) -> BatchOutcome:
        """Apply ``action`` to every item in ONE transaction (``lockBatch``, or
        ``prepareBatch`` / ``commitBatch`` / ``abortBatch`` under one batch certificate) and
        return once its block is final, one result per item in item order.

        Exactly the contract of the Fabric adapter's ``submit_batch``: when every item's leg
        already shows the step at the finalized height (same terms), nothing is sent and
        every item is ``skipped``. Otherwise the call is simulated first (:meth:`_gas_limit`)
        and a refusal raises LedgerRejected with nothing sent: the endpoint's reason and,
        where one item caused it, its index as the figure ``item`` (named by the endpoint
        for ``InvalidBatchProof`` / ``DuplicateBatchItem``; for an item's own step refusal
        found by simulating prefixes of the batch, ``log2(n)`` ``eth_call``s, since the
        endpoint applies items in order and reverts at the first failing one). The
        transaction goes through the signer, nonce manager and fee pricing of single steps;
        a retry while this adapter's earlier transaction for the same batch is pending
        waits for it instead of sending another. Results come from the receipt's events
        (``LegStateChanged`` for a moved item, ``BatchItemSkipped`` for a replayed one).
        ValueError for an action without a batched function, a count outside
        1..:data:`MAX_EVM_BATCH_ITEMS`, or a certificate where none belongs (or none where
        one does); Unavailable for transient faults (including a transaction that reverted
        after simulation: the retry re-simulates)."""
        # SECURITY: a read-only adapter (a member's reader) never sends.
        if not self.writable:
            raise LedgerRejected(ErrorReason.READ_ONLY, self._read_only_detail())
        if action not in BATCHED_ACTIONS:
            raise ValueError(f"{action.name} has no batched function")
        if not 1 <= len(items) <= MAX_EVM_BATCH_ITEMS:
            raise ValueError(f"a batch has 1 to {MAX_EVM_BATCH_ITEMS} items, got {len(items)}")
        if (certificate is None) != (action is Action.LOCK):
            raise ValueError(
                "a LOCK batch takes no certificate"
                if action is Action.LOCK
                else f"a {action.name} batch needs a batch certificate"
            )
        legs = [leg_of(action, i.terms, self._ledger.word) for i in items]
        done = await self._batch_done(action, items, legs)
        if done is not None:
            return done
        fn = self._batch_call(action, items, certificate)
        key = (action, b"".join(i.terms.transfer_id for i in items))
        tx_hash = self._sent_batches.get(key)
        if tx_hash is None or not (
            await self._is_pending(tx_hash) or await self._receipt(tx_hash) is not None
        ):  # neither pending nor mined (a mined one not yet final is waited for, not resent)
            try:
                tx_hash = await self._send(fn)
            except LedgerRejected as refusal:
                raise await self._batch_refusal(refusal, action, items, certificate) from None
            self._sent_batches[key] = tx_hash
            while len(self._sent_batches) > _MAX_TRACKED:
                self._sent_batches.popitem(last=False)
        try:
            receipt = await self._final_receipt(tx_hash, self._confirm_s)
        except TransactionReverted:
            self._sent_batches.pop(key, None)
            raise await self._reverted_batch(action, items, certificate, tx_hash) from None
        self._sent_batches.pop(key, None)
        height = _receipt_block(receipt)
        try:
            # The receipt read at the final block: its logs are the batch's results.
            results = batch_results(self._bridge, receipt["logs"], items, legs)
        except ValueError as exc:  # a node answering another receipt: ask again
            raise Unavailable(
                f"ledger {self.ledger}: batch receipt 0x{tx_hash.hex()}: {exc}"
            ) from exc
        return BatchOutcome("0x" + tx_hash.hex(), height, await self._with_reasons(results, height))

    def _batch_call(
        self, action: Action, items: Sequence[BatchItem], certificate: BatchCertificate | None
    ) -> Any:
        if action is Action.LOCK:
            return lock_call(self._bridge, [i.terms for i in items], [i.instruction for i in items])
        assert certificate is not None
        return step_call(self._bridge, BatchStep[action.name], items, certificate)

    async def _batch_done(
        self, action: Action, items: Sequence[BatchItem], legs: Sequence[Leg]
    ) -> BatchOutcome | None:
        """Every item skipped at the finalized height when every leg already shows the step
        with the item's terms (one lens call with a lens); None when anything is left."""
        statuses = await asyncio.gather(
            *(self.get_leg(i.terms.transfer_id, leg) for i, leg in zip(items, legs, strict=True))
        )
        out = []
        for item, leg, st in zip(items, legs, statuses, strict=True):
            if st.state not in STEP_DONE[(action, leg)] or st.terms_hash != item.terms.terms_hash:
                return None
            out.append(
                BatchItemResult(
                    item.terms.transfer_id, leg, st.state, st.terms_hash, st.reason, True
                )
            )
        return BatchOutcome("", statuses[0].height, tuple(out))

    async def _batch_refusal(
        self,
        refusal: LedgerRejected,
        action: Action,
        items: Sequence[BatchItem],
        certificate: BatchCertificate | None,
    ) -> LedgerRejected:
        """``refusal`` with the figure ``item`` where one item caused it."""
        figures = dict(refusal.figures)
        index: int | None = None
        if refusal.reason in _ITEM_NAMED and isinstance(figures.get("index"), int):
            index = int(figures["index"])
        elif refusal.reason not in _BATCH_LEVEL:
            index = await self._first_failing(action, items, certificate)
        if index is None or not 0 <= index < len(items):
            return refusal
        figures["item"] = index
        return LedgerRejected(refusal.reason, refusal.detail, figures, refusal.ledger)

    async def _reverted_batch(
        self,
        action: Action,
        items: Sequence[BatchItem],
        certificate: BatchCertificate | None,
        tx_hash: bytes = b"",
    ) -> BridgeError:
        """What a batch transaction that passed its simulation but reverted when mined
        answers: the refusal of the item it now fails at, with the figure ``item``, as a
        refusal at simulation would (the state changed in between: e.g. a holder moved the
        units its lock needed); Unavailable when no prefix fails any more.

        SECURITY (review s19 finding 1): without the item, one brokerage timing its own
        holder's balance around the coordinator's simulations made every batch carrying its
        item revert, and Unavailable sent all the other brokerages' items back into the
        same batch for ever. Named, the item is dropped and the rest go again."""
        index = await self._first_failing(action, items, certificate)
        limit = self._reverted_sized.pop(tx_hash, None)
        if index is None and limit is not None:
            # Review helper-109: no item fails now, so the state does not explain the
            # revert, and the transaction was sized by its access-list simulation: gas does
            # (out inside a call). Its retry is another call (other items, other signers),
            # so the per-call check would never see it: the sizing is off from now on.
            self._sizing_fell_short(tx_id="0x" + tx_hash.hex(), gas=limit)
        if index is None:
            return Unavailable(
                f"ledger {self.ledger}: a {action.name} batch reverted when mined and passes"
                " again now; send it again"
            )
        fn = self._batch_call(action, items[: index + 1], certificate)
        assert self._sender is not None
        sender = self._sender
        try:
            await self._rpc("eth_call", lambda: fn.call({"from": sender}))
        except (ContractCustomError, ContractLogicError) as exc:
            refusal = self._rejection(exc)
            figures = {**refusal.figures, "item": index}
            return LedgerRejected(refusal.reason, refusal.detail, figures, refusal.ledger)
        return Unavailable(f"ledger {self.ledger}: a reverted {action.name} batch moved again")

    async def _first_failing(
        self, action: Action, items: Sequence[BatchItem], certificate: BatchCertificate | None
    ) -> int | None:
        """The index of the item the whole batch reverts at: the shortest failing prefix
        ends with it (the endpoint applies items in order, so every shorter prefix passes).
        None when no prefix fails now (the state moved since)."""
        assert self._sender is not None
        sender = self._sender

        async def fails(n: int) -> bool:
            fn = self._batch_call(action, items[:n], certificate)
            try:
                await self._rpc("eth_call", lambda: fn.call({"from": sender}))
            except (ContractCustomError, ContractLogicError):
                return True
            return False

        lo, hi = 1, len(items)
        if not await fails(hi):
            return None
        while lo < hi:  # the shortest failing prefix is in lo..hi
            mid = (lo + hi) // 2
            if await fails(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo - 1

    async def _with_reasons(
        self, results: Sequence[BatchItemResult], height: int
    ) -> tuple[BatchItemResult, ...]:
        """Skipped inbound items with the reason their leg holds (the skip event carries
        none), read at the transaction's block."""
        out = list(results)
        for k, r in enumerate(results):
            if r.skipped and r.leg is Leg.INBOUND:
                st = await self.get_leg(r.transfer_id, r.leg, height)
                out[k] = BatchItemResult(
                    r.transfer_id, r.leg, r.state, r.terms_hash, st.reason, True
                )
        return tuple(out)

    async def _is_pending(self, tx_hash: bytes) -> bool:
        """True while the node holds ``tx_hash`` unmined and executable: False once mined or
        dropped, or while it is queued behind a nonce gap (a new send fills the gap)."""
        try:
            tx = await self._rpc(
                "transaction",
                lambda: self._w3.eth.get_transaction(tx_hash),  # type: ignore[arg-type]
            )
        except TransactionNotFound:
            return False
        if tx.get("blockNumber") is not None:
            return False
        return int(tx["nonce"]) < await self._pending_count()

    async def _unknown(self, tx_hash: bytes) -> bool:
        """True when the node does not know ``tx_hash`` at all: ``eth_getTransactionByHash``
        answers null and a receipt read after it answers null too (one mined in between is
        known). A transaction the node holds queued behind a nonce gap is known: resending
        it would fill the gap and mine both copies. Any fault of these reads is False (no
        verdict; the wait goes on)."""
        try:
            tx: Any = await self._read_raw("eth_getTransactionByHash", ("0x" + tx_hash.hex(),))
            return tx is None and await self._receipt(tx_hash) is None
        except (Unavailable, Web3Exception):
            return False

    async def _await_leg_final(
        self, transfer_id: bytes, leg: Leg, done: frozenset[LegState], limit_s: float = 120.0
    ) -> int:
        """Re-read the leg at the finalized height once per new block (the shared head
        poll, :class:`HeadWatch`) until it shows ``done``."""
        give_up = asyncio.get_running_loop().time() + limit_s
        head = -1
        self.start_head_subscription()
        try:
            while True:
                head = await self._heads.wait_above(head, give_up)
                status = await self.get_leg(transfer_id, leg)
                if status.state in done:
                    return status.height
        except TimeoutError:
            raise Unavailable(f"step on {self.ledger} not final after {limit_s:.0f}s") from None

    async def _latest(self) -> int:
        return await self._head_read.get()

    async def _gas_limit(self, fn: Any, sender: ChecksumAddress, key: bytes) -> tuple[int, bool]:
        """The gas limit to send ``fn`` with, after simulating it at the node's latest block,
        and whether it was sized by ``eth_createAccessList``. A revert of the simulation is
        the call's refusal (LedgerRejected), with nothing sent.

        ``eth_createAccessList`` executes the call once; anvil's ``eth_estimateGas``
        executes it about twenty times in a binary search, and for the relayers' batches
        that search was most of the node's CPU (``bench/README.md``, "Gas sized by one
        simulation"). Its figure is the gas used after refunds and with the access list
        applied, which the transaction (sent without the list) may exceed by the refunds
        (at most a quarter of it since EIP-3529), the list's saving and the 1/64 each call
        keeps back. The 1.25 headroom covers the refund cap alone, not all three at their
        worst; the bridge's steps measured 1.008-1.027 (estimate over gas used). A
        transaction so sized that reverts is checked (:meth:`_sized_reverted`): out of gas
        at the top, the sizing is off for good; otherwise the same call's retry is sized by
        the estimate, and turns the sizing off when it needs more than the sizing gave. A
        node without the method turns it off too; an answer that reports the revert inside
        the result (go-ethereum) or a gas figure that is not a quantity between 21,000 and
        2**32 is asked ``eth_estimateGas`` for that call, whose revert carries the typed
        reason. ``key`` is the call's (:func:`_call_key`)."""
        recheck = key in self._check_sizing
        self._check_sizing.pop(key, None)
        if self._size_by_access_list:
            try:
                used = await self._rpc(
                    "eth_createAccessList", lambda: fn.access_list_gas({"from": sender})
                )
            except (ContractCustomError, ContractLogicError) as exc:
                raise self._rejection(exc) from exc
            except Web3RPCError as exc:
                error = exc.rpc_response.get("error") if exc.rpc_response else None
                if isinstance(error, Mapping) and error.get("code") in _METHOD_MISSING:
                    self._size_by_access_list = False
                    self._log.info(
                        "the node has no eth_createAccessList: gas is sized by"
                        " eth_estimateGas from now on",
                        error=str(error.get("message"))[:200],
                    )
                used = None  # anything else: the estimate answers it as it did before
            if used is not None and used in _SIMULATED_GAS:
                sized = int(used * _USED_GAS_HEADROOM) + 1
                if not recheck:
                    return sized, True
                # Review helper-108 L1: this call's access-list-sized transaction reverted
                # without using all its gas, which an inner call running out of gas also
                # does (the endpoint bubbles the token's revert up). Its retry is sized by
                # the estimate; an estimate above what the sizing gives turns it off.
                needed = await self._estimate(fn, sender)
                if needed > sized:
                    self._sizing_fell_short(needed=needed, sized=sized)
                return int(needed * _GAS_HEADROOM), False
        return int(await self._estimate(fn, sender) * _GAS_HEADROOM), False

    async def _estimate(self, fn: Any, sender: ChecksumAddress) -> int:
        """``eth_estimateGas`` of ``fn``; its revert is the call's refusal (LedgerRejected)."""
        try:
            gas = await self._rpc("estimate_gas", lambda: fn.estimate_gas({"from": sender}))
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._rejection(exc) from exc
        return int(gas)

    def _sizing_fell_short(self, **figures: int | str) -> None:
        """Every later send is sized by ``eth_estimateGas`` (logged once)."""
        if self._size_by_access_list:
            self._size_by_access_list = False
            self._log.warning(
                "a transaction sized by its access-list simulation ran out of gas: gas is"
                " sized by eth_estimateGas from now on",
                **figures,
            )

    def _sized_reverted(self, tx_hash: bytes, receipt: Mapping[str, Any]) -> None:
        """``tx_hash`` reverted. If its gas was sized by its access-list simulation: when it
        used all of it (it ran out at the top), every later send is sized by
        ``eth_estimateGas``; otherwise (it may have run out inside a call, whose revert the
        endpoint bubbles up, or the state changed) the same call's next sizing asks the
        estimate too and turns the sizing off if the estimate is above it. Its retry
        re-simulates as for any revert."""
        sent = self._sized_by_access_list.pop(tx_hash, None)
        if sent is None:
            return
        limit, key = sent
        if receipt.get("gasUsed") == limit:
            self._sizing_fell_short(tx_id="0x" + tx_hash.hex(), gas=limit)
            return
        # It may have run out inside a call (or the state changed): the call's next sizing
        # asks the estimate too; a batch is judged by :meth:`_reverted_batch` (its retry is
        # another call: other items join it, other members sign its certificate).
        self._check_sizing[key] = None
        self._reverted_sized[tx_hash] = limit
        for tracked in (self._check_sizing, self._reverted_sized):
            while len(tracked) > _MAX_TRACKED:
                tracked.popitem(last=False)

    async def _send(self, fn: Any) -> bytes:
        assert self._signer is not None
        assert self._sender is not None
        sender = self._sender
        key = _call_key(fn)
        gas, sized = await self._gas_limit(fn, sender, key)
        fees = await self._fees()
        async with self._nonces.lock:
            for attempt in range(3):
                # Re-read the account's next nonce from the node on every send: a
                # transaction the node lost (evicted, or sent by a cancelled call) leaves
                # a gap that must be refilled, or everything after it queues forever.
                nonce = await self._nonces.next_nonce()
                tx = await fn.build_transaction(
                    {
                        "from": sender,
                        "nonce": nonce,
                        "gas": gas,
                        **fees,
                        "chainId": self._cfg.chain_id,
                    }
                )
                # SECURITY: signed through the Signer seam (the key may be in an HSM).
                raw = sign_transaction(self._signer, tx)
                before = self._heads.head  # no block up to this one can hold the tx
                try:
                    tx_hash = await self._send_raw(raw)
                except Web3RPCError as exc:
                    self._fee_cache.invalidate()  # e.g. underpriced: read the fees again
                    if attempt < 2 and any(m in str(exc).lower() for m in _NONCE_ERRORS):
                        continue  # raced another writer of this key: read the count again
                    # Not a refusal by the contract: the caller may retry (steps are idempotent).
                    raise Unavailable(
                        f"ledger {self.ledger} did not accept the transaction: {exc}"
                    ) from exc
                if before is not None:
                    self._sent_above[bytes(tx_hash)] = before
                    while len(self._sent_above) > _MAX_TRACKED:
                        self._sent_above.popitem(last=False)
                if sized:
                    self._sized_by_access_list[bytes(tx_hash)] = (gas, key)
                    while len(self._sized_by_access_list) > _MAX_TRACKED:
                        self._sized_by_access_list.popitem(last=False)
                return bytes(tx_hash)
        raise Unavailable(f"ledger {self.ledger}: nonce could not be resynchronised")

    async def _fees(self) -> dict[str, int]:
        """The fee fields of a transaction under the ledger's profile
        (:func:`bridge.ledgers.evm.profiles.fee_fields`), capped at ``max_gas_price_gwei``;
        only the node values the profile's policy needs are read."""
        # ---- fees once per block (issue 14 item 4). SECURITY: see FeeCache: at most one
        # block stale (the head is one the node reported within two poll intervals, a fifth
        # of a block), capped.
        cached = self._fee_cache.get(self._heads.recent(2 * self._poll))
        if cached is not None:
            return cached
        cap = int(self._cfg.max_gas_price_gwei * 10**9)
        block = await self._rpc("eth_getBlockByNumber", lambda: self._w3.eth.get_block("latest"))
        raw_base = block.get("baseFeePerGas")
        base = None if raw_base is None else int(raw_base)
        policy = self._profile.fee_policy
        want_price, want_tip = needs(policy, base)
        price = tip = None
        if want_price:
            price = int(await self._rpc("gas_price", lambda: self._w3.eth.gas_price))
        if want_tip:
            tip = int(await self._rpc("max_priority_fee", lambda: self._w3.eth.max_priority_fee))
        fields = fee_fields(policy, cap, base, price, tip)
        self._fee_cache.put(int(block["number"]), fields)
        return fields

    async def _send_raw(self, raw: bytes) -> bytes:
        return bytes(await self._rpc("send", lambda: self._w3.eth.send_raw_transaction(raw)))

    def _rejection(self, exc: ContractCustomError | ContractLogicError) -> LedgerRejected:
        data = exc.data
        if isinstance(data, str) and data.startswith("0x"):
            try:
                raw = bytes.fromhex(data[2:])
            except ValueError:
                return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, f"garbled revert data {data!r}")
            return refusal(raw, str(self.ledger))
        return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, str(exc), ledger=str(self.ledger))

    async def _await_final(self, tx_hash: bytes, limit_s: float = 120.0) -> int:
        """Wait for the receipt, then for its block to be final; return the block height
        (:meth:`_final_receipt`)."""
        return _receipt_block(await self._final_receipt(tx_hash, limit_s))

    async def _final_receipt(self, tx_hash: bytes, limit_s: float = 120.0) -> Mapping[str, Any]:
        """Wait for the receipt, then for its block to be final; return that receipt
        (:meth:`_receipt`). TransactionReverted when the receipt at a final block shows a
        revert; Unavailable after ``limit_s`` (every read included).

        One shared head poll serves every waiter (:class:`HeadWatch`); the receipt is asked
        for once per new block until it exists, then nothing more is sent until the head is
        ``finality_depth`` past it. The head is one the node reported, so finality is never
        declared earlier than a fresh read would. A receipt counts only when read while its
        block was final: with a depth above 0, one first seen earlier is read again once
        the depth has passed, since a reorg shallower than the depth may have moved it,
        dropped it or changed its outcome meanwhile. A moved one waits for its new block's
        depth; a dropped one is waited for again (a node usually puts it back in its pool
        and mines it again).

        A transaction the node no longer knows is not waited for: from the
        LOST_AFTER_BLOCKS-th new block without a receipt on, each new block asks whether the
        node knows it (:meth:`_unknown`); when two blocks in a row say it does not, the node
        dropped it (evicted from its pool; anvil skips a transaction that does not fit a
        block and later drops it), and Unavailable says so at once, so the caller's retry
        re-reads the legs and sends again (a copy that mined after all reverts or skips its
        items on the ledger: gas, never a second effect). A transaction queued behind a
        nonce gap is known, and waited for as before. Before, a dropped one was waited for
        ``limit_s`` (120 s), past the coordinator's 30 s deadline."""
        give_up = asyncio.get_running_loop().time() + limit_s
        depth = self._cfg.finality_depth
        receipt: Mapping[str, Any] | None = None
        blocks_without = 0  # new blocks since the send (or the last receipt) without one
        unknown_in_a_row = 0
        # The head seen before the send: the receipt is first asked for in a later block.
        head = self._sent_above.pop(tx_hash, -1)
        started = head >= 0  # else the first wake is the current head, not a new block
        self.start_head_subscription()
        try:
            # One deadline for the head waits and the receipt reads alike (``timeout_at``,
            # not ``wait_for``, which on 3.11 can drop a cancellation of its caller).
            async with asyncio.timeout_at(give_up):
                while True:
                    head = await self._heads.wait_above(head, give_up)
                    final = max(0, head - depth)
                    # SECURITY: a receipt read before its block was final is read again
                    # once it should be (the node answers receipts from its canonical
                    # chain, so a new read shows where the transaction is now); one read
                    # after this head was seen, and already final at it, counts as it is.
                    if receipt is None or (depth > 0 and final >= _receipt_block(receipt)):
                        receipt = await self._receipt(tx_hash)
                    if receipt is None:
                        if started:  # the first wake may be the head at the call, not new
                            blocks_without += 1
                        started = True
                        if blocks_without >= LOST_AFTER_BLOCKS:
                            unknown = await self._unknown(tx_hash)
                            unknown_in_a_row = unknown_in_a_row + 1 if unknown else 0
                            if unknown_in_a_row >= 2:  # SECURITY: not one answer's word
                                raise Unavailable(
                                    f"tx 0x{tx_hash.hex()} was dropped by {self.ledger} (not"
                                    f" known after {blocks_without} blocks): the retry sends"
                                    " it again"
                                )
                        continue
                    blocks_without = unknown_in_a_row = 0
                    started = True
                    if final < _receipt_block(receipt):
                        continue
                    if receipt["status"] != 1:
                        # State changed between simulation and inclusion, or the gas it was
                        # sized with fell short; re-reading the leg decides what happens
                        # next: retryable, not a refusal.
                        self._sized_reverted(tx_hash, receipt)
                        raise TransactionReverted(f"tx 0x{tx_hash.hex()} reverted on {self.ledger}")
                    self._sized_by_access_list.pop(tx_hash, None)
                    return receipt
        except TimeoutError:
            pass
        raise Unavailable(f"tx 0x{tx_hash.hex()} not final on {self.ledger} after {limit_s:.0f}s")

    async def _read_raw(self, method: str, params: tuple[Any, ...]) -> Any:
        """``method(params)``'s ``result`` as the node sent it: straight through the provider
        (no web3 request manager, no formatters). A read, so anything the node answers
        instead of a result is Unavailable, to be asked again: an error object (geth's
        "transaction indexing is in progress" after a restart, a provider's rate or range
        limit), a body that is not JSON or not a JSON-RPC object. The transport's faults are
        Unavailable as for every call; an error of this process's own propagates."""
        try:
            answer: Any = await self._rpc(
                method, lambda: self._provider.make_request(RPCEndpoint(method), params)
            )
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the body, decoded
            raise Unavailable(
                f"ledger {self.ledger}: {method} answered a body that is not JSON: {exc}"[:400]
            ) from exc
        if not isinstance(answer, Mapping):
            raise Unavailable(
                f"ledger {self.ledger}: {method} answered a {type(answer).__name__}, not a"
                " JSON-RPC object"
            )
        if answer.get("error") is not None or "result" not in answer:
            raise Unavailable(
                f"ledger {self.ledger}: {method} answered no result: {answer.get('error')!r}"[:400]
            )
        return answer["result"]

    async def _receipt(self, tx_hash: bytes) -> Mapping[str, Any] | None:
        """``tx_hash``'s receipt: ``blockNumber``, ``status`` and ``gasUsed`` (None if the
        node sent none) as ints, ``logs`` as :func:`_log_fields` gives them; None while it
        has none (no receipt, or one without a block yet). Unavailable for any other answer:
        not this transaction's receipt, a block number or status that is not a quantity,
        logs that are not a list of logs.

        Sent without web3's result formatters: for a batch's receipt they checksummed every
        log's address and converted every field, most of a relayer's cost of a receipt
        (issue 14)."""
        receipt: Any = await self._read_raw("eth_getTransactionReceipt", ("0x" + tx_hash.hex(),))
        if receipt is None:
            return None
        try:
            if receipt["blockNumber"] is None:
                return None  # pending, as some nodes answer
            if _data(receipt["transactionHash"]) != tx_hash:
                raise ValueError(f"the receipt of {receipt['transactionHash']!r}"[:200])
            raw_logs = receipt["logs"]
            if not isinstance(raw_logs, list):
                raise TypeError(f"logs are a {type(raw_logs).__name__}, not a list")
            block, block_hash = quantity(receipt["blockNumber"]), _data(receipt["blockHash"])
            logs = sorted((_log_fields(log) for log in raw_logs), key=lambda lg: lg["logIndex"])
            # SECURITY: every log is this transaction's, in this block, in log order (a
            # batch's results take the last event of each leg; logs a node numbers alike
            # keep its order).
            if any(
                (lg["transactionHash"], lg["blockNumber"], lg["blockHash"])
                != (tx_hash, block, block_hash)
                for lg in logs
            ):
                raise ValueError("a log of another transaction or block")
            used = receipt.get("gasUsed")
            return {
                "blockNumber": block,
                "status": quantity(receipt["status"]),
                "logs": logs,
                "gasUsed": None if used is None else quantity(used),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(
                f"ledger {self.ledger}: malformed receipt for tx 0x{tx_hash.hex()}: {exc!r}"[:400]
            ) from exc

    # ---- committee rotation

    async def committees(self, height: int | None = None) -> tuple[EpochWindow, ...]:
        """The endpoint's ``committees()`` view at block ``height`` (default: finalized): the
        latest installed epoch and, while its window lasts at that block's timestamp, the
        previous one, ascending by epoch. InvalidInput for a height above the finalized one."""
        final = await self.finalized_height()
        at = final if height is None else height
        if not 0 <= at <= final:
            raise InvalidInput(f"height {at} is not finalized on {self.ledger} (final: {final})")
        fn = self._bridge.functions.committees()
        try:
            windows = await self._rpc("committees", lambda: fn.call(block_identifier=at))
        except BadFunctionCallOutput as exc:
            # No code at the endpoint's address at that block: on a fresh deployment with
            # finality_depth > 0 the finalized block may precede the deployment. Transient
            # (review finding 8): callers retry, the start-up check exits Unavailable.
            raise Unavailable(f"no bridge endpoint on {self.ledger} at height {at} yet") from exc
        return tuple(_window_from_abi(w) for w in windows)

    def _rotation_args(self, rotation: CommitteeRotation) -> list[Any]:
        return [
            rotation.epoch,
            rotation.next.epoch,
            rotation.next.threshold,
            [to_checksum_address(m) for m in rotation.next.members],
            rotation.activation,
            rotation.overlap,
        ]

    # ---- governance writes: the template's skeleton (bridge.ledgers.steps)
    async def _write_applied(self, write: GovernanceWrite) -> TxOutcome | None:
        """A rotation: installed at the finalized height (the template's read). An order: the
        endpoint's sequence at the latest block is at or past the order's."""
        if isinstance(write, RotationWrite):
            return await super()._write_applied(write)
        f = self._bridge.functions
        latest = await self._latest()
        security = write.order.security
        _, _, sequence = await self._rpc(
            "haltStatus", lambda: f.haltStatus(security).call(block_identifier=latest)
        )
        if int(sequence) >= write.order.sequence:
            return TxOutcome(tx_id="", height=latest, already_applied=True)
        return None

    async def _installed_height(self, write: RotationWrite) -> int:
        """The dry run (:meth:`_gas_limit`) reverted ``RotationAlreadyInstalled``: wait until
        the rotation is installed at the finalized height."""
        return await self._rotation_final(write.rotation)

    async def _send_write(self, write: GovernanceWrite) -> bytes:
        """``rotateCommittee(..., certificate)`` or ``applyOrder(order, signature)``.

        The replay check of a rotation is the endpoint's own: a dry run that reverts
        ``RotationAlreadyInstalled`` (the template reports it ``already_applied``). A retry
        while this adapter's earlier rotation transaction is still pending waits for it
        instead of sending another."""
        f = self._bridge.functions
        if isinstance(write, OrderWrite):
            return await self._send(f.applyOrder(order_abi_tuple(write.order), write.signature))
        rotation, certificate = write.rotation, write.certificate
        epoch = rotation.next.epoch
        earlier = self._sent_rotations.get(epoch)
        if earlier is not None and await self._is_pending(earlier):
            return earlier
        fn = f.rotateCommittee(
            *self._rotation_args(rotation), (certificate.epoch, b"".join(certificate.signatures))
        )
        tx_hash = await self._send(fn)
        self._sent_rotations[epoch] = tx_hash
        return tx_hash

    async def _wait_write_final(self, write: GovernanceWrite, handle: bytes) -> TxOutcome:
        """Wait for the transaction's block to be final. A rotation transaction that
        reverted because another submitter's identical rotation was mined first is
        ``already_applied``."""
        try:
            height = await self._await_final(handle, self._confirm_s)
        except Unavailable:
            if isinstance(write, RotationWrite) and await self._holds(write.rotation):
                height = await self._rotation_final(write.rotation)
                return TxOutcome(tx_id="", height=height, already_applied=True)
            raise
        if isinstance(write, RotationWrite):
            self._sent_rotations.pop(write.rotation.next.epoch, None)
        return TxOutcome(tx_id="0x" + handle.hex(), height=height, already_applied=False)

    async def _holds(self, rotation: CommitteeRotation) -> bool:
        """True when the latest block shows ``rotation.next`` installed as given."""
        windows = await self.committees(await self.finalized_height())
        return any(
            w.committee == rotation.next and w.active_from == rotation.activation for w in windows
        )

    async def _rotation_final(self, rotation: CommitteeRotation, limit_s: float = 120.0) -> int:
        """Wait until ``rotation.next`` is installed at the finalized height; return it."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + limit_s
        while loop.time() < give_up:
            at = await self.finalized_height()
            windows = await self.committees(at)
            if windows and windows[-1].committee.epoch >= rotation.next.epoch:
                return at
            await asyncio.sleep(self._poll)
        raise Unavailable(f"rotation to epoch {rotation.next.epoch} not final on {self.ledger}")

    # ---- depository halt

    async def halt_status(self, security: SecurityId | None) -> HaltStatus:
        """``haltStatus(security)`` and ``depository()`` at the finalized height."""
        at = await self.finalized_height()
        word = ZERO_WORD if security is None else security.word
        f = self._bridge.functions
        (sec, whole, sequence), depository = await self._rpc(
            "haltStatus",
            lambda: asyncio.gather(
                f.haltStatus(word).call(block_identifier=at),
                f.depository().call(block_identifier=at),
            ),
        )
        key = bytes.fromhex(str(depository)[2:])
        return HaltStatus(bool(sec), bool(whole), int(sequence), key if any(key) else None)

    async def node_identity(self) -> tuple[int, bytes, bytes]:
        """What the node says it is: ``(chain id, code at the bridge address, the endpoint's
        ledgerId word)``; the word is empty when there is no code (nothing to ask)."""
        chain_id = await self._rpc("eth_chainId", lambda: self._w3.eth.chain_id)
        code = await self._rpc("eth_getCode", lambda: self._w3.eth.get_code(self._bridge.address))
        if not code:
            return int(chain_id), b"", b""
        word = await self._rpc("ledgerId", lambda: self._bridge.functions.ledgerId().call())
        return int(chain_id), bytes(code), bytes(word)

    async def close(self) -> None:
        """Stop the head subscription and shared head poll and close the HTTP session."""
        task, self._head_sub_task = self._head_sub_task, None
        if task is not None:
            await stop_task(task)
        await self._heads.close()
        session, self._session = self._session, None  # a request from now opens a new one
        if session is not None:
            await session.close()

    # ---- observability (ADR 0016)
    async def gas_balance(self) -> int:
        """The sending account's balance in wei (0 for a read-only adapter)."""
        if self._sender is None:
            return 0
        addr = self._sender
        return int(await self._rpc("eth_getBalance", lambda: self._w3.eth.get_balance(addr)))

    async def pending_transactions(self) -> int:
        """Transactions the sending account has in the node's pool, not yet mined."""
        if self._sender is None:
            return 0
        addr = self._sender
        mined = await self._rpc("nonce", lambda: self._w3.eth.get_transaction_count(addr, "latest"))
        return max(0, await self._pending_count() - int(mined))


# ---- read lens (issue 14 item 4)
class _NoEndpoint(Exception):
    """No code at the endpoint's address at the block read (mapped to NotFound)."""


def _data(value: Any) -> bytes:
    """``0x`` hex (or bytes, as middleware may give it) as bytes; ValueError/TypeError for
    anything else."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value[:2] in ("0x", "0X"):
        try:
            out = bytes.fromhex(value[2:])
        except ValueError:
            pass
        else:
            # fromhex takes only ASCII hex digits in pairs, and skips whitespace between
            # pairs: two characters per byte means there was none (one C pass, no regex).
            if 2 * len(out) == len(value) - 2:
                return out
    raise ValueError(f"not hex data: {value!r}"[:200])


def _log_fields(log: Mapping[str, Any]) -> dict[str, Any]:
    """One raw ``eth_getLogs`` entry as :meth:`EvmAdapter.events` reads it: ``blockNumber``
    and ``logIndex`` ints, ``topics`` a list of 32-byte values, ``blockHash`` and
    ``transactionHash`` 32 bytes, ``data`` bytes, ``address`` the node's text (checked
    against the endpoint's address by the reader). KeyError, TypeError or ValueError for a
    log without these or with a hash or topic of another length, or one the node marks
    ``removed``."""
    if not isinstance(log, Mapping):
        raise TypeError(f"a log is a {type(log).__name__}, not an object")
    if log.get("removed") is True:  # a log of a block no longer in the chain
        raise ValueError("a removed log")
    hashes = {k: _data(log[k]) for k in ("blockHash", "transactionHash")}
    topics = [_data(t) for t in log["topics"]]
    if any(len(h) != 32 for h in (*hashes.values(), *topics)):
        raise ValueError("a log's hash or topic is not 32 bytes")
    if not isinstance(log["address"], str):
        raise TypeError(f"an address is a {type(log['address']).__name__}, not text")
    return {
        "address": log["address"],
        "blockNumber": quantity(log["blockNumber"]),
        "logIndex": quantity(log["logIndex"]),
        "topics": topics,
        "data": _data(log["data"]),
        **hashes,
    }


def _receipt_block(receipt: Mapping[str, Any]) -> int:
    """The block number of a receipt returned by :meth:`EvmAdapter._receipt`."""
    return int(receipt["blockNumber"])


def _raised(result: T | Exception) -> T:
    """A batched read's answer, or its refusal raised in the caller."""
    if isinstance(result, Exception):
        raise result
    return result


def _as_result(result: T | BaseException) -> T | Exception:
    """A gathered item's outcome as a batch answer (a cancellation is not an answer)."""
    if isinstance(result, BaseException) and not isinstance(result, Exception):
        raise result
    return result


def _leg_from_view(leg: Leg, view: Any, at: int) -> LegStatus:
    """A ``BridgeLens.LegView`` as :meth:`EvmAdapter._get_leg_single` reads the leg: the
    inbound reason only for an inbound leg, ``notBefore`` only while locked or prepared."""
    raw_state, terms_hash, reason, not_before = (
        [view[k] for k in ("state", "termsHash", "reason", "notBefore")]
        if hasattr(view, "keys")
        else list(view)
    )
    state = leg_state_from_ledger(leg, int(raw_state))
    return LegStatus(
        state=state,
        terms_hash=bytes(terms_hash),
        reason=int(reason) if leg is Leg.INBOUND else 0,
        height=at,
        not_before=int(not_before) if state in (LegState.LOCKED, LegState.PREPARED) else 0,
    )


def _window_from_abi(raw: Any) -> EpochWindow:
    """An ``IBridgeEndpoint.CommitteeWindow`` (web3 returns a mapping or a tuple)."""
    keys = ("epoch", "threshold", "activeFrom", "activeUntil", "members")
    epoch, threshold, start, until, members = (
        [raw[k] for k in keys] if hasattr(raw, "keys") else list(raw)
    )
    return EpochWindow(
        committee=Committee(
            epoch=int(epoch),
            threshold=int(threshold),
            members=tuple(bytes.fromhex(str(m)[2:]) for m in members),
        ),
        active_from=int(start),
        active_until=int(until) if int(until) != 0 else None,
    )


_TERMS_KEYS = (
    "nonce", "securityId", "amount", "srcLedgerId", "srcBridge",
    "dstLedgerId", "dstBridge", "sender", "recipient", "instructor", "deadline",
)  # fmt: skip


def _terms_from_event(raw: Any) -> TransferTerms:
    """Terms from a decoded ``Terms`` struct (web3 returns a mapping or a tuple)."""
    v = [raw[k] for k in _TERMS_KEYS] if hasattr(raw, "keys") else list(raw)
    return TransferTerms(
        nonce=bytes(v[0]),
        security=bytes(v[1]),
        amount=int(v[2]),
        src_ledger=bytes(v[3]),
        src_bridge=bytes(v[4]),
        dst_ledger=bytes(v[5]),
        dst_bridge=bytes(v[6]),
        sender=bytes(v[7]),
        recipient=bytes(v[8]),
        instructor=bytes(v[9]),
        deadline=int(v[10]),
    )
