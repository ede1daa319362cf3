"""Keys generated inside a real PKCS#11 token (SoftHSM2): never extractable, signatures the
committee and Fabric accept, every misconfiguration refused with its typed error."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from coincurve import PrivateKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.util.ec import encode_named_curve_parameters

from bridge.config import dump_toml
from bridge.domain.committee import SECP256K1_N, Committee, assemble_certificate, recover_signer
from bridge.domain.signer import LocalKeySigner
from bridge.keys.errors import (
    KeyCustodyError,
    KeyExportable,
    TokenKeyNotFound,
    TokenPinMismatch,
    TokenUnavailable,
)
from bridge.keys.loader import open_p256_signer, open_signer, token_session
from bridge.keys.p256 import P256_HALF_ORDER
from bridge.keys.pkcs11_token import (
    Pkcs11P256Signer,
    Pkcs11Signer,
    TokenSession,
    generate_key,
)
from bridge.keys.reference import Pkcs11Key, SecretSource, key_ref_to_toml
from tests.softhsm import MODULE, SoftHsm, new_label, other_token, process_softhsm

pytestmark = [pytest.mark.integration, pytest.mark.security, pytest.mark.hsm]


@pytest.fixture(scope="module")
def hsm() -> SoftHsm:
    return process_softhsm()


def session(hsm: SoftHsm) -> TokenSession:
    return token_session(MODULE, hsm.token_label, hsm.pin)


def test_generated_key_cannot_be_read_from_the_token(hsm: SoftHsm) -> None:
    label = new_label("member")
    point = generate_key(session(hsm), label, "secp256k1")
    assert len(point) == 65 and point[0] == 4

    def attributes(s: object) -> None:
        (priv,) = s.get_objects(  # type: ignore[attr-defined]
            {Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        )
        with pytest.raises(AttributeSensitive):
            priv[Attribute.VALUE]  # CKA_VALUE: the token refuses to reveal the scalar
        assert priv[Attribute.EXTRACTABLE] is False
        assert priv[Attribute.SENSITIVE] is True
        assert priv[Attribute.NEVER_EXTRACTABLE] is True

    session(hsm).run(attributes)


def test_committee_signatures_from_the_token_recover_and_are_low_s(hsm: SoftHsm) -> None:
    label = new_label("member")
    generate_key(session(hsm), label, "secp256k1")
    signer = open_signer(hsm.ref(label))
    assert isinstance(signer, Pkcs11Signer)
    seen_v = set()
    for _ in range(400):
        digest = secrets.token_bytes(32)
        sig = signer.sign_digest(digest)
        assert len(sig) == 65
        assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2
        assert recover_signer(digest, sig) == signer.address
        seen_v.add(sig[64])
    assert seen_v == {27, 28}, "both recovery ids occur over many signatures"
    # t-of-n: an HSM member's vote counts next to in-memory members.
    others = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(3)]
    members = sorted([signer.address, *(o.address for o in others)])
    committee = Committee(1, 3, tuple(members))
    digest = secrets.token_bytes(32)
    cert = assemble_certificate(
        committee,
        digest,
        [signer.sign_digest(digest), *(o.sign_digest(digest) for o in others[:2])],
    )
    assert signer.address in {v.signer for v in cert.votes}


def test_p256_token_key_signs_low_s_der_that_verifies(hsm: SoftHsm) -> None:
    label = new_label("fabric")
    generate_key(session(hsm), label, "p256")
    signer = open_p256_signer(hsm.ref(label))
    assert isinstance(signer, Pkcs11P256Signer)
    for i in range(200):
        message = b"proposal %d" % i
        sig = signer.sign(message)
        signer.public_key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        assert decode_dss_signature(sig)[1] <= P256_HALF_ORDER


def test_key_of_the_wrong_curve_or_label_is_refused(hsm: SoftHsm) -> None:
    label = new_label("fabric")
    generate_key(session(hsm), label, "p256")
    with pytest.raises(TokenKeyNotFound, match="is not a secp256k1 key"):
        open_signer(hsm.ref(label))
    with pytest.raises(TokenKeyNotFound, match="found 0 and 0"):
        open_signer(hsm.ref("no-such-key"))
    with pytest.raises(KeyCustodyError, match="already holds"):
        generate_key(session(hsm), label, "p256")


def _raw_keypair(s: object, label: str, extractable: bool, curve: str = "secp256k1") -> None:
    params = s.create_domain_parameters(  # type: ignore[attr-defined]
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
    )
    params.generate_keypair(
        store=True,
        label=label,
        private_template={Attribute.SENSITIVE: not extractable, Attribute.EXTRACTABLE: extractable},
    )


def test_extractable_or_imported_keys_are_refused(hsm: SoftHsm) -> None:
    exportable = new_label("exportable")
    session(hsm).run(lambda s: _raw_keypair(s, exportable, extractable=True))
    with pytest.raises(KeyExportable, match="is or was extractable"):
        open_signer(hsm.ref(exportable))
    # A key imported from outside (C_CreateObject with its value) was never always-sensitive.
    imported = new_label("imported")
    scalar = secrets.token_bytes(32)

    def create(s: object) -> None:
        s.create_object(  # type: ignore[attr-defined]
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: encode_named_curve_parameters("secp256k1"),
                Attribute.VALUE: scalar,
                Attribute.LABEL: imported,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
            }
        )
        point = PrivateKey(scalar).public_key.format(compressed=False)
        s.create_object(  # type: ignore[attr-defined]
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: encode_named_curve_parameters("secp256k1"),
                Attribute.EC_POINT: b"\x04\x41" + point,
                Attribute.LABEL: imported,
                Attribute.TOKEN: True,
            }
        )

    session(hsm).run(create)
    with pytest.raises(KeyExportable):
        open_signer(hsm.ref(imported))


def test_wrong_pin_and_unknown_token_are_refused(hsm: SoftHsm) -> None:
    other = other_token()
    with pytest.raises(TokenUnavailable, match="login failed \\(PinIncorrect\\)"):
        TokenSession(MODULE, other.token_label, b"0000-wrong")
    with pytest.raises(TokenUnavailable, match="no token labelled 'nope'"):
        TokenSession(MODULE, "nope", hsm.pin)
    with pytest.raises(TokenUnavailable, match="does not exist"):
        open_signer(
            Pkcs11Key(MODULE.with_name("missing.so"), "t", "k", SecretSource(file=hsm.pin_file))
        )


def test_a_dropped_session_is_reopened(hsm: SoftHsm) -> None:
    label = new_label("member")
    generate_key(session(hsm), label, "secp256k1")
    sess = TokenSession(MODULE, other_token().token_label, other_token().pin, rw=True)
    generate_key(sess, label, "secp256k1")
    signer = Pkcs11Signer(sess, label)
    digest = secrets.token_bytes(32)
    assert recover_signer(digest, signer.sign_digest(digest)) == signer.address
    sess.run(lambda s: s.close())  # the token forgets the session under the signer
    assert recover_signer(digest, signer.sign_digest(digest)) == signer.address


def test_cli_generates_inside_the_token_and_prints_the_address(hsm: SoftHsm) -> None:
    label = new_label("cli")
    args = ["--pkcs11", str(MODULE), "--token-label", hsm.token_label, "--label", label]
    out = subprocess.run(
        [sys.executable, "-m", "bridge.keys", "generate", *args, "--pin-file", str(hsm.pin_file)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    signer = open_signer(hsm.ref(label))
    assert f"address = 0x{signer.address.hex()}" in out
    assert '"key_label" = "' + label + '"' in out
    again = subprocess.run(
        [sys.executable, "-m", "bridge.keys", "generate", *args, "--pin-file", str(hsm.pin_file)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 2 and "already holds" in again.stderr
    assert open_signer(hsm.ref(label)).address == signer.address, "the first key is untouched"


def test_a_second_key_on_the_open_token_needs_the_right_pin(
    hsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The process logs in once per token; a later key reference with another PIN used to
    get that session anyway, its own PIN never checked."""
    first, second = new_label("member"), new_label("member")
    generate_key(session(hsm), first, "secp256k1")
    generate_key(session(hsm), second, "secp256k1")
    assert open_signer(hsm.ref(first)).address  # the token is open with the right PIN
    wrong = tmp_path_factory.mktemp("pin") / "wrong.pin"
    wrong.write_bytes(b"0000-not-the-pin\n")
    wrong.chmod(0o600)
    with pytest.raises(TokenPinMismatch, match="already open in this process with another PIN"):
        open_signer(Pkcs11Key(MODULE, hsm.token_label, second, SecretSource(file=wrong)))
    assert open_signer(hsm.ref(second)).address != open_signer(hsm.ref(first)).address


