"""The ABCI application's logic, free of gRPC and protobuf (``server`` binds it).

State (``store.VersionedStore``): the endpoint's keys under ``s/`` (exactly the chaincode's
key layout), each account's next nonce under ``n/<account id>``, the genesis accounts under
``a/<account id>``, the chain's pinned settings under ``app``.

Per block: :meth:`App.finalize_block` runs every transaction against one overlay of the
last committed state; :meth:`App.commit` persists the overlay and the block's app hash in
one SQLite transaction. The app hash is ``sha256(previous app hash || height || sha256 of
the block's sorted writes)``: deterministic (sorted keys, canonical JSON, integer
arithmetic, the block time as the only clock) and chained, so two validators agree on it
exactly when they applied the same writes to the same history.

Per transaction (SECURITY): the envelope must be well formed, signed by its signer and
for this chain; the signer a genesis account or an enabled relayer; the block at most the
body's ``valid_until``; its nonce the account's next one; only then is the nonce consumed
(whatever the endpoint decides, so a call the endpoint refused can never be replayed later,
when it might succeed) and the endpoint call run, atomically: a refused call writes nothing
but the nonce. A transaction refused before that (a nonce gap, say) consumes nothing, but
is still dead once the chain passes its ``valid_until``; and honest validators refuse any
proposal that carries one (``proposal_ok``). The caller identity the endpoint sees is
``<org>:<account id>`` for a genesis account (with its roles) and ``key:<account id>``
for any other key (no roles); the account id is the signer's address as a 32-byte word,
so only the genesis can make an organisation admin.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kstb_chaincode.core.digests import init_parameters_digest
from kstb_chaincode.protocol import FUNCTIONS, ChaincodeError, Context, canonical_json, execute

from bridge.core.reasons import ErrorReason
from bridge.ledgers.cometbft.envelope import (
    EnvelopeCode,
    EnvelopeError,
    SignedTx,
    decode,
    reason_code,
)
from kstb_cometbft.fingerprint import code_fingerprint
from kstb_cometbft.store import BlockMeta, VersionedStore

LOG = logging.getLogger("kstb_cometbft")
CODESPACE = "kstb"
EVENT_TYPE = "kstb"
"""ABCI event type of every endpoint event; attributes ``name`` and ``payload`` (JSON)."""
QUERY_PREFIX = "/q/"
"""ABCI query path of an endpoint view: ``/q/<Function>``, data = JSON list of arguments."""
NONCE_PATH = "/nonce"
"""ABCI query path of an account's next nonce; data = the account id (64 hex)."""
APP_PATH = "/app"
"""ABCI query path of the chain's pinned settings (chain id, fingerprint, app name)."""
_QUERY_CALLER = "query:" + "0" * 64
MAX_QUERY_BYTES = 64 * 1024
"""Larger query data (or path) is refused unread."""
NONCE_WINDOW = 32
"""How far ahead of its committed nonce an account's transaction is admitted (pipelining)."""
FATAL_ERRORS: tuple[type[BaseException], ...] = (MemoryError, RecursionError)
"""Errors that depend on the machine, not on the transaction (memory, stack depth): never
turned into a refusal, which another validator would not compute; they stop the node
(the ABCI call fails, CometBFT halts it) and the block is replayed after a restart."""
_GENESIS_ORG_KEY = "0" * 64


class CodeMismatch(RuntimeError):
    """This process's code is not the code the chain pinned (see ``fingerprint``)."""


@dataclass(frozen=True, slots=True)
class TxResult:
    """One transaction's outcome as ABCI reports it."""

    code: int
    data: bytes = b""
    log: str = ""
    events: tuple[tuple[str, str], ...] = ()
    """(event name, JSON payload) of each endpoint event."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """An ABCI query's answer; ``height`` is the state it read."""

    code: int
    value: bytes
    log: str
    height: int


