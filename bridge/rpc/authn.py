"""Authentication: a peer's TLS certificate to a :class:`Principal`, or a precise refusal.

The TLS handshake has already checked that the leaf chains to one of the organisation CAs
and is within its validity period. Here the issuing CA names the organisation, Subject O
must equal that organisation's id, Subject OU must be exactly one role the network file
grants it, and the certificate's SHA-256 fingerprint must not be on the organisation's
revocation list (re-read when the file changes).

The TLS version is checked here too: gRPC Python offers no minimum-version setting, so a
client that negotiated anything but TLS 1.3 is refused before its certificate is read
(:func:`require_tls13`), from the ``ssl_tls_version`` property gRPC puts in the call's
auth context.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from bridge.config import NetworkConfig, Organisation
from bridge.domain.errors import BridgeError, InvalidInput
from bridge.rpc.roles import Principal, parse_role

log = structlog.get_logger(__name__)


class Unauthenticated(BridgeError):
    """The caller presented no usable certificate (missing, unknown issuer, revoked...)."""


REQUIRED_TLS_VERSION = "TLSv1.3"
"""The only TLS version a caller may have negotiated (gRPC auth context ``ssl_tls_version``)."""


def require_tls13(auth_context: Mapping[str, Iterable[bytes]]) -> None:
    """Raise Unauthenticated unless the connection negotiated exactly TLS 1.3.

    SECURITY: the handshake itself still completes at TLS 1.2 (gRPC Python exposes no minimum
    version), so this is where 1.2 is refused: before the certificate is read or any handler
    runs. A connection whose auth context names no version (not a TLS connection, or a gRPC
    build without the property) is refused too: fail closed.
    """
    versions = list(auth_context.get("ssl_tls_version") or [])
    if len(versions) != 1:
        raise Unauthenticated("the connection's TLS version is unknown; TLS 1.3 is required")
    version = versions[0].decode("ascii", "replace")
    if version != REQUIRED_TLS_VERSION:
        raise Unauthenticated(f"the connection negotiated {version}; TLS 1.3 is required")


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


_Stamp = tuple[int, int, int] | None
"""(inode, size, mtime_ns) of a file, None when it cannot be stat'ed: a replaced file
(rename over it) changes the inode even within one mtime tick."""


def _stamp(path: Path | None) -> _Stamp:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _OrgFiles:
    """One organisation's CA certificates and revocation list as last read successfully,
    and why its files are unusable now (None: they are usable)."""

    stamp: tuple[_Stamp, _Stamp]
    cas: tuple[_CA, ...]
    revoked: frozenset[str]
    problem: str | None


def _load_org(org: Organisation) -> tuple[tuple[_CA, ...], frozenset[str]]:
    """Read an organisation's CA file and revocation list; raises InvalidInput naming the
    file when either is missing, unreadable or malformed."""
    try:
        cas = tuple(_CA(org, c) for c in x509.load_pem_x509_certificates(org.ca_file.read_bytes()))
    except OSError as exc:
        raise InvalidInput(f"CA file {org.ca_file} is not readable: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidInput(f"CA file {org.ca_file} holds no valid certificate: {exc}") from None
    revoked: frozenset[str] = frozenset()
    if org.revoked_file is not None:
        try:
            revoked = _read_revoked(str(org.revoked_file))
        except OSError as exc:
            raise InvalidInput(
                f"revocation list {org.revoked_file} is not readable: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise InvalidInput(f"revocation list {org.revoked_file} is not UTF-8 text") from None
    return cas, revoked


class Authenticator:
    """Maps peer certificates to principals for one network file.

    Guarantees: :meth:`principal` returns a Principal only for a certificate issued
    directly by an organisation's CA, with O = that organisation, one OU naming a role the
    organisation holds, not revoked and not expired; otherwise raises Unauthenticated.
    CA files and revocation lists are re-read when they change on disk (a replaced file
    too). Construction raises InvalidInput when any of them is missing, unreadable or
    malformed (refuse to start). Later, an organisation whose files become unusable has
    its certificates refused (fail closed: a revocation could not be applied) and an alarm
    logged, while every other organisation is served as before; its last good CA
    certificates are kept only to recognise which organisation a certificate belongs to.
    """

    def __init__(self, network: NetworkConfig) -> None:
        self._orgs: Mapping[str, Organisation] = network.organisations
        self._lock = threading.Lock()
        self._files: dict[str, _OrgFiles] = {}
        self._generation = 0
        """Bumped whenever any organisation's CA or revocation files are read anew."""
        self._verified: OrderedDict[bytes, tuple[int, _Verified]] = OrderedDict()
        """Certificates verified under a generation of the files, most recent last."""
        for o in self._orgs.values():
            stamp = (_stamp(o.ca_file), _stamp(o.revoked_file))
            cas, revoked = _load_org(o)  # SECURITY: refuse to start on an unusable file
            self._files[o.id] = _OrgFiles(stamp, cas, revoked, None)

    def problems(self) -> dict[str, str]:
        """Organisations whose CA file or revocation list is unusable now, and why."""
        with self._lock:
            self._refresh()
            return {k: f.problem for k, f in self._files.items() if f.problem is not None}

    def _refresh(self) -> None:
        for o in self._orgs.values():
            old = self._files[o.id]
            stamp = (_stamp(o.ca_file), _stamp(o.revoked_file))
            if stamp == old.stamp:
                continue
            try:
                cas, revoked = _load_org(o)
            except InvalidInput as exc:
                # SECURITY: fail closed for this organisation only; keep its last good
                # files to recognise its certificates, never to accept them.
                self._files[o.id] = _OrgFiles(stamp, old.cas, old.revoked, str(exc))
                self._replace()
                log.error(
                    "ALARM: organisation's CA or revocation file is unusable;"
                    " its certificates are refused until it is fixed",
                    organisation=o.id,
                    problem=str(exc),
                )
                continue
            if old.problem is not None:
                log.warning(
                    "organisation's CA and revocation files usable again", organisation=o.id
                )
            self._files[o.id] = _OrgFiles(stamp, cas, revoked, None)
            self._replace()

    def _replace(self) -> None:
        """Forget every verified certificate (a CA or revocation file changed)."""
        self._generation += 1
        self._verified.clear()

    def principal(self, pem: bytes) -> Principal:
        """The principal a PEM leaf certificate stands for; raises Unauthenticated.

        SECURITY: what the certificate's bytes prove under the current CA files (its
        issuing organisation, by signature; its O, OU and role) is kept per exact bytes for
        the last :data:`VERIFIED_KEPT` certificates, and forgotten whenever any CA file or
        revocation list is read anew; what time or the files can change is checked on every
        call: the organisation's files usable, the validity period against the clock, the
        fingerprint against the revocation list. A new revocation therefore refuses the
        certificate's very next call, as without the cache. (Every gRPC call and every
        stream re-check authenticates; a signature check per call was a fifth of a busy
        coordinator's event loop, issue 14.)"""
        with self._lock:
            self._refresh()
            files = dict(self._files)
            generation = self._generation
            kept = self._verified.get(pem)
            if kept is not None and kept[0] == generation:
                self._verified.move_to_end(pem)
        if kept is not None and kept[0] == generation:
            return _admitted(kept[1], files)
        verified = self._verify(pem, files)
        principal = _admitted(verified, files)
        with self._lock:
            if self._generation == generation:  # not if the files changed meanwhile
                self._verified[pem] = (generation, verified)
                while len(self._verified) > VERIFIED_KEPT:
                    self._verified.popitem(last=False)
        return principal

    @staticmethod
    def _verify(pem: bytes, files: Mapping[str, _OrgFiles]) -> _Verified:
        """What ``pem`` proves under ``files``: issued directly by an organisation's CA,
        with O = that organisation and one OU naming a role it holds. Unauthenticated
        otherwise. Says nothing about time, revocation or the files' usability."""
        cas = [ca for f in files.values() for ca in f.cas]
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
        _usable(org.id, files)
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
        return _Verified(
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            principal=Principal(
                org=org.id,
                role=role.kind,
                scope=role.scope,
                common_name=str(cns[0].value) if cns else "",
                fingerprint=fingerprint(leaf),
            ),
        )


