"""Fabric block and response parsing (pure; fabric-gateway's block/response layer).

Reads what a peer returns: validity flags, VALID transactions' chaincode events and state
reads and writes, block header hashes, the chaincode response inside an endorsed envelope, and
validation code names. No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from bridge.ledgers.fabric._protos import (
    chaincode_event_pb2,
    common_pb2,
    kv_rwset_pb2,
    proposal_pb2,
    proposal_response_pb2,
    rwset_pb2,
    transaction_pb2,
)

TX_VALID = 0
"""``protos.TxValidationCode.VALID``."""


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


def response_payload(envelope: Any) -> bytes:
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


def validation_code_name(code: int) -> str:
    try:
        return str(transaction_pb2.TxValidationCode.Name(code))
    except ValueError:
        return f"CODE_{code}"


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
    for _, actions in _valid_transactions(block):
        yield from actions


def _valid_transactions(block: Any) -> Iterator[tuple[int, list[Any]]]:
    """Each VALID endorser transaction of ``block``: its index among the block's
    transactions (valid or not, as Fabric's key versions count them) and the
    ``ChaincodeAction`` of each of its actions."""
    flags = _validity_flags(block)
    for i, raw in enumerate(block.data.data):
        if i >= len(flags) or flags[i] != TX_VALID:
            continue
        payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
        header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        if header.type != common_pb2.HeaderType.ENDORSER_TRANSACTION:
            continue
        tx = transaction_pb2.Transaction.FromString(payload.data)
        actions = []
        for action in tx.actions:
            cap = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
            prp = proposal_response_pb2.ProposalResponsePayload.FromString(
                cap.action.proposal_response_payload
            )
            actions.append(proposal_pb2.ChaincodeAction.FromString(prp.extension))
        yield i, actions


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


class KeyVersion(NamedTuple):
    """Where a key's committed value was written: Fabric's (block number, transaction index
    in that block), as a transaction's read set records it."""

    block_number: int
    tx_number: int


class TxStateAccess(NamedTuple):
    """One VALID transaction's point reads and writes of one chaincode's world state.

    ``reads`` maps each key read to the version it had when the transaction was endorsed
    (None: the key did not exist); Fabric committed the transaction only because that was
    still the key's version, so it is the version the key had just before this transaction.
    ``writes`` maps each key written to its new value (None: deleted), in the order the
    write set lists them (Fabric sorts them by key). Both are read-only views.
    """

    block_number: int
    tx_number: int
    reads: Mapping[str, KeyVersion | None]
    writes: Mapping[str, bytes | None]


def state_access_in_block(
    block: Any, chaincode: str, keep: Callable[[str], bool] | None = None
) -> list[TxStateAccess]:
    """The point reads and writes of ``chaincode``'s world state by ``block``'s VALID
    transactions, in block order, of the keys ``keep`` accepts (every key without it); a
    transaction with none of them is left out, and a block not yet validated yields nothing.
    Range reads are not reported. ValueError for a VALID transaction with more than one
    action (Fabric endorses one per transaction): its read-write sets could not be ordered.
    """
    number = int(block.header.number)
    out: list[TxStateAccess] = []
    for tx_number, actions in _valid_transactions(block):
        if len(actions) != 1:
            raise ValueError(
                f"transaction {tx_number} of block {number} has {len(actions)} actions"
            )
        reads: dict[str, KeyVersion | None] = {}
        writes: dict[str, bytes | None] = {}
        for ns in rwset_pb2.TxReadWriteSet.FromString(actions[0].results).ns_rwset:
            if ns.namespace != chaincode:
                continue
            kv = kv_rwset_pb2.KVRWSet.FromString(ns.rwset)
            for r in kv.reads:
                if keep is None or keep(r.key):
                    v = r.version if r.HasField("version") else None
                    reads[str(r.key)] = (
                        None if v is None else KeyVersion(int(v.block_num), int(v.tx_num))
                    )
            for w in kv.writes:
                if keep is None or keep(w.key):
                    writes[str(w.key)] = None if w.is_delete else bytes(w.value)
        if reads or writes:
            out.append(
                TxStateAccess(number, tx_number, MappingProxyType(reads), MappingProxyType(writes))
            )
    return out


LIFECYCLE = "_lifecycle"
"""The namespace where a channel's chaincode definitions are committed (Fabric 2.x)."""


def definition_changed_in_block(block: Any, chaincode: str) -> bool:
    """True when a VALID transaction of ``block`` commits a definition of ``chaincode`` (a
    write of ``namespaces/metadata/<name>`` or ``namespaces/fields/<name>/...`` in the
    ``_lifecycle`` namespace): the code that wrote the blocks after it may differ."""
    metadata, fields = f"namespaces/metadata/{chaincode}", f"namespaces/fields/{chaincode}/"
    for _, actions in _valid_transactions(block):
        for action in actions:
            for ns in rwset_pb2.TxReadWriteSet.FromString(action.results).ns_rwset:
                if ns.namespace != LIFECYCLE:
                    continue
                for w in kv_rwset_pb2.KVRWSet.FromString(ns.rwset).writes:
                    if w.key == metadata or w.key.startswith(fields):
                        return True
    return False


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
