"""A Fabric Gateway client over gRPC (``grpc.aio``), built on ``hyperledger-fabric-protos``.

One :class:`GatewayClient` talks to one peer's Gateway service (Evaluate, Endorse, Submit,
CommitStatus, ChaincodeEvents) and Deliver service (bounded block ranges) on one channel, as
one :class:`~bridge.ledgers.fabric.identity.SigningIdentity`, over TLS that authenticates the
peer (``tls_ca``) and, when given a TLS client certificate, this client to the peer (peers
with ``peer.tls.clientAuthRequired`` refuse clients without one at the handshake).

Error contract (what callers may rely on):

- a chaincode that refuses a call (a response status >= 400, which Fabric's shim produces for
  ``error(message)``) raises :class:`~bridge.domain.errors.LedgerRejected` whose ``reason`` is
  the text of the chaincode's message before its first ``":"`` and ``detail`` the rest
  (``"InsufficientBalance: holder ... has 3, needs 5"`` gives ``("InsufficientBalance",
  "holder ... has 3, needs 5")``); a message without such a name gives ``ChaincodeError``;
  the names in :data:`TRANSIENT_CHAINCODE_ERRORS` (``Internal``: the chaincode crashed on
  an unexpected exception) raise :class:`~bridge.domain.errors.Unavailable` instead;
- a transaction that was ordered but not validated raises :class:`TransactionInvalid`
  (an :class:`~bridge.domain.errors.Unavailable`) for read conflicts, whose retry re-reads the
  state, and :class:`~bridge.domain.errors.LedgerRejected` naming the validation code otherwise;
- anything else (connection refused, TLS failure, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
  peers of an endorsing org down, orderer not reachable, access denied) raises
  :class:`~bridge.domain.errors.Unavailable` with the gateway's full message: a transport or
  configuration fault is never reported as a decision of the ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import BridgeError, Figure, InvalidInput, LedgerRejected, Unavailable
from bridge.keys.files import refuse_exposed
from bridge.ledgers.fabric._protos import (
    ab_pb2,
    chaincode_event_pb2,
    chaincode_pb2,
    common_pb2,
    events_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    kv_rwset_pb2,
    ledger_pb2,
    proposal_pb2,
    proposal_response_pb2,
    rwset_pb2,
    transaction_pb2,
)
from bridge.ledgers.fabric.identity import SigningIdentity

logger = logging.getLogger(__name__)

NONCE_SIZE = 24
"""Bytes of randomness per proposal (the fabric-gateway clients use 24)."""
TX_VALID = 0
"""``protos.TxValidationCode.VALID``."""
_RETRYABLE_CODES = frozenset({"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT", "DUPLICATE_TXID"})
_TRANSPORT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
    }
)
TRANSIENT_CHAINCODE_ERRORS = frozenset(
    {ErrorReason.CHAINCODE_INTERNAL, ErrorReason.TRANSACTION_TIME_SKEWED}
)
"""Chaincode error names that mean "the chaincode failed", not "the chaincode refused"
(the bridge chaincode answers ``Internal: <exception>`` for unexpected exceptions, and
``TransactionTimeSkewed`` when an endorser's clock disagrees with the proposal's timestamp:
a fault of a clock, retried with a fresh timestamp, ADR 0008)."""
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_DETAIL_TYPE = "gateway.ErrorDetail"
# How the peer wraps a chaincode's error message ("chaincode response 500, <message>").
_CHAINCODE_RESPONSE_RE = re.compile(r"chaincode response (\d{3}), (.*)", re.DOTALL)


class TransactionInvalid(Unavailable):
    """An ordered transaction failed validation in a way a retry can resolve.

    Raised for read conflicts (``MVCC_READ_CONFLICT``, ``PHANTOM_READ_CONFLICT``) and duplicate
    ids: another transaction changed what this one read. The ledger state is unchanged by this
    transaction; re-reading the state and retrying is safe.
    """

    def __init__(self, tx_id: str, code: int, code_name: str, block_number: int) -> None:
        super().__init__(f"transaction {tx_id} invalid in block {block_number}: {code_name}")
        self.tx_id = tx_id
        self.code = code
        self.code_name = code_name
        self.block_number = block_number


@dataclass(frozen=True, slots=True)
class CommitResult:
    """A transaction committed as VALID: its id, its block and the validation code (0)."""

    tx_id: str
    block_number: int
    code: int


class ChaincodeEvent(NamedTuple):
    """One chaincode event of a VALID transaction, in ledger order."""

    block_number: int
    tx_id: str
    event_name: str
    payload: bytes


class DeliveredEvent(NamedTuple):
    """A chaincode event read from a full block: its block's hash and its ordinal in it.

    ``ordinal`` counts the chaincode's events in the block's VALID transactions from 0, so a
    (block_number, ordinal) pair names one event stably across reads.
    """

    block_number: int
    block_hash: bytes
    ordinal: int
    tx_id: str
    event_name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PreparedTransaction:
    """An endorsed, client-signed transaction envelope that has not been ordered yet."""

    tx_id: str
    envelope: Any
    """The ``common.Envelope`` (payload and the client's signature)."""
    result: bytes
    """The chaincode's response payload from the endorsement."""


def _response_payload(envelope: Any) -> bytes:
    """The chaincode response payload inside an endorsed transaction envelope."""
    try:
        payload = common_pb2.Payload.FromString(envelope.payload)
        tx = transaction_pb2.Transaction.FromString(payload.data)
        cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
        prp = proposal_response_pb2.ProposalResponsePayload.FromString(
            cap.action.proposal_response_payload
        )
        return bytes(proposal_pb2.ChaincodeAction.FromString(prp.extension).response.payload)
    except (IndexError, ValueError):
        return b""


# -- proposal construction (pure, unit-tested) ------------------------------------------------


def new_nonce() -> bytes:
    """A fresh random nonce for one proposal or request."""
    return os.urandom(NONCE_SIZE)


def transaction_id(nonce: bytes, creator: bytes) -> str:
    """Fabric's transaction id: lowercase hex of SHA-256(nonce || serialized creator)."""
    return hashlib.sha256(nonce + creator).hexdigest()


def _timestamp(at: timestamp_pb2.Timestamp | None) -> timestamp_pb2.Timestamp:
    if at is not None:
        return at
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _to_bytes(arg: str | bytes) -> bytes:
    return arg.encode("utf-8") if isinstance(arg, str) else bytes(arg)


def build_proposal(
    channel: str,
    chaincode: str,
    function: str,
    args: Sequence[str | bytes],
    creator: bytes,
    nonce: bytes,
    timestamp: timestamp_pb2.Timestamp | None = None,
    is_init: bool = False,
) -> tuple[str, Any]:
    """Return ``(tx_id, protos.Proposal)`` invoking ``function(*args)`` on ``chaincode``.

    The header is an ENDORSER_TRANSACTION channel header (channel id, tx id, timestamp, a
    ChaincodeHeaderExtension naming the chaincode) and a SignatureHeader (creator, nonce); the
    payload is a ChaincodeProposalPayload whose ChaincodeInvocationSpec has the arguments
    ``[function, *args]`` as bytes (strings UTF-8 encoded). ``is_init`` marks the one
    initialising invocation of a definition committed with ``--init-required``.
    """
    tx_id = transaction_id(nonce, creator)
    cc_id = chaincode_pb2.ChaincodeID(name=chaincode)
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.HeaderType.ENDORSER_TRANSACTION,
        channel_id=channel,
        tx_id=tx_id,
        timestamp=_timestamp(timestamp),
        epoch=0,
        extension=proposal_pb2.ChaincodeHeaderExtension(chaincode_id=cc_id).SerializeToString(),
    )
    signature_header = common_pb2.SignatureHeader(creator=creator, nonce=nonce)
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=signature_header.SerializeToString(),
    )
    spec = chaincode_pb2.ChaincodeSpec(
        chaincode_id=cc_id,
        input=chaincode_pb2.ChaincodeInput(
            args=[function.encode("utf-8"), *(_to_bytes(a) for a in args)], is_init=is_init
        ),
    )
    payload = proposal_pb2.ChaincodeProposalPayload(
        input=chaincode_pb2.ChaincodeInvocationSpec(chaincode_spec=spec).SerializeToString()
    )
    proposal = proposal_pb2.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    )
    return tx_id, proposal


