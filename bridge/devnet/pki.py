"""The devnet's public-key infrastructure, generated at start (nothing is committed).

One CA per organisation (EC P-256, short validity) and one leaf certificate per component
or client: Subject O = organisation, OU = its one role string, CN = component name. Every
leaf carries SAN 127.0.0.1, ``localhost`` and its role's server name, and may serve and
be a client. Keys are written 0600; certificates are replaced atomically (rename), key
before certificate, so a reader never sees a torn file.

Test helpers issue an expired certificate, one from a CA no organisation owns, revoke a
certificate (its organisation's revocation list) and rotate one in place.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.devnet.ca_cert import CLOCK_SKEW, key_pem, new_self_signed_ca
from bridge.rpc.roles import parse_role

CA_VALIDITY = datetime.timedelta(days=7)
LEAF_VALIDITY = datetime.timedelta(days=2)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _name(org: str, cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """One organisation's CA: its certificate and key, and where its files live."""

    org: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    ca_file: Path
    revoked_file: Path

    @classmethod
    def create(
        cls, org: str, directory: Path, validity: datetime.timedelta
    ) -> CertificateAuthority:
        """A new self-signed CA for ``org`` written under ``directory``."""
        key, cert = new_self_signed_ca(_name(org, f"{org} CA"), validity, key_identifier=True)
        ca_file = directory / "ca.pem"
        _atomic_write(ca_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _atomic_write(
            directory / "ca.key",
            key_pem(key),
            0o600,
        )
        revoked = directory / "revoked.txt"
        if not revoked.exists():
            _atomic_write(revoked, b"# SHA-256 fingerprints of revoked certificates\n", 0o644)
        return cls(org, cert, key, ca_file, revoked)

    def issue(
        self,
        cn: str,
        role: str,
        cert_file: Path,
        key_file: Path,
        *,
        org: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """A leaf for ``cn`` in ``role`` (OU), written to ``key_file`` then ``cert_file``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start = not_before or now - CLOCK_SKEW
        end = not_after or min(now + LEAF_VALIDITY, self.cert.not_valid_after_utc)
        server_name = parse_role(role).server_name
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(org or self.org, cn, role))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName(server_name),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        _atomic_write(
            key_file,
            key_pem(key),
            0o600,
        )
        _atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return IssuedCertificate(
            cn=cn,
            org=org or self.org,
            role=role,
            cert_file=cert_file,
            key_file=key_file,
            fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        )


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf certificate on disk."""

    cn: str
    org: str
    role: str
    cert_file: Path
    key_file: Path
    fingerprint: str


@dataclass
class DevPki:
    """Every devnet organisation's CA and every component's certificate under ``root``."""

    root: Path
    cas: dict[str, CertificateAuthority] = field(default_factory=dict)
    roles: dict[str, list[str]] = field(default_factory=dict)
    """Organisation id -> role strings it holds (written into network.toml)."""
    certs: dict[str, IssuedCertificate] = field(default_factory=dict)
    """Role string -> the certificate of the component or client holding it."""

    def organisation(self, org: str, roles: list[str]) -> CertificateAuthority:
        """Create ``org``'s CA (once) and grant it ``roles``."""
        if org not in self.cas:
            self.cas[org] = CertificateAuthority.create(org, self.root / org, CA_VALIDITY)
        self.roles.setdefault(org, [])
        self.roles[org] += [r for r in roles if r not in self.roles[org]]
        return self.cas[org]

    def _files(self, org: str, cn: str, suffix: str = "") -> tuple[Path, Path]:
        d = self.root / org
        return d / f"{cn}{suffix}.pem", d / f"{cn}{suffix}.key"

    def issue(self, org: str, role: str, cn: str) -> IssuedCertificate:
        """Issue (or re-issue, rotating in place) the certificate of the holder of ``role``."""
        cert_file, key_file = self._files(org, cn)
        issued = self.cas[org].issue(cn, role, cert_file, key_file)
        self.certs[str(parse_role(role))] = issued
        return issued

    def rotate(self, role: str) -> IssuedCertificate:
        """A fresh key and certificate for ``role``'s holder, replacing its files."""
        old = self.certs[str(parse_role(role))]
        return self.issue(old.org, old.role, old.cn)

    def cert_for(self, role: str) -> IssuedCertificate:
        """The certificate of the holder of ``role`` (a role string)."""
        return self.certs[str(parse_role(role))]

    def issue_expired(self, org: str, role: str, cn: str) -> IssuedCertificate:
        """A certificate from ``org``'s real CA whose validity ended an hour ago."""
        now = datetime.datetime.now(datetime.UTC)
        cert_file, key_file = self._files(org, cn, "-expired")
        return self.cas[org].issue(
            cn,
            role,
            cert_file,
            key_file,
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(hours=1),
        )

    def issue_unknown_ca(self, org: str, role: str, cn: str) -> IssuedCertificate:
        """A certificate naming ``org`` and ``role`` but issued by a CA no one trusts."""
        rogue = CertificateAuthority.create(org, self.root / "rogue" / org, CA_VALIDITY)
        cert_file, key_file = self._files(org, cn, "-rogue")
        return rogue.issue(cn, role, cert_file, key_file)

    def issue_extra(
        self, org: str, role: str, cn: str, *, as_org: str | None = None
    ) -> IssuedCertificate:
        """Another certificate from ``org``'s CA (``as_org`` puts a different Subject O in)."""
        cert_file, key_file = self._files(org, cn, "-extra")
        return self.cas[org].issue(cn, role, cert_file, key_file, org=as_org)

    def revoke(self, cert: IssuedCertificate) -> None:
        """Add ``cert`` to its organisation's revocation list (servers re-read it)."""
        path = self.cas[cert.org].revoked_file
        text = path.read_bytes() + f"{cert.fingerprint}  # {cert.cn}\n".encode()
        _atomic_write(path, text, 0o644)

    def network_entries(self, base: Path) -> list[dict[str, object]]:
        """``[[organisations]]`` entries with paths relative to ``base`` (network.toml's dir)."""
        return [
            {
                "id": org,
                "ca": str(ca.ca_file.relative_to(base)),
                "roles": list(self.roles[org]),
                "revoked_file": str(ca.revoked_file.relative_to(base)),
            }
            for org, ca in self.cas.items()
        ]
