"""The Authenticator's kept verifications (issue 14): a certificate's signature and names are
checked once per exact bytes and generation of the CA files, while revocation, the validity
period and the files' usability are checked on every call. Each refusal below is of a
certificate that was just accepted (and so kept). A file change is caught twice (the kept
entries are forgotten, and the per-call checks run on kept entries too): the revocation and
unusable-file tests fail only without both, the CA-replacement test without the first, the
expiry test without the second. Certificates from the devnet PKI, one per test."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import bridge.rpc.authn as authn_module
from bridge.config import load_network
from bridge.devnet.pki import DevPki, IssuedCertificate
from bridge.rpc.authn import Authenticator, Unauthenticated
from tests.unit.test_authorisation import network_with

pytestmark = [pytest.mark.unit, pytest.mark.security, pytest.mark.batch]

A, B = "brokerage-a", "brokerage-b"


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator", "bridge-operator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    pki.organisation(A, [f"brokerage:{A}", f"relayer:{A}"])
    pki.issue(A, f"brokerage:{A}", f"brokerage-{A}")
    pki.organisation(B, [f"brokerage:{B}"])
    pki.issue(B, f"brokerage:{B}", f"brokerage-{B}")
    return pki


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The certificates whose signature and names were verified (not taken as kept)."""
    calls: list[bytes] = []
    verify = Authenticator._verify

    def counting(pem: bytes, files: object) -> object:
        calls.append(pem)
        return verify(pem, files)  # type: ignore[arg-type]

    monkeypatch.setattr(Authenticator, "_verify", staticmethod(counting))
    return calls


def pem(cert: IssuedCertificate) -> bytes:
    return cert.cert_file.read_bytes()


def test_the_same_bytes_are_verified_once_and_give_the_same_principal(
    pki: DevPki, tmp_path: Path, counted: list[bytes]
) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cert = pki.cert_for(f"brokerage:{A}")
    first = authn.principal(pem(cert))
    assert [authn.principal(pem(cert)) for _ in range(5)] == [first] * 5
    assert counted == [pem(cert)]
    other = pki.cert_for("coordinator")
    assert authn.principal(pem(other)).role == "coordinator"
    assert len(counted) == 2


def test_a_kept_certificate_is_refused_on_its_next_call_after_its_revocation(
    pki: DevPki, tmp_path: Path, counted: list[bytes]
) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    victim = pki.issue_extra(A, f"relayer:{A}", "to-revoke")
    authn.principal(pem(victim))
    authn.principal(pem(victim))
    assert len(counted) == 1  # kept
    pki.revoke(victim)
    with pytest.raises(Unauthenticated, match="is revoked"):
        authn.principal(pem(victim))


def test_kept_certificates_are_forgotten_when_their_ca_is_replaced(
    pki: DevPki, tmp_path: Path, counted: list[bytes]
) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cert = pki.cert_for(f"brokerage:{A}")
    authn.principal(pem(cert))
    # brokerage-a's CA file now holds another CA (its old one withdrawn)
    pki.cas[A].ca_file.write_bytes(
        pki.issue_unknown_ca(A, f"brokerage:{A}", "n").cert_file.read_bytes()
    )
    with pytest.raises(Unauthenticated, match="not issued by any organisation's CA"):
        authn.principal(pem(cert))


def test_a_kept_certificate_is_refused_while_its_organisations_files_are_unusable(
    pki: DevPki, tmp_path: Path
) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cert = pki.cert_for(f"brokerage:{A}")
    authn.principal(pem(cert))
    revoked_file = pki.cas[A].revoked_file
    revoked_file.write_text("not a fingerprint\n")
    with pytest.raises(Unauthenticated, match="refused until its CA/revocation files are fixed"):
        authn.principal(pem(cert))
    revoked_file.write_text("")
    assert authn.principal(pem(cert)).org == A  # usable again


def test_a_kept_certificate_is_refused_once_its_validity_period_ends(
    pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cert = pki.cert_for(f"brokerage:{A}")
    authn.principal(pem(cert))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3650)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
            return later

    monkeypatch.setattr(authn_module, "datetime", SimpleNamespace(datetime=Clock, UTC=datetime.UTC))
    with pytest.raises(Unauthenticated, match="outside its validity period"):
        authn.principal(pem(cert))


def test_a_certificate_with_a_kept_ones_subject_but_another_key_is_refused(
    pki: DevPki, tmp_path: Path
) -> None:
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    authn.principal(pem(pki.cert_for(f"brokerage:{A}")))
    forged = pki.issue_unknown_ca(A, f"brokerage:{A}", f"brokerage-{A}")
    with pytest.raises(Unauthenticated, match="not issued by any organisation's CA"):
        authn.principal(pem(forged))


def test_refusals_are_not_kept_and_the_kept_ones_are_bounded(
    pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: list[bytes]
) -> None:
    monkeypatch.setattr(authn_module, "VERIFIED_KEPT", 2)
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    expired = pki.issue_expired(A, f"brokerage:{A}", "old")
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="outside its validity period"):
            authn.principal(pem(expired))
    sneaky = pki.issue_extra(B, f"brokerage:{A}", "sneaky")
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="does not hold role"):
            authn.principal(pem(sneaky))
    assert len(counted) == 4  # nothing refused is kept: every call verified it again
    certs = [pki.cert_for(r) for r in (f"brokerage:{A}", f"brokerage:{B}", "coordinator")]
    for c in certs:
        authn.principal(pem(c))
    assert len(authn._verified) == 2
    authn.principal(pem(certs[0]))  # dropped as least recent: verified again
    assert counted[-1] == pem(certs[0])


def test_a_verification_racing_a_ca_change_is_not_kept(pki: DevPki, tmp_path: Path) -> None:
    # Review s21 M1: a verification that began under the old CA files and finished after
    # another call re-read them must not serve later calls, or a certificate of a removed
    # CA would pass (kept entries are not re-checked against the issuer). Two guards: such
    # a result is not stored, and an entry only serves calls of the generation it was
    # verified under; this fails only without both.
    authn = Authenticator(load_network(network_with(pki, tmp_path)))
    cert = pki.cert_for(f"brokerage:{A}")
    started, release = threading.Event(), threading.Event()
    verify = Authenticator._verify

    def slow(pem: bytes, files: object) -> object:
        verified = verify(pem, files)  # type: ignore[arg-type]
        started.set()
        assert release.wait(10)
        return verified

    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(authn.principal(pem(cert))))
    Authenticator._verify = staticmethod(slow)  # type: ignore[method-assign,assignment]
    try:
        first.start()
        assert started.wait(10)
    finally:
        Authenticator._verify = staticmethod(verify)  # type: ignore[method-assign,assignment]
    # Meanwhile brokerage-a's CA is replaced, and a second call reads the new files.
    rogue = pki.issue_unknown_ca(A, f"brokerage:{A}", "n").cert_file.read_bytes()
    pki.cas[A].ca_file.write_bytes(rogue)
    with pytest.raises(Unauthenticated, match="not issued by any organisation's CA"):
        authn.principal(pem(cert))
    release.set()
    first.join(10)
    assert len(results) == 1  # the first call answers from its snapshot, as before
    with pytest.raises(Unauthenticated, match="not issued by any organisation's CA"):
        authn.principal(pem(cert))  # and what it verified was not kept
