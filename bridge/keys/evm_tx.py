"""EVM transactions signed through a :class:`~bridge.domain.signer.Signer` (any backend).

eth-account builds the unsigned transaction (legacy EIP-155 or typed EIP-2718/1559), hashes
it and encodes the signed form; only the digest signature comes from the Signer, so an HSM
key can be a relayer account. For an in-memory key the raw bytes are identical to
``Account.sign_transaction`` (both sign deterministically, RFC 6979, low ``s``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from eth_account._utils.signing import sign_transaction_dict
from eth_keys.datatypes import PrivateKey, Signature

from bridge.core.reasons import ProtocolError
from bridge.core.signatures import recover_signer
from bridge.domain.signer import Signer
from bridge.keys.errors import KeyCustodyError


class _DigestKey:
    """Presents a Signer as the one method eth-account's transaction signer calls.

    SECURITY: the signature is checked to recover to the signer's address over the very
    digest eth-account asked for before eth-account may put it into the raw bytes."""

    __slots__ = ("_signer", "checked")

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self.checked: list[bytes] = []
        """Every signature checked (and handed to eth-account), in order."""

    def sign_msg_hash(self, message_hash: bytes) -> Signature:
        digest = bytes(message_hash)
        sig = bytes(self._signer.sign_digest(digest))  # a copy: checked is what is used
        try:
            signed_by = recover_signer(digest, sig)  # low s, v in {27, 28}, 65 bytes
        except ProtocolError:
            signed_by = None
        if signed_by != self._signer.address:
            raise KeyCustodyError("the signed transaction does not recover to the signer")
        self.checked.append(sig)
        # Signer returns v in {27, 28}; eth-keys wants the raw recovery id {0, 1}.
        return Signature(signature_bytes=sig[:64] + bytes([sig[64] - 27]))


def sign_transaction(signer: Signer, tx: Mapping[str, Any]) -> bytes:
    """The raw signed transaction for ``tx`` (a web3 transaction dict) signed by ``signer``.

    A ``from`` field must equal the signer's address. SECURITY: the address the signature
    recovers to over the transaction's signing digest (the one eth-account put into the raw
    bytes with it) is checked against the signer's address, so a device that signed with
    another key, or returned a high-s or malformed signature, cannot make the relayer send
    from an unexpected account. (It was ``Account.recover_transaction`` on the raw bytes,
    which decodes and hashes the whole transaction again: 4 % of a relayer under load.)
    """
    fields = dict(tx)
    sender = fields.pop("from", None)
    if sender is not None and bytes.fromhex(str(sender).removeprefix("0x")) != signer.address:
        raise KeyCustodyError("transaction 'from' is not the signer's address")
    key = _DigestKey(signer)
    v, r, s, raw = sign_transaction_dict(cast(PrivateKey, key), fields)
    # SECURITY: eth-account signed once and put that very signature into the raw bytes
    # (r, s and the recovery id; a legacy v is 27/28 or EIP-155's 35 + 2 * chainId + id).
    if len(key.checked) != 1 or (r, s, _recovery_id(v)) != _parts(key.checked[0]):
        raise KeyCustodyError("the signed transaction does not carry the checked signature")
    return bytes(raw)


def _parts(sig: bytes) -> tuple[int, int, int]:
    """``(r, s, recovery id)`` of a 65-byte ``r || s || v`` signature, v in {27, 28}."""
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64] - 27


def _recovery_id(v: int) -> int:
    """The recovery id eth-account encoded as ``v``: typed transactions carry it as is, a
    legacy one as 27/28, or 35 + 2 * chainId + id under EIP-155."""
    if v in (0, 1):
        return v
    if v in (27, 28):
        return v - 27
    return (v - 35) % 2 if v >= 35 else -1