VERIFIED_KEPT = 1024
"""How many verified certificates an :class:`Authenticator` keeps (least recent dropped)."""


@dataclass(frozen=True, slots=True)
class _Verified:
    """What a certificate's bytes proved under one generation of the CA files."""

    not_before: datetime.datetime
    not_after: datetime.datetime
    principal: Principal


def _usable(org_id: str, files: Mapping[str, _OrgFiles]) -> None:
    """Unauthenticated while the organisation's files are unusable (fail closed)."""
    problem = files[org_id].problem
    if problem is not None:
        raise Unauthenticated(
            f"certificates of {org_id} are refused until its CA/revocation files are"
            f" fixed: {problem}"
        )


def _admitted(verified: _Verified, files: Mapping[str, _OrgFiles]) -> Principal:
    """``verified``'s principal if its organisation's files are usable, the clock is
    within its validity period and its fingerprint is not revoked; Unauthenticated
    otherwise. Checked on every call, cached certificate or not."""
    p = verified.principal
    _usable(p.org, files)
    now = datetime.datetime.now(datetime.UTC)
    if not (verified.not_before <= now <= verified.not_after):
        raise Unauthenticated("certificate is outside its validity period")
    if p.fingerprint in files[p.org].revoked:
        raise Unauthenticated(f"certificate {p.fingerprint[:16]}... of {p.org} is revoked")
    return p
