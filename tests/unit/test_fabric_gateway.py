"""Fabric Gateway client building blocks: identity, proposals, signatures, JSON, addresses."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import InvalidInput, LedgerRejected, Unavailable
from bridge.domain.governance import ZERO_WORD, Order, OrderAction, make_order
from bridge.domain.hashing import keccak256
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Action, HolderStatus, Leg, SignatureSet
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric._protos import (
    chaincode_pb2,
    common_pb2,
    gateway_pb2,
    identities_pb2,
    kv_rwset_pb2,
    proposal_pb2,
    proposal_response_pb2,
    rwset_pb2,
    transaction_pb2,
)
from bridge.ledgers.fabric.adapter import FabricAdapter, fabric_bridge_word
from bridge.ledgers.fabric.addresses import FabricAddressCodec
from bridge.ledgers.fabric.blocks import (
    KeyVersion,
    TxStateAccess,
    definition_changed_in_block,
    state_access_in_block,
)
from bridge.ledgers.fabric.codec import is_amount_key, is_counter_shard_key, is_supply_key
from bridge.ledgers.fabric.gateway import (
    GatewayClient,
    block_header_hash,
    build_proposal,
    build_seek_envelope,
    chaincode_refusal,
    map_rpc_error,
    sign_proposal,
    transaction_id,
)
from bridge.ledgers.fabric.identity import (
    P256_HALF_ORDER,
    P256_ORDER,
    SigningIdentity,
    low_s,
    read_pem_key_file,
)

pytestmark = pytest.mark.unit


def _write_identity(tmp: Path, mode: int = 0o600) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "User1@org1.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "priv_sk"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, mode)
    return cert_path, key_path, key


@pytest.fixture
def identity(tmp_path: Path) -> SigningIdentity:
    cert, key, _ = _write_identity(tmp_path)
    return SigningIdentity.from_files("Org1MSP", cert, key)


def _terms() -> TransferTerms:
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=b"US0378331005".ljust(32, b"\0"),
        amount=2**200 + 7,
        src_ledger=LedgerId("fabric-a").word,
        src_bridge=fabric_bridge_word("bridge", "kstb"),
        dst_ledger=LedgerId("evm-b").word,
        dst_bridge=bytes(12) + secrets.token_bytes(20),
        sender=bytes(12) + secrets.token_bytes(20),
        recipient=bytes(12) + secrets.token_bytes(20),
        instructor=b"\0" * 12 + b"\x1e" * 20,
        deadline=1_900_000_000,
    )


# -- identity -------------------------------------------------------------------------------


def test_serialized_identity_round_trips(identity: SigningIdentity, tmp_path: Path) -> None:
    decoded = identities_pb2.SerializedIdentity.FromString(identity.serialized())
    assert decoded.mspid == "Org1MSP"
    assert bytes(decoded.id_bytes) == (tmp_path / "cert.pem").read_bytes()
    assert x509.load_pem_x509_certificate(bytes(decoded.id_bytes)) == identity.certificate
    pem = (tmp_path / "cert.pem").read_bytes()
    assert identity.chaincode_identity() == f"Org1MSP:{hashlib.sha256(pem).hexdigest()}"


def test_signatures_are_low_s_and_verify(identity: SigningIdentity) -> None:
    for i in range(64):  # about half of raw ECDSA signatures are high-S
        message = f"message {i}".encode()
        sig = identity.sign(message)
        _, s = decode_dss_signature(sig)
        assert s <= P256_HALF_ORDER
        identity.public_key.verify(sig, message, ec.ECDSA(hashes.SHA256()))


def test_low_s_flips_only_high_s() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    flipped = 0
    for i in range(32):
        raw = key.sign(bytes([i]), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(raw)
        r2, s2 = decode_dss_signature(low_s(raw))
        assert r2 == r and s2 == (s if s <= P256_HALF_ORDER else P256_ORDER - s)
        flipped += s2 != s
        key.public_key().verify(low_s(raw), bytes([i]), ec.ECDSA(hashes.SHA256()))
    assert flipped > 0


def test_key_file_must_be_private(tmp_path: Path) -> None:
    _, key, _ = _write_identity(tmp_path, mode=0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        read_pem_key_file(key)


def test_key_must_match_certificate(tmp_path: Path) -> None:
    cert, _, _ = _write_identity(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key, _ = _write_identity(other)
    with pytest.raises(InvalidInput, match="does not belong"):
        SigningIdentity.from_files("Org1MSP", cert, other_key)


def test_non_p256_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "k"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)
    with pytest.raises(InvalidInput, match="P-256"):
        read_pem_key_file(path)


def test_identity_never_shows_its_key(identity: SigningIdentity, tmp_path: Path) -> None:
    key_pem = (tmp_path / "priv_sk").read_text()
    body = "".join(key_pem.strip().splitlines()[1:-1])
    for text in (repr(identity), str(identity)):
        assert "Org1MSP" in text and "User1@org1" in text
        assert body[:16] not in text and "PRIVATE" not in text
    with pytest.raises(TypeError):
        __import__("pickle").dumps(identity)


# -- proposals ------------------------------------------------------------------------------


def test_transaction_id_is_sha256_of_nonce_and_creator(identity: SigningIdentity) -> None:
    nonce = bytes(range(24))
    creator = identity.serialized()
    assert transaction_id(nonce, creator) == hashlib.sha256(nonce + creator).hexdigest()
    tx_id, proposal = build_proposal("bridge", "kstb", "Lock", ["{}", b"\x00\x01"], creator, nonce)
    assert tx_id == hashlib.sha256(nonce + creator).hexdigest()

    header = common_pb2.Header.FromString(proposal.header)
    channel_header = common_pb2.ChannelHeader.FromString(header.channel_header)
    assert channel_header.type == common_pb2.HeaderType.ENDORSER_TRANSACTION
    assert channel_header.channel_id == "bridge"
    assert channel_header.tx_id == tx_id
    assert channel_header.timestamp.seconds > 1_600_000_000
    ext = proposal_pb2.ChaincodeHeaderExtension.FromString(channel_header.extension)
    assert ext.chaincode_id.name == "kstb"
    signature_header = common_pb2.SignatureHeader.FromString(header.signature_header)
    assert bytes(signature_header.creator) == creator and bytes(signature_header.nonce) == nonce

    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input).chaincode_spec
    assert spec.chaincode_id.name == "kstb"
    assert list(spec.input.args) == [b"Lock", b"{}", b"\x00\x01"]


def test_signed_proposal_verifies(identity: SigningIdentity) -> None:
    _, proposal = build_proposal(
        "bridge", "kstb", "GetLeg", ["a"], identity.serialized(), b"n" * 24
    )
    signed = sign_proposal(proposal, identity)
    assert bytes(signed.proposal_bytes) == proposal.SerializeToString()
    identity.public_key.verify(
        bytes(signed.signature), bytes(signed.proposal_bytes), ec.ECDSA(hashes.SHA256())
    )


def test_seek_envelope_is_signed_deliver_request(identity: SigningIdentity) -> None:
    env = build_seek_envelope("bridge", identity, 3, 9)
    identity.public_key.verify(bytes(env.signature), bytes(env.payload), ec.ECDSA(hashes.SHA256()))
    payload = common_pb2.Payload.FromString(env.payload)
    ch = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    assert ch.type == common_pb2.HeaderType.DELIVER_SEEK_INFO and ch.channel_id == "bridge"
    from bridge.ledgers.fabric._protos import ab_pb2

    seek = ab_pb2.SeekInfo.FromString(payload.data)
    assert (seek.start.specified.number, seek.stop.specified.number) == (3, 9)


def test_block_header_hash_matches_fabric_asn1() -> None:
    header = common_pb2.BlockHeader(number=1, previous_hash=b"\x01" * 32, data_hash=b"\x02" * 32)
    der = (
        bytes([0x30, 3 + 34 + 34, 0x02, 0x01, 0x01, 0x04, 32])
        + b"\x01" * 32
        + bytes([0x04, 32])
        + b"\x02" * 32
    )
    assert block_header_hash(header) == hashlib.sha256(der).digest()
    # 128 needs a leading zero byte to stay a positive DER INTEGER.
    big = common_pb2.BlockHeader(number=128, previous_hash=b"", data_hash=b"")
    assert (
        block_header_hash(big)
        == hashlib.sha256(bytes([0x30, 8, 0x02, 0x02, 0x00, 0x80, 0x04, 0x00, 0x04, 0x00])).digest()
    )


def _endorser_tx(writes: dict[str, list[str]]) -> bytes:
    """An endorser transaction envelope whose one action writes ``namespace -> keys``."""
    sets = {}
    for ns, keys in writes.items():
        sets[ns] = kv_rwset_pb2.KVRWSet(
            writes=[kv_rwset_pb2.KVWrite(key=k, value=b"1") for k in keys]
        )
    return _rwset_tx(sets)


def _rwset_tx(rwsets: dict[str, kv_rwset_pb2.KVRWSet]) -> bytes:
    """An endorser transaction envelope whose one action has ``namespace -> KVRWSet``."""
    results = rwset_pb2.TxReadWriteSet(
        ns_rwset=[
            rwset_pb2.NsReadWriteSet(namespace=ns, rwset=kv.SerializeToString())
            for ns, kv in rwsets.items()
        ]
    ).SerializeToString()
    prp = proposal_response_pb2.ProposalResponsePayload(
        extension=proposal_pb2.ChaincodeAction(results=results).SerializeToString()
    )
    cap = transaction_pb2.ChaincodeActionPayload(
        action=transaction_pb2.ChaincodeEndorsedAction(
            proposal_response_payload=prp.SerializeToString()
        )
    )
    tx = transaction_pb2.Transaction(
        actions=[transaction_pb2.TransactionAction(payload=cap.SerializeToString())]
    )
    header = common_pb2.ChannelHeader(type=common_pb2.HeaderType.ENDORSER_TRANSACTION)
    payload = common_pb2.Payload(
        header=common_pb2.Header(channel_header=header.SerializeToString()),
        data=tx.SerializeToString(),
    )
    return common_pb2.Envelope(payload=payload.SerializeToString()).SerializeToString()


def _block(txs: list[bytes], flags: bytes | None) -> object:
    block = common_pb2.Block(header=common_pb2.BlockHeader(number=9))
    block.data.data.extend(txs)
    metadata = [b""] * 5
    if flags is not None:
        metadata[common_pb2.BlockMetadataIndex.TRANSACTIONS_FILTER] = flags
    block.metadata.metadata.extend(metadata)
    return block


def test_keys_written_by_valid_transactions_of_one_chaincode() -> None:
    sec = SecurityId("KR7005930003").word.hex()
    txs = [
        _endorser_tx({"kstb": [f"holder/{sec}/ab", "relayer/x"], "lscc": ["kstb"]}),
        _endorser_tx({"kstb": [f"escrow/{sec}/01"]}),  # invalid below: never counted
        _endorser_tx({"other": [f"holder/{sec}/cd"]}),
    ]
    block = _block(txs, bytes([0, 11, 0]))  # 11 = MVCC_READ_CONFLICT

    def written(chaincode: str, b: object = block) -> list[str]:
        return [k for tx in state_access_in_block(b, chaincode) for k in tx.writes]

    assert written("kstb") == [f"holder/{sec}/ab", "relayer/x"]
    assert written("other") == [f"holder/{sec}/cd"]
    assert written("kstb", _block(txs, None)) == [], "not validated yet"


def test_state_access_reports_each_valid_transactions_reads_and_writes() -> None:
    """Reads with their versions (none: the key was absent), writes with their values (none:
    deleted), only the chaincode's namespace, only VALID transactions, each with its index
    in the block (Fabric's version counts every transaction, valid or not)."""
    kv = kv_rwset_pb2
    first = kv.KVRWSet(
        reads=[
            kv.KVRead(key="tally/x/07", version=kv.Version(block_num=4, tx_num=2)),
            kv.KVRead(key="new"),
        ],
        writes=[
            kv.KVWrite(key="gone", is_delete=True),
            kv.KVWrite(key="tally/x/07", value=b'{"holders":"5"}'),
        ],
    )
    other = kv.KVRWSet(writes=[kv.KVWrite(key="tally/x/08", value=b"{}")])
    txs = [
        _rwset_tx({"kstb": first, "lscc": other}),
        _rwset_tx({"kstb": other}),  # invalid below
        _rwset_tx({"other": other}),
        _rwset_tx({"kstb": other}),
    ]
    block = _block(txs, bytes([0, 11, 0, 0]))
    assert state_access_in_block(block, "kstb") == [
        TxStateAccess(
            9,
            0,
            {"tally/x/07": KeyVersion(4, 2), "new": None},
            {"gone": None, "tally/x/07": b'{"holders":"5"}'},
        ),
        TxStateAccess(9, 3, {}, {"tally/x/08": b"{}"}),
    ]
    assert state_access_in_block(block, "kstb", lambda key: key.startswith("tally/")) == [
        TxStateAccess(9, 0, {"tally/x/07": KeyVersion(4, 2)}, {"tally/x/07": b'{"holders":"5"}'}),
        TxStateAccess(9, 3, {}, {"tally/x/08": b"{}"}),
    ]
    assert state_access_in_block(block, "kstb", lambda key: key == "none") == []
    assert state_access_in_block(_block(txs, None), "kstb") == [], "not validated yet"
    with pytest.raises(TypeError):  # read-only views
        state_access_in_block(block, "kstb")[0].writes["gone"] = b"x"  # type: ignore[index]


def test_a_transaction_of_two_actions_cannot_be_read() -> None:
    """Fabric endorses one action per transaction; two could not be ordered: refused."""
    kv = kv_rwset_pb2
    one = kv.KVRWSet(writes=[kv.KVWrite(key="tally/x/07", value=b"{}")])
    envelope = common_pb2.Envelope.FromString(_rwset_tx({"kstb": one}))
    payload = common_pb2.Payload.FromString(envelope.payload)
    tx = transaction_pb2.Transaction.FromString(payload.data)
    tx.actions.append(tx.actions[0])
    payload.data = tx.SerializeToString()
    envelope.payload = payload.SerializeToString()
    block = _block([envelope.SerializeToString()], bytes([0]))
    with pytest.raises(ValueError, match="transaction 0 of block 9 has 2 actions"):
        state_access_in_block(block, "kstb")


def test_a_definition_of_the_chaincode_is_seen_in_its_block() -> None:
    kv = kv_rwset_pb2

    def lifecycle(*keys: str) -> bytes:
        return _rwset_tx({"_lifecycle": kv.KVRWSet(writes=[kv.KVWrite(key=k) for k in keys])})

    defined = lifecycle("namespaces/fields/kstb/Sequence", "namespaces/metadata/kstb")
    assert definition_changed_in_block(_block([defined], bytes([0])), "kstb")
    assert definition_changed_in_block(
        _block([lifecycle("namespaces/metadata/kstb")], b"\0"), "kstb"
    )
    assert not definition_changed_in_block(_block([defined], bytes([11])), "kstb"), "invalid"
    for other in ("namespaces/fields/kstbx/Sequence", "namespaces/metadata/other"):
        assert not definition_changed_in_block(_block([lifecycle(other)], b"\0"), "kstb")
    same_key_elsewhere = _rwset_tx(
        {"kstb": kv.KVRWSet(writes=[kv.KVWrite(key="namespaces/metadata/kstb", value=b"1")])}
    )
    assert not definition_changed_in_block(_block([same_key_elsewhere], b"\0"), "kstb")


def test_counter_shards_and_amount_keys_of_the_security() -> None:
    word = SecurityId("KR7005930003").word
    sec, other = word.hex(), SecurityId("US0378331005").word.hex()
    assert is_counter_shard_key(f"tally/{sec}/00", word)
    assert is_counter_shard_key(f"tally/{sec}/3f", word)
    for key in (f"tally/{sec}/state", f"tally/{sec}/7", f"tally/{sec}/3F", f"tally/{sec}/07/x",
                f"tally/{other}/07", f"holder/{sec}/07", f"security/{sec}"):  # fmt: skip
        assert not is_counter_shard_key(key, word), key
    for family in ("holder", "escrow", "prepared", "parked", "burned", "minted"):
        assert is_amount_key(f"{family}/{sec}/ab", word)
        assert not is_amount_key(f"{family}/{other}/ab", word)
    for key in (f"tally/{sec}/07", f"security/{sec}", f"out/{sec}/ab", "config"):
        assert not is_amount_key(key, word), key


def test_supply_keys_are_those_of_the_security() -> None:
    word = SecurityId("KR7005930003").word
    sec, other = word.hex(), SecurityId("US0378331005").word.hex()
    for key in (f"security/{sec}", f"holder/{sec}/ab", f"escrow/{sec}/01",
                f"prepared/{sec}/01", f"burned/{sec}/01", f"minted/{sec}/01"):  # fmt: skip
        assert is_supply_key(key, word), key
    for key in (f"security/{other}", f"holder/{other}/ab", f"outbound/{sec}",
                f"inbound/{sec}", f"relayer/{sec}", "config", "committee",
                f"holder/{sec}", f"security/{sec}/x"):  # fmt: skip
        assert not is_supply_key(key, word), key


# -- error mapping ---------------------------------------------------------------------------


def _cc(name: str, detail: str, figures: dict[str, int] | None = None) -> str:
    """The bridge chaincode's error message (``Name: {JSON}``, ADR 0015), as the peer wraps it."""
    body = json.dumps({"reason": name, "detail": detail, "figures": figures or {}})
    return f"chaincode response 500, {name}: {body}"


def test_chaincode_refusal_parsing() -> None:
    r = chaincode_refusal(_cc("InsufficientBalance", "holder=0xab, balance=3"))
    assert r is not None and (r.reason, r.detail) == (
        ErrorReason.INSUFFICIENT_BALANCE,
        "holder=0xab, balance=3",
    )
    early = chaincode_refusal(_cc("TooEarly", "x", {"notBefore": 17, "nowTs": 3}))
    assert early is not None and early.not_before == 17 and early.figure("nowTs") == 3
    plain = chaincode_refusal("chaincode response 500, no value for x: y")
    assert plain is not None and plain.reason is ErrorReason.UNKNOWN_REFUSAL
    assert chaincode_refusal("chaincode response 200, OK: fine") is None
    assert chaincode_refusal("failed to connect: connection refused") is None


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailer: bytes | None) -> None:
        md = grpc.aio.Metadata()
        if trailer is not None:
            md.add("grpc-status-details-bin", trailer)
        super().__init__(code, grpc.aio.Metadata(), md, details, None)


