"""Authentication: a peer's TLS certificate to a :class:`Principal`, or a precise refusal.

The TLS handshake has already checked that the leaf chains to one of the organisation CAs
and is within its validity period. Here the issuing CA names the organisation, Subject O
must equal that organisation's id, Subject OU must be exactly one role the network file
grants it, and the certificate's SHA-256 fingerprint must not be on the organisation's
revocation list (re-read when the file changes).
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from bridge.config import NetworkConfig, Organisation
from bridge.domain.errors import BridgeError, InvalidInput
from bridge.rpc.roles import Principal, parse_role


class Unauthenticated(BridgeError):
    """The caller presented no usable certificate (missing, unknown issuer, revoked...)."""


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _one(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise Unauthenticated(f"certificate must carry exactly one Subject {what}")
    return str(values[0].value)


def _read_revoked(path: str) -> frozenset[str]:
    out = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = line.split("#", 1)[0].strip().lower().replace(":", "")
            if text:
                if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
                    raise InvalidInput(f"{path}: {text[:20]!r} is not a SHA-256 fingerprint")
                out.add(text)
    return frozenset(out)


def describe(pem: bytes) -> Principal | None:
    """What a (refused) certificate claims, for the audit log only: O, OU, CN and the
    fingerprint, unchecked. Never used to authorise anything."""
    try:
        leaf = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None

    def first(oid: x509.ObjectIdentifier) -> str:
        values = leaf.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return Principal(
        org=first(NameOID.ORGANIZATION_NAME),
        role="unauthenticated:" + first(NameOID.ORGANIZATIONAL_UNIT_NAME),
        common_name=first(NameOID.COMMON_NAME),
        fingerprint=fingerprint(leaf),
    )


@dataclass(frozen=True, slots=True)
class _CA:
    org: Organisation
    cert: x509.Certificate


class Authenticator:
    """Maps peer certificates to principals for one network file.

    Guarantees: :meth:`principal` returns a Principal only for a certificate issued
    directly by an organisation's CA, with O = that organisation, one OU naming a role the
    organisation holds, not revoked and not expired; otherwise raises Unauthenticated.
    CA files and revocation lists are re-read when they change on disk.
    """

    def __init__(self, network: NetworkConfig) -> None:
        self._orgs: Mapping[str, Organisation] = network.organisations
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, float], ...] = ()
        self._cas: list[_CA] = []
        self._revoked: dict[str, frozenset[str]] = {}
        self._refresh()

    def _files(self) -> list[str]:
        out = []
        for o in self._orgs.values():
            out.append(str(o.ca_file))
            if o.revoked_file is not None:
                out.append(str(o.revoked_file))
        return out

    def _refresh(self) -> None:
        stamp = []
        for f in self._files():
            try:
                stamp.append((f, os.stat(f).st_mtime))
            except OSError:
                stamp.append((f, -1.0))
        if tuple(stamp) == self._stamp:
            return
        cas, revoked = [], {}
        for o in self._orgs.values():
            for cert in x509.load_pem_x509_certificates(o.ca_file.read_bytes()):
                cas.append(_CA(o, cert))
            if o.revoked_file is not None:
                try:
                    revoked[o.id] = _read_revoked(str(o.revoked_file))
                except FileNotFoundError:
                    revoked[o.id] = frozenset()
        self._cas, self._revoked, self._stamp = cas, revoked, tuple(stamp)

    def principal(self, pem: bytes) -> Principal:
        """The principal a PEM leaf certificate stands for; raises Unauthenticated."""
        with self._lock:
            self._refresh()
            cas, revoked = self._cas, self._revoked
        try:
            leaf = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Unauthenticated("peer certificate is not a valid X.509 certificate") from None
        issuer = None
        for ca in cas:
            if ca.cert.subject != leaf.issuer:
                continue
            try:
                leaf.verify_directly_issued_by(ca.cert)
            except (InvalidSignature, ValueError, TypeError):
                continue
            issuer = ca
            break
        if issuer is None:
            raise Unauthenticated("certificate is not issued by any organisation's CA")
        org = issuer.org
        now = datetime.datetime.now(datetime.UTC)
        if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
            raise Unauthenticated("certificate is outside its validity period")
        fp = fingerprint(leaf)
        if fp in revoked.get(org.id, frozenset()):
            raise Unauthenticated(f"certificate {fp[:16]}... of {org.id} is revoked")
        o_name = _one(leaf, NameOID.ORGANIZATION_NAME, "O")
        if o_name != org.id:
            raise Unauthenticated(
                f"certificate names organisation {o_name!r} but {org.id}'s CA issued it"
            )
        ou = _one(leaf, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (one role)")
        try:
            role = parse_role(ou)
        except InvalidInput as exc:
            raise Unauthenticated(f"certificate role: {exc}") from None
        if role not in org.roles:
            raise Unauthenticated(f"organisation {org.id} does not hold role {role}")
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return Principal(
            org=org.id,
            role=role.kind,
            scope=role.scope,
            common_name=str(cns[0].value) if cns else "",
            fingerprint=fp,
        )
