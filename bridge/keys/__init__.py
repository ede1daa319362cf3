"""Key custody: every signing key behind the :class:`~bridge.domain.signer.Signer` (secp256k1)
or :class:`~bridge.keys.protocols.P256Signer` (Fabric) seam.

Modules, one layer each: ``errors`` (typed failures), ``reference`` (the TOML key reference,
no I/O), ``files`` / ``secret`` (0600 files, passphrases and PINs), ``secp256k1`` / ``p256``
(signature shaping, in-memory signers), ``keystore`` (encrypted files), ``pkcs11_token``
(HSM keys, imported only when used), ``evm_tx`` (EVM transactions signed through a Signer),
``loader`` (reference -> signer) and ``__main__`` (``python -m bridge.keys``: generate and
import keys). This package imports nothing heavy on its own.
"""