def sign_proposal(proposal: Any, identity: SigningIdentity) -> Any:
    """A ``protos.SignedProposal``: the proposal bytes and the identity's signature over them."""
    raw = proposal.SerializeToString()
    return proposal_pb2.SignedProposal(proposal_bytes=raw, signature=identity.sign(raw))


def tls_cert_hash(cert_pem: bytes) -> bytes:
    """SHA-256 of a certificate's DER encoding: what Fabric compares with the TLS client
    certificate of the connection (``ChannelHeader.tls_cert_hash``)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise InvalidInput("the TLS client certificate is not a PEM X.509 certificate") from None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def check_client_pair(cert_path: Path, cert_pem: bytes, key_path: Path, key_pem: bytes) -> None:
    """Return if ``cert_pem`` is a PEM certificate and ``key_pem`` an unencrypted PEM
    private key of that certificate; else InvalidInput naming the file at fault."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise InvalidInput(
            f"TLS client certificate {cert_path} is not a PEM X.509 certificate"
        ) from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"TLS client key {key_path} is not an unencrypted PEM private key"
        ) from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise InvalidInput(f"TLS client key {key_path} is not the key of {cert_path}")


def build_seek_envelope(
    channel: str,
    identity: SigningIdentity,
    start: int,
    stop: int,
    nonce: bytes | None = None,
    cert_hash: bytes = b"",
) -> Any:
    """A signed DELIVER_SEEK_INFO ``common.Envelope`` asking for blocks ``start..stop``.

    ``cert_hash`` (:func:`tls_cert_hash` of the TLS client certificate) binds the request to
    the mutual-TLS connection; peers that require client TLS refuse a request without it.
    """
    nonce = nonce if nonce is not None else new_nonce()
    creator = identity.serialized()
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.HeaderType.DELIVER_SEEK_INFO,
        channel_id=channel,
        tx_id=transaction_id(nonce, creator),
        timestamp=_timestamp(None),
        epoch=0,
        tls_cert_hash=cert_hash,
    )
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common_pb2.SignatureHeader(
            creator=creator, nonce=nonce
        ).SerializeToString(),
    )
    seek = ab_pb2.SeekInfo(
        start=ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start)),
        stop=ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=stop)),
        behavior=ab_pb2.SeekInfo.BLOCK_UNTIL_READY,
    )
    payload = common_pb2.Payload(header=header, data=seek.SerializeToString()).SerializeToString()
    return common_pb2.Envelope(payload=payload, signature=identity.sign(payload))