def _status_with_details(*messages: str) -> bytes:
    from google.rpc import status_pb2

    status = status_pb2.Status(code=10, message="failed to endorse")
    for m in messages:
        detail = gateway_pb2.ErrorDetail(address="127.0.0.1:7051", msp_id="Org1MSP", message=m)
        item = status.details.add()
        item.type_url = "type.googleapis.com/gateway.ErrorDetail"
        item.value = detail.SerializeToString()
    return bytes(status.SerializeToString())


def test_endorsement_failure_with_chaincode_error_is_a_rejection() -> None:
    trailer = _status_with_details(_cc("TransferExists", "transferId=0x01"))
    exc = _FakeRpcError(grpc.StatusCode.ABORTED, "failed to endorse transaction", trailer)
    mapped = map_rpc_error(exc, "submit", "peer:1")
    assert isinstance(mapped, LedgerRejected)
    assert (mapped.reason, mapped.detail) == ("TransferExists", "transferId=0x01")


def test_internal_chaincode_faults_are_unavailable() -> None:
    trailer = _status_with_details(_cc("Internal", "Exception: boom"))
    exc = _FakeRpcError(grpc.StatusCode.ABORTED, "failed to endorse transaction", trailer)
    mapped = map_rpc_error(exc, "submit", "peer:1")
    assert isinstance(mapped, Unavailable) and not isinstance(mapped, LedgerRejected)
    assert "boom" in str(mapped)


