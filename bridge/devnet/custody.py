"""Devnet key custody: SoftHSM2 tokens for daemons and Fabric certificates for token keys.

The devnet keeps plaintext key files by default; ``LocalSystem(key_custody="pkcs11")`` uses
these helpers to put members' keys in a SoftHSM2 token under the work directory instead
(generated inside the token by ``python -m bridge.keys generate``; never in this process).
"""

from __future__ import annotations

import datetime
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from bridge.devnet.fabric import FabricOrg
from bridge.domain.ids import parse_evm_address
from bridge.keys.p256 import P256_HALF_ORDER
from bridge.keys.reference import Pkcs11Key, SecretSource

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
"""Where Debian's ``softhsm2`` package installs the PKCS#11 module."""


@dataclass(frozen=True)
class DevToken:
    """A SoftHSM2 token in its own configuration directory (``SOFTHSM2_CONF``)."""

    conf: Path
    label: str
    pin_file: Path

    def env(self) -> dict[str, str]:
        """Environment a process needs to see this token."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def ref(self, key_label: str) -> Pkcs11Key:
        """A key reference to ``key_label`` on this token."""
        return Pkcs11Key(SOFTHSM_MODULE, self.label, key_label, SecretSource(file=self.pin_file))

    def generate(self, key_label: str) -> bytes:
        """Generate a secp256k1 key inside the token (in a child process); return its address."""
        out = subprocess.run(
            [sys.executable, "-m", "bridge.keys", "generate", "--pkcs11", str(SOFTHSM_MODULE),
             "--token-label", self.label, "--label", key_label, "--pin-file", str(self.pin_file)],
            check=True, capture_output=True, text=True, env={**os.environ, **self.env()},
        ).stdout  # fmt: skip
        first = out.splitlines()[0]
        return parse_evm_address(first.removeprefix("address = "))


def create_dev_token(directory: Path, label: str = "kstb-devnet") -> DevToken:
    """A fresh SoftHSM2 configuration and initialised token under ``directory``."""
    if not SOFTHSM_MODULE.exists():
        raise RuntimeError(f"{SOFTHSM_MODULE} missing: run `make setup` (installs softhsm2)")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    pin_file = directory / "user.pin"
    init_token(conf, label, pin_file)
    return DevToken(conf, label, pin_file)


def init_token(conf: Path, label: str, pin_file: Path) -> None:
    """Initialise token ``label`` in the SoftHSM2 configuration ``conf``.

    The user PIN is random and written to ``pin_file`` (0600, never over an existing file);
    the security officer PIN is random and discarded.
    """
    pin = secrets.token_hex(8)
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(pin + "\n")
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--so-pin", secrets.token_hex(8), "--pin", pin],
        check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )  # fmt: skip


def issue_client_certificate(
    org: FabricOrg,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
    days: int = 30,
    role: str = "client",
) -> bytes:
    """A PEM client certificate for ``public_key`` signed by ``org``'s (cryptogen) CA.

    The subject carries ``OU=<role>`` (default ``client``) so the org's MSP (NodeOUs on)
    classifies it as a client, like cryptogen's ``User1``, or with ``role="admin"`` as an
    admin (a renewed admin certificate). Only the public key is needed: the private key may
    live in a token.
    """
    ca_dir = org.crypto_dir / "ca"
    ca_cert = x509.load_pem_x509_certificate(next(ca_dir.glob("*-cert.pem")).read_bytes())
    ca_key = serialization.load_pem_private_key(next(ca_dir.glob("*_sk")).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"{ca_dir}: the CA key is not an EC key")
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@{org.domain}"),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False,
        crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Fabric checks the chain at the leaf's notBefore: never before the CA's own.
        .not_valid_before(max(now - datetime.timedelta(minutes=5), ca_cert.not_valid_before_utc))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    # Fabric re-encodes a certificate whose ECDSA signature has a high s before checking it,
    # which breaks the signature over a TBS that Go would encode differently: sign until low.
    while True:
        cert = builder.sign(ca_key, hashes.SHA256())
        if decode_dss_signature(cert.signature)[1] <= P256_HALF_ORDER:
            return cert.public_bytes(serialization.Encoding.PEM)
