"""Signed releases (ADR 0021 amendment): the release manager signs ``SHA256SUMS``; an
organisation verifies the signature and every checksum before it installs anything.

``python -m bridge.tools.release_signature sign --dist dist --key-config release-key.toml``
writes ``dist/SHA256SUMS.sig`` with the key in custody (an encrypted keystore or a PKCS#11
token, as every other signing key: ``docs/operators/keys.md``);
``python -m bridge.tools.release_signature verify --dist dist --signer 0x<address>`` checks,
in this order, that the signature file is well formed, that it recovers to one of the
given release signers over this ``SHA256SUMS`` (domain-separated: a signature made for
anything else never verifies), and that every file ``SHA256SUMS`` names is present with
that checksum and no other file is in ``dist``. Exit 0 when all hold; 2 with the reason
otherwise.

The signed digest is ``sha256(DOMAIN || sha256(SHA256SUMS))`` signed as a 65-byte
recoverable secp256k1 signature (the committee's scheme, ``bridge/core/signatures.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.core.reasons import ProtocolError
from bridge.core.signatures import recover_signer
from bridge.domain.signer import Signer

__all__ = [
    "DOMAIN",
    "SIGNATURE_FILE",
    "ReleaseSignatureInvalid",
    "SignedRelease",
    "release_digest",
    "sign_release",
    "verify_release",
]

DOMAIN = b"KSTB release SHA256SUMS v1\x00"
"""Prefix of every signed release digest (no other KSTB digest starts with it)."""

SUMS_FILE = "SHA256SUMS"
SIGNATURE_FILE = "SHA256SUMS.sig"
_SUM_LINE = re.compile(r"([0-9a-f]{64})  ([A-Za-z0-9][A-Za-z0-9._+-]*)")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class ReleaseSignatureInvalid(Exception):
    """The release in a directory does not verify; ``reason`` says which rule failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignedRelease:
    """A verified release: who signed it and the files it covers (name -> sha256 hex)."""

    signer: bytes
    files: dict[str, str]


def release_digest(sums: bytes) -> bytes:
    """The 32-byte digest a release signer signs for this ``SHA256SUMS`` content."""
    return hashlib.sha256(DOMAIN + hashlib.sha256(sums).digest()).digest()


def sign_release(dist: Path, signer: Signer) -> Path:
    """Sign ``dist/SHA256SUMS`` with ``signer`` (its key never leaves its custody) and write
    ``dist/SHA256SUMS.sig``; return its path. The checksums are parsed first, so a
    malformed ``SHA256SUMS`` is never signed."""
    sums = (dist / SUMS_FILE).read_bytes()
    _parse_sums(sums)
    signature = signer.sign_digest(release_digest(sums))
    path = dist / SIGNATURE_FILE
    body = {
        "scheme": "kstb-release-v1",
        "signer": "0x" + signer.address.hex(),
        "signature": "0x" + signature.hex(),
    }
    path.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return path


def _parse_sums(sums: bytes) -> dict[str, str]:
    try:
        text = sums.decode("ascii")
    except UnicodeDecodeError:
        raise ReleaseSignatureInvalid(f"{SUMS_FILE} is not ASCII") from None
    files: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _SUM_LINE.fullmatch(line)
        if match is None:
            raise ReleaseSignatureInvalid(f"{SUMS_FILE} line {number} is malformed")
        digest, name = match.groups()
        if name in files or name in (SUMS_FILE, SIGNATURE_FILE):
            raise ReleaseSignatureInvalid(f"{SUMS_FILE} names {name} twice or itself")
        files[name] = digest
    if not files:
        raise ReleaseSignatureInvalid(f"{SUMS_FILE} names no file")
    return files


def _read_signature(path: Path) -> tuple[bytes, bytes]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReleaseSignatureInvalid(f"no {SIGNATURE_FILE}: the release is not signed") from None
    except (ValueError, UnicodeDecodeError):
        raise ReleaseSignatureInvalid(f"{SIGNATURE_FILE} is not JSON") from None
    if not isinstance(body, dict) or body.get("scheme") != "kstb-release-v1":
        raise ReleaseSignatureInvalid(f"{SIGNATURE_FILE} is not a kstb-release-v1 signature")
    signer, signature = body.get("signer"), body.get("signature")
    if not isinstance(signer, str) or not _HEX_ADDRESS.fullmatch(signer):
        raise ReleaseSignatureInvalid(f"{SIGNATURE_FILE}: signer is not an address")
    if not isinstance(signature, str) or not re.fullmatch(r"0x[0-9a-fA-F]{130}", signature):
        raise ReleaseSignatureInvalid(f"{SIGNATURE_FILE}: signature is not 65 bytes of hex")
    return bytes.fromhex(signer[2:]), bytes.fromhex(signature[2:])


def verify_release(dist: Path, signers: Collection[bytes]) -> SignedRelease:
    """Check ``dist`` as the module docstring says and return who signed it and what.

    SECURITY: the signature is checked before any checksum is trusted, against the
    caller's list of release signers only (the file's own ``signer`` field is a hint that
    must match what the signature recovers to, never an authority); a file not named in
    ``SHA256SUMS`` is refused too, so nothing unsigned is installed from ``dist``.
    """
    if not signers:
        raise ReleaseSignatureInvalid("no release signer given")
    try:
        sums = (dist / SUMS_FILE).read_bytes()
    except FileNotFoundError:
        raise ReleaseSignatureInvalid(f"no {SUMS_FILE} in {dist}") from None
    claimed, signature = _read_signature(dist / SIGNATURE_FILE)
    try:
        recovered = recover_signer(release_digest(sums), signature)
    except ProtocolError as exc:
        raise ReleaseSignatureInvalid(f"the signature is invalid ({exc})") from None
    if recovered != claimed:
        raise ReleaseSignatureInvalid(
            f"the signature is not by its stated signer 0x{claimed.hex()} over this"
            f" {SUMS_FILE} (it recovers to 0x{recovered.hex()})"
        )
    if recovered not in set(signers):
        raise ReleaseSignatureInvalid(f"0x{recovered.hex()} is not a release signer")
    files = _parse_sums(sums)
    present = {p.name for p in dist.iterdir() if p.is_file()} - {SUMS_FILE, SIGNATURE_FILE}
    if present - files.keys():
        raise ReleaseSignatureInvalid(f"files not in {SUMS_FILE}: {sorted(present - files.keys())}")
    for name, expected in files.items():
        path = dist / name
        if not path.is_file():
            raise ReleaseSignatureInvalid(f"{name} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise ReleaseSignatureInvalid(f"{name} does not match its checksum")
    return SignedRelease(recovered, files)


def _address(text: str) -> bytes:
    if not _HEX_ADDRESS.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a 0x address")
    return bytes.fromhex(text[2:])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    from bridge.keys.loader import add_key_arguments, signer_from_arguments

    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sign = commands.add_parser("sign", help="write SHA256SUMS.sig")
    sign.add_argument("--dist", type=Path, required=True)
    add_key_arguments(sign)
    verify = commands.add_parser("verify", help="check SHA256SUMS.sig and every checksum")
    verify.add_argument("--dist", type=Path, required=True)
    verify.add_argument(
        "--signer", type=_address, action="append", required=True,
        help="a release signer's address (repeatable); the deployment's trusted list",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "sign":
            print(sign_release(args.dist, signer_from_arguments(args)))
            return 0
        release = verify_release(args.dist, args.signer)
    except ReleaseSignatureInvalid as exc:
        print(f"release refused: {exc.reason}", file=sys.stderr)
        return 2
    print(f"verified: {len(release.files)} files signed by 0x{release.signer.hex()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