def test_transport_failures_are_unavailable() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        mapped = map_rpc_error(_FakeRpcError(code, "connection refused", None), "x", "peer:1")
        assert isinstance(mapped, Unavailable) and not isinstance(mapped, LedgerRejected)
    trailer = _status_with_details("failed to connect to peer: connection refused")
    mapped = map_rpc_error(
        _FakeRpcError(grpc.StatusCode.ABORTED, "failed to endorse", trailer), "x", "peer:1"
    )
    assert isinstance(mapped, Unavailable) and "connection refused" in str(mapped)


# -- JSON formats and addresses --------------------------------------------------------------


def test_terms_json_round_trip() -> None:
    t = _terms()
    text = codec.terms_to_json(t)
    data = json.loads(text)
    assert data["amount"] == str(2**200 + 7) and data["deadline"] == 1_900_000_000
    assert data["nonce"] == "0x" + t.nonce.hex() and len(data) == 11
    assert codec.terms_from_json(text) == t
    assert codec.terms_from_json(data) == t
    data["sender"] = data["sender"].upper().replace("0X", "0x")
    assert codec.terms_from_json(data) == t
    with pytest.raises(ValueError, match="recipient"):
        codec.terms_from_json({**data, "recipient": "0x12"})
    with pytest.raises(ValueError, match="lacks 'deadline'"):
        codec.terms_from_json({k: v for k, v in data.items() if k != "deadline"})


