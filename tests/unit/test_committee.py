"""Committee membership, EVM-style signature recovery, certificates and local key signers."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from coincurve import PublicKey

from bridge.domain.committee import (
    SECP256K1_N,
    Committee,
    address_of_public_key,
    assemble_certificate,
    recover_signer,
    verify_certificate,
)
from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.signer import LocalKeySigner, read_key_file

pytestmark = pytest.mark.unit

# The secp256k1 generator point G (a public key) and its well-known EVM address.
G_UNCOMPRESSED = bytes.fromhex(
    "04"
    "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
)
G_ADDRESS = "7e5f4552091a69125d5dfcb7b8c2659029395bdf"


def new_signer() -> LocalKeySigner:
    return LocalKeySigner(secrets.token_bytes(32))


def sorted_signers(n: int) -> list[LocalKeySigner]:
    return sorted((new_signer() for _ in range(n)), key=lambda s: s.address)


def committee_of(signers: list[LocalKeySigner], threshold: int, epoch: int = 1) -> Committee:
    return Committee(epoch=epoch, threshold=threshold, members=tuple(s.address for s in signers))


def addr(i: int) -> bytes:
    return bytes([i]) * 20


DIGEST = bytes(range(32))


# -- Committee -----------------------------------------------------------------------------


def test_valid_committee_and_membership() -> None:
    c = Committee(epoch=1, threshold=3, members=(addr(1), addr(2), addr(3), addr(4)))
    assert c.is_member(addr(3))
    assert not c.is_member(addr(5))


@pytest.mark.parametrize(("n", "t", "f"), [(4, 3, 1), (7, 5, 2), (3, 2, 0), (1, 1, 0), (4, 4, 3)])
def test_max_faulty(n: int, t: int, f: int) -> None:
    c = Committee(epoch=1, threshold=t, members=tuple(addr(i) for i in range(1, n + 1)))
    assert c.max_faulty == f


def test_duplicate_members_rejected() -> None:
    with pytest.raises(InvalidInput, match="committee members must be distinct"):
        Committee(epoch=1, threshold=2, members=(addr(1), addr(1), addr(2)))


def test_members_must_be_20_bytes() -> None:
    with pytest.raises(InvalidInput, match="20-byte addresses"):
        Committee(epoch=1, threshold=2, members=(addr(1), addr(2), b"\x03" * 32))


@pytest.mark.parametrize(("n", "t"), [(4, 2), (4, 1), (2, 1), (6, 3), (7, 3)])
def test_threshold_at_most_half_is_rejected(n: int, t: int) -> None:
    with pytest.raises(InvalidInput, match="threshold must exceed n/2"):
        Committee(epoch=1, threshold=t, members=tuple(addr(i) for i in range(1, n + 1)))


@pytest.mark.parametrize("t", [0, -1, 5])
def test_threshold_outside_1_to_n_is_rejected(t: int) -> None:
    with pytest.raises(InvalidInput, match=r"threshold must be in 1\.\.n"):
        Committee(epoch=1, threshold=t, members=(addr(1), addr(2), addr(3), addr(4)))


@pytest.mark.parametrize("epoch", [0, -1])
def test_epoch_must_start_at_one(epoch: int) -> None:
    with pytest.raises(InvalidInput, match="epoch starts at 1"):
        Committee(epoch=epoch, threshold=3, members=(addr(1), addr(2), addr(3), addr(4)))


# -- keys and recovery ---------------------------------------------------------------------


def test_address_of_generator_public_key() -> None:
    assert address_of_public_key(G_UNCOMPRESSED).hex() == G_ADDRESS


def test_address_of_public_key_rejects_compressed_or_bad_prefix() -> None:
    with pytest.raises(InvalidInput, match="65-byte uncompressed"):
        address_of_public_key(PublicKey(G_UNCOMPRESSED).format(compressed=True))
    with pytest.raises(InvalidInput, match="65-byte uncompressed"):
        address_of_public_key(b"\x05" + G_UNCOMPRESSED[1:])


def test_signer_address_matches_its_public_key() -> None:
    key = secrets.token_bytes(32)
    signer = LocalKeySigner(key)
    from coincurve import PrivateKey

    pub = PrivateKey(key).public_key.format(compressed=False)
    assert signer.address == address_of_public_key(pub)
    assert len(signer.address) == 20


def test_sign_and_recover_round_trip_low_s() -> None:
    signer = new_signer()
    for _ in range(8):
        digest = os.urandom(32)
        sig = signer.sign_digest(digest)
        assert len(sig) == 65
        assert sig[64] in (27, 28)
        assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2
        assert recover_signer(digest, sig) == signer.address


def test_signature_over_other_digest_recovers_other_address() -> None:
    signer = new_signer()
    sig = signer.sign_digest(DIGEST)
    assert recover_signer(bytes(32 * [7]), sig) != signer.address


def _malleate(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])


def test_high_s_signature_is_rejected() -> None:
    signer = new_signer()
    sig = signer.sign_digest(DIGEST)
    high = _malleate(sig)
    # The malleated signature is mathematically valid for the same key ...
    pub = PublicKey.from_signature_and_message(high[:64] + bytes([high[64] - 27]), DIGEST, None)
    assert address_of_public_key(pub.format(compressed=False)) == signer.address
    # ... but the EVM rule refuses high s.
    with pytest.raises(InvalidCertificate, match="high-s"):
        recover_signer(DIGEST, high)


@pytest.mark.parametrize("v", [0, 1, 26, 29, 255])
def test_bad_v_rejected(v: int) -> None:
    sig = new_signer().sign_digest(DIGEST)
    with pytest.raises(InvalidCertificate, match="v must be 27 or 28"):
        recover_signer(DIGEST, sig[:64] + bytes([v]))


def test_flipped_v_recovers_a_different_address() -> None:
    signer = new_signer()
    sig = signer.sign_digest(DIGEST)
    flipped = sig[:64] + bytes([55 - sig[64]])
    assert recover_signer(DIGEST, flipped) != signer.address


@pytest.mark.parametrize("length", [0, 64, 66, 130])
def test_wrong_signature_length_rejected(length: int) -> None:
    with pytest.raises(InvalidCertificate, match="signature must be 65 bytes"):
        recover_signer(DIGEST, b"\x01" * length)


def test_wrong_digest_length_rejected() -> None:
    sig = new_signer().sign_digest(DIGEST)
    with pytest.raises(InvalidCertificate, match="digest must be 32 bytes"):
        recover_signer(DIGEST[:31], sig)


@pytest.mark.parametrize(("r", "s"), [(0, 1), (1, 0), (SECP256K1_N, 1), (1, SECP256K1_N // 2 + 1)])
def test_r_s_out_of_range_rejected(r: int, s: int) -> None:
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27])
    with pytest.raises(InvalidCertificate, match="out of range"):
        recover_signer(DIGEST, sig)


def test_sign_digest_requires_32_bytes() -> None:
    with pytest.raises(InvalidInput, match="digest must be 32 bytes"):
        new_signer().sign_digest(b"\x01" * 33)


def test_local_signer_rejects_wrong_key_length() -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        LocalKeySigner(secrets.token_bytes(31))


def test_repr_does_not_leak_key() -> None:
    key = secrets.token_bytes(32)
    signer = LocalKeySigner(key)
    text = repr(signer)
    assert key.hex() not in text
    assert key.hex().upper() not in text
    assert signer.address.hex() in text
    assert key.hex() not in str(signer)


# -- key files -----------------------------------------------------------------------------


def _key_file(tmp_path: Path, content: str, mode: int) -> Path:
    path = tmp_path / "member.key"
    path.write_text(content)
    path.chmod(mode)
    return path


def test_read_key_file_refuses_world_readable(tmp_path: Path) -> None:
    path = _key_file(tmp_path, secrets.token_bytes(32).hex(), 0o644)
    with pytest.raises(InvalidInput, match=r"must not be readable by group/others \(chmod 600\)"):
        read_key_file(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_read_key_file_refuses_any_group_or_other_bit(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, secrets.token_bytes(32).hex(), mode)
    with pytest.raises(InvalidInput, match="chmod 600"):
        read_key_file(path)


def test_read_key_file_accepts_0600_with_prefix_and_newline(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    path = _key_file(tmp_path, "0x" + key.hex() + "\n", 0o600)
    assert read_key_file(path) == key
    assert LocalKeySigner.from_key_file(path).address == LocalKeySigner(key).address


def test_read_key_file_rejects_non_hex_and_short_keys(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not hold a hex key"):
        read_key_file(_key_file(tmp_path, "not-hex", 0o600))
    with pytest.raises(InvalidInput, match="does not hold a 32-byte key"):
        read_key_file(_key_file(tmp_path, secrets.token_bytes(31).hex(), 0o600))


# -- certificates --------------------------------------------------------------------------


@pytest.fixture
def four() -> list[LocalKeySigner]:
    return sorted_signers(4)


def test_assemble_drops_foreign_invalid_and_duplicate_signatures(
    four: list[LocalKeySigner],
) -> None:
    committee = committee_of(four, threshold=3, epoch=2)
    outsider = new_signer()
    valid = [s.sign_digest(DIGEST) for s in four[:3]]
    junk = [
        outsider.sign_digest(DIGEST),  # not a member
        four[3].sign_digest(os.urandom(32)),  # member, wrong digest
        _malleate(four[3].sign_digest(DIGEST)),  # member, high s
        b"\x00" * 65,  # malformed
        b"\x01" * 64,  # wrong length
    ]
    # Duplicates of valid signatures and an unsorted input order.
    sigs = [junk[0], valid[2], junk[1], valid[0], junk[2], valid[2], junk[3], valid[1], junk[4]]
    cert = assemble_certificate(committee, DIGEST, sigs)
    assert cert.epoch == 2
    assert cert.digest == DIGEST
    assert [v.signer for v in cert.votes] == [s.address for s in four[:3]]
    assert [v.signature for v in cert.votes] == valid
    assert cert.signatures_blob == b"".join(valid)
    assert len(cert.signatures_blob) == 195


def test_assemble_takes_threshold_lowest_signers_ascending(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3)
    sigs = [s.sign_digest(DIGEST) for s in reversed(four)]
    cert = assemble_certificate(committee, DIGEST, sigs)
    signers = [v.signer for v in cert.votes]
    assert signers == sorted(signers)
    assert signers == [s.address for s in four[:3]]
    verify_certificate(committee, DIGEST, 1, [v.signature for v in cert.votes])


def test_assemble_fails_under_threshold(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3)
    sig0 = four[0].sign_digest(DIGEST)
    sigs = [sig0, sig0, four[1].sign_digest(DIGEST), new_signer().sign_digest(DIGEST)]
    with pytest.raises(InvalidCertificate, match="only 2 valid signatures, threshold is 3"):
        assemble_certificate(committee, DIGEST, sigs)


def test_verify_certificate_accepts_ascending_threshold(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3, epoch=5)
    verify_certificate(committee, DIGEST, 5, [s.sign_digest(DIGEST) for s in four[:3]])
    verify_certificate(committee, DIGEST, 5, [s.sign_digest(DIGEST) for s in four])


def test_verify_certificate_rejects_wrong_epoch(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3, epoch=5)
    blob = [s.sign_digest(DIGEST) for s in four[:3]]
    with pytest.raises(InvalidCertificate, match="epoch 4 is not the current epoch 5"):
        verify_certificate(committee, DIGEST, 4, blob)


def test_verify_certificate_rejects_too_few(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3)
    blob = [s.sign_digest(DIGEST) for s in four[:2]]
    with pytest.raises(InvalidCertificate, match="2 signatures, threshold is 3"):
        verify_certificate(committee, DIGEST, 1, blob)


def test_verify_certificate_rejects_duplicates(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3)
    a, b = four[0].sign_digest(DIGEST), four[1].sign_digest(DIGEST)
    with pytest.raises(InvalidCertificate, match="strictly ascending"):
        verify_certificate(committee, DIGEST, 1, [a, a, b])


def test_verify_certificate_rejects_descending(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four, threshold=3)
    blob = [s.sign_digest(DIGEST) for s in reversed(four[:3])]
    with pytest.raises(InvalidCertificate, match="strictly ascending"):
        verify_certificate(committee, DIGEST, 1, blob)


def test_verify_certificate_rejects_non_member(four: list[LocalKeySigner]) -> None:
    committee = committee_of(four[:3], threshold=2)
    outsider = four[3]  # sorts after the members, so the order check alone would pass
    blob = [four[0].sign_digest(DIGEST), outsider.sign_digest(DIGEST)]
    with pytest.raises(InvalidCertificate, match="is not in committee epoch 1"):
        verify_certificate(committee, DIGEST, 1, blob)


def test_verify_certificate_rejects_signature_over_other_digest(
    four: list[LocalKeySigner],
) -> None:
    committee = committee_of(four, threshold=3)
    blob = [s.sign_digest(DIGEST) for s in four[:2]] + [four[2].sign_digest(b"\x09" * 32)]
    with pytest.raises(InvalidCertificate):
        verify_certificate(committee, DIGEST, 1, blob)
