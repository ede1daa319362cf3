"""secp256k1 signature shaping shared by every :class:`Signer` backend.

The committee and the EVM accept ``r || s || v`` with ``s <= n/2`` and ``v`` in {27, 28};
a device that returns plain ``(r, s)`` (PKCS#11 ``CKM_ECDSA``) gets its ``s`` normalised and
its recovery id found by recovering with both candidates against the known public key.
"""

from __future__ import annotations

from coincurve import PublicKey

from bridge.domain.committee import SECP256K1_N
from bridge.keys.errors import KeyCustodyError


def recoverable_signature(digest: bytes, r: int, s: int, public_key: bytes) -> bytes:
    """The 65-byte low-s ``r || s || v`` form of ``(r, s)`` over ``digest`` by ``public_key``.

    SECURITY: raises KeyCustodyError when neither recovery id yields ``public_key``, i.e. the
    device signed with another key or returned garbage; such a signature is never returned.
    """
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise KeyCustodyError("the signing device returned an out-of-range signature")
    if s > SECP256K1_N // 2:
        s = SECP256K1_N - s
    rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for rec_id in (0, 1):
        try:
            pub = PublicKey.from_signature_and_message(rs + bytes([rec_id]), digest, hasher=None)
        except Exception:  # noqa: S112 - an impossible recovery id: try the other one
            continue
        if pub.format(compressed=False) == public_key:
            return rs + bytes([27 + rec_id])
    raise KeyCustodyError("the signing device's signature does not match its public key")