def test_certificate_json_round_trip() -> None:
    cert = SignatureSet(7, (b"\x01" * 65, b"\x02" * 65))
    text = codec.certificate_to_json(cert)
    assert json.loads(text) == {"epoch": 7, "signatures": ["0x" + "01" * 65, "0x" + "02" * 65]}
    assert codec.certificate_from_json(text) == cert
    with pytest.raises(ValueError, match="65 bytes"):
        codec.certificate_to_json(SignatureSet(1, (b"\x00" * 64,)))


def test_holder_status_json() -> None:
    raw = json.dumps(
        {
            "registered": True,
            "balance": "12",
            "receive_status": 0,
            "eligible": True,
            "frozen": False,
            "paused": False,
        }
    )
    assert codec.holder_from_json(raw) == HolderStatus(True, 12, 0, True, False, False)
    assert codec.leg_name(Leg.INBOUND) == "inbound"
    assert codec.leg_from_index(0) is Leg.OUTBOUND and codec.leg_from_index(1) is Leg.INBOUND
    with pytest.raises(ValueError, match="leg must be 0 or 1"):
        codec.leg_from_index(2)


def test_address_codec() -> None:
    c = FabricAddressCodec()
    raw = secrets.token_bytes(20)
    text = "0x" + raw.hex().upper()
    word = c.parse(text)
    assert word == bytes(12) + raw
    assert c.format(word) == "0x" + raw.hex()
    assert c.parse(c.format(word)) == word
    for bad in ("", "0x", raw.hex(), "0x" + raw.hex() + "00", "0x" + "g" * 40):
        with pytest.raises(InvalidInput):
            c.parse(bad)
    with pytest.raises(InvalidInput):
        c.format(b"\x01" * 32)
    with pytest.raises(InvalidInput):
        c.format(raw)