def test_a_release_is_signed_by_a_key_that_never_leaves_the_token(
    hsm: SoftHsm, tmp_path: Path
) -> None:
    """``release_signature sign --key-config`` with a token key (a child process, as the
    release manager runs it); ``verify`` accepts it for that address only."""
    label = new_label("release")
    generate_key(session(hsm), label, "secp256k1")
    address = "0x" + open_signer(hsm.ref(label)).address.hex()
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "kstb.tgz").write_bytes(b"chart")
    (dist / "SHA256SUMS").write_text(hashlib.sha256(b"chart").hexdigest() + "  kstb.tgz\n")
    key_config = tmp_path / "release-key.toml"
    key_config.write_text(dump_toml(key_ref_to_toml(hsm.ref(label))))
    tool = [sys.executable, "-m", "bridge.tools.release_signature"]
    env = {**os.environ, **hsm.env()}
    subprocess.run(
        [*tool, "sign", "--dist", str(dist), "--key-config", str(key_config)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    ok = subprocess.run(
        [*tool, "verify", "--dist", str(dist), "--signer", address],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0 and f"signed by {address.lower()}" in ok.stdout, ok.stderr
    wrong = subprocess.run(
        [*tool, "verify", "--dist", str(dist), "--signer", "0x" + "11" * 20],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert wrong.returncode == 2 and "is not a release signer" in wrong.stderr
