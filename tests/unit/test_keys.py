"""Key custody without a token: key references, encrypted keystores, secrets, file modes,
signature shaping, EVM transactions signed through the Signer seam and the CLI."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from eth_account import Account

from bridge.config import dump_toml, load_relayer, load_verifier
from bridge.config_errors import ConfigError
from bridge.domain.committee import SECP256K1_N, recover_signer
from bridge.domain.errors import InvalidInput
from bridge.domain.signer import LocalKeySigner, read_key_file
from bridge.keys import evm_tx
from bridge.keys.__main__ import main as keys_main
from bridge.keys.errors import (
    KeyCustodyError,
    KeyFileExposed,
    KeyFileInvalid,
    KeyRefInvalid,
    PlaintextKeyRefused,
    SecretUnavailable,
    TokenPinMismatch,
    WrongPassphrase,
)
from bridge.keys.evm_tx import sign_transaction
from bridge.keys.keystore import (
    decrypt_keystore_v3,
    decrypt_pkcs8_pem,
    write_keystore_v3,
    write_pkcs8_pem,
)
from bridge.keys.loader import PLAINTEXT_KEYS_ENV, open_p256_signer, open_signer
from bridge.keys.p256 import P256_HALF_ORDER, LocalP256Signer
from bridge.keys.reference import (
    KeystoreKey,
    Pkcs11Key,
    PlainKeyFile,
    SecretSource,
    key_ref_to_toml,
    parse_key_ref,
)
from bridge.keys.secp256k1 import recoverable_signature
from bridge.keys.secret import read_secret
from tests.unit.test_config import fabric_ledger, network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.security]

PASS = b"correct horse battery staple"


def private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def fast_keystore(path: Path, key: bytes, passphrase: bytes = PASS) -> Path:
    """A keystore v3 file with a cheap KDF (the format is the same; tests stay fast)."""
    write_keystore_v3(path, key, passphrase, kdf="pbkdf2", iterations=1000)
    return path


# -- keystore v3 (secp256k1) -----------------------------------------------------------------


def test_keystore_v3_round_trip_signs_as_the_original_key(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    path = fast_keystore(tmp_path / "member.json", key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert key.hex() not in path.read_text(), "the key is stored encrypted"
    assert decrypt_keystore_v3(path, PASS) == key
    pw = private(tmp_path / "pass", PASS + b"\n")
    signer = open_signer(KeystoreKey(path, SecretSource(file=pw)))
    assert signer.address == LocalKeySigner(key).address
    digest = secrets.token_bytes(32)
    assert recover_signer(digest, signer.sign_digest(digest)) == signer.address


def test_keystore_v3_default_is_scrypt_and_readable_by_eth_account(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    write_keystore_v3(tmp_path / "k.json", key, PASS)
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["version"] == 3 and doc["crypto"]["kdf"] == "scrypt"
    assert bytes(Account.decrypt(doc, PASS)) == key


def test_wrong_passphrase_is_refused_precisely(tmp_path: Path) -> None:
    path = fast_keystore(tmp_path / "member.json", secrets.token_bytes(32))
    with pytest.raises(WrongPassphrase, match=r"keystore .*member\.json: wrong passphrase$"):
        decrypt_keystore_v3(path, b"not it")
    with pytest.raises(WrongPassphrase):
        open_signer(KeystoreKey(path, SecretSource(file=private(tmp_path / "p", b"nope"))))


def test_keystore_readable_by_others_is_refused_before_decrypting(tmp_path: Path) -> None:
    path = fast_keystore(tmp_path / "member.json", secrets.token_bytes(32))
    path.chmod(0o640)
    with pytest.raises(KeyFileExposed, match="must not be readable by group/others"):
        decrypt_keystore_v3(path, PASS)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not json", "is not JSON"),
        (b'{"version": 4, "crypto": {}}', "not an Ethereum keystore v3"),
        (b'{"version": 3, "crypto": {"kdf": "argon9"}}', "is malformed"),
    ],
)
def test_malformed_keystore_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    with pytest.raises(KeyFileInvalid, match=match):
        decrypt_keystore_v3(private(tmp_path / "k.json", content), PASS)


def test_keystore_writer_never_overwrites(tmp_path: Path) -> None:
    path = fast_keystore(tmp_path / "k.json", secrets.token_bytes(32))
    before = path.read_bytes()
    with pytest.raises(KeyCustodyError, match="already exists"):
        fast_keystore(path, secrets.token_bytes(32))
    assert path.read_bytes() == before


# -- encrypted PKCS#8 PEM (P-256) ------------------------------------------------------------


def test_encrypted_pem_round_trip_and_low_s(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "fabric.pem"
    write_pkcs8_pem(path, key, PASS)
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    signer = open_p256_signer(KeystoreKey(path, SecretSource(file=private(tmp_path / "p", PASS))))
    assert signer.public_key.public_numbers() == key.public_key().public_numbers()
    for i in range(64):
        sig = signer.sign(b"message %d" % i)
        signer.public_key.verify(sig, b"message %d" % i, ec.ECDSA(hashes.SHA256()))
        assert decode_dss_signature(sig)[1] <= P256_HALF_ORDER


def test_encrypted_pem_wrong_passphrase_and_plaintext_pem_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_pkcs8_pem(tmp_path / "enc.pem", key, PASS)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        decrypt_pkcs8_pem(tmp_path / "enc.pem", b"wrong")
    plain = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFileInvalid, match="not an encrypted PKCS#8 PEM"):
        decrypt_pkcs8_pem(private(tmp_path / "plain.pem", plain), PASS)


def test_encrypted_pem_of_another_curve_is_refused(tmp_path: Path) -> None:
    write_pkcs8_pem(tmp_path / "k.pem", ec.generate_private_key(ec.SECP384R1()), PASS)  # type: ignore[arg-type]
    with pytest.raises(KeyFileInvalid, match="P-256"):
        decrypt_pkcs8_pem(tmp_path / "k.pem", PASS)


# -- secrets and plaintext files ---------------------------------------------------------------


def test_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_secret(SecretSource(file=private(tmp_path / "p", b"s3cret\n")), "PIN") == b"s3cret"
    monkeypatch.setenv("KSTB_TEST_PIN", "1234")
    assert read_secret(SecretSource(env="KSTB_TEST_PIN"), "PIN") == b"1234"
    monkeypatch.delenv("KSTB_TEST_PIN")
    with pytest.raises(SecretUnavailable, match="environment variable KSTB_TEST_PIN is not set"):
        read_secret(SecretSource(env="KSTB_TEST_PIN"), "PIN")
    monkeypatch.setenv("KSTB_TEST_PIN", "")
    with pytest.raises(SecretUnavailable, match="is empty"):
        read_secret(SecretSource(env="KSTB_TEST_PIN"), "PIN")
    with pytest.raises(SecretUnavailable, match="is empty"):
        read_secret(SecretSource(file=private(tmp_path / "e", b"\n")), "PIN")
    exposed = private(tmp_path / "x", b"1234")
    exposed.chmod(0o604)
    with pytest.raises(KeyFileExposed, match=r"PIN file .*x must not be readable"):
        read_secret(SecretSource(file=exposed), "PIN")


def test_secret_errors_never_contain_the_secret(tmp_path: Path) -> None:
    path = fast_keystore(tmp_path / "k.json", secrets.token_bytes(32))
    guess = "hunter2-guess"
    with pytest.raises(WrongPassphrase) as info:
        open_signer(KeystoreKey(path, SecretSource(file=private(tmp_path / "p", guess.encode()))))
    assert guess not in str(info.value)


def test_plaintext_key_file_rules_still_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PLAINTEXT_KEYS_ENV, "1")
    key = secrets.token_bytes(32)
    path = private(tmp_path / "k.key", ("0x" + key.hex() + "\n").encode())
    assert read_key_file(path) == key
    assert open_signer(PlainKeyFile(path)).address == LocalKeySigner(key).address
    path.chmod(0o644)
    with pytest.raises(KeyFileExposed):
        read_key_file(path)
    with pytest.raises(KeyFileInvalid, match="32-byte"):
        read_key_file(private(tmp_path / "short", b"abcd"))


# -- key references in daemon files ----------------------------------------------------------


def test_key_reference_forms_round_trip(tmp_path: Path) -> None:
    refs = [
        PlainKeyFile(tmp_path / "k.key"),
        KeystoreKey(tmp_path / "k.json", SecretSource(file=tmp_path / "pass")),
        KeystoreKey(tmp_path / "k.json", SecretSource(env="PASS")),
        Pkcs11Key(Path("/usr/lib/x.so"), "tok", "member-1", SecretSource(env="PIN")),
        Pkcs11Key(Path("/usr/lib/x.so"), "tok", "member-1", SecretSource(file=tmp_path / "pin")),
    ]
    for ref in refs:
        assert parse_key_ref(key_ref_to_toml(ref), tmp_path, "f.toml") == ref


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({}, r"f\.toml: missing required key_file or key$"),
        ({"key_file": "a", "key": {}}, "key_file and key are exclusive"),
        ({"key": "k.json"}, r"f\.toml: key: expected a table"),
        ({"key": {"path": "x"}}, "needs keystore .* or pkcs11_module"),
        ({"key": {"keystore": "k.json"}}, "exactly one of passphrase_file or passphrase_env"),
        (
            {"key": {"keystore": "k", "passphrase_env": "A", "passphrase_file": "b"}},
            "exactly one of passphrase_file or passphrase_env",
        ),
        (
            {"key": {"keystore": "k", "passphrase_env": "A", "pin_env": "B"}},
            r"unknown keys \['pin_env'\]",
        ),
        (
            {"key": {"pkcs11_module": "m.so", "token_label": "t", "pin_env": "P"}},
            r"f\.toml: key\.key_label: expected a non-empty string",
        ),
        (
            {
                "key": {
                    "pkcs11_module": "m.so",
                    "token_label": "t",
                    "key_label": "k",
                    "pin_env": "P",
                    "slot": 0,
                }
            },
            r"unknown keys \['slot'\] for a PKCS#11 key",
        ),
        (
            {"key": {"keystore": "", "passphrase_env": "A"}},
            r"f\.toml: key\.keystore: expected a non-empty path",
        ),
        ({"key_file": 5}, r"f\.toml: key_file: expected a non-empty path"),
    ],
)
def test_malformed_key_references_are_refused_naming_the_path(
    tmp_path: Path, table: dict[str, Any], match: str
) -> None:
    with pytest.raises(KeyRefInvalid, match=match):
        parse_key_ref(table, tmp_path, "f.toml")


def _daemon_files(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger(id="fab"))
    write(tmp_path / "network.toml", data)


def test_relayer_and_verifier_files_take_a_key_table(tmp_path: Path) -> None:
    _daemon_files(tmp_path)
    token = {
        "pkcs11_module": "/usr/lib/softhsm/libsofthsm2.so",
        "token_label": "relayers",
        "key_label": "relayer-a",
        "pin_file": "secrets/pin",
    }
    (tmp_path / "relayer.toml").write_text(
        dump_toml(
            {
                "network": "network.toml",
                "ledger": "brokerage-a",
                "listen": "127.0.0.1:1",
                "coordinator": "127.0.0.1:2",
                "state_db": "r.db",
                "key": token,
            }
        )
    )
    relayer = load_relayer(tmp_path / "relayer.toml")
    assert relayer.key_file is None
    assert relayer.credentials.key_ref == Pkcs11Key(
        Path("/usr/lib/softhsm/libsofthsm2.so"),
        "relayers",
        "relayer-a",
        SecretSource(file=tmp_path / "secrets/pin"),
    )
    (tmp_path / "verifier.toml").write_text(
        dump_toml(
            {
                "network": "network.toml",
                "listen": "127.0.0.1:3",
                "vote_db": "v.db",
                "key": {"keystore": "keys/member.json", "passphrase_env": "MEMBER_PASS"},
                "fabric_identities": {
                    "fab": {
                        "msp_id": "Org1MSP",
                        "cert_file": "fab/cert.pem",
                        "key": {"keystore": "fab/key.pem", "passphrase_file": "fab/pass"},
                    }
                },
            }
        )
    )
    verifier = load_verifier(tmp_path / "verifier.toml")
    assert verifier.member_key == KeystoreKey(
        tmp_path / "keys/member.json", SecretSource(env="MEMBER_PASS")
    )
    fab = verifier.identities["fab"]
    assert fab.key_ref == KeystoreKey(
        tmp_path / "fab/key.pem", SecretSource(file=tmp_path / "fab/pass")
    )
    assert fab.cert_file == tmp_path / "fab/cert.pem"


def test_daemon_key_mistakes_name_the_file_and_path(tmp_path: Path) -> None:
    _daemon_files(tmp_path)
    base = {"network": "network.toml", "listen": "127.0.0.1:3", "vote_db": "v.db"}
    (tmp_path / "verifier.toml").write_text(dump_toml(base))
    with pytest.raises(ConfigError, match=r"verifier\.toml: missing required key_file or key") as e:
        load_verifier(tmp_path / "verifier.toml")
    assert isinstance(e.value.__cause__, KeyRefInvalid)
    (tmp_path / "verifier.toml").write_text(
        dump_toml({**base, "key": {"keystore": "k.json", "passphrase_env": "P", "passwd": "x"}})
    )
    with pytest.raises(ConfigError, match=r"verifier\.toml: key\.passwd: unknown key"):
        load_verifier(tmp_path / "verifier.toml")
    ident = {"msp_id": "Org1MSP", "cert_file": "c.pem", "key": {"pkcs11_module": "m.so"}}
    (tmp_path / "verifier.toml").write_text(
        dump_toml({**base, "key_file": "k", "fabric_identities": {"fab": ident}})
    )
    with pytest.raises(ConfigError, match=r"fabric_identities\.fab\.key\.token_label") as e:
        load_verifier(tmp_path / "verifier.toml")
    assert isinstance(e.value.__cause__, KeyRefInvalid)
    (tmp_path / "verifier.toml").write_text(
        dump_toml({**base, "key_file": "k", "fabric_identities": {"fab": {**ident, "pin": "1"}}})
    )
    # The schema pass types the identity table (review finding 7): refused with its path.
    with pytest.raises(ConfigError, match=r"fabric_identities\.fab\.pin: unknown key"):
        load_verifier(tmp_path / "verifier.toml")


# -- signature shaping -----------------------------------------------------------------------


def test_recoverable_signature_normalises_high_s_and_finds_v() -> None:
    from coincurve import PrivateKey

    raw_key = secrets.token_bytes(32)
    pk = PrivateKey(raw_key)
    pub = pk.public_key.format(compressed=False)
    for _ in range(50):
        digest = secrets.token_bytes(32)
        sig = pk.sign_recoverable(digest, hasher=None)
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
        high = SECP256K1_N - s  # what a device may return: the other valid s
        out = recoverable_signature(digest, r, high, pub)
        assert int.from_bytes(out[32:64], "big") <= SECP256K1_N // 2
        assert recover_signer(digest, out) == LocalKeySigner(raw_key).address
    other = PrivateKey(secrets.token_bytes(32)).public_key.format(compressed=False)
    with pytest.raises(KeyCustodyError, match="does not match its public key"):
        recoverable_signature(digest, r, s, other)
    with pytest.raises(KeyCustodyError, match="out-of-range"):
        recoverable_signature(digest, 0, s, pub)


# -- EVM transactions through the Signer seam --------------------------------------------------

TXS: list[dict[str, Any]] = [
    {
        "to": "0x" + "11" * 20,
        "value": 0,
        "gas": 90_000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": 7,
        "chainId": 31337,
        "data": bytes.fromhex("deadbeef"),
    },
    {
        "to": "0x" + "22" * 20,
        "value": 1,
        "gas": 21_000,
        "gasPrice": 10**9,
        "nonce": 0,
        "chainId": 1,
    },
]


@pytest.mark.parametrize("tx", TXS)
def test_transactions_signed_through_the_seam_equal_eth_account(tx: dict[str, Any]) -> None:
    key = secrets.token_bytes(32)
    signer = LocalKeySigner(key)
    raw = sign_transaction(signer, tx)
    assert raw == bytes(Account.sign_transaction(tx, key).raw_transaction)
    assert bytes.fromhex(Account.recover_transaction(raw)[2:]) == signer.address
    with_from = {**tx, "from": "0x" + signer.address.hex()}
    assert sign_transaction(signer, with_from) == raw


class _WrongKeySigner:
    """Claims one address, signs with another key (a misconfigured or hostile device)."""

    def __init__(self) -> None:
        self._claimed = LocalKeySigner(secrets.token_bytes(32))
        self._actual = LocalKeySigner(secrets.token_bytes(32))

    @property
    def address(self) -> bytes:
        return self._claimed.address

    def sign_digest(self, digest: bytes) -> bytes:
        return self._actual.sign_digest(digest)


def test_transaction_from_another_key_is_never_returned() -> None:
    with pytest.raises(KeyCustodyError, match="does not recover to the signer"):
        sign_transaction(_WrongKeySigner(), TXS[0])
    signer = LocalKeySigner(secrets.token_bytes(32))
    with pytest.raises(KeyCustodyError, match="'from' is not the signer"):
        sign_transaction(signer, {**TXS[0], "from": "0x" + "33" * 20})


class _TamperingSigner:
    """The right key, but the device hands back something other than its signature over
    the asked digest: the high-s twin, a signature over another digest, or bad bytes."""

    def __init__(self, how: str) -> None:
        self._inner = LocalKeySigner(secrets.token_bytes(32))
        self._how = how

    @property
    def address(self) -> bytes:
        return self._inner.address

    def sign_digest(self, digest: bytes) -> bytes:
        if self._how == "other-digest":
            return self._inner.sign_digest(bytes(32))
        sig = self._inner.sign_digest(digest)
        if self._how == "high-s":
            s = SECP256K1_N - int.from_bytes(sig[32:64], "big")
            return sig[:32] + s.to_bytes(32, "big") + bytes([55 - sig[64]])  # 27 <-> 28
        return sig[:64] + bytes([29])  # "bad-v": not a recovery id eth-keys takes


@pytest.mark.parametrize("tx", TXS, ids=["eip1559", "legacy-eip155"])
@pytest.mark.parametrize("how", ["high-s", "other-digest", "bad-v"])
def test_a_signature_other_than_over_the_digest_is_never_returned(
    how: str, tx: dict[str, Any]
) -> None:
    """SECURITY: the check is on the digest eth-account signed, so the malleable twin, a
    replayed signature and malformed bytes are refused before anything is sent."""
    with pytest.raises(KeyCustodyError, match="does not recover to the signer"):
        sign_transaction(_TamperingSigner(how), tx)


@pytest.mark.parametrize("field", ["v", "r", "s", "twice"])
def test_raw_bytes_without_the_checked_signature_are_never_returned(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SECURITY: should eth-account (another version) encode anything but the signature
    that was checked, or ask for two, the transaction is refused."""
    real = evm_tx.sign_transaction_dict

    def drifting(key: Any, fields: Any) -> Any:
        v, r, s, raw = real(key, fields)
        if field == "twice":
            real(key, fields)
        return (v ^ 1 if field == "v" else v, r + (field == "r"), s + (field == "s"), raw)

    monkeypatch.setattr(evm_tx, "sign_transaction_dict", drifting)
    with pytest.raises(KeyCustodyError, match="checked signature"):
        sign_transaction(LocalKeySigner(secrets.token_bytes(32)), TXS[1])