class _View:
    """The protocol's KeyValue over the committed state at ``height`` plus an overlay."""

    def __init__(self, store: VersionedStore, height: int, overlay: dict[str, bytes | None]):
        self._store = store
        self._height = height
        self._overlay = overlay

    def get(self, key: str) -> bytes | None:
        if key in self._overlay:
            return self._overlay[key]
        return self._store.get(key, self._height)

    def put(self, key: str, value: bytes) -> None:
        _check_key(key)
        self._overlay[key] = bytes(value)

    def delete(self, key: str) -> None:
        _check_key(key)
        self._overlay[key] = None

    def snapshot(self) -> dict[str, bytes | None]:
        """A copy of the uncommitted writes (see :meth:`restore`)."""
        return dict(self._overlay)

    def restore(self, saved: Mapping[str, bytes | None]) -> None:
        """Undo every write made since ``saved`` was taken."""
        self._overlay.clear()
        self._overlay.update(saved)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        merged = dict(self._store.scan(prefix, self._height))
        for k, v in self._overlay.items():
            if k.startswith(prefix):
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        return sorted(merged.items())

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        """The committed page merged with this block's writes; reads at most ``limit`` plus
        the number of this block's writes in range committed keys (review F12: never the
        whole prefix). A committed page that came back full is exact up to its last key:
        the block's writes can hide at most as many keys as they number."""
        mine = {k: v for k, v in self._overlay.items() if k.startswith(prefix) and k > after}
        want = limit + len(mine)
        committed = self._store.scan_after(prefix, after, want, self._height)
        merged = dict(committed)
        for k, v in mine.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        rows = sorted(merged.items())
        if len(committed) == want:  # more may follow: exact only up to the last one read
            rows = [kv for kv in rows if kv[0] <= committed[-1][0]]
        return rows[:limit]


def _check_key(key: str) -> None:
    """SECURITY: state keys are printable ASCII (what the store's range scans assume and
    what SQLite can store for sure). A key that is not (a lone surrogate, a control byte) is
    refused while the transaction runs, so the transaction is refused as a whole instead of
    failing every validator's Commit."""
    if not (key.isascii() and key.isprintable()):
        raise ChaincodeError("InvalidArgument", f"state key {key!r} is not printable ASCII")