def test_adapter_identity_needs_no_connection(identity: SigningIdentity, tmp_path: Path) -> None:
    client = GatewayClient("127.0.0.1:1", tmp_path / "none.pem", None, identity, "bridge")
    adapter = FabricAdapter(LedgerId("fabric-a"), client, "kstb", "Org1MSP/User1")
    assert adapter.kind == "fabric"
    assert adapter.bridge_word == keccak256(b"fabric:bridge:kstb")
    assert adapter.operator == "Org1MSP/User1"
    word = adapter.parse_address("0x" + "Ab" * 20)
    assert adapter.format_address(word) == "0x" + "ab" * 20


class _SplitPeers:
    """A Gateway client whose endorsing peers refuse a Lock; its own peer may or may not."""

    channel = "bridge"

    def __init__(self, own_peer_refuses: bool, invalidated: str = "") -> None:
        self.own_peer_refuses = own_peer_refuses
        self.invalidated = invalidated  # a validation code after ordering, instead
        self.evaluated: list[str] = []

    async def block_height(self) -> int:
        return 10

    async def evaluate(self, chaincode: str, function: str, args: list[str]) -> bytes:
        self.evaluated.append(function)
        if function == "Legs":  # the leg read before the lock: nothing there yet
            ids = json.loads(args[1])
            return json.dumps(
                {"legs": [{"state": 0, "transfer_id": t, "not_before": 0} for t in ids]}
            ).encode()
        if self.own_peer_refuses:
            raise LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=0")
        return b"{}"

    async def endorse(self, chaincode: str, function: str, args: list[str]) -> object:
        if self.invalidated:
            return object()
        raise LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=0")

    async def submit_prepared(self, prepared: object) -> object:
        raise LedgerRejected(
            ErrorReason.TRANSACTION_INVALID, f"transaction invalid in block 12: {self.invalidated}"
        )


