"""Fabric proposal and envelope construction (pure; fabric-gateway's ``proposal`` layer).

Builds and signs what a Gateway client sends: transaction ids, ``Proposal`` /
``SignedProposal``, DELIVER_SEEK_INFO envelopes, and the TLS binding of a request. No I/O.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from google.protobuf import timestamp_pb2

from bridge.domain.errors import InvalidInput
from bridge.ledgers.fabric._protos import (
    ab_pb2,
    chaincode_pb2,
    common_pb2,
    proposal_pb2,
)
from bridge.ledgers.fabric.identity import SigningIdentity

NONCE_SIZE = 24
"""Bytes of randomness per proposal (the fabric-gateway clients use 24)."""


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