class _Prefixed:
    """A KeyValue under ``prefix`` of another (the endpoint sees its own key space)."""

    def __init__(self, inner: _View, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix

    def get(self, key: str) -> bytes | None:
        return self._inner.get(self._prefix + key)

    def put(self, key: str, value: bytes) -> None:
        self._inner.put(self._prefix + key, value)

    def delete(self, key: str) -> None:
        self._inner.delete(self._prefix + key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        n = len(self._prefix)
        return [(k[n:], v) for k, v in self._inner.scan(self._prefix + prefix)]

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        n = len(self._prefix)
        rows = self._inner.scan_after(self._prefix + prefix, self._prefix + after, limit)
        return [(k[n:], v) for k, v in rows]


def _refusal_log(exc: ChaincodeError) -> str:
    """The refusal's machine-readable part as the result log: canonical JSON ``{"reason",
    "detail", "figures"}`` (the reason is also the result code)."""
    body = {"reason": exc.name, "detail": exc.detail, "figures": exc.figures}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _decode(raw: bytes, chain_id: str) -> SignedTx | TxResult:
    """The authenticated transaction, or the fixed refusal of bytes that are not one.

    SECURITY: nothing a client sends may escape as an exception (an exception in CheckTx
    stops the CometBFT node, in FinalizeBlock every validator): an envelope refusal keeps
    its code, any other error but a machine-dependent one is MALFORMED."""
    try:
        return decode(raw, chain_id)
    except EnvelopeError as exc:
        return TxResult(int(exc.code), log=str(exc))
    except FATAL_ERRORS:
        raise
    except Exception as exc:
        LOG.warning("undecodable transaction: %s", type(exc).__name__)
        return TxResult(int(EnvelopeCode.MALFORMED), log=f"undecodable: {type(exc).__name__}")


def _refusal_code(name: str) -> int:
    reason = ErrorReason.parse(name)
    return reason_code(reason if reason is not None else ErrorReason.UNKNOWN_REFUSAL)


@dataclass
class App:
    """The application; one instance per node, driven by CometBFT's ABCI connections."""

    store: VersionedStore
    fingerprint: str = field(default_factory=code_fingerprint)
    _pending: dict[str, bytes | None] = field(default_factory=dict)
    _pending_meta: BlockMeta | None = None
    _chain_id: str = ""
    _on_commit: list[Callable[[int], None]] = field(default_factory=list)
    reader: VersionedStore | None = None
    """A read-only connection to the same store for queries (None: ``store``), so reads
    never wait for, or delay, the consensus connection (see ``server``)."""

    def __post_init__(self) -> None:
        raw = self.store.get("app", self.store.last().height)
        if raw is not None:
            settings = json.loads(raw)
            self._chain_id = settings["chain_id"]
            self._check_fingerprint(settings["fingerprint"])

    def _check_fingerprint(self, pinned: str) -> None:
        # SECURITY: never run rules other than the ones the chain pinned.
        if pinned != self.fingerprint:
            raise CodeMismatch(f"chain pins code {pinned}, this process runs {self.fingerprint}")

    # -- ABCI Info / InitChain --------------------------------------------------------------
    def info(self) -> BlockMeta:
        """The last committed block (CometBFT replays the blocks after it)."""
        return self.store.last()

    def init_chain(self, chain_id: str, app_state: bytes, genesis_time: int) -> bytes:
        """Apply the genesis: pin the code and settings, load accounts, initialise the
        endpoint (its ``Init`` run as the issuer's admin, pinned by the genesis itself).

        Raises CodeMismatch or ValueError: a node must not start on a genesis it cannot
        apply exactly."""
        state = json.loads(app_state)
        self._check_fingerprint(state["fingerprint"])
        self._chain_id = chain_id
        overlay: dict[str, bytes | None] = {}
        view = _View(self.store, 0, overlay)
        app_name = str(state["init"]["app_name"])
        view.put(
            "app",
            canonical_json(
                {"app_name": app_name, "chain_id": chain_id, "fingerprint": self.fingerprint}
            ),
        )
        for account, entry in sorted(state.get("accounts", {}).items()):
            org, roles = str(entry["org"]), sorted(str(r) for r in entry.get("roles", []))
            view.put(f"a/{account}", canonical_json({"org": org, "roles": roles}))
        init = state["init"]
        args = [
            str(init["ledger_name"]),
            app_name,
            str(init["committee"]),
            str(init["network"]),
            str(init["governance"]),
        ]
        issuer = json.loads(init["governance"])["issuer"]
        ctx = Context(
            caller=f"{issuer}:{_GENESIS_ORG_KEY}",
            channel_id=chain_id,
            chaincode_name=app_name,
            caller_roles=frozenset({"admin"}),
            init_pin=init_parameters_digest(args),
            tx_time=genesis_time,
        )
        execute(_Prefixed(view, "s/"), ctx, "Init", args, lambda _n, _p: None)
        self._pending = overlay
        self._pending_meta = None
        return self._hash(b"", 0, overlay)

    # -- transactions ------------------------------------------------------------------------
    def check_tx(self, raw: bytes) -> TxResult:
        """Mempool admission: a well-formed, authentic transaction for this chain, calling a
        state-changing function, by an admitted account, whose nonce is within
        ``NONCE_WINDOW`` of the account's next (committed) one. The endpoint's own rules run
        only in the block.

        SECURITY: the window caps how many transactions one account can have admitted at
        distinct nonces (and so in one block, see :meth:`proposal_ok`); the rule is a pure
        function of committed state, so a ``check_tx`` RPC call that admits without adding
        to the mempool leaves nothing behind."""
        tx = _decode(raw, self._chain_id)
        if isinstance(tx, TxResult):
            return tx
        entry = FUNCTIONS.get(tx.body.function)
        if entry is None or not entry[2]:
            return TxResult(
                int(EnvelopeCode.READ_ONLY_FUNCTION), log=f"{tx.body.function}: not a transaction"
            )
        view = self._committed_view()
        if not self._admitted(view, tx.account):
            return TxResult(int(EnvelopeCode.UNKNOWN_ACCOUNT), log=f"account {tx.account}")
        next_height = self.store.last().height + 1
        if next_height > tx.body.valid_until:
            return TxResult(int(EnvelopeCode.EXPIRED), log=f"valid until {tx.body.valid_until}")
        expected = self._next_nonce(view, tx.account)
        if tx.body.nonce < expected:
            return TxResult(
                int(EnvelopeCode.BAD_NONCE), log=f"nonce {tx.body.nonce} used; next {expected}"
            )
        if tx.body.nonce >= expected + NONCE_WINDOW:
            return TxResult(
                int(EnvelopeCode.BAD_NONCE),
                log=f"nonce {tx.body.nonce} beyond the window; next {expected}",
            )
        return TxResult(0)

    def _committed_view(self) -> _View:
        """A read-only view of the last committed state (before block 1: the genesis)."""
        last = self.store.last().height
        return _View(self.store, last, dict(self._pending) if last == 0 else {})

    # ---- proposals (attacker review s17, item 3): no free block space
    def _proposal_pass(self, txs: Sequence[bytes], keep_going: bool) -> list[bytes] | None:
        """The transactions of ``txs`` a block may carry, in order: authentic, for this
        chain, a state-changing function, by an admitted account, each account's nonces
        consecutive from its committed next. ``keep_going``: skip the others (a proposer);
        otherwise None at the first other one (a validator judging a proposal)."""
        view = self._committed_view()
        height = self.store.last().height + 1
        nonces: dict[str, int] = {}
        kept: list[bytes] = []
        for raw in txs:
            tx = _decode(raw, self._chain_id)
            ok = isinstance(tx, SignedTx)
            if isinstance(tx, SignedTx):
                entry = FUNCTIONS.get(tx.body.function)
                usable = entry is not None and entry[2] and height <= tx.body.valid_until
                if not usable or not self._admitted(view, tx.account):
                    ok = False
                else:
                    expected = nonces.get(tx.account)
                    if expected is None:
                        expected = self._next_nonce(view, tx.account)
                    ok = tx.body.nonce == expected
                    if ok:
                        nonces[tx.account] = expected + 1
            if ok:
                kept.append(raw)
            elif not keep_going:
                return None
        return kept

    def prepare_proposal(self, txs: Sequence[bytes], max_tx_bytes: int) -> list[bytes]:
        """The proposer's block: the mempool's transactions in order that
        :meth:`proposal_ok` accepts, within ``max_tx_bytes``."""
        out, size = [], 0
        for raw in self._proposal_pass(txs, keep_going=True) or []:
            size += len(raw)
            if size > max_tx_bytes:
                break
            out.append(raw)
        return out

    def proposal_ok(self, txs: Sequence[bytes]) -> bool:
        """Whether a proposed block carries only transactions that each consume a nonce
        (see :meth:`_proposal_pass`). SECURITY: a block with a malformed, forged, stranger's
        or out-of-sequence transaction is refused by every honest validator, so one
        proposer cannot fill blocks with transactions that cost nothing. Deterministic: a
        function of the committed state and the block."""
        return self._proposal_pass(txs, keep_going=False) is not None

    def finalize_block(
        self, height: int, block_time: int, txs: Sequence[bytes]
    ) -> tuple[list[TxResult], bytes]:
        """Run ``txs`` in order on the last committed state (plus the genesis writes when
        this is the first block); the results and the block's app hash."""
        last = self.store.last()
        if height != last.height + 1:
            raise RuntimeError(f"block {height} after committed block {last.height}")
        overlay = dict(self._pending) if last.height == 0 else {}
        view = _View(self.store, last.height, overlay)
        results = [self._deliver(view, raw, height, block_time) for raw in txs]
        prev = last.app_hash if last.height else self._hash(b"", 0, self._pending)
        app_hash = self._hash(prev, height, overlay)
        self._pending = overlay
        self._pending_meta = BlockMeta(height, block_time, app_hash)
        return results, app_hash

    def _deliver(self, view: _View, raw: bytes, height: int, block_time: int) -> TxResult:
        tx = _decode(raw, self._chain_id)
        if isinstance(tx, TxResult):
            return tx
        if not self._admitted(view, tx.account):  # nothing written, not even a nonce
            return TxResult(int(EnvelopeCode.UNKNOWN_ACCOUNT), log=f"account {tx.account}")
        if height > tx.body.valid_until:  # nothing written; it can never run later either
            return TxResult(int(EnvelopeCode.EXPIRED), log=f"valid until {tx.body.valid_until}")
        expected = self._next_nonce(view, tx.account)
        if tx.body.nonce != expected:
            return TxResult(
                int(EnvelopeCode.BAD_NONCE), log=f"nonce {tx.body.nonce}, expected {expected}"
            )
        entry = FUNCTIONS.get(tx.body.function)
        if entry is None or not entry[2]:
            return TxResult(int(EnvelopeCode.READ_ONLY_FUNCTION), log=tx.body.function)
        # SECURITY: the nonce is consumed before the call, whatever the endpoint decides.
        view.put(f"n/{tx.account}", str(expected + 1).encode("ascii"))
        saved = view.snapshot()  # SECURITY: a refusal undoes every write but the nonce
        events: list[tuple[str, str]] = []
        try:
            data = execute(
                _Prefixed(view, "s/"),
                self._context(view, tx, block_time),
                tx.body.function,
                list(tx.body.args),
                lambda name, payload: events.append((name, payload.decode("ascii"))),
            )
        except ChaincodeError as exc:
            view.restore(saved)
            return TxResult(_refusal_code(exc.name), log=_refusal_log(exc))
        except FATAL_ERRORS:
            raise  # SECURITY: machine-dependent; a refusal here could fork the app hash
        except Exception as exc:  # deterministic for a deterministic bug; never half-applied
            view.restore(saved)
            LOG.exception("%s failed", tx.body.function)
            fault = ChaincodeError("Internal", f"{type(exc).__name__}: {exc}")
            return TxResult(_refusal_code("Internal"), log=_refusal_log(fault))
        return TxResult(0, data=data, events=tuple(events))

    def _context(self, view: _View, tx: SignedTx, block_time: int) -> Context:
        raw = view.get(f"a/{tx.account}")
        if raw is None:
            caller, roles = f"key:{tx.account}", frozenset[str]()
        else:
            entry = json.loads(raw)
            caller, roles = f"{entry['org']}:{tx.account}", frozenset(entry["roles"])
        settings = json.loads(view.get("app") or b"{}")
        return Context(
            caller=caller,
            channel_id=self._chain_id,
            chaincode_name=settings.get("app_name"),
            caller_roles=roles,
            tx_time=block_time,
        )

    @staticmethod
    def _admitted(view: _View, account: str) -> bool:
        """SECURITY: only genesis accounts and enabled relayers (``key:<account>``) transact;
        any other key is refused before it can consume block space or write state.

        A genesis account is disabled by the governance: the admin change ``SetRelayer
        <org>:<account> false`` (k admin organisations' approval, like every admin change)
        disables it, ``... true`` enables it again (attacker review s17, item 7)."""
        raw = view.get(f"a/{account}")
        if raw is not None:
            org = json.loads(raw)["org"]
            return view.get(f"s/relayer/{org}:{account}") != b"false"
        return view.get(f"s/relayer/key:{account}") == b"true"

    @staticmethod
    def _next_nonce(view: _View, account: str) -> int:
        raw = view.get(f"n/{account}")
        return 0 if raw is None else int(raw)

    @staticmethod
    def _hash(prev: bytes, height: int, writes: Mapping[str, bytes | None]) -> bytes:
        body = canonical_json(
            [[k, None if v is None else v.hex()] for k, v in sorted(writes.items())]
        )
        return hashlib.sha256(
            prev + height.to_bytes(8, "big") + hashlib.sha256(body).digest()
        ).digest()

    def commit(self) -> int:
        """Persist the finalized block; its height."""
        meta = self._pending_meta
        if meta is None:
            raise RuntimeError("Commit without FinalizeBlock")
        self.store.commit(meta, self._pending)
        self._pending, self._pending_meta = {}, None
        return meta.height

    # -- queries -----------------------------------------------------------------------------
    def query(self, path: str, data: bytes, height: int) -> QueryResult:
        """A read of committed state at ``height`` (0: the last committed block), through
        :attr:`reader` when set. SECURITY: the node's RPC is unauthenticated; a query's data
        is bounded (``MAX_QUERY_BYTES``) and reads only committed rows."""
        store = self.reader if self.reader is not None else self.store
        last = store.last().height
        if len(data) > MAX_QUERY_BYTES or len(path) > MAX_QUERY_BYTES:
            code = reason_code(ErrorReason.INVALID_ARGUMENT)
            return QueryResult(code, b"", f"query larger than {MAX_QUERY_BYTES} bytes", last)
        at = last if height <= 0 else height
        if at > last or at <= 0 or store.block(at) is None:
            code = reason_code(ErrorReason.INVALID_ARGUMENT)
            return QueryResult(code, b"", f"height {height} not committed (last {last})", last)
        view = _View(store, at, {})
        if path == NONCE_PATH:
            account = data.decode("ascii", errors="replace")
            return QueryResult(0, str(self._next_nonce(view, account)).encode(), "", at)
        if path == APP_PATH:
            return QueryResult(0, view.get("app") or b"{}", "", at)
        if not path.startswith(QUERY_PREFIX):
            return QueryResult(reason_code(ErrorReason.UNKNOWN_FUNCTION), b"", path, at)
        function = path[len(QUERY_PREFIX) :]
        entry = FUNCTIONS.get(function)
        if entry is None or entry[2]:
            code = reason_code(ErrorReason.UNKNOWN_FUNCTION)
            return QueryResult(code, b"", f"{function}: not a query", at)
        try:
            args = json.loads(data or b"[]")
            if not isinstance(args, list):
                raise ValueError("arguments must be a JSON list")
            meta = store.block(at)
            settings = json.loads(view.get("app") or b"{}")
            ctx = Context(
                caller=_QUERY_CALLER,
                channel_id=self._chain_id,
                chaincode_name=settings.get("app_name"),
                tx_time=meta.time if meta else None,
            )
            value = execute(_Prefixed(view, "s/"), ctx, function, args, lambda _n, _p: None)
        except ChaincodeError as exc:
            return QueryResult(_refusal_code(exc.name), b"", exc.response_message(), at)
        except ValueError as exc:
            code = reason_code(ErrorReason.INVALID_ARGUMENT)
            return QueryResult(code, b"", f"InvalidArgument: {exc}", at)
        return QueryResult(0, value, "", at)