def _lock_terms(adapter: FabricAdapter) -> TransferTerms:
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=secrets.token_bytes(32),
        amount=5,
        src_ledger=LedgerId("fabric-a").word,
        src_bridge=adapter.bridge_word,
        dst_ledger=LedgerId("evm-b").word,
        dst_bridge=secrets.token_bytes(32),
        sender=bytes(12) + secrets.token_bytes(20),
        recipient=bytes(12) + secrets.token_bytes(20),
        instructor=b"\0" * 12 + b"\x1e" * 20,
        deadline=2_000_000_000,
    )


async def test_a_refusal_the_gateways_peer_does_not_share_is_retryable() -> None:
    client = _SplitPeers(own_peer_refuses=False)
    adapter = FabricAdapter(LedgerId("fabric-a"), client, "kstb", "Org2MSP/User1")  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="another peer is behind") as info:
        await adapter.submit(Action.LOCK, _lock_terms(adapter), None)
    assert not isinstance(info.value, LedgerRejected), "a lagging peer is not the ledger's no"
    assert "InsufficientBalance" in str(info.value)
    assert client.evaluated[-1] == "Lock", "the refused call was simulated on the own peer"


async def test_a_validation_failure_after_ordering_is_not_second_guessed() -> None:
    client = _SplitPeers(own_peer_refuses=False, invalidated="ENDORSEMENT_POLICY_FAILURE")
    adapter = FabricAdapter(LedgerId("fabric-a"), client, "kstb", "Org2MSP/User1")  # type: ignore[arg-type]
    with pytest.raises(LedgerRejected) as info:
        await adapter.submit(Action.LOCK, _lock_terms(adapter), None)
    assert info.value.reason is ErrorReason.TRANSACTION_INVALID
    assert "ENDORSEMENT_POLICY_FAILURE" in info.value.detail
    assert "Lock" not in client.evaluated, "no simulation: the peers did not disagree"