def block_validated(block: Any) -> bool:
    """True when ``block`` carries a validity flag for every transaction (committed blocks
    do; without them no transaction of it counts)."""
    return len(_validity_flags(block)) >= len(block.data.data)


def _validity_flags(block: Any) -> bytes:
    """One validation code per transaction (the TRANSACTIONS_FILTER metadata), or b"" when
    the block was not validated."""
    metadata = block.metadata.metadata
    index = common_pb2.BlockMetadataIndex.TRANSACTIONS_FILTER
    return bytes(metadata[index]) if len(metadata) > index else b""


def _valid_chaincode_actions(block: Any) -> Iterator[Any]:
    """The ``ChaincodeAction`` of every action of ``block``'s VALID endorser transactions.

    A transaction's validity is its byte in the block's TRANSACTIONS_FILTER metadata; a block
    without that metadata (not yet validated) yields nothing.
    """
    flags = _validity_flags(block)
    for i, raw in enumerate(block.data.data):
        if i >= len(flags) or flags[i] != TX_VALID:
            continue
        payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
        header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        if header.type != common_pb2.HeaderType.ENDORSER_TRANSACTION:
            continue
        tx = transaction_pb2.Transaction.FromString(payload.data)
        for action in tx.actions:
            cap = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
            prp = proposal_response_pb2.ProposalResponsePayload.FromString(
                cap.action.proposal_response_payload
            )
            yield proposal_pb2.ChaincodeAction.FromString(prp.extension)


