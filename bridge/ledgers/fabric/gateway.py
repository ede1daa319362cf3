"""A Fabric Gateway client over gRPC (``grpc.aio``), built on the Fabric protos (ADR 0021).

One :class:`GatewayClient` talks to one peer's Gateway service (Evaluate, Endorse, Submit,
CommitStatus, ChaincodeEvents) and Deliver service (bounded block ranges) on one channel, as
one :class:`~bridge.ledgers.fabric.identity.SigningIdentity`, over TLS that authenticates the
peer (``tls_ca``) and, when given a TLS client certificate, this client to the peer (peers
with ``peer.tls.clientAuthRequired`` refuse clients without one at the handshake).

This module is the client layer only; the other layers live beside it, one each
(fabric-gateway's split): :mod:`~bridge.ledgers.fabric.proposal` (proposal and envelope
building), :mod:`~bridge.ledgers.fabric.blocks` (block and response parsing) and
:mod:`~bridge.ledgers.fabric.errors` (the typed errors and the error contract). Their public
names are re-exported here for callers that import them from the client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeError,
    InvalidInput,
    LedgerRejected,
    PermissionDenied,
    Unavailable,
)
from bridge.keys.files import refuse_exposed
from bridge.ledgers.fabric._protos import (
    ab_pb2,
    common_pb2,
    events_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    ledger_pb2,
)
from bridge.ledgers.fabric.blocks import (
    TX_VALID,
    ChaincodeEvent,
    DeliveredEvent,
    block_header_hash,
    block_validated,
    chaincode_events_in_block,
    response_payload,
    validation_code_name,
)
from bridge.ledgers.fabric.errors import (
    RETRYABLE_CODES,
    TRANSIENT_CHAINCODE_ERRORS,
    ErrorDetail,
    TransactionInvalid,
    chaincode_failure,
    chaincode_refusal,
    decode_chaincode_message,
    error_details,
    map_rpc_error,
)
from bridge.ledgers.fabric.identity import SigningIdentity
from bridge.ledgers.fabric.proposal import (
    NONCE_SIZE,
    build_proposal,
    build_seek_envelope,
    check_client_pair,
    new_nonce,
    sign_proposal,
    tls_cert_hash,
    transaction_id,
)

__all__ = [
    "NONCE_SIZE",
    "TRANSIENT_CHAINCODE_ERRORS",
    "TX_VALID",
    "ChaincodeEvent",
    "CommitResult",
    "DeliveredEvent",
    "ErrorDetail",
    "GatewayClient",
    "PreparedTransaction",
    "TransactionInvalid",
    "block_header_hash",
    "block_validated",
    "build_proposal",
    "build_seek_envelope",
    "chaincode_events_in_block",
    "chaincode_failure",
    "chaincode_refusal",
    "check_client_pair",
    "decode_chaincode_message",
    "error_details",
    "map_rpc_error",
    "new_nonce",
    "sign_proposal",
    "tls_cert_hash",
    "transaction_id",
]


@dataclass(frozen=True, slots=True)
class CommitResult:
    """A transaction committed as VALID: its id, its block and the validation code (0)."""

    tx_id: str
    block_number: int
    code: int


@dataclass(frozen=True, slots=True)
class PreparedTransaction:
    """An endorsed, client-signed transaction envelope that has not been ordered yet."""

    tx_id: str
    envelope: Any
    """The ``common.Envelope`` (payload and the client's signature)."""
    result: bytes
    """The chaincode's response payload from the endorsement."""


class GatewayClient:
    """A client of one peer's Fabric Gateway on one channel, signing as one identity.

    Safe to share between tasks of one event loop; the gRPC channel is opened on first use
    (inside the running loop) and closed by :meth:`close`. Every call has a deadline
    (``timeout`` seconds; ``commit_timeout`` for the commit wait of :meth:`submit`).
    """

    def __init__(
        self,
        endpoint: str,
        tls_ca: Path,
        server_name: str | None,
        identity: SigningIdentity,
        channel: str,
        *,
        timeout: float = 30.0,
        commit_timeout: float = 120.0,
        tls_client_cert: Path | None = None,
        tls_client_key: Path | None = None,
    ) -> None:
        if (tls_client_cert is None) != (tls_client_key is None):
            raise InvalidInput("a TLS client certificate and its key go together")
        self._endpoint = endpoint
        self._tls_ca = Path(tls_ca)
        self._tls_client = (
            (Path(tls_client_cert), Path(tls_client_key))
            if tls_client_cert is not None and tls_client_key is not None
            else None
        )
        self._server_name = server_name
        self._identity = identity
        self._channel_name = channel
        self._timeout = timeout
        self._commit_timeout = commit_timeout
        self._grpc: grpc.aio.Channel | None = None
        self._tls_cert_hash = b""
        self._gateway: Any = None  # gateway.GatewayStub (generated code, untyped)
        self._deliver: Any = None  # protos.DeliverStub

    @property
    def endpoint(self) -> str:
        """``host:port`` of the peer."""
        return self._endpoint

    @property
    def channel(self) -> str:
        """The channel every call addresses."""
        return self._channel_name

    @property
    def identity(self) -> SigningIdentity:
        """The identity every request is signed with."""
        return self._identity

    def _client_tls(self) -> tuple[bytes | None, bytes | None]:
        """The TLS client key and certificate (PEM) to present, or ``(None, None)``.

        The key file must be 0600 or stricter, like every key file.
        """
        if self._tls_client is None:
            return None, None
        cert_path, key_path = self._tls_client
        # SECURITY: the TLS client key proves this client to peers that require client TLS.
        try:
            refuse_exposed(key_path, key_path.stat().st_mode, "TLS client key")
            key_pem, cert_pem = key_path.read_bytes(), cert_path.read_bytes()
        except OSError as exc:
            raise Unavailable(f"TLS client certificate or key unreadable: {exc}") from exc
        check_client_pair(cert_path, cert_pem, key_path, key_pem)
        return key_pem, cert_pem

    def check_client_tls(self) -> None:
        """Load and check the TLS client certificate and key now (the start-up check):
        InvalidInput naming the file when one is unreadable, malformed or not a pair, so a
        daemon refuses to start rather than retry a connection that can never work."""
        try:
            self._client_tls()
        except Unavailable as exc:
            raise InvalidInput(str(exc)) from None

    def _stubs(self) -> tuple[Any, Any]:
        if self._gateway is None or self._deliver is None:
            try:
                root = self._tls_ca.read_bytes()
            except OSError as exc:
                raise Unavailable(f"TLS CA {self._tls_ca} unreadable: {exc}") from exc
            client_key, client_cert = self._client_tls()
            self._tls_cert_hash = tls_cert_hash(client_cert) if client_cert else b""
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", 100 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 60_000),
            ]
            if self._server_name:
                options.append(("grpc.ssl_target_name_override", self._server_name))
            self._grpc = grpc.aio.secure_channel(
                self._endpoint,
                grpc.ssl_channel_credentials(
                    root_certificates=root,
                    private_key=client_key,
                    certificate_chain=client_cert,
                ),
                options,
            )
            self._gateway = gateway_pb2_grpc.GatewayStub(self._grpc)
            self._deliver = events_pb2_grpc.DeliverStub(self._grpc)
        return self._gateway, self._deliver

    def _fail(self, exc: grpc.aio.AioRpcError, what: str) -> BridgeError:
        return map_rpc_error(exc, what, self._endpoint)

    def _proposal(
        self, chaincode: str, function: str, args: Sequence[str | bytes], is_init: bool = False
    ) -> tuple[str, Any]:
        tx_id, proposal = build_proposal(
            self._channel_name,
            chaincode,
            function,
            args,
            self._identity.serialized(),
            new_nonce(),
            is_init=is_init,
        )
        return tx_id, sign_proposal(proposal, self._identity)

    async def evaluate(
        self,
        chaincode: str,
        function: str,
        args: Sequence[str | bytes] = (),
        target_orgs: Iterable[str] | None = None,
    ) -> bytes:
        """Run ``function(*args)`` on the gateway's peer (or ``target_orgs``); return its payload.

        Reads the peer's committed state; nothing is ordered or written.
        """
        gateway, _ = self._stubs()
        tx_id, signed = self._proposal(chaincode, function, args)
        request = gateway_pb2.EvaluateRequest(
            transaction_id=tx_id,
            channel_id=self._channel_name,
            proposed_transaction=signed,
            target_organizations=list(target_orgs or ()),
        )
        try:
            response = await gateway.Evaluate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._fail(exc, f"evaluate {chaincode}.{function}") from exc
        result = response.result
        if int(result.status) >= 400:
            failure = chaincode_failure(f"chaincode response {result.status}, {result.message}")
            assert failure is not None
            raise failure
        return bytes(result.payload)

    async def submit(
        self,
        chaincode: str,
        function: str,
        args: Sequence[str | bytes] = (),
        endorsing_orgs: Iterable[str] | None = None,
        is_init: bool = False,
    ) -> CommitResult:
        """Endorse, order and wait for ``function(*args)`` to commit; return where it landed.

        Returns only for a VALID commit. ``endorsing_orgs`` pins the endorsers (default: the
        gateway satisfies the chaincode's endorsement policy itself). A DEADLINE_EXCEEDED while
        waiting raises Unavailable although the transaction may still commit: callers make
        their writes idempotent (see the adapter).
        """
        prepared = await self.endorse(chaincode, function, args, endorsing_orgs, is_init)
        return await self.submit_prepared(prepared)

    async def endorse(
        self,
        chaincode: str,
        function: str,
        args: Sequence[str | bytes] = (),
        endorsing_orgs: Iterable[str] | None = None,
        is_init: bool = False,
    ) -> PreparedTransaction:
        """Collect endorsements for ``function(*args)``; nothing is ordered yet.

        The result is the signed envelope ready for :meth:`submit_prepared`; its ``result``
        is the chaincode's response payload as simulated by the endorsers.
        """
        gateway, _ = self._stubs()
        tx_id, signed = self._proposal(chaincode, function, args, is_init)
        try:
            endorsed = await gateway.Endorse(
                gateway_pb2.EndorseRequest(
                    transaction_id=tx_id,
                    channel_id=self._channel_name,
                    proposed_transaction=signed,
                    endorsing_organizations=list(endorsing_orgs or ()),
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._fail(exc, f"endorse {chaincode}.{function} (tx {tx_id})") from exc
        envelope = endorsed.prepared_transaction
        envelope.signature = self._identity.sign(bytes(envelope.payload))
        return PreparedTransaction(tx_id, envelope, response_payload(envelope))

    async def submit_prepared(self, prepared: PreparedTransaction) -> CommitResult:
        """Send an endorsed transaction to the orderer and wait for its VALID commit."""
        gateway, _ = self._stubs()
        try:
            await gateway.Submit(
                gateway_pb2.SubmitRequest(
                    transaction_id=prepared.tx_id,
                    channel_id=self._channel_name,
                    prepared_transaction=prepared.envelope,
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._fail(exc, f"order tx {prepared.tx_id}") from exc
        return await self.commit_status(prepared.tx_id)

    async def commit_status(self, tx_id: str) -> CommitResult:
        """Wait until ``tx_id`` is committed on the gateway's peer; VALID or raise."""
        gateway, _ = self._stubs()
        raw = gateway_pb2.CommitStatusRequest(
            transaction_id=tx_id,
            channel_id=self._channel_name,
            identity=self._identity.serialized(),
        ).SerializeToString()
        request = gateway_pb2.SignedCommitStatusRequest(
            request=raw, signature=self._identity.sign(raw)
        )
        try:
            status = await gateway.CommitStatus(request, timeout=self._commit_timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._fail(exc, f"commit status of {tx_id}") from exc
        code, block = int(status.result), int(status.block_number)
        if code == TX_VALID:
            return CommitResult(tx_id=tx_id, block_number=block, code=code)
        name = validation_code_name(code)
        if name in RETRYABLE_CODES:
            raise TransactionInvalid(tx_id, code, name, block)
        raise LedgerRejected(
            ErrorReason.TRANSACTION_INVALID,
            f"transaction {tx_id} invalid in block {block}: {name}",
            {"validationCode": code, "block": block},
        )

    async def chaincode_events(
        self, chaincode: str, start_block: int, after_tx_id: str | None = None
    ) -> AsyncGenerator[ChaincodeEvent, None]:
        """Live stream of ``chaincode``'s events from ``start_block`` on, in ledger order.

        Only events of VALID transactions are delivered (the Gateway filters them). With
        ``after_tx_id`` the events up to and including that transaction in ``start_block`` are
        skipped (resume after a checkpoint). Never ends by itself: it waits for new blocks
        until the consumer stops iterating or the connection fails (Unavailable).
        """
        gateway, _ = self._stubs()
        raw = gateway_pb2.ChaincodeEventsRequest(
            channel_id=self._channel_name,
            chaincode_id=chaincode,
            identity=self._identity.serialized(),
            start_position=ab_pb2.SeekPosition(
                specified=ab_pb2.SeekSpecified(number=max(0, start_block))
            ),
            after_transaction_id=after_tx_id or "",
        ).SerializeToString()
        request = gateway_pb2.SignedChaincodeEventsRequest(
            request=raw, signature=self._identity.sign(raw)
        )
        call = gateway.ChaincodeEvents(request)
        try:
            async for response in call:
                block = int(response.block_number)
                for event in response.events:
                    yield ChaincodeEvent(
                        block, str(event.tx_id), str(event.event_name), bytes(event.payload)
                    )
        except grpc.aio.AioRpcError as exc:
            raise self._fail(exc, f"chaincode events of {chaincode}") from exc
        finally:
            call.cancel()

    async def blocks(self, start: int, stop: int) -> AsyncGenerator[Any, None]:
        """The committed ``common.Block`` messages ``start..stop`` in order, then the end.

        Read through the peer's Deliver service (full blocks). Block ``stop`` must already be
        committed on the peer (callers pass at most ``block_height() - 1``); the stream is
        bounded by the deadline ``timeout`` plus 50 ms per block.
        """
        if stop < start:
            return
        _, deliver = self._stubs()
        envelope = build_seek_envelope(
            self._channel_name, self._identity, start, stop, cert_hash=self._tls_cert_hash
        )
        expected = start
        call = deliver.Deliver(iter([envelope]), timeout=self._timeout + (stop - start) * 0.05)
        try:
            async for response in call:
                kind = response.WhichOneof("Type")
                if kind == "block":
                    block = response.block
                    if int(block.header.number) != expected:
                        raise Unavailable(
                            f"deliver from {self._endpoint} sent block {block.header.number}, "
                            f"expected {expected}"
                        )
                    expected += 1
                    yield block
                elif kind == "status":
                    if int(response.status) != common_pb2.Status.SUCCESS or expected != stop + 1:
                        raise Unavailable(
                            f"deliver {start}..{stop} from {self._endpoint} ended with status "
                            f"{common_pb2.Status.Name(response.status)} at block {expected}"
                        )
                    return
        except grpc.aio.AioRpcError as exc:
            raise self._fail(exc, f"deliver blocks {start}..{stop}") from exc
        finally:
            call.cancel()
        raise Unavailable(f"deliver {start}..{stop} from {self._endpoint} ended without a status")

    async def wait_block(self, number: int, timeout_s: float) -> bool:
        """True once the peer has committed block ``number`` (at once if it already has);
        False when ``timeout_s`` passes first.

        One filtered Deliver of that block: the peer holds the request until it commits the
        block (``BLOCK_UNTIL_READY``) and sends only its number and transaction ids, so
        waiting costs no polling and no block body.

        Raises :class:`PermissionDenied` when the peer refuses this identity a filtered
        Deliver (a ``FORBIDDEN`` status or ``PERMISSION_DENIED``: the channel's
        ``event/FilteredBlock`` ACL, ``Readers`` by default, does not admit it), and
        Unavailable on any other answer."""
        _, deliver = self._stubs()
        envelope = build_seek_envelope(
            self._channel_name, self._identity, number, number, cert_hash=self._tls_cert_hash
        )
        call = deliver.DeliverFiltered(iter([envelope]), timeout=timeout_s)
        try:
            async for response in call:
                kind = response.WhichOneof("Type")
                if kind == "filtered_block" and int(response.filtered_block.number) == number:
                    return True
                if kind == "status" and response.status == common_pb2.Status.FORBIDDEN:
                    raise PermissionDenied(
                        f"deliver of block {number} from {self._endpoint}: the peer refuses"
                        f" {self._identity.msp_id}'s filtered Deliver (FORBIDDEN)"
                    )
                raise Unavailable(
                    f"deliver of block {number} from {self._endpoint} answered {kind}"
                    + (f" {common_pb2.Status.Name(response.status)}" if kind == "status" else "")
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return False
            if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(
                    f"wait for block {number} from {self._endpoint}: {exc.details()}"[:500]
                ) from exc
            raise self._fail(exc, f"wait for block {number}") from exc
        finally:
            call.cancel()
        raise Unavailable(f"deliver of block {number} from {self._endpoint} ended without it")

    async def block_events(self, chaincode: str, start: int, stop: int) -> list[DeliveredEvent]:
        """Every event of ``chaincode`` in VALID transactions of blocks ``start..stop``.

        Bounded and complete (unlike the live :meth:`chaincode_events` stream, which cannot
        say that it has passed a block without events): see :meth:`blocks`.
        """
        out: list[DeliveredEvent] = []
        async for block in self.blocks(start, stop):
            block_hash = block_header_hash(block.header)
            for ordinal, ev in enumerate(chaincode_events_in_block(block, chaincode)):
                out.append(
                    DeliveredEvent(
                        ev.block_number, block_hash, ordinal, ev.tx_id, ev.event_name, ev.payload
                    )
                )
        return out

    async def genesis_hash(self) -> bytes:
        """The channel's genesis block hash (SHA-256 of block 0's header DER), read through
        the peer's Deliver service: the Fabric network word of protocol v2."""
        async for block in self.blocks(0, 0):
            return block_header_hash(block.header)
        raise Unavailable(f"deliver from {self._endpoint} sent no genesis block")

    async def block_height(self) -> int:
        """The channel's height on the gateway's peer (number of committed blocks)."""
        raw = await self.evaluate("qscc", "GetChainInfo", [self._channel_name])
        return int(ledger_pb2.BlockchainInfo.FromString(raw).height)

    async def close(self) -> None:
        """Close the gRPC channel (a later call reopens it)."""
        channel, self._grpc = self._grpc, None
        self._gateway = self._deliver = None
        if channel is not None:
            await channel.close(grace=None)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
