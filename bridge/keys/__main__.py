"""``python -m bridge.keys``: create and inspect signing keys without ever printing one.

    generate --pkcs11 MODULE --token-label T --label L (--pin-file F | --pin-env V) [--curve C]
        generate a key pair INSIDE the token (sensitive, not extractable)
    generate --keystore PATH (--passphrase-file F | --passphrase-env V) [--curve C] [--kdf K]
        generate a key and write it encrypted (keystore v3 JSON / encrypted PKCS#8 PEM)
    import --key-file PLAIN --keystore PATH (--passphrase-file F | --passphrase-env V) [--curve C]
        encrypt an existing plaintext key file into a new keystore
    show (--key-file F | --keystore PATH ... | --pkcs11 MODULE ...) [--curve C]
        print the address / public key a configured key signs as

Every command prints the EVM address (secp256k1) or the public key PEM (P-256) and the
``key_file`` / ``[key]`` entry to put in the daemon's TOML file. The curve is ``secp256k1``
(committee, supply operator, brokerage, EVM accounts) or ``p256`` (Fabric identities).
Exit status 2 with a one-line error on any refusal (existing file, wrong passphrase, ...).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.config import dump_toml
from bridge.domain.committee import SECP256K1_N
from bridge.domain.errors import InvalidInput
from bridge.domain.signer import LocalKeySigner, read_key_file
from bridge.keys.keystore import write_keystore_v3, write_pkcs8_pem
from bridge.keys.loader import open_p256_signer, open_signer, token_session
from bridge.keys.p256 import read_pem_key_file
from bridge.keys.reference import (
    KeyRef,
    KeystoreKey,
    Pkcs11Key,
    PlainKeyFile,
    SecretSource,
    key_ref_to_toml,
)
from bridge.keys.secret import read_secret

Curve = Literal["secp256k1", "p256"]


def _add_source(p: argparse.ArgumentParser, with_plain: bool) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    if with_plain:
        where.add_argument("--key-file", type=Path, help="plaintext key file (devnet)")
    where.add_argument("--keystore", type=Path, help="encrypted keystore file")
    where.add_argument("--pkcs11", type=Path, metavar="MODULE", help="PKCS#11 module (.so)")
    p.add_argument("--token-label", default="")
    p.add_argument("--label", default="", help="the key's label in the token")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--passphrase-file", type=Path)
    secret.add_argument("--passphrase-env", default="")
    secret.add_argument("--pin-file", type=Path)
    secret.add_argument("--pin-env", default="")
    p.add_argument("--curve", choices=("secp256k1", "p256"), default="secp256k1")


def _secret(a: argparse.Namespace, kind: str) -> SecretSource:
    file, env = getattr(a, f"{kind}_file"), getattr(a, f"{kind}_env")
    if file is None and not env:
        raise InvalidInput(f"--{kind}-file or --{kind}-env is required")
    return SecretSource(file=file.absolute() if file else None, env=env)


def _ref(a: argparse.Namespace) -> KeyRef:
    if getattr(a, "key_file", None) is not None:
        return PlainKeyFile(a.key_file.absolute())
    if a.keystore is not None:
        return KeystoreKey(a.keystore.absolute(), _secret(a, "passphrase"))
    if not a.token_label or not a.label:
        raise InvalidInput("--pkcs11 needs --token-label and --label")
    return Pkcs11Key(a.pkcs11.absolute(), a.token_label, a.label, _secret(a, "pin"))


def describe(ref: KeyRef, curve: Curve) -> str:
    """The public identity of the key ``ref`` names and its TOML entry (never the key)."""
    if curve == "secp256k1":
        head = f"address = 0x{open_signer(ref).address.hex()}"
    else:
        pem = open_p256_signer(ref).public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        head = pem.decode().rstrip()
    return (
        f"{head}\n\n# key reference for the daemon's TOML file:\n{dump_toml(key_ref_to_toml(ref))}"
    )


def _generate(a: argparse.Namespace) -> str:
    curve = cast(Curve, a.curve)
    ref = _ref(a)
    if isinstance(ref, Pkcs11Key):
        from bridge.keys.pkcs11_token import generate_key

        session = token_session(ref.module, ref.token_label, read_secret(ref.pin, "PIN"))
        generate_key(session, ref.key_label, curve)
    elif isinstance(ref, KeystoreKey):
        passphrase = read_secret(ref.passphrase, "keystore passphrase")
        if curve == "secp256k1":
            key = secrets.token_bytes(32)
            while not 0 < int.from_bytes(key, "big") < SECP256K1_N:
                key = secrets.token_bytes(32)
            write_keystore_v3(ref.path, key, passphrase, kdf=a.kdf)
        else:
            write_pkcs8_pem(ref.path, ec.generate_private_key(ec.SECP256R1()), passphrase)
    else:
        raise InvalidInput("generate writes a --keystore or a --pkcs11 key, not a plaintext file")
    return describe(ref, curve)


def _import(a: argparse.Namespace) -> str:
    curve = cast(Curve, a.curve)
    if a.keystore is None or a.source is None:
        raise InvalidInput("import needs --key-file (source) and --keystore (destination)")
    ref = KeystoreKey(a.keystore.absolute(), _secret(a, "passphrase"))
    passphrase = read_secret(ref.passphrase, "keystore passphrase")
    if curve == "secp256k1":
        key = read_key_file(a.source)
        LocalKeySigner(key)  # refuses a key outside the curve before anything is written
        write_keystore_v3(ref.path, key, passphrase, kdf=a.kdf)
    else:
        write_pkcs8_pem(ref.path, read_pem_key_file(a.source), passphrase)
    return describe(ref, curve)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bridge.keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="create a key in a keystore or inside a token")
    _add_source(gen, with_plain=False)
    gen.add_argument("--kdf", choices=("scrypt", "pbkdf2"), default="scrypt")
    imp = sub.add_parser("import", help="encrypt a plaintext key file into a keystore")
    imp.add_argument("--key-file", dest="source", type=Path, required=True)
    imp.add_argument("--keystore", type=Path, required=True)
    secret = imp.add_mutually_exclusive_group(required=True)
    secret.add_argument("--passphrase-file", type=Path)
    secret.add_argument("--passphrase-env", default="")
    imp.add_argument("--curve", choices=("secp256k1", "p256"), default="secp256k1")
    imp.add_argument("--kdf", choices=("scrypt", "pbkdf2"), default="scrypt")
    show = sub.add_parser("show", help="print the address / public key of a configured key")
    _add_source(show, with_plain=True)
    a = parser.parse_args(argv)
    try:
        if a.command == "generate":
            out = _generate(a)
        elif a.command == "import":
            out = _import(a)
        else:
            out = describe(_ref(a), cast(Curve, a.curve))
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
