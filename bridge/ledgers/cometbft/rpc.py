"""A CometBFT node's JSON-RPC, as the CometBFT adapter needs it (aiohttp, GET URIs).

Guarantees: transport faults and JSON-RPC errors raise Unavailable (a retry is safe); an
endpoint refusal raises LedgerRejected with the ErrorReason its result CODE carries (never
read from a message), with the detail and figures of the result's JSON log; an envelope
refusal (signature, chain, nonce) raises LedgerRejected(TransactionInvalid), except a stale
nonce, which is re-read and retried. Transactions from one client are numbered by one
counter under a lock, so concurrent sends from it never reuse a nonce.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.signer import Signer
from bridge.ledgers.cometbft.envelope import (
    EnvelopeCode,
    TxBody,
    account_id,
    encode_query,
    reason_of,
    sign,
)

NONCE_RETRIES = 3
VALID_BLOCKS = 100
"""A transaction the client signs is valid for this many blocks after the committed height
it read (``TxBody.valid_until``): later, it can never be included, so a call the client
gave up on cannot be replayed once the client signed others."""
TX_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class TxEvent:
    """One endpoint event of a committed, successful transaction."""

    height: int
    index: int
    tx_hash: str
    name: str
    payload: str


@dataclass(frozen=True, slots=True)
class Committed:
    """A transaction committed in a block (CometBFT blocks are final once committed)."""

    tx_hash: str
    height: int
    code: int
    data: bytes
    log: str


def tx_hash_of(raw: bytes) -> str:
    """CometBFT's transaction hash: SHA-256 of the bytes, upper-case hex."""
    return hashlib.sha256(raw).hexdigest().upper()


def refusal(code: int, log: str, ledger: str = "") -> LedgerRejected:
    """The typed refusal of a non-zero result code (the JSON log gives detail and figures)."""
    reason = reason_of(code)
    if code == EnvelopeCode.UNKNOWN_ACCOUNT:  # the chain admits genesis accounts and relayers
        return LedgerRejected(ErrorReason.NOT_RELAYER, log[:300], ledger=ledger)
    if reason is None:
        try:
            name = EnvelopeCode(code).name
        except ValueError:
            name = f"code {code}"
        return LedgerRejected(
            ErrorReason.TRANSACTION_INVALID, f"{name}: {log[:300]}", ledger=ledger
        )
    detail, figures = log[:300], {}
    try:
        body = json.loads(log)
        detail = str(body.get("detail", ""))[:300]
        figures = {
            str(k): int(v)
            for k, v in dict(body.get("figures", {})).items()
            if isinstance(v, int) and not isinstance(v, bool)
        }
    except (ValueError, AttributeError, TypeError):
        pass
    return LedgerRejected(reason, detail, figures, ledger=ledger)


