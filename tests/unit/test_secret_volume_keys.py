"""Keys on a Kubernetes Secret volume (review s18 F3, ADR 0021 §7): the daemon reads its
certificate, key, CA bundle and revocation list straight from the volume the kubelet keeps
up to date, so a rotation or a revocation reaches the running daemon without a restart.

The kubelet's AtomicWriter is reproduced here byte for byte in layout: the files live in a
timestamped directory ``..<ts>``, ``..data`` is a symlink to it and every name is a symlink
``name -> ..data/name``; an update writes a new directory and renames a new ``..data`` over
the old one. With fsGroup the files are owner root, group fsGroup, mode 0440.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from bridge.config import dump_toml, load_network, load_tls
from bridge.devnet.pki import DevPki
from bridge.domain.errors import InvalidInput
from bridge.keys.errors import KeyFileExposed
from bridge.keys.files import POD_GROUP_KEYS_ENV, is_exposed, read_private_file
from bridge.rpc.authn import Authenticator, Unauthenticated
from bridge.rpc.tls import ServerCredentialSource
from tests.unit.test_config import network_data

pytestmark = [pytest.mark.unit, pytest.mark.ops, pytest.mark.security]

A = "brokerage-a"
_generation = itertools.count(1)


def kubelet_write(volume: Path, files: dict[str, bytes], mode: int = 0o440) -> None:
    """Project ``files`` into ``volume`` the way the kubelet updates a Secret volume."""
    volume.mkdir(exist_ok=True)
    ts = volume / f"..2026_12_02_00_00_{next(_generation):02d}"
    ts.mkdir()
    for name, data in files.items():
        (ts / name).write_bytes(data)
        os.chown(ts / name, -1, os.getegid())  # fsGroup: the pod's (our) group
        (ts / name).chmod(mode)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(ts.name)
    old = (volume / "..data").resolve() if (volume / "..data").is_symlink() else None
    os.replace(tmp, volume / "..data")  # the atomic swap
    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


@pytest.fixture
def pod_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POD_GROUP_KEYS_ENV, "1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki(tmp_path_factory.mktemp("pki"))
    pki.organisation(A, [f"brokerage:{A}", f"relayer:{A}"])
    pki.issue(A, f"relayer:{A}", f"relayer-{A}")
    return pki


def test_group_readable_key_is_accepted_only_for_the_own_group_and_only_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    kubelet_write(keys, {"tls.key": b"k", "tls.pem": b"c"})
    raw = {"cert_file": "keys/tls.pem", "key_file": "keys/tls.key"}
    # without the chart's variable: refused exactly as before
    monkeypatch.delenv(POD_GROUP_KEYS_ENV, raising=False)
    with pytest.raises(InvalidInput, match="must be 0600"):
        load_tls({"tls": raw}, tmp_path, "relayer.toml")
    with pytest.raises(KeyFileExposed, match="chmod 600"):
        read_private_file(keys / "tls.key", "key file")
    monkeypatch.setenv(POD_GROUP_KEYS_ENV, "yes")  # only the exact value 1 counts
    assert is_exposed(keys / "tls.key", (keys / "tls.key").stat().st_mode)
    # with it: the own group's read bit is tolerated ...
    monkeypatch.setenv(POD_GROUP_KEYS_ENV, "1")
    tls = load_tls({"tls": raw}, tmp_path, "relayer.toml")
    assert tls is not None and tls.key_file == keys / "tls.key"
    assert read_private_file(keys / "tls.key", "key file") == b"k"
    # ... nothing else is: other bits, group write/execute, another group
    for mode in (0o444, 0o460, 0o450, 0o404, 0o640 | 0o004):
        (keys / "..data" / "tls.key").chmod(mode)
        with pytest.raises(KeyFileExposed):
            read_private_file(keys / "tls.key", "key file")
    (keys / "..data" / "tls.key").chmod(0o440)
    foreign = os.getegid() + 4242
    monkeypatch.setattr("bridge.keys.files.os.getegid", lambda: foreign)
    monkeypatch.setattr("bridge.keys.files.os.getgroups", lambda: [foreign])
    with pytest.raises(InvalidInput, match="must be 0600"):
        load_tls({"tls": raw}, tmp_path, "relayer.toml")


def test_a_rotated_certificate_reaches_the_server_without_restart(
    pki: DevPki, tmp_path: Path, pod_group: None
) -> None:
    first = pki.cert_for(f"relayer:{A}")
    keys = tmp_path / "keys"
    kubelet_write(
        keys,
        {
            "tls.pem": first.cert_file.read_bytes(),
            "tls.key": first.key_file.read_bytes(),
            "ca.pem": pki.cas[A].ca_file.read_bytes(),
        },
    )
    tls = load_tls(
        {"tls": {"cert_file": "keys/tls.pem", "key_file": "keys/tls.key"}},
        tmp_path,
        "relayer.toml",
    )
    assert tls is not None
    source = ServerCredentialSource(tls, [keys / "ca.pem"])
    assert source._fetch() is None  # unchanged volume: nothing to reload
    rotated = pki.issue_extra(A, f"relayer:{A}", "relayer-rotated")
    kubelet_write(
        keys,
        {
            "tls.pem": rotated.cert_file.read_bytes(),
            "tls.key": rotated.key_file.read_bytes(),
            "ca.pem": pki.cas[A].ca_file.read_bytes(),
        },
    )
    assert source._fetch() is not None  # the next handshake uses the new pair
    assert source._fetch() is None


def test_a_revocation_in_the_secret_reaches_the_authenticator(
    pki: DevPki, tmp_path: Path, pod_group: None
) -> None:
    victim = pki.issue_extra(A, f"brokerage:{A}", "stolen")
    keys = tmp_path / "keys"
    header = b"# SHA-256 fingerprints of revoked certificates\n"
    ca = pki.cas[A].ca_file.read_bytes()
    kubelet_write(keys, {"ca-a.pem": ca, "revoked-a.txt": header})
    data = network_data()
    data["organisations"] = [
        {**e, "ca": "keys/ca-a.pem", "revoked_file": "keys/revoked-a.txt"}
        for e in pki.network_entries(pki.root)
    ]
    (tmp_path / "network.toml").write_text(dump_toml(data))
    authn = Authenticator(load_network(tmp_path / "network.toml"))
    assert authn.principal(victim.cert_file.read_bytes()).role == "brokerage"
    kubelet_write(
        keys, {"ca-a.pem": ca, "revoked-a.txt": header + f"{victim.fingerprint}\n".encode()}
    )
    with pytest.raises(Unauthenticated, match="is revoked"):
        authn.principal(victim.cert_file.read_bytes())
    assert authn.principal(pki.cert_for(f"relayer:{A}").cert_file.read_bytes()).role == "relayer"