def chaincode_events_in_block(block: Any, chaincode: str) -> list[ChaincodeEvent]:
    """The chaincode events of ``chaincode`` in ``block``'s VALID transactions, in block order
    (a block not yet validated yields nothing)."""
    number = int(block.header.number)
    out: list[ChaincodeEvent] = []
    for cc_action in _valid_chaincode_actions(block):
        if not cc_action.events:
            continue
        event = chaincode_event_pb2.ChaincodeEvent.FromString(cc_action.events)
        if event.chaincode_id != chaincode:
            continue
        out.append(
            ChaincodeEvent(number, str(event.tx_id), str(event.event_name), bytes(event.payload))
        )
    return out


def keys_written_in_block(block: Any, chaincode: str) -> list[str]:
    """The world-state keys of ``chaincode`` written or deleted by ``block``'s VALID
    transactions, in block order (a block not yet validated yields nothing)."""
    out: list[str] = []
    for cc_action in _valid_chaincode_actions(block):
        for ns in rwset_pb2.TxReadWriteSet.FromString(cc_action.results).ns_rwset:
            if ns.namespace == chaincode:
                out.extend(str(w.key) for w in kv_rwset_pb2.KVRWSet.FromString(ns.rwset).writes)
    return out


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def block_header_hash(header: Any) -> bytes:
    """Fabric's block hash: SHA-256 of the DER SEQUENCE (number, previous_hash, data_hash).

    Block ``n + 1`` carries this value of block ``n`` as its ``previous_hash``.
    """
    number = int(header.number)
    num = number.to_bytes(max(1, (number.bit_length() + 8) // 8), "big")  # room for the sign
    body = (
        _der(0x02, num)
        + _der(0x04, bytes(header.previous_hash))
        + _der(0x04, bytes(header.data_hash))
    )
    return hashlib.sha256(_der(0x30, body)).digest()


# -- error mapping ----------------------------------------------------------------------------


def _rich_status_class() -> Any:
    """A private ``google.rpc.Status`` twin (googleapis-common-protos is not a dependency)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="kstb/fabric/rpc_status.proto", package="kstb.fabric.rpc", syntax="proto3"
    )
    opt = descriptor_pb2.FieldDescriptorProto
    anyish = fdp.message_type.add(name="Any")
    anyish.field.add(name="type_url", number=1, type=opt.TYPE_STRING, label=opt.LABEL_OPTIONAL)
    anyish.field.add(name="value", number=2, type=opt.TYPE_BYTES, label=opt.LABEL_OPTIONAL)
    status = fdp.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=opt.TYPE_INT32, label=opt.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=opt.TYPE_STRING, label=opt.LABEL_OPTIONAL)
    status.field.add(
        name="details",
        number=3,
        type=opt.TYPE_MESSAGE,
        type_name=".kstb.fabric.rpc.Any",
        label=opt.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kstb.fabric.rpc.Status"))


_RichStatus: Any = _rich_status_class()


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One peer's or orderer's part of a Gateway error (``gateway.ErrorDetail``)."""

    address: str
    msp_id: str
    message: str


def error_details(exc: grpc.aio.AioRpcError) -> list[ErrorDetail]:
    """The ``gateway.ErrorDetail`` entries of a rich gRPC status, in the order sent."""
    out: list[ErrorDetail] = []
    # grpc.aio yields (key, value) tuples; grpc-stubs types the items as _Metadatum.
    metadata = cast(Iterable[tuple[str, str | bytes]], exc.trailing_metadata() or ())
    for key, value in metadata:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = _RichStatus.FromString(value)
        except Exception:  # a malformed trailer only loses detail, never the error itself
            logger.debug("undecodable grpc-status-details-bin trailer", exc_info=True)
            continue
        for item in status.details:
            if str(item.type_url).rsplit("/", 1)[-1] != _ERROR_DETAIL_TYPE:
                continue
            detail = gateway_pb2.ErrorDetail.FromString(item.value)
            out.append(ErrorDetail(str(detail.address), str(detail.msp_id), str(detail.message)))
    return out


def decode_chaincode_message(text: str) -> LedgerRejected:
    """The typed refusal for a bridge chaincode's error message ``Name: {JSON}``.

    SECURITY: only the JSON object counts (its ``reason`` must be in the closed set and equal
    the name before the colon; ``figures`` must be integers); anything else, including a
    message from another chaincode or a garbled payload, is ``UnknownRefusal`` with the text
    kept as detail. Never raises.
    """
    name, sep, body = text.partition(": ")
    try:
        payload = json.loads(body) if sep else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or payload.get("reason") != name.strip():
        return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, text)
    reason = ErrorReason.parse(str(payload["reason"]))
    detail, raw = payload.get("detail", ""), payload.get("figures", {})
    if reason is None or not isinstance(detail, str) or not isinstance(raw, dict):
        return LedgerRejected(ErrorReason.UNKNOWN_REFUSAL, text)
    figures: dict[str, Figure] = {
        str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)
    }
    return LedgerRejected(reason, detail, figures)


