"""EVM transactions signed through a :class:`~bridge.domain.signer.Signer` (any backend).

eth-account builds the unsigned transaction (legacy EIP-155 or typed EIP-2718/1559), hashes
it and encodes the signed form; only the digest signature comes from the Signer, so an HSM
key can be a relayer account. For an in-memory key the raw bytes are identical to
``Account.sign_transaction`` (both sign deterministically, RFC 6979, low ``s``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from eth_account import Account
from eth_account._utils.signing import sign_transaction_dict
from eth_keys.datatypes import PrivateKey, Signature

from bridge.domain.signer import Signer
from bridge.keys.errors import KeyCustodyError


class _DigestKey:
    """Presents a Signer as the one method eth-account's transaction signer calls."""

    __slots__ = ("_signer",)

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def sign_msg_hash(self, message_hash: bytes) -> Signature:
        sig = self._signer.sign_digest(bytes(message_hash))
        # Signer returns v in {27, 28}; eth-keys wants the raw recovery id {0, 1}.
        return Signature(signature_bytes=sig[:64] + bytes([sig[64] - 27]))


def sign_transaction(signer: Signer, tx: Mapping[str, Any]) -> bytes:
    """The raw signed transaction for ``tx`` (a web3 transaction dict) signed by ``signer``.

    A ``from`` field must equal the signer's address. SECURITY: the sender recovered from the
    signed bytes is checked against the signer's address, so a device that signed with another
    key cannot make the relayer send from an unexpected account.
    """
    fields = dict(tx)
    sender = fields.pop("from", None)
    if sender is not None and bytes.fromhex(str(sender).removeprefix("0x")) != signer.address:
        raise KeyCustodyError("transaction 'from' is not the signer's address")
    key = cast(PrivateKey, _DigestKey(signer))
    _v, _r, _s, raw = sign_transaction_dict(key, fields)
    recovered = Account.recover_transaction(raw)
    if bytes.fromhex(recovered.removeprefix("0x")) != signer.address:
        raise KeyCustodyError("the signed transaction does not recover to the signer")
    return bytes(raw)