class CometClient:
    """JSON-RPC client of one node; signs with ``signer`` when given."""

    def __init__(
        self,
        rpc_url: str,
        chain_id: str,
        signer: Signer | None = None,
        ledger: str = "",
        timeout_s: float = 10.0,
        commit_timeout_s: float = 60.0,
    ) -> None:
        self._url = rpc_url.rstrip("/")
        self._chain_id = chain_id
        self._signer = signer
        self._ledger = ledger
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._commit_timeout = commit_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._nonce: int | None = None
        self._lock = asyncio.Lock()

    @property
    def chain_id(self) -> str:
        """The chain this client signs for."""
        return self._chain_id

    @property
    def account(self) -> str:
        """The signer's account id ('' without a key)."""
        return account_id(self._signer.address) if self._signer is not None else ""

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def rpc(self, method: str, **params: str) -> Any:
        """``GET /<method>?params``: the result object; Unavailable on any fault."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self._url}/{method}", params=params) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            # RecursionError: a deeply nested body (review s23), refused like any malformed one
            raise Unavailable(f"{self._ledger}: cometbft {method}: {exc!r}"[:500]) from exc
        if not isinstance(body, dict):
            raise Unavailable(f"{self._ledger}: cometbft {method}: malformed answer")
        if "error" in body:
            raise Unavailable(f"{self._ledger}: cometbft {method}: {body['error']}")
        return body.get("result")

    # -- chain --------------------------------------------------------------------------------
    async def latest_height(self) -> int:
        """The last block the APPLICATION committed (ABCI Info): final (CometBFT commits are
        final) and answerable by queries. The node's own ``status`` height can be one block
        ahead of it (the block is stored before the application commits it)."""
        info = await self.rpc("abci_info")
        return int(info["response"].get("last_block_height", 0))

    async def block_metas(self, lo: int, hi: int) -> list[tuple[int, bytes, int]]:
        """(height, block hash, number of transactions) of blocks ``lo..hi`` (at most 20
        per call, CometBFT's page), ascending."""
        result = await self.rpc("blockchain", minHeight=str(lo), maxHeight=str(hi))
        metas = [
            (int(m["header"]["height"]), bytes.fromhex(m["block_id"]["hash"]), int(m["num_txs"]))
            for m in result["block_metas"]
        ]
        return sorted(metas)

    async def block_hash(self, height: int) -> bytes:
        """The hash of block ``height``."""
        metas = await self.block_metas(height, height)
        if not metas:
            raise Unavailable(f"{self._ledger}: block {height} not found")
        return metas[0][1]

    async def block_events(self, height: int) -> list[TxEvent]:
        """Every endpoint event of the successful transactions of block ``height``."""
        result = await self.rpc("block_results", height=str(height))
        block = await self.rpc("block", height=str(height))
        raw_txs = block["block"]["data"]["txs"] or []
        out: list[TxEvent] = []
        for index, tx_result in enumerate(result.get("txs_results") or []):
            if int(tx_result.get("code", 0)) != 0:
                continue
            tx_hash = tx_hash_of(base64.b64decode(raw_txs[index]))
            for ev in tx_result.get("events") or []:
                if ev.get("type") != "kstb":
                    continue
                attrs = {a["key"]: a["value"] for a in ev.get("attributes") or []}
                out.append(TxEvent(height, index, tx_hash, attrs["name"], attrs["payload"]))
        return out

    # -- queries ------------------------------------------------------------------------------
    async def raw_query(
        self, path: str, data: bytes, height: int = 0
    ) -> tuple[int, bytes, str, int]:
        """ABCI query: (code, value, log, height read)."""
        result = await self.rpc(
            "abci_query", path=json.dumps(path), data="0x" + data.hex(), height=str(height)
        )
        r = result["response"]
        value = base64.b64decode(r.get("value") or "")
        return int(r.get("code", 0)), value, str(r.get("log", "")), int(r.get("height", 0))

    async def query(self, function: str, args: list[str], height: int = 0) -> tuple[bytes, int]:
        """An endpoint view (``/q/<function>``): its JSON value and the height it read;
        LedgerRejected with the code's reason when the endpoint refuses."""
        code, value, log, at = await self.raw_query(f"/q/{function}", encode_query(args), height)
        if code:
            raise refusal(code, log, self._ledger)
        return value, at

    async def next_nonce(self) -> int:
        """This signer's next nonce, as committed."""
        code, value, log, _ = await self.raw_query("/nonce", self.account.encode("ascii"))
        if code:
            raise refusal(code, log, self._ledger)
        return int(value)

    # -- transactions -------------------------------------------------------------------------
    async def send(self, function: str, args: list[str]) -> str:
        """Sign and broadcast (CheckTx passed); the transaction hash. A stale nonce is
        re-read and the transaction re-signed (at most NONCE_RETRIES times)."""
        if self._signer is None:
            raise LedgerRejected(ErrorReason.READ_ONLY, "this client has no key")
        async with self._lock:
            for _ in range(NONCE_RETRIES):
                # SECURITY: the nonce lives in a local across the await; self._nonce is only
                # written under this lock (see _forget_nonce), never read after an await.
                nonce = self._nonce
                if nonce is None:
                    nonce = await self.next_nonce()
                assert self._signer is not None
                until = await self.latest_height() + VALID_BLOCKS
                body = TxBody(
                    self._chain_id, function, tuple(args), nonce, self._signer.address, until
                )
                raw = sign(body, self._signer)
                tx_hash = tx_hash_of(raw)
                try:
                    result = await self.rpc("broadcast_tx_sync", tx="0x" + raw.hex())
                except Unavailable:
                    # CometBFT v1 answers a CheckTx refusal with a JSON-RPC error whose code
                    # is only in its message: ask CheckTx itself for the typed result.
                    result = await self.rpc("check_tx", tx="0x" + raw.hex())
                    if not int(result.get("code", 0)):
                        raise
                code = int(result.get("code", 0))
                if code in (EnvelopeCode.BAD_NONCE, EnvelopeCode.EXPIRED):
                    self._nonce = None
                    continue
                if code:
                    raise refusal(code, str(result.get("log", "")), self._ledger)
                if str(result.get("hash", "")).upper() != tx_hash:
                    # SECURITY: the node must name the transaction we signed; the hash we
                    # wait for is always our own (sha256 of our bytes), never the node's.
                    self._nonce = None
                    raise Unavailable(f"{self._ledger}: node answered another tx hash")
                self._nonce = nonce + 1
                return tx_hash
        raise Unavailable(f"{self._ledger}: nonce still stale after {NONCE_RETRIES} attempts")

    async def committed(self, tx_hash: str) -> Committed:
        """Wait until ``tx_hash`` is committed in a block; its result (any code)."""
        deadline = time.monotonic() + self._commit_timeout
        while True:
            try:
                result = await self.rpc("tx", hash="0x" + tx_hash)
            except Unavailable:
                result = None
            if result:
                try:
                    carried = tx_hash_of(base64.b64decode(result.get("tx") or "", validate=True))
                except (ValueError, TypeError):
                    carried = ""
                if carried != tx_hash.upper() or str(result.get("hash", "")).upper() != carried:
                    # SECURITY: a node's answer counts only for the very bytes we sent.
                    raise Unavailable(f"{self._ledger}: node answered another tx for {tx_hash}")
                r = result["tx_result"]
                code = int(r.get("code", 0))
                if code == EnvelopeCode.BAD_NONCE:
                    await self._forget_nonce()
                return Committed(
                    tx_hash,
                    int(result["height"]),
                    code,
                    base64.b64decode(r.get("data") or ""),
                    str(r.get("log", "")),
                )
            if time.monotonic() > deadline:
                await self._forget_nonce()  # it may never be included: re-read before next
                raise Unavailable(f"{self._ledger}: tx {tx_hash} not committed in time")
            await asyncio.sleep(TX_POLL_S)

    async def _forget_nonce(self) -> None:
        """Re-read the nonce before the next send (under the send lock, never mid-send)."""
        async with self._lock:
            self._nonce = None

    async def call(self, function: str, args: list[str]) -> str:
        """Send and wait: the committed result's JSON; LedgerRejected on a refusal."""
        done = await self.committed(await self.send(function, args))
        if done.code:
            raise refusal(done.code, done.log, self._ledger)
        return done.data.decode("ascii")