async def test_a_refusal_the_gateways_peer_shares_is_the_ledgers_decision() -> None:
    client = _SplitPeers(own_peer_refuses=True)
    adapter = FabricAdapter(LedgerId("fabric-a"), client, "kstb", "Org2MSP/User1")  # type: ignore[arg-type]
    with pytest.raises(LedgerRejected) as info:
        await adapter.submit(Action.LOCK, _lock_terms(adapter), None)
    assert info.value.reason == "InsufficientBalance"


# ---- review 2 finding 1: a depository order's refusal is confirmed on the own peer -----------


class _OrderPeers:
    """One org's peer refuses ApplyOrder at endorsement (behind a SET_DEPOSITORY, or
    hostile); the gateway's own peer accepts it (or refuses it with ``own_reason``)."""

    channel = "bridge"

    def __init__(self, own_reason: ErrorReason | None) -> None:
        self.own_reason = own_reason
        self.evaluated: list[str] = []

    async def block_height(self) -> int:
        return 10

    async def evaluate(self, chaincode: str, function: str, args: list[str]) -> bytes:
        self.evaluated.append(function)
        if function == "HaltStatus":
            return b'{"security_halted": false, "ledger_halted": false, "sequence": 0}'
        if self.own_reason is not None:
            raise LedgerRejected(self.own_reason, "own peer")
        return b"{}"

    async def endorse(self, chaincode: str, function: str, args: list[str]) -> object:
        raise LedgerRejected(ErrorReason.NOT_DEPOSITORY, "peer0.org3 (Org3MSP)")


def _halt_order() -> Order:
    return make_order(
        network=secrets.token_bytes(32),
        ledger=LedgerId("fabric-a").word,
        security=ZERO_WORD,
        action=OrderAction.HALT,
        sequence=1,
        expiry=int(time.time()) + 600,
    )


@pytest.mark.security
@pytest.mark.governance
async def test_an_order_refused_only_by_another_peer_is_retryable() -> None:
    client = _OrderPeers(own_reason=None)
    adapter = FabricAdapter(LedgerId("fabric-a"), client, "kstb", "Org2MSP/User1")  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="another peer is behind") as info:
        await adapter.apply_order(_halt_order(), b"\x01" * 65)
    assert not isinstance(info.value, LedgerRejected), "one peer's no is not the ledger's"
    assert client.evaluated[-1] == "ApplyOrder", "the order was simulated on the own peer"


@pytest.mark.security
@pytest.mark.governance
async def test_an_order_refusal_is_the_own_peers_reason() -> None:
    client = _OrderPeers(own_reason=ErrorReason.INVALID_SIGNATURE)
    adapter = FabricAdapter(LedgerId("fabric-a"), client, "kstb", "Org2MSP/User1")  # type: ignore[arg-type]
    with pytest.raises(LedgerRejected) as info:
        await adapter.apply_order(_halt_order(), b"\x01" * 65)
    assert info.value.reason is ErrorReason.INVALID_SIGNATURE, "the own peer's, not the other's"