def chaincode_refusal(message: str) -> LedgerRejected | None:
    """The LedgerRejected for a peer message wrapping a chaincode error response, if it is one.

    Only responses with status >= 400 count. The peer wraps the chaincode's message as
    ``chaincode response <status>, <message>`` (Fabric's own text, the one thing read from
    it); the message itself is decoded by :func:`decode_chaincode_message`.
    """
    match = _CHAINCODE_RESPONSE_RE.search(message)
    if match is None or int(match.group(1)) < 400:
        return None
    return decode_chaincode_message(match.group(2).strip())


def chaincode_failure(message: str) -> BridgeError | None:
    """What a peer message wrapping a chaincode error response means for the caller, if one.

    A refusal (:func:`chaincode_refusal`) except the names in ``TRANSIENT_CHAINCODE_ERRORS``:
    those report a fault inside the chaincode process (an unexpected exception), not a
    decision about the ledger state, and become Unavailable so that callers retry.
    """
    refusal = chaincode_refusal(message)
    if refusal is not None and refusal.reason in TRANSIENT_CHAINCODE_ERRORS:
        return Unavailable(f"chaincode fault: {refusal}")
    return refusal


_NOT_INITIALIZED_BY_PEER = "has not been initialized for this version, must call as init first"


def map_rpc_error(exc: grpc.aio.AioRpcError, what: str, endpoint: str) -> BridgeError:
    """Translate a failed Gateway call per the module's error contract."""
    details = error_details(exc)
    code = exc.code()
    texts = [d.message for d in details] + [exc.details() or ""]
    if any(_NOT_INITIALIZED_BY_PEER in t for t in texts):
        # A definition committed with --init-required (protocol v2) before its one Init:
        # the peer refuses every other invocation, as the chaincode would (NotInitialized).
        return LedgerRejected(ErrorReason.NOT_INITIALIZED, f"{what}: the chaincode awaits its Init")
    if code not in _TRANSPORT_CODES or details:
        for text in [d.message for d in details] + [exc.details() or ""]:
            failure = chaincode_failure(text)
            if failure is not None:
                return failure
    parts = "; ".join(f"{d.msp_id or '?'}@{d.address or '?'}: {d.message}" for d in details)
    message = f"fabric gateway {endpoint} {what} failed: {code.name} {exc.details()}"
    return Unavailable(message + (f" [{parts}]" if parts else ""))


def _validation_code_name(code: int) -> str:
    try:
        return str(transaction_pb2.TxValidationCode.Name(code))
    except ValueError:
        return f"CODE_{code}"


# -- the client -------------------------------------------------------------------------------


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
        return PreparedTransaction(tx_id, envelope, _response_payload(envelope))

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
        name = _validation_code_name(code)
        if name in _RETRYABLE_CODES:
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