# -- Fabric identity through the P-256 seam ----------------------------------------------------


def test_signing_identity_accepts_a_p256_signer_and_checks_the_certificate(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from bridge.ledgers.fabric.identity import SigningIdentity

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    by_key = SigningIdentity("Org1MSP", pem, key)
    by_signer = SigningIdentity("Org1MSP", pem, LocalP256Signer(key))
    assert by_key.serialized() == by_signer.serialized()
    sig = by_signer.sign(b"proposal")
    by_key.public_key.verify(sig, b"proposal", ec.ECDSA(hashes.SHA256()))
    other = LocalP256Signer(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidInput, match="does not belong to the certificate"):
        SigningIdentity("Org1MSP", pem, other)
    write_pkcs8_pem(tmp_path / "k.pem", key, PASS)
    (tmp_path / "c.pem").write_bytes(pem)
    ref = KeystoreKey(tmp_path / "k.pem", SecretSource(file=private(tmp_path / "p", PASS)))
    loaded = SigningIdentity.from_key_ref("Org1MSP", tmp_path / "c.pem", ref)
    assert loaded.fingerprint() == by_key.fingerprint()
    assert "PRIVATE" not in repr(loaded)


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_import_encrypts_a_plaintext_key_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_bytes(32)
    plain = private(tmp_path / "old.key", key.hex().encode())
    monkeypatch.setenv("KSTB_TEST_PASS", "pw")
    args = ["--key-file", str(plain), "--keystore", str(tmp_path / "new.json")]
    assert (
        keys_main(["import", *args, "--passphrase-env", "KSTB_TEST_PASS", "--kdf", "pbkdf2"]) == 0
    )
    out = capsys.readouterr().out
    assert f"address = 0x{LocalKeySigner(key).address.hex()}" in out
    assert key.hex() not in out
    assert '"passphrase_env" = "KSTB_TEST_PASS"' in out
    assert decrypt_keystore_v3(tmp_path / "new.json", b"pw") == key
    # a second import to the same path is refused and leaves the file alone
    assert keys_main(["import", *args, "--passphrase-env", "KSTB_TEST_PASS"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_generate_keystore_prints_only_public_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSTB_TEST_PASS", "pw")
    common = ["--passphrase-env", "KSTB_TEST_PASS"]
    assert (
        keys_main(["generate", "--keystore", str(tmp_path / "m.json"), *common, "--kdf", "pbkdf2"])
        == 0
    )
    out = capsys.readouterr().out
    key = decrypt_keystore_v3(tmp_path / "m.json", b"pw")
    assert f"0x{LocalKeySigner(key).address.hex()}" in out and key.hex() not in out
    assert (
        keys_main(["generate", "--keystore", str(tmp_path / "f.pem"), *common, "--curve", "p256"])
        == 0
    )
    out = capsys.readouterr().out
    assert "BEGIN PUBLIC KEY" in out and "PRIVATE" not in out
    monkeypatch.setenv("KSTB_TEST_PASS", "wrong")
    assert keys_main(["show", "--keystore", str(tmp_path / "m.json"), *common]) == 2
    assert "wrong passphrase" in capsys.readouterr().err


# -- client tools and the ledger factory -------------------------------------------------------


def test_client_tools_take_a_key_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from bridge.keys.loader import add_key_arguments, load_key_config, signer_from_arguments

    key = secrets.token_bytes(32)
    fast_keystore(tmp_path / "op.json", key)
    (tmp_path / "op.toml").write_text(
        dump_toml({"key": {"keystore": "op.json", "passphrase_env": "KSTB_OP_PASS"}})
    )
    monkeypatch.setenv("KSTB_OP_PASS", PASS.decode())
    parser = argparse.ArgumentParser()
    add_key_arguments(parser)
    signer = signer_from_arguments(parser.parse_args(["--key-config", str(tmp_path / "op.toml")]))
    assert signer.address == LocalKeySigner(key).address
    with pytest.raises(SystemExit):
        parser.parse_args(["--key-config", "a", "--key-file", "b"])
    (tmp_path / "bad.toml").write_text('key_file = "k"\npassphrase = "x"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: passphrase: unknown key"):
        load_key_config(tmp_path / "bad.toml")


def test_fabric_reader_opens_its_identity_from_an_encrypted_key(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from bridge.config import Credentials, LedgerConfig
    from bridge.domain.ids import LedgerId
    from bridge.ledgers.factory import open_reader

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reader")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_pkcs8_pem(tmp_path / "key.pem", key, PASS)
    ref = KeystoreKey(tmp_path / "key.pem", SecretSource(file=private(tmp_path / "p", PASS)))
    config = LedgerConfig(
        id=LedgerId("fab"),
        kind="fabric",
        rpc_url="127.0.0.1:1",
        bridge="bridge",
        chain_id=0,
        finality_depth=0,
        block_interval=1.0,
        channel="bridge",
        tls_ca=tmp_path / "ca.pem",
    )
    creds = Credentials(None, tmp_path / "cert.pem", "Org1MSP", key=ref)
    reader = open_reader(config, creds)
    assert reader.ledger == LedgerId("fab")
    wrong = KeystoreKey(tmp_path / "key.pem", SecretSource(file=private(tmp_path / "w", b"no")))
    with pytest.raises(WrongPassphrase):
        open_reader(config, Credentials(None, tmp_path / "cert.pem", "Org1MSP", key=wrong))


# -- review finding 7: plaintext key files only under the development flag -------------------


@pytest.mark.security
def test_a_plaintext_key_file_is_refused_without_the_development_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PLAINTEXT_KEYS_ENV, raising=False)
    hex_key = private(tmp_path / "k.key", ("0x" + secrets.token_bytes(32).hex()).encode())
    pem_key = private(
        tmp_path / "k.pem",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    for flag in (None, "yes", "0"):  # only exactly "1" counts
        if flag is not None:
            monkeypatch.setenv(PLAINTEXT_KEYS_ENV, flag)
        with pytest.raises(PlaintextKeyRefused) as err:
            open_signer(PlainKeyFile(hex_key))
        assert str(err.value) == (
            f"{hex_key}: plaintext key files are refused outside development; use an"
            " encrypted keystore or a PKCS#11 token key (python -m bridge.keys import),"
            f" or set {PLAINTEXT_KEYS_ENV}=1 on a devnet"
        )
        with pytest.raises(PlaintextKeyRefused):
            open_p256_signer(PlainKeyFile(pem_key))


@pytest.mark.security
def test_the_plaintext_key_flag_warns_at_every_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    monkeypatch.setenv(PLAINTEXT_KEYS_ENV, "1")
    path = private(tmp_path / "k.key", ("0x" + secrets.token_bytes(32).hex()).encode())
    with capture_logs() as logs:
        open_signer(PlainKeyFile(path))
        open_signer(PlainKeyFile(path))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [w["event"] for w in warnings] == [
        "INSECURE: plaintext signing key file; never use this outside development"
    ] * 2
    assert warnings[0]["path"] == str(path) and warnings[0]["flag"] == PLAINTEXT_KEYS_ENV


@pytest.mark.security
def test_the_supply_cli_refuses_a_plaintext_operator_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli.main import main as cli_main

    monkeypatch.delenv(PLAINTEXT_KEYS_ENV, raising=False)
    path = private(tmp_path / "op.key", ("0x" + secrets.token_bytes(32).hex()).encode())
    argv = ["supply", "register", "--key-file", str(path), "--security", "KR7005930003"]
    assert cli_main([*argv, "--units", "a=1"]) == 2
    assert "plaintext key files are refused outside development" in capsys.readouterr().err


# -- review finding 6: every key on a token has its own PIN checked --------------------------


class _FakeTokenSession:
    opened: ClassVar[list[bytes]] = []

    def __init__(self, module: Path, token_label: str, pin: bytes, rw: bool = False) -> None:
        _FakeTokenSession.opened.append(pin)


@pytest.mark.security
def test_a_second_key_on_an_open_token_with_another_pin_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridge.keys import loader, pkcs11_token

    monkeypatch.setattr(pkcs11_token, "TokenSession", _FakeTokenSession)
    monkeypatch.setattr(loader, "_SESSIONS", {})
    _FakeTokenSession.opened.clear()
    module = Path("/usr/lib/softhsm/libsofthsm2.so")
    first = loader.token_session(module, "bridge", b"1234")
    assert loader.token_session(module, "bridge", b"1234") is first, "one login per token"
    with pytest.raises(TokenPinMismatch) as err:
        loader.token_session(module, "bridge", b"0000")
    assert str(err.value) == (
        f"token 'bridge' ({module}) is already open in this process with another PIN;"
        " this key's PIN is wrong"
    )
    assert "0000" not in str(err.value) and "1234" not in str(err.value)
    assert _FakeTokenSession.opened == [b"1234"], "no second login"
    # Another token is its own login.
    assert loader.token_session(module, "other", b"0000") is not first
