"""Devnet-only certificate authorities for connections to ledger nodes.

Used for the chaincode server (peer -> chaincode TLS with client certificates) and for the
authenticating TLS proxy in front of each anvil. Keys are generated at run time (ECDSA P-256)
and written 0600; nothing is committed. Not a production PKI: no revocation, one level.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.devnet.ca_cert import CLOCK_SKEW, key_pem, new_self_signed_ca

VALIDITY = datetime.timedelta(days=30)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its key on disk (``key`` is 0600)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevCA:
    """A self-signed CA in ``directory`` (``ca.crt``, ``ca.key``), created on first use."""

    directory: Path
    name: str

    @property
    def cert_path(self) -> Path:
        """The CA certificate (PEM): the trust root to give to clients or servers."""
        return self.directory / "ca.crt"

    @property
    def _key_path(self) -> Path:
        return self.directory / "ca.key"

    def ensure(self) -> DevCA:
        """Create the CA unless it exists; return self."""
        if self.cert_path.exists() and self._key_path.exists():
            return self
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        key, cert = new_self_signed_ca(subject, VALIDITY)
        _write_private(self._key_path, key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self

    def issue(
        self, name: str, hosts: tuple[str, ...] = (), server: bool = False, client: bool = False
    ) -> IssuedCert:
        """Issue (or return the existing) ``<name>.crt``/``<name>.key`` in the CA's directory.

        ``hosts`` become subject alternative names (IP addresses or DNS names); ``server`` and
        ``client`` set the extended key usages.
        """
        out = IssuedCert(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        if out.cert.exists() and out.key.exists():
            return out
        self.ensure()
        ca_key = serialization.load_pem_private_key(self._key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(out.key, key_pem(key))
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return out
