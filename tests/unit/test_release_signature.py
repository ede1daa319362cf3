"""Signed releases: SHA256SUMS signed with a release key, verified before installing.

Each refusal names its rule, and a release that verifies has exactly the files its signed
checksums name.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from bridge.domain.signer import LocalKeySigner
from bridge.tools.release_signature import (
    SIGNATURE_FILE,
    ReleaseSignatureInvalid,
    main,
    release_digest,
    sign_release,
    verify_release,
)

pytestmark = [pytest.mark.unit, pytest.mark.security]

RELEASE = LocalKeySigner(secrets.token_bytes(32))
OTHER = LocalKeySigner(secrets.token_bytes(32))


def make_dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    for name, body in (("kstb-0.2.0-py3-none-any.whl", b"wheel"), ("kstb-0.2.0.tgz", b"chart")):
        (dist / name).write_bytes(body)
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(dist.iterdir())
    ]
    (dist / "SHA256SUMS").write_text("".join(lines))
    return dist


def refused(dist: Path, signers: list[bytes] | None = None) -> str:
    with pytest.raises(ReleaseSignatureInvalid) as info:
        verify_release(dist, [RELEASE.address] if signers is None else signers)
    return info.value.reason


def test_a_signed_release_verifies_with_its_files(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    sign_release(dist, RELEASE)
    release = verify_release(dist, [OTHER.address, RELEASE.address])
    assert release.signer == RELEASE.address
    assert set(release.files) == {"kstb-0.2.0-py3-none-any.whl", "kstb-0.2.0.tgz"}


def test_an_unsigned_or_untrusted_release_is_refused(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    assert "not signed" in refused(dist)
    sign_release(dist, OTHER)
    assert "is not a release signer" in refused(dist)
    assert "no release signer" in refused(dist, [])


def test_any_change_after_signing_is_refused(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    sign_release(dist, RELEASE)
    (dist / "kstb-0.2.0.tgz").write_bytes(b"chart with a backdoor")
    assert refused(dist) == "kstb-0.2.0.tgz does not match its checksum"
    # Re-writing SHA256SUMS to match breaks the signature instead.
    sums = (dist / "SHA256SUMS").read_text().splitlines()
    sums[1] = f"{hashlib.sha256(b'chart with a backdoor').hexdigest()}  kstb-0.2.0.tgz"
    (dist / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    assert "not by its stated signer" in refused(dist)


def test_missing_and_extra_files_are_refused(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    sign_release(dist, RELEASE)
    (dist / "unsigned-plugin.whl").write_bytes(b"x")
    assert "files not in SHA256SUMS: ['unsigned-plugin.whl']" in refused(dist)
    (dist / "unsigned-plugin.whl").unlink()
    (dist / "kstb-0.2.0.tgz").unlink()
    assert refused(dist) == "kstb-0.2.0.tgz is missing"


def test_a_signature_made_for_anything_else_is_refused(tmp_path: Path) -> None:
    """Domain separation: the same key's signature over the bare checksum-file hash (what
    another tool might sign) does not verify as a release signature."""
    dist = make_dist(tmp_path)
    sums = (dist / "SHA256SUMS").read_bytes()
    bare = RELEASE.sign_digest(hashlib.sha256(sums).digest())
    body = {"scheme": "kstb-release-v1", "signer": "0x" + RELEASE.address.hex()}
    (dist / SIGNATURE_FILE).write_text(json.dumps(body | {"signature": "0x" + bare.hex()}))
    assert "not by its stated signer" in refused(dist)
    good = RELEASE.sign_digest(release_digest(sums))
    (dist / SIGNATURE_FILE).write_text(json.dumps(body | {"signature": "0x" + good.hex()}))
    assert verify_release(dist, [RELEASE.address]).signer == RELEASE.address


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "is not JSON"),
        ('{"scheme": "other"}', "is not a kstb-release-v1 signature"),
        ('{"scheme": "kstb-release-v1", "signer": "0x12", "signature": "0x"}', "signer is not"),
        (
            '{"scheme": "kstb-release-v1", "signer": "0x' + "11" * 20 + '", "signature": "0x00"}',
            "signature is not 65 bytes",
        ),
        (
            '{"scheme": "kstb-release-v1", "signer": "0x'
            + "11" * 20
            + '", "signature": "0x'
            + "00" * 65
            + '"}',
            "the signature is invalid",
        ),
    ],
)
def test_malformed_signature_files_are_refused(tmp_path: Path, content: str, reason: str) -> None:
    dist = make_dist(tmp_path)
    (dist / SIGNATURE_FILE).write_text(content)
    assert reason in refused(dist)


def test_a_malformed_checksum_file_is_never_signed(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    (dist / "SHA256SUMS").write_text("deadbeef  ../../etc/passwd\n")
    with pytest.raises(ReleaseSignatureInvalid, match="line 1 is malformed"):
        sign_release(dist, RELEASE)
    assert not (dist / SIGNATURE_FILE).exists()


def test_the_command_line_signs_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = make_dist(tmp_path)
    key = tmp_path / "release.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    monkeypatch.setenv("KSTB_PLAINTEXT_KEYS_FOR_DEVELOPMENT", "1")
    assert main(["sign", "--dist", str(dist), "--key-file", str(key)]) == 0
    signer = json.loads((dist / SIGNATURE_FILE).read_text())["signer"]
    assert main(["verify", "--dist", str(dist), "--signer", signer]) == 0
    assert "verified: 2 files signed by" in capsys.readouterr().out
    other = "0x" + OTHER.address.hex()
    assert main(["verify", "--dist", str(dist), "--signer", other]) == 2
    assert "is not a release signer" in capsys.readouterr().err
